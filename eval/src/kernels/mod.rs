//! The heavy arithmetic of the protocols: [`products`] (the trait every device implements,
//! running top-k lists), [`search`] (the fused CPU kernel), [`probe`] (the linear probe's
//! model), [`cpu`] (the products on the CPU), [`kmeans`], [`pca`], [`hungarian`].

pub mod cpu;
pub mod hungarian;
pub mod kmeans;
pub mod pca;
pub mod probe;
pub mod products;
pub mod search;
