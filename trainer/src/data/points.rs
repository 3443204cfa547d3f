//! Which stored points a crop supervises: a `grid` x `grid` grid laid on the crop, each position
//! taking the nearest stored point inside the crop at frame 0; and those points' tracks,
//! visibility and crop test in the crop's pixels.

use super::augment::{in_crop, Aug};
use mosic::Clip;
use std::collections::HashMap;

/// For every position of a `grid` x `grid` grid laid on the S x S crop (row-major, CoTracker's
/// grid helper), the index of the stored query nearest to it among those inside the crop;
/// `None` (padding) where the stored points are too sparse to give the position its own.
///
/// Stored queries on a regular grid (what stage 1 writes) are matched per axis, which is exact
/// nearest-point matching for axis-aligned grids: along each axis the grid positions take
/// distinct stored coordinates inside the crop, the nearest ones where that keeps them distinct
/// (near a crop border two positions can share a nearest stored coordinate; the outer one then
/// moves one stored step inwards). Other query layouts fall back to a greedy nearest match
/// within half a grid step.
pub fn select_points(queries: &[[f32; 2]], aug: &Aug, s: usize, grid: u32) -> Vec<Option<usize>> {
    let targets = mosic::grid_points(grid, s as u32, s as u32);
    let mapped: Vec<[f32; 2]> = queries.iter().map(|&q| aug.map(q, s)).collect();
    let g = grid as usize;
    if let Some((xs, ys)) = regular_grid(&mapped) {
        let cols = match_axis(&xs, &targets[..g].iter().map(|p| p[0]).collect::<Vec<_>>(), s);
        let rows = match_axis(&ys, &targets.iter().step_by(g).map(|p| p[1]).collect::<Vec<_>>(), s);
        let side = xs.len();
        return (0..g * g).map(|k| Some(rows[k / g]? * side + cols[k % g]?)).collect();
    }
    let step = if g > 1 { (targets[1][0] - targets[0][0]).max(1.0) } else { s as f32 };
    let mut taken = vec![false; mapped.len()];
    targets
        .iter()
        .map(|t| {
            let best = mapped
                .iter()
                .enumerate()
                .filter(|&(i, p)| !taken[i] && in_crop(p[0], s) && in_crop(p[1], s))
                .map(|(i, p)| (i, (p[0] - t[0]).hypot(p[1] - t[1])))
                .filter(|&(_, d)| d <= step / 2.0)
                .min_by(|a, b| a.1.total_cmp(&b.1))?;
            taken[best.0] = true;
            Some(best.0)
        })
        .collect()
}

/// The column and row coordinates of points that form a row-major square grid, if they do.
pub(super) fn regular_grid(p: &[[f32; 2]]) -> Option<(Vec<f32>, Vec<f32>)> {
    let side = (p.len() as f64).sqrt().round() as usize;
    if side == 0 || side * side != p.len() {
        return None;
    }
    let xs: Vec<f32> = p[..side].iter().map(|q| q[0]).collect();
    let ys: Vec<f32> = p.iter().step_by(side).map(|q| q[1]).collect();
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-3 * (1.0 + a.abs());
    p.iter()
        .enumerate()
        .all(|(k, q)| close(q[0], xs[k % side]) && close(q[1], ys[k / side]))
        .then_some((xs, ys))
}

/// Stored coordinate index for each target along one axis (targets ascending).
pub(super) fn match_axis(coords: &[f32], targets: &[f32], s: usize) -> Vec<Option<usize>> {
    let mut cand: Vec<usize> = (0..coords.len()).filter(|&i| in_crop(coords[i], s)).collect();
    cand.sort_by(|&a, &b| coords[a].total_cmp(&coords[b]));
    if cand.is_empty() {
        return vec![None; targets.len()];
    }
    let nearest = |t: f32| -> usize {
        let k = cand.partition_point(|&i| coords[i] < t);
        match (k.checked_sub(1), (k < cand.len()).then_some(k)) {
            (Some(a), Some(b)) if (t - coords[cand[a]]) <= (coords[cand[b]] - t) => a,
            (Some(a), None) => a,
            (_, Some(b)) => b,
            (None, None) => unreachable!("candidates are not empty"),
        }
    };
    let mut pos: Vec<usize> = targets.iter().map(|&t| nearest(t)).collect();
    let n = targets.len();
    if cand.len() >= n {
        // Strictly increasing positions in [0, cand.len()): push collisions outwards, then
        // back inside the range.
        for j in 1..n {
            pos[j] = pos[j].max(pos[j - 1] + 1);
        }
        pos[n - 1] = pos[n - 1].min(cand.len() - 1);
        for j in (0..n - 1).rev() {
            pos[j] = pos[j].min(pos[j + 1] - 1);
        }
        return pos.into_iter().map(|k| Some(cand[k])).collect();
    }
    // Too few stored coordinates: each serves the target closest to it; the others are padding.
    let mut out = vec![None; n];
    let mut best: HashMap<usize, (usize, f32)> = HashMap::new();
    for (j, &k) in pos.iter().enumerate() {
        let d = (coords[cand[k]] - targets[j]).abs();
        let e = best.entry(k).or_insert((j, d));
        if d < e.1 {
            *e = (j, d);
        }
    }
    for (k, (j, _)) in best {
        out[j] = Some(cand[k]);
    }
    out
}

