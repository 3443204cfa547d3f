//! The appearance check: NCC of a point's query patch, seen through an affine warp.

use super::point::{Point, Pose, Warp};
use super::pyramid::Plane;

/// The query patch of a point, for the appearance check through an affine warp: its values
/// (raw and zero-mean unit-norm) and what inverse-compositional LK needs (steepest-descent
/// images and inverse Hessian for the parameters of x = t + (I + P) u + d). Affine, not a
/// similarity: stored frames are resized anisotropically (16:9 to square), so a turn in the
/// video is a turn plus shear in the frames.
pub(super) struct Template {
    r: usize,
    normed: Vec<f32>,
    raw: Vec<f32>,
    sd: Vec<[f32; 6]>,
    hinv: Option<[[f32; 6]; 6]>,
}

/// How well the query patch matches, and where and through which warp.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fit {
    pub(super) ncc: f32,
    pub(super) pose: Pose,
}

/// Where offset `(ux, uy)` of the patch lands when the patch is seen through `a` at `at`.
fn warped(at: Point, a: &Warp, ux: f32, uy: f32) -> Point {
    Point::new(at.x + a[0] * ux + a[1] * uy, at.y + a[2] * ux + a[3] * uy)
}

impl Template {
    /// None for a flat patch, which has no appearance to check.
    pub(super) fn new(plane: &Plane, q: Point, r: usize) -> Option<Self> {
        let (n, m) = (2 * r + 1, 2 * r + 3);
        let (mut wide, mut mask) = (vec![0.0; m * m], vec![0.0; m * m]);
        plane.patch(q, r + 1, &mut wide, &mut mask);
        let (mut raw, mut sd) = (Vec::with_capacity(n * n), Vec::with_capacity(n * n));
        for j in 0..n {
            for i in 0..n {
                let c = (j + 1) * m + i + 1;
                let (gx, gy) =
                    ((wide[c + 1] - wide[c - 1]) / 2.0, (wide[c + m] - wide[c - m]) / 2.0);
                let (ux, uy) = (i as f32 - r as f32, j as f32 - r as f32);
                raw.push(wide[c]);
                sd.push([gx * ux, gx * uy, gy * ux, gy * uy, gx, gy]);
            }
        }
        let mut normed = raw.clone();
        if !normalise(&mut normed) {
            return None;
        }
        // Brightness is left out of the fit (the error's mean is removed), so the
        // steepest-descent images are centred the same way.
        let mean: [f32; 6] =
            std::array::from_fn(|k| sd.iter().map(|v| v[k]).sum::<f32>() / sd.len() as f32);
        let mut h = [[0.0f64; 6]; 6];
        for v in &sd {
            for a in 0..6 {
                for b in 0..6 {
                    h[a][b] += ((v[a] - mean[a]) * (v[b] - mean[b])) as f64;
                }
            }
        }
        Some(Self { r, normed, raw, sd, hinv: invert(h) })
    }

    /// NCC over the central (2r+1)^2 samples of the query patch alone, seen through `a` at
    /// `at`: near an object's edge the rest of the window may show the object.
    pub(super) fn centre_ncc(
        &self,
        plane: &Plane,
        at: Point,
        a: Warp,
        r: usize,
        buf: &mut Vec<f32>,
    ) -> f32 {
        let (big, n) = (self.r as isize, 2 * self.r + 1);
        let r = r.min(self.r) as isize;
        buf.clear();
        let mut tpl = Vec::with_capacity(((2 * r + 1) * (2 * r + 1)) as usize);
        for j in -r..=r {
            for i in -r..=r {
                buf.push(plane.sample(warped(at, &a, i as f32, j as f32)));
                tpl.push(self.raw[((j + big) as usize) * n + (i + big) as usize]);
            }
        }
        if normalise(buf) && normalise(&mut tpl) {
            dot(&tpl, buf)
        } else {
            0.0
        }
    }

