//! Choosing the Burn backend at run time among those compiled in.
//!
//! `ndarray` (CPU) is always built; `cuda` (CubeCL, NVIDIA), `tch` (libtorch) and the
//! alternative CPU backends `flex` and `candle` are cargo features.

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;

/// Work to run on whichever backend the user names.
pub trait WithBackend {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

pub const DEFAULT: &str = "ndarray";

pub fn available() -> Vec<&'static str> {
    let mut v = vec!["ndarray"];
    if cfg!(feature = "flex") {
        v.push("flex");
    }
    if cfg!(feature = "candle") {
        v.push("candle");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "tch") {
        v.push("tch");
    }
    v
}

/// Backends with bfloat16 tensors (`model.precision = "bf16"`).
pub fn has_bf16(name: &str) -> bool {
    matches!(name, "cuda" | "tch" | "flex" | "candle")
}

/// Refuses a precision the backend cannot run, before any work.
pub fn check_precision(name: &str, precision: crate::model::Precision) -> Result<()> {
    if precision == crate::model::Precision::Bf16 && !has_bf16(name) {
        bail!("model.precision = \"bf16\" needs a backend with bfloat16 tensors (cuda, tch, flex, candle); {name} has none: use \"fp32\" or --backend");
    }
    Ok(())
}

pub fn dispatch<W: WithBackend>(name: &str, work: W) -> Result<W::Output> {
    use burn::backend::Autodiff;
    match name {
        "ndarray" => work.run::<Autodiff<burn::backend::NdArray<f32>>>(Default::default()),
        #[cfg(feature = "flex")]
        "flex" => work.run::<Autodiff<burn::backend::Flex>>(Default::default()),
        #[cfg(feature = "candle")]
        "candle" => work.run::<Autodiff<burn::backend::Candle<f32>>>(Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => work.run::<Autodiff<burn::backend::Cuda<f32>>>(Default::default()),
        #[cfg(feature = "tch")]
        "tch" => work.run::<Autodiff<burn::backend::LibTorch<f32>>>(tch_device()),
        other => bail!(
            "backend '{other}' is not built into this binary (available: {}); build with --features {other} for cuda, tch, flex or candle",
            available().join(", ")
        ),
    }
}

#[cfg(feature = "tch")]
fn tch_device() -> burn::backend::libtorch::LibTorchDevice {
    // The GPU unless MOSIC_TCH_DEVICE=cpu (libtorch without CUDA, or CPU comparisons).
    match std::env::var("MOSIC_TCH_DEVICE").as_deref() {
        Ok("cpu") => burn::backend::libtorch::LibTorchDevice::Cpu,
        _ => burn::backend::libtorch::LibTorchDevice::Cuda(0),
    }
}
