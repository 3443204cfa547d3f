//! Choosing the Burn backend at run time among those compiled in.
//!
//! The CPU backends `flex` (the default) and `ndarray` are always built; `cuda` (CubeCL,
//! NVIDIA), `tch` (libtorch) and the alternative CPU backend `candle` are cargo features.

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;

/// Work to run on whichever backend the user names.
pub trait WithBackend {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Flex: gemm's AVX-512/AVX2 kernels and SIMD elementwise ops (ndarray's products are 2-3x
/// slower on the same step; BENCHMARKS.md).
pub const DEFAULT: &str = "flex";

pub fn available() -> Vec<&'static str> {
    let mut v = vec!["flex", "ndarray"];
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

/// The allocator of the `mosic` binary and the benchmarks.
pub type Allocator = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its option enum, v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process instead of returning it to the kernel after a delay: a
/// training step frees and allocates the same large buffers every time, and memory handed back
/// costs a page fault per 4 KiB on reuse (0-12% of a CPU step, BENCHMARKS.md). The resident
/// set then stays at its high-water mark.
pub fn keep_freed_memory() {
    // SAFETY: sets an integer option; mimalloc reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Host threads a no-grad forward pass is split over. The CPU backends spread only their
/// matrix products over cores and run every other op on the calling thread, so independent
/// images (or points) go to threads of their own; on GPUs one call keeps the device busy.
pub fn forward_chunks<B: burn::tensor::backend::Backend>(device: &B::Device) -> usize {
    if is_cpu::<B>(device) {
        rayon::current_num_threads().max(1)
    } else {
        1
    }
}

/// Whether `B` (or the backend under its autodiff) computes on the host.
pub fn is_cpu<B: burn::tensor::backend::Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    let inner = name.strip_prefix("autodiff<").and_then(|n| n.strip_suffix('>')).unwrap_or(&name);
    matches!(inner, "ndarray" | "flex" | "candle<cpu>")
}

pub fn dispatch<W: WithBackend>(name: &str, work: W) -> Result<W::Output> {
    use burn::backend::Autodiff;
    match name {
        "ndarray" => work.run::<Autodiff<burn::backend::NdArray<f32>>>(Default::default()),
        "flex" => work.run::<Autodiff<burn::backend::Flex>>(Default::default()),
        #[cfg(feature = "candle")]
        "candle" => work.run::<Autodiff<burn::backend::Candle<f32>>>(Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => work.run::<Autodiff<burn::backend::Cuda<f32>>>(Default::default()),
        #[cfg(feature = "tch")]
        "tch" => work.run::<Autodiff<burn::backend::LibTorch<f32>>>(tch_device()),
        other => bail!(
            "backend '{other}' is not built into this binary (available: {}); build with --features {other} for cuda, tch or candle",
            available().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads and sets integer options.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // mimalloc v3's default purge_delay is 1000 (ms); the neighbouring options default to
        // 1 and 0, so a wrong index shows here.
        assert!(
            matches!(get(), 1000 | -1),
            "option {} is {}, not purge_delay",
            super::MI_OPTION_PURGE_DELAY,
            get()
        );
        super::keep_freed_memory();
        assert_eq!(get(), -1);
    }

    #[test]
    fn cpu_backends_are_recognised_under_autodiff() {
        use burn::backend::{Autodiff, Flex, NdArray};
        assert!(super::is_cpu::<Flex>(&Default::default()));
        assert!(super::is_cpu::<Autodiff<NdArray<f32>>>(&Default::default()));
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
