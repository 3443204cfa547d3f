//! Collectives between the ranks of a run, behind one interface ([`Comm`]):
//! - [`threads`]: ranks that are threads of one process (`--devices`; the CPU tests);
//! - `mpi` (feature `mpi`): one process per device, started by `mpirun` or `srun`; MPI ranks
//!   the processes, moves host data and hands out NCCL's id;
//! - `nccl` (features `tch`, `cuda`): device tensors reduced where they are, on the GPUs.
//!
//! [`Group`] is what the step uses: the initial broadcast of rank 0's weights, the gradient
//! buckets, Sinkhorn's sums, the counts, the loss and the gradient norm. Every rank gets the
//! same result (host data is combined in rank order; NCCL's order is the same on every rank),
//! so the replicas stay identical. A rank that waits longer than its limit for the others
//! ends the run with a message naming it and what it was doing; nothing waits forever.

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "tch")]
pub mod nccl;
pub mod threads;

use anyhow::{anyhow, bail, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The variables MPI launchers set in every process they start (OpenMPI's mpirun, MPICH's
/// Hydra, PMIx under SLURM's `srun --mpi=pmix`).
const LAUNCHER_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

/// Whether an MPI launcher started this process (whether or not this build has MPI).
pub fn launched_by_mpi() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// How values of the ranks are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Sum,
    Max,
}

impl Op {
    /// `a` combined with `b`; Max propagates NaN, as one device's max would.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Op::Sum => a + b,
            Op::Max if a.is_nan() || b.is_nan() => f32::NAN,
            Op::Max => a.max(b),
        }
    }
}

/// What a rank waits for in a collective, and for how long at most.
#[derive(Clone, Copy, Debug)]
pub struct Wait<'a> {
    /// For the message of a rank that waits too long ("the gradient all-reduce of step 12").
    pub what: &'a str,
    pub limit: Duration,
    /// The setting that sets `limit`, for the message.
    pub setting: &'a str,
}

/// Host collectives between the ranks of a run.
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// `values` combined with every rank's (same length), in place, the same on every rank.
    fn all_reduce(&self, values: &mut [f32], op: Op, wait: &Wait) -> Result<()>;
    /// Rank 0's `bytes` on every rank (same length).
    fn broadcast(&self, bytes: &mut [u8], wait: &Wait) -> Result<()>;
    /// Ends the run on every rank with `why` (the processes of an MPI job end; waiting and
    /// later collectives of threads fail with it).
    fn fail(&self, why: &str);
    /// The first failure that ended the run, where the ranks share memory.
    fn failure(&self) -> Option<String>;
    /// What the ranks are, for the run's log.
    fn describe(&self) -> String;
    /// Starts the watch of a wait on the other ranks outside a collective (a host read of
    /// device work that includes a device reduction), where the ranks have no other timeout.
    fn arm(&self, _wait: &Wait) {}
    fn disarm(&self) {}
}

pub use crate::config::Limits;

/// Gradient buckets hold at most this many values (64 MiB of f32).
pub const BUCKET_VALUES: usize = 16 << 20;

/// One rank's place in a run: its communicator, where its clips sit in the global batch, and
/// the time it has spent in collectives.
#[derive(Clone)]
pub struct Group {
    pub comm: Arc<dyn Comm>,
    /// Index of this rank's first clip in the global batch.
    pub first_clip: usize,
    pub limits: Limits,
    /// Device reductions, where the backend's tensors live on GPUs NCCL can reach.
    #[cfg(feature = "tch")]
    pub nccl: Option<Arc<nccl::Nccl>>,
    /// Nanoseconds spent in collectives (host-visible time).
    spent: Arc<AtomicU64>,
    /// The step being taken, for messages.
    step: Arc<AtomicU64>,
}