/// Tracks, visibility and inside flags `[T][N]` of one clip's selected points in output pixels.
/// Padding positions keep their grid position, invisible and outside in every frame.
pub fn clip_points(
    clip: &Clip,
    aug: &Aug,
    s: usize,
    grid: u32,
) -> (Vec<[f32; 2]>, Vec<bool>, Vec<bool>) {
    let sel = select_points(&clip.queries, aug, s, grid);
    let targets = mosic::grid_points(grid, s as u32, s as u32);
    let n = clip.queries.len();
    let t = clip.tracks.len() / n.max(1);
    let m = sel.len();
    let (mut tracks, mut vis, mut inside) =
        (Vec::with_capacity(t * m), Vec::with_capacity(t * m), Vec::with_capacity(t * m));
    for f in 0..t {
        for (k, p) in sel.iter().enumerate() {
            match *p {
                Some(p) => {
                    let q = aug.map(clip.tracks[f * n + p], s);
                    // Non-finite input can only come from a broken shard; it must not reach the loss.
                    let ok = q[0].is_finite() && q[1].is_finite();
                    let q = if ok { q } else { [-1.0, -1.0] };
                    let i = ok && in_crop(q[0], s) && in_crop(q[1], s);
                    tracks.push(q);
                    inside.push(i);
                    vis.push(i && clip.visibility[f * n + p]);
                }
                None => {
                    tracks.push(targets[k]);
                    inside.push(false);
                    vis.push(false);
                }
            }
        }
    }
    (tracks, vis, inside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::LoaderConfig;
    use crate::testing::shards::spec;
    use mosic::rng::SplitMix64;

    /// Stage 1 stores 32 x 32 points by default: every crop of the training distribution
    /// then gets a full 16 x 16 grid of distinct stored points, all inside it at frame 0.
    #[test]
    fn a_32_grid_fills_every_crop_with_256_points_inside() {
        let c = LoaderConfig::default();
        let (w, s) = (224u32, 224usize);
        let queries = mosic::grid_points(32, w, w);
        let mut rng = SplitMix64::new(11);
        let mut nearest_moved = 0usize;
        for _ in 0..1000 {
            let aug = Aug::draw(&mut rng, w, w, &c);
            let sel = select_points(&queries, &aug, s, 16);
            assert_eq!(sel.iter().flatten().count(), 256, "{aug:?}");
            let mut seen: Vec<usize> = sel.iter().flatten().copied().collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 256, "distinct points {aug:?}");
            let targets = mosic::grid_points(16, s as u32, s as u32);
            for (k, p) in sel.iter().enumerate() {
                let q = aug.map(queries[p.unwrap()], s);
                assert!(in_crop(q[0], s) && in_crop(q[1], s), "{aug:?}: point {k} at {q:?}");
                // The nearest stored point inside the crop, or (at a border collision) the next one:
                // within half a stored step of the position per axis, or one step more.
                let stored = (w as f32 - 1.0 - 2.0 * w as f32 / 64.0) / 31.0;
                let (sx, sy) =
                    (stored * s as f32 / aug.width as f32, stored * s as f32 / aug.height as f32);
                let (dx, dy) = ((q[0] - targets[k][0]).abs(), (q[1] - targets[k][1]).abs());
                nearest_moved += (dx > 0.5 * sx + 1e-3 || dy > 0.5 * sy + 1e-3) as usize;
                assert!(
                    dx <= 1.5 * sx + 1e-3 && dy <= 1.5 * sy + 1e-3,
                    "{aug:?}: position {k} off by ({dx}, {dy})"
                );
            }
        }
        assert!(
            nearest_moved < 1000 * 256 / 50,
            "{nearest_moved} positions moved off their nearest point"
        );
    }

    /// A 16 x 16 stored grid cannot give small crops 256 points of their own: the positions
    /// left over are padding, the loader says so once, and no point outside the crop sneaks in.
    #[test]
    fn a_coarse_grid_pads_and_is_reported() {
        let c = LoaderConfig::default();
        let (w, s) = (224u32, 224usize);
        let queries = mosic::grid_points(16, w, w);
        let mut rng = SplitMix64::new(5);
        let mut filled = Vec::new();
        for _ in 0..300 {
            let aug = Aug::draw(&mut rng, w, w, &c);
            let sel = select_points(&queries, &aug, s, 16);
            let mut seen: Vec<usize> = sel.iter().flatten().copied().collect();
            let count = seen.len();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), count, "distinct");
            for p in sel.iter().flatten() {
                let q = aug.map(queries[*p], s);
                assert!(in_crop(q[0], s) && in_crop(q[1], s));
            }
            filled.push(count);
        }
        filled.sort_unstable();
        assert!(filled[150] < 256 && filled[150] > 64, "median {}", filled[150]);
        let sp = spec(12, 16, 224);
        let note = c.coarse_grid_note(&sp).expect("16 is too coarse");
        assert!(note.contains("16x16") && note.contains("--grid 32"), "{note}");
        assert!(c.coarse_grid_note(&spec(12, 32, 224)).is_none());
    }

    /// Another stored layout (not a regular grid) still gives distinct points inside the crop.
    #[test]
    fn irregular_queries_fall_back_to_greedy_nearest() {
        let mut rng = SplitMix64::new(2);
        let queries: Vec<[f32; 2]> = (0..900)
            .map(|_| [rng.uniform(0.0, 223.0) as f32, rng.uniform(0.0, 223.0) as f32])
            .collect();
        let aug = Aug { flip: true, left: 30, top: 40, width: 150, height: 140, frame_width: 224 };
        let sel = select_points(&queries, &aug, 224, 8);
        let got: Vec<usize> = sel.iter().flatten().copied().collect();
        assert!(got.len() > 40, "{} of 64", got.len());
        let mut d = got.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), got.len());
        assert!(got.iter().all(|&p| {
            let q = aug.map(queries[p], 224);
            in_crop(q[0], 224) && in_crop(q[1], 224)
        }));
    }
}
