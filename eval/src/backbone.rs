//! What the protocols need from a model: dense features of images. The trainer implements
//! [`Backbone`] for its ViT on any Burn backend; anything else that gives feature maps can
//! too, so this crate stays free of any deep-learning framework.

use crate::card::ProtocolCard;
use crate::data::dense::FeatureMap;
use anyhow::Result;
use image::RgbImage;

/// Images in, feature maps out.
pub trait Backbone {
    /// Patch-token feature maps of `images`, each resized to the square input of
    /// [`Backbone::input_size`].
    fn features(&self, images: &[RgbImage]) -> Result<Vec<FeatureMap>>;
    /// Channels of a feature map.
    fn dim(&self) -> usize;
    /// Input side in pixels.
    fn input_size(&self) -> usize;
    /// Patch side in pixels: a feature map is `input_size / patch_size` on a side.
    fn patch_size(&self) -> usize;
    /// Images per forward pass: [`extract`] calls in whole multiples of it, so features do
    /// not depend on how a set is split into calls.
    fn batch(&self) -> usize;
}

/// Progress of a long step: (what is counted, done, total).
pub type Progress<'a> = dyn Fn(&str, u64, u64) + Sync + 'a;

/// No progress reports.
pub fn quiet(_: &str, _: u64, _: u64) {}

/// What a protocol run gives: its scores and the card that says how they were made.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub scores: Vec<Score>,
    pub card: ProtocolCard,
}

/// Images given to the backbone per call in [`extract`]: enough to keep a device busy,
/// few enough that images and features of one call stay small.
pub const EXTRACT_CHUNK: usize = 64;

/// Patches in a feature map of `bb`.
pub fn patches(bb: &dyn Backbone) -> u64 {
    let g = (bb.input_size() / bb.patch_size().max(1)) as u64;
    g * g
}

/// Images per call of [`extract`]: [`EXTRACT_CHUNK`] rounded up to whole batches, so a set
/// split into calls of this size is embedded in the same batches as in one call.
pub fn chunk_len(bb: &dyn Backbone) -> usize {
    let b = bb.batch().max(1);
    EXTRACT_CHUNK.div_ceil(b) * b
}

/// Features of `images`, a chunk at a time, counted under `what`.
pub fn extract(
    bb: &dyn Backbone,
    images: &[RgbImage],
    what: &str,
    progress: &Progress,
) -> Result<Vec<FeatureMap>> {
    let mut out = Vec::with_capacity(images.len());
    progress(what, 0, images.len() as u64);
    for chunk in images.chunks(chunk_len(bb)) {
        out.extend(bb.features(chunk)?);
        progress(what, out.len() as u64, images.len() as u64);
    }
    Ok(out)
}

/// One protocol's result over seeds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    /// e.g. "K=21 hungarian", "C over K=10".
    pub name: String,
    pub k: usize,
    pub matching: String,
    /// mIoU per seed, in [0, 1].
    pub per_seed: Vec<f64>,
    pub mean: f64,
    /// Sample standard deviation over seeds (0 for one seed).
    pub std: f64,
}

impl Score {
    pub fn new(name: String, k: usize, matching: &str, per_seed: Vec<f64>) -> Self {
        let n = per_seed.len() as f64;
        let mean = per_seed.iter().sum::<f64>() / n;
        let std = if per_seed.len() > 1 {
            (per_seed.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { name, k, matching: matching.into(), per_seed, mean, std }
    }
}
