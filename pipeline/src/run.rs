//! The stage-1 run: videos in, track shards out.
//!
//! Videos are split deterministically across workers, then into groups of
//! `videos_per_shard`; each group becomes one shard. Dedicated decoding threads (never the
//! rayon pool the native tracker computes on) decode, resize, JPEG-encode and prepare the
//! tracker's input, and feed the tracker through a queue bounded in bytes (see [`crate::queue`]),
//! so tracking overlaps with decoding and memory stays bounded whatever the group size. A
//! group's shard is written atomically and recorded in `progress.json` and the manifest
//! before the next group starts, so a killed or failed run resumes at the first unfinished
//! group. One run writes a directory at a time ([`crate::lock`]).

use crate::input::{discover, folder_clips, load_image, Source, Video};
use crate::lock::DirLock;
use crate::queue::{ByteQueue, Cancelled, QueueStats};
use crate::tracker::{Preprocess, TrackRequest, TrackResult, Tracker};
use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use mosic::clip::{grid_points, Clip, ClipPlan, ShardSpec};
use mosic::fsutil::write_atomic;
use mosic::imageio::{encode_jpeg, resize};
use mosic::manifest::Manifest;
use mosic::shard::{ShardWriter, WriteOptions};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// The input's video ids when the run began, in order; resumed runs must see the same.
    #[serde(default)]
    input_videos: Vec<String>,
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
    /// Groups processed again for `retry_failed`.
    pub retried_groups: usize,
    /// Visible points the tracker placed outside the frame, stored as invisible.
    pub hidden_outside: u64,
    /// Fullest the queue got, and how often decoding waited for the tracker.
    pub queue_peak_clips: usize,
    pub queue_peak_bytes: usize,
    pub queue_full_waits: u64,
    /// Seconds spent inside the tracker (the rest of the time it waited for clips).
    pub tracker_seconds: f64,
    /// Things the user should know (a lock taken over, leftovers removed, a changed input).
    pub notes: Vec<String>,
    pub seconds: f64,
    /// Clips made by this run per second.
    pub clips_per_second: f64,
}

/// Where a run stands. Clips are known only once their video is decoded, so the clips still
/// to track are estimated from the videos decoded so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunProgress {
    /// Videos in this worker's share, and how many of them are decoded (or were done before).
    pub videos: usize,
    pub videos_decoded: usize,
    /// Clips of the decoded videos, and how many of them are tracked.
    pub clips_decoded: u64,
    pub clips_tracked: u64,
}

impl RunProgress {
    /// The clips the run will have tracked at the end: those decoded, plus the remaining
    /// videos at the mean clip count of the decoded ones.
    pub fn clips_expected(&self) -> u64 {
        let left = self.videos.saturating_sub(self.videos_decoded) as f64;
        let per = self.clips_decoded as f64 / self.videos_decoded.max(1) as f64;
        self.clips_decoded + (left * per).round() as u64
    }
}

/// Called as the run goes.
pub type ProgressFn<'a> = dyn Fn(&RunProgress) + Sync + 'a;

