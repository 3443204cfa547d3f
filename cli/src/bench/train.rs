//! `mosic bench train`: clips/s and peak memory of the training step for a config and backend.

use crate::job::Job;
use crate::train::target;
use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use mosic_trainer::backend::{dispatch, WithBackend};
use mosic_trainer::train::comm::Comm;
use mosic_trainer::TrainConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub struct BenchTrainArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(long, default_value = mosic_trainer::backend::DEFAULT)]
    backend: String,
    /// cpu, or cuda:N for the cuda and tch backends.
    #[arg(long, default_value = "cpu", conflicts_with = "devices")]
    device: String,
    /// Device sets to compare, one run each: CPU worker counts (`1,2`), or repeated lists
    /// (`--devices cuda:0 --devices cuda:0,cuda:1`). Prints clips/s and the scaling efficiency.
    #[arg(long)]
    devices: Vec<String>,
    /// Frames per clip and points per clip of the random batches.
    #[arg(long, default_value_t = 12)]
    frames: usize,
    #[arg(long, default_value_t = 256)]
    points: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first (allocation; kernel compilation on GPUs).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
}

struct Bench {
    cfg: TrainConfig,
    frames: usize,
    points: usize,
    steps: usize,
    warmup: usize,
    /// The MPI job this process is a rank of.
    job: Option<Arc<dyn Comm>>,
}

impl WithBackend for Bench {
    type Output = mosic_trainer::train::bench::BenchFigures;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.run_on::<B>(vec![device])
    }
    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
        if let Some(comm) = self.job {
            return mosic_trainer::train::bench::bench_in_job::<B>(
                &self.cfg,
                comm,
                &devices[0],
                self.frames,
                self.points,
                self.warmup,
                self.steps,
            );
        }
        mosic_trainer::train::bench::bench_devices::<B>(
            &self.cfg,
            &devices,
            self.frames,
            self.points,
            self.warmup,
            self.steps,
        )
    }
}

/// `--devices 1,2` is two runs (one and two CPU workers); any other value is one device set.
fn device_sets(specs: &[String], device: &str) -> Vec<String> {
    if specs.is_empty() {
        return vec![device.to_string()];
    }
    specs
        .iter()
        .flat_map(|s| {
            let counts: Vec<&str> = s.split(',').collect();
            if counts.iter().all(|c| c.trim().parse::<usize>().is_ok()) {
                counts.into_iter().map(|c| c.trim().to_string()).collect()
            } else {
                vec![s.clone()]
            }
        })
        .collect()
}

pub fn bench(a: BenchTrainArgs) -> Result<ExitCode> {
    let job = Job::detect()?;
    let r = bench_as(a, &job);
    if let (Err(e), Some(j)) = (&r, &job) {
        j.comm.fail(&format!("{e:#}"));
    }
    r
}

fn bench_as(a: BenchTrainArgs, job: &Option<Job>) -> Result<ExitCode> {
    let cfg = TrainConfig::load(a.config.as_deref(), &a.set)?;
    let (sets, targets) = match job {
        // Under an MPI launcher: one run over the job's ranks, each on its device.
        Some(j) => {
            anyhow::ensure!(
                a.devices.is_empty(),
                "--devices: under an MPI launcher each process is one rank"
            );
            let d = j.device(&a.device)?;
            (
                vec![format!("{} MPI ranks", j.comm.size())],
                vec![target(&a.backend, &d, None, &cfg)?],
            )
        }
        None => {
            let sets = device_sets(&a.devices, &a.device);
            let targets = sets
                .iter()
                .map(|d| target(&a.backend, "cpu", Some(d), &cfg))
                .collect::<Result<Vec<_>>>()?;
            (sets, targets)
        }
    };
    let lead = job.as_ref().is_none_or(|j| j.rank() == 0);
    let say = |l: String| {
        if lead {
            println!("{l}");
        }
    };
    say(format!(
        "model            {} at {} px, trainable blocks {:?}",
        cfg.model.preset, cfg.model.img_size, cfg.model.trainable_blocks
    ));
    say(format!(
        "batch            {} clips (global) x {} frames x {} points, mask ratio {}",
        cfg.data.batch_size, a.frames, a.points, cfg.objective.mask_ratio
    ));
    let mut rows = Vec::new();
    for (spec, target) in sets.iter().zip(&targets) {
        let work = Bench {
            cfg: cfg.clone(),
            frames: a.frames,
            points: a.points,
            steps: a.steps,
            warmup: a.warmup,
            job: job.as_ref().map(|j| j.comm.clone()),
        };
        let f = dispatch(target, work)
            .with_context(|| format!("bench on backend {} with devices {spec}", a.backend))?;
        let share = f
            .collective_share
            .map(|s| format!(", collectives {:.1}% of the step", 100.0 * s))
            .unwrap_or_default();
        say(format!(
            "{} on {spec}: step {:.1} ms ({} of {} after {} warm-up), {:.2} clips/s, first step {:.1} s{share}",
            a.backend,
            f.step_s * 1e3,
            f.statistic,
            a.steps,
            a.warmup,
            f.clips_per_s,
            f.first_step_s
        ));
        let ranks = job.as_ref().map_or(target.devices.len(), |j| j.comm.size());
        rows.push((spec.clone(), ranks, f));
    }
    if rows.len() > 1 && lead {
        println!();
        println!(
            "| devices | ranks | ms/step | clips/s | clips/s per rank | scaling efficiency | collectives / step |"
        );
        println!("|---|---|---|---|---|---|---|");
        let base = rows[0].2.clips_per_s / rows[0].1 as f64;
        for (spec, n, f) in &rows {
            let per = f.clips_per_s / *n as f64;
            let share = f.collective_share.map_or("-".into(), |s| format!("{:.1}%", 100.0 * s));
            println!(
                "| {spec} | {n} | {:.1} | {:.2} | {per:.2} | {:.2} | {share} |",
                f.step_s * 1e3,
                f.clips_per_s,
                per / base
            );
        }
        println!("scaling efficiency = clips/s per rank / that of the first row; collectives: rank 0's host time in them");
    }
    say(format!("peak memory      {} (resident set, host)", crate::peak::text()));
    Ok(ExitCode::SUCCESS)
}
