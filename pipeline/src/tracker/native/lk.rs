//! Motion between two frames: translation-only pyramidal Lucas–Kanade for one point, the
//! clip's dominant translation, and a block search for points that both extrapolations miss.

use super::point::Point;
use super::pyramid::Plane;
use super::template::{dot, normalise};
use super::NativeParams;

/// Window buffers of one thread, padded with zeros to a multiple of eight: the template a
/// pixel wider (for its gradients) with its in-image mask, the template, its gradients and
/// mask, and the moving patch with its mask.
pub(super) struct LkBuffers {
    n: usize,
    tt: Vec<f32>,
    mtt: Vec<f32>,
    t: Vec<f32>,
    gx: Vec<f32>,
    gy: Vec<f32>,
    mt: Vec<f32>,
    b: Vec<f32>,
    mb: Vec<f32>,
}

impl LkBuffers {
    /// For windows of half-size `r`.
    pub(super) fn new(r: usize) -> Self {
        let n = (2 * r + 1).pow(2);
        let (z, zz) = (vec![0.0; n.next_multiple_of(8)], vec![0.0; (2 * r + 3).pow(2)]);
        let (tt, mtt, t, gx, gy, mt, b, mb) =
            (zz.clone(), zz, z.clone(), z.clone(), z.clone(), z.clone(), z.clone(), z);
        Self { n, tt, mtt, t, gx, gy, mt, b, mb }
    }
}

/// Moves point `from` of pyramid `a` into pyramid `b`, searching from `guess` and starting
/// at level `top`; None where no level has enough texture.
pub(super) fn lk(
    p: &NativeParams,
    a: &[Plane],
    b: &[Plane],
    from: Point,
    guess: Point,
    top: usize,
    s: &mut LkBuffers,
) -> Option<Point> {
    let r = p.window;
    let mut d = guess - from;
    let mut textured = false;
    for l in (0..=top.min(a.len() - 1)).rev() {
        let sc = 0.5f32.powi(l as i32);
        let at = from * sc;
        // Template and its central-difference gradients from one window a pixel wider.
        a[l].patch(at, r + 1, &mut s.tt, &mut s.mtt);
        let (n, m) = (2 * r + 1, 2 * r + 3);
        for j in 0..n {
            for i in 0..n {
                let (k, c) = (j * n + i, (j + 1) * m + i + 1);
                s.t[k] = s.tt[c];
                s.mt[k] = s.mtt[c];
                s.gx[k] = (s.tt[c + 1] - s.tt[c - 1]) / 2.0;
                s.gy[k] = (s.tt[c + m] - s.tt[c - m]) / 2.0;
            }
        }
        let full = tensor(&s.mt, &s.gx, &s.gy);
        let Tensor { n, hxx, hxy, hyy, .. } = full;
        // Too little of the window inside the image to trust (coarse levels near a border).
        if n < s.n as f32 / 3.0 || min_eig(hxx / n, hxy / n, hyy / n) < p.min_eigen {
            continue;
        }
        textured = true;
        let start = d * sc;
        let mut dl = start;
        for _ in 0..p.iterations {
            let b_in = b[l].patch(at + dl, r, &mut s.b, &mut s.mb);
            // Samples outside either image are left out, so replicated borders do not pull.
            let Tensor { n, sgx, sgy, hxx, hxy, hyy } = if b_in {
                full
            } else {
                s.mb.iter_mut().zip(&s.mt).for_each(|(m, t)| *m *= t);
                tensor(&s.mb, &s.gx, &s.gy)
            };
            let [se, ex, ey] = residual(&s.b, &s.t, &s.gx, &s.gy, if b_in { &s.mt } else { &s.mb });
            if n < 1.0 {
                break;
            }
            // Removing the mean difference makes the fit blind to brightness changes.
            let mean = se / n;
            let (ex, ey) = (ex - mean * sgx, ey - mean * sgy);
            let det = hxx * hyy - hxy * hxy;
            let step = Point::new((hyy * ex - hxy * ey) / det, (hxx * ey - hxy * ex) / det);
            if !step.is_finite() {
                break;
            }
            dl = dl - step;
            if step.norm() < p.epsilon {
                break;
            }
        }
        // A level that wanders off by more than its window has lost the patch (an
        // ambiguous texture); the coarser estimate is the better one then.
        if dl.distance(start) <= r as f32 {
            d = dl / sc;
        }
    }
    let e = from + d;
    (textured && e.is_finite()).then_some(e)
}

fn min_eig(xx: f32, xy: f32, yy: f32) -> f32 {
    (xx + yy) / 2.0 - ((xx - yy).powi(2) / 4.0 + xy * xy).sqrt()
}

// The sums below run in eight lanes so that they vectorise; buffers are padded with zeros
// to a multiple of eight.
fn lanes(v: &[f32]) -> &[[f32; 8]] {
    v.as_chunks::<8>().0
}

