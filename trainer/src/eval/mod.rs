//! What the evaluation protocols need from a trained model: [`features`] (backbones from runs
//! or weight files, dense features of images), [`products`] (the protocols' heavy products on
//! the backend's device) and [`validate`] (the clustering validation inside training).

pub mod features;
pub mod products;
pub mod validate;
