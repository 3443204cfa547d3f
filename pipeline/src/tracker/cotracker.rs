//! CoTracker3 (offline) through ONNX Runtime.
//!
//! The model is an ONNX export with the contract of `schemas/cotracker3-onnx.md`
//! (`tools/export_cotracker3_onnx.py` makes it). Around the model this does what
//! CoTracker's predictor does: resize to 384x512 (bilinear, corners aligned), scale the
//! queries in, scale the tracks back, threshold visibility at 0.9 and pin each query
//! point to its own position, visible, in its query frame.

use super::{TrackRequest, TrackResult, Tracker};
use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use mosic::clip::TrackerInfo;
use ort::session::Session;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONTRACT: &str = "cotracker3-offline-v1";
pub const MODEL_HEIGHT: usize = 384;
pub const MODEL_WIDTH: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoTrackerParams {
    pub visibility_threshold: f32,
    /// Clips per model call; the public CoTracker3 export handles 1.
    pub batch: usize,
    pub intra_threads: usize,
}

impl Default for CoTrackerParams {
    fn default() -> Self {
        Self { visibility_threshold: 0.9, batch: 1, intra_threads: 0 }
    }
}

pub struct CoTracker {
    session: Session,
    sha256: String,
    iters: Option<String>,
    device: Device,
    params: CoTrackerParams,
    model: PathBuf,
}

/// Finds ONNX Runtime's shared library: `ORT_DYLIB_PATH`, else the `onnxruntime` (or
/// `onnxruntime-gpu`) Python wheel of the `python3` on PATH.
pub fn find_ort_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("ORT_DYLIB_PATH={} is not a file", p.display());
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output();
    if let Ok(o) = out {
        if o.status.success() {
            let capi = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("capi");
            let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
                .collect();
            libs.sort();
            if let Some(l) = libs.pop() {
                return Ok(l);
            }
        }
    }
    bail!("ONNX Runtime not found: `pip install onnxruntime` (or onnxruntime-gpu for CUDA), or set ORT_DYLIB_PATH to libonnxruntime.so")
}

fn ort_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// Loads ONNX Runtime once per process.
fn environment() -> Result<&'static ort::environment::Environment> {
    static ENV: std::sync::OnceLock<std::result::Result<ort::environment::Environment, String>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let lib = find_ort_library().map_err(|e| format!("{e:#}"))?;
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("mosic")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", lib.display()))
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

impl CoTracker {
    pub fn load(model: &Path, device: Device, params: CoTrackerParams) -> Result<Self> {
        if !model.is_file() {
            bail!("model {} does not exist", model.display());
        }
        let sha256 = mosic::fsutil::sha256_file(model)?;
        let env = environment()?;
        let mut builder = Session::builder(env).map_err(ort_err)?;
        if params.intra_threads > 0 {
            builder = builder.with_intra_threads(params.intra_threads).map_err(ort_err)?;
        }
        if device == Device::Cuda {
            use ort::ep::ExecutionProvider;
            let cuda = ort::ep::CUDA::default();
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                bail!(
                    "--device cuda: this ONNX Runtime has no CUDA execution provider (install the onnxruntime-gpu wheel, \
                     or point ORT_DYLIB_PATH at its libonnxruntime.so); use --device cpu to run on the CPU"
                );
            }
            builder = builder.with_execution_providers([cuda.build().error_on_failure()]).map_err(|e| {
                anyhow!("--device cuda: the CUDA execution provider failed to start ({e}); check the driver and CUDA/cuDNN libraries")
            })?;
        }
        let session = builder.commit_from_file(model).map_err(|e| anyhow!("cannot load model {}: {e}", model.display()))?;
        let meta = session.metadata().map_err(ort_err)?;
        let contract = meta.custom("mosic.contract");
        if contract.as_deref() != Some(CONTRACT) {
            bail!(
                "model {} does not declare the I/O contract '{CONTRACT}' (metadata mosic.contract = {contract:?}); \
                 export it with tools/export_cotracker3_onnx.py",
                model.display()
            );
        }
        let iters = meta.custom("mosic.iters");
        drop(meta);
        for name in ["video", "queries"] {
            if !session.inputs().iter().any(|i| i.name() == name) {
                bail!("model {} has no input '{name}'", model.display());
            }
        }
        for name in ["tracks", "visibility"] {
            if !session.outputs().iter().any(|o| o.name() == name) {
                bail!("model {} has no output '{name}'", model.display());
            }
        }
        Ok(Self { session, sha256, iters, device, params, model: model.to_path_buf() })
    }
}

impl Tracker for CoTracker {
    fn info(&self) -> TrackerInfo {
        TrackerInfo {
            name: "cotracker3".into(),
            model_sha256: self.sha256.clone(),
            params: serde_json::json!({
                "model_input": [MODEL_HEIGHT, MODEL_WIDTH],
                "iters": self.iters,
                "visibility_threshold": self.params.visibility_threshold,
                "device": self.device,
            }),
        }
    }

    fn batch_size(&self) -> usize {
        self.params.batch.max(1)
    }

