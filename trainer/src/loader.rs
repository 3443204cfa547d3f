//! Streaming track shards into augmented, normalised batches: deterministic and resumable.
//!
//! **Order.** The clip sequence of epoch `e` is a pure function of (seed, e, manifest): the
//! row groups of all shards (the unit Parquet reads at once) are shuffled, read in that
//! order, and their rows pass through a shuffle buffer of `shuffle_buffer` clips that emits
//! a random held clip. Only row counts steer this, so [`Loader::open`] resumes mid-epoch by
//! replaying the order from frame-less reads: skipped clips are neither read nor decoded.
//! The last partial batch of an epoch is dropped.
//!
//! **Augmentation** of the k-th clip of epoch e is drawn from its own stream,
//! `SplitMix64::stream(epoch seed, k)`, so it is independent of threads and of resuming:
//! a horizontal flip (p = 0.5), then a torchvision-style RandomResizedCrop resized to S x S
//! bilinearly (half-pixel centres, edge taps clamped to the crop, no antialiasing: stored
//! frames are normally S already, so crops are upscaled). All frames of a clip share them,
//! and tracks follow: x -> W - 1 - x if flipped, then x' = (x + 0.5 - left) S / crop_w - 0.5
//! (likewise y). Points landing outside
//! [-0.5, S - 0.5) become invisible; their coordinates are kept unclamped (always finite).
//!
//! **Threads.** A reader thread (order, Parquet reads) feeds a decoder thread through a
//! bounded channel; the decoder decodes and warps the frames of one batch in parallel on a
//! rayon pool of `workers` threads and queues finished batches in a second bounded channel.
//! Batches leave in order whatever the thread timing.
//!
//! **Memory** is bounded by about `shuffle_buffer + 2 x largest row group + (prefetch + 2) B`
//! clips of JPEG bytes (~200 KB a clip at 12 x 224 px; the row group counts twice while it
//! is converted) plus `prefetch + 1` decoded batches of `4 B T 3 S^2` bytes (58 MB at
//! B = 8, T = 12, S = 224) besides the one the caller holds.

use anyhow::{anyhow, bail, ensure, Result};
use mosic::rng::SplitMix64;
use mosic::{Clip, Manifest, ShardReader, ShardSpec};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// ImageNet normalisation, shared by training batches and feature extraction.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Purposes of the per-epoch seeds, so order and augmentation draw from unrelated streams.
const ORDER: u64 = 0;
const AUG: u64 = 1;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Output side S.
    pub input_size: usize,
    /// Area fraction range of the random crop.
    pub crop_scale: (f32, f32),
    /// Aspect-ratio (w / h) range of the random crop.
    pub crop_ratio: (f32, f32),
    /// Horizontal flip with p = 0.5.
    pub hflip: bool,
    /// Clips held for shuffling across row groups.
    pub shuffle_buffer: usize,
    /// Decode threads; 0 takes one per core.
    pub workers: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
    pub seed: u64,
    pub expect_frames: Option<u32>,
    pub expect_grid: Option<u32>,
    /// (width, height) of the stored frames.
    pub expect_size: Option<(u32, u32)>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            input_size: 224,
            crop_scale: (0.4, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            shuffle_buffer: 256,
            workers: 0,
            prefetch: 2,
            seed: 0,
            expect_frames: None,
            expect_grid: None,
            expect_size: None,
        }
    }
}

impl LoaderConfig {
    fn check(&self) -> Result<()> {
        ensure!(self.batch_size > 0, "loader: batch_size must be at least 1");
        ensure!(self.input_size > 0, "loader: input_size must be at least 1");
        let (lo, hi) = self.crop_scale;
        ensure!(lo > 0.0 && lo <= hi && hi <= 1.0, "loader: crop_scale must satisfy 0 < min <= max <= 1, got ({lo}, {hi})");
        let (lo, hi) = self.crop_ratio;
        ensure!(lo > 0.0 && lo <= hi && hi.is_finite(), "loader: crop_ratio must satisfy 0 < min <= max, got ({lo}, {hi})");
        Ok(())
    }

    /// What the shards' spec must satisfy; each message names both values.
    fn mismatches(&self, spec: &ShardSpec) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(t) = self.expect_frames.filter(|&t| t != spec.frames_per_clip) {
            out.push(format!("{} frames per clip, expected {t} (expect_frames)", spec.frames_per_clip));
        }
        if let Some(g) = self.expect_grid.filter(|&g| g != spec.grid_size) {
            out.push(format!("query grid {}, expected {g} (expect_grid)", spec.grid_size));
        }
        if let Some((w, h)) = self.expect_size.filter(|&s| s != (spec.width, spec.height)) {
            out.push(format!("frames of {} x {}, expected {w} x {h} (expect_size)", spec.width, spec.height));
        }
        out
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub clips: usize,
    /// T
    pub frames: usize,
    /// N
    pub points: usize,
    /// S
    pub size: usize,
    /// [B, T, 3, S, S], ImageNet-normalised.
    pub images: Vec<f32>,
    /// [B, T, N, 2] (x = column, y = row) in pixels of the S x S crop, pixel centres at integers.
    pub tracks: Vec<f32>,
    /// [B, T, N], 0 or 1.
    pub visibility: Vec<f32>,
    pub ids: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    /// Clips consumed in this epoch.
    pub position: u64,
}

