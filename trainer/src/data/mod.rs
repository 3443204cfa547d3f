//! Streaming track shards into augmented, normalised batches: deterministic and resumable.
//!
//! **Epochs.** An epoch holds `clips_per_video` clips of every video (the released code's
//! `--num_clips 1`: one), drawn among the video's stored clips; 0 takes every stored clip.
//! The draw and the order of epoch `e` are pure functions of (seed, e, manifest): the row
//! groups of all shards (the unit Parquet reads at once) are shuffled, read in that order, and
//! their drawn rows pass through a shuffle buffer of `shuffle_buffer` clips that emits a
//! random held clip. Video ids are read once at open (two string columns), so
//! [`Loader::open`] resumes mid-epoch by replaying the order without reading any clip. The
//! last partial batch of an epoch is dropped.
//!
//! **Augmentation** of the k-th clip of epoch e is drawn from its own stream,
//! `SplitMix64::stream(epoch seed, k)`, so it is independent of threads and of resuming:
//! a horizontal flip (p = 0.5), then a torchvision-style RandomResizedCrop resized to S x S
//! bilinearly (half-pixel centres, edge taps clamped to the crop, no antialiasing: stored
//! frames are normally S already, so crops are upscaled). All frames of a clip share them,
//! and tracks follow: x -> W - 1 - x if flipped, then x' = (x + 0.5 - left) S / crop_w - 0.5
//! (likewise y).
//!
//! **Points.** The released code tracks a 16 x 16 grid laid on the cropped clip, so every
//! supervised track starts inside the crop. Here the tracks are stored once on a denser grid,
//! and each clip's crop picks, for every position of a `grid` x `grid` grid laid on the crop
//! (CoTracker's grid helper on S x S), the stored point nearest to it among those inside the
//! crop at frame 0 ([`select_points`]). Positions a too coarse stored grid cannot give a point
//! of their own are padding: `inside` 0 in every frame, so they carry no weight and stay out of
//! Sinkhorn, and the batch keeps its [B, T, N] shape. A selected point is `inside` in the
//! frames where it lies in [-0.5, S - 0.5)^2 and `visible` where it is also visible in the
//! shard; outside the crop its coordinates are kept unclamped (always finite).
//!
//! **Threads.** A reader thread (order, Parquet reads) feeds a decoder thread through a
//! bounded channel; the decoder decodes and warps the frames of one batch in parallel on a
//! rayon pool of `workers` threads and queues finished batches in a second bounded channel.
//! Batches leave in order whatever the thread timing.
//!
//! **Memory** is bounded by about `shuffle_buffer + 2 x largest row group + (prefetch + 2) B`
//! clips of JPEG bytes (~200 KB a clip at 12 x 224 px; the row group counts twice while it
//! is converted) plus `prefetch + 1` decoded batches of `B T 3 S^2` bytes (14 MB at
//! B = 8, T = 12, S = 224) besides the one the caller holds. Frames leave as bytes; the
//! trainer normalises them on its device, so a batch crosses to a GPU at a quarter of the
//! size of floats.

use anyhow::{anyhow, bail, ensure, Result};
use mosic::rng::SplitMix64;
use mosic::{Manifest, ShardReader, ShardSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
mod augment;
mod order;
mod points;
mod reader;

pub use augment::Aug;
use order::{Source, Unit};
pub use points::{clip_points, select_points};
use reader::{build_batch, RawBatch, Reader};

/// ImageNet normalisation, shared by training batches and feature extraction.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Purposes of the per-epoch seeds, so order, augmentation and the clip draw use unrelated streams.
const ORDER: u64 = 0;
const AUG: u64 = 1;
const DRAW: u64 = 2;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Output side S.
    pub input_size: usize,
    /// Side of the query grid laid inside each crop: N = grid^2 points per clip.
    pub grid: u32,
    /// Clips per video and epoch; 0 = every stored clip.
    pub clips_per_video: u32,
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
    /// (width, height) of the stored frames.
    pub expect_size: Option<(u32, u32)>,
    /// (rank, ranks): the batches hold rank's share of every global batch of `batch_size`
    /// clips, the only clips decoded (an MPI rank's loader). (0, 1): the whole batch.
    pub share: (usize, usize),
}

