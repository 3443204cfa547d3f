//! CoTracker3 (offline) through ONNX Runtime.
//!
//! The model is an ONNX export with the contract of `schemas/cotracker3-onnx.md`
//! (`tools/interop/export_cotracker3_onnx.py` makes it). Around the model this does what
//! CoTracker's predictor does: resize to 384x512 (bilinear, corners aligned), scale the
//! queries in, scale the tracks back, threshold visibility at 0.9 and pin each query
//! point to its own position, visible, in its query frame. The resizing runs on the
//! pipeline's decoding threads ([`Tracker::preprocessor`]), so this thread only feeds the model;
//! several clips go into one call where the export has a dynamic batch dimension.

use super::{Preprocess, TrackRequest, TrackResult, Tracker};
use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use mosic::clip::TrackerInfo;
use ort::logging::LogLevel;
use ort::session::Session;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const CONTRACT: &str = "cotracker3-offline-v1";
pub const MODEL_HEIGHT: usize = 384;
pub const MODEL_WIDTH: usize = 512;

/// Where the model runs. Only the kind is part of the tracker's settings (recorded in the
/// shards), so the outputs of workers on different GPUs merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl Device {
    fn kind(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<u32>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!(
                    "'{s}' is not a device: expected cpu, cuda or cuda:N (N the GPU's index)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoTrackerParams {
    pub visibility_threshold: f32,
    /// Clips per model call; at most what the model's batch dimension allows.
    pub batch: usize,
    pub intra_threads: usize,
    /// Run even where some nodes of the graph fall back to the CPU provider.
    pub allow_cpu_fallback: bool,
}

impl Default for CoTrackerParams {
    fn default() -> Self {
        Self { visibility_threshold: 0.9, batch: 1, intra_threads: 0, allow_cpu_fallback: false }
    }
}

pub struct CoTracker {
    session: Session,
    sha256: String,
    iters: Option<String>,
    device: Device,
    params: CoTrackerParams,
    model: PathBuf,
    /// The batch's model input, reused across calls.
    video: Vec<f32>,
    /// What loading found out: nodes on the CPU, a fallback allowed.
    pub notes: Vec<String>,
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
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
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

/// ONNX Runtime's messages while a session is being created (code location, text), for the
/// placement check; None while nobody listens.
static CAPTURE: Mutex<Option<Vec<(String, String)>>> = Mutex::new(None);
/// Where ONNX Runtime's warnings and errors go (stderr until the program says otherwise).
static LOG_SINK: Mutex<Option<LogSink>> = Mutex::new(None);

pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Sends ONNX Runtime's warnings and errors to `sink` (e.g. above a progress bar).
pub fn set_log_sink(sink: LogSink) {
    *LOG_SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
}

fn on_ort_log(level: LogLevel, location: &str, message: &str) {
    if let Some(c) = CAPTURE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        c.push((location.to_string(), message.to_string()));
    }
    // Placement is reported by our own check, with the nodes named.
    if level >= LogLevel::Warning
        && !message.contains("were not assigned to the preferred execution providers")
        && !message.contains("Rerunning with verbose output")
    {
        let line = format!("onnxruntime: {}", message.trim_end());
        match LOG_SINK.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(sink) => sink(&line),
            None => eprintln!("{line}"),
        }
    }
}

/// Loads ONNX Runtime once per process.
fn environment() -> Result<&'static ort::environment::Environment> {
    static ENV: std::sync::OnceLock<std::result::Result<ort::environment::Environment, String>> =
        std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let lib = find_ort_library().map_err(|e| format!("{e:#}"))?;
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("mosic")
            .with_logger(Arc::new(|level, _category, _id, location: &str, message: &str| {
                on_ort_log(level, location, message)
            }))
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", lib.display()))
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

/// Where ONNX Runtime put the nodes of a graph, read from its verbose session log.
#[derive(Debug, Default, PartialEq)]
pub struct Placement {
    /// Provider that got every node, with their number, when a single one did.
    pub all_on: Option<(String, usize)>,
    /// Nodes per provider: (op type, node name).
    pub nodes: BTreeMap<String, Vec<(String, String)>>,
    /// Nodes ONNX Runtime keeps on the CPU on purpose (shape arithmetic, where a GPU kernel
    /// would cost more than it saves).
    pub cpu_by_choice: BTreeSet<String>,
    /// (op type, node name) the GPU provider has no kernel for.
    pub no_kernel: Vec<(String, String)>,
}

pub const CPU_PROVIDER: &str = "CPUExecutionProvider";

