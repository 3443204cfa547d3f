//! The MoSiC shared library: what stage 1 (tracking) and stage 2 (training) agree on.
//!
//! The two stages meet only at the track shard: Parquet files of clips with their frames,
//! point tracks and visibility, described in `schemas/shard-v1.json`. This crate owns
//! that contract (the record type, the Arrow schema, the reader and writer) together with
//! the manifest that lists the shards of a directory and the checks run on them. It also
//! holds what both stages and the evaluation share: the seeded generator, atomic writes,
//! and host tensors with their one safetensors read and write path ([`tensors`]).

pub mod clip;
pub mod error;
pub mod fsutil;
pub mod imageio;
pub mod manifest;
pub mod rng;
pub mod schema;
pub mod shard;
pub mod tensors;
#[doc(hidden)]
pub mod testing;
pub mod verify;

pub use clip::{grid_points, plan_clips, Clip, ClipPlan, ShardSpec, TrackerInfo};
pub use error::{Error, Result};
pub use manifest::{Manifest, ShardEntry};
pub use shard::{ShardReader, ShardWriter};
