//! The stage-1 run: videos in, track shards out.
//!
//! Videos are split deterministically across workers, then into groups of
//! `videos_per_shard`; each group becomes one shard. Decoding, resizing and JPEG encoding
//! run on rayon and feed the tracker through a bounded channel, so tracking overlaps with
//! decoding and at most `queue_clips` decoded clips wait in memory. A group's shard is
//! written atomically and recorded in the manifest and `progress.json` before the next
//! group starts, so a killed run resumes at the first unfinished group.

use crate::input::{discover, folder_clips, load_image, Source, Video};
use crate::tracker::{TrackRequest, Tracker};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use mosic::clip::{grid_points, Clip, ClipPlan, ShardSpec};
use mosic::fsutil::write_atomic;
use mosic::imageio::{encode_jpeg, resize};
use mosic::manifest::Manifest;
use mosic::shard::{ShardWriter, WriteOptions};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::Instant;

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
    /// Decoded clips allowed to wait for the tracker (bounds memory).
    #[serde(skip)]
    pub queue_clips: usize,
}

impl Default for TracksConfig {
    fn default() -> Self {
        Self {
            input: PathBuf::new(),
            dataset: None,
            plan: ClipPlan::default(),
            width: 224,
            height: 224,
            grid_size: 16,
            jpeg_quality: 90,
            folder_fps: 30.0,
            videos_per_shard: 64,
            num_workers: 1,
            worker_index: 0,
            queue_clips: 32,
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
}

/// What happened to one group of videos; kept in `progress.json` for resumed runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupOutcome {
    pub videos: usize,
    pub clips: u64,
    pub shard: Option<String>,
    /// Videos too short for one clip.
    pub too_short: Vec<String>,
    /// Videos that failed, with the error.
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ProgressFile {
    groups: BTreeMap<usize, GroupOutcome>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dataset: String,
    pub videos: usize,
    pub clips: u64,
    pub shards: usize,
    pub too_short: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// Groups already done by an earlier run.
    pub resumed_groups: usize,
    pub seconds: f64,
    /// Clips made by this run per second.
    pub clips_per_second: f64,
}

/// Progress as the run goes: (videos done, videos in this worker's share, clips written).
pub type ProgressFn<'a> = dyn Fn(usize, usize, u64) + Sync + 'a;

/// Tracks every video of this worker's share and writes shards into `out`.
pub fn run(cfg: &TracksConfig, out: &Path, tracker: &mut dyn Tracker, progress: &ProgressFn) -> Result<Report> {
    let start = Instant::now();
    let found = discover(&cfg.input, cfg.dataset.as_deref())?;
    if cfg.num_workers == 0 || cfg.worker_index >= cfg.num_workers {
        bail!("worker index {} is not below the number of workers {}", cfg.worker_index, cfg.num_workers);
    }
    let mine: Vec<&Video> =
        found.videos.iter().enumerate().filter(|(i, _)| *i as u32 % cfg.num_workers == cfg.worker_index).map(|(_, v)| v).collect();
    let dir = cfg.worker_dir(out);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let spec = ShardSpec {
        frames_per_clip: cfg.plan.frames,
        grid_size: cfg.grid_size,
        width: cfg.width,
        height: cfg.height,
        query_frame: 0,
        tracker: tracker.info(),
    };
    let config = serde_json::to_value(cfg)?;
    let mut manifest = if Manifest::exists(&dir) {
        let m = Manifest::load(&dir)?;
        if m.spec != spec || m.config != config {
            bail!(
                "{} was made with other settings or another tracker; use a new output directory or delete it",
                Manifest::path(&dir).display()
            );
        }
        m
    } else {
        Manifest::new(spec.clone(), config)
    };
    let progress_path = dir.join("progress.json");
    let mut done: ProgressFile = match std::fs::read_to_string(&progress_path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: malformed", progress_path.display()))?,
        Err(_) => ProgressFile::default(),
    };
    // A group counts as done only if its shard made it into the manifest.
    done.groups.retain(|_, g| g.shard.as_ref().is_none_or(|s| manifest.shards.iter().any(|e| &e.file == s)));
    let resumed_groups = done.groups.len();

    let groups: Vec<&[&Video]> = mine.chunks(cfg.videos_per_shard.max(1)).collect();
    let total = mine.len();
    let mut videos_done: usize = done.groups.values().map(|g| g.videos).sum();
    let mut clips_done: u64 = done.groups.values().map(|g| g.clips).sum();
    let clips_before = clips_done;
    progress(videos_done, total, clips_done);
    let grid = grid_points(cfg.grid_size, cfg.width, cfg.height);

    for (k, group) in groups.iter().enumerate() {
        if done.groups.contains_key(&k) {
            continue;
        }
        let base_done = videos_done;
        let base_clips = clips_done;
        let tick = |v: usize, c: u64| progress(base_done + v, total, base_clips + c);
        let (clips, mut outcome) = process_group(cfg, &found.dataset, group, &grid, tracker, &tick)?;
        // Order matters for resume: the outcome is recorded first, and the group counts as
        // done only once the manifest lists its shard.
        let entry = if clips.is_empty() {
            None
        } else {
            let name = format!("shard-{k:05}.parquet");
            let mut w = ShardWriter::create(&dir.join(&name), &spec, &WriteOptions::default())?;
            for c in clips {
                w.write(c)?;
            }
            outcome.shard = Some(name);
            Some(w.finish()?)
        };
        videos_done += outcome.videos;
        clips_done += outcome.clips;
        done.groups.insert(k, outcome);
        write_atomic(&progress_path, serde_json::to_string_pretty(&done)?.as_bytes())?;
        if let Some(entry) = entry {
            manifest.shards.retain(|e| e.file != entry.file);
            manifest.shards.push(entry);
            manifest.shards.sort_by(|a, b| a.file.cmp(&b.file));
            manifest.save(&dir)?;
        }
        progress(videos_done, total, clips_done);
    }
    if !Manifest::exists(&dir) {
        manifest.save(&dir)?; // an empty run still leaves a valid directory
    }

    let mut report = Report { dataset: found.dataset.clone(), videos: total, shards: manifest.shards.len(), resumed_groups, ..Default::default() };
    for g in done.groups.values() {
        report.clips += g.clips;
        report.too_short.extend(g.too_short.iter().cloned());
        report.failed.extend(g.failed.iter().cloned());
    }
    if cfg.worker_index == 0 {
        report.failed.extend(found.rejected.iter().map(|(p, why)| (p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), why.clone())));
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.clips_per_second = (clips_done - clips_before) as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// A clip decoded and resized, waiting for the tracker.
struct Prepared {
    video: usize,
    clip_index: u32,
    frame_indices: Vec<u32>,
    fps: f32,
    rgb: Vec<RgbImage>,
    jpegs: Vec<Vec<u8>>,
}

fn process_group(
    cfg: &TracksConfig,
    dataset: &str,
    videos: &[&Video],
    grid: &[[f32; 2]],
    tracker: &mut dyn Tracker,
    tick: &(dyn Fn(usize, u64) + Sync),
) -> Result<(Vec<Clip>, GroupOutcome)> {
    let (tx, rx) = sync_channel::<Prepared>(cfg.queue_clips.max(1));
    let outcomes: Mutex<Vec<(usize, Result<usize>)>> = Mutex::new(Vec::new());
    let mut results: Vec<Clip> = Vec::new();
    let mut owner: Vec<usize> = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let tx = tx; // dropped when every video is prepared, which ends the tracking loop
            videos.par_iter().enumerate().for_each(|(i, v)| {
                let r = prepare_video(cfg, i, v, &tx);
                let mut o = outcomes.lock().expect("no panics while holding the lock");
                o.push((i, r));
                tick(o.len(), 0);
            });
        });
        track_all(&rx, tracker, grid, dataset, videos, &mut results, &mut owner)
    })
    .context("tracking failed")?;

    let mut outcome = GroupOutcome { videos: videos.len(), ..Default::default() };
    let mut failed = vec![false; videos.len()];
    for (i, r) in outcomes.into_inner().expect("lock not poisoned") {
        match r {
            Ok(0) => outcome.too_short.push(videos[i].id.clone()),
            Ok(_) => {}
            Err(e) => {
                failed[i] = true;
                outcome.failed.push((videos[i].id.clone(), format!("{e:#}")));
            }
        }
    }
    outcome.too_short.sort();
    outcome.failed.sort();
    // A video that failed part-way contributes nothing: a shard never holds half a video.
    let mut clips: Vec<(usize, Clip)> = owner.into_iter().zip(results).filter(|(v, _)| !failed[*v]).collect();
    clips.sort_by_key(|(v, c)| (*v, c.clip_index));
    outcome.clips = clips.len() as u64;
    Ok((clips.into_iter().map(|(_, c)| c).collect(), outcome))
}