impl Placement {
    pub fn parse(messages: &[(String, String)]) -> Self {
        let mut p = Placement::default();
        let mut current: Option<String> = None;
        let provider = |m: &str, key: &str| -> Option<(String, usize)> {
            let rest = &m[m.find(key)? + key.len()..];
            let (name, rest) = rest.split_once(']')?;
            let count = rest.rsplit(':').next()?.split_whitespace().next()?.parse().ok()?;
            Some((name.to_string(), count))
        };
        let node = |line: &str| -> Option<(String, String)> {
            let line = line.trim().trim_end_matches(',');
            let (op, rest) = line.split_once(" (")?;
            let name = rest.strip_suffix(')')?;
            (!op.is_empty() && !op.contains(' ')).then(|| (op.to_string(), name.to_string()))
        };
        for (location, m) in messages {
            if let Some(all) = provider(m, "All nodes placed on [") {
                p.all_on = Some(all);
                current = None;
            } else if let Some((name, _)) = provider(m, "Node(s) placed on [") {
                // Older versions list the nodes in the same message, one a line.
                let list = p.nodes.entry(name.clone()).or_default();
                list.extend(m.lines().skip(1).filter_map(node));
                current = Some(name);
            } else if let Some(rest) =
                m.split_once("Force fallback to CPU execution for node: ").map(|x| x.1)
            {
                if let Some(name) = rest.split(" because").next() {
                    p.cpu_by_choice.insert(name.trim().to_string());
                }
            } else if let Some(rest) =
                m.split_once("kernel not found in registries for Op type: ").map(|x| x.1)
            {
                if let Some((op, name)) = rest.split_once(" node name: ") {
                    p.no_kernel.push((op.trim().to_string(), name.trim().to_string()));
                }
            } else if location.contains("VerifyEachNodeIsAssignedToAnEp") {
                if let (Some(cur), Some(n)) = (current.as_ref(), node(m)) {
                    p.nodes.entry(cur.clone()).or_default().push(n);
                }
            }
        }
        p
    }

    /// Nodes that run on the CPU although another provider was asked for, and ONNX Runtime
    /// did not choose so for speed; None when the log does not say (then nothing is known).
    pub fn fallbacks(&self) -> Option<Vec<(String, String)>> {
        if let Some((name, _)) = &self.all_on {
            return Some(if name == CPU_PROVIDER {
                vec![("every node".into(), String::new())]
            } else {
                Vec::new()
            });
        }
        if self.nodes.is_empty() {
            return (!self.no_kernel.is_empty()).then(|| self.no_kernel.clone());
        }
        let cpu = self.nodes.get(CPU_PROVIDER).map(Vec::as_slice).unwrap_or_default();
        Some(cpu.iter().filter(|(_, name)| !self.cpu_by_choice.contains(name)).cloned().collect())
    }
}

fn name_nodes(nodes: &[(String, String)]) -> String {
    let mut s: Vec<String> =
        nodes.iter().take(20).map(|(op, name)| format!("{op} ({name})")).collect();
    if nodes.len() > 20 {
        s.push(format!("and {} more", nodes.len() - 20));
    }
    s.join(", ")
}

