//! Stage 1: videos to track shards.
//!
//! [`input`] finds videos; [`run`] splits them into groups, each tracked by `group` (clips
//! cut and prepared on decoding threads, tracked with a [`tracker::Tracker`]) into one shard;
//! [`eval`] scores tracks against ground truth. [`config`] holds the run's settings.

pub mod config;
pub mod eval;
mod group;
pub mod input;
pub mod lock;
pub mod queue;
pub mod run;
pub mod tracker;

pub use config::{RunOptions, TracksConfig};
pub use group::{decode_clips, decode_only, sanitize};
pub use run::{run, Report, RunProgress};
