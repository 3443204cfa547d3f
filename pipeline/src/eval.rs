//! TAP-Vid metrics of predicted tracks against ground truth (`mosic tracks eval`).
//!
//! As the TAP-Vid benchmark computes them (google-deepmind/tapnet, `compute_tapvid_metrics`,
//! query mode "first"): each clip is one video; coordinates are scaled to a 256x256 frame;
//! the frames after the query frame are evaluated; position accuracy counts ground-truth-
//! visible points within 1, 2, 4, 8 and 16 px, average Jaccard scores position and
//! visibility together; every metric is computed per clip and then averaged over clips
//! (a clip where a metric is undefined, e.g. no visible point, is left out of that mean).
//! `tests/fixtures/tapvid` pins this to the reference code (`tools/goldens/make_tapvid_golden.py`).
//! Visibility recall and precision (not TAP-Vid metrics) are pooled over all entries.

use anyhow::{bail, Context, Result};
use mosic::clip::{Clip, ShardSpec};
use mosic::manifest::Manifest;
use mosic::ShardReader;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

pub const THRESHOLDS: [f32; 5] = [1.0, 2.0, 4.0, 8.0, 16.0];

/// Counts of one clip.
#[derive(Clone, Debug, Default)]
struct Counts {
    /// Per threshold: visible GT points within the threshold (any prediction).
    within: [u64; 5],
    /// Per threshold: predicted visible, GT visible and within the threshold.
    tp: [u64; 5],
    /// Per threshold: predicted visible, and GT occluded or beyond the threshold.
    fp: [u64; 5],
    gt_visible: u64,
    pred_visible: u64,
    both_visible: u64,
    occlusion_correct: u64,
    entries: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Metrics {
    pub clips: u64,
    /// Position accuracy per threshold (1, 2, 4, 8, 16 px at 256x256), and its mean.
    pub position_accuracy: [f64; 5],
    pub average_position_accuracy: f64,
    pub occlusion_accuracy: f64,
    pub jaccard: [f64; 5],
    pub average_jaccard: f64,
    /// Of the entries visible in the ground truth, the fraction predicted visible.
    pub visible_recall: f64,
    /// Of the entries predicted visible, the fraction visible in the ground truth.
    pub visible_precision: f64,
}

impl Counts {
    fn add(&mut self, pred: &Clip, gt: &Clip, spec: &ShardSpec) {
        let (t, n) = (spec.t(), spec.num_points());
        let sx = 256.0 / spec.width as f32;
        let sy = 256.0 / spec.height as f32;
        let q = spec.query_frame as usize;
        for k in (q + 1)..t {
            for i in 0..n {
                let e = k * n + i;
                let (gv, pv) = (gt.visibility[e], pred.visibility[e]);
                let (a, b) = (pred.tracks[e], gt.tracks[e]);
                let (dx, dy) = ((a[0] - b[0]) * sx, (a[1] - b[1]) * sy);
                let d2 = dx * dx + dy * dy;
                self.entries += 1;
                self.occlusion_correct += (gv == pv) as u64;
                self.gt_visible += gv as u64;
                self.pred_visible += pv as u64;
                self.both_visible += (gv && pv) as u64;
                for (j, &th) in THRESHOLDS.iter().enumerate() {
                    let close = d2 < th * th;
                    self.within[j] += (gv && close) as u64;
                    self.tp[j] += (gv && pv && close) as u64;
                    self.fp[j] += (pv && !(gv && close)) as u64;
                }
            }
        }
    }