/// Largest batch the model's `video` input takes, from its batch dimension (None: dynamic)
/// and the optional `mosic.max_batch` metadata.
fn model_batch_limit(session: &Session, meta_max: Option<&str>) -> Option<usize> {
    let dim = session
        .inputs()
        .iter()
        .find(|i| i.name() == "video")
        .and_then(|i| i.dtype().tensor_shape().and_then(|s| s.first().copied()))
        .filter(|&d| d > 0)
        .map(|d| d as usize);
    let meta = meta_max.and_then(|m| m.trim().parse::<usize>().ok()).filter(|&m| m > 0);
    match (dim, meta) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl CoTracker {
    pub fn load(model: &Path, device: Device, params: CoTrackerParams) -> Result<Self> {
        if !model.is_file() {
            bail!("model {} does not exist", model.display());
        }
        if params.batch == 0 {
            bail!("--batch must be at least 1");
        }
        let sha256 = mosic::fsutil::sha256_file(model)?;
        let env = environment()?;
        let mut builder = Session::builder(env).map_err(ort_err)?;
        if params.intra_threads > 0 {
            builder = builder.with_intra_threads(params.intra_threads).map_err(ort_err)?;
        }
        let mut notes = Vec::new();
        let mut provider_missing = false;
        if let Device::Cuda(id) = device {
            use ort::ep::ExecutionProvider;
            if ort::ep::CUDA::is_available().unwrap_or(false) {
                let cuda = ort::ep::CUDA::default()
                    .with_device_id(id as i32)
                    // Fixed input shapes: the arena grows to what a call needs and stays there.
                    .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested)
                    .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Exhaustive)
                    // PyTorch's default for matrix products (CoTracker's predictor runs fp32).
                    .with_tf32(false);
                builder = builder.with_execution_providers([cuda.build().error_on_failure()]).map_err(|e| {
                    anyhow!("--device {device}: the CUDA execution provider failed to start ({e}); check the driver, the GPU index and the CUDA/cuDNN libraries")
                })?;
            } else {
                provider_missing = true;
            }
            // Node placement is only logged at the verbose level.
            builder = builder.with_log_level(LogLevel::Verbose).map_err(ort_err)?;
        }
        // One session at a time, so the captured log is this session's.
        static LOADING: Mutex<()> = Mutex::new(());
        let _loading = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        *CAPTURE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        let session = builder.commit_from_file(model);
        let log = CAPTURE.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        let session = session.map_err(|e| anyhow!("cannot load model {}: {e}", model.display()))?;
        if device != Device::Cpu {
            let placement = Placement::parse(&log);
            let fallback = if provider_missing {
                Some(format!(
                    "this ONNX Runtime has no CUDA execution provider, so all {} nodes of the model would run on the CPU \
                     (install the onnxruntime-gpu wheel, or point ORT_DYLIB_PATH at its libonnxruntime.so)",
                    placement.all_on.as_ref().map(|a| a.1.to_string()).unwrap_or_else(|| "the".into())
                ))
            } else {
                match placement.fallbacks() {
                    Some(f) if f.is_empty() => None,
                    Some(f) => Some(format!(
                        "{} node(s) of the model fall back to the CPU provider: {}",
                        f.len(),
                        name_nodes(&f)
                    )),
                    None => {
                        notes.push("ONNX Runtime did not report where the nodes run; the CPU fallback check was skipped".into());
                        None
                    }
                }
            };
            if let Some(f) = fallback {
                if !params.allow_cpu_fallback {
                    bail!(
                        "--device {device}: {f}; pass --allow-cpu-fallback to run like that anyway"
                    );
                }
                notes.push(format!("--device {device}: {f} (allowed by --allow-cpu-fallback)"));
            }
        }
        let meta = session.metadata().map_err(ort_err)?;
        let contract = meta.custom("mosic.contract");
        if contract.as_deref() != Some(CONTRACT) {
            bail!(
                "model {} does not declare the I/O contract '{CONTRACT}' (metadata mosic.contract = {contract:?}); \
                 export it with tools/interop/export_cotracker3_onnx.py",
                model.display()
            );
        }
        let iters = meta.custom("mosic.iters");
        let max_batch_meta = meta.custom("mosic.max_batch");
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
        if let Some(max) = model_batch_limit(&session, max_batch_meta.as_deref()) {
            if params.batch > max {
                bail!(
                    "--batch {}: model {} takes at most {max} clip(s) per call (its 'video' input fixes the batch); \
                     use --batch {max}, or export the model again with tools/interop/export_cotracker3_onnx.py (dynamic batch)",
                    params.batch,
                    model.display()
                );
            }
        }
        Ok(Self {
            session,
            sha256,
            iters,
            device,
            params,
            model: model.to_path_buf(),
            video: Vec::new(),
            notes,
        })
    }
}

/// The model's input made on the decoding threads: every frame resized to 384x512, planar floats.
struct ModelInput;

impl Preprocess for ModelInput {
    fn len(&self, frames: usize) -> usize {
        frames * 3 * MODEL_HEIGHT * MODEL_WIDTH
    }