impl LoaderConfig {
    pub fn with_share(self, share: (usize, usize)) -> Self {
        Self { share, ..self }
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            input_size: 224,
            grid: 16,
            clips_per_video: 1,
            crop_scale: (0.4, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            shuffle_buffer: 256,
            workers: 0,
            prefetch: 2,
            seed: 0,
            expect_frames: None,
            expect_size: None,
            share: (0, 1),
        }
    }
}

impl LoaderConfig {
    fn check(&self) -> Result<()> {
        ensure!(self.batch_size > 0, "loader: batch_size must be at least 1");
        ensure!(self.input_size > 0, "loader: input_size must be at least 1");
        ensure!(self.grid > 0, "loader: grid must be at least 1");
        let (lo, hi) = self.crop_scale;
        ensure!(
            lo > 0.0 && lo <= hi && hi <= 1.0,
            "loader: crop_scale must satisfy 0 < min <= max <= 1, got ({lo}, {hi})"
        );
        let (lo, hi) = self.crop_ratio;
        ensure!(
            lo > 0.0 && lo <= hi && hi.is_finite(),
            "loader: crop_ratio must satisfy 0 < min <= max, got ({lo}, {hi})"
        );
        let (rank, ranks) = self.share;
        ensure!(
            ranks >= 1 && rank < ranks && self.batch_size.is_multiple_of(ranks),
            "loader: share {rank} of {ranks} does not split batches of {}",
            self.batch_size
        );
        Ok(())
    }

