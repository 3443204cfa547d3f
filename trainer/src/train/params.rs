//! Training by parameter path: AdamW with two learning rates, the update gate that skips a
//! non-finite step on the device, gradient norms, and the EMA teacher.

use crate::model::paths::PathTracker;
use anyhow::{Context, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::collections::{BTreeMap, HashMap};

pub use mosic::tensors::HostTensor;

/// AdamW with decoupled weight decay (as torch.optim.AdamW) and two learning rates: the
/// backbone's and the head's (head and prototypes). Tensors of rank 1 (biases, norms,
/// layer scales) get no weight decay.
pub struct AdamW<B: Backend> {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Completed steps (for bias correction).
    pub steps: u64,
    moments: HashMap<String, (Tensor<B, 1>, Tensor<B, 1>)>,
}

struct AdamStep<'a, B: AutodiffBackend> {
    path: PathTracker,
    grads: &'a GradientsParams,
    opt: &'a mut AdamW<B::InnerBackend>,
    lr_backbone: f64,
    lr_head: f64,
    gate: &'a UpdateGate<B::InnerBackend>,
}

/// What decides an update on the device, without a host read: `scale` `[1]` multiplies the
/// gradients (global-norm clipping), and where `skip` `[1]` is true (a non-finite loss or
/// gradient) parameters and moments keep their values, as PyTorch's GradScaler skips a step.
pub struct UpdateGate<B: Backend> {
    pub scale: Tensor<B, 1>,
    pub skip: Tensor<B, 1, burn::tensor::Bool>,
}

impl<B: Backend> UpdateGate<B> {
    /// Scale 1, never skip.
    pub fn open(device: &B::Device) -> Self {
        Self {
            scale: Tensor::ones([1], device),
            skip: Tensor::<B, 1>::zeros([1], device).greater_elem(0.5),
        }
    }
}

impl<B: AutodiffBackend> ModuleMapper<B> for AdamStep<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.get::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let key = self.path.key();
        let lr = if key.starts_with("backbone.") { self.lr_backbone } else { self.lr_head };
        let o = &mut *self.opt;
        let t = (o.steps + 1) as i32;
        let x = tensor.inner();
        let shape = x.shape();
        let n = shape.num_elements();
        let g = grad.reshape([n]) * self.gate.scale.clone();
        let device = g.device();
        let (m0, v0) = o
            .moments
            .remove(&key)
            .unwrap_or_else(|| (Tensor::zeros([n], &device), Tensor::zeros([n], &device)));
        let m = m0.clone().mul_scalar(o.beta1).add(g.clone().mul_scalar(1.0 - o.beta1));
        let v = v0.clone().mul_scalar(o.beta2).add(g.powi_scalar(2).mul_scalar(1.0 - o.beta2));
        let mhat = m.clone().div_scalar(1.0 - o.beta1.powi(t));
        let vhat = v.clone().div_scalar(1.0 - o.beta2.powi(t));
        let decay = if D >= 2 { o.weight_decay } else { 0.0 };
        let update = mhat.div(vhat.sqrt().add_scalar(o.eps)).mul_scalar(lr);
        let x0 = x.reshape([n]);
        let x1 = x0.clone().mul_scalar(1.0 - lr * decay).sub(update);
        let skip = self.gate.skip.clone().expand([n]);
        let (x, m, v) = (
            x1.mask_where(skip.clone(), x0),
            m.mask_where(skip.clone(), m0),
            v.mask_where(skip, v0),
        );
        o.moments.insert(key, (m, v));
        Param::from_mapped_value(id, Tensor::from_inner(x.reshape(shape)).require_grad(), mapper)
    }
}

impl<B: Backend> AdamW<B> {
    pub fn new(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Self { beta1, beta2, eps, weight_decay, steps: 0, moments: HashMap::new() }
    }

    /// One step over every parameter that has a gradient, as `gate` allows.
    pub fn step<AB: AutodiffBackend<InnerBackend = B>, M: Module<AB>>(
        &mut self,
        module: M,
        grads: &GradientsParams,
        lr_backbone: f64,
        lr_head: f64,
        gate: &UpdateGate<B>,
    ) -> M {
        let mut s = AdamStep::<AB> {
            path: PathTracker::default(),
            grads,
            opt: self,
            lr_backbone,
            lr_head,
            gate,
        };
        let m = module.map(&mut s);
        self.steps += 1;
        m
    }

    /// Moments as host tensors (`m.<path>`, `v.<path>`) for checkpoints.
    pub fn state(&self) -> BTreeMap<String, HostTensor> {
        let mut out = BTreeMap::new();
        for (k, (m, v)) in &self.moments {
            for (p, t) in [("m", m), ("v", v)] {
                let data =
                    t.clone().into_data().convert::<f32>().to_vec::<f32>().expect("f32 data");
                out.insert(format!("{p}.{k}"), HostTensor::new(vec![data.len()], data));
            }
        }
        out
    }