pub struct Loader {
    rx: Option<Receiver<Result<Batch>>>,
    threads: Vec<JoinHandle<()>>,
    state: LoaderState,
    per_epoch: u64,
    batch_size: u64,
    spec: ShardSpec,
}

impl Loader {
    /// Checks the manifest against each shard's metadata (spec, row count; not checksums,
    /// which `mosic shards verify` covers) and the spec against `expect_*`, then starts
    /// reading at `state`.
    pub fn open(dir: &Path, cfg: LoaderConfig, state: LoaderState) -> Result<Self> {
        cfg.check()?;
        let manifest = Manifest::load(dir)?;
        let manifest_path = Manifest::path(dir);
        let spec = manifest.spec.clone();
        let wrong = cfg.mismatches(&spec);
        if !wrong.is_empty() {
            bail!("{}: the shards in {} have {}", manifest_path.display(), dir.display(), wrong.join("; "));
        }
        let mut paths = Vec::new();
        let mut units = Vec::new();
        for (i, entry) in manifest.shards.iter().enumerate() {
            let path = Manifest::shard_path(dir, entry);
            let reader = ShardReader::open(&path)?;
            if let Some(d) = spec_difference(reader.spec(), &spec) {
                bail!("{}: its spec differs from {}: {d}", path.display(), manifest_path.display());
            }
            ensure!(
                reader.num_rows() == entry.rows,
                "{}: holds {} clips, {} lists {}",
                path.display(),
                reader.num_rows(),
                manifest_path.display(),
                entry.rows
            );
            units.extend((0..reader.num_row_groups()).map(|group| Unit { shard: i, group }));
            paths.push(path);
        }
        let b = cfg.batch_size as u64;
        let total = manifest.total_rows();
        let per_epoch = total / b * b;
        ensure!(per_epoch > 0, "{}: {total} clips, fewer than one batch of {b}", dir.display());
        ensure!(
            state.position <= per_epoch,
            "loader: resume position {} is past the {per_epoch} clips an epoch of {} yields",
            state.position,
            dir.display()
        );
        // No whole batch left (drop_last): the next epoch is where reading resumes.
        let state = if state.position + b > per_epoch { LoaderState { epoch: state.epoch + 1, position: 0 } } else { state };

        let source = Arc::new(Source { spec: spec.clone(), paths, units });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("loader-decode-{i}"))
            .build()?;
        let (raw_tx, raw_rx) = sync_channel::<Result<RawBatch>>(cfg.prefetch);
        let (tx, rx) = sync_channel::<Result<Batch>>(cfg.prefetch);
        let reader = Reader {
            rows: vec![None; source.units.len()],
            source: source.clone(),
            cfg: cfg.clone(),
            per_epoch,
            store: HashMap::new(),
        };
        let start = state.clone();
        let read = std::thread::Builder::new().name("loader-read".into()).spawn(move || reader.run(start, raw_tx))?;
        let decode = std::thread::Builder::new().name("loader-decode".into()).spawn(move || {
            for raw in raw_rx {
                let out = raw.and_then(|r| pool.install(|| build_batch(&r, &source, &cfg)));
                let failed = out.is_err();
                if tx.send(out).is_err() || failed {
                    return;
                }
            }
        })?;
        Ok(Self { rx: Some(rx), threads: vec![read, decode], state, per_epoch, batch_size: b, spec })
    }

    pub fn next_batch(&mut self) -> Result<Batch> {
        let rx = self.rx.as_ref().ok_or_else(|| anyhow!("loader: stopped after an earlier error"))?;
        match rx.recv() {
            Ok(Ok(batch)) => {
                self.state.position += self.batch_size;
                if self.state.position + self.batch_size > self.per_epoch {
                    self.state = LoaderState { epoch: self.state.epoch + 1, position: 0 };
                }
                Ok(batch)
            }
            Ok(Err(e)) => {
                self.stop();
                Err(e)
            }
            Err(_) => Err(anyhow!("loader: worker thread stopped: {}", self.stop().unwrap_or_else(|| "no reason given".into()))),
        }
    }

    /// Where a new loader must start to continue after the batches returned so far.
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Clips delivered per epoch: the directory's clips rounded down to whole batches.
    pub fn clips_per_epoch(&self) -> u64 {
        self.per_epoch
    }

    pub fn spec(&self) -> &ShardSpec {
        &self.spec
    }

    /// Ends the threads; returns a panic message if one panicked.
    fn stop(&mut self) -> Option<String> {
        self.rx = None;
        let mut msg = None;
        for t in self.threads.drain(..) {
            if let Err(p) = t.join() {
                let s = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                msg = msg.or(Some(s.unwrap_or_else(|| "a panic".into())));
            }
        }
        msg
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping the receiver makes each thread's next send fail, so they wind down.
        self.stop();
    }
}

