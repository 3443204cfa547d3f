//! Projection head and prototypes.
//!
//! The head is an MLP of linear layers with exact GELU between them. Prototypes are
//! `K` vectors on the unit sphere; features are scored against them by cosine similarity.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Projection head and prototype sizes. Defaults follow the paper: hidden `[2048, 2048]`
/// (three linear layers), output 256, 100 prototypes; the released code uses hidden
/// `[1024, 1024, 512]` ([`HeadConfig::released`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Backbone feature size.
    pub in_dim: usize,
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    #[serde(default = "default_out_dim")]
    pub out_dim: usize,
    /// Number of prototypes `K`.
    #[serde(default = "default_num_prototypes")]
    pub num_prototypes: usize,
}

fn default_hidden() -> Vec<usize> {
    vec![2048, 2048]
}
fn default_out_dim() -> usize {
    256
}
fn default_num_prototypes() -> usize {
    100
}

impl HeadConfig {
    /// The paper's head for a backbone of width `in_dim`.
    pub fn new(in_dim: usize) -> Self {
        Self {
            in_dim,
            hidden: default_hidden(),
            out_dim: default_out_dim(),
            num_prototypes: default_num_prototypes(),
        }
    }

    /// The released code's head.
    pub fn released(in_dim: usize) -> Self {
        Self { hidden: vec![1024, 1024, 512], ..Self::new(in_dim) }
    }

    /// Layers are initialised as PyTorch's `nn.Linear` (Burn's default).
    pub fn init_head<B: Backend>(&self, device: &B::Device) -> ProjectionHead<B> {
        let dims: Vec<usize> = std::iter::once(self.in_dim)
            .chain(self.hidden.iter().copied())
            .chain([self.out_dim])
            .collect();
        let layers = dims.windows(2).map(|d| LinearConfig::new(d[0], d[1]).init(device)).collect();
        ProjectionHead { layers }
    }

    /// Standard normal rows; the trainer normalises them before every step.
    pub fn init_prototypes<B: Backend>(&self, device: &B::Device) -> Prototypes<B> {
        let init = Initializer::Normal { mean: 0.0, std: 1.0 };
        Prototypes { weight: init.init([self.num_prototypes, self.out_dim], device) }
    }
}

#[derive(Module, Debug)]
pub struct ProjectionHead<B: Backend> {
    pub layers: Vec<Linear<B>>,
}

impl<B: Backend> ProjectionHead<B> {
    /// `[..., in_dim]` -> `[..., out_dim]`; no activation after the last layer.
    pub fn forward<const D: usize>(&self, mut x: Tensor<B, D>) -> Tensor<B, D> {
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = gelu_exact(x);
            }
        }
        x
    }
}

/// `x Φ(x)` written with `erf`: Burn 0.21's fused `gelu` has an exact forward but the
/// tanh-approximation's derivative in its backward, which is off by up to ~1e-3.
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * ((x / std::f32::consts::SQRT_2).erf() + 1.0) * 0.5
}

/// `x / max(‖x‖, 1e-12)` along `dim`, as `torch.nn.functional.normalize`.
pub fn l2_normalize<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let norm = x.clone().powi_scalar(2).sum_dim(dim).sqrt().clamp_min(1e-12);
    x / norm
}

#[derive(Module, Debug)]
pub struct Prototypes<B: Backend> {
    /// `[K, out_dim]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Prototypes<B> {
    /// A copy with unit rows, same parameter id (optimizer state carries over). As in SwAV
    /// the projection onto the sphere is not differentiated through.
    pub fn normalized(&self) -> Self {
        let weight = self.weight.clone().map(|w| {
            let require_grad = w.is_require_grad();
            // detached before re-marking: only a leaf can require a gradient
            l2_normalize(w, 1).detach().set_require_grad(require_grad)
        });
        Self { weight }
    }

    pub fn num_prototypes(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Cosine scores of `z` `[..., out_dim]` against the (already unit) prototypes:
    /// `[..., K]`.
    pub fn scores<const D: usize>(&self, z: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = z.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let z = l2_normalize(z, D - 1).reshape([rows, dims[D - 1]]);
        let s = z.matmul(self.weight.val().transpose());
        dims[D - 1] = self.num_prototypes();
        s.reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type B = Autodiff<NdArray<f32>>;

    #[test]
    fn head_shapes_and_unit_prototypes() {
        let dev = Default::default();
        let cfg = HeadConfig { in_dim: 12, hidden: vec![10, 9], out_dim: 7, num_prototypes: 5 };
        let head = cfg.init_head::<B>(&dev);
        assert_eq!(head.layers.len(), 3);
        let protos = cfg.init_prototypes::<B>(&dev).normalized();
        let x = Tensor::<B, 4>::ones([2, 3, 4, 12], &dev);
        let s = protos.scores(head.forward(x));
        assert_eq!(s.dims(), [2, 3, 4, 5]);
        let max = s.abs().max().into_scalar();
        assert!(max <= 1.0 + 1e-5, "cosine score {max}");
        let norms = protos.weight.val().powi_scalar(2).sum_dim(1).sqrt();
        let dev_from_one = (norms - 1.0).abs().max().into_scalar();
        assert!(dev_from_one < 1e-6);
        assert!(protos.weight.val().is_require_grad());
        assert_eq!(HeadConfig::released(384).hidden, vec![1024, 1024, 512]);
        let parsed: HeadConfig = serde_json::from_str(r#"{"in_dim": 384}"#).unwrap();
        assert_eq!(parsed, HeadConfig::new(384));
    }

    #[test]
    fn gelu_exact_matches_erf_formula_and_derivative() {
        let dev = Default::default();
        let xs = [-3.0f32, -1.0, -0.3, 0.0, 0.5, 2.0];
        let x = Tensor::<B, 1>::from_floats(xs, &dev).require_grad();
        let y = gelu_exact(x.clone());
        let g = y.clone().sum().backward();
        let gx = x.grad(&g).unwrap().into_data().to_vec::<f32>().unwrap();
        let y = y.into_data().to_vec::<f32>().unwrap();
        for (i, &v) in xs.iter().enumerate() {
            let v = v as f64;
            let cdf = 0.5 * (1.0 + erf_series(v / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((y[i] as f64 - v * cdf).abs() < 1e-6);
            assert!((gx[i] as f64 - (cdf + v * pdf)).abs() < 1e-6, "gelu'({v})");
        }
    }

    /// Maclaurin series of erf, exact to f64 rounding for the small |x| used here.
    fn erf_series(x: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
