//! The stage-1 run as a library: trackers that fail or misbehave, queues smaller than a
//! group, and resuming to the result of an uninterrupted run.

use mosic::clip::TrackerInfo;
use mosic::manifest::Manifest;
use mosic::testing::read_clips;
use mosic_pipeline::tracker::native::{NativeParams, NativeTracker};
use mosic_pipeline::tracker::{TrackRequest, TrackResult, Tracker};
use mosic_pipeline::{sanitize, RunOptions, TracksConfig};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `n` frame folders of `frames` moving-pattern PNGs of `size` px under `root`.
fn videos(root: &Path, n: usize, frames: u32, size: u32) {
    for v in 0..n {
        let dir = root.join(format!("v{v:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..frames {
            let img = image::RgbImage::from_fn(size, size, |x, y| {
                let c =
                    (((x + 2 * k + v as u32) / 3 + y / 3) % 2 * 180 + (x * 5 + y * 3) % 60) as u8;
                image::Rgb([c, c / 2 + 20, 255 - c])
            });
            img.save(dir.join(format!("{k:05}.png"))).unwrap();
        }
    }
}

fn config(input: &Path) -> TracksConfig {
    let mut c = TracksConfig {
        input: input.to_path_buf(),
        grid_size: 4,
        width: 32,
        height: 32,
        videos_per_shard: 8,
        ..Default::default()
    };
    (c.plan.frames, c.plan.span_seconds) = (4, 0.4); // 10 frames a clip at 30 fps
    c
}

/// Runs `f` on its own thread and fails the test instead of hanging if it takes too long.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("no result within {secs} s: the run hangs"))
}

/// The native tracker, failing (or panicking) once it has been asked for `fail_at` clips.
struct Failing {
    inner: NativeTracker,
    seen: usize,
    fail_at: usize,
    panic: bool,
}

impl Tracker for Failing {
    fn info(&self) -> TrackerInfo {
        self.inner.info()
    }
    fn batch_size(&self) -> usize {
        3
    }
    fn track(&mut self, clips: &[TrackRequest<'_>]) -> anyhow::Result<Vec<TrackResult>> {
        if self.seen + clips.len() > self.fail_at {
            if self.panic {
                panic!("tracker panicked at clip {}", self.fail_at);
            }
            anyhow::bail!("injected failure at clip {}", self.fail_at);
        }
        self.seen += clips.len();
        self.inner.track(clips)
    }
}

fn native() -> NativeTracker {
    NativeTracker::new(NativeParams::default())
}

#[test]
fn a_failing_tracker_ends_the_run_promptly_and_a_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    videos(&input, 40, 10, 32);
    let cfg = config(&input);
    // A queue of about two clips, far fewer than a group holds.
    let opts = RunOptions { queue_bytes: Some(40_000), decoders: 3, ..Default::default() };
    let straight = tmp.path().join("straight");
    let (c, o, s) = (cfg.clone(), opts.clone(), straight.clone());
    let report =
        within(120, move || mosic_pipeline::run(&c, &o, &s, &mut native(), &|_| {}).unwrap());
    assert_eq!(report.clips, 40);
    assert!(report.queue_full_waits > 0 && report.queue_peak_clips <= 2, "{report:?}");

