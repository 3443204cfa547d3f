//! `mosic bench train`: clips/s and peak memory of the training step for a config and backend.

use crate::train::target;
use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use mosic_trainer::backend::{dispatch, WithBackend};
use mosic_trainer::TrainConfig;
use std::path::PathBuf;
use std::process::ExitCode;

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
}

impl WithBackend for Bench {
    type Output = mosic_trainer::train::bench::BenchFigures;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.run_on::<B>(vec![device])
    }
    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
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
    let cfg = TrainConfig::load(a.config.as_deref(), &a.set)?;
    let sets = device_sets(&a.devices, &a.device);
    let targets = sets
        .iter()
        .map(|d| target(&a.backend, "cpu", Some(d), &cfg))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "model            {} at {} px, trainable blocks {:?}",
        cfg.model.preset, cfg.model.img_size, cfg.model.trainable_blocks
    );
    println!(
        "batch            {} clips (global) x {} frames x {} points, mask ratio {}",
        cfg.data.batch_size, a.frames, a.points, cfg.objective.mask_ratio
    );
    let mut rows = Vec::new();
    for (spec, target) in sets.iter().zip(&targets) {
        let job = Bench {
            cfg: cfg.clone(),
            frames: a.frames,
            points: a.points,
            steps: a.steps,
            warmup: a.warmup,
        };
        let f = dispatch(target, job)
            .with_context(|| format!("bench on backend {} with devices {spec}", a.backend))?;
        println!(
            "{} on {spec}: step {:.1} ms ({} of {} after {} warm-up), {:.2} clips/s, first step {:.1} s",
            a.backend,
            f.step_s * 1e3,
            f.statistic,
            a.steps,
            a.warmup,
            f.clips_per_s,
            f.first_step_s
        );
        rows.push((spec.clone(), target.devices.len(), f));
    }
    if rows.len() > 1 {
        println!();
        println!(
            "| devices | workers | ms/step | clips/s | clips/s per worker | scaling efficiency |"
        );
        println!("|---|---|---|---|---|---|");
        let base = rows[0].2.clips_per_s / rows[0].1 as f64;
        for (spec, n, f) in &rows {
            let per = f.clips_per_s / *n as f64;
            println!(
                "| {spec} | {n} | {:.1} | {:.2} | {per:.2} | {:.2} |",
                f.step_s * 1e3,
                f.clips_per_s,
                per / base
            );
        }
        println!("scaling efficiency = clips/s per worker / that of the first row");
    }
    println!("peak memory      {} (resident set, host)", crate::peak::text());
    Ok(ExitCode::SUCCESS)
}
