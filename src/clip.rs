//! The clip record (one shard row) and the conventions every producer and consumer shares:
//! which source frames make a clip, where the query grid lies, and pixel coordinates.
//!
//! Coordinates are in pixels of the stored frames, x = column and y = row, with pixel
//! centres at integer coordinates: the top-left pixel's centre is (0, 0) and the image
//! spans [-0.5, W - 0.5] x [-0.5, H - 0.5].

use serde::{Deserialize, Serialize};

/// Which tracker made the tracks, so a shard can be traced to a model file and settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackerInfo {
    pub name: String,
    /// sha256 of the model file, or "" for trackers without one (native, ground truth).
    pub model_sha256: String,
    /// Tracker settings as a JSON object (iterations, thresholds, ...).
    pub params: serde_json::Value,
}

/// What every row of a shard has in common; fixes the lengths of the fixed-size lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub frames_per_clip: u32,
    pub grid_size: u32,
    pub width: u32,
    pub height: u32,
    pub query_frame: u32,
    pub tracker: TrackerInfo,
}

impl ShardSpec {
    pub fn num_points(&self) -> usize {
        (self.grid_size * self.grid_size) as usize
    }
    pub fn t(&self) -> usize {
        self.frames_per_clip as usize
    }
}

/// One clip: T frames of one video with the tracks of N query points.
#[derive(Clone, Debug, PartialEq)]
pub struct Clip {
    pub dataset: String,
    pub video_id: String,
    pub clip_index: u32,
    /// Indices into the source video (frame numbers at `source_fps`), length T.
    pub frame_indices: Vec<u32>,
    pub source_fps: f32,
    /// JPEG bytes of each stored frame, length T; empty when read without frames.
    pub frames: Vec<Vec<u8>>,
    /// Query points (x, y) at `query_frame`, length N.
    pub queries: Vec<[f32; 2]>,
    /// [T][N] positions (x, y).
    pub tracks: Vec<[f32; 2]>,
    /// [T][N], true where the point is visible.
    pub visibility: Vec<bool>,
}

impl Clip {
    pub fn id(&self) -> String {
        format!("{}/{}#{}", self.dataset, self.video_id, self.clip_index)
    }
}

/// How clips are cut from a video.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipPlan {
    /// Frames per clip (T).
    pub frames: u32,
    /// Seconds from the first frame of a clip to one step past its last.
    pub span_seconds: f64,
    /// At most this many clips per video; `None` takes every non-overlapping window.
    pub max_clips: Option<u32>,
}

impl Default for ClipPlan {
    fn default() -> Self {
        // Paper ablation: 12 frames over 3.2 s works best.
        Self { frames: 12, span_seconds: 3.2, max_clips: None }
    }
}

impl ClipPlan {
    /// Source-frame step between consecutive clip frames at `fps`.
    pub fn step(&self, fps: f64) -> u32 {
        ((self.span_seconds * fps / self.frames as f64).round() as u32).max(1)
    }

    /// Frame-index lists of the clips of a video with `num_frames` frames at `fps`.
    /// Empty when the video is too short for one clip.
    pub fn clips(&self, num_frames: u64, fps: f64) -> Vec<Vec<u32>> {
        let step = self.step(fps) as u64;
        let t = self.frames as u64;
        let needed = (t - 1) * step + 1;
        if t == 0 || num_frames < needed {
            return Vec::new();
        }
        let window = t * step;
        let mut n = (num_frames - needed) / window + 1;
        if let Some(m) = self.max_clips {
            n = n.min(m as u64);
        }
        (0..n).map(|c| (0..t).map(|k| (c * window + k * step) as u32).collect()).collect()
    }
}

/// Shorthand for [`ClipPlan::clips`].
pub fn plan_clips(plan: &ClipPlan, num_frames: u64, fps: f64) -> Vec<Vec<u32>> {
    plan.clips(num_frames, fps)
}

/// The `size` x `size` query grid, row-major: CoTracker's grid helper (evenly spaced, a
/// margin of W/64 from the border) applied to the stored frame, made symmetric about the
/// image centre. (CoTracker's predictor places its grid at 384x512 and scales it back, which
/// on 224x224 frames lands up to 1.2 px away from these points; shards store the queries
/// explicitly, so consumers never need to recompute them.)
pub fn grid_points(size: u32, width: u32, height: u32) -> Vec<[f32; 2]> {
    let (w, h) = (width as f32, height as f32);
    if size == 1 {
        return vec![[(w - 1.0) / 2.0, (h - 1.0) / 2.0]];
    }
    let m = w / 64.0;
    let lin = |lo: f32, hi: f32, i: u32| lo + (hi - lo) * i as f32 / (size - 1) as f32;
    let mut pts = Vec::with_capacity((size * size) as usize);
    for r in 0..size {
        for c in 0..size {
            pts.push([lin(m, w - 1.0 - m, c), lin(m, h - 1.0 - m, r)]);
        }
    }
    pts
}

/// Maps a coordinate between two image sizes under half-pixel alignment, the convention
/// of area-aware resizers (PIL, torchvision, `image`).
pub fn rescale_coord(v: f32, from: u32, to: u32) -> f32 {
    (v + 0.5) * to as f32 / from as f32 - 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_are_non_overlapping_windows() {
        let plan = ClipPlan::default();
        assert_eq!(plan.step(30.0), 8);
        let clips = plan.clips(200, 30.0);
        // needed = 11*8+1 = 89; window 96: starts 0, 96 (96+88=184 < 200).
        assert_eq!(clips.len(), 2);
        assert_eq!(clips[0], (0..12).map(|k| k * 8).collect::<Vec<_>>());
        assert_eq!(clips[1][0], 96);
        assert_eq!(*clips[1].last().unwrap(), 184);
        assert!(plan.clips(88, 30.0).is_empty());
        assert_eq!(plan.clips(89, 30.0).len(), 1);
        let one = ClipPlan { max_clips: Some(1), ..plan };
        assert_eq!(one.clips(1000, 30.0).len(), 1);
        // 6-fps source: step rounds to 2.
        assert_eq!(ClipPlan::default().step(6.0), 2);
    }

    #[test]
    fn grid_matches_cotracker_layout() {
        let g = grid_points(16, 224, 224);
        assert_eq!(g.len(), 256);
        assert_eq!(g[0], [3.5, 3.5]);
        assert_eq!(g[15], [219.5, 3.5]); // row-major: x varies fastest
        assert_eq!(g[16], [3.5, 3.5 + 216.0 / 15.0]);
        assert_eq!(g[255], [219.5, 219.5]);
    }

    #[test]
    fn rescale_is_half_pixel() {
        assert_eq!(rescale_coord(-0.5, 320, 224), -0.5);
        assert_eq!(rescale_coord(319.5, 320, 224), 223.5);
        assert!((rescale_coord(rescale_coord(37.25, 320, 224), 224, 320) - 37.25).abs() < 1e-4);
    }
}
