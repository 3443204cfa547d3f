//! NCCL for device tensors: the library is loaded at run time (`MOSIC_NCCL`, else
//! `libnccl.so.2` as the `nvidia-nccl-cu13` wheel and the system packages install it), and
//! each rank opens one communicator on its GPU from the id rank 0 makes and the host group
//! hands out. Reductions run on the device's default stream, where libtorch queues the step's
//! kernels, so they follow them without a host wait.
//!
//! Sums only: a maximum goes through the host, where NaN propagates as on one device.

use super::{Comm, Op, Wait};
use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::Duration;

type NcclComm = *mut c_void;
type NcclResult = c_int;

/// `ncclUniqueId`: 128 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([u8; 128]);

/// `ncclFloat32` and `ncclSum` of `nccl.h`.
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// The library file names tried, in order, after `MOSIC_NCCL`.
const NAMES: &[&str] = &["libnccl.so.2", "libnccl.so"];

/// A communicator of the group's ranks, one GPU each.
pub struct Nccl {
    lib: Library,
    comm: NcclComm,
    /// The GPU this rank's communicator was opened on.
    pub device: usize,
    pub version: i32,
}

// SAFETY: a communicator is used by one rank's thread at a time (the step's), and NCCL's
// communicator handles may be passed between threads.
unsafe impl Send for Nccl {}
// SAFETY: as above; `reduce` is called from the rank's own thread only.
unsafe impl Sync for Nccl {}

