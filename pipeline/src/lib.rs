//! Stage 1: videos to track shards.
//!
//! [`input`] finds videos, [`run`] cuts clips, tracks them with a [`tracker::Tracker`] and
//! writes shards; [`eval`] scores tracks against ground truth.

pub mod eval;
pub mod input;
pub mod lock;
pub mod queue;
pub mod run;
pub mod tracker;

pub use run::{run, Report, RunOptions, RunProgress, TracksConfig};
