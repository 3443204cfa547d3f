//! Stage 1 end to end: `mosic synth`, `mosic tracks` (native and ONNX), resume after SIGKILL,
//! scale-out and merge, accuracy against ground truth, and bad input.

mod common;

use common::*;
use mosic::manifest::Manifest;
use mosic::{Clip, ShardReader};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn synth(out: &Path, videos: u32, frames: u32, size: (u32, u32)) {
    let o = run(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--videos",
        &videos.to_string(),
        "--frames",
        &frames.to_string(),
        "--width",
        &size.0.to_string(),
        "--height",
        &size.1.to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

fn read_clips(dir: &Path) -> BTreeMap<(String, u32), Clip> {
    let m = Manifest::load(dir).unwrap();
    let mut out = BTreeMap::new();
    for e in &m.shards {
        for c in ShardReader::open(&Manifest::shard_path(dir, e)).unwrap().read_all(true).unwrap() {
            assert!(out.insert((c.video_id.clone(), c.clip_index), c).is_none(), "duplicate clip");
        }
    }
    out
}

/// Short clips so tests stay fast: 4 frames, step 3 at 30 fps.
const SHORT: [&str; 6] = ["--frames", "4", "--span", "0.4", "--size", "64"];

fn tracks(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["tracks", "--input", input.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn synth_layout_is_complete_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    synth(&a, 2, 100, (160, 96));
    synth(&b, 2, 100, (160, 96));
    for v in ["synth_0000", "synth_0001"] {
        assert_eq!(std::fs::read_dir(a.join("JPEGImages").join(v)).unwrap().count(), 100);
        assert_eq!(std::fs::read_dir(a.join("Annotations").join(v)).unwrap().count(), 100);
        let f = format!("{v}/00042.jpg");
        assert_eq!(std::fs::read(a.join("JPEGImages").join(&f)).unwrap(), std::fs::read(b.join("JPEGImages").join(&f)).unwrap());
        let info = mosic_video::probe(&a.join("videos").join(format!("{v}.mp4"))).unwrap();
        assert_eq!((info.width, info.height, info.fps), (160, 96, 30.0));
    }
    // Masks are palette PNGs whose indices are object ids.
    let mask = image::open(a.join("Annotations/synth_0000/00000.png")).unwrap();
    assert!(matches!(mask.color(), image::ColorType::L8 | image::ColorType::Rgb8 | image::ColorType::Rgba8));
    let o = run(&["shards", "verify", a.join("gt").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read_clips(&a.join("gt")), read_clips(&b.join("gt")));
    if let Some(o) = python_tool("check_shards.py", &[a.join("gt").to_str().unwrap()]) {
        assert!(o.status.success(), "{}", text(&o));
    }
    // Rendering a clip of the ground truth works for both formats.
    for ext in ["gif", "mp4"] {
        let out = tmp.path().join(format!("clip.{ext}"));
        let o = run(&["shards", "render", a.join("gt").to_str().unwrap(), "--clip", "synth_0001#0", "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(std::fs::metadata(&out).unwrap().len() > 1000);
    }
}

#[test]
fn native_tracks_beat_zero_motion_on_every_metric() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 3, 100, (320, 180));
    let out = tmp.path().join("tracks");
    let o = tracks(&data.join("JPEGImages"), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 videos, 3 clips"), "{}", text(&o));
    let o = run(&["shards", "verify", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // Same clips as the ground truth, same frames.
    let (pred, gt) = (read_clips(&out), read_clips(&data.join("gt")));
    assert_eq!(pred.keys().collect::<Vec<_>>(), gt.keys().collect::<Vec<_>>());
    for (k, c) in &pred {
        assert_eq!(c.frame_indices, gt[k].frame_indices);
        assert_eq!(c.queries, gt[k].queries);
        assert_eq!(c.dataset, "synth");
    }
    let o = run(&["tracks", "eval", "--pred", out.to_str().unwrap(), "--gt", data.join("gt").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (t, z) = (&v["tracker"], &v["zero_motion"]);
    for key in ["average_position_accuracy", "occlusion_accuracy", "average_jaccard"] {
        let (a, b) = (t[key].as_f64().unwrap(), z[key].as_f64().unwrap());
        assert!(a > b + 0.05, "{key}: native {a} vs zero motion {b}");
    }
    for j in 0..5 {
        assert!(t["position_accuracy"][j].as_f64().unwrap() > z["position_accuracy"][j].as_f64().unwrap());
    }
}

#[test]
fn video_files_and_frame_folders_give_the_same_clips() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 2, 40, (160, 96));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let oa = tracks(&data.join("JPEGImages"), &a, &SHORT);
    let ob = tracks(&data.join("videos"), &b, &SHORT);
    assert!(oa.status.success() && ob.status.success(), "{}\n{}", text(&oa), text(&ob));
    let (ca, cb) = (read_clips(&a), read_clips(&b));
    assert_eq!(ca.len(), 6); // 40 frames, clips need 10, windows of 12: 3 per video
    assert_eq!(ca.keys().collect::<Vec<_>>(), cb.keys().collect::<Vec<_>>());
    for (k, c) in &ca {
        assert_eq!(c.frame_indices, cb[k].frame_indices, "{k:?}");
        assert_eq!(c.frame_indices, vec![k.1 * 12, k.1 * 12 + 3, k.1 * 12 + 6, k.1 * 12 + 9]);
    }
}

#[test]
fn killed_run_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 6, 40, (160, 96));
    let input = data.join("JPEGImages");
    let straight = tmp.path().join("straight");
    let mut args: Vec<&str> = SHORT.to_vec();
    args.extend(["--videos-per-shard", "1"]);
    let o = tracks(&input, &straight, &args);
    assert!(o.status.success(), "{}", text(&o));

    // Kill the second run with SIGKILL once its first shard is recorded.
    let resumed = tmp.path().join("resumed");
    let mut child = mosic()
        .args(["tracks", "--input", input.to_str().unwrap(), "--out", resumed.to_str().unwrap()])
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if Manifest::load(&resumed).is_ok_and(|m| !m.shards.is_empty()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no shard appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = Manifest::load(&resumed).unwrap().shards.len();
    assert!(before < 6, "the run finished before the kill");
    let first = Manifest::load(&resumed).unwrap().shards[0].clone();

    let o = tracks(&input, &resumed, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("from an earlier run"), "{}", text(&o));
    let after = Manifest::load(&resumed).unwrap();
    // The finished shard was not redone.
    assert_eq!(after.shards.iter().find(|s| s.file == first.file).unwrap(), &first);
    assert_eq!(read_clips(&resumed), read_clips(&straight));
    let o = run(&["shards", "verify", resumed.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn workers_partition_and_merge_to_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 5, 40, (160, 96));
    let input = data.join("JPEGImages");
    let single = tmp.path().join("single");
    assert!(tracks(&input, &single, &SHORT).status.success());
    let out = tmp.path().join("scaled");
    for i in 0..2 {
        let mut args: Vec<&str> = SHORT.to_vec();
        let idx = i.to_string();
        args.extend(["--num-workers", "2", "--worker-index", &idx]);
        let o = tracks(&input, &out, &args);
        assert!(o.status.success(), "{}", text(&o));
    }
    let w0 = out.join("worker-000-of-002");
    let w1 = out.join("worker-001-of-002");
    assert_eq!(read_clips(&w0).len(), 9); // videos 0, 2, 4
    assert_eq!(read_clips(&w1).len(), 6); // videos 1, 3
    let o = run(&["shards", "merge", "--out", out.to_str().unwrap(), w0.to_str().unwrap(), w1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read_clips(&out), read_clips(&single));
    let o = run(&["shards", "verify", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

/// Writes `n` frames of a moving pattern into `dir` with the given encoder.
fn frames(dir: &Path, n: u32, w: u32, h: u32, save: impl Fn(&Path, &image::RgbImage)) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..n {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = (((x + 2 * k) / 4 + y / 4) % 2 * 200 + (x * 3 + y * 7) % 50) as u8;
            image::Rgb([v, v / 2, 255 - v])
        });
        save(&dir.join(format!("{k:05}.png")), &img);
    }
}

#[test]
fn bad_frame_folders_fail_alone_and_odd_formats_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("JPEGImages");
    let png = |p: &Path, i: &image::RgbImage| i.save(p).unwrap();
    frames(&root.join("good"), 12, 64, 48, png);
    frames(&root.join("odd_size"), 12, 63, 47, png);
    frames(&root.join("gray"), 12, 64, 48, |p, i| image::DynamicImage::ImageRgb8(i.clone()).to_luma8().save(p).unwrap());
    frames(&root.join("rgba"), 12, 64, 48, |p, i| image::DynamicImage::ImageRgb8(i.clone()).to_rgba8().save(p).unwrap());
    frames(&root.join("png16"), 12, 64, 48, |p, i| image::DynamicImage::ImageRgb8(i.clone()).to_rgb16().save(p).unwrap());
    frames(&root.join("short"), 5, 64, 48, png);
    frames(&root.join("bad_jpeg"), 12, 64, 48, png);
    std::fs::write(root.join("bad_jpeg/00006.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    std::fs::remove_file(root.join("bad_jpeg/00006.png")).unwrap();
    std::fs::create_dir_all(root.join("no_images")).unwrap();
    std::fs::write(root.join("no_images/readme.txt"), "nothing here").unwrap();
    frames(&root.join("names"), 12, 64, 48, png);
    std::fs::rename(root.join("names/00003.png"), root.join("names/frame_three.png")).unwrap();

    let out = tmp.path().join("out");
    let o = tracks(&root, &out, &SHORT);
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(msg.contains("cannot decode frame") && msg.contains("bad_jpeg/00006.jpg"), "{msg}");
    assert!(msg.contains("no_images: folder holds no frame images"), "{msg}");
    assert!(msg.contains("names: file name 'frame_three' is not a frame number"), "{msg}");
    assert!(msg.contains("too short for one clip: 1 (short)"), "{msg}");
    assert!(msg.contains("3 video(s) failed"), "{msg}");
    let clips = read_clips(&out);
    let videos: std::collections::BTreeSet<&str> = clips.keys().map(|k| k.0.as_str()).collect();
    assert_eq!(videos, ["good", "gray", "odd_size", "png16", "rgba"].into_iter().collect());
    // Converted formats track like the original: same frames up to rounding.
    let d = |a: &Clip, b: &Clip| a.tracks.iter().zip(&b.tracks).map(|(p, q)| (p[0] - q[0]).abs()).fold(0f32, f32::max);
    assert!(d(&clips[&("rgba".into(), 0)], &clips[&("good".into(), 0)]) < 1e-3);
    assert!(d(&clips[&("png16".into(), 0)], &clips[&("good".into(), 0)]) < 1e-3);

    // --keep-going: same work, exit status 0.
    let o = tracks(&root, &tmp.path().join("out2"), &[&SHORT[..], &["--keep-going"]].concat());
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn bad_video_files_fail_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 1, 40, (160, 96));
    let dir = tmp.path().join("videos");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(data.join("videos/synth_0000.mp4"), dir.join("good.mp4")).unwrap();
    let bytes = std::fs::read(data.join("videos/synth_0000.mp4")).unwrap();
    std::fs::write(dir.join("truncated.mp4"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(dir.join("empty.mkv"), b"").unwrap();
    let w = mosic_video::Mp4Writer::create(&dir.join("zero_frames.mp4"), 64, 48, 30).unwrap();
    let _ = w.finish(); // a container without frames, if the muxer allows it
    let out = tmp.path().join("out");
    let o = tracks(&dir, &out, &SHORT);
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
    for v in ["truncated", "empty"] {
        assert!(msg.contains(&format!("failed: {v}: ")), "{msg}");
    }
    if dir.join("zero_frames.mp4").exists() {
        assert!(msg.contains("failed: zero_frames: "), "{msg}");
    }
    let clips = read_clips(&out);
    assert_eq!(clips.len(), 3);
    assert!(clips.keys().all(|k| k.0 == "good"));
}

#[test]
fn onnx_tracker_follows_the_cotracker_contract() {
    // The tiny model moves every point 2 model pixels right per frame; visibility 0.95 on
    // even frames and 0.2 on odd ones, 0.5 for odd points (tools/make_tiny_tracker_onnx.py).
    let Some(_) = python_tool("check_shards.py", &["--help"]).map(|_| ()) else { return };
    let probe = std::process::Command::new("python3").args(["-c", "import onnxruntime"]).output().unwrap();
    if !probe.status.success() {
        assert!(std::env::var("MOSIC_REQUIRE_PYTHON").is_err(), "onnxruntime is required in CI");
        eprintln!("skipping: python3 -c 'import onnxruntime' failed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 1, 40, (160, 96));
    let model = repo_root().join("tests/fixtures/tiny_tracker.onnx");
    let out = tmp.path().join("out");
    let mut args: Vec<&str> = SHORT.to_vec();
    args.extend(["--model", model.to_str().unwrap(), "--grid", "4"]);
    let o = tracks(&data.join("JPEGImages"), &out, &args);
    assert!(o.status.success(), "{}", text(&o));
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.spec.tracker.name, "cotracker3");
    assert_eq!(m.spec.tracker.model_sha256, mosic::fsutil::sha256_file(&model).unwrap());
    let clips = read_clips(&out);
    assert_eq!(clips.len(), 3);
    let n = 16;
    let step_px = 2.0 * 63.0 / 511.0; // 2 model pixels at 512 wide, in 64-px stored frames
    for c in clips.values() {
        for t in 0..4 {
            for i in 0..n {
                let (p, q) = (c.tracks[t * n + i], c.queries[i]);
                assert!((p[0] - (q[0] + t as f32 * step_px)).abs() < 1e-4, "t {t} i {i}: {p:?} vs {q:?}");
                assert!((p[1] - q[1]).abs() < 1e-4);
                let want = t == 0 || (t % 2 == 0 && i % 2 == 0);
                assert_eq!(c.visibility[t * n + i], want, "t {t} i {i}");
            }
        }
    }
    // Asking for CUDA where the runtime has none is a clear error.
    let mut args: Vec<&str> = SHORT.to_vec();
    args.extend(["--model", model.to_str().unwrap(), "--device", "cuda"]);
    let o = tracks(&data.join("JPEGImages"), &tmp.path().join("cuda"), &args);
    if !o.status.success() {
        assert!(text(&o).contains("CUDA"), "{}", text(&o));
    }
}
