//! Choosing the Burn backend at run time among those compiled in.
//!
//! The CPU backends `flex` (the default) and `ndarray` are always built; `cuda` (CubeCL,
//! NVIDIA), `tch` (libtorch) and the alternative CPU backend `candle` are cargo features.

use anyhow::{bail, ensure, Result};
use burn::tensor::backend::AutodiffBackend;

/// Where the matrix products of a forward pass run. `Bf16` follows PyTorch's autocast: every
/// linear layer and the attention take bfloat16 inputs and weights, while the residual
/// stream, LayerNorm, LayerScale and the outputs stay float32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

/// Work to run on whichever backend the user names.
pub trait WithBackend: Sized {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;

    /// Work that spans several devices of the backend (training over N devices); by default
    /// it runs on the first.
    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
        let first = devices.into_iter().next().ok_or_else(|| anyhow::anyhow!("no device"))?;
        self.run::<B>(first)
    }
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

/// Where a backend computes: `cpu` or `cuda:N` (`cuda` is `cuda:0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            t => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => bail!("--device {s:?}: expected cpu, cuda or cuda:N"),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A backend and its devices (one worker each), checked: the backend is built in, every
/// device exists, and has bfloat16 when the run asks for it. Made by [`Target::resolve`]
/// before any work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub backend: String,
    pub devices: Vec<Device>,
}

/// `--devices`: a count of CPU workers (`2`) or a comma list (`cuda:0,cuda:1`; a device may
/// repeat: two workers on one GPU).
pub fn parse_devices(spec: &str) -> Result<Vec<Device>> {
    if let Ok(n) = spec.trim().parse::<usize>() {
        ensure!(n >= 1, "--devices {spec}: at least one device");
        return Ok(vec![Device::Cpu; n]);
    }
    let list: Vec<Device> = spec.split(',').map(str::parse).collect::<Result<_>>()?;
    ensure!(!list.is_empty(), "--devices {spec:?}: no device");
    Ok(list)
}

impl Target {
    /// Checks `backend` on `devices` (see [`parse_devices`]; a single device too) for a run at
    /// `precision`; every problem is one line that names the option to change.
    pub fn resolve(backend: &str, devices: &str, precision: Precision) -> Result<Self> {
        let devices = parse_devices(devices)?;
        for d in &devices {
            Self::check(backend, *d, precision)?;
        }
        Ok(Self { backend: backend.to_string(), devices })
    }

    /// The first device (the only one of a single-device target).
    pub fn device(&self) -> Device {
        self.devices[0]
    }

    fn check(backend: &str, device: Device, precision: Precision) -> Result<()> {
        if !available().contains(&backend) {
            bail!(
                "--backend {backend}: not built into this binary (built in: {}); build with --features {backend} for cuda, tch or candle",
                available().join(", ")
            );
        }
        match (backend, device) {
            ("flex" | "ndarray" | "candle", Device::Cuda(_)) => bail!(
                "--device {device}: the {backend} backend runs on the CPU only; use --device cpu, or --backend cuda or tch for a GPU"
            ),
            ("cuda", Device::Cpu) => {
                bail!("--device cpu: the cuda backend runs on NVIDIA GPUs only; use --device cuda:N, or --backend flex for the CPU")
            }
            #[cfg(feature = "cuda")]
            ("cuda", Device::Cuda(n)) => gpu::check_cuda(n, precision)?,
            #[cfg(feature = "tch")]
            ("tch", d) => gpu::check_tch(d, precision)?,
            _ => {}
        }
        if precision == Precision::Bf16 && !has_bf16(backend) {
            bail!("model.precision = \"bf16\": the {backend} backend has no bfloat16 tensors (cuda, tch, flex, candle have); use \"fp32\" or another --backend");
        }
        Ok(())
    }

    /// The CPU on the default backend (tests, tools).
    pub fn cpu() -> Self {
        Self { backend: DEFAULT.to_string(), devices: vec![Device::Cpu] }
    }
}