    pub fn load_state(
        &mut self,
        state: &BTreeMap<String, HostTensor>,
        steps: u64,
        device: &B::Device,
    ) -> Result<()> {
        self.moments.clear();
        self.steps = steps;
        for (k, HostTensor { data: m, .. }) in state.iter().filter(|(k, _)| k.starts_with("m.")) {
            let key = &k[2..];
            let HostTensor { data: v, .. } = state
                .get(&format!("v.{key}"))
                .with_context(|| format!("optimiser state lacks v.{key}"))?;
            let t = |d: &Vec<f32>| {
                Tensor::<B, 1>::from_data(TensorData::new(d.clone(), [d.len()]), device)
            };
            self.moments.insert(key.to_string(), (t(m), t(v)));
        }
        Ok(())
    }
}

struct GradNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(a) => a.add(s),
                None => s,
            });
        }
    }
}

/// The sum of squares of all gradients, `[1]`, left on the device.
pub fn grad_sq_sum<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &GradientsParams,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let mut v = GradNorm::<B> { grads, sum: None };
    module.visit(&mut v);
    v.sum.unwrap_or_else(|| Tensor::zeros([1], device))
}

struct Grads<'a, B: AutodiffBackend> {
    path: PathTracker,
    grads: &'a GradientsParams,
    out: BTreeMap<String, HostTensor>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let shape = g.dims().to_vec();
            let data = g.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data");
            self.out.insert(self.path.key(), HostTensor::new(shape, data));
        }
    }
}

/// The gradients of `module`'s parameters by path, on the host.
pub fn collect_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &GradientsParams,
) -> BTreeMap<String, HostTensor> {
    let mut v = Grads::<B> {
        path: PathTracker::default(),
        grads,
        out: BTreeMap::new(),
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
    v.out
}

struct Ema<'a, B: Backend> {
    path: PathTracker,
    student: &'a HashMap<String, Tensor<B, 1>>,
    momentum: f64,
}

impl<B: Backend> ModuleMapper<B> for Ema<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match self.student.get(&self.path.key()) {
            Some(s) => {
                let s = s.clone();
                let m = self.momentum;
                param.map(|t| {
                    let shape = t.shape();
                    t.mul_scalar(m).add(s.reshape(shape).mul_scalar(1.0 - m))
                })
            }
            None => param,
        }
    }
}

struct Flat<'a, B: AutodiffBackend> {
    path: PathTracker,
    out: &'a mut HashMap<String, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flat<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if t.is_require_grad() {
            let n = t.shape().num_elements();
            self.out.insert(self.path.key(), t.inner().reshape([n]));
        }
    }
}