    let out = tmp.path().join("out");
    let (c, o, d) = (cfg.clone(), opts.clone(), out.clone());
    let start = Instant::now();
    let err = within(60, move || {
        let mut t = Failing { inner: native(), seen: 0, fail_at: 21, panic: false };
        mosic_pipeline::run(&c, &o, &d, &mut t, &|_| {}).unwrap_err()
    });
    let msg = format!("{err:#}");
    assert!(msg.contains("injected failure at clip 21") && msg.contains("tracking in/v"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    // Groups of 8 videos: the first two groups (16 clips) were finished and kept.
    let kept = Manifest::load(&out).unwrap();
    assert_eq!(kept.shards.len(), 2, "{kept:?}");
    assert!(!out.join(mosic_pipeline::lock::LOCK_NAME).exists(), "the lock must go with the run");

    let (c, o, d) = (cfg.clone(), opts.clone(), out.clone());
    let report =
        within(120, move || mosic_pipeline::run(&c, &o, &d, &mut native(), &|_| {}).unwrap());
    assert_eq!(report.resumed_groups, 2);
    assert_eq!(read_clips(&out), read_clips(&straight));
    assert!(mosic::verify::verify_dir(&out).unwrap().ok());
}

#[test]
fn a_panicking_tracker_does_not_leave_decoders_blocked() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    videos(&input, 12, 10, 32);
    let cfg = config(&input);
    let opts = RunOptions { queue_bytes: Some(1), decoders: 2, ..Default::default() };
    let out = tmp.path().join("out");
    let panicked = within(60, move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut t = Failing { inner: native(), seen: 0, fail_at: 4, panic: true };
            let _ = mosic_pipeline::run(&cfg, &opts, &out, &mut t, &|_| {});
        }))
        .is_err()
    });
    assert!(panicked);
}

/// A tracker that puts every point 3 px right of its query, visible, on every frame after the first.
struct Drifting;

impl Tracker for Drifting {
    fn info(&self) -> TrackerInfo {
        TrackerInfo {
            name: "drifting".into(),
            model_sha256: String::new(),
            params: serde_json::json!({}),
        }
    }
    fn track(&mut self, clips: &[TrackRequest<'_>]) -> anyhow::Result<Vec<TrackResult>> {
        Ok(clips
            .iter()
            .map(|c| {
                let mut r = TrackResult { tracks: Vec::new(), visibility: Vec::new() };
                for t in 0..c.frames.len() {
                    for q in c.queries {
                        r.tracks.push([q[0] + 3.0 * t.min(1) as f32 * 10.0, q[1] - 5.0 * t as f32]);
                        r.visibility.push(true);
                    }
                }
                r
            })
            .collect())
    }
}

#[test]
fn points_outside_the_frame_are_stored_invisible_not_clamped() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    videos(&input, 3, 10, 32);
    let out = tmp.path().join("out");
    let report =
        mosic_pipeline::run(&config(&input), &RunOptions::default(), &out, &mut Drifting, &|_| {})
            .unwrap();
    assert!(report.hidden_outside > 0);
    assert!(mosic::verify::verify_dir(&out).unwrap().ok());
    for c in read_clips(&out).values() {
        for (e, (p, &v)) in c.tracks.iter().zip(&c.visibility).enumerate() {
            let q = c.queries[e % 16];
            let t = e / 16;
            // Positions are the tracker's, unclamped; visible exactly where inside the frame.
            assert_eq!(*p, [q[0] + 30.0 * t.min(1) as f32, q[1] - 5.0 * t as f32]);
            let inside = (-0.5..=31.5).contains(&p[0]) && (-0.5..=31.5).contains(&p[1]);
            assert_eq!(v, inside, "entry {e} at {p:?}");
        }
    }
}

#[test]
fn sanitize_refuses_what_cannot_be_stored() {
    let mut r =
        TrackResult { tracks: vec![[1.0, 1.0], [f32::NAN, 2.0]], visibility: vec![true, false] };
    let e = sanitize(&mut r, 1, 2, 8, 8).unwrap_err().to_string();
    assert!(e.contains("point 1 at frame 0"), "{e}");
    let mut r = TrackResult { tracks: vec![[1.0, 1.0]], visibility: vec![true] };
    assert!(sanitize(&mut r, 1, 2, 8, 8)
        .unwrap_err()
        .to_string()
        .contains("expected 1 frames x 2 points"));
    // The border is inside: [-0.5, W - 0.5].
    let mut r = TrackResult { tracks: vec![[-0.5, 7.5], [7.6, 0.0]], visibility: vec![true, true] };
    assert_eq!(sanitize(&mut r, 1, 2, 8, 8).unwrap(), 1);
    assert_eq!(r.visibility, vec![true, false]);
}
