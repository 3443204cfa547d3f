//! Stage 2: MoSiC post-training of a ViT on track shards, generic over the Burn backend.
//!
//! Layers, each using only those above it:
//! - [`backend`]: the backends built in, devices, precision; [`host`]: CPU kernels of the
//!   no-grad forward.
//! - [`model`]: the ViT (DINOv2 / DINO v1 families) by timm's tensor names;
//!   [`weights`]: weight files (safetensors, `.pth`), name mapping, position-embedding
//!   resampling.
//! - [`head`]: projection head and prototypes; [`loss`]: features at track points,
//!   Sinkhorn-Knopp, propagated targets, the loss; [`params`]: parameters by name, AdamW, EMA.
//! - [`loader`]: streaming shards into augmented, normalised batches; [`config`]: every
//!   hyperparameter, from TOML with overrides.
//! - [`rundir`]: the run directory (config, metrics, checkpoints, evaluation results);
//!   [`plot`]: figures; [`compare`]: runs side by side.
//! - [`features`]: backbones from runs or weight files, dense features of images;
//!   [`products`]: the evaluation's heavy products on the backend's device;
//!   [`validate`]: the in-loop clustering validation.
//! - [`collective`]: all-reduce between the workers of one process (one per device);
//!   [`train`]: student and EMA teacher, the step, the loop over one or more devices;
//!   [`bench`]: the step benchmark.

pub mod backend;
pub mod bench;
pub mod collective;
pub mod compare;
pub mod config;
pub mod features;
pub mod head;
pub mod host;
pub mod loader;
pub mod loss;
pub mod model;
pub mod params;
pub mod plot;
pub mod products;
pub mod rundir;
#[cfg(test)]
mod testing;
pub mod train;
pub mod validate;
pub mod weights;

pub use config::TrainConfig;
