//! Fixtures and comparisons the trainer's golden tests share.

use crate::model::VitConfig;

/// The backend the goldens run on: ndarray, or in a build with `tch` libtorch's CPU device
/// (the libtorch that runs on GPUs, here with its CPU kernels).
#[cfg(not(feature = "tch"))]
pub type Golden = burn::backend::NdArray<f32>;
#[cfg(feature = "tch")]
pub type Golden = burn::backend::LibTorch<f32>;

/// A CPU backend with bfloat16 tensors: Flex, or libtorch's CPU device with `tch`.
#[cfg(not(feature = "tch"))]
pub type Bf16 = burn::backend::Flex;
#[cfg(feature = "tch")]
pub type Bf16 = burn::backend::LibTorch<f32>;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use mosic::tensors::HostTensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vit")
}

pub fn st(path: &Path) -> HashMap<String, HostTensor> {
    mosic::tensors::read_safetensors(path).unwrap().tensors.into_iter().collect()
}

pub fn to_tensor<BB: Backend, const D: usize>(t: &HostTensor) -> Tensor<BB, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), &Default::default())
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn host3<BB: Backend>(t: Tensor<BB, 3>) -> (Vec<usize>, Vec<f32>) {
    (t.dims().to_vec(), t.into_data().into_vec::<f32>().unwrap())
}

#[derive(serde::Deserialize)]
pub struct Case {
    pub case: String,
    pub timm_model: String,
    pub weights: String,
    pub input: String,
    pub config: VitConfig,
    pub state_dict: Vec<(String, Vec<usize>)>,
}

pub fn cases() -> Vec<(PathBuf, Case)> {
    let mut v: Vec<(PathBuf, Case)> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| {
            let dir = e.unwrap().path();
            let json = dir.join("case.json");
            json.exists().then(|| {
                (dir.clone(), serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap())
            })
        })
        .collect();
    v.sort_by(|a, b| a.1.case.cmp(&b.1.case));
    assert!(v.len() >= 6, "expected the generated fixture cases in {}", fixtures().display());
    v
}
