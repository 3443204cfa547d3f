//! Grey image planes and their Gaussian pyramid.

use super::point::Point;
use image::RgbImage;

/// A grey image, stored with a replicated border of `pad` pixels so that windows overlapping
/// the edge read without clamping.
pub(super) struct Plane {
    pub(super) w: usize,
    pub(super) h: usize,
    pad: usize,
    pub(super) v: Vec<f32>,
}

impl Plane {
    fn new(w: usize, h: usize) -> Self {
        Self { w, h, pad: 0, v: vec![0.0; w * h] }
    }

    fn stride(&self) -> usize {
        self.w + 2 * self.pad
    }

    /// Index of pixel (x, y), clamped to the stored area.
    pub(super) fn idx(&self, x: isize, y: isize) -> usize {
        let p = self.pad as isize;
        let x = (x + p).clamp(0, (self.w + 2 * self.pad) as isize - 1) as usize;
        let y = (y + p).clamp(0, (self.h + 2 * self.pad) as isize - 1) as usize;
        y * self.stride() + x
    }

    fn padded(&self, pad: usize) -> Plane {
        let mut out = Plane {
            w: self.w,
            h: self.h,
            pad,
            v: Vec::with_capacity((self.w + 2 * pad) * (self.h + 2 * pad)),
        };
        for y in 0..(self.h + 2 * pad) as isize {
            for x in 0..(self.w + 2 * pad) as isize {
                out.v.push(self.v[self.idx(x - pad as isize, y - pad as isize)]);
            }
        }
        out
    }

    /// Bilinear sample at `p`, borders replicated.
    pub(super) fn sample(&self, p: Point) -> f32 {
        let (fx, fy) = (p.x.floor(), p.y.floor());
        let (ax, ay) = (p.x - fx, p.y - fy);
        let (ix, iy) = (fx as isize, fy as isize);
        let v = |dx: isize, dy: isize| self.v[self.idx(ix + dx, iy + dy)];
        (1.0 - ay) * ((1.0 - ax) * v(0, 0) + ax * v(1, 0))
            + ay * ((1.0 - ax) * v(0, 1) + ax * v(1, 1))
    }

    /// Bilinear samples of the (2r+1)^2 window centred on `centre`, row-major, with 1 in
    /// `mask` where a sample lies inside the image; true when all do.
    pub(super) fn patch(&self, centre: Point, r: usize, out: &mut [f32], mask: &mut [f32]) -> bool {
        let n = 2 * r + 1;
        let (x0, y0) = (centre.x - r as f32, centre.y - r as f32);
        let (fx, fy) = (x0.floor(), y0.floor());
        let (ax, ay) = (x0 - fx, y0 - fy);
        let wt = [(1.0 - ax) * (1.0 - ay), ax * (1.0 - ay), (1.0 - ax) * ay, ax * ay];
        let (ix, iy, p, ni) = (fx as isize, fy as isize, self.pad as isize, n as isize);
        let (w, h, stride) = (self.w as isize, self.h as isize, self.stride());
        let inside = ix >= 0 && iy >= 0 && ix + ni < w && iy + ni < h;
        if ix < -p || iy < -p || ix + ni >= w + p || iy + ni >= h + p {
            // Far outside, where no estimate is trusted anyway.
            out[..n * n].fill(0.0);
            mask[..n * n].fill(0.0);
            return false;
        }
        // All samples share one fractional offset, so each output row reads two input rows.
        for (j, row) in out[..n * n].chunks_exact_mut(n).enumerate() {
            let o = self.idx(ix, iy + j as isize);
            let (r0, r1) = (&self.v[o..o + n + 1], &self.v[o + stride..o + stride + n + 1]);
            for (i, d) in row.iter_mut().enumerate() {
                *d = wt[0] * r0[i] + wt[1] * r0[i + 1] + wt[2] * r1[i] + wt[3] * r1[i + 1];
            }
        }
        if inside {
            mask[..n * n].fill(1.0);
        } else {
            let (wl, hl) = (self.w as f32 - 1.0, self.h as f32 - 1.0);
            for (j, row) in mask[..n * n].chunks_exact_mut(n).enumerate() {
                let row_in = (0.0..=hl).contains(&(y0 + j as f32));
                for (i, m) in row.iter_mut().enumerate() {
                    *m = (row_in && (0.0..=wl).contains(&(x0 + i as f32))) as u8 as f32;
                }
            }
        }
        inside
    }
}

/// Up to `levels` levels, each a 5-tap binomial blur of the one above decimated by two, so
/// level l holds the point (x, y) at (x, y) / 2^l; levels too small for a window are left out.
pub(super) fn pyramid(frame: &RgbImage, levels: usize, pad: usize) -> Vec<Plane> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let mut img = Plane::new(w, h);
    for (d, p) in img.v.iter_mut().zip(frame.pixels()) {
        *d = (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32) / 255.0;
    }
    let mut out = Vec::with_capacity(levels);
    loop {
        let next = (out.len() + 1 < levels && img.w.min(img.h) >= 32).then(|| downsample(&img));
        out.push(img.padded(pad));
        match next {
            Some(n) => img = n,
            None => return out,
        }
    }
}

fn downsample(p: &Plane) -> Plane {
    const K: [f32; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];
    let (w2, h2) = (p.w.div_ceil(2), p.h.div_ceil(2));
    let tap = |c: usize, k: usize, len: usize| (c + k).saturating_sub(2).min(len - 1);
    let mut tmp = Plane::new(w2, p.h);
    for (src, dst) in p.v.chunks_exact(p.w).zip(tmp.v.chunks_exact_mut(w2)) {
        for (x, d) in dst.iter_mut().enumerate() {
            *d = (0..5).map(|k| K[k] * src[tap(2 * x, k, p.w)]).sum();
        }
    }
    let mut out = Plane::new(w2, h2);
    for (y, dst) in out.v.chunks_exact_mut(w2).enumerate() {
        let rows: [&[f32]; 5] = std::array::from_fn(|k| &tmp.v[tap(2 * y, k, p.h) * w2..][..w2]);
        for (x, d) in dst.iter_mut().enumerate() {
            *d = (0..5).map(|k| K[k] * rows[k][x]).sum();
        }
    }
    out
}
