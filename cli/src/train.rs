//! `mosic train`, `mosic export` and `mosic bench train`.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use mosic_trainer::backend::{dispatch, Target, WithBackend};
use mosic_trainer::rundir;
use mosic_trainer::TrainConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct TrainArgs {
    /// TOML config (see configs/); defaults apply to whatever it leaves out.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides, e.g. --set objective.mask_ratio=0.2 --set data.shards=data/tracks
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (config, metrics, plots, checkpoints). Default: a new
    /// runs/<config name>/<date-time>; with --resume, the newest run of the config.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the default run directories live.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Continue a run from its newest checkpoint (--out, or the config's newest run).
    #[arg(long)]
    resume: bool,
    /// Burn backend: flex or ndarray (CPU, always built), or cuda / tch / candle when built with that feature.
    #[arg(long, default_value = mosic_trainer::backend::DEFAULT)]
    backend: String,
    /// Device: cpu, or cuda:N for the cuda and tch backends.
    #[arg(long, default_value = "cpu", conflicts_with = "devices")]
    device: String,
    /// Train over several devices, one worker each, sharing every batch of data.batch_size
    /// clips: a count of CPU workers (2), or a list (cuda:0,cuda:1,...).
    #[arg(long)]
    devices: Option<String>,
    /// Stop (with a checkpoint) after this step; `--resume` continues the same schedule.
    #[arg(long)]
    stop_after: Option<u64>,
}

struct Train {
    cfg: TrainConfig,
    out: PathBuf,
    resume: bool,
    stop_after: Option<u64>,
}

impl WithBackend for Train {
    type Output = mosic_trainer::train::Summary;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.run_on::<B>(vec![device])
    }
    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
        mosic_trainer::train::train::<B>(
            &self.cfg,
            &self.out,
            self.resume,
            self.stop_after,
            &devices,
            &|l| eprintln!("{l}"),
        )
    }
}

/// The backend on the devices `--devices` (or `--device`) names, checked with the config:
/// every device usable, and the global batch split evenly over them.
fn target(backend: &str, device: &str, devices: Option<&str>, cfg: &TrainConfig) -> Result<Target> {
    let target = Target::resolve(backend, devices.unwrap_or(device), cfg.model.precision)?;
    let n = target.devices.len();
    anyhow::ensure!(
        cfg.data.batch_size.is_multiple_of(n),
        "--devices: data.batch_size = {} does not split over {n} devices; use a multiple of {n} (it is the global batch)",
        cfg.data.batch_size
    );
    Ok(target)
}

pub fn train(a: TrainArgs) -> Result<ExitCode> {
    let out = match (&a.out, a.resume) {
        (Some(o), _) => o.clone(),
        (None, true) => {
            let dir = rundir::runs_of(&a.runs, a.config.as_deref());
            rundir::newest_run(&dir).with_context(|| {
                format!(
                    "--resume: no run of this config in {} (name one with --out)",
                    dir.display()
                )
            })?
        }
        (None, false) => PathBuf::new(),
    };
    let config = if a.resume && a.config.is_none() {
        let p = out.join("config.toml");
        p.is_file().then_some(p)
    } else {
        a.config.clone()
    };
    // Every value is checked before a run directory is made.
    let cfg = TrainConfig::load(config.as_deref(), &a.set)?;
    let target = target(&a.backend, &a.device, a.devices.as_deref(), &cfg)?;
    let out = if out.as_os_str().is_empty() {
        rundir::new_run(&rundir::runs_of(&a.runs, a.config.as_deref()))?
    } else {
        out
    };
    eprintln!("run directory {}", out.display());
    let s = dispatch(
        &target,
        Train { cfg, out: out.clone(), resume: a.resume, stop_after: a.stop_after },
    )?;
    println!(
        "train: {} steps, loss {} -> {}, {:.2} clips/s, run in {}{}",
        s.steps,
        s.first_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
        s.last_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
        s.clips_per_second,
        out.display(),
        s.last_checkpoint.map(|c| format!(" (checkpoint {})", c.display())).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ExportArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
    /// A checkpoint folder of the run (default: the newest).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Input size the export is made for (pos_embed resampled; default: the run's).
    #[arg(long)]
    img_size: Option<usize>,
    /// Output .safetensors with timm's key names.
    #[arg(long)]
    out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<ExitCode> {
    use burn::backend::NdArray;
    let cfg = rundir::read_config(&a.run)?;
    let ckpt = mosic_trainer::features::export::<NdArray<f32>>(
        &a.run,
        a.checkpoint.as_deref(),
        a.img_size,
        &a.out,
        &Default::default(),
    )?;
    let size = a.img_size.unwrap_or(cfg.model.img_size);
    println!(
        "wrote {} (teacher backbone of {}, timm model {} at img_size={size})",
        a.out.display(),
        ckpt.display(),
        cfg.model.preset
    );
    Ok(ExitCode::SUCCESS)
}

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
    type Output = mosic_trainer::bench::BenchFigures;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.run_on::<B>(vec![device])
    }
    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
        mosic_trainer::bench::bench_devices::<B>(
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
    println!("peak memory      {} (resident set, host)", peak_rss());
    Ok(ExitCode::SUCCESS)
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
