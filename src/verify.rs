//! `shards verify` and `shards stats`: checks and summaries over a shard directory.

use crate::clip::{Clip, ShardSpec};
use crate::error::{Error, Result};
use crate::fsutil::sha256_file;
use crate::imageio::decode_jpeg;
use crate::manifest::{Manifest, ShardEntry};
use crate::shard::{check_clip, ShardReader};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;

/// What verification found. Problems do not stop the check: one bad shard should not
/// hide another.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub shards: usize,
    pub clips: u64,
    pub problems: Vec<Error>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies every shard listed in `dir`'s manifest: presence, checksum, schema version,
/// spec, row count, list shapes, JPEG frames of the stored size, finite coordinates and
/// visible points inside the frame.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport> {
    let manifest = Manifest::load(dir)?;
    let results: Vec<(u64, Vec<Error>)> =
        manifest.shards.par_iter().map(|e| verify_shard(dir, e, &manifest.spec)).collect();
    let mut report = VerifyReport { shards: manifest.shards.len(), ..Default::default() };
    for (clips, problems) in results {
        report.clips += clips;
        report.problems.extend(problems);
    }
    // A shard on disk that the manifest does not list is usually a half-merged directory.
    let listed: BTreeSet<&str> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut extra: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".parquet") && !listed.contains(n.as_str()))
            .collect();
        extra.sort();
        for n in extra {
            report
                .problems
                .push(Error::invalid(dir.join(&n), "shard file is not listed in the manifest"));
        }
    }
    Ok(report)
}

fn verify_shard(dir: &Path, entry: &ShardEntry, spec: &ShardSpec) -> (u64, Vec<Error>) {
    let path = Manifest::shard_path(dir, entry);
    let mut problems = Vec::new();
    if !path.is_file() {
        problems.push(Error::invalid(&path, "listed in the manifest but missing"));
        return (0, problems);
    }
    match sha256_file(&path) {
        Ok(sum) if sum == entry.sha256 => {}
        Ok(sum) => {
            problems.push(Error::Checksum {
                path: path.clone(),
                expected: entry.sha256.clone(),
                actual: sum,
            });
            return (0, problems);
        }
        Err(e) => return (0, vec![e]),
    }
    let reader = match ShardReader::open(&path) {
        Ok(r) => r,
        Err(e) => return (0, vec![e]),
    };
    if reader.spec() != spec {
        problems
            .push(Error::invalid(&path, "spec in the file metadata differs from the manifest's"));
    }
    if reader.num_rows() != entry.rows {
        problems.push(Error::invalid(
            &path,
            format!("has {} rows, the manifest lists {}", reader.num_rows(), entry.rows),
        ));
    }
    let spec = reader.spec().clone();
    let mut clips = 0;
    let iter = match reader.clips(true) {
        Ok(it) => it,
        Err(e) => return (0, vec![e]),
    };
    for clip in iter {
        match clip {
            Ok(c) => {
                clips += 1;
                if let Err(m) = check_clip_content(&c, &spec) {
                    problems.push(Error::invalid(&path, format!("clip {}: {m}", c.id())));
                }
            }
            Err(e) => {
                problems.push(e);
                break;
            }
        }
    }
    (clips, problems)
}

/// Shape, range and frame checks of one clip.
pub fn check_clip_content(c: &Clip, spec: &ShardSpec) -> Result<(), String> {
    check_clip(c, spec)?;
    // Trackers may place a visible point a little past the border; a pixel of slack.
    let (w, h) = (spec.width as f32, spec.height as f32);
    let inside = |p: &[f32; 2]| p[0] >= -1.5 && p[0] <= w + 0.5 && p[1] >= -1.5 && p[1] <= h + 0.5;
    if let Some((i, p)) = c.tracks.iter().enumerate().find(|(i, p)| c.visibility[*i] && !inside(p))
    {
        let n = spec.num_points();
        return Err(format!(
            "visible point {} at frame {} lies outside the {w}x{h} frame: {p:?}",
            i % n,
            i / n
        ));
    }
    if let Some(p) = c.queries.iter().find(|p| !inside(p)) {
        return Err(format!("query point {p:?} lies outside the frame"));
    }
    for (k, jpeg) in c.frames.iter().enumerate() {
        let img = decode_jpeg(jpeg).map_err(|m| format!("frame {k}: {m}"))?;
        if (img.width(), img.height()) != (spec.width, spec.height) {
            return Err(format!(
                "frame {k} is {}x{}, the spec says {}x{}",
                img.width(),
                img.height(),
                spec.width,
                spec.height
            ));
        }
    }
    Ok(())
}

/// Quantiles from a fixed histogram, so stats over millions of tracks need constant memory.
#[derive(Clone, Debug)]
pub struct Histogram {
    bin: f64,
    counts: Vec<u64>,
    n: u64,
    sum: f64,
    max: f64,
}