/// One field that differs between two specs, as "name a vs b".
fn spec_difference(a: &ShardSpec, b: &ShardSpec) -> Option<String> {
    let d = |name: &str, x: String, y: String| (x != y).then(|| format!("{name} {x} vs {y}"));
    d("frames per clip", a.frames_per_clip.to_string(), b.frames_per_clip.to_string())
        .or_else(|| d("grid", a.grid_size.to_string(), b.grid_size.to_string()))
        .or_else(|| d("size", format!("{} x {}", a.width, a.height), format!("{} x {}", b.width, b.height)))
        .or_else(|| d("query frame", a.query_frame.to_string(), b.query_frame.to_string()))
        .or_else(|| (a.tracker != b.tracker).then(|| format!("tracker {:?} vs {:?}", a.tracker, b.tracker)))
}

fn epoch_seed(seed: u64, epoch: u64, purpose: u64) -> u64 {
    SplitMix64::stream(seed, epoch.wrapping_mul(2).wrapping_add(purpose)).next_u64()
}

/// One row group of one shard: the unit of reading and of the first shuffle.
struct Unit {
    shard: usize,
    group: usize,
}

struct Source {
    spec: ShardSpec,
    paths: Vec<PathBuf>,
    units: Vec<Unit>,
}

impl Source {
    fn read(&self, unit: usize, with_frames: bool) -> Result<Vec<Clip>> {
        let u = &self.units[unit];
        let clips = ShardReader::open(&self.paths[u.shard])?.clips_in(with_frames, Some(vec![u.group]))?;
        Ok(clips.collect::<mosic::Result<Vec<_>>>()?)
    }

    fn path_of(&self, unit: usize) -> &Path {
        &self.paths[self.units[unit].shard]
    }
}

/// The clip order of one epoch as (unit, row) pairs. A unit's row count is needed only when
/// it enters the buffer, so the caller supplies it then (from a full or a frame-less read).
struct EpochOrder {
    units: Vec<usize>,
    next_unit: usize,
    held: Vec<(usize, usize)>,
    draw: SplitMix64,
    cap: usize,
}

impl EpochOrder {
    fn new(seed: u64, epoch: u64, units: usize, cap: usize) -> Self {
        let s = epoch_seed(seed, epoch, ORDER);
        let mut order: Vec<usize> = (0..units).collect();
        SplitMix64::stream(s, 0).shuffle(&mut order);
        Self { units: order, next_unit: 0, held: Vec::new(), draw: SplitMix64::stream(s, 1), cap: cap.max(1) }
    }

    fn next(&mut self, mut rows: impl FnMut(usize) -> Result<usize>) -> Result<Option<(usize, usize)>> {
        while self.held.len() < self.cap && self.next_unit < self.units.len() {
            let u = self.units[self.next_unit];
            self.next_unit += 1;
            let n = rows(u)?;
            self.held.extend((0..n).map(|r| (u, r)));
        }
        if self.held.is_empty() {
            return Ok(None);
        }
        let i = self.draw.below(self.held.len() as u64) as usize;
        Ok(Some(self.held.swap_remove(i)))
    }
}

/// Clips of one batch in order, with the epoch index `first` of the first.
struct RawBatch {
    epoch: u64,
    first: u64,
    clips: Vec<Clip>,
    units: Vec<usize>,
}

struct Reader {
    source: Arc<Source>,
    cfg: LoaderConfig,
    per_epoch: u64,
    /// Row count per unit, learnt on its first read.
    rows: Vec<Option<usize>>,
    /// Clips of the shuffle buffer, by (unit, row).
    store: HashMap<(usize, usize), Clip>,
}

