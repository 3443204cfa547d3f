//! TAP-Vid metrics of predicted tracks against ground truth (`mosic tracks eval`).
//!
//! As in TAP-Vid: coordinates are scaled to a 256x256 frame, the query frame is left out,
//! position accuracy counts ground-truth-visible points within 1, 2, 4, 8 and 16 px, and
//! average Jaccard scores position and visibility together.

use anyhow::{bail, Context, Result};
use mosic::clip::{Clip, ShardSpec};
use mosic::manifest::Manifest;
use mosic::ShardReader;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

pub const THRESHOLDS: [f32; 5] = [1.0, 2.0, 4.0, 8.0, 16.0];

#[derive(Clone, Debug, Default)]
struct Counts {
    /// Per threshold: visible GT points within the threshold (any prediction).
    within: [u64; 5],
    /// Per threshold: true positives, false positives, false negatives for Jaccard.
    tp: [u64; 5],
    fp: [u64; 5],
    fn_: [u64; 5],
    gt_visible: u64,
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
}

impl Counts {
    fn add(&mut self, pred: &Clip, gt: &Clip, spec: &ShardSpec) {
        let (t, n) = (spec.t(), spec.num_points());
        let sx = 256.0 / spec.width as f32;
        let sy = 256.0 / spec.height as f32;
        let q = spec.query_frame as usize;
        for k in (0..t).filter(|&k| k != q) {
            for i in 0..n {
                let e = k * n + i;
                let (gv, pv) = (gt.visibility[e], pred.visibility[e]);
                let (a, b) = (pred.tracks[e], gt.tracks[e]);
                let d = (((a[0] - b[0]) * sx).powi(2) + ((a[1] - b[1]) * sy).powi(2)).sqrt();
                self.entries += 1;
                self.occlusion_correct += (gv == pv) as u64;
                self.gt_visible += gv as u64;
                for (j, &th) in THRESHOLDS.iter().enumerate() {
                    let close = d < th;
                    if gv && close {
                        self.within[j] += 1;
                    }
                    match (gv, pv) {
                        (true, true) if close => self.tp[j] += 1,
                        (true, true) => {
                            self.fp[j] += 1;
                            self.fn_[j] += 1;
                        }
                        (true, false) => self.fn_[j] += 1,
                        (false, true) => self.fp[j] += 1,
                        (false, false) => {}
                    }
                }
            }
        }
    }

    fn metrics(&self, clips: u64) -> Metrics {
        let div = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        let pa: [f64; 5] = std::array::from_fn(|j| div(self.within[j], self.gt_visible));
        let jac: [f64; 5] = std::array::from_fn(|j| div(self.tp[j], self.tp[j] + self.fp[j] + self.fn_[j]));
        Metrics {
            clips,
            position_accuracy: pa,
            average_position_accuracy: pa.iter().sum::<f64>() / 5.0,
            occlusion_accuracy: div(self.occlusion_correct, self.entries),
            jaccard: jac,
            average_jaccard: jac.iter().sum::<f64>() / 5.0,
        }
    }
}

/// Metrics of `pred` against `gt` over the clips both hold (matched by video and clip
/// index); their frame indices and query points must agree.
pub fn evaluate_clips(pred: &[Clip], gt: &[Clip], spec: &ShardSpec) -> Result<Metrics> {
    let gt_by_key: BTreeMap<(&str, u32), &Clip> = gt.iter().map(|c| ((c.video_id.as_str(), c.clip_index), c)).collect();
    let mut counts = Counts::default();
    let mut clips = 0;
    for p in pred {
        let Some(g) = gt_by_key.get(&(p.video_id.as_str(), p.clip_index)) else { continue };
        if p.frame_indices != g.frame_indices {
            bail!("clip {}: frame indices differ from the ground truth ({:?} vs {:?})", p.id(), p.frame_indices, g.frame_indices);
        }
        let off = p.queries.iter().zip(&g.queries).map(|(a, b)| (a[0] - b[0]).abs().max((a[1] - b[1]).abs())).fold(0f32, f32::max);
        if off > 1e-3 {
            bail!("clip {}: query points differ from the ground truth by up to {off} px", p.id());
        }
        counts.add(p, g, spec);
        clips += 1;
    }
    if clips == 0 {
        bail!("no clip of the predictions matches a ground-truth clip (by video id and clip index)");
    }
    Ok(counts.metrics(clips))
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
    let (p, ps) = read_dir(pred).with_context(|| format!("reading predictions {}", pred.display()))?;
    let (g, gs) = read_dir(gt).with_context(|| format!("reading ground truth {}", gt.display()))?;
    let same = (ps.frames_per_clip, ps.grid_size, ps.width, ps.height, ps.query_frame)
        == (gs.frames_per_clip, gs.grid_size, gs.width, gs.height, gs.query_frame);
    if !same {
        bail!("{} and {} differ in clip length, grid, size or query frame", pred.display(), gt.display());
    }
    let m = evaluate_clips(&p, &g, &gs)?;
    let keys: std::collections::BTreeSet<(&str, u32)> = p.iter().map(|c| (c.video_id.as_str(), c.clip_index)).collect();
    let zero: Vec<Clip> =
        g.iter().filter(|c| keys.contains(&(c.video_id.as_str(), c.clip_index))).map(|c| zero_motion(c, &gs)).collect();
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
            tracker: TrackerInfo { name: "gt".into(), model_sha256: String::new(), params: serde_json::json!({}) },
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
        let m = evaluate_clips(&[g.clone()], &[g], &spec()).unwrap();
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
}
