//! Dense patch features on the host and the bilinear upsampling every protocol uses to
//! bring them (or logits computed from them) to the label resolution.

/// Patch features of one image: `data[(y * width + x) * dim + c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMap {
    pub height: usize,
    pub width: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl FeatureMap {
    pub fn new(height: usize, width: usize, dim: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), height * width * dim, "feature map is not {height}x{width}x{dim}");
        Self { height, width, dim, data }
    }

    pub fn len(&self) -> usize {
        self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every vector scaled to unit length (zero vectors stay zero): clustering and retrieval
    /// compare directions, as Leopart and Hummingbird do.
    pub fn normalized(&self) -> FeatureMap {
        let mut data = self.data.clone();
        normalize_rows(&mut data, self.dim);
        FeatureMap { data, ..*self }
    }

    /// Bilinear resize to `height x width`, PyTorch's `interpolate(mode="bilinear", align_corners=False)`.
    pub fn upsample(&self, height: usize, width: usize) -> FeatureMap {
        let data =
            Bilinear::new(self.height, self.width, height, width).apply(&self.data, self.dim);
        FeatureMap { height, width, dim: self.dim, data }
    }
}

pub fn normalize_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
}

/// Source indices and weights of one output coordinate.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    w1: f32,
    w1_f64: f64,
}

fn taps(inp: usize, out: usize) -> Vec<Tap> {
    let scale = inp as f64 / out as f64;
    (0..out)
        .map(|o| {
            // align_corners=False: pixel centres line up; negative sources clamp to the edge.
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(inp - 1);
            let i1 = (i0 + 1).min(inp - 1);
            Tap { i0, i1, w1: (src - i0 as f64) as f32, w1_f64: src - i0 as f64 }
        })
        .collect()
}

/// A bilinear resize as a linear map from `in_h x in_w` to `out_h x out_w` positions, usable
/// forwards ([`Bilinear::apply`]) and transposed ([`Bilinear::apply_transposed`], the gradient).
#[derive(Clone, Debug)]
pub struct Bilinear {
    in_w: usize,
    in_h: usize,
    ys: Vec<Tap>,
    xs: Vec<Tap>,
}

impl Bilinear {
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Self {
        assert!(in_h > 0 && in_w > 0, "empty input grid");
        Self { in_w, in_h, ys: taps(in_h, out_h), xs: taps(in_w, out_w) }
    }

    pub fn out_len(&self) -> usize {
        self.ys.len() * self.xs.len()
    }

    /// The four (input position, weight) pairs of output position `o`.
    fn weights(&self, o: usize) -> [(usize, f32); 4] {
        let (y, x) = (self.ys[o / self.xs.len()], self.xs[o % self.xs.len()]);
        let (wy0, wx0) = (1.0 - y.w1, 1.0 - x.w1);
        let w = self.in_w;
        [
            (y.i0 * w + x.i0, wy0 * wx0),
            (y.i0 * w + x.i1, wy0 * x.w1),
            (y.i1 * w + x.i0, y.w1 * wx0),
            (y.i1 * w + x.i1, y.w1 * x.w1),
        ]
    }

    /// The map as a dense `[out_h * out_w, in_h * in_w]` row-major matrix (for a device's
    /// matrix products; four non-zeros a row, summed where taps coincide).
    pub fn matrix(&self) -> Vec<f32> {
        let inp = self.in_h * self.in_w;
        let mut m = vec![0.0f32; self.out_len() * inp];
        for o in 0..self.out_len() {
            for (i, w) in self.weights(o) {
                m[o * inp + i] += w;
            }
        }
        m
    }

    /// `input[in_h * in_w, dim]` -> `[out_h * out_w, dim]`.
    pub fn apply(&self, input: &[f32], dim: usize) -> Vec<f32> {
        assert_eq!(input.len(), self.in_h * self.in_w * dim);
        let mut out = vec![0.0f32; self.out_len() * dim];
        for (o, row) in out.chunks_mut(dim).enumerate() {
            for (i, w) in self.weights(o) {
                for (r, v) in row.iter_mut().zip(&input[i * dim..(i + 1) * dim]) {
                    *r += w * v;
                }
            }
        }
        out
    }

    /// [`Bilinear::apply`] computed in f64 and rounded to f32 at the end, as TimeT upsamples
    /// (`interpolate` on a double tensor, then `.float()`).
    pub fn apply_f64(&self, input: &[f32], dim: usize) -> Vec<f32> {
        assert_eq!(input.len(), self.in_h * self.in_w * dim);
        let mut out = vec![0.0f32; self.out_len() * dim];
        let mut acc = vec![0.0f64; dim];
        for (o, row) in out.chunks_mut(dim).enumerate() {
            acc.fill(0.0);
            for (i, w) in self.weights_f64(o) {
                for (r, v) in acc.iter_mut().zip(&input[i * dim..(i + 1) * dim]) {
                    *r += w * *v as f64;
                }
            }
            row.iter_mut().zip(&acc).for_each(|(r, a)| *r = *a as f32);
        }
        out
    }

    fn weights_f64(&self, o: usize) -> [(usize, f64); 4] {
        let (y, x) = (self.ys[o / self.xs.len()], self.xs[o % self.xs.len()]);
        let (wy1, wx1) = (y.w1_f64, x.w1_f64);
        let (wy0, wx0) = (1.0 - wy1, 1.0 - wx1);
        let w = self.in_w;
        [
            (y.i0 * w + x.i0, wy0 * wx0),
            (y.i0 * w + x.i1, wy0 * wx1),
            (y.i1 * w + x.i0, wy1 * wx0),
            (y.i1 * w + x.i1, wy1 * wx1),
        ]
    }

    /// The transpose: `grad[out_h * out_w, dim]` -> `[in_h * in_w, dim]`.
    pub fn apply_transposed(&self, grad: &[f32], dim: usize) -> Vec<f32> {
        assert_eq!(grad.len(), self.out_len() * dim);
        let mut out = vec![0.0f32; self.in_h * self.in_w * dim];
        for (o, row) in grad.chunks(dim).enumerate() {
            for (i, w) in self.weights(o) {
                for (r, v) in out[i * dim..(i + 1) * dim].iter_mut().zip(row) {
                    *r += w * v;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_the_adjoint() {
        // <A x, y> == <x, A^T y> for random x, y.
        let b = Bilinear::new(3, 4, 7, 5);
        let mut rng = mosic::rng::SplitMix64::new(1);
        let x: Vec<f32> = (0..12 * 2).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let y: Vec<f32> = (0..35 * 2).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let ax = b.apply(&x, 2);
        let aty = b.apply_transposed(&y, 2);
        let l: f32 = ax.iter().zip(&y).map(|(a, b)| a * b).sum();
        let r: f32 = x.iter().zip(&aty).map(|(a, b)| a * b).sum();
        assert!((l - r).abs() < 1e-5, "{l} vs {r}");
    }

    #[test]
    fn constant_maps_stay_constant_and_same_size_is_identity() {
        let f = FeatureMap::new(2, 3, 1, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(f.upsample(2, 3).data, f.data);
        let c = FeatureMap::new(2, 2, 1, vec![0.5; 4]);
        assert!(c.upsample(5, 9).data.iter().all(|v| (v - 0.5).abs() < 1e-7));
    }
}