impl Reader {
    fn run(mut self, start: LoaderState, tx: SyncSender<Result<RawBatch>>) {
        let mut state = start;
        loop {
            match self.epoch(&state, &tx) {
                Ok(true) => state = LoaderState { epoch: state.epoch + 1, position: 0 },
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    }

    /// Sends the batches of one epoch from `state.position` on; false once nobody listens.
    fn epoch(&mut self, state: &LoaderState, tx: &SyncSender<Result<RawBatch>>) -> Result<bool> {
        let ended = || anyhow!("loader: the shards ran out of clips before the manifest's count; were they changed?");
        self.store.clear();
        let mut order = EpochOrder::new(self.cfg.seed, state.epoch, self.source.units.len(), self.cfg.shuffle_buffer);
        for _ in 0..state.position {
            order.next(|u| self.count(u))?.ok_or_else(ended)?;
        }
        // Resumed: fetch the frames of the clips still held.
        let held: HashSet<(usize, usize)> = order.held.iter().copied().collect();
        let mut units: Vec<usize> = held.iter().map(|&(u, _)| u).collect();
        units.sort_unstable();
        units.dedup();
        for u in units {
            for (r, clip) in self.source.read(u, true)?.into_iter().enumerate() {
                if held.contains(&(u, r)) {
                    self.store.insert((u, r), clip);
                }
            }
        }

        let b = self.cfg.batch_size as u64;
        let mut first = state.position;
        while first + b <= self.per_epoch {
            let mut raw = RawBatch { epoch: state.epoch, first, clips: Vec::new(), units: Vec::new() };
            for _ in 0..b {
                let key = order.next(|u| self.load(u))?.ok_or_else(ended)?;
                raw.clips.push(self.store.remove(&key).expect("held clips are loaded"));
                raw.units.push(key.0);
            }
            if tx.send(Ok(raw)).is_err() {
                return Ok(false);
            }
            first += b;
        }
        Ok(true)
    }

    fn count(&mut self, unit: usize) -> Result<usize> {
        if let Some(n) = self.rows[unit] {
            return Ok(n);
        }
        let n = self.source.read(unit, false)?.len();
        self.rows[unit] = Some(n);
        Ok(n)
    }

    fn load(&mut self, unit: usize) -> Result<usize> {
        let clips = self.source.read(unit, true)?;
        let n = clips.len();
        if let Some(known) = self.rows[unit].filter(|&k| k != n) {
            bail!("{}: a row group now has {n} clips, earlier {known}; was the file changed?", self.source.path_of(unit).display());
        }
        self.rows[unit] = Some(n);
        self.store.extend(clips.into_iter().enumerate().map(|(r, c)| ((unit, r), c)));
        Ok(n)
    }
}

/// Flip and crop of one clip, in stored pixels; the crop is taken from the flipped frame.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Aug {
    flip: bool,
    left: u32,
    top: u32,
    width: u32,
    height: u32,
    /// Stored frame width, the mirror axis.
    frame_width: u32,
}

impl Aug {
    fn draw(rng: &mut SplitMix64, w: u32, h: u32, cfg: &LoaderConfig) -> Self {
        // Drawn even when flipping is off, so the crops do not depend on that switch.
        let flip = rng.next_f64() < 0.5 && cfg.hflip;
        let (left, top, width, height) = random_resized_crop(rng, w, h, cfg.crop_scale, cfg.crop_ratio);
        Self { flip, left, top, width, height, frame_width: w }
    }

    fn map(&self, p: [f32; 2], s: usize) -> [f32; 2] {
        let x = if self.flip { self.frame_width as f32 - 1.0 - p[0] } else { p[0] };
        let s = s as f32;
        [(x + 0.5 - self.left as f32) * s / self.width as f32 - 0.5, (p[1] + 0.5 - self.top as f32) * s / self.height as f32 - 0.5]
    }