/// Tracks every video of this worker's share and writes shards into `out`.
pub fn run(
    cfg: &TracksConfig,
    opts: &RunOptions,
    out: &Path,
    tracker: &mut dyn Tracker,
    progress: &ProgressFn,
) -> Result<Report> {
    cfg.validate()?;
    if opts.queue_bytes == Some(0) {
        bail!("the queue size must be positive");
    }
    let start = Instant::now();
    let dir = cfg.worker_dir(out);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock = DirLock::acquire(&dir)?;
    let mut report = Report::default();
    if let Some(h) = &lock.took_over {
        report.notes.push(format!(
            "took over the lock of process {} on {}, which no longer runs",
            h.pid, h.host
        ));
    }
    let removed = remove_temp_files(&dir)?;
    if removed > 0 {
        report
            .notes
            .push(format!("removed {removed} temporary file(s) left by an interrupted run"));
    }

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
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{}: malformed", progress_path.display()))?,
        Err(_) => ProgressFile::default(),
    };
    // A group counts as done only if its shard made it into the manifest.
    done.groups.retain(|_, g| {
        g.shard.as_ref().is_none_or(|s| manifest.shards.iter().any(|e| &e.file == s))
    });

    let found = discover(&cfg.input, cfg.dataset.as_deref())?;
    let listed: Vec<String> = found.videos.iter().map(|v| v.id.clone()).collect();
    if done.input_videos.is_empty() {
        done.input_videos = listed.clone();
        write_atomic(&progress_path, serde_json::to_string_pretty(&done)?.as_bytes())?;
    } else if done.input_videos != listed {
        let diff = list_difference(&done.input_videos, &listed);
        if !opts.allow_changed_input {
            bail!(
                "the input's video list changed since this run began in {} ({diff}); use a new output directory, \
                 or pass --allow-changed-input to go on with the original list",
                dir.display()
            );
        }
        report.notes.push(format!("the input changed ({diff}); going on with the original list"));
    }
    let by_id: BTreeMap<&str, &Video> = found.videos.iter().map(|v| (v.id.as_str(), v)).collect();
    let input_videos = done.input_videos.clone();
    let entries: Vec<(&str, Option<&Video>)> =
        input_videos.iter().map(|id| (id.as_str(), by_id.get(id.as_str()).copied())).collect();
    let mine: Vec<(&str, Option<&Video>)> = entries
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i as u32 % cfg.num_workers == cfg.worker_index)
        .map(|(_, e)| e)
        .collect();
    let groups: Vec<&[(&str, Option<&Video>)]> = mine.chunks(cfg.videos_per_shard).collect();
    let todo: Vec<usize> = (0..groups.len())
        .filter(|k| match done.groups.get(k) {
            None => true,
            Some(g) => opts.retry_failed && !g.failed.is_empty(),
        })
        .collect();
    report.resumed_groups =
        done.groups.len() - todo.iter().filter(|k| done.groups.contains_key(k)).count();
    report.retried_groups = todo.iter().filter(|k| done.groups.contains_key(k)).count();

    // Entries that cannot be tracked end the run before any work unless they may be skipped.
    if !opts.keep_going {
        let unusable: Vec<String> = todo
            .iter()
            .flat_map(|&k| groups[k].iter())
            .filter_map(|(id, v)| match v {
                None => Some(format!("{id}: no longer in the input")),
                Some(Video { source: Source::Unusable(why), .. }) => Some(why.clone()),
                Some(_) => None,
            })
            .collect();
        if !unusable.is_empty() {
            bail!(
                "{} input entr{} cannot be tracked: {}; fix {} or pass --keep-going to skip {}",
                unusable.len(),
                if unusable.len() == 1 { "y" } else { "ies" },
                unusable.join("; "),
                if unusable.len() == 1 { "it" } else { "them" },
                if unusable.len() == 1 { "it" } else { "them" }
            );
        }
    }

    let total = mine.len();
    let todo_videos: usize = todo.iter().map(|&k| groups[k].len()).sum();
    let mut videos_done = total - todo_videos;
    let mut clips_done: u64 =
        done.groups.iter().filter(|(k, _)| !todo.contains(k)).map(|(_, g)| g.clips).sum();
    let clips_before = clips_done;
    let at = |decoded: usize, clips_decoded: u64, tracked: u64| RunProgress {
        videos: total,
        videos_decoded: decoded,
        clips_decoded,
        clips_tracked: tracked,
    };
    progress(&at(videos_done, clips_done, clips_done));
    let grid = grid_points(cfg.grid_size, cfg.width, cfg.height);
    let mut stats = QueueStats::default();

    for &k in &todo {
        let base = (videos_done, clips_done);
        let tick = |p: GroupProgress| {
            progress(&at(base.0 + p.decoded, base.1 + p.clips_decoded, base.1 + p.tracked))
        };
        let group = process_group(cfg, opts, &found.dataset, groups[k], &grid, tracker, &tick)?;
        stats.peak_items = stats.peak_items.max(group.stats.peak_items);
        stats.peak_bytes = stats.peak_bytes.max(group.stats.peak_bytes);
        stats.full_waits += group.stats.full_waits;
        report.hidden_outside += group.hidden_outside;
        report.tracker_seconds += group.tracker_seconds;
        let outcome = commit_group(
            &dir,
            k,
            &spec,
            group.clips,
            group.outcome,
            &mut done,
            &progress_path,
            &mut manifest,
        )?;
        videos_done += outcome.videos;
        clips_done += outcome.clips;
        progress(&at(videos_done, clips_done, clips_done));
    }
    if !Manifest::exists(&dir) {
        manifest.save(&dir)?; // an empty run still leaves a valid directory
    }
    drop(lock);

    report.dataset = found.dataset.clone();
    report.videos = total;
    report.shards = manifest.shards.len();
    for g in done.groups.values() {
        report.clips += g.clips;
        report.too_short.extend(g.too_short.iter().cloned());
        report.failed.extend(g.failed.iter().cloned());
    }
    report.queue_peak_clips = stats.peak_items;
    report.queue_peak_bytes = stats.peak_bytes;
    report.queue_full_waits = stats.full_waits;
    report.seconds = start.elapsed().as_secs_f64();
    report.clips_per_second = (clips_done - clips_before) as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// Added and removed ids, a few of each.