/// Masked structure tensor of a window.
#[derive(Clone, Copy)]
struct Tensor {
    /// Samples counted (the mask's sum).
    n: f32,
    sgx: f32,
    sgy: f32,
    hxx: f32,
    hxy: f32,
    hyy: f32,
}

fn tensor(m: &[f32], gx: &[f32], gy: &[f32]) -> Tensor {
    let mut acc = [[0f32; 8]; 6];
    for ((m, gx), gy) in lanes(m).iter().zip(lanes(gx)).zip(lanes(gy)) {
        for j in 0..8 {
            let (x, y) = (m[j] * gx[j], m[j] * gy[j]);
            let v = [m[j], x, y, x * gx[j], x * gy[j], y * gy[j]];
            (0..6).for_each(|k| acc[k][j] += v[k]);
        }
    }
    let [n, sgx, sgy, hxx, hxy, hyy] = acc.map(|a| a.iter().sum());
    Tensor { n, sgx, sgy, hxx, hxy, hyy }
}

/// Masked [sum e, sum gx e, sum gy e] of the difference e = b - t.
fn residual(b: &[f32], t: &[f32], gx: &[f32], gy: &[f32], m: &[f32]) -> [f32; 3] {
    let mut acc = [[0f32; 8]; 3];
    for ((((b, t), gx), gy), m) in
        lanes(b).iter().zip(lanes(t)).zip(lanes(gx)).zip(lanes(gy)).zip(lanes(m))
    {
        for j in 0..8 {
            let e = m[j] * (b[j] - t[j]);
            acc[0][j] += e;
            acc[1][j] += gx[j] * e;
            acc[2][j] += gy[j] * e;
        }
    }
    acc.map(|a| a.iter().sum())
}

/// Best match of point `p` of pyramid `a` in pyramid `b` within `radius` full-resolution
/// pixels of `around`, by NCC of 5x5 patches at level 1 (10 px wide: little of a small
/// object's surroundings); None without a level 1 or a textured patch.
pub(super) fn search(
    a: &[Plane],
    b: &[Plane],
    p: Point,
    around: Point,
    radius: usize,
) -> Option<Point> {
    const R: usize = 2;
    let (pa, pb) = (a.get(1)?, b.get(1)?);
    let n = 2 * R + 1;
    let (mut tpl, mut mask, mut cand) = (vec![0.0; n * n], vec![0.0; n * n], vec![0.0; n * n]);
    pa.patch(p / 2.0, R, &mut tpl, &mut mask);
    if !normalise(&mut tpl) {
        return None;
    }
    let s = (radius / 2) as isize;
    let centre = around / 2.0;
    let mut best = (f32::MIN, Point::ZERO);
    for dy in -s..=s {
        for dx in -s..=s {
            let at = centre + Point::new(dx as f32, dy as f32);
            pb.patch(at, R, &mut cand, &mut mask);
            if normalise(&mut cand) {
                let score = dot(&tpl, &cand);
                if score > best.0 {
                    best = (score, at * 2.0);
                }
            }
        }
    }
    (best.0 > 0.5).then_some(best.1)
}

/// Dominant translation from `a` to `b`, both at pyramid level `level`, in full-resolution
/// pixels: exhaustive search over +-16 px of the level for the least absolute difference on a
/// sparse lattice (the background outvotes objects), with a parabola through the minimum.
/// It seeds points that have no velocity yet and recovers points lost on the background.
pub(super) fn global_shift(a: &Plane, b: &Plane, level: usize) -> Point {
    const R: isize = 16;
    let (w, h) = (a.w as isize, a.h as isize);
    if w <= 3 * R || h <= 3 * R {
        return Point::ZERO;
    }
    let n = (2 * R + 1) as usize;
    let lattice: Vec<(isize, isize)> =
        (R..h - R).step_by(4).flat_map(|y| (R..w - R).step_by(4).map(move |x| (x, y))).collect();
    let cost: Vec<f32> = (0..n * n)
        .map(|k| {
            let (dx, dy) = (k as isize % n as isize - R, k as isize / n as isize - R);
            lattice
                .iter()
                .map(|&(x, y)| (b.v[b.idx(x + dx, y + dy)] - a.v[a.idx(x, y)]).abs())
                .sum()
        })
        .collect();
    let best = (0..n * n).min_by(|&i, &j| cost[i].total_cmp(&cost[j])).unwrap();
    let (bx, by) = (best % n, best / n);
    let vertex = |l: f32, m: f32, r: f32| {
        let d = l - 2.0 * m + r;
        if d > 0.0 {
            (0.5 * (l - r) / d).clamp(-0.5, 0.5)
        } else {
            0.0
        }
    };
    let fx =
        if bx > 0 && bx + 1 < n { vertex(cost[best - 1], cost[best], cost[best + 1]) } else { 0.0 };
    let fy =
        if by > 0 && by + 1 < n { vertex(cost[best - n], cost[best], cost[best + n]) } else { 0.0 };
    let sc = (1 << level) as f32;
    Point::new((bx as f32 - R as f32 + fx) * sc, (by as f32 - R as f32 + fy) * sc)
}
