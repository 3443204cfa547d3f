//! What a stage-1 run is asked to do: input, clip plan, grid, frame size, workers.

use crate::tracker::Tracker;
use anyhow::{bail, Result};
use mosic::clip::ClipPlan;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TracksConfig {
    pub input: PathBuf,
    pub dataset: Option<String>,
    pub plan: ClipPlan,
    pub width: u32,
    pub height: u32,
    pub grid_size: u32,
    pub jpeg_quality: u8,
    /// Frame rate of the frame numbering in frame folders (YouTube-VOS: 30).
    pub folder_fps: f64,
    pub videos_per_shard: usize,
    pub num_workers: u32,
    pub worker_index: u32,
}

impl Default for TracksConfig {
    fn default() -> Self {
        Self {
            input: PathBuf::new(),
            dataset: None,
            plan: ClipPlan::default(),
            width: 224,
            height: 224,
            // The trainer takes a 16 x 16 set of points inside each random crop (a crop's short
            // side can be 0.55 of the frame's), so the frame stores at least 17 along every side.
            grid_size: 32,
            jpeg_quality: 90,
            folder_fps: 30.0,
            videos_per_shard: 64,
            num_workers: 1,
            worker_index: 0,
        }
    }
}

impl TracksConfig {
    /// Where this worker writes: the output itself, or its own subfolder when there are
    /// several workers (joined afterwards by `mosic shards merge`).
    pub fn worker_dir(&self, out: &Path) -> PathBuf {
        if self.num_workers > 1 {
            out.join(format!("worker-{:03}-of-{:03}", self.worker_index, self.num_workers))
        } else {
            out.to_path_buf()
        }
    }

    /// Every setting that cannot work, named with its command-line option; checked before any
    /// input is listed.
    pub fn validate(&self) -> Result<()> {
        let mut bad = Vec::new();
        if self.grid_size < 1 {
            bad.push(format!("--grid must be at least 1 (got {})", self.grid_size));
        } else if self.grid_size > self.width.min(self.height) {
            bad.push(format!(
                "--grid {} puts points less than a pixel apart on {}x{} frames",
                self.grid_size, self.width, self.height
            ));
        }
        if self.plan.frames < 2 {
            bad.push(format!(
                "--frames must be at least 2 (got {}): a clip needs a frame to track to",
                self.plan.frames
            ));
        }
        if !(self.plan.span_seconds > 0.0 && self.plan.span_seconds.is_finite()) {
            bad.push(format!(
                "--span must be a positive number of seconds (got {})",
                self.plan.span_seconds
            ));
        }
        if self.plan.max_clips == Some(0) {
            bad.push("--clips-per-video must be positive (0 means all)".into());
        }
        for (what, v) in [("width", self.width), ("height", self.height)] {
            if !(1..=u16::MAX as u32).contains(&v) {
                bad.push(format!("--size: the stored {what} must be in 1..=65535 (got {v})"));
            }
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            bad.push(format!("--jpeg-quality must be in 1..=100 (got {})", self.jpeg_quality));
        }
        if !(self.folder_fps > 0.0 && self.folder_fps.is_finite()) {
            bad.push(format!("--folder-fps must be positive (got {})", self.folder_fps));
        }
        if self.videos_per_shard < 1 {
            bad.push("--videos-per-shard must be at least 1".into());
        }
        if self.num_workers < 1 {
            bad.push("--num-workers must be at least 1".into());
        } else if self.worker_index >= self.num_workers {
            bad.push(format!(
                "--worker-index {} is not below --num-workers {} (indices run from 0)",
                self.worker_index, self.num_workers
            ));
        }
        if !bad.is_empty() {
            bail!("{}", bad.join("; "));
        }
        Ok(())
    }
}

/// How a run behaves, as opposed to what it makes (which [`TracksConfig`] fixes).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// A video that fails is recorded and skipped instead of ending the run.
    pub keep_going: bool,
    /// Process again the groups where videos failed in an earlier run.
    pub retry_failed: bool,
    /// Resume even though the input's video list changed, with the original list.
    pub allow_changed_input: bool,
    /// Bytes of prepared clips that may wait for the tracker (plus one clip per decoding
    /// thread being prepared, and one batch being tracked); None for two batches' worth, at
    /// least 64 MiB.
    pub queue_bytes: Option<usize>,
    /// Decoding threads; 0 for one per core.
    pub decoders: usize,
}

/// Room for two batches of clips, at least 64 MiB: the tracker never waits for a batch
/// while decoding keeps up, and memory stays near what the batches need.
pub fn default_queue_bytes(cfg: &TracksConfig, tracker: &dyn Tracker) -> usize {
    let t = cfg.plan.frames as usize;
    let frame = cfg.width as usize * cfg.height as usize * 3;
    let input = tracker.preprocessor().map_or(0, |p| p.len(t) * 4);
    let clip = t * frame + t * frame / 8 + input; // frames, their JPEGs (about 1/8), the tracker's input
    (2 * tracker.batch_size().max(1) * clip).max(64 << 20)
}