    /// NCC of the query patch with `plane` seen through the warp `a` at `at`, after refining
    /// the warp for `iterations`. A fit that runs away (area outside 0.5..2, a side squeezed
    /// below a third of the other, or the centre more than the window's half-size off) keeps
    /// where it started.
    pub(super) fn compare(
        &self,
        plane: &Plane,
        at: Point,
        a: Warp,
        iterations: usize,
        buf: &mut Vec<f32>,
    ) -> Fit {
        let (r, n) = (self.r as f32, 2 * self.r + 1);
        buf.resize(n * n, 0.0);
        let sample = |a: &Warp, t: Point, out: &mut [f32]| {
            for j in 0..n {
                for i in 0..n {
                    out[j * n + i] = plane.sample(warped(t, a, i as f32 - r, j as f32 - r));
                }
            }
        };
        let (mut w, mut t) = (a, at);
        if let Some(hinv) = self.hinv.filter(|_| iterations > 0) {
            for _ in 0..iterations {
                sample(&w, t, buf);
                let mean =
                    buf.iter().zip(&self.raw).map(|(b, t)| b - t).sum::<f32>() / buf.len() as f32;
                let mut g = [0.0f32; 6];
                for ((b, tv), v) in buf.iter().zip(&self.raw).zip(&self.sd) {
                    let e = b - tv - mean;
                    (0..6).for_each(|k| g[k] += v[k] * e);
                }
                let d: [f32; 6] = std::array::from_fn(|k| (0..6).map(|l| hinv[k][l] * g[l]).sum());
                if !d.iter().all(|x| x.is_finite()) {
                    break;
                }
                // Inverse composition: W <- W o dW^-1, with dW(u) = (I + D) u + (d4, d5).
                let m = [1.0 + d[0], d[1], d[2], 1.0 + d[3]];
                let det = m[0] * m[3] - m[1] * m[2];
                if det.abs() < 1e-3 {
                    break;
                }
                let inv = [m[3] / det, -m[1] / det, -m[2] / det, m[0] / det];
                let nw = [
                    w[0] * inv[0] + w[1] * inv[2],
                    w[0] * inv[1] + w[1] * inv[3],
                    w[2] * inv[0] + w[3] * inv[2],
                    w[2] * inv[1] + w[3] * inv[3],
                ];
                t = t - Point::new(nw[0] * d[4] + nw[1] * d[5], nw[2] * d[4] + nw[3] * d[5]);
                w = nw;
                if d[..4].iter().map(|x| x.abs()).sum::<f32>() < 1e-4
                    && Point::new(d[4], d[5]).norm() < 0.01
                {
                    break;
                }
            }
            let area = (w[0] * w[3] - w[1] * w[2]).abs();
            let (c0, c1) = (w[0].hypot(w[2]), w[1].hypot(w[3]));
            let sane = (0.5..2.0).contains(&area) && c0.min(c1) > c0.max(c1) / 3.0;
            if !(sane && t.distance(at) < r) {
                (w, t) = (a, at);
            }
        }
        sample(&w, t, buf);
        let ncc = if normalise(buf) { dot(&self.normed, buf) } else { 0.0 };
        Fit { ncc, pose: Pose { at: t, warp: w } }
    }
}

/// Inverse of a symmetric matrix by Gauss-Jordan elimination; None when singular.
fn invert<const N: usize>(m: [[f64; N]; N]) -> Option<[[f32; N]; N]> {
    let mut a = m;
    let mut inv = [[0.0f64; N]; N];
    (0..N).for_each(|i| inv[i][i] = 1.0);
    let scale = (0..N).map(|i| m[i][i].abs()).fold(0.0, f64::max);
    for col in 0..N {
        let piv = (col..N).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[piv][col].abs() <= 1e-9 * scale.max(1e-30) {
            return None;
        }
        a.swap(col, piv);
        inv.swap(col, piv);
        let p = a[col][col];
        (0..N).for_each(|j| {
            a[col][j] /= p;
            inv[col][j] /= p;
        });
        for row in (0..N).filter(|&r| r != col) {
            let f = a[row][col];
            for j in 0..N {
                a[row][j] -= f * a[col][j];
                inv[row][j] -= f * inv[col][j];
            }
        }
    }
    Some(std::array::from_fn(|i| std::array::from_fn(|j| inv[i][j] as f32)))
}

/// Zero mean and unit norm in place; false for a flat patch.
pub(super) fn normalise(v: &mut [f32]) -> bool {
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    v.iter_mut().for_each(|x| *x -= mean);
    let norm = dot(v, v).sqrt();
    // About one grey level of contrast over the window.
    if norm < 4e-3 * (v.len() as f32).sqrt() {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests {
    use super::super::point::IDENTITY;
    use super::super::pyramid::pyramid;
    use super::super::tests::{gray, texture};
    use super::*;
    use image::RgbImage;

    #[test]
    fn the_window_centre_matches_where_the_rest_shows_an_occluder() {
        let frame = RgbImage::from_fn(64, 64, |x, y| gray(texture(x as f32, y as f32, 1)));
        let plane = &pyramid(&frame, 1, 12)[0];
        let centre = Point::new(32.0, 32.0);
        let tp = Template::new(plane, centre, 7).unwrap();
        // The right half of the window covered by a flat occluder, the centre 5x5 clear.
        let covered = RgbImage::from_fn(64, 64, |x, y| {
            if x >= 35 {
                gray(0.9)
            } else {
                gray(texture(x as f32, y as f32, 1))
            }
        });
        let cov = &pyramid(&covered, 1, 12)[0];
        let mut buf = Vec::new();
        assert!(tp.compare(cov, centre, IDENTITY, 0, &mut buf).ncc < 0.9);
        assert!(tp.centre_ncc(cov, centre, IDENTITY, 2, &mut buf) > 0.999);
        assert!(
            tp.centre_ncc(plane, Point::new(38.0, 29.0), IDENTITY, 2, &mut buf) < 0.9,
            "elsewhere it does not match"
        );
    }
}
