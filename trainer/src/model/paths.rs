//! Parameters by their path in the module tree (`backbone.blocks.11.attn.qkv.weight`), not by
//! Burn's per-process ids, so checkpoints, optimiser state and the teacher line up across runs
//! and resumes: read them out, assign them, freeze them, save and load them.

use anyhow::{bail, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use mosic::tensors::HostTensor;

#[derive(Default)]
pub(crate) struct PathTracker(Vec<String>);

impl PathTracker {
    pub(crate) fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    pub(crate) fn exit(&mut self) {
        self.0.pop();
    }
    pub(crate) fn key(&self) -> String {
        self.0.join(".")
    }
}

struct Collect<'a, F: FnMut(&str) -> bool> {
    path: PathTracker,
    keep: F,
    out: &'a mut BTreeMap<String, HostTensor>,
}

impl<B: Backend, F: FnMut(&str) -> bool> ModuleVisitor<B> for Collect<'_, F> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = self.path.key();
        if (self.keep)(&key) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let data = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data");
            self.out.insert(key, HostTensor::new(shape, data));
        }
    }
}

/// Every float parameter (or those `keep` selects) by path.
pub fn collect<B: Backend, M: Module<B>>(
    module: &M,
    keep: impl FnMut(&str) -> bool,
) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    module.visit(&mut Collect { path: PathTracker::default(), keep, out: &mut out });
    out
}

struct Assign<'a, B: Backend> {
    path: PathTracker,
    values: &'a BTreeMap<String, HostTensor>,
    device: B::Device,
    missing: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Assign<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = self.path.key();
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims().to_vec();
        match self.values.get(&key) {
            Some(HostTensor { shape, data }) if *shape == dims => {
                let rg = tensor.is_require_grad();
                let t = Tensor::<B, D>::from_data(
                    TensorData::new(data.clone(), shape.clone()),
                    &self.device,
                )
                .set_require_grad(rg);
                Param::from_mapped_value(id, t, mapper)
            }
            Some(HostTensor { shape, .. }) => {
                self.missing.push(format!("{key} (shape {shape:?}, expected {dims:?})"));
                Param::from_mapped_value(id, tensor, mapper)
            }
            None => {
                self.missing.push(key);
                Param::from_mapped_value(id, tensor, mapper)
            }
        }
    }
}

/// Replaces every float parameter by the value of the same path; errors list what is missing.
pub fn assign<B: Backend, M: Module<B>>(
    module: M,
    values: &BTreeMap<String, HostTensor>,
    device: &B::Device,
    what: &Path,
) -> Result<M> {
    let mut a = Assign::<B> {
        path: PathTracker::default(),
        values,
        device: device.clone(),
        missing: Vec::new(),
    };
    let m = module.map(&mut a);
    if !a.missing.is_empty() {
        bail!("{}: missing or mis-shaped tensors: {}", what.display(), a.missing.join(", "));
    }
    Ok(m)
}

struct Freeze<F: FnMut(&str) -> bool> {
    path: PathTracker,
    trainable: F,
}

impl<B: Backend, F: FnMut(&str) -> bool> ModuleMapper<B> for Freeze<F> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let rg = (self.trainable)(&self.path.key());
        param.set_require_grad(rg)
    }
}

/// Marks the parameters `trainable` selects as requiring gradients and the rest as frozen.
pub fn freeze<B: Backend, M: Module<B>>(module: M, trainable: impl FnMut(&str) -> bool) -> M {
    module.map(&mut Freeze { path: PathTracker::default(), trainable })
}

pub fn save_safetensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let tensors = tensors.iter().map(|(k, t)| (k.as_str(), t));
    Ok(mosic::tensors::write_safetensors(path, tensors, &HashMap::new())?)
}

pub fn load_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    Ok(mosic::tensors::read_safetensors(path)?.tensors)
}
