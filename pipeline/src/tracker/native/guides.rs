//! Guesses for the guided passes, from the tracks of the pass before: the median motion of a
//! point's grid neighbours, and affine maps (RANSAC) of the camera and of nearby points.

use super::point::{Point, Pose};
use super::Tracked;
use rayon::prelude::*;

/// What a guided pass knows about one point from the pass before.
pub(super) struct Guide<'a> {
    pub(super) first: &'a [Vec<Tracked>],
    pub(super) near: &'a [usize],
    pub(super) camera: &'a [Option<Affine>],
    pub(super) around: &'a [usize],
    pub(super) queries: &'a [Point],
    pub(super) q: Point,
}

impl Guide<'_> {
    /// Where the neighbours' motion from frame `a` to frame `b` takes a point at `from`.
    pub(super) fn neighbours(&self, a: usize, b: usize, from: Point) -> Option<Point> {
        neighbour_motion(self.first, self.near, a, b, from)
    }

    /// Where the camera takes the query point at frame `t`, and the patch's warp there.
    pub(super) fn camera(&self, t: usize) -> Option<Pose> {
        self.camera[t].map(|a| Pose { at: a.apply(self.q), warp: a.m })
    }

    /// Where the affine motion of the nearby query points seen at frame `t` takes the query
    /// point, and the patch's warp there: a second object moving its own way.
    pub(super) fn local(&self, t: usize) -> Option<Pose> {
        let pairs: Vec<(Point, Point)> = self
            .around
            .iter()
            .filter(|&&j| self.first[j][t].visible)
            .map(|&j| (self.queries[j], self.first[j][t].at))
            .collect();
        // Five: three fix the map, two more confirm it.
        ransac(&pairs, 40, t as u64, 5).map(|c| Pose { at: c.model.apply(self.q), warp: c.model.m })
    }
}

/// `p' = M p + t`, M row-major.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Affine {
    m: [f32; 4],
    t: [f32; 2],
}

impl Affine {
    pub(super) fn apply(&self, p: Point) -> Point {
        let m = self.m;
        Point::new(m[0] * p.x + m[1] * p.y + self.t[0], m[2] * p.x + m[3] * p.y + self.t[1])
    }

    /// Least squares over `pairs` (from, to); None when they are degenerate (collinear).
    fn fit(pairs: impl Iterator<Item = (Point, Point)>) -> Option<Self> {
        // Normal equations in f64 about the centroid: x' = a x + b y + c, one row per axis.
        let pairs: Vec<([f64; 2], [f64; 2])> = pairs
            .map(|(a, b)| ([f64::from(a.x), f64::from(a.y)], [f64::from(b.x), f64::from(b.y)]))
            .collect();
        let n = pairs.len() as f64;
        if pairs.len() < 3 {
            return None;
        }
        let mean = |k: usize, to: bool| {
            pairs.iter().map(|(a, b)| if to { b[k] } else { a[k] }).sum::<f64>() / n
        };
        let (cx, cy, dx, dy) = (mean(0, false), mean(1, false), mean(0, true), mean(1, true));
        let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
        let mut r = [[0.0f64; 2]; 2];
        for (a, b) in &pairs {
            let (x, y, u, v) = (a[0] - cx, a[1] - cy, b[0] - dx, b[1] - dy);
            (sxx, sxy, syy) = (sxx + x * x, sxy + x * y, syy + y * y);
            r[0] = [r[0][0] + u * x, r[0][1] + u * y];
            r[1] = [r[1][0] + v * x, r[1][1] + v * y];
        }
        let det = sxx * syy - sxy * sxy;
        if det <= 1e-9 * (sxx + syy).powi(2) || det <= 0.0 {
            return None;
        }
        let row = |r: [f64; 2]| [(r[0] * syy - r[1] * sxy) / det, (r[1] * sxx - r[0] * sxy) / det];
        let ([a, b], [c, d]) = (row(r[0]), row(r[1]));
        let t = [dx - a * cx - b * cy, dy - c * cx - d * cy];
        Some(Affine { m: [a, b, c, d].map(|v| v as f32), t: t.map(|v| v as f32) })
    }
}

/// An affine map and how many pairs it explains.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Consensus {
    model: Affine,
    inliers: usize,
}

/// The camera's affine map from the query frame to frame `k`: the RANSAC fit to the points
/// the first pass saw at both; None unless it explains a good share of them (a scene with no
/// dominant motion), or on the query frame itself.
pub(super) fn fit_camera(
    queries: &[Point],
    tracks: &[Vec<Tracked>],
    k: usize,
    qf: usize,
) -> Option<Affine> {
    if k == qf {
        return None;
    }
    let pairs: Vec<(Point, Point)> = tracks
        .iter()
        .zip(queries)
        .filter(|(tr, _)| tr[k].visible)
        .map(|(tr, q)| (*q, tr[k].at))
        .collect();
    let fit = ransac(&pairs, 200, k as u64, 16)?;
    (10 * fit.inliers >= 3 * pairs.len()).then_some(fit.model)
}