    /// What the shards' spec must satisfy; each message names both values.
    fn mismatches(&self, spec: &ShardSpec) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(t) = self.expect_frames.filter(|&t| t != spec.frames_per_clip) {
            out.push(format!(
                "{} frames per clip, expected {t} (expect_frames)",
                spec.frames_per_clip
            ));
        }
        if let Some((w, h)) = self.expect_size.filter(|&s| s != (spec.width, spec.height)) {
            out.push(format!(
                "frames of {} x {}, expected {w} x {h} (expect_size)",
                spec.width, spec.height
            ));
        }
        if spec.query_frame != 0 {
            out.push(format!(
                "query frame {}, expected 0 (the student reads the first frame)",
                spec.query_frame
            ));
        }
        out
    }

    /// Why some crops cannot get a full grid from a stored `spec` grid, if they cannot.
    fn coarse_grid_note(&self, spec: &ShardSpec) -> Option<String> {
        let (w, h) = (spec.width as f64, spec.height as f64);
        let g = spec.grid_size as f64;
        // Stored points lie evenly between margins of W/64 (CoTracker's grid helper).
        let m = w / 64.0;
        let spacing =
            |side: f64| if g > 1.0 { (side - 1.0 - 2.0 * m) / (g - 1.0) } else { f64::INFINITY };
        let area = self.crop_scale.0 as f64 * w * h;
        let (cw, ch) = (
            (area * self.crop_ratio.0 as f64).sqrt().min(w),
            (area / self.crop_ratio.1 as f64).sqrt().min(h),
        );
        let per_side = |len: f64, side: f64| (len / spacing(side)).floor() as u32;
        let (nx, ny) = (per_side(cw, w), per_side(ch, h));
        (nx < self.grid || ny < self.grid).then(|| {
            format!(
                "the stored {g}x{g} grid is too coarse for a {n}x{n} grid inside crops as small as {cw:.0} x {ch:.0} of \
                 {w} x {h} px (about {nx} x {ny} stored points there): positions without a stored point of their own are \
                 padding, with no weight in the loss; `mosic tracks --grid 32` stores a grid fine enough",
                n = self.grid
            )
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub clips: usize,
    /// T
    pub frames: usize,
    /// N = grid^2
    pub points: usize,
    /// S
    pub size: usize,
    /// [B, T, 3, S, S] RGB bytes of the flipped, cropped and resized frames (not normalised).
    pub images: Vec<u8>,
    /// [B, T, N, 2] (x = column, y = row) in pixels of the S x S crop, pixel centres at integers.
    pub tracks: Vec<f32>,
    /// [B, T, N], 1 where the point is inside the crop and visible in the shard.
    pub visibility: Vec<f32>,
    /// [B, T, N], 1 where a selected point lies inside the crop; 0 for padding. Frame 0 is 1
    /// exactly for the selected (non-padding) points.
    pub inside: Vec<f32>,
    pub ids: Vec<String>,
}

impl Batch {
    /// `clips` random clips of `frames` frames and `points` points at `size` px: random
    /// pixels, tracks anywhere in the frame, 80% visible, every point selected and in the crop.
    pub fn random(clips: usize, frames: usize, points: usize, size: usize, seed: u64) -> Batch {
        let (b, s) = (clips, size);
        let mut rng = SplitMix64::new(seed);
        Batch {
            clips: b,
            frames,
            points,
            size: s,
            images: (0..b * frames * 3 * s * s).map(|_| rng.below(256) as u8).collect(),
            tracks: (0..b * frames * points * 2)
                .map(|_| rng.uniform(0.0, (s - 1) as f64) as f32)
                .collect(),
            visibility: (0..b * frames * points)
                .map(|_| (rng.next_f64() < 0.8) as u8 as f32)
                .collect(),
            inside: vec![1.0; b * frames * points],
            ids: vec![String::new(); b],
        }
    }

    /// Share of the grid positions that hold a stored point (1 unless the stored grid is too coarse).
    /// Clips `start..start + count`, as a batch of their own.
    pub fn clips_range(&self, start: usize, count: usize) -> Batch {
        let (t, n, s) = (self.frames, self.points, self.size);
        let per_image = t * 3 * s * s;
        let cut = |v: &[f32], per: usize| v[start * per..(start + count) * per].to_vec();
        Batch {
            clips: count,
            frames: t,
            points: n,
            size: s,
            images: if self.images.is_empty() {
                Vec::new()
            } else {
                self.images[start * per_image..(start + count) * per_image].to_vec()
            },
            tracks: cut(&self.tracks, t * n * 2),
            visibility: cut(&self.visibility, t * n),
            inside: cut(&self.inside, t * n),
            ids: self.ids.get(start..start + count).map(<[String]>::to_vec).unwrap_or_default(),
        }
    }

    /// The batch in `parts` equal runs of clips (the caller checks divisibility).
    pub fn split(&self, parts: usize) -> Vec<Batch> {
        let per = self.clips / parts.max(1);
        (0..parts).map(|r| self.clips_range(r * per, per)).collect()
    }

    pub fn filled(&self) -> f64 {
        let (b, t, n) = (self.clips, self.frames, self.points);
        let sum: f32 = (0..b).map(|c| self.inside[c * t * n..][..n].iter().sum::<f32>()).sum();
        sum as f64 / (b * n).max(1) as f64
    }
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
    videos: usize,
    notes: Vec<String>,
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
            bail!(
                "{}: the shards in {} have {}",
                manifest_path.display(),
                dir.display(),
                wrong.join("; ")
            );
        }
        let mut paths = Vec::new();
        let mut units = Vec::new();
        let mut unit_rows = Vec::new();
        let mut videos: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
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
            for (group, keys) in reader.video_keys()?.into_iter().enumerate() {
                unit_rows.push(keys.len());
                for (row, key) in keys.into_iter().enumerate() {
                    videos.entry(key).or_default().push((units.len(), row));
                }
                units.push(Unit { shard: i, group });
            }
            paths.push(path);
        }
        let videos: Vec<Vec<(usize, usize)>> = videos.into_values().collect();
        let b = cfg.batch_size as u64;
        let cpv = cfg.clips_per_video as usize;
        let drawn: u64 =
            videos.iter().map(|v| if cpv == 0 { v.len() } else { v.len().min(cpv) } as u64).sum();
        let per_epoch = drawn / b * b;
        ensure!(
            per_epoch > 0,
            "{}: an epoch holds {drawn} clips ({} videos, clips_per_video {cpv}), fewer than one batch of {b}",
            dir.display(),
            videos.len()
        );
        ensure!(
            state.position <= per_epoch,
            "loader: resume position {} is past the {per_epoch} clips an epoch of {} yields",
            state.position,
            dir.display()
        );
        // No whole batch left (drop_last): the next epoch is where reading resumes.
        let state = if state.position + b > per_epoch {
            LoaderState { epoch: state.epoch + 1, position: 0 }
        } else {
            state
        };
        let notes = cfg.coarse_grid_note(&spec).into_iter().collect();
        let num_videos = videos.len();

        let source = Arc::new(Source { spec: spec.clone(), paths, units, videos, unit_rows });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("loader-decode-{i}"))
            .build()?;
        let (raw_tx, raw_rx) = sync_channel::<Result<RawBatch>>(cfg.prefetch);
        let (tx, rx) = sync_channel::<Result<Batch>>(cfg.prefetch);
        let reader =
            Reader { source: source.clone(), cfg: cfg.clone(), per_epoch, store: HashMap::new() };
        let start = state.clone();
        let read = std::thread::Builder::new()
            .name("loader-read".into())
            .spawn(move || reader.run(start, raw_tx))?;
        let decode = std::thread::Builder::new().name("loader-decode".into()).spawn(move || {
            for raw in raw_rx {
                let out = raw.and_then(|r| pool.install(|| build_batch(&r, &source, &cfg)));
                let failed = out.is_err();
                if tx.send(out).is_err() || failed {
                    return;
                }
            }
        })?;
        Ok(Self {
            rx: Some(rx),
            threads: vec![read, decode],
            state,
            per_epoch,
            batch_size: b,
            spec,
            videos: num_videos,
            notes,
        })
    }

    pub fn next_batch(&mut self) -> Result<Batch> {
        let rx =
            self.rx.as_ref().ok_or_else(|| anyhow!("loader: stopped after an earlier error"))?;
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
            Err(_) => Err(anyhow!(
                "loader: worker thread stopped: {}",
                self.stop().unwrap_or_else(|| "no reason given".into())
            )),
        }
    }

    /// Where a new loader must start to continue after the batches returned so far.
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Clips delivered per epoch: the epoch's draw rounded down to whole batches.
    pub fn clips_per_epoch(&self) -> u64 {
        self.per_epoch
    }

    pub fn batches_per_epoch(&self) -> u64 {
        self.per_epoch / self.batch_size
    }

    /// Videos in the shards (distinct dataset/video_id).
    pub fn videos(&self) -> usize {
        self.videos
    }

    /// Things worth telling the user once (e.g. a stored grid too coarse for the crop grid).
    pub fn notes(&self) -> &[String] {
        &self.notes
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
                let s = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
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
        .or_else(|| {
            d("size", format!("{} x {}", a.width, a.height), format!("{} x {}", b.width, b.height))
        })
        .or_else(|| d("query frame", a.query_frame.to_string(), b.query_frame.to_string()))
        .or_else(|| {
            (a.tracker != b.tracker).then(|| format!("tracker {:?} vs {:?}", a.tracker, b.tracker))
        })
}