/// teacher <- momentum * teacher + (1 - momentum) * student, for the student's trainable
/// parameters (frozen ones are equal in both and stay so).
pub fn ema_update<B: AutodiffBackend, MS: Module<B>, MT: Module<B::InnerBackend>>(
    teacher: MT,
    student: &MS,
    momentum: f64,
) -> MT {
    let mut flat = HashMap::new();
    student.visit(&mut Flat::<B> { path: PathTracker::default(), out: &mut flat });
    teacher.map(&mut Ema { path: PathTracker::default(), student: &flat, momentum })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::paths::{assign, collect, freeze};
    use burn::backend::{Autodiff, NdArray};
    use burn::module::AutodiffModule;
    use burn::nn::{Linear, LinearConfig};
    use std::path::Path;

    type AB = Autodiff<NdArray<f32>>;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        backbone: Linear<B>,
        head: Linear<B>,
    }

    fn net() -> Net<AB> {
        let d = Default::default();
        Net { backbone: LinearConfig::new(2, 2).init(&d), head: LinearConfig::new(2, 1).init(&d) }
    }

    #[test]
    fn paths_name_every_parameter() {
        let keys: Vec<String> = collect::<AB, _>(&net(), |_| true).into_keys().collect();
        assert_eq!(keys, ["backbone.bias", "backbone.weight", "head.bias", "head.weight"]);
    }

    #[test]
    fn adamw_matches_the_formula() {
        // One step from zero moments: update = lr * g / (|g| + eps) elementwise (bias-corrected),
        // decay only on the rank-2 weights, backbone at its own lr.
        let n = net();
        let before = collect::<AB, _>(&n, |_| true);
        let x = Tensor::<AB, 2>::from_data([[1.0f32, -2.0]], &Default::default());
        let loss = n.head.forward(n.backbone.forward(x)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &n);
        let g_head_bias: f32 = 1.0; // d(sum)/d(bias)
        let mut opt = AdamW::<NdArray<f32>>::new(0.9, 0.999, 1e-8, 0.1);
        let n = opt.step(n, &grads, 0.01, 0.1, &UpdateGate::open(&Default::default()));
        let after = collect::<AB, _>(&n, |_| true);
        let hb = (before["head.bias"].data[0], after["head.bias"].data[0]);
        assert!((hb.1 - (hb.0 - 0.1 * g_head_bias.signum())).abs() < 1e-5, "{hb:?}");
        let (w0, w1) = (&before["backbone.weight"].data, &after["backbone.weight"].data);
        for (a, b) in w0.iter().zip(w1) {
            // |update| = lr * 1 (sign of the gradient) plus decoupled decay lr * wd * w
            let moved = (b - a * (1.0 - 0.01 * 0.1)).abs();
            assert!((moved - 0.01).abs() < 1e-4 || moved < 1e-6, "{a} -> {b}");
        }
        assert_eq!(opt.steps, 1);
        // State round-trips.
        let mut opt2 = AdamW::<NdArray<f32>>::new(0.9, 0.999, 1e-8, 0.1);
        opt2.load_state(&opt.state(), opt.steps, &Default::default()).unwrap();
        assert_eq!(opt2.state(), opt.state());
    }

    /// A skipping gate (a non-finite loss or gradient) leaves weights and moments as they were,
    /// even when the gradients and the scale are NaN.
    #[test]
    fn a_skipping_gate_leaves_weights_and_moments_alone() {
        let dev = Default::default();
        let n = net();
        let x = Tensor::<AB, 2>::from_data([[1.0f32, -2.0]], &dev);
        let loss = n.head.forward(n.backbone.forward(x)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &n);
        let mut opt = AdamW::<NdArray<f32>>::new(0.9, 0.999, 1e-8, 0.1);
        let n = opt.step(n, &grads, 0.01, 0.1, &UpdateGate::open(&dev));
        let (weights, moments) = (collect::<AB, _>(&n, |_| true), opt.state());
        let x = Tensor::<AB, 2>::from_data([[f32::NAN, 1.0]], &dev);
        let loss = n.head.forward(n.backbone.forward(x)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &n);
        let skip = UpdateGate {
            scale: Tensor::from_floats([f32::NAN], &dev),
            skip: Tensor::<NdArray<f32>, 1>::ones([1], &dev).greater_elem(0.5),
        };
        let n = opt.step(n, &grads, 0.01, 0.1, &skip);
        assert_eq!(collect::<AB, _>(&n, |_| true), weights);
        assert_eq!(opt.state(), moments);
        // A scale of 0.5 is the gradient halved: Adam's first step does not care, the moments do.
        let mut a = AdamW::<NdArray<f32>>::new(0.9, 0.999, 1e-8, 0.0);
        let x = Tensor::<AB, 2>::from_data([[1.0f32, 3.0]], &dev);
        let loss = n.head.forward(n.backbone.forward(x)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &n);
        let half = UpdateGate {
            scale: Tensor::from_floats([0.5], &dev),
            skip: UpdateGate::<NdArray<f32>>::open(&dev).skip,
        };
        a.step(n, &grads, 0.01, 0.1, &half);
        let m = &a.state()["m.head.bias"].data[0];
        assert!((m - 0.1 * 0.5).abs() < 1e-6, "{m}");
    }

    #[test]
    fn ema_moves_the_teacher_towards_trainable_student_weights() {
        let student = freeze(net(), |p| p.starts_with("head."));
        let teacher = assign(
            student.valid(),
            &collect::<AB, _>(&student, |_| true),
            &Default::default(),
            Path::new("t"),
        )
        .unwrap();
        let shifted = collect::<AB, _>(&student, |_| true)
            .into_iter()
            .map(|(k, t)| (k, HostTensor::new(t.shape, t.data.iter().map(|x| x + 1.0).collect())))
            .collect();
        let teacher = assign(teacher, &shifted, &Default::default(), Path::new("t")).unwrap();
        let t = ema_update::<AB, _, _>(teacher, &student, 0.75);
        let (s, t) =
            (collect::<AB, _>(&student, |_| true), collect::<NdArray<f32>, _>(&t, |_| true));
        // head: 0.75 (s + 1) + 0.25 s = s + 0.75; backbone (frozen): untouched, s + 1.
        assert!((t["head.bias"].data[0] - (s["head.bias"].data[0] + 0.75)).abs() < 1e-6);
        assert!((t["backbone.bias"].data[0] - (s["backbone.bias"].data[0] + 1.0)).abs() < 1e-6);
    }
}