    fn track(&mut self, clips: &[TrackRequest<'_>]) -> Result<Vec<TrackResult>> {
        let mut out = Vec::with_capacity(clips.len());
        for chunk in clips.chunks(self.batch_size()) {
            out.extend(self.track_batch(chunk).with_context(|| format!("running {}", self.model.display()))?);
        }
        Ok(out)
    }
}

impl CoTracker {
    fn track_batch(&mut self, clips: &[TrackRequest<'_>]) -> Result<Vec<TrackResult>> {
        let b = clips.len();
        let t = clips[0].frames.len();
        let n = clips[0].queries.len();
        let (w, h) = (clips[0].frames[0].width(), clips[0].frames[0].height());
        if clips.iter().any(|c| c.frames.len() != t || c.queries.len() != n) {
            bail!("clips of one batch must have the same length and number of points");
        }
        let (sx, sy) = scale_to_model(w, h);
        let plane = MODEL_HEIGHT * MODEL_WIDTH;
        let mut video = vec![0f32; b * t * 3 * plane];
        let mut queries = Vec::with_capacity(b * n * 3);
        for (ci, c) in clips.iter().enumerate() {
            for (k, f) in c.frames.iter().enumerate() {
                let off = (ci * t + k) * 3 * plane;
                resize_to_model(f, &mut video[off..off + 3 * plane]);
            }
            for q in c.queries {
                queries.extend_from_slice(&[c.query_frame as f32, q[0] * sx, q[1] * sy]);
            }
        }
        let video_t = TensorRef::from_array_view(([b, t, 3, MODEL_HEIGHT, MODEL_WIDTH], &video[..])).map_err(ort_err)?;
        let queries_t = TensorRef::from_array_view(([b, n, 3], &queries[..])).map_err(ort_err)?;
        let outputs = self.session.run(ort::inputs!["video" => video_t, "queries" => queries_t]).map_err(ort_err)?;
        let (tshape, tracks) = outputs["tracks"].try_extract_tensor::<f32>().map_err(ort_err)?;
        let (vshape, vis) = outputs["visibility"].try_extract_tensor::<f32>().map_err(ort_err)?;
        let want_t = [b as i64, t as i64, n as i64, 2];
        let want_v = [b as i64, t as i64, n as i64];
        if tshape.as_ref() != want_t || vshape.as_ref() != want_v {
            bail!("model returned tracks {:?} and visibility {:?}, expected {want_t:?} and {want_v:?}", tshape, vshape);
        }
        let thr = self.params.visibility_threshold;
        let mut results = Vec::with_capacity(b);
        for (ci, c) in clips.iter().enumerate() {
            let base = ci * t * n;
            let mut r = TrackResult {
                tracks: (0..t * n).map(|e| [tracks[(base + e) * 2] / sx, tracks[(base + e) * 2 + 1] / sy]).collect(),
                visibility: (0..t * n).map(|e| vis[base + e] > thr).collect(),
            };
            for (i, q) in c.queries.iter().enumerate() {
                r.tracks[c.query_frame * n + i] = *q;
                r.visibility[c.query_frame * n + i] = true;
            }
            results.push(r);
        }
        Ok(results)
    }
}

/// Factors from stored-frame pixels to model pixels (corner-aligned, as CoTracker scales).
pub fn scale_to_model(w: u32, h: u32) -> (f32, f32) {
    ((MODEL_WIDTH - 1) as f32 / (w.max(2) - 1) as f32, (MODEL_HEIGHT - 1) as f32 / (h.max(2) - 1) as f32)
}

/// Bilinear resize with aligned corners into planar RGB floats in 0..255, as
/// `F.interpolate(..., mode="bilinear", align_corners=True)` does in CoTracker's predictor.
pub fn resize_to_model(img: &RgbImage, out: &mut [f32]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = MODEL_HEIGHT * MODEL_WIDTH;
    let fx = (w - 1) as f32 / (MODEL_WIDTH - 1) as f32;
    let fy = (h - 1) as f32 / (MODEL_HEIGHT - 1) as f32;
    let raw = img.as_raw();
    let cols: Vec<(usize, usize, f32)> = (0..MODEL_WIDTH)
        .map(|x| {
            let s = x as f32 * fx;
            let x0 = (s.floor() as usize).min(w - 1);
            (x0, (x0 + 1).min(w - 1), s - x0 as f32)
        })
        .collect();
    for y in 0..MODEL_HEIGHT {
        let s = y as f32 * fy;
        let y0 = (s.floor() as usize).min(h - 1);
        let y1 = (y0 + 1).min(h - 1);
        let ay = s - y0 as f32;
        for (x, &(x0, x1, ax)) in cols.iter().enumerate() {
            for ch in 0..3 {
                let p = |yy: usize, xx: usize| raw[(yy * w + xx) * 3 + ch] as f32;
                let top = p(y0, x0) * (1.0 - ax) + p(y0, x1) * ax;
                let bot = p(y1, x0) * (1.0 - ax) + p(y1, x1) * ax;
                out[ch * plane + y * MODEL_WIDTH + x] = top * (1.0 - ay) + bot * ay;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corner_aligned_resize_keeps_corners_and_is_linear() {
        // A horizontal ramp stays a ramp: value at model column x is 255 * x / 511.
        let img = RgbImage::from_fn(2, 2, |x, _| image::Rgb([(x * 255) as u8, 0, 100]));
        let mut out = vec![0f32; 3 * MODEL_HEIGHT * MODEL_WIDTH];
        resize_to_model(&img, &mut out);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[MODEL_WIDTH - 1], 255.0);
        assert!((out[200] - 255.0 * 200.0 / 511.0).abs() < 1e-3);
        assert!((out[2 * MODEL_HEIGHT * MODEL_WIDTH + 12345] - 100.0).abs() < 1e-3);
    }

    #[test]
    fn query_scaling_maps_corners_to_corners() {
        let (sx, sy) = scale_to_model(224, 224);
        assert_eq!(223.0 * sx, 511.0);
        assert_eq!(223.0 * sy, 383.0);
    }
}
