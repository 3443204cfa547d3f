//! Stage 2: MoSiC post-training of a ViT on track shards, generic over the Burn backend.
//!
//! - [`host`]: the GELU and softmax kernels of the no-grad forward on the CPU backends.
//! - [`model`]: the ViT (DINOv2 / DINO v1 families), weights loaded by timm or official names.
//! - [`head`]: projection head and prototypes.
//! - [`loss`]: features at track points, Sinkhorn-Knopp, propagated targets, the loss.
//! - [`loader`]: streaming shards into augmented, normalised batches.
//! - [`train`]: student and EMA teacher, the step, checkpoints and resume.
//! - [`config`]: every hyperparameter, from TOML with overrides.
//! - [`features`]: backbones from runs or weight files, dense features of images.
//! - [`validate`]: labelled evaluation sets and the in-loop clustering validation.

pub mod backend;
pub mod config;
pub mod features;
pub mod head;
pub mod host;
pub mod loader;
pub mod loss;
pub mod model;
pub mod params;
pub mod plot;
pub mod train;
pub mod validate;

pub use config::TrainConfig;
