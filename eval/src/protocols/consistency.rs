//! Track consistency: whether dense features keep a tracked point in one cluster as it moves,
//! which is what MoSiC optimises.
//!
//! On clips with ground-truth tracks, the L2-normalised patch tokens of every frame of the
//! set are clustered once (k-means at a fixed K). A track point visible at frame 0 and at
//! frame t > 0 is consistent there when the cluster of the patch under it at frame t equals
//! the cluster under it at frame 0. The share of consistent (point, frame) pairs is reported
//! beside how many clusters are in use, so that collapse onto a few clusters cannot pass for
//! consistency (one cluster makes every point consistent).

use crate::data::dense::{normalize_rows, FeatureMap};
use crate::kernels::kmeans::kmeans;

/// One clip: a feature map per frame and ground-truth tracks in pixels of the frames the
/// features were computed from (`width` x `height`, pixel centres at integers).
pub struct TrackedClip {
    pub frames: Vec<FeatureMap>,
    /// `[T][N]` (x = column, y = row).
    pub tracks: Vec<[f32; 2]>,
    /// `[T][N]`.
    pub visibility: Vec<bool>,
    pub width: u32,
    pub height: u32,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Consistency {
    /// Share of visible (point, frame t > 0) pairs, the point visible at frame 0 too, whose
    /// cluster equals the point's frame-0 cluster.
    pub consistency: f64,
    pub pairs: usize,
    /// Clusters holding at least one patch of the set.
    pub clusters_used: usize,
    /// exp(entropy) of the patches' cluster shares: K for equal use, 1 for collapse.
    pub effective_clusters: f64,
}

/// The cluster under a point of a `width` x `height` image on an `h` x `w` patch map.
fn patch_at(p: [f32; 2], map: &FeatureMap, width: u32, height: u32) -> usize {
    let c = ((p[0] + 0.5) * map.width as f32 / width as f32)
        .floor()
        .clamp(0.0, (map.width - 1) as f32) as usize;
    let r = ((p[1] + 0.5) * map.height as f32 / height as f32)
        .floor()
        .clamp(0.0, (map.height - 1) as f32) as usize;
    r * map.width + c
}

/// Track consistency of `clips` with k-means at `k` clusters (seed `seed`, at most `iters`
/// Lloyd iterations).
pub fn track_consistency(clips: &[TrackedClip], k: usize, seed: u64, iters: usize) -> Consistency {
    let dim = clips.iter().flat_map(|c| &c.frames).map(|f| f.dim).next().unwrap_or(1);
    let mut data: Vec<f32> =
        clips.iter().flat_map(|c| &c.frames).flat_map(|f| f.data.iter().copied()).collect();
    normalize_rows(&mut data, dim);
    let n = data.len() / dim;
    let km = kmeans(&data, n, dim, k.min(n).max(1), seed, iters);
    let mut counts = vec![0usize; k.max(1)];
    km.labels.iter().for_each(|&l| counts[l as usize] += 1);
    let entropy: f64 =
        counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n as f64).map(|p| -p * p.ln()).sum();

    let (mut same, mut pairs, mut offset) = (0usize, 0usize, 0usize);
    for clip in clips {
        let t = clip.frames.len();
        let npts = clip.tracks.len() / t.max(1);
        let label = |f: usize, p: [f32; 2]| {
            let map = &clip.frames[f];
            let base = offset + clip.frames[..f].iter().map(|m| m.height * m.width).sum::<usize>();
            km.labels[base + patch_at(p, map, clip.width, clip.height)]
        };
        for i in 0..npts {
            if !clip.visibility[i] {
                continue;
            }
            let c0 = label(0, clip.tracks[i]);
            for f in 1..t {
                if clip.visibility[f * npts + i] {
                    pairs += 1;
                    same += (label(f, clip.tracks[f * npts + i]) == c0) as usize;
                }
            }
        }
        offset += clip.frames.iter().map(|m| m.height * m.width).sum::<usize>();
    }
    Consistency {
        consistency: same as f64 / pairs.max(1) as f64,
        pairs,
        clusters_used: counts.iter().filter(|&&c| c > 0).count(),
        effective_clusters: entropy.exp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-frame clips on a 4 x 4 map of a 56 px image: features are one-hot by region, so
    /// k-means finds the regions; a point that stays in its region is consistent, one that
    /// crosses into another is not.
    fn clip(
        region_of: impl Fn(usize, usize) -> usize,
        tracks: Vec<[f32; 2]>,
        visibility: Vec<bool>,
    ) -> TrackedClip {
        let frames = (0..2)
            .map(|f| {
                let mut data = vec![0.0f32; 16 * 4];
                for p in 0..16 {
                    data[p * 4 + region_of(f, p)] = 1.0;
                }
                FeatureMap::new(4, 4, 4, data)
            })
            .collect();
        TrackedClip { frames, tracks, visibility, width: 56, height: 56 }
    }

    #[test]
    fn staying_in_a_region_is_consistent_and_crossing_is_not() {
        // Regions: the four 2 x 2 quadrants of the patch map, the same in both frames.
        let quadrant = |_f: usize, p: usize| (p / 4 / 2) * 2 + (p % 4) / 2;
        // Points (pixels; 14 px patches): 0 stays in the top-left quadrant, 1 moves from the
        // top-left to the top-right quadrant, 2 is hidden at frame 1.
        let tracks =
            vec![[3.0, 3.0], [10.0, 10.0], [40.0, 40.0], [20.0, 5.0], [45.0, 10.0], [41.0, 41.0]];
        let vis = vec![true, true, true, true, true, false];
        let c = track_consistency(&[clip(quadrant, tracks, vis)], 4, 0, 50);
        assert_eq!(c.pairs, 2);
        assert!((c.consistency - 0.5).abs() < 1e-12, "{c:?}");
        assert_eq!(c.clusters_used, 4);
        assert!((c.effective_clusters - 4.0).abs() < 1e-9);
    }

    #[test]
    fn collapse_is_consistent_but_shows_one_cluster() {
        let one = |_f: usize, _p: usize| 0;
        let tracks = vec![[3.0, 3.0], [50.0, 50.0]];
        let c = track_consistency(&[clip(one, tracks, vec![true, true])], 4, 0, 50);
        assert_eq!(c.consistency, 1.0);
        assert_eq!(c.clusters_used, 1);
        assert!((c.effective_clusters - 1.0).abs() < 1e-9);
    }
}
