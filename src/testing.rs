//! Fixtures the tests of every crate share: a shard spec, synthetic clips, shard directories
//! written and read back, and the Python interop tools.

use crate::clip::{grid_points, Clip, ShardSpec, TrackerInfo};
use crate::manifest::Manifest;
use crate::shard::{ShardReader, ShardWriter, WriteOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A spec of `t` frames of `size` x `size` px on a `grid` x `grid` query grid.
pub fn spec(t: u32, grid: u32, size: u32) -> ShardSpec {
    ShardSpec {
        frames_per_clip: t,
        grid_size: grid,
        width: size,
        height: size,
        query_frame: 0,
        tracker: TrackerInfo {
            name: "test".into(),
            model_sha256: "ab".repeat(32),
            params: serde_json::json!({"k": 1}),
        },
    }
}

/// A clip whose points drift right by one pixel a frame, the last point hidden on odd frames.
pub fn clip(i: u32, spec: &ShardSpec) -> Clip {
    let (t, n) = (spec.t(), spec.num_points());
    let grid = grid_points(spec.grid_size, spec.width, spec.height);
    let frames = (0..t)
        .map(|k| {
            let img = image::RgbImage::from_fn(spec.width, spec.height, |x, y| {
                image::Rgb([(x * 7 + k as u32) as u8, (y * 5 + i) as u8, ((x ^ y) * 3) as u8])
            });
            crate::imageio::encode_jpeg(&img, 85).unwrap()
        })
        .collect();
    let mut tracks = Vec::with_capacity(t * n);
    let mut vis = Vec::with_capacity(t * n);
    for k in 0..t {
        for (p, q) in grid.iter().enumerate() {
            tracks.push([(q[0] + k as f32).min(spec.width as f32 - 1.0), q[1]]);
            vis.push(!(p == n - 1 && k % 2 == 1));
        }
    }
    Clip {
        dataset: "test".into(),
        video_id: format!("video_{:03}", i / 2),
        clip_index: i % 2,
        frame_indices: (0..t as u32).map(|k| k * 8 + (i % 2) * 96).collect(),
        source_fps: 30.0,
        frames,
        queries: grid,
        tracks,
        visibility: vis,
    }
}

/// Writes clips `clip(0..)` into `dir` as shards of `rows[j]` clips each, `per_group` clips per
/// row group, with a manifest.
pub fn write_shards(
    dir: &Path,
    spec: &ShardSpec,
    rows: &[u32],
    per_group: usize,
    clip: impl Fn(u32, &ShardSpec) -> Clip,
) -> Manifest {
    std::fs::create_dir_all(dir).unwrap();
    let mut m = Manifest::new(spec.clone(), serde_json::json!({"test": true}));
    let mut next = 0;
    for (j, &r) in rows.iter().enumerate() {
        let path = dir.join(format!("shard-{j:05}.parquet"));
        let opts = WriteOptions { rows_per_group: per_group, zstd_level: 1 };
        let mut w = ShardWriter::create(&path, spec, &opts).unwrap();
        for i in next..next + r {
            w.write(clip(i, spec)).unwrap();
        }
        next += r;
        m.shards.push(w.finish().unwrap());
    }
    m.save(dir).unwrap();
    m
}

/// Writes `clips` drifting clips ([`clip`]) into `dir` as `shards` shards of row groups of 4.
pub fn write_dir(dir: &Path, spec: &ShardSpec, clips: u32, shards: u32) -> Manifest {
    let per = clips.div_ceil(shards);
    let rows: Vec<u32> = (0..shards).map(|s| per.min(clips.saturating_sub(s * per))).collect();
    write_shards(dir, spec, &rows, 4, clip)
}

/// Every clip of a shard directory by (video, clip index); a duplicate fails the test.
pub fn read_clips(dir: &Path) -> BTreeMap<(String, u32), Clip> {
    let m = Manifest::load(dir).unwrap();
    let mut out = BTreeMap::new();
    for e in &m.shards {
        for c in ShardReader::open(&Manifest::shard_path(dir, e)).unwrap().read_all(true).unwrap() {
            assert!(out.insert((c.video_id.clone(), c.clip_index), c).is_none(), "duplicate clip");
        }
    }
    out
}

/// A process's stdout and stderr, for messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a Python tool when pyarrow is importable. CI sets MOSIC_REQUIRE_PYTHON=1, making a
/// missing interpreter or package a failure rather than a skip.
pub fn python_tool(script: &str, args: &[&str]) -> Option<Output> {
    let required = std::env::var("MOSIC_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let probe = Command::new("python3").args(["-c", "import pyarrow, pandas, numpy"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            !required,
            "MOSIC_REQUIRE_PYTHON=1 but python3 with pyarrow, pandas and numpy is not available"
        );
        eprintln!("skipping {script}: python3 with pyarrow/pandas/numpy not found");
        return None;
    }
    Some(
        Command::new("python3")
            .arg(repo_root().join("tools").join(script))
            .args(args)
            .output()
            .unwrap(),
    )
}