    /// This clip's metrics, NaN where undefined (as numpy gives them).
    fn clip_metrics(&self) -> [f64; 13] {
        let div = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { f64::NAN };
        let pa: [f64; 5] = std::array::from_fn(|j| div(self.within[j], self.gt_visible));
        let jac: [f64; 5] = std::array::from_fn(|j| div(self.tp[j], self.gt_visible + self.fp[j]));
        let mut out = [0.0; 13];
        out[..5].copy_from_slice(&pa);
        out[5] = pa.iter().sum::<f64>() / 5.0;
        out[6] = div(self.occlusion_correct, self.entries);
        out[7..12].copy_from_slice(&jac);
        out[12] = jac.iter().sum::<f64>() / 5.0;
        out
    }
}

fn summarise(per_clip: &[Counts]) -> Metrics {
    // Mean over the clips where the metric is defined.
    let mean = |k: usize| {
        let v: Vec<f64> =
            per_clip.iter().map(|c| c.clip_metrics()[k]).filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let total = |f: fn(&Counts) -> u64| per_clip.iter().map(f).sum::<u64>();
    let frac = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    let both = total(|c| c.both_visible);
    Metrics {
        clips: per_clip.len() as u64,
        position_accuracy: std::array::from_fn(mean),
        average_position_accuracy: mean(5),
        occlusion_accuracy: mean(6),
        jaccard: std::array::from_fn(|j| mean(7 + j)),
        average_jaccard: mean(12),
        visible_recall: frac(both, total(|c| c.gt_visible)),
        visible_precision: frac(both, total(|c| c.pred_visible)),
    }
}

/// Metrics of `pred` against `gt` over the clips both hold (matched by video and clip
/// index); their frame indices and query points must agree.
pub fn evaluate_clips(pred: &[Clip], gt: &[Clip], spec: &ShardSpec) -> Result<Metrics> {
    let gt_by_key: BTreeMap<(&str, u32), &Clip> =
        gt.iter().map(|c| ((c.video_id.as_str(), c.clip_index), c)).collect();
    let mut per_clip = Vec::new();
    for p in pred {
        let Some(g) = gt_by_key.get(&(p.video_id.as_str(), p.clip_index)) else { continue };
        if p.frame_indices != g.frame_indices {
            bail!(
                "clip {}: frame indices differ from the ground truth ({:?} vs {:?})",
                p.id(),
                p.frame_indices,
                g.frame_indices
            );
        }
        let off = p
            .queries
            .iter()
            .zip(&g.queries)
            .map(|(a, b)| (a[0] - b[0]).abs().max((a[1] - b[1]).abs()))
            .fold(0f32, f32::max);
        if off > 1e-3 {
            bail!("clip {}: query points differ from the ground truth by up to {off} px", p.id());
        }
        let mut c = Counts::default();
        c.add(p, g, spec);
        per_clip.push(c);
    }
    if per_clip.is_empty() {
        bail!(
            "no clip of the predictions matches a ground-truth clip (by video id and clip index)"
        );
    }
    Ok(summarise(&per_clip))
}

/// The zero-motion baseline: every point stays at its query position, always visible.
pub fn zero_motion(gt: &Clip, spec: &ShardSpec) -> Clip {
    let t = spec.t();
    Clip {
        tracks: (0..t).flat_map(|_| gt.queries.iter().copied()).collect(),
        visibility: vec![true; gt.visibility.len()],
        ..gt.clone()
    }
}

fn read_dir(dir: &Path) -> Result<(Vec<Clip>, ShardSpec)> {
    let m = Manifest::load(dir)?;
    let mut clips = Vec::new();
    for e in &m.shards {
        let r = ShardReader::open(&Manifest::shard_path(dir, e))?;
        clips.extend(r.read_all(false)?);
    }
    Ok((clips, m.spec))
}

/// Evaluates a prediction directory and the zero-motion baseline against a ground-truth one.
pub fn evaluate_dirs(pred: &Path, gt: &Path) -> Result<(Metrics, Metrics)> {
    let (p, ps) =
        read_dir(pred).with_context(|| format!("reading predictions {}", pred.display()))?;
    let (g, gs) = read_dir(gt).with_context(|| format!("reading ground truth {}", gt.display()))?;
    let same = (ps.frames_per_clip, ps.grid_size, ps.width, ps.height, ps.query_frame)
        == (gs.frames_per_clip, gs.grid_size, gs.width, gs.height, gs.query_frame);
    if !same {
        bail!(
            "{} and {} differ in clip length, grid, size or query frame",
            pred.display(),
            gt.display()
        );
    }
    let m = evaluate_clips(&p, &g, &gs)?;
    let keys: std::collections::BTreeSet<(&str, u32)> =
        p.iter().map(|c| (c.video_id.as_str(), c.clip_index)).collect();
    let zero: Vec<Clip> = g
        .iter()
        .filter(|c| keys.contains(&(c.video_id.as_str(), c.clip_index)))
        .map(|c| zero_motion(c, &gs))
        .collect();
    let z = evaluate_clips(&zero, &g, &gs)?;
    Ok((m, z))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosic::clip::TrackerInfo;

    fn spec() -> ShardSpec {
        ShardSpec {
            frames_per_clip: 3,
            grid_size: 1,
            width: 256,
            height: 256,
            query_frame: 0,
            tracker: TrackerInfo {
                name: "gt".into(),
                model_sha256: String::new(),
                params: serde_json::json!({}),
            },
        }
    }

    fn clip(tracks: &[[f32; 2]], vis: &[bool]) -> Clip {
        Clip {
            dataset: "d".into(),
            video_id: "v".into(),
            clip_index: 0,
            frame_indices: vec![0, 1, 2],
            source_fps: 30.0,
            frames: vec![],
            queries: vec![tracks[0]],
            tracks: tracks.to_vec(),
            visibility: vis.to_vec(),
        }
    }

    #[test]
    fn perfect_prediction_scores_one() {
        let g = clip(&[[10.0, 10.0], [12.0, 10.0], [14.0, 11.0]], &[true, true, false]);
        let m =
            evaluate_clips(std::slice::from_ref(&g), std::slice::from_ref(&g), &spec()).unwrap();
        assert_eq!(m.average_position_accuracy, 1.0);
        assert_eq!(m.occlusion_accuracy, 1.0);
        assert_eq!(m.average_jaccard, 1.0);
    }

    #[test]
    fn hand_computed_case() {
        // Frame 1: GT visible, prediction visible 3 px off. Frame 2: GT occluded, predicted visible.
        let g = clip(&[[10.0, 10.0], [12.0, 10.0], [14.0, 11.0]], &[true, true, false]);
        let p = clip(&[[10.0, 10.0], [15.0, 10.0], [14.0, 11.0]], &[true, true, true]);
        let m = evaluate_clips(&[p], &[g], &spec()).unwrap();
        // One GT-visible entry, 3 px off: within 4, 8, 16 only.
        assert_eq!(m.position_accuracy, [0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(m.occlusion_accuracy, 0.5);
        // Thresholds 1, 2: TP 0, FP 2 (frame 1 off, frame 2 occluded), FN 1 -> 0.
        // Thresholds 4, 8, 16: TP 1, FP 1 (frame 2), FN 0 -> 1/2.
        assert_eq!(m.jaccard, [0.0, 0.0, 0.5, 0.5, 0.5]);
        assert!((m.average_jaccard - 0.3).abs() < 1e-12);
    }

    #[test]
    fn metrics_are_averaged_over_clips_not_pooled() {
        // A: both later frames visible and exact. B: frame 1 visible but 20 px off, frame 2
        // occluded yet predicted visible.
        let a = clip(&[[10.0, 10.0], [12.0, 10.0], [14.0, 11.0]], &[true, true, true]);
        let gb = Clip {
            clip_index: 1,
            ..clip(&[[50.0, 50.0], [52.0, 50.0], [54.0, 50.0]], &[true, true, false])
        };
        let pb = Clip {
            clip_index: 1,
            ..clip(&[[50.0, 50.0], [72.0, 50.0], [54.0, 50.0]], &[true, true, true])
        };
        let m = evaluate_clips(&[a.clone(), pb], &[a, gb], &spec()).unwrap();
        // Per clip: A 1, B 0; pooled it would be 2/3.
        assert_eq!(m.position_accuracy[0], 0.5);
        assert_eq!(m.occlusion_accuracy, 0.75); // A 2/2, B 1/2
        assert_eq!(m.jaccard[4], 0.5); // A 2/2, B 0/(1 + 2)
                                       // Pooled: 3 GT-visible entries, all predicted visible; 4 predicted visible.
        assert_eq!((m.visible_recall, m.visible_precision), (1.0, 0.75));
    }

    #[test]
    fn only_frames_after_the_query_count() {
        let mut s = spec();
        s.query_frame = 1;
        let g = Clip {
            queries: vec![[12.0, 10.0]],
            ..clip(&[[10.0, 10.0], [12.0, 10.0], [14.0, 11.0]], &[true, true, true])
        };
        // Frame 0 is far off but comes before the query frame.
        let p = Clip { tracks: vec![[90.0, 90.0], [12.0, 10.0], [14.0, 11.0]], ..g.clone() };
        let m = evaluate_clips(&[p], &[g], &s).unwrap();
        assert_eq!(m.average_position_accuracy, 1.0);
    }

    #[test]
    fn distances_are_measured_at_256_scale() {
        let mut s = spec();
        s.width = 512; // 3 px at 512 wide = 1.5 px at 256
        let g = clip(&[[10.0, 10.0], [12.0, 10.0], [14.0, 10.0]], &[true, true, true]);
        let p = clip(&[[10.0, 10.0], [15.0, 10.0], [14.0, 10.0]], &[true, true, true]);
        let m = evaluate_clips(&[p], &[g], &s).unwrap();
        assert_eq!(m.position_accuracy[0], 0.5);
        assert_eq!(m.position_accuracy[1], 1.0);
    }

    #[test]
    fn zero_motion_is_always_visible_at_the_query() {
        let g = clip(&[[10.0, 10.0], [12.0, 10.0], [14.0, 11.0]], &[true, true, false]);
        let z = zero_motion(&g, &spec());
        assert_eq!(z.tracks, vec![[10.0, 10.0]; 3]);
        assert!(z.visibility.iter().all(|&v| v));
    }

    /// TAP-Vid's own metric code on a seeded fixture (`tools/goldens/make_tapvid_golden.py`).
    #[test]
    fn tapvid_golden() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tapvid/golden.json");
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let u = |k: &str| g[k].as_u64().unwrap() as u32;
        let floats = |v: &serde_json::Value| -> Vec<[f32; 2]> {
            let f: Vec<f32> =
                v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            f.chunks(2).map(|p| [p[0], p[1]]).collect()
        };
        let bools = |v: &serde_json::Value| -> Vec<bool> {
            v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() == 1).collect()
        };
        let spec = ShardSpec {
            frames_per_clip: u("frames"),
            grid_size: u("grid_size"),
            width: u("width"),
            height: u("height"),
            ..spec()
        };
        let queries = floats(&g["queries"]);
        let (mut preds, mut gts) = (Vec::new(), Vec::new());
        for (i, c) in g["clips"].as_array().unwrap().iter().enumerate() {
            let base = Clip {
                clip_index: i as u32,
                frame_indices: (0..spec.frames_per_clip).collect(),
                queries: queries.clone(),
                tracks: floats(&c["gt_tracks"]),
                visibility: bools(&c["gt_visible"]),
                ..clip(&[[0.0; 2]], &[true])
            };
            preds.push(Clip {
                tracks: floats(&c["pred_tracks"]),
                visibility: bools(&c["pred_visible"]),
                ..base.clone()
            });
            gts.push(base);
        }
        let m = evaluate_clips(&preds, &gts, &spec).unwrap();
        let want = |k: &str| g["metrics"][k].as_f64().unwrap();
        let mut got = vec![
            ("average_jaccard".to_string(), m.average_jaccard),
            ("average_pts_within_thresh".into(), m.average_position_accuracy),
            ("occlusion_accuracy".into(), m.occlusion_accuracy),
        ];
        for (j, th) in [1, 2, 4, 8, 16].into_iter().enumerate() {
            got.push((format!("jaccard_{th}"), m.jaccard[j]));
            got.push((format!("pts_within_{th}"), m.position_accuracy[j]));
        }
        for (k, v) in got {
            assert!((v - want(&k)).abs() < 1e-6, "{k}: {v} vs reference {}", want(&k));
        }
        assert_eq!(m.clips, 6);
    }
}
