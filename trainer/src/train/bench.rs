//! The training-step benchmark: seconds per step and clips/s on random batches of a config's
//! shape (`mosic bench train`, `bench_step`, the GPU script).

use crate::config::TrainConfig;
use crate::data::Batch;
use crate::model::paths;
use crate::train::comm::threads::Threads;
use crate::train::comm::{Comm, Group};
use crate::train::step::Trainer;
use crate::train::worker::FaultHook;
use anyhow::{anyhow, ensure, Result};
use burn::tensor::backend::AutodiffBackend;
use std::sync::Arc;
use std::time::Instant;

/// Seconds per training step and clips/s on random batches of the configured shape.
pub fn bench<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
    frames: usize,
    points: usize,
    warmup: usize,
    steps: usize,
) -> Result<BenchFigures> {
    let batch =
        Batch::random(cfg.data.batch_size, frames, points, cfg.model.img_size, cfg.run.seed);
    bench_rank::<B>(cfg, device, None, &batch, warmup, steps, None)
}

/// One rank's step on `batch` (its share), with `group` when there is one.
fn bench_rank<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
    group: Option<Group>,
    batch: &Batch,
    warmup: usize,
    steps: usize,
    fault: Option<&FaultHook>,
) -> Result<BenchFigures> {
    let t_start = Instant::now();
    let rank = group.as_ref().map_or(0, Group::rank);
    let mut taken = 0;
    let mut hook = || -> Result<()> {
        taken += 1;
        fault.map_or(Ok(()), |f| f(rank, taken))
    };
    let mut trainer = {
        let _one_at_a_time = super::worker::INIT.lock().unwrap_or_else(|e| e.into_inner());
        Trainer::<B>::new(cfg, device)?
    };
    // Progress on stderr: a cold GPU process can spend minutes compiling and autotuning, and a
    // run cut short by a time limit should show how far it got.
    let progress = |what: &str| {
        if rank == 0 {
            eprintln!("bench: {what} at {:.1} s", t_start.elapsed().as_secs_f64());
        }
    };
    progress("trainer built");
    trainer.total_steps = (warmup + steps + 1) as u64;
    if group.is_some() {
        trainer.group = group;
        trainer.broadcast_from_rank0()?;
    }
    // The first step on a fresh process: allocation, and on GPUs kernel compilation and
    // autotuning, which the caches cut on later runs.
    hook()?;
    trainer.step(batch)?;
    let first_step_s = t_start.elapsed().as_secs_f64();
    progress("first step done");
    for i in 1..warmup.max(1) {
        hook()?;
        trainer.step(batch)?;
        progress(&format!("warm-up step {} done", i + 1));
    }
    let group = trainer.group.clone();
    let spent = || group.as_ref().map_or(0.0, Group::seconds);
    let before = spent();
    let t_timed = Instant::now();
    let step_s = if crate::backend::is_cpu::<B>(device) {
        // A CPU step is done when it returns: each is timed, and the median reported, as
        // tools/bench/torch_step.py does.
        let mut times = Vec::with_capacity(steps.max(1));
        for _ in 0..steps.max(1) {
            hook()?;
            let t0 = Instant::now();
            let out = trainer.step_async(batch)?;
            times.push(t0.elapsed().as_secs_f64());
            trainer.read(out)?;
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    } else {
        // Timed as training runs on a device: queued steps, one read at the end.
        let t0 = Instant::now();
        let mut last = None;
        for _ in 0..steps.max(1) {
            hook()?;
            last = Some(trainer.step_async(batch)?);
        }
        trainer.read(last.expect("at least one step"))?;
        t0.elapsed().as_secs_f64() / steps.max(1) as f64
    };
    let timed = t_timed.elapsed().as_secs_f64();
    let statistic = if crate::backend::is_cpu::<B>(device) { "median" } else { "mean" };
    Ok(BenchFigures {
        first_step_s,
        step_s,
        clips_per_s: cfg.data.batch_size as f64 / step_s,
        statistic,
        collective_share: group.as_ref().map(|_| (spent() - before) / timed.max(1e-9)),
    })
}

/// Largest difference between the parameters of `a` and `b` (student and teacher, same
/// model), relative to the largest magnitude in each tensor: how far two runs drifted where
/// [`Trainer::digest`] only says whether they did.
pub fn parameter_difference<B: AutodiffBackend>(a: &Trainer<B>, b: &Trainer<B>) -> f64 {
    let all = |t: &Trainer<B>| {
        let mut m = paths::collect(&t.student, |_| true);
        let teacher = paths::collect(&t.teacher, |_| true);
        m.extend(teacher.into_iter().map(|(k, v)| (format!("teacher.{k}"), v)));
        m
    };
    let (a, b) = (all(a), all(b));
    let mut worst = 0f64;
    for (k, ta) in &a {
        let Some(tb) = b.get(k) else { return f64::INFINITY };
        let scale = ta.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
        for (x, y) in ta.data.iter().zip(&tb.data) {
            worst = worst.max(((x - y).abs() / scale) as f64);
        }
    }
    worst
}

/// What `bench` measured.
#[derive(Debug, Clone, Copy)]
pub struct BenchFigures {
    /// From the start of the process's trainer to the end of its first step.
    pub first_step_s: f64,
    /// Step after the warm-up: the median on a CPU backend, the mean of queued steps on a device.
    pub step_s: f64,
    /// Global clips per second.
    pub clips_per_s: f64,
    /// "median" or "mean".
    pub statistic: &'static str,
    /// With several ranks: the share of rank 0's timed steps spent in collectives (host time:
    /// on a GPU, the time to queue device reductions and to wait for host ones).
    pub collective_share: Option<f64>,
}

/// The step over `devices` (one thread each, the global batch split between them): seconds
/// per step (the median over the timed steps of rank 0, every step ending in the gradient
/// all-reduce, so it is the group's step) and global clips/s. A rank that fails (an error or
/// a panic) ends the others at once.
pub fn bench_devices<B: AutodiffBackend>(
    cfg: &TrainConfig,
    devices: &[B::Device],
    frames: usize,
    points: usize,
    warmup: usize,
    steps: usize,
) -> Result<BenchFigures> {
    bench_devices_with::<B>(cfg, devices, frames, points, warmup, steps, None)
}

/// [`bench_devices`] with a fault a test injects.
#[doc(hidden)]
pub fn bench_devices_with<B: AutodiffBackend>(
    cfg: &TrainConfig,
    devices: &[B::Device],
    frames: usize,
    points: usize,
    warmup: usize,
    steps: usize,
    fault: Option<&FaultHook>,
) -> Result<BenchFigures> {
    let n = devices.len();
    if n == 1 {
        return bench::<B>(cfg, &devices[0], frames, points, warmup, steps);
    }
    ensure!(
        cfg.data.batch_size.is_multiple_of(n),
        "data.batch_size = {} does not split over {n} devices",
        cfg.data.batch_size
    );
    let batch =
        Batch::random(cfg.data.batch_size, frames, points, cfg.model.img_size, cfg.run.seed);
    let parts = batch.split(n);
    let threads = Threads::new(n);
    let figures: Vec<Result<BenchFigures>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .zip(&parts)
            .enumerate()
            .map(|(rank, (device, part))| {
                let comm: Arc<dyn Comm> = Arc::new(threads.rank(rank));
                s.spawn(move || -> Result<BenchFigures> {
                    let group =
                        Group::new(comm.clone(), rank * cfg.data.batch_size / n, cfg.run.limits());
                    #[cfg(feature = "tch")]
                    let group = match super::comm::nccl::attach::<B>(group, device) {
                        Ok(g) => g,
                        Err(e) => {
                            comm.fail(&format!("rank {rank}: {e:#}"));
                            return Err(e);
                        }
                    };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        bench_rank::<B>(cfg, device, Some(group), part, warmup, steps, fault)
                    }))
                    .unwrap_or_else(|p| {
                        Err(anyhow!("panicked: {}", super::worker::panic_text(&*p)))
                    });
                    if let Err(e) = &r {
                        comm.fail(&format!("rank {rank}: {e:#}"));
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a rank's thread died"))))
            .collect()
    });
    if let Some(f) = threads.rank(0).failure() {
        return Err(anyhow!("{f}"));
    }
    let mut figures = figures.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(figures.swap_remove(0))
}

/// The step with this process as rank `comm.rank()` of an MPI job: its share of the global
/// batch on `device`; rank 0's figures count.
pub fn bench_in_job<B: AutodiffBackend>(
    cfg: &TrainConfig,
    comm: Arc<dyn Comm>,
    device: &B::Device,
    frames: usize,
    points: usize,
    warmup: usize,
    steps: usize,
) -> Result<BenchFigures> {
    let (rank, n) = (comm.rank(), comm.size());
    ensure!(
        cfg.data.batch_size.is_multiple_of(n),
        "data.batch_size = {} does not split over {n} ranks",
        cfg.data.batch_size
    );
    let batch =
        Batch::random(cfg.data.batch_size, frames, points, cfg.model.img_size, cfg.run.seed);
    let part = batch.split(n).swap_remove(rank);
    let group = Group::new(comm.clone(), rank * cfg.data.batch_size / n, cfg.run.limits());
    #[cfg(feature = "tch")]
    let group = super::comm::nccl::attach::<B>(group, device)?;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bench_rank::<B>(cfg, device, Some(group), &part, warmup, steps, None)
    }))
    .unwrap_or_else(|p| Err(anyhow!("panicked: {}", super::worker::panic_text(&*p))));
    if let Err(e) = &r {
        comm.fail(&format!("{e:#}"));
    }
    r
}

