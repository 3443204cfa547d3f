//! The evaluation protocols of the paper on plain f32 features and label maps, free of any
//! deep-learning framework: a protocol takes any [`Backbone`] (images in, feature maps out) and
//! gives an [`Evaluation`].
//!
//! Layers, each using only those above it:
//! - [`data`]: feature maps and their bilinear upsampling, labelled datasets on disk, feature
//!   stores that spill to disk under a memory budget, the protocols' augmentations.
//! - [`kernels`]: the heavy products behind one trait ([`kernels::products::Products`]; the
//!   trainer gives a device implementation), the fused top-k / nearest-centroid CPU kernel,
//!   seeded k-means, PCA, exact assignment, the linear probe's model.
//! - [`segmentation`]: confusion matrices and mIoU under Hungarian or overclustering matching.
//! - [`backbone`], [`card`]: what a protocol takes and gives, and how it is described.
//! - [`protocols`]: clustering of images (Leopart), of videos (TimeT), the linear probe,
//!   in-context retrieval (Hummingbird), track consistency.

pub mod backbone;
pub mod card;
pub mod data;
pub mod kernels;
pub mod protocols;
pub mod segmentation;

pub use backbone::{Backbone, Evaluation, Score};
pub use data::dense::FeatureMap;
pub use data::Mask;
pub use kernels::hungarian::{linear_sum_assignment, maximize};
pub use kernels::kmeans::{kmeans, KMeans};
pub use segmentation::{
    confusion, hungarian_miou, miou, overclustering_miou, Confusion, SegScore, IGNORE,
};