/// Affine map best supported by `pairs` (from, to) within a pixel, refitted on its inliers;
/// None with fewer than `min_inliers`. Samples follow a fixed sequence from `seed`, so the
/// tracks do not depend on the thread count.
fn ransac(
    pairs: &[(Point, Point)],
    rounds: usize,
    seed: u64,
    min_inliers: usize,
) -> Option<Consensus> {
    const INLIER_PX: f32 = 1.0;
    if pairs.len() < min_inliers.max(3) {
        return None;
    }
    let inliers =
        |a: Affine| pairs.iter().filter(move |(p, q)| a.apply(*p).distance(*q) < INLIER_PX);
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut draw = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let mut best: Option<Consensus> = None;
    for _ in 0..rounds {
        let (i, j, l) = (draw(pairs.len()), draw(pairs.len()), draw(pairs.len()));
        if i == j || j == l || i == l {
            continue;
        }
        if let Some(a) = Affine::fit([pairs[i], pairs[j], pairs[l]].into_iter()) {
            let count = inliers(a).count();
            if best.is_none_or(|b| count > b.inliers) {
                best = Some(Consensus { model: a, inliers: count });
            }
        }
    }
    let mut model = best?.model;
    for _ in 0..2 {
        model = Affine::fit(inliers(model).copied())?;
    }
    let count = inliers(model).count();
    (count >= min_inliers).then_some(Consensus { model, inliers: count })
}

/// The `k` nearest other queries of each query.
pub(super) fn nearest(queries: &[Point], k: usize) -> Vec<Vec<usize>> {
    queries
        .par_iter()
        .enumerate()
        .map(|(i, &q)| {
            let mut d: Vec<(f32, usize)> = queries
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, p)| (p.distance(q), j))
                .collect();
            let k = k.min(d.len());
            if k > 0 && k < d.len() {
                d.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            }
            d.truncate(k);
            d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            d.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}

/// `from` moved by the median motion from frame `a` to `b` of the neighbours visible at both
/// in `tracks`; None with fewer than two such neighbours.
fn neighbour_motion(
    tracks: &[Vec<Tracked>],
    near: &[usize],
    a: usize,
    b: usize,
    from: Point,
) -> Option<Point> {
    let (mut dx, mut dy): (Vec<f32>, Vec<f32>) = near
        .iter()
        .filter_map(|&j| {
            let (ta, tb) = (tracks[j][a], tracks[j][b]);
            let d = tb.at - ta.at;
            (ta.visible && tb.visible).then_some((d.x, d.y))
        })
        .unzip();
    if dx.len() < 2 {
        return None;
    }
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            0.5 * (v[m - 1] + v[m])
        }
    };
    Some(Point::new(from.x + median(&mut dx), from.y + median(&mut dy)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosic::clip::grid_points;

    #[test]
    fn neighbours_are_the_nearest_and_their_median_motion_guides() {
        let grid: Vec<Point> = (0..4)
            .flat_map(|y| (0..4).map(move |x| Point::new(x as f32 * 10.0, y as f32 * 10.0)))
            .collect();
        let near = nearest(&grid, 4);
        assert_eq!(near[0], vec![1, 4, 5, 2]); // (10,0) and (0,10) tie, then the diagonal, then (20,0)
        assert!(near.iter().enumerate().all(|(i, n)| n.len() == 4 && !n.contains(&i)));
        // Neighbours 1 and 4 move by (3, -1) and (5, 1) between frames 0 and 2, 5 is hidden at 2.
        let mut tracks = vec![vec![Tracked { at: Point::ZERO, visible: true }; 3]; 16];
        tracks[1][2].at = Point::new(3.0, -1.0);
        tracks[4][2].at = Point::new(5.0, 1.0);
        tracks[5][2] = Tracked { at: Point::new(50.0, 50.0), visible: false };
        // Moves of (3,-1), (5,1) and (0,0) (neighbour 2 stayed): the median per axis.
        assert_eq!(
            neighbour_motion(&tracks, &near[0], 0, 2, Point::new(100.0, 100.0)),
            Some(Point::new(103.0, 100.0))
        );
        assert_eq!(
            neighbour_motion(&tracks, &[1, 5], 0, 2, Point::ZERO),
            None,
            "one visible neighbour is not enough"
        );
    }

    #[test]
    fn ransac_finds_the_dominant_affine_among_other_motions() {
        let truth = Affine { m: [1.08, -0.12, 0.15, 0.95], t: [-6.0, 4.5] };
        let from: Vec<Point> = grid_points(10, 224, 224).into_iter().map(Point::from).collect();
        // 60% follow the map (to 1e-3 px), 40% move their own way.
        let pairs: Vec<(Point, Point)> = from
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let to = truth.apply(p);
                (
                    p,
                    if i % 5 < 3 {
                        Point::new(to.x + 1e-3 * (i % 3) as f32, to.y)
                    } else {
                        Point::new(to.x + 7.0 + i as f32 % 11.0, to.y - 9.0)
                    },
                )
            })
            .collect();
        let fit = ransac(&pairs, 200, 3, 16).unwrap();
        let model = fit.model;
        assert_eq!(fit.inliers, 60);
        assert!(model.m.iter().zip(truth.m).all(|(a, b)| (a - b).abs() < 1e-4), "{model:?}");
        assert!(model.t.iter().zip(truth.t).all(|(a, b)| (a - b).abs() < 1e-2), "{model:?}");
        assert_eq!(ransac(&pairs, 200, 3, 16), Some(fit), "same seed, same fit");
        assert_eq!(ransac(&pairs, 200, 3, 61), None, "too few inliers");
        // Three points fix an affine map; collinear ones do not.
        let exact =
            Affine::fit([from[0], from[1], from[10]].into_iter().map(|p| (p, truth.apply(p))))
                .unwrap();
        assert!(exact.m.iter().zip(truth.m).all(|(a, b)| (a - b).abs() < 1e-4));
        let collinear = [0.0, 1.0, 2.0].map(|v| Point::new(v, v));
        assert_eq!(Affine::fit(collinear.into_iter().map(|p| (p, p))), None);
    }
}