/// What the one-GPU NCCL check found: the step through NCCL against the step without a
/// collective, from the same weights on the same batch.
#[cfg(feature = "tch")]
#[derive(Debug, Clone)]
pub struct NcclCheck {
    /// NCCL's version, or None where this backend's tensors do not go through NCCL.
    pub version: Option<i32>,
    /// Largest relative difference of the loss and of the gradient norm over the steps.
    pub loss_rel: f64,
    pub grad_rel: f64,
    /// Whether the parameters after the steps are bit for bit those of the step alone.
    pub same_parameters: bool,
    /// Largest relative parameter difference from the step alone after the steps.
    pub param_rel: f64,
    /// The same for a second run of the step alone: the backend's own run-to-run drift (CUDA's
    /// atomic adds in the gather's backward pass), against which `param_rel` is read.
    pub control_rel: f64,
    /// Mean seconds per step without and with the collective.
    pub step_s: f64,
    pub step_nccl_s: f64,
}

/// A world of one rank on `device` whose reductions go through NCCL (gradient buckets,
/// Sinkhorn's sums, the loss), beside the step without a collective: the library is found,
/// the communicator opens, and the results equal the plain step's.
#[cfg(feature = "tch")]
pub fn nccl_check<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
    frames: usize,
    points: usize,
    steps: usize,
) -> Result<NcclCheck> {
    let batch =
        Batch::random(cfg.data.batch_size, frames, points, cfg.model.img_size, cfg.run.seed);
    let mut plain = Trainer::<B>::new(cfg, device)?;
    let mut control = Trainer::<B>::new(cfg, device)?;
    let mut through = Trainer::<B>::new(cfg, device)?;
    let comm: Arc<dyn Comm> = Arc::new(Threads::new(1).rank(0));
    let group = super::comm::nccl::attach::<B>(Group::new(comm, 0, cfg.run.limits()), device)?;
    let version = group.nccl.as_ref().map(|n| n.version);
    through.group = Some(group);
    let (mut loss_rel, mut grad_rel) = (0f64, 0f64);
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
    let (mut t_plain, mut t_nccl) = (0.0, 0.0);
    for k in 0..steps.max(2) {
        let t0 = Instant::now();
        let a = plain.step(&batch)?;
        let t1 = Instant::now();
        let b = through.step(&batch)?;
        control.step(&batch)?;
        if k > 0 {
            // The first step of each compiles and allocates.
            t_plain += (t1 - t0).as_secs_f64();
            t_nccl += t1.elapsed().as_secs_f64();
        }
        loss_rel = loss_rel.max(rel(a.loss, b.loss));
        grad_rel = grad_rel.max(rel(a.grad_norm, b.grad_norm));
    }
    let timed = (steps.max(2) - 1) as f64;
    Ok(NcclCheck {
        version,
        loss_rel,
        grad_rel,
        same_parameters: plain.digest() == through.digest(),
        param_rel: parameter_difference(&plain, &through),
        control_rel: parameter_difference(&plain, &control),
        step_s: t_plain / timed,
        step_nccl_s: t_nccl / timed,
    })
}
