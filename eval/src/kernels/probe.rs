//! The linear probe's model: per-patch logits, the bilinear upsampling to the mask, softmax
//! cross-entropy on the labelled pixels and its gradient, on the host.

use crate::data::dense::{Bilinear, FeatureMap};
use crate::data::{Mask, IGNORE};
use mosic::rng::SplitMix64;
use rayon::prelude::*;

/// `logits = weight @ feature + bias` per patch; weight is `[classes, dim]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearProbe {
    pub dim: usize,
    pub classes: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Summed loss and gradients of a batch, before normalisation by the pixel count.
struct Grad {
    loss: f64,
    pixels: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LinearProbe {
    /// PyTorch's Conv2d default init: uniform(+-1/sqrt(dim)) for weight and bias.
    pub fn new(dim: usize, classes: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let b = 1.0 / (dim as f64).sqrt();
        let weight = (0..classes * dim).map(|_| rng.uniform(-b, b) as f32).collect();
        let bias = (0..classes).map(|_| rng.uniform(-b, b) as f32).collect();
        Self { dim, classes, weight, bias }
    }

    /// Patch logits `[h * w, classes]`.
    fn patch_logits(&self, f: &FeatureMap) -> Vec<f32> {
        assert_eq!(
            f.dim, self.dim,
            "features have {} channels, the probe takes {}",
            f.dim, self.dim
        );
        let mut out = Vec::with_capacity(f.len() * self.classes);
        for x in f.data.chunks(self.dim) {
            for c in 0..self.classes {
                let w = &self.weight[c * self.dim..(c + 1) * self.dim];
                out.push(self.bias[c] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        out
    }

    /// Class per pixel at the mask size.
    pub fn predict(&self, f: &FeatureMap, height: usize, width: usize) -> Vec<u32> {
        let up = Bilinear::new(f.height, f.width, height, width)
            .apply(&self.patch_logits(f), self.classes);
        up.chunks(self.classes)
            .map(|l| {
                l.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                    .0 as u32
            })
            .collect()
    }

    fn grad_one(&self, f: &FeatureMap, mask: &Mask) -> Grad {
        let c = self.classes;
        let bil = Bilinear::new(f.height, f.width, mask.height, mask.width);
        let up = bil.apply(&self.patch_logits(f), c);
        let mut dup = vec![0.0f32; up.len()];
        let (mut loss, mut pixels) = (0.0f64, 0usize);
        for ((l, d), &y) in up.chunks(c).zip(dup.chunks_mut(c)).zip(&mask.labels) {
            if y as u32 == IGNORE {
                continue;
            }
            let y = y as usize;
            assert!(y < c, "label {y} >= {c} classes");
            let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = l.iter().map(|&v| ((v - m) as f64).exp()).sum();
            loss += z.ln() + (m - l[y]) as f64;
            for (k, dk) in d.iter_mut().enumerate() {
                *dk = (((l[k] - m) as f64).exp() / z) as f32 - (k == y) as u8 as f32;
            }
            pixels += 1;
        }
        let dpatch = bil.apply_transposed(&dup, c);
        let mut gw = vec![0.0f32; c * self.dim];
        let mut gb = vec![0.0f32; c];
        for (x, d) in f.data.chunks(self.dim).zip(dpatch.chunks(c)) {
            for k in 0..c {
                gb[k] += d[k];
                for (g, v) in gw[k * self.dim..(k + 1) * self.dim].iter_mut().zip(x) {
                    *g += d[k] * v;
                }
            }
        }
        Grad { loss, pixels, weight: gw, bias: gb }
    }

    /// Mean cross-entropy over the batch's evaluated pixels and its gradient (weight, bias):
    /// `F.cross_entropy(F.interpolate(conv(x), size, mode="bilinear"), y, ignore_index=255)`.
    pub fn loss_and_grad(&self, batch: &[(&FeatureMap, &Mask)]) -> (f64, Vec<f32>, Vec<f32>) {
        let parts: Vec<Grad> = batch.par_iter().map(|(f, m)| self.grad_one(f, m)).collect();
        let mut total = Grad {
            loss: 0.0,
            pixels: 0,
            weight: vec![0.0; self.weight.len()],
            bias: vec![0.0; self.classes],
        };
        for p in parts {
            total.loss += p.loss;
            total.pixels += p.pixels;
            total.weight.iter_mut().zip(&p.weight).for_each(|(a, b)| *a += b);
            total.bias.iter_mut().zip(&p.bias).for_each(|(a, b)| *a += b);
        }
        let n = total.pixels.max(1) as f32;
        total.weight.iter_mut().for_each(|v| *v /= n);
        total.bias.iter_mut().for_each(|v| *v /= n);
        (total.loss / n as f64, total.weight, total.bias)
    }
}
