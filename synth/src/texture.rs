//! Procedural colour textures, baked once per layer into rasters that rendering samples bilinearly.
//!
//! A layer's texture *is* its bilinearly interpolated raster: a continuous function of local
//! coordinates, so it moves rigidly with the layer and rendering stays cheap.

use rayon::prelude::*;
use std::f64::consts::{PI, TAU};

/// SplitMix64: tiny and portable, so scenes are identical on every platform.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(mix(seed ^ 0x6D6F_7369_635F_7379))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

/// SplitMix64 finaliser.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash(seed: u64, i: i64, j: i64) -> u64 {
    mix(seed ^ mix(i as u64 ^ mix(j as u64)))
}

/// 16 bits of `h` (field `k` of 4) as a number in [0, 1].
fn unit(h: u64, k: u32) -> f64 {
    ((h >> (16 * k)) & 0xFFFF) as f64 / 65535.0
}

const D: f64 = std::f64::consts::FRAC_1_SQRT_2;
const GRADS: [[f64; 2]; 8] =
    [[1., 0.], [-1., 0.], [0., 1.], [0., -1.], [D, D], [-D, D], [D, -D], [-D, -D]];

/// Gradient noise with unit lattice spacing, roughly in [-1, 1].
fn noise(seed: u64, x: f64, y: f64) -> f64 {
    let (fx, fy) = (x.floor(), y.floor());
    let (ix, iy, dx, dy) = (fx as i64, fy as i64, x - fx, y - fy);
    let g = |i: i64, j: i64, ox: f64, oy: f64| {
        let [gx, gy] = GRADS[(hash(seed, ix + i, iy + j) >> 61) as usize];
        gx * ox + gy * oy
    };
    let fade = |t: f64| t * t * t * (t * (t * 6.0 - 15.0) + 10.0);
    let (sx, sy) = (fade(dx), fade(dy));
    let a = g(0, 0, dx, dy) + sx * (g(1, 0, dx - 1.0, dy) - g(0, 0, dx, dy));
    let b = g(0, 1, dx, dy - 1.0) + sx * (g(1, 1, dx - 1.0, dy - 1.0) - g(0, 1, dx, dy - 1.0));
    1.4 * (a + sy * (b - a))
}

/// Fractal sum of `octaves` noise layers, wavelength `lambda` halving per octave; roughly in [-1, 1].
fn fbm(seed: u64, u: f64, v: f64, lambda: f64, octaves: u32) -> f64 {
    let (mut sum, mut amp, mut norm, mut f) = (0.0, 1.0, 0.0, 1.0 / lambda);
    for o in 0..octaves {
        // Offsets keep lattice points of different octaves from lining up.
        let off = o as f64 * 17.31;
        sum += amp * noise(seed.wrapping_add(o as u64), u * f + off, v * f - off);
        norm += amp;
        amp *= 0.6;
        f *= 2.0;
    }
    (2.0 * sum / norm).clamp(-1.0, 1.0)
}

fn lerp3(a: [f64; 3], b: [f64; 3], t: f64) -> [f64; 3] {
    std::array::from_fn(|k| a[k] + (b[k] - a[k]) * t)
}

fn dist3(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt()
}

#[derive(Clone, Debug)]
enum Pattern {
    Noise,
    Stripes { angle: f64, period: f64, warp: f64 },
    Checker { angle: f64, size: f64 },
    Dots { cell: f64 },
    Blend(Box<Texture>, Box<Texture>),
}

#[derive(Clone, Debug)]
pub(crate) struct Texture {
    pattern: Pattern,
    /// Two contrasting base colours and an accent, channels in [0, 1].
    palette: [[f64; 3]; 3],
    /// Feature size in texels; also the wavelength of the modulating noise.
    scale: f64,
    seed: u64,
    /// Amplitude of fine brightness noise, so no region is flat for a tracker.
    detail: f64,
}

impl Texture {
    /// A random texture whose largest features are about `scale` texels.
    pub fn random(rng: &mut Rng, scale: f64) -> Self {
        Self::random_inner(rng, scale, true)
    }

    fn random_inner(rng: &mut Rng, scale: f64, allow_blend: bool) -> Self {
        let colour = |rng: &mut Rng| [rng.uniform(), rng.uniform(), rng.uniform()];
        let c0 = colour(rng);
        let mut c1 = colour(rng);
        while dist3(c0, c1) < 0.55 {
            c1 = colour(rng);
        }
        let palette = [c0, c1, colour(rng)];
        let scale = (scale * rng.range(0.6, 1.5)).max(8.0);
        let pattern = match rng.below(if allow_blend { 5 } else { 4 }) {
            0 => Pattern::Noise,
            1 => Pattern::Stripes {
                angle: rng.range(0.0, PI),
                period: (scale * rng.range(0.3, 0.7)).max(5.0),
                warp: rng.range(0.1, 0.6),
            },
            2 => Pattern::Checker {
                angle: rng.range(0.0, PI),
                size: (scale * rng.range(0.25, 0.5)).max(4.0),
            },
            3 => Pattern::Dots { cell: (scale * rng.range(0.4, 0.8)).max(7.0) },
            _ => Pattern::Blend(
                Box::new(Self::random_inner(rng, scale, false)),
                Box::new(Self::random_inner(rng, scale, false)),
            ),
        };
        Texture { pattern, palette, scale, seed: rng.next_u64(), detail: rng.range(0.15, 0.3) }
    }

