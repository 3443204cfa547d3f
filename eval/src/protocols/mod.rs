//! The protocols: [`cluster`] (Leopart's clustering and overclustering of images), [`video`]
//! (TimeT's unsupervised video segmentation), [`linear`] (the linear probe), [`incontext`]
//! (Hummingbird's in-context retrieval), [`consistency`] (features along ground-truth tracks).

pub mod cluster;
pub mod consistency;
pub mod incontext;
pub mod linear;
pub mod video;
