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

use crate::config::{RunOptions, TracksConfig};
use crate::group::{process_group, GroupOutcome, GroupProgress};
use crate::input::{discover, Source, Video};
use crate::lock::DirLock;
use crate::queue::QueueStats;
use crate::tracker::Tracker;
use anyhow::{bail, Context, Result};
use mosic::clip::{grid_points, Clip, ShardSpec};
use mosic::fsutil::write_atomic;
use mosic::manifest::Manifest;
use mosic::shard::{ShardWriter, WriteOptions};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    let mut o = Output::open(cfg, out, tracker)?;
    let found = discover(&cfg.input, cfg.dataset.as_deref())?;
    let listed: Vec<String> = found.videos.iter().map(|v| v.id.clone()).collect();
    o.check_input(listed, opts)?;
    let by_id: BTreeMap<&str, &Video> = found.videos.iter().map(|v| (v.id.as_str(), v)).collect();
    let input_videos = o.done.input_videos.clone();
    let mine: Vec<(&str, Option<&Video>)> = input_videos
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u32 % cfg.num_workers == cfg.worker_index)
        .map(|(_, id)| (id.as_str(), by_id.get(id.as_str()).copied()))
        .collect();
    let groups: Vec<&[(&str, Option<&Video>)]> = mine.chunks(cfg.videos_per_shard).collect();
    let todo: Vec<usize> = (0..groups.len())
        .filter(|k| match o.done.groups.get(k) {
            None => true,
            Some(g) => opts.retry_failed && !g.failed.is_empty(),
        })
        .collect();
    let again = todo.iter().filter(|k| o.done.groups.contains_key(k)).count();
    o.report.resumed_groups = o.done.groups.len() - again;
    o.report.retried_groups = again;
    if !opts.keep_going {
        refuse_unusable(todo.iter().flat_map(|&k| groups[k].iter()))?;
    }

    let total = mine.len();
    let mut videos_done = total - todo.iter().map(|&k| groups[k].len()).sum::<usize>();
    let mut clips_done: u64 =
        o.done.groups.iter().filter(|(k, _)| !todo.contains(k)).map(|(_, g)| g.clips).sum();
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
        o.report.hidden_outside += group.hidden_outside;
        o.report.tracker_seconds += group.tracker_seconds;
        let outcome = commit_group(
            &o.dir,
            k,
            &o.spec,
            group.clips,
            group.outcome,
            &mut o.done,
            &o.progress_path,
            &mut o.manifest,
        )?;
        videos_done += outcome.videos;
        clips_done += outcome.clips;
        progress(&at(videos_done, clips_done, clips_done));
    }
    if !Manifest::exists(&o.dir) {
        o.manifest.save(&o.dir)?; // an empty run still leaves a valid directory
    }
    let Output { lock, mut report, manifest, done, .. } = o;
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

/// The worker's output directory, locked, with what earlier runs left in it: the manifest
/// (same settings and tracker, or refused), the groups done, leftovers removed.
struct Output {
    dir: PathBuf,
    lock: DirLock,
    report: Report,
    spec: ShardSpec,
    manifest: Manifest,
    done: ProgressFile,
    progress_path: PathBuf,
}

impl Output {
    fn open(cfg: &TracksConfig, out: &Path, tracker: &dyn Tracker) -> Result<Self> {
        let dir = cfg.worker_dir(out);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
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
        let manifest = if Manifest::exists(&dir) {
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
        Ok(Self { dir, lock, report, spec, manifest, done, progress_path })
    }

    /// The input's video list against the one the run began with (recorded on the first run).
    fn check_input(&mut self, listed: Vec<String>, opts: &RunOptions) -> Result<()> {
        if self.done.input_videos.is_empty() {
            self.done.input_videos = listed;
            let text = serde_json::to_string_pretty(&self.done)?;
            write_atomic(&self.progress_path, text.as_bytes())?;
            return Ok(());
        }
        if self.done.input_videos != listed {
            let diff = list_difference(&self.done.input_videos, &listed);
            if !opts.allow_changed_input {
                bail!(
                    "the input's video list changed since this run began in {} ({diff}); use a new output directory, \
                     or pass --allow-changed-input to go on with the original list",
                    self.dir.display()
                );
            }
            self.report
                .notes
                .push(format!("the input changed ({diff}); going on with the original list"));
        }
        Ok(())
    }
}

/// Entries that cannot be tracked end the run before any work unless they may be skipped.
fn refuse_unusable<'a>(
    entries: impl Iterator<Item = &'a (&'a str, Option<&'a Video>)>,
) -> Result<()> {
    let unusable: Vec<String> = entries
        .filter_map(|(id, v)| match v {
            None => Some(format!("{id}: no longer in the input")),
            Some(Video { source: Source::Unusable(why), .. }) => Some(why.clone()),
            Some(_) => None,
        })
        .collect();
    if unusable.is_empty() {
        return Ok(());
    }
    let (one, them) = (unusable.len() == 1, if unusable.len() == 1 { "it" } else { "them" });
    bail!(
        "{} input entr{} cannot be tracked: {}; fix {them} or pass --keep-going to skip {them}",
        unusable.len(),
        if one { "y" } else { "ies" },
        unusable.join("; "),
    )
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