    /// Rough average colour, for keeping objects distinct from the background.
    pub fn mean_colour(&self) -> [f64; 3] {
        match &self.pattern {
            Pattern::Blend(a, b) => lerp3(a.mean_colour(), b.mean_colour(), 0.5),
            _ => lerp3(self.palette[0], self.palette[1], 0.5),
        }
    }

    /// Colour at local coordinates (u, v), channels in [0, 1].
    pub fn eval(&self, u: f64, v: f64) -> [f64; 3] {
        let [c0, c1, c2] = self.palette;
        let s = self.seed;
        let n = fbm(s, u, v, self.scale, 4);
        let base = match &self.pattern {
            Pattern::Noise => {
                let m = fbm(s ^ 1, u, v, self.scale * 0.7, 3);
                lerp3(lerp3(c0, c1, 0.5 + 0.5 * n), c2, (0.5 * m).max(0.0))
            }
            Pattern::Stripes { angle, period, warp } => {
                let d = (u * angle.cos() + v * angle.sin()) / period + warp * n;
                lerp3(c0, c1, 0.5 + 0.5 * (TAU * d).sin())
            }
            Pattern::Checker { angle, size } => {
                let (ca, sa) = (angle.cos(), angle.sin());
                let (a, b) = ((u * ca + v * sa) / size, (v * ca - u * sa) / size);
                let t = (0.5 + 2.0 * (PI * a).sin() * (PI * b).sin()).clamp(0.0, 1.0);
                lerp3(lerp3(c0, c1, t), c2, 0.25 + 0.25 * n)
            }
            Pattern::Dots { cell } => {
                let mut c = lerp3(c0, c1, 0.5 + 0.4 * n);
                let (ci, cj) = ((u / cell).floor() as i64, (v / cell).floor() as i64);
                for di in -1..=1 {
                    for dj in -1..=1 {
                        let h = hash(s ^ 0xD075, ci + di, cj + dj);
                        let cx = ((ci + di) as f64 + 0.2 + 0.6 * unit(h, 0)) * cell;
                        let cy = ((cj + dj) as f64 + 0.2 + 0.6 * unit(h, 1)) * cell;
                        let r = cell * (0.15 + 0.25 * unit(h, 2));
                        let cover = (r - ((u - cx).powi(2) + (v - cy).powi(2)).sqrt() + 0.5)
                            .clamp(0.0, 1.0);
                        let dot = if h >> 63 == 0 { c2 } else { lerp3(c2, [0.0; 3], 0.6) };
                        c = lerp3(c, dot, cover);
                    }
                }
                c
            }
            Pattern::Blend(a, b) => {
                let t = ((n + 0.15) / 0.3).clamp(0.0, 1.0);
                lerp3(a.eval(u, v), b.eval(u, v), t * t * (3.0 - 2.0 * t))
            }
        };
        let gain = 1.0 + self.detail * fbm(s ^ 2, u, v, 6.0, 2);
        base.map(|x| (x * gain).clamp(0.0, 1.0))
    }
}

/// A texture sampled on the integer lattice of local coordinates over a rectangle.
#[derive(Clone, Debug)]
pub(crate) struct Raster {
    x0: f64,
    y0: f64,
    w: usize,
    h: usize,
    data: Vec<[f32; 3]>,
}

impl Raster {
    /// Bakes `tex` over local [x0, x0 + w - 1] x [y0, y0 + h - 1]; values are 0..=255.
    pub fn bake(tex: &Texture, x0: f64, y0: f64, w: usize, h: usize) -> Self {
        let (w, h) = (w.max(2), h.max(2));
        let mut data = vec![[0f32; 3]; w * h];
        data.par_chunks_mut(w).enumerate().for_each(|(i, row)| {
            for (j, px) in row.iter_mut().enumerate() {
                *px = tex.eval(x0 + j as f64, y0 + i as f64).map(|c| (c * 255.0) as f32);
            }
        });
        Raster { x0, y0, w, h, data }
    }

    /// Bilinear sample; coordinates beyond the raster clamp to its border.
    #[inline]
    pub fn sample(&self, u: f64, v: f64) -> [f32; 3] {
        let fx = (u - self.x0).clamp(0.0, (self.w - 1) as f64);
        let fy = (v - self.y0).clamp(0.0, (self.h - 1) as f64);
        let (j, i) = ((fx as usize).min(self.w - 2), (fy as usize).min(self.h - 2));
        let (a, b) = ((fx - j as f64) as f32, (fy - i as f64) as f32);
        let k = i * self.w + j;
        let (p, q, r, s) =
            (self.data[k], self.data[k + 1], self.data[k + self.w], self.data[k + self.w + 1]);
        std::array::from_fn(|c| {
            let top = p[c] + (q[c] - p[c]) * a;
            let bot = r[c] + (s[c] - r[c]) * a;
            top + (bot - top) * b
        })
    }
}