fn load() -> Result<Library> {
    let mut tried = Vec::new();
    let named = std::env::var("MOSIC_NCCL").ok();
    for name in named.iter().map(String::as_str).chain(NAMES.iter().copied()) {
        // SAFETY: loading NCCL runs its initialisers, which only set up the library.
        match unsafe { Library::new(name) } {
            Ok(lib) => return Ok(lib),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    bail!(
        "NCCL not found ({}); install the nvidia-nccl-cu13 wheel (its nvidia/nccl/lib on \
         LD_LIBRARY_PATH) or the system's libnccl2, or name the file with MOSIC_NCCL=/path/libnccl.so.2",
        tried.join("; ")
    )
}

impl Nccl {
    /// Opens the group's communicator on GPU `device`; every rank of `host` must call it.
    pub fn open(host: &dyn Comm, device: usize, limit: Duration) -> Result<Self> {
        let lib = load()?;
        set_device(device)?;
        // SAFETY: the symbols are NCCL's C API (nccl.h), called with the types it declares.
        unsafe {
            let version: libloading::Symbol<unsafe extern "C" fn(*mut c_int) -> NcclResult> =
                lib.get(b"ncclGetVersion")?;
            let mut v = 0;
            check(&lib, version(&mut v), "ncclGetVersion")?;
            let mut id = UniqueId([0; 128]);
            if host.rank() == 0 {
                let get: libloading::Symbol<unsafe extern "C" fn(*mut UniqueId) -> NcclResult> =
                    lib.get(b"ncclGetUniqueId")?;
                check(&lib, get(&mut id), "ncclGetUniqueId")?;
            }
            let wait =
                Wait { what: "the NCCL id from rank 0", limit, setting: "run.rank0_timeout_s" };
            host.broadcast(&mut id.0, &wait)?;
            let init: libloading::Symbol<
                unsafe extern "C" fn(*mut NcclComm, c_int, UniqueId, c_int) -> NcclResult,
            > = lib.get(b"ncclCommInitRank")?;
            let mut comm: NcclComm = std::ptr::null_mut();
            host.arm(&Wait {
                what: "opening the NCCL communicator",
                limit,
                setting: "run.rank0_timeout_s",
            });
            let r = init(&mut comm, host.size() as c_int, id, host.rank() as c_int);
            host.disarm();
            check(&lib, r, "ncclCommInitRank")?;
            Ok(Self { lib, comm, device, version: v })
        }
    }

    /// Sums `count` f32 values at `ptr` (device memory of this rank's GPU) over the ranks, in
    /// place, queued on the default stream.
    fn all_reduce_sum(&self, ptr: *mut c_void, count: usize) -> Result<()> {
        // SAFETY: `ptr` holds `count` f32 values on this communicator's device (the caller's
        // contiguous buffer, alive until the queued work completes: libtorch's caching
        // allocator reuses it only after later work on the same stream).
        unsafe {
            let f: libloading::Symbol<
                unsafe extern "C" fn(
                    *const c_void,
                    *mut c_void,
                    usize,
                    c_int,
                    c_int,
                    NcclComm,
                    *mut c_void,
                ) -> NcclResult,
            > = self.lib.get(b"ncclAllReduce")?;
            let r = f(ptr, ptr, count, NCCL_FLOAT32, NCCL_SUM, self.comm, std::ptr::null_mut());
            check(&self.lib, r, "ncclAllReduce")
        }
    }

    /// `t` reduced over the ranks on its GPU, or None where NCCL cannot take it (not a sum,
    /// not a GPU tensor of a backend this build reaches).
    pub fn reduce<B: Backend, const D: usize>(
        &self,
        t: &Tensor<B, D>,
        op: Op,
    ) -> Result<Option<Tensor<B, D>>> {
        if op != Op::Sum {
            return Ok(None);
        }
        #[cfg(feature = "tch")]
        if let Some(out) = self.reduce_tch(t)? {
            return Ok(Some(out));
        }
        Ok(None)
    }

    /// libtorch tensors: a contiguous f32 copy of the tensor's own (never shared with another
    /// tensor), reduced in place through its data pointer.
    #[cfg(feature = "tch")]
    fn reduce_tch<B: Backend, const D: usize>(
        &self,
        t: &Tensor<B, D>,
    ) -> Result<Option<Tensor<B, D>>> {
        use burn::backend::libtorch::TchTensor;
        use burn::tensor::TensorPrimitive;
        use std::any::Any;
        let prim: Box<dyn Any> = Box::new(t.clone().into_primitive().tensor());
        let Ok(tt) = prim.downcast::<TchTensor>() else { return Ok(None) };
        let x = &tt.tensor;
        if !x.device().is_cuda() {
            return Ok(None);
        }
        let buf = x.to_kind(tch::Kind::Float).contiguous().copy();
        self.all_reduce_sum(buf.data_ptr(), buf.numel())?;
        let out: Box<dyn Any> = Box::new(TchTensor::new(buf.to_kind(x.kind())));
        let prim = out
            .downcast::<B::FloatTensorPrimitive>()
            .map_err(|_| anyhow!("a libtorch tensor of another backend type"))?;
        Ok(Some(Tensor::from_primitive(TensorPrimitive::Float(*prim))))
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator was opened by `open` and is not used after this. Abort
        // rather than destroy: it does not wait for peers that may be gone.
        unsafe {
            if let Ok(f) =
                self.lib.get::<unsafe extern "C" fn(NcclComm) -> NcclResult>(b"ncclCommAbort")
            {
                f(self.comm);
            }
        }
    }
}

/// An NCCL result as an error with NCCL's own words.
fn check(lib: &Library, r: NcclResult, call: &str) -> Result<()> {
    if r == 0 {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a static C string for any result code.
    let text = unsafe {
        lib.get::<unsafe extern "C" fn(NcclResult) -> *const c_char>(b"ncclGetErrorString")
            .ok()
            .map(|f| CStr::from_ptr(f(r)).to_string_lossy().into_owned())
    };
    bail!("{call} failed: {} (NCCL error {r})", text.unwrap_or_default())
}

/// Makes `device` this thread's current GPU (NCCL opens a communicator on the current one).
fn set_device(device: usize) -> Result<()> {
    let names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"];
    let lib = names
        .iter()
        // SAFETY: the CUDA runtime is already loaded by the backend; this finds it.
        .find_map(|n| unsafe { Library::new(n) }.ok())
        .context("the CUDA runtime (libcudart) is not loaded")?;
    // SAFETY: cudaSetDevice(int) of the CUDA runtime API.
    let r = unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn(c_int) -> c_int> =
            lib.get(b"cudaSetDevice")?;
        f(device as c_int)
    };
    if r != 0 {
        bail!("cudaSetDevice({device}) failed (CUDA error {r})");
    }
    std::mem::forget(lib); // the runtime stays loaded for the process
    Ok(())
}

/// The group with NCCL for its device reductions where the backend's tensors live on a GPU
/// that NCCL reaches through this build (libtorch's); `MOSIC_NCCL=off` keeps them on the host.
pub fn attach<B: Backend>(mut group: super::Group, device: &B::Device) -> Result<super::Group> {
    if std::env::var("MOSIC_NCCL").is_ok_and(|v| v == "off") {
        return Ok(group);
    }
    let Some(index) = gpu_of::<B>(device) else { return Ok(group) };
    let nccl = Nccl::open(group.comm.as_ref(), index, group.limits.rank0)?;
    group.nccl = Some(std::sync::Arc::new(nccl));
    Ok(group)
}

/// The GPU of a libtorch device.
fn gpu_of<B: Backend>(device: &B::Device) -> Option<usize> {
    #[cfg(feature = "tch")]
    {
        use burn::backend::libtorch::LibTorchDevice;
        let any: &dyn std::any::Any = device;
        if let Some(LibTorchDevice::Cuda(i)) = any.downcast_ref::<LibTorchDevice>() {
            return Some(*i);
        }
    }
    let _ = device;
    None
}