fn list_difference(before: &[String], now: &[String]) -> String {
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
        (before.iter().collect(), now.iter().collect());
    let show = |v: Vec<&&String>| {
        let n = v.len();
        let mut s: Vec<String> = v.into_iter().take(10).map(|x| x.to_string()).collect();
        if n > 10 {
            s.push(format!("and {} more", n - 10));
        }
        format!("{n}: {}", s.join(", "))
    };
    let added: Vec<_> = b.difference(&a).collect();
    let removed: Vec<_> = a.difference(&b).collect();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {}", show(added)));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {}", show(removed)));
    }
    if parts.is_empty() {
        parts.push("same videos in another order".into());
    }
    parts.join("; ")
}

/// Removes the temporary files (`.NAME.tmp-PID`) an interrupted run left; called with the lock held.
fn remove_temp_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let temp = name.starts_with('.')
            && name
                .rsplit_once(".tmp-")
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if temp && e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(e.path())
                .with_context(|| format!("cannot remove {}", e.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Whether a shard file belongs to group `k`: `shard-0000k.parquet` or a retry's `shard-0000k-N.parquet`.
fn group_of(file: &str, k: usize) -> bool {
    let p = format!("shard-{k:05}");
    file.strip_prefix(&p).is_some_and(|rest| {
        rest == ".parquet" || rest.starts_with('-') && rest.ends_with(".parquet")
    })
}

/// Writes a group's shard and records it. A retried group gets a new file name, so the
/// shard it replaces stays listed until the new one is: no finished work is lost to a kill.
#[allow(clippy::too_many_arguments)]
fn commit_group(
    dir: &Path,
    k: usize,
    spec: &ShardSpec,
    clips: Vec<Clip>,
    mut outcome: GroupOutcome,
    done: &mut ProgressFile,
    progress_path: &Path,
    manifest: &mut Manifest,
) -> Result<GroupOutcome> {
    let taken =
        |name: &str| manifest.shards.iter().any(|e| e.file == name) || dir.join(name).exists();
    let name = std::iter::once(format!("shard-{k:05}.parquet"))
        .chain((1..).map(|n| format!("shard-{k:05}-{n}.parquet")))
        .find(|n| !taken(n))
        .expect("an unused name");
    let entry = if clips.is_empty() {
        None
    } else {
        let mut w = ShardWriter::create(&dir.join(&name), spec, &WriteOptions::default())?;
        for c in clips {
            w.write(c)?;
        }
        outcome.shard = Some(name);
        Some(w.finish()?)
    };
    // Order matters for resume: the outcome is recorded first, and the group counts as done
    // only once the manifest lists its shard.
    done.groups.insert(k, outcome.clone());
    write_atomic(progress_path, serde_json::to_string_pretty(&done)?.as_bytes())?;
    let old: Vec<String> =
        manifest.shards.iter().filter(|e| group_of(&e.file, k)).map(|e| e.file.clone()).collect();
    manifest.shards.retain(|e| !group_of(&e.file, k));
    if let Some(entry) = entry {
        manifest.shards.push(entry);
        manifest.shards.sort_by(|a, b| a.file.cmp(&b.file));
    }
    manifest.save(dir)?;
    for f in old.iter().filter(|f| Some(*f) != outcome.shard.as_ref()) {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Ok(outcome)
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

/// A clip decoded and prepared, waiting for the tracker.
struct Prepared {
    video: usize,
    clip_index: u32,
    frame_indices: Vec<u32>,
    fps: f32,
    rgb: Vec<RgbImage>,
    jpegs: Vec<Vec<u8>>,
    /// The tracker's own input (empty without a [`Preprocess`]).
    input: Vec<f32>,
}

impl Prepared {
    fn bytes(&self) -> usize {
        self.rgb.iter().map(|f| f.as_raw().len()).sum::<usize>()
            + self.jpegs.iter().map(Vec::len).sum::<usize>()
            + self.input.len() * 4
    }
}

struct GroupResult {
    clips: Vec<Clip>,
    outcome: GroupOutcome,
    stats: QueueStats,
    hidden_outside: u64,
    tracker_seconds: f64,
}

/// A group's own counts, added to the run's by the caller.
#[derive(Clone, Copy)]
struct GroupProgress {
    decoded: usize,
    clips_decoded: u64,
    tracked: u64,
}

fn process_group(
    cfg: &TracksConfig,
    opts: &RunOptions,
    dataset: &str,
    videos: &[(&str, Option<&Video>)],
    grid: &[[f32; 2]],
    tracker: &mut dyn Tracker,
    tick: &(dyn Fn(GroupProgress) + Sync),
) -> Result<GroupResult> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let decoders =
        (if opts.decoders == 0 { cores } else { opts.decoders }).clamp(1, videos.len().max(1));
    let pre = tracker.preprocessor();
    let queue = ByteQueue::<Prepared>::new(
        opts.queue_bytes.unwrap_or_else(|| default_queue_bytes(cfg, tracker)),
        decoders,
    );
    // Buffers of the tracker's input go back to the decoders once tracked (28 MB a clip for CoTracker).
    let pool: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
    let outcomes: Mutex<Vec<Option<Result<usize, String>>>> = Mutex::new(vec![None; videos.len()]);
    let next = AtomicUsize::new(0);
    let (videos_done, clips_done) = (AtomicUsize::new(0), AtomicU64::new(0));
    let clips_decoded = AtomicU64::new(0);
    let now = || GroupProgress {
        decoded: videos_done.load(Ordering::Relaxed),
        clips_decoded: clips_decoded.load(Ordering::Relaxed),
        tracked: clips_done.load(Ordering::Relaxed),
    };
    let mut results: Vec<(usize, Clip)> = Vec::new();
    let mut hidden_outside = 0;
    let mut tracker_seconds = 0.0;

    std::thread::scope(|s| -> Result<()> {
        // Created first: however this scope is left, no producer stays blocked.
        let _consumer = queue.consumer();
        for d in 0..decoders {
            let (queue, pre, pool, outcomes, next, videos_done, clips_decoded, now) =
                (&queue, pre.clone(), &pool, &outcomes, &next, &videos_done, &clips_decoded, &now);
            std::thread::Builder::new()
                .name(format!("mosic-decode-{d}"))
                .spawn_scoped(s, move || {
                    let _producer = queue.producer();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= videos.len() || queue.is_cancelled() {
                            return;
                        }
                        let (id, video) = videos[i];
                        let r = match video {
                            None => Err(anyhow!("video {id}: no longer in the input")),
                            Some(v) => {
                                let _log = mosic_video::log::VideoScope::enter(&v.id);
                                prepare_video(cfg, i, v, queue, pre.as_deref(), pool).with_context(
                                    || format!("video {} ({})", v.id, v.path.display()),
                                )
                            }
                        };
                        if let Err(e) = &r {
                            if e.downcast_ref::<Cancelled>().is_some() {
                                return;
                            }
                        }
                        if let Ok(n) = &r {
                            clips_decoded.fetch_add(*n as u64, Ordering::Relaxed);
                        }
                        let failed = r.as_ref().err().map(|e| format!("{e:#}"));
                        outcomes.lock().unwrap_or_else(|e| e.into_inner())[i] =
                            Some(r.map_err(|e| format!("{e:#}")));
                        if let Some(msg) = failed {
                            if !opts.keep_going {
                                queue.fail(anyhow!("{msg}"));
                                return;
                            }
                        }
                        videos_done.fetch_add(1, Ordering::Relaxed);
                        tick(now());
                    }
                })
                .context("cannot start a decoding thread")?;
        }
        let cx = TrackCtx { tracker, grid, dataset, videos, width: cfg.width, height: cfg.height };
        let r = track_all(
            &queue,
            cx,
            &pool,
            &mut results,
            &mut hidden_outside,
            &mut tracker_seconds,
            &|c| {
                clips_done.fetch_add(c, Ordering::Relaxed);
                tick(now())
            },
        );
        if r.is_err() {
            queue.cancel();
        }
        r
    })?;

    let mut outcome = GroupOutcome { videos: videos.len(), ..Default::default() };
    let mut failed = vec![false; videos.len()];
    for (i, r) in outcomes.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().enumerate() {
        match r {
            Some(Ok(0)) => outcome.too_short.push(videos[i].0.to_string()),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                failed[i] = true;
                outcome.failed.push((videos[i].0.to_string(), e));
            }
            None => bail!("video {} was not processed", videos[i].0), // cannot happen once the queue ended cleanly
        }
    }
    outcome.too_short.sort();
    outcome.failed.sort();
    // A video that failed part-way contributes nothing: a shard never holds half a video.
    results.retain(|(v, _)| !failed[*v]);
    results.sort_by_key(|(v, c)| (*v, c.clip_index));
    outcome.clips = results.len() as u64;
    Ok(GroupResult {
        clips: results.into_iter().map(|(_, c)| c).collect(),
        outcome,
        stats: queue.stats(),
        hidden_outside,
        tracker_seconds,
    })
}

struct TrackCtx<'a, 'b> {
    tracker: &'a mut dyn Tracker,
    grid: &'a [[f32; 2]],
    dataset: &'a str,
    videos: &'a [(&'b str, Option<&'b Video>)],
    width: u32,
    height: u32,
}

fn track_all(
    queue: &ByteQueue<Prepared>,
    cx: TrackCtx,
    pool: &Mutex<Vec<Vec<f32>>>,
    results: &mut Vec<(usize, Clip)>,
    hidden_outside: &mut u64,
    tracker_seconds: &mut f64,
    tracked: &dyn Fn(u64),
) -> Result<()> {
    let batch = cx.tracker.batch_size().max(1);
    let mut pending: Vec<Prepared> = Vec::with_capacity(batch);
    let clip_id =
        |p: &Prepared| format!("{}/{}#{}", cx.dataset, cx.videos[p.video].0, p.clip_index);
    loop {
        // Waiting for a full batch cannot stall the producers: every item taken frees room.
        let mut closed = false;
        while pending.len() < batch {
            match queue.pop()? {
                Some(p) => pending.push(p),
                None => {
                    closed = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            let requests: Vec<TrackRequest> = pending
                .iter()
                .map(|p| TrackRequest {
                    frames: &p.rgb,
                    queries: cx.grid,
                    query_frame: 0,
                    prepared: (!p.input.is_empty()).then_some(&p.input[..]),
                })
                .collect();
            let names = || pending.iter().map(clip_id).collect::<Vec<_>>().join(", ");
            let started = Instant::now();
            let out =
                cx.tracker.track(&requests).with_context(|| format!("tracking {}", names()))?;
            *tracker_seconds += started.elapsed().as_secs_f64();
            drop(requests);
            if out.len() != pending.len() {
                bail!(
                    "tracking {}: the tracker returned {} results for {} clips",
                    names(),
                    out.len(),
                    pending.len()
                );
            }
            tracked(pending.len() as u64);
            for (mut p, mut t) in pending.drain(..).zip(out) {
                *hidden_outside +=
                    sanitize(&mut t, p.rgb.len(), cx.grid.len(), cx.width, cx.height)
                        .with_context(|| format!("tracking {}", clip_id(&p)))?;
                if !p.input.is_empty() {
                    pool.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(std::mem::take(&mut p.input));
                }
                results.push((
                    p.video,
                    Clip {
                        dataset: cx.dataset.to_string(),
                        video_id: cx.videos[p.video].0.to_string(),
                        clip_index: p.clip_index,
                        frame_indices: p.frame_indices,
                        source_fps: p.fps,
                        frames: p.jpegs,
                        queries: cx.grid.to_vec(),
                        tracks: t.tracks,
                        visibility: t.visibility,
                    },
                ));
            }
        }
        if closed {
            return Ok(());
        }
    }
}

/// Makes a tracker's output storable whatever it is: points outside the frame become
/// invisible (a clamped visible point would supervise a border patch it is not on).
/// Returns how many visible points that hid; a wrong shape or a non-finite position is an
/// error (a broken model, not something to paper over).
pub fn sanitize(r: &mut TrackResult, t: usize, n: usize, width: u32, height: u32) -> Result<u64> {
    if r.tracks.len() != t * n || r.visibility.len() != t * n {
        bail!(
            "the tracker returned {} positions and {} visibility flags, expected {t} frames x {n} points",
            r.tracks.len(),
            r.visibility.len()
        );
    }
    let (w, h) = (width as f32 - 0.5, height as f32 - 0.5);
    let mut hidden = 0;
    for (e, (p, v)) in r.tracks.iter().zip(r.visibility.iter_mut()).enumerate() {
        if !(p[0].is_finite() && p[1].is_finite()) {
            bail!("the tracker returned position {p:?} for point {} at frame {}", e % n, e / n);
        }
        let inside = p[0] >= -0.5 && p[0] <= w && p[1] >= -0.5 && p[1] <= h;
        if *v && !inside {
            *v = false;
            hidden += 1;
        }
    }
    Ok(hidden)
}

/// Decodes the clips of one video, prepares them and queues them for the tracker; returns how many.
fn prepare_video(
    cfg: &TracksConfig,
    index: usize,
    video: &Video,
    queue: &ByteQueue<Prepared>,
    pre: Option<&dyn Preprocess>,
    pool: &Mutex<Vec<Vec<f32>>>,
) -> Result<usize> {
    let cancelled = || queue.is_cancelled();
    decode_clips(cfg, video, &cancelled, &mut |clip_index, frame_indices, fps, frames| {
        let rgb: Vec<RgbImage> = frames.iter().map(|f| resize(f, cfg.width, cfg.height)).collect();
        drop(frames);
        let jpegs = rgb
            .iter()
            .map(|f| encode_jpeg(f, cfg.jpeg_quality))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let input = match pre {
            Some(pre) => {
                let mut buf =
                    pool.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
                buf.resize(pre.len(rgb.len()), 0.0);
                pre.prepare(&rgb, &mut buf);
                buf
            }
            None => Vec::new(),
        };
        let p = Prepared { video: index, clip_index, frame_indices, fps, rgb, jpegs, input };
        let bytes = p.bytes();
        queue.push(p, bytes)?;
        Ok(())
    })
}

/// Called with each decoded clip: clip index, source frame indices, fps, frames.
type ClipSink<'a> = dyn FnMut(u32, Vec<u32>, f32, Vec<RgbImage>) -> Result<()> + 'a;

/// Decodes the clips of one video at source size; returns how many. Stops with
/// [`Cancelled`] between frames once `cancelled` says so.
pub fn decode_clips(
    cfg: &TracksConfig,
    video: &Video,
    cancelled: &dyn Fn() -> bool,
    sink: &mut ClipSink,
) -> Result<usize> {
    let mut sent = 0;
    let check = || if cancelled() { Err(anyhow!(Cancelled)) } else { Ok(()) };
    match &video.source {
        Source::Unusable(why) => bail!("{why}"),
        Source::Frames(files) => {
            for (ci, clip) in folder_clips(files, cfg.folder_fps, &cfg.plan).into_iter().enumerate()
            {
                let mut frames = Vec::with_capacity(clip.len());
                for &i in &clip {
                    check()?;
                    frames.push(load_image(&files[i].1)?);
                }
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
                check()?;
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
    cfg.validate()?;
    let found = discover(&cfg.input, cfg.dataset.as_deref())?;
    let counts = found
        .videos
        .par_iter()
        .filter(|v| !matches!(v.source, Source::Unusable(_)))
        .map(|v| {
            decode_clips(cfg, v, &|| false, &mut |_, _, _, frames| {
                std::hint::black_box(frames);
                Ok(())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(counts.into_iter().map(|c| c as u64).sum())
}