fn track_all(
    rx: &Receiver<Prepared>,
    tracker: &mut dyn Tracker,
    grid: &[[f32; 2]],
    dataset: &str,
    videos: &[&Video],
    results: &mut Vec<Clip>,
    owner: &mut Vec<usize>,
) -> Result<()> {
    let batch = tracker.batch_size().max(1);
    let mut pending: Vec<Prepared> = Vec::with_capacity(batch);
    loop {
        let closed = match rx.recv() {
            Ok(p) => {
                pending.push(p);
                while pending.len() < batch {
                    match rx.recv() {
                        Ok(p) => pending.push(p),
                        Err(_) => break,
                    }
                }
                false
            }
            Err(_) => true,
        };
        if !pending.is_empty() {
            let requests: Vec<TrackRequest> =
                pending.iter().map(|p| TrackRequest { frames: &p.rgb, queries: grid, query_frame: 0 }).collect();
            let tracked = tracker.track(&requests)?;
            if tracked.len() != pending.len() {
                bail!("tracker returned {} results for {} clips", tracked.len(), pending.len());
            }
            for (p, t) in pending.drain(..).zip(tracked) {
                owner.push(p.video);
                results.push(Clip {
                    dataset: dataset.to_string(),
                    video_id: videos[p.video].id.clone(),
                    clip_index: p.clip_index,
                    frame_indices: p.frame_indices,
                    source_fps: p.fps,
                    frames: p.jpegs,
                    queries: grid.to_vec(),
                    tracks: t.tracks,
                    visibility: t.visibility,
                });
            }
        }
        if closed {
            return Ok(());
        }
    }
}