    fn prepare(&self, frames: &[RgbImage], out: &mut [f32]) {
        let size = 3 * MODEL_HEIGHT * MODEL_WIDTH;
        for (f, o) in frames.iter().zip(out.chunks_exact_mut(size)) {
            resize_to_model(f, o);
        }
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
                "device": self.device.kind(),
            }),
        }
    }

    fn batch_size(&self) -> usize {
        self.params.batch.max(1)
    }

    fn preprocessor(&self) -> Option<Arc<dyn Preprocess>> {
        Some(Arc::new(ModelInput))
    }

    fn track(&mut self, clips: &[TrackRequest<'_>]) -> Result<Vec<TrackResult>> {
        let mut out = Vec::with_capacity(clips.len());
        for chunk in clips.chunks(self.batch_size()) {
            let r = self
                .track_batch(chunk)
                .with_context(|| format!("running {} on {}", self.model.display(), self.device))?;
            out.extend(r);
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
        let clip_len = ModelInput.len(t);
        let mut queries = Vec::with_capacity(b * n * 3);
        for c in clips {
            for q in c.queries {
                queries.extend_from_slice(&[c.query_frame as f32, q[0] * sx, q[1] * sy]);
            }
        }
        // One clip already prepared goes in as it is; a batch is gathered into one buffer.
        let single = match clips {
            [c] => c.prepared.filter(|p| p.len() == clip_len),
            _ => None,
        };
        let video: &[f32] = match single {
            Some(p) => p,
            None => {
                self.video.resize(b * clip_len, 0.0);
                for (c, dst) in clips.iter().zip(self.video.chunks_exact_mut(clip_len)) {
                    match c.prepared.filter(|p| p.len() == clip_len) {
                        Some(p) => dst.copy_from_slice(p),
                        None => ModelInput.prepare(c.frames, dst),
                    }
                }
                &self.video
            }
        };
        let video_t = TensorRef::from_array_view(([b, t, 3, MODEL_HEIGHT, MODEL_WIDTH], video))
            .map_err(ort_err)?;
        let queries_t = TensorRef::from_array_view(([b, n, 3], &queries[..])).map_err(ort_err)?;
        let outputs = self
            .session
            .run(ort::inputs!["video" => video_t, "queries" => queries_t])
            .map_err(ort_err)?;
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
                tracks: (0..t * n)
                    .map(|e| [tracks[(base + e) * 2] / sx, tracks[(base + e) * 2 + 1] / sy])
                    .collect(),
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
    (
        (MODEL_WIDTH - 1) as f32 / (w.max(2) - 1) as f32,
        (MODEL_HEIGHT - 1) as f32 / (h.max(2) - 1) as f32,
    )
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

    fn log(lines: &[(&str, &str)]) -> Vec<(String, String)> {
        lines.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn placement_from_the_verbose_log() {
        // As ONNX Runtime logs it: one message per node under its provider's header.
        let p = Placement::parse(&log(&[
            ("cuda_execution_provider.cc:2517 GetCapability", "CUDA kernel not found in registries for Op type: GridSample node name: grid_3"),
            ("fallback_cpu_capability.cc:112 GetCpuPreferredNodes", "ORT optimization- Force fallback to CPU execution for node: shape_7 because the CPU execution path is deemed faster than overhead involved with execution on other EPs  capable of executing this node"),
            ("session_state.cc:1345 VerifyEachNodeIsAssignedToAnEp", " Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 2"),
            ("session_state.cc:1347 VerifyEachNodeIsAssignedToAnEp", "  MatMul (mm_1)"),
            ("session_state.cc:1347 VerifyEachNodeIsAssignedToAnEp", "  MemcpyFromHost (Memcpy)"),
            ("session_state.cc:1345 VerifyEachNodeIsAssignedToAnEp", " Node(s) placed on [CPUExecutionProvider]. Number of nodes: 2"),
            ("session_state.cc:1347 VerifyEachNodeIsAssignedToAnEp", "  GridSample (grid_3)"),
            ("session_state.cc:1347 VerifyEachNodeIsAssignedToAnEp", "  Shape (shape_7)"),
        ]));
        assert_eq!(p.fallbacks().unwrap(), vec![("GridSample".to_string(), "grid_3".to_string())]);
        assert_eq!(p.no_kernel, vec![("GridSample".to_string(), "grid_3".to_string())]);
        // The older form lists the nodes inside the header message.
        let p = Placement::parse(&log(&[
            (
                "",
                " Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 1\n  MatMul (mm),\n",
            ),
            (
                "",
                " Node(s) placed on [CPUExecutionProvider]. Number of nodes: 1\n  Scan (loop_0),\n",
            ),
        ]));
        assert_eq!(p.fallbacks().unwrap(), vec![("Scan".to_string(), "loop_0".to_string())]);
        // Everything on the GPU provider, or on the CPU one.
        let all = |ep: &str| {
            Placement::parse(&log(&[(
                "",
                &format!(" All nodes placed on [{ep}]. Number of nodes: 812"),
            )]))
        };
        assert_eq!(all("CUDAExecutionProvider").fallbacks(), Some(vec![]));
        assert_eq!(all("CPUExecutionProvider").all_on, Some(("CPUExecutionProvider".into(), 812)));
        assert_eq!(all("CPUExecutionProvider").fallbacks().unwrap().len(), 1);
        // Nothing said: unknown.
        assert_eq!(Placement::parse(&[]).fallbacks(), None);
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("cuda:x".parse::<Device>().unwrap_err().contains("cuda:N"));
        assert!("gpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    }
}
