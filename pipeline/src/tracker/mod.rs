//! Point trackers behind one trait: CoTracker3 through ONNX Runtime, and a native
//! pyramidal Lucas-Kanade tracker that needs no model file.

pub mod cotracker;
pub mod native;

use image::RgbImage;
use mosic::clip::TrackerInfo;
use std::sync::Arc;

/// One clip to track: frames at the stored size and query points placed on `query_frame`.
pub struct TrackRequest<'a> {
    pub frames: &'a [RgbImage],
    /// (x, y) in pixels of the frames; x = column, y = row, pixel centres at integers.
    pub queries: &'a [[f32; 2]],
    pub query_frame: usize,
    /// The tracker's own input made from `frames` by its [`Preprocess`], when it has one.
    pub prepared: Option<&'a [f32]>,
}

/// Tracks of one clip, [T][N] in the same pixel space as the request.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackResult {
    pub tracks: Vec<[f32; 2]>,
    pub visibility: Vec<bool>,
}

/// Per-clip input preparation that the decoding threads run (e.g. resizing to the model's
/// input size), so that the tracker's own thread only tracks.
pub trait Preprocess: Send + Sync {
    /// Floats of the prepared input of a clip of `frames` frames.
    fn len(&self, frames: usize) -> usize;
    /// Fills `out` (`len` floats) from the clip's stored frames.
    fn prepare(&self, frames: &[RgbImage], out: &mut [f32]);
}

pub trait Tracker: Send {
    /// Name, model checksum and settings, recorded in every shard row.
    fn info(&self) -> TrackerInfo;
    /// Clips per call that the tracker handles best.
    fn batch_size(&self) -> usize {
        1
    }
    /// What the decoding threads should prepare for [`TrackRequest::prepared`].
    fn preprocessor(&self) -> Option<Arc<dyn Preprocess>> {
        None
    }
    fn track(&mut self, clips: &[TrackRequest<'_>]) -> anyhow::Result<Vec<TrackResult>>;
}