impl Group {
    pub fn new(comm: Arc<dyn Comm>, first_clip: usize, limits: Limits) -> Self {
        Self {
            comm,
            first_clip,
            limits,
            #[cfg(feature = "tch")]
            nccl: None,
            spent: Arc::new(AtomicU64::new(0)),
            step: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// Seconds spent in collectives so far.
    pub fn seconds(&self) -> f64 {
        self.spent.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Names the step the next collectives belong to (1-based).
    pub fn at_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = Instant::now();
        let out = f();
        self.spent.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// The message of a collective within a step.
    fn within_step(&self, what: &str) -> String {
        format!("{what} of step {}", self.step.load(Ordering::Relaxed))
    }

    /// Host values reduced over the group.
    pub fn reduce_host(&self, mut values: Vec<f32>, op: Op, what: &str) -> Result<Vec<f32>> {
        let what = self.within_step(what);
        let wait =
            Wait { what: &what, limit: self.limits.step, setting: "run.collective_timeout_s" };
        self.timed(|| self.comm.all_reduce(&mut values, op, &wait))?;
        Ok(values)
    }

    /// `f` under the step limit, where it waits on the other ranks without a collective of the
    /// host's (reading results that a device reduction feeds).
    pub fn watched<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        let what = self.within_step(what);
        self.comm.arm(&Wait {
            what: &what,
            limit: self.limits.step,
            setting: "run.collective_timeout_s",
        });
        let out = f();
        self.comm.disarm();
        out
    }

    /// Fails unless every rank holds what rank 0 holds (`digest`: a hash of its parameters):
    /// replicas that drifted apart would train on quietly as different models.
    pub fn check_replicas(&self, digest: u64, what: &str) -> Result<()> {
        let mut ours = digest.to_le_bytes();
        self.broadcast(&mut ours, what)?;
        let differs = (u64::from_le_bytes(ours) != digest) as u8 as f32;
        let n = self.reduce_host(vec![differs], Op::Sum, what)?[0];
        if n > 0.0 {
            bail!("{n} rank(s) hold other parameters than rank 0 after {what}: the replicas drifted apart");
        }
        Ok(())
    }

    /// Waits for every rank while rank 0 validates or writes a checkpoint, under its own limit.
    pub fn after_rank0(&self, what: &str) -> Result<()> {
        let wait = Wait { what, limit: self.limits.rank0, setting: "run.rank0_timeout_s" };
        self.timed(|| self.comm.all_reduce(&mut [0.0], Op::Sum, &wait))
    }

    /// Rank 0's bytes on every rank, under the rank-0 limit (the others may wait while rank 0
    /// loads weights).
    pub fn broadcast(&self, bytes: &mut [u8], what: &str) -> Result<()> {
        let wait = Wait { what, limit: self.limits.rank0, setting: "run.rank0_timeout_s" };
        self.timed(|| self.comm.broadcast(bytes, &wait))
    }

    /// A tensor reduced over the group: on the device through NCCL where the group has it and
    /// the tensor lives on a GPU, else through the host.
    pub fn reduce<B: Backend, const D: usize>(
        &self,
        t: Tensor<B, D>,
        op: Op,
        what: &str,
    ) -> Result<Tensor<B, D>> {
        #[cfg(feature = "tch")]
        if let Some(n) = &self.nccl {
            if let Some(out) = self.timed(|| n.reduce(&t, op))? {
                return Ok(out);
            }
        }
        let (shape, device) = (t.dims(), t.device());
        let values =
            t.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| anyhow!("{e:?}"))?;
        let out = self.reduce_host(values, op, what)?;
        Ok(Tensor::from_data(TensorData::new(out, shape), &device))
    }

    /// Every gradient of `module` summed over the group, in buckets of up to
    /// [`BUCKET_VALUES`] values (parameters in the module's order, so every rank packs alike).
    ///
    /// The buckets go after the whole backward pass, not during it as DDP's do: Burn's
    /// `backward` returns every gradient at once and has no per-parameter hook to start a
    /// bucket on. `mosic bench train` prints the share of the step this costs.
    pub fn reduce_grads<B: AutodiffBackend, M: Module<B>>(
        &self,
        module: &M,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams> {
        let mut order = Order::<B> { ids: Vec::new(), _b: std::marker::PhantomData };
        module.visit(&mut order);
        // Each bucket: its parameters' ids, ranks and shapes, and their gradients flattened.
        type Entry = (burn::module::ParamId, usize, Vec<usize>);
        let mut bucket: Vec<Entry> = Vec::new();
        let mut parts: Vec<Tensor<B::InnerBackend, 1>> = Vec::new();
        let (mut filled, mut index) = (0, 0);
        let mut flush = |bucket: &mut Vec<Entry>,
                         parts: &mut Vec<Tensor<B::InnerBackend, 1>>,
                         grads: &mut GradientsParams|
         -> Result<()> {
            if bucket.is_empty() {
                return Ok(());
            }
            index += 1;
            let what = format!("the all-reduce of gradient bucket {index}");
            let flat = self.reduce(Tensor::cat(std::mem::take(parts), 0), Op::Sum, &what)?;
            let mut at = 0;
            for (id, rank, shape) in bucket.drain(..) {
                let n: usize = shape.iter().product();
                let g = flat.clone().narrow(0, at, n);
                at += n;
                match rank {
                    1 => grads.register::<B::InnerBackend, 1>(id, g),
                    2 => grads.register::<B::InnerBackend, 2>(id, g.reshape([shape[0], shape[1]])),
                    3 => grads.register::<B::InnerBackend, 3>(
                        id,
                        g.reshape([shape[0], shape[1], shape[2]]),
                    ),
                    4 => grads.register::<B::InnerBackend, 4>(
                        id,
                        g.reshape([shape[0], shape[1], shape[2], shape[3]]),
                    ),
                    r => bail!("a gradient of rank {r}"),
                }
            }
            Ok(())
        };
        for (id, rank) in order.ids {
            let flat = match rank {
                1 => grads.remove::<B::InnerBackend, 1>(id).map(|g| (g.dims().to_vec(), g)),
                2 => grads
                    .remove::<B::InnerBackend, 2>(id)
                    .map(|g| (g.dims().to_vec(), g.flatten(0, 1))),
                3 => grads
                    .remove::<B::InnerBackend, 3>(id)
                    .map(|g| (g.dims().to_vec(), g.flatten(0, 2))),
                4 => grads
                    .remove::<B::InnerBackend, 4>(id)
                    .map(|g| (g.dims().to_vec(), g.flatten(0, 3))),
                r => bail!("a parameter of rank {r}"),
            };
            // Every rank has a gradient for every trainable parameter (same graph).
            let Some((shape, g)) = flat else { continue };
            let n: usize = shape.iter().product();
            if filled + n > BUCKET_VALUES && !bucket.is_empty() {
                flush(&mut bucket, &mut parts, &mut grads)?;
                filled = 0;
            }
            bucket.push((id, rank, shape));
            parts.push(g);
            filled += n;
        }
        flush(&mut bucket, &mut parts, &mut grads)?;
        Ok(grads)
    }
}

/// The float parameters of a module in visiting order, with their ranks.
struct Order<B: Backend> {
    ids: Vec<(burn::module::ParamId, usize)>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for Order<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.ids.push((param.id, D));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_propagates_nan_as_one_device_would() {
        assert!(Op::Max.apply(f32::NAN, 1.0).is_nan());
        assert!(Op::Max.apply(1.0, f32::NAN).is_nan());
        assert_eq!(Op::Max.apply(1.0, 2.0), 2.0);
        assert_eq!(Op::Sum.apply(1.0, 2.0), 3.0);
    }
}
