//! Evaluation protocols of the paper on plain f32 features and label maps (CPU only). A
//! protocol run takes any [`Backbone`] (images in, feature maps out) and gives an
//! [`Evaluation`]: `cluster::run_leopart`, `video::run_timet`, `linear::run_probe`,
//! `incontext::run_hummingbird`. The pieces they are built from:
//! exact top-k search and the k-means assignment step on one CPU kernel ([`search`]),
//! exact assignment ([`hungarian`]), seeded k-means ([`kmeans`]), clustering mIoU under
//! Hungarian or overclustering matching ([`segmentation`]), labelled datasets on disk
//! ([`data`]), and the protocols built on them: clustering of images and videos
//! ([`cluster`]), the linear probe ([`linear`]), in-context retrieval ([`incontext`]) and the
//! track consistency of features along ground-truth tracks ([`consistency`]).

pub mod augment;
pub mod backbone;
pub mod card;
pub mod cluster;
pub mod consistency;
pub mod data;
pub mod dense;
pub mod hungarian;
pub mod incontext;
pub mod kmeans;
pub mod linear;
pub mod pca;
pub mod products;
pub mod search;
pub mod segmentation;
pub mod store;
pub mod video;

pub use backbone::{Backbone, Evaluation};
pub use cluster::Score;
pub use data::Mask;
pub use dense::FeatureMap;
pub use hungarian::{linear_sum_assignment, maximize};
pub use kmeans::{kmeans, KMeans};
pub use segmentation::{
    confusion, hungarian_miou, miou, overclustering_miou, Confusion, SegScore, IGNORE,
};
