//! One group of videos, one shard: decoding threads cut and prepare clips into a queue
//! bounded in bytes while the tracker takes them in batches.

use crate::config::TracksConfig;
use crate::config::{default_queue_bytes, RunOptions};
use crate::input::{discover, folder_clips, load_image, Source, Video};
use crate::queue::{ByteQueue, Cancelled, QueueStats};
use crate::tracker::{Preprocess, TrackRequest, TrackResult, Tracker};
use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use mosic::clip::Clip;
use mosic::imageio::{encode_jpeg, resize};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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

/// A clip decoded and prepared, waiting for the tracker.
pub(crate) struct Prepared {
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

pub(crate) struct GroupResult {
    pub(crate) clips: Vec<Clip>,
    pub(crate) outcome: GroupOutcome,
    pub(crate) stats: QueueStats,
    pub(crate) hidden_outside: u64,
    pub(crate) tracker_seconds: f64,
}

/// A group's own counts, added to the run's by the caller.
#[derive(Clone, Copy)]
pub(crate) struct GroupProgress {
    pub(crate) decoded: usize,
    pub(crate) clips_decoded: u64,
    pub(crate) tracked: u64,
}

pub(crate) fn process_group(
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

pub(crate) struct TrackCtx<'a, 'b> {
    tracker: &'a mut dyn Tracker,
    grid: &'a [[f32; 2]],
    dataset: &'a str,
    videos: &'a [(&'b str, Option<&'b Video>)],
    width: u32,
    height: u32,
}

pub(crate) fn track_all(
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
pub(crate) fn prepare_video(
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