/// Decodes the clips of one video and sends them to the tracker; returns how many.
fn prepare_video(cfg: &TracksConfig, index: usize, video: &Video, tx: &SyncSender<Prepared>) -> Result<usize> {
    decode_clips(cfg, video, &mut |clip_index, frame_indices, fps, frames| {
        let rgb: Vec<RgbImage> = frames.par_iter().map(|f| resize(f, cfg.width, cfg.height)).collect();
        let jpegs =
            rgb.par_iter().map(|f| encode_jpeg(f, cfg.jpeg_quality)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
        tx.send(Prepared { video: index, clip_index, frame_indices, fps, rgb, jpegs }).map_err(|_| anyhow::anyhow!("tracker stopped"))
    })
}

/// Called with each decoded clip: clip index, source frame indices, fps, frames.
type ClipSink<'a> = dyn FnMut(u32, Vec<u32>, f32, Vec<RgbImage>) -> Result<()> + 'a;

/// Decodes the clips of one video at source size; returns how many.
pub fn decode_clips(cfg: &TracksConfig, video: &Video, sink: &mut ClipSink) -> Result<usize> {
    let mut sent = 0;
    match &video.source {
        Source::Frames(files) => {
            for (ci, clip) in folder_clips(files, cfg.folder_fps, &cfg.plan).into_iter().enumerate() {
                let frames = clip.par_iter().map(|&i| load_image(&files[i].1)).collect::<Result<Vec<_>>>()?;
                let frame_indices = clip.iter().map(|&i| files[i].0).collect();
                sink(ci as u32, frame_indices, cfg.folder_fps as f32, frames)?;
                sent += 1;
            }
        }
        Source::File(path) => {
            // Clips are cut as frames arrive, so a long video never sits in memory whole.
            let mut dec = mosic_video::Decoder::open(path)?;
            let fps = dec.info().fps;
            if fps <= 0.0 {
                bail!("{}: frame rate unknown", path.display());
            }
            let step = cfg.plan.step(fps) as u64;
            let t = cfg.plan.frames as u64;
            let window = t * step;
            let max = cfg.plan.max_clips.map(u64::from).unwrap_or(u64::MAX);
            let mut frames = Vec::with_capacity(t as usize);
            let mut clip = 0u64;
            while clip < max {
                let want = clip * window + frames.len() as u64 * step;
                if dec.position() < want {
                    if dec.skip_frame()?.is_none() {
                        break;
                    }
                    continue;
                }
                let Some((_, img)) = dec.next_frame()? else { break };
                frames.push(img);
                if frames.len() as u64 == t {
                    let frame_indices = (0..t).map(|k| (clip * window + k * step) as u32).collect();
                    sink(clip as u32, frame_indices, fps as f32, std::mem::take(&mut frames))?;
                    sent += 1;
                    clip += 1;
                }
            }
            if dec.position() == 0 {
                bail!("{}: video has no decodable frames", path.display());
            }
        }
    }
    Ok(sent)
}

/// Decode-only pass over the same clips as [`run`] (no resize, encode or tracking), for
/// the stage benchmark. Returns the number of clips.
pub fn decode_only(cfg: &TracksConfig) -> Result<u64> {
    let found = discover(&cfg.input, cfg.dataset.as_deref())?;
    let counts = found
        .videos
        .par_iter()
        .map(|v| decode_clips(cfg, v, &mut |_, _, _, frames| {
            std::hint::black_box(frames);
            Ok(())
        }))
        .collect::<Result<Vec<_>>>()?;
    Ok(counts.into_iter().map(|c| c as u64).sum())
}