/// Backends with bfloat16 tensors (`model.precision = "bf16"`).
pub fn has_bf16(name: &str) -> bool {
    matches!(name, "cuda" | "tch" | "flex" | "candle")
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

/// Runs `work` on the target's backend and devices.
pub fn dispatch<W: WithBackend>(target: &Target, work: W) -> Result<W::Output> {
    use burn::backend::Autodiff;
    let cpu = |what: &str| -> Result<usize> {
        if let Some(d) = target.devices.iter().find(|d| **d != Device::Cpu) {
            bail!("--device {d}: {what} runs on the CPU only");
        }
        Ok(target.devices.len())
    };
    match target.backend.as_str() {
        "ndarray" => {
            let n = cpu("ndarray")?;
            work.run_on::<Autodiff<burn::backend::NdArray<f32>>>(vec![Default::default(); n])
        }
        "flex" => {
            let n = cpu("flex")?;
            work.run_on::<Autodiff<burn::backend::Flex>>(vec![Default::default(); n])
        }
        #[cfg(feature = "candle")]
        "candle" => {
            let n = cpu("candle")?;
            work.run_on::<Autodiff<burn::backend::Candle<f32>>>(vec![Default::default(); n])
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            let devices = target
                .devices
                .iter()
                .map(|d| match d {
                    Device::Cuda(index) => Ok(burn::backend::cuda::CudaDevice { index: *index }),
                    Device::Cpu => bail!("--device cpu: the cuda backend runs on NVIDIA GPUs only"),
                })
                .collect::<Result<Vec<_>>>()?;
            work.run_on::<Autodiff<burn::backend::Cuda<f32>>>(devices)
        }
        #[cfg(feature = "tch")]
        "tch" => {
            use burn::backend::libtorch::LibTorchDevice;
            let devices = target
                .devices
                .iter()
                .map(|d| match d {
                    Device::Cpu => LibTorchDevice::Cpu,
                    Device::Cuda(n) => LibTorchDevice::Cuda(*n),
                })
                .collect();
            work.run_on::<Autodiff<burn::backend::LibTorch<f32>>>(devices)
        }
        other => bail!(
            "--backend {other}: not built into this binary (built in: {}); build with --features {other} for cuda, tch or candle",
            available().join(", ")
        ),
    }
}

/// Device checks that ask the driver or libtorch, so a missing GPU is an error, not a panic.
#[cfg(any(feature = "cuda", feature = "tch"))]
mod gpu {
    #[cfg(feature = "tch")]
    use super::Device;
    use super::Precision;
    use anyhow::{bail, Result};

    #[cfg(feature = "cuda")]
    pub fn check_cuda(n: usize, precision: Precision) -> Result<()> {
        use cudarc::driver::{result, sys};
        // SAFETY: only loads the library to see whether it is there.
        if !unsafe { sys::is_culib_present() } {
            bail!("--device cuda:{n}: no NVIDIA driver (libcuda) on this machine; use --backend flex --device cpu");
        }
        // SAFETY: likewise for NVRTC, which CubeCL compiles its kernels with.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            bail!("--device cuda:{n}: the cuda backend needs NVRTC (libnvrtc) at run time; install the CUDA runtime or use --backend tch");
        }
        result::init().map_err(|e| {
            anyhow::anyhow!("--device cuda:{n}: the NVIDIA driver did not start: {e:?}")
        })?;
        let count = result::device::get_count().unwrap_or(0) as usize;
        if n >= count {
            bail!("--device cuda:{n}: this machine has {count} CUDA device(s)");
        }
        if precision == Precision::Bf16 {
            let dev = result::device::get(n as i32)
                .map_err(|e| anyhow::anyhow!("--device cuda:{n}: {e:?}"))?;
            let attr = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR;
            // SAFETY: `dev` came from cuDeviceGet.
            let major = unsafe { result::device::get_attribute(dev, attr) }.unwrap_or(0);
            if major < 8 {
                bail!("model.precision = \"bf16\": cuda:{n} (compute capability {major}.x) has no bfloat16 matrix units; use \"fp32\"");
            }
        }
        Ok(())
    }

    #[cfg(feature = "tch")]
    pub fn check_tch(d: Device, precision: Precision) -> Result<()> {
        let device = match d {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(n) => {
                let count =
                    if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
                if n >= count {
                    bail!("--device cuda:{n}: libtorch sees {count} CUDA device(s) (no NVIDIA driver, or a CPU-only libtorch); use --device cpu");
                }
                // burn-tch fixes at build time whether its CUDA devices exist: built against a
                // libtorch without libtorch_cuda it panics on the first tensor, however many
                // GPUs the libtorch loaded at run time sees.
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let built = std::panic::catch_unwind(|| {
                    tch::Device::from(burn::backend::libtorch::LibTorchDevice::Cuda(n))
                });
                std::panic::set_hook(hook);
                if built.is_err() {
                    bail!("--device cuda:{n}: this binary was built against a libtorch without libtorch_cuda.so, so its tch backend has no CUDA devices; rebuild with LIBTORCH set to a CUDA build of PyTorch 2.11 (or tools/libtorch-gpu-link.sh)");
                }
                tch::Device::Cuda(n)
            }
        };
        if precision == Precision::Bf16 {
            // A bfloat16 product on the device, through the calls that return errors.
            let ok = tch::Tensor::f_ones([2, 2], (tch::Kind::BFloat16, device))
                .and_then(|a| a.f_matmul(&a))
                .is_ok();
            if !ok {
                bail!("model.precision = \"bf16\": libtorch has no bfloat16 matrix product on {d}; use \"fp32\"");
            }
        }
        Ok(())
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
    fn devices_parse_and_are_checked_against_the_backend() {
        use super::{Device, Precision, Target};
        assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        let err =
            |b: &str, d: &str, p: Precision| Target::resolve(b, d, p).unwrap_err().to_string();
        let checks = [
            (err("flex", "cuda:x", Precision::Fp32), "--device \"cuda:x\""),
            (
                err("flex", "cuda:0", Precision::Fp32),
                "--device cuda:0: the flex backend runs on the CPU only",
            ),
            (err("ndarray", "cpu", Precision::Bf16), "bf16"),
            (err("metal", "cpu", Precision::Fp32), "--backend metal: not built into this binary"),
        ];
        for (e, want) in checks {
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert_eq!(Target::resolve("flex", "cpu", Precision::Bf16).unwrap(), Target::cpu());
        let two = Target::resolve("flex", "2", Precision::Fp32).unwrap();
        assert_eq!(two.devices, vec![Device::Cpu, Device::Cpu]);
        assert_eq!(super::parse_devices("cuda:0,cuda:0").unwrap(), vec![Device::Cuda(0); 2]);
        assert!(err("flex", "0", Precision::Fp32).contains("at least one device"));
        assert!(err("flex", "cpu,cuda:1", Precision::Fp32).contains("--device cuda:1"));
        if !cfg!(feature = "cuda") {
            assert!(err("cuda", "cuda:0", Precision::Fp32).contains("--backend cuda: not built"));
        }
        #[cfg(feature = "tch")]
        {
            assert!(Target::resolve("tch", "cpu", Precision::Bf16).is_ok());
            if !tch::Cuda::is_available() {
                let e = err("tch", "cuda:0", Precision::Fp32);
                assert!(e.contains("--device cuda:0: libtorch sees 0 CUDA device"), "{e}");
            }
        }
        #[cfg(feature = "cuda")]
        {
            // SAFETY: only looks for the library.
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                let e = err("cuda", "cuda:0", Precision::Fp32);
                assert!(e.contains("no NVIDIA driver"), "{e}");
            }
        }
    }

    #[test]
    fn cpu_backends_are_recognised_under_autodiff() {
        use burn::backend::{Autodiff, Flex, NdArray};
        assert!(super::is_cpu::<Flex>(&Default::default()));
        assert!(super::is_cpu::<Autodiff<NdArray<f32>>>(&Default::default()));
    }
}