    /// Writes the flipped, cropped and resized frame as normalised CHW planes into `out`.
    fn warp(&self, img: &image::RgbImage, s: usize, out: &mut [f32]) {
        // Two source taps and the weight of the second for each output column or row, as
        // torch's bilinear resize (align_corners = False) computes them within the crop.
        let taps = |lo: u32, len: u32, mirror: Option<u32>| -> Vec<(usize, usize, f32)> {
            let hi = lo + len - 1;
            (0..s)
                .map(|o| {
                    let v = (lo as f32 + (o as f32 + 0.5) * len as f32 / s as f32 - 0.5).clamp(lo as f32, hi as f32);
                    let i0 = (v.floor() as u32).min(hi);
                    let i1 = (i0 + 1).min(hi);
                    let (i0, i1) = match mirror {
                        Some(w) => (w - 1 - i0, w - 1 - i1),
                        None => (i0, i1),
                    };
                    (i0 as usize, i1 as usize, v - v.floor())
                })
                .collect()
        };
        let xs = taps(self.left, self.width, self.flip.then_some(self.frame_width));
        let ys = taps(self.top, self.height, None);
        let gain: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * STD[c]));
        let bias: [f32; 3] = std::array::from_fn(|c| -MEAN[c] / STD[c]);
        let stride = img.width() as usize * 3;
        let raw = img.as_raw();
        let plane = s * s;
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            let (r0, r1) = (&raw[y0 * stride..][..stride], &raw[y1 * stride..][..stride]);
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                for c in 0..3 {
                    let (a, b) = (r0[x0 * 3 + c] as f32, r0[x1 * 3 + c] as f32);
                    let (d, e) = (r1[x0 * 3 + c] as f32, r1[x1 * 3 + c] as f32);
                    let top = a + (b - a) * fx;
                    let v = top + (d + (e - d) * fx - top) * fy;
                    out[c * plane + oy * s + ox] = v * gain[c] + bias[c];
                }
            }
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: (left, top, width, height).
fn random_resized_crop(rng: &mut SplitMix64, w: u32, h: u32, scale: (f32, f32), ratio: (f32, f32)) -> (u32, u32, u32, u32) {
    let area = w as f64 * h as f64;
    let (r0, r1) = (ratio.0 as f64, ratio.1 as f64);
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0 as f64, scale.1 as f64);
        let aspect = rng.uniform(r0.ln(), r1.ln()).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw >= 1.0 && ch >= 1.0 && cw <= w as f64 && ch <= h as f64 {
            let (cw, ch) = (cw as u32, ch as u32);
            let top = rng.below((h - ch + 1) as u64) as u32;
            let left = rng.below((w - cw + 1) as u64) as u32;
            return (left, top, cw, ch);
        }
    }
    let frame_ratio = w as f64 / h as f64;
    let (cw, ch) = if frame_ratio < r0 {
        (w, ((w as f64 / r0).round() as u32).clamp(1, h))
    } else if frame_ratio > r1 {
        (((h as f64 * r1).round() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// Decodes and augments one batch; runs on the decode pool.
fn build_batch(raw: &RawBatch, source: &Source, cfg: &LoaderConfig) -> Result<Batch> {
    let spec = &source.spec;
    let (b, t, n, s) = (raw.clips.len(), spec.t(), spec.num_points(), cfg.input_size);
    let (w, h) = (spec.width, spec.height);
    let seed = epoch_seed(cfg.seed, raw.epoch, AUG);
    let augs: Vec<Aug> =
        (0..b).map(|i| Aug::draw(&mut SplitMix64::stream(seed, raw.first + i as u64), w, h, cfg)).collect();

    let mut images = vec![0f32; b * t * 3 * s * s];
    images.par_chunks_mut(3 * s * s).enumerate().try_for_each(|(i, out)| -> Result<()> {
        let (c, f) = (i / t, i % t);
        let clip = &raw.clips[c];
        let file = || source.path_of(raw.units[c]).display();
        let bytes = clip.frames.get(f).ok_or_else(|| anyhow!("{}: clip {} has no frame {f}", file(), clip.id()))?;
        let img = mosic::imageio::decode_jpeg(bytes).map_err(|e| anyhow!("{}: clip {} frame {f}: {e}", file(), clip.id()))?;
        ensure!(
            img.dimensions() == (w, h),
            "{}: clip {} frame {f} is {} x {}, the spec says {w} x {h}",
            file(),
            clip.id(),
            img.width(),
            img.height()
        );
        augs[c].warp(&img, s, out);
        Ok(())
    })?;

    let mut tracks = Vec::with_capacity(b * t * n * 2);
    let mut visibility = Vec::with_capacity(b * t * n);
    let inside = |v: f32| v >= -0.5 && v < s as f32 - 0.5;
    for (clip, aug) in raw.clips.iter().zip(&augs) {
        for (p, &vis) in clip.tracks.iter().zip(&clip.visibility) {
            let q = aug.map(*p, s);
            // Non-finite input would poison the loss; it can only come from a broken shard.
            let q = if q[0].is_finite() && q[1].is_finite() { q } else { [-1.0, -1.0] };
            tracks.extend(q);
            visibility.push((vis && inside(q[0]) && inside(q[1])) as u8 as f32);
        }
    }
    Ok(Batch { clips: b, frames: t, points: n, size: s, images, tracks, visibility, ids: raw.clips.iter().map(Clip::id).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosic::clip::TrackerInfo;
    use mosic::shard::WriteOptions;
    use mosic::ShardWriter;

    fn spec(t: u32, grid: u32, size: u32) -> ShardSpec {
        ShardSpec {
            frames_per_clip: t,
            grid_size: grid,
            width: size,
            height: size,
            query_frame: 0,
            tracker: TrackerInfo { name: "test".into(), model_sha256: String::new(), params: serde_json::json!({}) },
        }
    }

    /// Centre of clip i's 5 x 5 white dot in frame k, in integer pixels at least 4 from the border.
    fn dot(i: u32, k: u32, size: u32) -> [f32; 2] {
        let m = size - 9;
        [((7 * i + 3 * k) % m + 4) as f32, ((11 * i + 5 * k + 3) % m + 4) as f32]
    }

    /// Clip i: a white dot on a dark background that tells clips apart; point 0 tracks the
    /// dot, the others are grid points, every third one hidden.
    fn clip(i: u32, spec: &ShardSpec) -> Clip {
        let t = spec.t();
        let size = spec.width;
        let grid = mosic::grid_points(spec.grid_size, spec.width, spec.height);
        let (mut frames, mut tracks, mut visibility) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..t as u32 {
            let d = dot(i, k, size);
            let img = image::RgbImage::from_fn(size, size, |x, y| {
                let on = (x as f32 - d[0]).abs() <= 2.0 && (y as f32 - d[1]).abs() <= 2.0;
                if on { image::Rgb([255, 255, 255]) } else { image::Rgb([(20 + 3 * i) as u8, 30, (x / 4) as u8]) }
            });
            frames.push(mosic::imageio::encode_jpeg(&img, 95).unwrap());
            for (p, &g) in grid.iter().enumerate() {
                tracks.push(if p == 0 { d } else { g });
                visibility.push(p == 0 || p % 3 != 0);
            }
        }
        Clip {
            dataset: "test".into(),
            video_id: format!("v{i:03}"),
            clip_index: 0,
            frame_indices: (0..t as u32).collect(),
            source_fps: 30.0,
            frames,
            queries: grid,
            tracks,
            visibility,
        }
    }

    /// Writes shards of `rows[j]` clips each, `per_group` clips per row group.
    fn write_dir(dir: &Path, spec: &ShardSpec, rows: &[u32], per_group: usize) {
        let mut m = Manifest::new(spec.clone(), serde_json::json!({}));
        let mut next = 0;
        for (j, &r) in rows.iter().enumerate() {
            let path = dir.join(format!("shard-{j:05}.parquet"));
            let mut w = ShardWriter::create(&path, spec, &WriteOptions { rows_per_group: per_group, zstd_level: 1 }).unwrap();
            for i in next..next + r {
                w.write(clip(i, spec)).unwrap();
            }
            next += r;
            m.shards.push(w.finish().unwrap());
        }
        m.save(dir).unwrap();
    }

    fn cfg(batch: usize, size: usize, seed: u64) -> LoaderConfig {
        LoaderConfig { batch_size: batch, input_size: size, shuffle_buffer: 5, workers: 2, prefetch: 2, seed, ..Default::default() }
    }

    fn take(dir: &Path, cfg: &LoaderConfig, state: LoaderState, n: usize) -> Vec<(Batch, LoaderState)> {
        let mut l = Loader::open(dir, cfg.clone(), state).unwrap();
        (0..n).map(|_| (l.next_batch().unwrap(), l.state())).collect()
    }

    /// 13 clips in shards of 7 and 6 with row groups of 3: groups of 3, 3, 1, 3, 3.
    fn small_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &spec(3, 2, 32), &[7, 6], 3);
        dir
    }

    #[test]
    fn same_seed_same_batches_whatever_the_threads() {
        let dir = small_dir();
        let a = take(dir.path(), &cfg(4, 24, 1), LoaderState::default(), 8);
        let other_threads = LoaderConfig { workers: 1, prefetch: 0, ..cfg(4, 24, 1) };
        let b = take(dir.path(), &other_threads, LoaderState::default(), 8);
        assert_eq!(a, b);
        let c = take(dir.path(), &cfg(4, 24, 2), LoaderState::default(), 8);
        assert_ne!(a.iter().map(|x| &x.0.ids).collect::<Vec<_>>(), c.iter().map(|x| &x.0.ids).collect::<Vec<_>>());
        assert_ne!(a[0].0.images, c[0].0.images);
        let batch = &a[0].0;
        assert_eq!((batch.clips, batch.frames, batch.points, batch.size), (4, 3, 4, 24));
        assert_eq!((batch.images.len(), batch.tracks.len(), batch.visibility.len()), (4 * 3 * 3 * 24 * 24, 4 * 3 * 4 * 2, 4 * 3 * 4));
        // 13 clips, batches of 4: three batches an epoch, the 13th clip dropped.
        assert_eq!(a[2].1, LoaderState { epoch: 1, position: 0 });
        assert_eq!(a[3].1, LoaderState { epoch: 1, position: 4 });
    }

    #[test]
    fn resuming_continues_the_straight_run() {
        let dir = small_dir();
        let c = cfg(4, 16, 9);
        let straight = take(dir.path(), &c, LoaderState::default(), 7);
        for m in [1, 2, 3, 5] {
            let resumed = take(dir.path(), &c, straight[m - 1].1.clone(), 7 - m);
            assert!(resumed == straight[m..], "resumed after {m} batches");
        }
        // A position inside a batch: the same clips with the same augmentation, shifted.
        let per_clip = |b: &[(Batch, LoaderState)]| -> Vec<(String, Vec<f32>, Vec<f32>)> {
            b.iter()
                .flat_map(|(x, _)| {
                    let (img, trk) = (x.images.len() / x.clips, x.tracks.len() / x.clips);
                    (0..x.clips).map(move |i| {
                        (x.ids[i].clone(), x.images[i * img..][..img].to_vec(), x.tracks[i * trk..][..trk].to_vec())
                    })
                })
                .collect()
        };
        let shifted = take(dir.path(), &c, LoaderState { epoch: 0, position: 2 }, 2);
        assert_eq!(per_clip(&shifted)[..], per_clip(&straight[..3])[2..10]);
        assert_eq!(shifted[1].1, LoaderState { epoch: 1, position: 0 }, "no whole batch left in epoch 0");
    }

    #[test]
    fn every_clip_once_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &spec(2, 1, 16), &[5, 4, 3], 2);
        for buffer in [0, 1, 4, 100] {
            let c = LoaderConfig { shuffle_buffer: buffer, ..cfg(3, 8, 5) };
            let mut l = Loader::open(dir.path(), c, LoaderState::default()).unwrap();
            assert_eq!(l.clips_per_epoch(), 12);
            let mut epochs = Vec::new();
            for _ in 0..3 {
                let ids: Vec<String> = (0..4).flat_map(|_| l.next_batch().unwrap().ids).collect();
                let mut sorted = ids.clone();
                sorted.sort();
                let all: Vec<String> = (0..12).map(|i| format!("test/v{i:03}#0")).collect();
                assert_eq!(sorted, all, "buffer {buffer}");
                epochs.push(ids);
            }
            assert!(epochs[0] != epochs[1] || epochs[1] != epochs[2], "epochs reshuffle (buffer {buffer})");
        }
    }

    #[test]
    fn crop_and_flip_follow_the_dot() {
        let dir = tempfile::tempdir().unwrap();
        let sp = spec(2, 2, 48);
        write_dir(dir.path(), &sp, &[24], 8);
        let (s, t, n) = (64usize, 2usize, 4usize);
        // Wide scale range: some dots land inside, some outside the crop.
        let c = LoaderConfig { crop_scale: (0.15, 1.0), ..cfg(6, s, 3) };
        let mut l = Loader::open(dir.path(), c.clone(), LoaderState::default()).unwrap();
        let (mut checked_in, mut checked_out, mut flips) = (0, 0, [0, 0]);
        for batch_index in 0..4 {
            let b = l.next_batch().unwrap();
            for i in 0..b.clips {
                let k = (batch_index * b.clips + i) as u64;
                let aug = Aug::draw(&mut SplitMix64::stream(epoch_seed(c.seed, 0, AUG), k), 48, 48, &c);
                for f in 0..t {
                    let pt = (i * t + f) * n;
                    let (x, y) = (b.tracks[pt * 2], b.tracks[pt * 2 + 1]);
                    let visible = b.visibility[pt] == 1.0;
                    let inside = |v: f32| (-0.5..s as f32 - 0.5).contains(&v);
                    assert_eq!(visible, inside(x) && inside(y));
                    // Bright pixels of the frame, brightness as the mean of the de-normalised channels.
                    let img = &b.images[(i * t + f) * 3 * s * s..][..3 * s * s];
                    let bright: Vec<(f32, f32, f32)> = (0..s * s)
                        .filter_map(|p| {
                            let v = (0..3).map(|ch| (img[ch * s * s + p] * STD[ch] + MEAN[ch]) * 255.0).sum::<f32>() / 3.0;
                            (v > 140.0).then(|| ((p % s) as f32, (p / s) as f32, v - 140.0))
                        })
                        .collect();
                    // The dot's half-width (2.5 stored px) plus JPEG ringing, in output px.
                    let (mx, my) = (4.0 * s as f32 / aug.width as f32, 4.0 * s as f32 / aug.height as f32);
                    let well_inside = |v: f32, m: f32| v > m && v < s as f32 - 1.0 - m;
                    if well_inside(x, mx) && well_inside(y, my) {
                        let w: f32 = bright.iter().map(|p| p.2).sum();
                        let cx = bright.iter().map(|p| p.0 * p.2).sum::<f32>() / w;
                        let cy = bright.iter().map(|p| p.1 * p.2).sum::<f32>() / w;
                        assert!((cx - x).abs() < 1.0 && (cy - y).abs() < 1.0, "dot at ({cx}, {cy}), track ({x}, {y}), {aug:?}");
                        checked_in += 1;
                        flips[aug.flip as usize] += 1;
                    } else if !visible && (x < -mx || y < -my || x > s as f32 + mx || y > s as f32 + my) {
                        assert!(bright.is_empty(), "invisible dot at ({x}, {y}) shows in the crop");
                        checked_out += 1;
                    }
                    // Hidden grid points stay hidden.
                    for p in (1..n).filter(|p| p % 3 == 0) {
                        assert_eq!(b.visibility[pt + p], 0.0);
                    }
                    assert!(b.tracks[pt * 2..(pt + n) * 2].iter().all(|v| v.is_finite()));
                }
            }
        }
        assert!(checked_in >= 10 && checked_out >= 2 && flips[0] > 0 && flips[1] > 0, "{checked_in} {checked_out} {flips:?}");
    }

    #[test]
    fn identity_warp_normalises_exactly() {
        let img = image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([(40 * x) as u8, (50 * y) as u8, 200]));
        let aug = Aug { flip: false, left: 0, top: 0, width: 6, height: 5, frame_width: 6 };
        // A 6 x 5 frame into 6 x 6 is not the identity; use a square crop of it instead.
        let square = Aug { width: 5, ..aug };
        let mut out = vec![0f32; 3 * 25];
        square.warp(&img, 5, &mut out);
        for (y, x) in [(0, 0), (2, 3), (4, 4)] {
            let px = img.get_pixel(x, y);
            for c in 0..3 {
                let want = (px[c] as f32 / 255.0 - MEAN[c]) / STD[c];
                assert!((out[c * 25 + y as usize * 5 + x as usize] - want).abs() < 1e-5);
            }
        }
        // A known pixel: 200 in the blue channel.
        assert!((out[2 * 25] - (200.0 / 255.0 - 0.406) / 0.225).abs() < 1e-5);
        // Flipped, column x shows column 4 - x of the crop's mirror, i.e. frame column 5 - x.
        let mut flipped = vec![0f32; 3 * 25];
        Aug { flip: true, ..square }.warp(&img, 5, &mut flipped);
        let want = (img.get_pixel(5, 2)[0] as f32 / 255.0 - MEAN[0]) / STD[0];
        assert!((flipped[2 * 5] - want).abs() < 1e-5);
        assert_eq!(Aug { flip: true, ..square }.map([5.0, 2.0], 5), [0.0, 2.0]);
    }

    #[test]
    fn crops_stay_inside_the_frame() {
        let c = LoaderConfig::default();
        let mut rng = SplitMix64::new(4);
        for _ in 0..2000 {
            let (w, h) = (rng.below(300) as u32 + 1, rng.below(300) as u32 + 1);
            let (l, t, cw, ch) = random_resized_crop(&mut rng, w, h, c.crop_scale, c.crop_ratio);
            assert!(cw >= 1 && ch >= 1 && l + cw <= w && t + ch <= h, "{w} x {h}: {l} {t} {cw} {ch}");
        }
        // Impossible ratio: the centre-crop fallback.
        assert_eq!(random_resized_crop(&mut rng, 200, 100, (0.9, 1.0), (4.0, 5.0)), (0, 25, 200, 50));
    }

    #[test]
    fn spec_and_count_problems_name_the_file_and_both_values() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &spec(2, 2, 16), &[3, 3], 2);
        let err = |c: LoaderConfig| Loader::open(dir.path(), c, LoaderState::default()).err().expect("refused").to_string();
        let e = err(LoaderConfig { expect_grid: Some(16), ..cfg(2, 16, 0) });
        assert!(e.contains("manifest.json") && e.contains("query grid 2, expected 16"), "{e}");
        let e = err(LoaderConfig { expect_frames: Some(12), expect_size: Some((224, 224)), ..cfg(2, 16, 0) });
        assert!(e.contains("2 frames per clip, expected 12") && e.contains("16 x 16, expected 224 x 224"), "{e}");
        assert!(err(cfg(7, 16, 0)).contains("6 clips, fewer than one batch of 7"));

        // A shard whose own spec disagrees with the manifest's.
        let mut m = Manifest::load(dir.path()).unwrap();
        let path = dir.path().join("shard-00001.parquet");
        let w = ShardWriter::create(&path, &spec(2, 3, 16), &WriteOptions::default()).unwrap();
        m.shards[1] = w.finish().unwrap();
        m.save(dir.path()).unwrap();
        let e = err(cfg(2, 16, 0));
        assert!(e.contains("shard-00001.parquet") && e.contains("grid 3 vs 2"), "{e}");

        // A row count the file does not hold.
        write_dir(dir.path(), &spec(2, 2, 16), &[3, 3], 2);
        let mut m = Manifest::load(dir.path()).unwrap();
        m.shards[0].rows = 4;
        m.save(dir.path()).unwrap();
        let e = err(cfg(2, 16, 0));
        assert!(e.contains("shard-00000.parquet") && e.contains("holds 3 clips") && e.contains("lists 4"), "{e}");
    }

    /// B = 8, T = 12, 224 px, 16 x 16 grid: `cargo test --release -p mosic-trainer --lib loader::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        let dir = tempfile::tempdir().unwrap();
        let sp = spec(12, 16, 224);
        // Gradients with mild noise, so the JPEGs weigh about what video frames do.
        let mut m = Manifest::new(sp.clone(), serde_json::json!({}));
        let mut bytes = 0;
        for j in 0..2u32 {
            let path = dir.path().join(format!("shard-{j:05}.parquet"));
            let mut w = ShardWriter::create(&path, &sp, &WriteOptions::default()).unwrap();
            for i in 0..48 {
                let mut c = clip(j * 48 + i, &sp);
                for (k, f) in c.frames.iter_mut().enumerate() {
                    let mut rng = SplitMix64::stream(i as u64, k as u64);
                    let img = image::RgbImage::from_fn(224, 224, |x, y| {
                        let n = rng.below(32) as u32;
                        image::Rgb([(x + n) as u8, (y + i + n) as u8, ((x * y) / 200 + k as u32 * 9 + n) as u8])
                    });
                    *f = mosic::imageio::encode_jpeg(&img, 90).unwrap();
                    bytes += f.len();
                }
                w.write(c).unwrap();
            }
            m.shards.push(w.finish().unwrap());
        }
        m.save(dir.path()).unwrap();
        eprintln!("{} KB per frame", bytes / (96 * 12) / 1024);
        let c = LoaderConfig { batch_size: 8, input_size: 224, shuffle_buffer: 64, workers: 0, prefetch: 4, ..Default::default() };
        let mut l = Loader::open(dir.path(), c, LoaderState::default()).unwrap();
        l.next_batch().unwrap();
        let n = 24;
        let start = std::time::Instant::now();
        for _ in 0..n {
            l.next_batch().unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!("{:.2} batches/s ({:.0} frames/s) on {} threads", n as f64 / secs, (n * 8 * 12) as f64 / secs, rayon::current_num_threads());
    }
}