fn epoch_seed(seed: u64, epoch: u64, purpose: u64) -> u64 {
    SplitMix64::stream(seed, epoch.wrapping_mul(3).wrapping_add(purpose)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::shards::{clip, clip_of, dot, dot_point, spec, write_dir};
    use mosic::shard::WriteOptions;
    use mosic::ShardWriter;

    fn cfg(batch: usize, size: usize, seed: u64) -> LoaderConfig {
        LoaderConfig {
            batch_size: batch,
            input_size: size,
            grid: 3,
            shuffle_buffer: 5,
            workers: 2,
            prefetch: 2,
            seed,
            ..Default::default()
        }
    }

    fn take(
        dir: &Path,
        cfg: &LoaderConfig,
        state: LoaderState,
        n: usize,
    ) -> Vec<(Batch, LoaderState)> {
        let mut l = Loader::open(dir, cfg.clone(), state).unwrap();
        (0..n).map(|_| (l.next_batch().unwrap(), l.state())).collect()
    }

    /// 13 clips in shards of 7 and 6 with row groups of 3: groups of 3, 3, 1, 3, 3.
    fn small_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &spec(3, 3, 32), &[7, 6], 3);
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
        assert_ne!(
            a.iter().map(|x| &x.0.ids).collect::<Vec<_>>(),
            c.iter().map(|x| &x.0.ids).collect::<Vec<_>>()
        );
        assert_ne!(a[0].0.images, c[0].0.images);
        let batch = &a[0].0;
        assert_eq!((batch.clips, batch.frames, batch.points, batch.size), (4, 3, 9, 24));
        assert_eq!(
            (batch.images.len(), batch.tracks.len(), batch.visibility.len()),
            (4 * 3 * 3 * 24 * 24, 4 * 3 * 9 * 2, 4 * 3 * 9)
        );
        assert_eq!(batch.inside.len(), 4 * 3 * 9);
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
        let per_clip = |b: &[(Batch, LoaderState)]| -> Vec<(String, Vec<u8>, Vec<f32>)> {
            b.iter()
                .flat_map(|(x, _)| {
                    let (img, trk) = (x.images.len() / x.clips, x.tracks.len() / x.clips);
                    (0..x.clips).map(move |i| {
                        (
                            x.ids[i].clone(),
                            x.images[i * img..][..img].to_vec(),
                            x.tracks[i * trk..][..trk].to_vec(),
                        )
                    })
                })
                .collect()
        };
        let shifted = take(dir.path(), &c, LoaderState { epoch: 0, position: 2 }, 2);
        assert_eq!(per_clip(&shifted)[..], per_clip(&straight[..3])[2..10]);
        assert_eq!(
            shifted[1].1,
            LoaderState { epoch: 1, position: 0 },
            "no whole batch left in epoch 0"
        );
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
            assert!(
                epochs[0] != epochs[1] || epochs[1] != epochs[2],
                "epochs reshuffle (buffer {buffer})"
            );
        }
    }

    #[test]
    fn crop_and_flip_follow_the_dot() {
        let dir = tempfile::tempdir().unwrap();
        // 128 px frames put the 4 x 4 grid on whole pixels (2, 43, 84, 125), so the drawn dot
        // is centred on its track.
        let sp = spec(2, 4, 128);
        write_dir(dir.path(), &sp, &[24], 8);
        let (s, t, n) = (64usize, 2usize, 16usize);
        let queries = mosic::grid_points(4, 128, 128);
        // Wide scale range: some dots land inside, some outside the crop.
        let c = LoaderConfig { crop_scale: (0.15, 1.0), grid: 4, ..cfg(6, s, 3) };
        let mut l = Loader::open(dir.path(), c.clone(), LoaderState::default()).unwrap();
        let (mut checked_in, mut checked_out, mut followed, mut flips) = (0, 0, 0, [0, 0]);
        for batch_index in 0..4 {
            let b = l.next_batch().unwrap();
            for i in 0..b.clips {
                let k = (batch_index * b.clips + i) as u64;
                let aug =
                    Aug::draw(&mut SplitMix64::stream(epoch_seed(c.seed, 0, AUG), k), 128, 128, &c);
                let ci: u32 =
                    b.ids[i].trim_start_matches("test/v").trim_end_matches("#0").parse().unwrap();
                let p0 = dot_point(ci, 4);
                let sel = select_points(&queries, &aug, s, 4);
                let at = |f: usize, kk: usize| (i * t + f) * n + kk;
                for (kk, p) in sel.iter().enumerate() {
                    // Selected points start inside the crop; padding is outside in every frame.
                    assert_eq!(b.inside[at(0, kk)] == 1.0, p.is_some(), "{aug:?} position {kk}");
                    for f in 0..t {
                        assert!(b.inside[at(f, kk)] == 1.0 || b.visibility[at(f, kk)] == 0.0);
                        // Hidden grid points stay hidden.
                        if p.is_some_and(|p| p != p0 && p % 3 == 0) {
                            assert_eq!(b.visibility[at(f, kk)], 0.0);
                        }
                    }
                }
                for f in 0..t {
                    let [x, y] = aug.map(dot(ci, f as u32, &sp), s);
                    if let Some(kk) = sel.iter().position(|&p| p == Some(p0)) {
                        let e = at(f, kk);
                        assert!(
                            (b.tracks[e * 2] - x).abs() < 1e-4
                                && (b.tracks[e * 2 + 1] - y).abs() < 1e-4
                        );
                        let inside = |v: f32| (-0.5..s as f32 - 0.5).contains(&v);
                        assert_eq!(b.visibility[e] == 1.0, inside(x) && inside(y));
                        followed += 1;
                    }
                    // Bright pixels of the frame, brightness as the mean of the channels.
                    let img = &b.images[(i * t + f) * 3 * s * s..][..3 * s * s];
                    let bright: Vec<(f32, f32, f32)> = (0..s * s)
                        .filter_map(|p| {
                            let v = (0..3).map(|ch| img[ch * s * s + p] as f32).sum::<f32>() / 3.0;
                            (v > 140.0).then(|| ((p % s) as f32, (p / s) as f32, v - 140.0))
                        })
                        .collect();
                    // The dot's half-width (2.5 stored px) plus JPEG ringing, in output px.
                    let (mx, my) =
                        (4.0 * s as f32 / aug.width as f32, 4.0 * s as f32 / aug.height as f32);
                    let well_inside = |v: f32, m: f32| v > m && v < s as f32 - 1.0 - m;
                    if well_inside(x, mx) && well_inside(y, my) {
                        let w: f32 = bright.iter().map(|p| p.2).sum();
                        let cx = bright.iter().map(|p| p.0 * p.2).sum::<f32>() / w;
                        let cy = bright.iter().map(|p| p.1 * p.2).sum::<f32>() / w;
                        assert!(
                            (cx - x).abs() < 1.0 && (cy - y).abs() < 1.0,
                            "dot at ({cx}, {cy}), track ({x}, {y}), {aug:?}"
                        );
                        checked_in += 1;
                        flips[aug.flip as usize] += 1;
                    } else if x < -mx || y < -my || x > s as f32 + mx || y > s as f32 + my {
                        assert!(
                            bright.is_empty(),
                            "a dot at ({x}, {y}) outside the crop shows in it"
                        );
                        checked_out += 1;
                    }
                }
                assert!(b.tracks[(i * t * n) * 2..((i + 1) * t * n) * 2]
                    .iter()
                    .all(|v| v.is_finite()));
            }
        }
        assert!(
            checked_in >= 10 && checked_out >= 2 && followed >= 10 && flips[0] > 0 && flips[1] > 0,
            "{checked_in} {checked_out} {followed} {flips:?}"
        );
    }

    /// An epoch holds `clips_per_video` clips of every video, drawn anew each epoch.
    #[test]
    fn an_epoch_is_one_clip_per_video() {
        let dir = tempfile::tempdir().unwrap();
        let sp = spec(2, 3, 16);
        let mut m = Manifest::new(sp.clone(), serde_json::json!({}));
        // 7 videos with 1 to 3 clips each, spread over two shards.
        let per_video = [3u32, 1, 2, 3, 1, 2, 3];
        let mut i = 0;
        for (j, videos) in [(0..4usize), (4..7)].into_iter().enumerate() {
            let path = dir.path().join(format!("shard-{j:05}.parquet"));
            let mut w =
                ShardWriter::create(&path, &sp, &WriteOptions { rows_per_group: 2, zstd_level: 1 })
                    .unwrap();
            for v in videos {
                for k in 0..per_video[v] {
                    w.write(clip_of(i, v as u32, k, &sp)).unwrap();
                    i += 1;
                }
            }
            m.shards.push(w.finish().unwrap());
        }
        m.save(dir.path()).unwrap();
        let c = LoaderConfig { clips_per_video: 1, ..cfg(7, 8, 4) };
        let mut l = Loader::open(dir.path(), c.clone(), LoaderState::default()).unwrap();
        assert_eq!((l.videos(), l.clips_per_epoch(), l.batches_per_epoch()), (7, 7, 1));
        let mut draws = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let ids = l.next_batch().unwrap().ids;
            let mut videos: Vec<&str> =
                ids.iter().map(|id| id.split('#').next().unwrap()).collect();
            videos.sort_unstable();
            videos.dedup();
            assert_eq!(videos.len(), 7, "one clip of every video: {ids:?}");
            let mut sorted = ids.clone();
            sorted.sort();
            draws.insert(sorted);
        }
        assert!(draws.len() > 1, "epochs draw other clips");
        // Resuming mid-way through the schedule repeats the straight run.
        let straight = take(dir.path(), &c, LoaderState::default(), 4);
        let resumed = take(dir.path(), &c, straight[1].1.clone(), 2);
        assert!(resumed[..] == straight[2..]);
        // 0 takes every stored clip.
        let all = Loader::open(
            dir.path(),
            LoaderConfig { clips_per_video: 0, ..cfg(5, 8, 4) },
            LoaderState::default(),
        )
        .unwrap();
        assert_eq!(all.clips_per_epoch(), 15);
        let two = Loader::open(
            dir.path(),
            LoaderConfig { clips_per_video: 2, ..cfg(1, 8, 4) },
            LoaderState::default(),
        )
        .unwrap();
        assert_eq!(two.clips_per_epoch(), 2 + 1 + 2 + 2 + 1 + 2 + 2);
    }

    #[test]
    fn spec_and_count_problems_name_the_file_and_both_values() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), &spec(2, 2, 16), &[3, 3], 2);
        let err = |c: LoaderConfig| {
            Loader::open(dir.path(), c, LoaderState::default()).err().expect("refused").to_string()
        };
        let e = err(LoaderConfig {
            expect_frames: Some(12),
            expect_size: Some((224, 224)),
            ..cfg(2, 16, 0)
        });
        assert!(
            e.contains("2 frames per clip, expected 12")
                && e.contains("16 x 16, expected 224 x 224"),
            "{e}"
        );
        assert!(err(cfg(7, 16, 0))
            .contains("6 clips (6 videos, clips_per_video 1), fewer than one batch of 7"));

        // A shard whose own spec disagrees with the manifest's.
        let mut m = Manifest::load(dir.path()).unwrap();
        let path = dir.path().join("shard-00001.parquet");
        let w = ShardWriter::create(&path, &spec(2, 3, 16), &WriteOptions::default()).unwrap();
        m.shards[1] = w.finish().unwrap();
        m.save(dir.path()).unwrap();
        let e = err(cfg(2, 16, 0));
        assert!(e.contains("shard-00001.parquet") && e.contains("grid 3 vs 2"), "{e}");

        // Shards tracked from another query frame.
        let other = tempfile::tempdir().unwrap();
        write_dir(other.path(), &ShardSpec { query_frame: 1, ..spec(2, 2, 16) }, &[3], 2);
        let e = Loader::open(other.path(), cfg(2, 16, 0), LoaderState::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("manifest.json") && e.contains("query frame 1, expected 0"), "{e}");

        // A row count the file does not hold.
        write_dir(dir.path(), &spec(2, 2, 16), &[3, 3], 2);
        let mut m = Manifest::load(dir.path()).unwrap();
        m.shards[0].rows = 4;
        m.save(dir.path()).unwrap();
        let e = err(cfg(2, 16, 0));
        assert!(
            e.contains("shard-00000.parquet")
                && e.contains("holds 3 clips")
                && e.contains("lists 4"),
            "{e}"
        );
    }

    /// B = 8, T = 12, 224 px, 16 x 16 grid: `cargo test --release -p mosic-trainer --lib data::tests::throughput -- --ignored --nocapture`.
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
                        image::Rgb([
                            (x + n) as u8,
                            (y + i + n) as u8,
                            ((x * y) / 200 + k as u32 * 9 + n) as u8,
                        ])
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
        let c = LoaderConfig {
            batch_size: 8,
            input_size: 224,
            shuffle_buffer: 64,
            workers: 0,
            prefetch: 4,
            ..Default::default()
        };
        let mut l = Loader::open(dir.path(), c, LoaderState::default()).unwrap();
        l.next_batch().unwrap();
        let n = 24;
        let start = std::time::Instant::now();
        for _ in 0..n {
            l.next_batch().unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{:.2} batches/s ({:.0} frames/s) on {} threads",
            n as f64 / secs,
            (n * 8 * 12) as f64 / secs,
            rayon::current_num_threads()
        );
    }
}
