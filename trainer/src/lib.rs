//! Stage 2: MoSiC post-training of a ViT on track shards, generic over the Burn backend.
//!
//! Layers, each using only those above it:
//! - [`backend`]: the backends built in, devices, precision, the allocator.
//! - [`model`]: the ViT by timm's tensor names ([`model::timm`] is the one table of them),
//!   projection head and prototypes, weight files, parameters by path.
//! - [`data`]: track shards streamed into augmented batches, points selected in each crop.
//! - [`config`]: every hyperparameter, from TOML with overrides.
//! - [`run`]: the run directory (config, metrics, checkpoints), figures, runs side by side.
//! - [`eval`]: backbones and dense features for the protocols, their heavy products on the
//!   backend's device, the in-loop validation.
//! - [`train`]: the loss, the optimiser and EMA, the MoSiC step, collectives between ranks,
//!   one rank's loop, the whole run, the step benchmark.

pub mod backend;
pub mod config;
pub mod data;
pub mod eval;
pub mod model;
pub mod run;
#[doc(hidden)]
pub mod testing;
pub mod train;

pub use config::TrainConfig;