impl Histogram {
    pub fn new(bin: f64, bins: usize) -> Self {
        Self { bin, counts: vec![0; bins + 1], n: 0, sum: 0.0, max: 0.0 }
    }
    pub fn add(&mut self, v: f64) {
        let i = ((v / self.bin) as usize).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.n += 1;
        self.sum += v;
        self.max = self.max.max(v);
    }
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }
    /// Upper edge of the bin holding quantile `q` (capped at the maximum seen).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let target = (q * self.n as f64).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= target {
                return ((i + 1) as f64 * self.bin).min(self.max);
            }
        }
        self.max
    }
    pub fn summary(&self) -> Summary {
        Summary {
            count: self.n,
            mean: if self.n > 0 { self.sum / self.n as f64 } else { 0.0 },
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub shards: usize,
    pub clips: u64,
    pub videos: usize,
    pub datasets: Vec<String>,
    pub frames_per_clip: u32,
    pub points_per_clip: usize,
    pub width: u32,
    pub height: u32,
    pub tracker: String,
    pub visible_fraction: f64,
    /// Points visible at every frame of their clip.
    pub always_visible_fraction: f64,
    /// Displacement in pixels between consecutive frames where the point is visible in both.
    pub step_displacement_px: Summary,
    /// Displacement from the query frame to the last frame, for points visible in both.
    pub clip_displacement_px: Summary,
}

struct Acc {
    clips: u64,
    videos: BTreeSet<(String, String)>,
    visible: u64,
    entries: u64,
    always: u64,
    points: u64,
    step: Histogram,
    total: Histogram,
}

impl Acc {
    fn new() -> Self {
        Self {
            clips: 0,
            videos: BTreeSet::new(),
            visible: 0,
            entries: 0,
            always: 0,
            points: 0,
            step: Histogram::new(0.05, 4096),
            total: Histogram::new(0.1, 4096),
        }
    }
    fn add(&mut self, c: &Clip, spec: &ShardSpec) {
        let (t, n) = (spec.t(), spec.num_points());
        let q = (spec.query_frame as usize).min(t.saturating_sub(1));
        self.clips += 1;
        self.videos.insert((c.dataset.clone(), c.video_id.clone()));
        self.visible += c.visibility.iter().filter(|&&v| v).count() as u64;
        self.entries += (t * n) as u64;
        let dist = |a: [f32; 2], b: [f32; 2]| {
            (((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)) as f64).sqrt()
        };
        for i in 0..n {
            self.points += 1;
            let vis = |k: usize| c.visibility[k * n + i];
            if (0..t).all(vis) {
                self.always += 1;
            }
            for k in 1..t {
                if vis(k) && vis(k - 1) {
                    self.step.add(dist(c.tracks[k * n + i], c.tracks[(k - 1) * n + i]));
                }
            }
            if t > 1 && vis(q) && vis(t - 1) {
                self.total.add(dist(c.tracks[(t - 1) * n + i], c.tracks[q * n + i]));
            }
        }
    }
    fn merge(mut self, o: Acc) -> Acc {
        self.clips += o.clips;
        self.videos.extend(o.videos);
        self.visible += o.visible;
        self.entries += o.entries;
        self.always += o.always;
        self.points += o.points;
        self.step.merge(&o.step);
        self.total.merge(&o.total);
        self
    }
}

/// Summarises a shard directory (tracks only; frames are not read).
pub fn stats_dir(dir: &Path) -> Result<Stats> {
    let m = Manifest::load(dir)?;
    let accs: Vec<Result<Acc>> = m
        .shards
        .par_iter()
        .map(|e| {
            let mut acc = Acc::new();
            let reader = ShardReader::open(&Manifest::shard_path(dir, e))?;
            let spec = reader.spec().clone();
            for c in reader.clips(false)? {
                acc.add(&c?, &spec);
            }
            Ok(acc)
        })
        .collect();
    let mut acc = Acc::new();
    for a in accs {
        acc = acc.merge(a?);
    }
    let frac = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    let datasets: BTreeSet<String> = acc.videos.iter().map(|(d, _)| d.clone()).collect();
    Ok(Stats {
        shards: m.shards.len(),
        clips: acc.clips,
        videos: acc.videos.len(),
        datasets: datasets.into_iter().collect(),
        frames_per_clip: m.spec.frames_per_clip,
        points_per_clip: m.spec.num_points(),
        width: m.spec.width,
        height: m.spec.height,
        tracker: m.spec.tracker.name.clone(),
        visible_fraction: frac(acc.visible, acc.entries),
        always_visible_fraction: frac(acc.always, acc.points),
        step_displacement_px: acc.step.summary(),
        clip_displacement_px: acc.total.summary(),
    })
}

/// Finds one clip by its id `video_id#clip_index` (or `dataset/video_id#clip_index`).
pub fn find_clip(dir: &Path, id: &str) -> Result<(Clip, ShardSpec)> {
    let m = Manifest::load(dir)?;
    let (video, index) = match id.rsplit_once('#') {
        Some((v, i)) => (v, i.parse::<u32>().ok()),
        None => (id, Some(0)),
    };
    let index = index.ok_or_else(|| {
        Error::invalid(Manifest::path(dir), format!("clip id '{id}' is not VIDEO#INDEX"))
    })?;
    for e in &m.shards {
        let reader = ShardReader::open(&Manifest::shard_path(dir, e))?;
        let spec = reader.spec().clone();
        for c in reader.clips(true)? {
            let c = c?;
            let matches = c.video_id == video || format!("{}/{}", c.dataset, c.video_id) == video;
            if matches && c.clip_index == index {
                return Ok((c, spec));
            }
        }
    }
    Err(Error::invalid(Manifest::path(dir), format!("no clip '{id}' in this directory")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new(0.5, 100);
        for v in 0..100 {
            h.add(v as f64 / 10.0);
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((s.mean - 4.95).abs() < 1e-9);
        assert!((s.p50 - 5.0).abs() <= 0.5);
        assert!((s.p90 - 9.0).abs() <= 0.5);
        assert!((s.max - 9.9).abs() < 1e-9);
    }
}
