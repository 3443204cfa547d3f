//! The training-step benchmark: seconds per step and clips/s on random batches of a config's
//! shape (`mosic bench train`, `bench_step`, the GPU script).

use crate::config::TrainConfig;
use crate::data::Batch;
use crate::train::collective::{Collective, Group};
use crate::train::step::Trainer;
use anyhow::{anyhow, ensure, Result};
use burn::tensor::backend::AutodiffBackend;
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
    let t_start = Instant::now();
    let mut trainer = Trainer::<B>::new(cfg, device)?;
    trainer.total_steps = (warmup + steps + 1) as u64;
    let batch =
        Batch::random(cfg.data.batch_size, frames, points, cfg.model.img_size, cfg.run.seed);
    // The first step on a fresh process: allocation, and on GPUs kernel compilation and
    // autotuning, which the caches cut on later runs.
    trainer.step(&batch)?;
    let first_step_s = t_start.elapsed().as_secs_f64();
    for _ in 1..warmup.max(1) {
        trainer.step(&batch)?;
    }
    let step_s = if crate::backend::is_cpu::<B>(device) {
        // A CPU step is done when it returns: each is timed, and the median reported, as
        // torch_step.py does.
        let mut times = Vec::with_capacity(steps.max(1));
        for _ in 0..steps.max(1) {
            let t0 = Instant::now();
            let out = trainer.step_async(&batch)?;
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
            last = Some(trainer.step_async(&batch)?);
        }
        trainer.read(last.expect("at least one step"))?;
        t0.elapsed().as_secs_f64() / steps.max(1) as f64
    };
    let statistic = if crate::backend::is_cpu::<B>(device) { "median" } else { "mean" };
    Ok(BenchFigures {
        first_step_s,
        step_s,
        clips_per_s: cfg.data.batch_size as f64 / step_s,
        statistic,
    })
}

/// What `bench` measured.
#[derive(Debug, Clone, Copy)]
pub struct BenchFigures {
    /// From the start of the process's trainer to the end of its first step.
    pub first_step_s: f64,
    /// Step after the warm-up: the median on a CPU backend, the mean of queued steps on a device.
    pub step_s: f64,
    pub clips_per_s: f64,
    /// "median" or "mean".
    pub statistic: &'static str,
}

/// The step over `devices` (one worker each, the global batch split between them): seconds
/// per step (the median over the timed steps of worker 0, every step ending in the gradient
/// all-reduce, so it is the group's step) and global clips/s.
pub fn bench_devices<B: AutodiffBackend>(
    cfg: &TrainConfig,
    devices: &[B::Device],
    frames: usize,
    points: usize,
    warmup: usize,
    steps: usize,
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
    let t_start = Instant::now();
    let batch =
        Batch::random(cfg.data.batch_size, frames, points, cfg.model.img_size, cfg.run.seed);
    let parts = batch.split(n);
    let collective = Collective::new(n, crate::train::fit::COLLECTIVE_TIMEOUT);
    let figures: Vec<Result<(f64, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .zip(&parts)
            .enumerate()
            .map(|(rank, (device, part))| {
                let collective = collective.clone();
                s.spawn(move || -> Result<(f64, f64)> {
                    let run = || -> Result<(f64, f64)> {
                        let mut trainer = Trainer::<B>::new(cfg, device)?;
                        trainer.total_steps = (warmup + steps + 1) as u64;
                        let first_clip = rank * cfg.data.batch_size / n;
                        trainer.group =
                            Some(Group { rank, collective: collective.clone(), first_clip });
                        trainer.broadcast_from_rank0()?;
                        trainer.step(part)?;
                        let first = t_start.elapsed().as_secs_f64();
                        for _ in 1..warmup.max(1) {
                            trainer.step(part)?;
                        }
                        let mut times = Vec::with_capacity(steps.max(1));
                        for _ in 0..steps.max(1) {
                            let t0 = Instant::now();
                            trainer.step(part)?;
                            times.push(t0.elapsed().as_secs_f64());
                        }
                        times.sort_by(f64::total_cmp);
                        Ok((first, times[times.len() / 2]))
                    };
                    let r = run();
                    if let Err(e) = &r {
                        collective.fail(format!("worker {rank}: {e:#}"));
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a worker panicked"))))
            .collect()
    });
    let mut figures = figures.into_iter().collect::<Result<Vec<_>>>()?;
    let (first_step_s, step_s) = figures.swap_remove(0);
    Ok(BenchFigures {
        first_step_s,
        step_s,
        clips_per_s: cfg.data.batch_size as f64 / step_s,
        statistic: "median",
    })
}
