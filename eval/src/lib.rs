//! Evaluation protocols of the paper on plain f32 features and label maps (CPU only):
//! exact assignment ([`hungarian`]), seeded k-means ([`kmeans`]) and clustering mIoU under
//! one-to-one Hungarian matching or many-to-one overclustering ([`segmentation`]).

pub mod hungarian;
pub mod kmeans;
pub mod segmentation;

pub use hungarian::{linear_sum_assignment, maximize};
pub use kmeans::{kmeans, KMeans};
pub use segmentation::{
    confusion, hungarian_miou, miou, overclustering_miou, Confusion, SegScore, IGNORE,
};
