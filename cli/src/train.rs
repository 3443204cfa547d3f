//! `mosic train`, `mosic export` and `mosic bench train`.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use mosic_trainer::backend::{dispatch, WithBackend};
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
    /// Run directory (config, metrics, plot, checkpoints).
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Burn backend: ndarray (CPU, always built), or cuda / tch / flex / candle when built with that feature.
    #[arg(long, default_value = mosic_trainer::backend::DEFAULT)]
    backend: String,
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
        mosic_trainer::train::train::<B>(&self.cfg, &self.out, self.resume, self.stop_after, &device, &|l| eprintln!("{l}"))
    }
}

pub fn train(a: TrainArgs) -> Result<ExitCode> {
    let config = if a.resume && a.config.is_none() {
        let p = a.out.join("config.toml");
        p.is_file().then_some(p)
    } else {
        a.config.clone()
    };
    let cfg = TrainConfig::load(config.as_deref(), &a.set)?;
    let s = dispatch(&a.backend, Train { cfg, out: a.out.clone(), resume: a.resume, stop_after: a.stop_after })?;
    println!(
        "train: {} steps, loss {} -> {}, {:.2} clips/s, run in {}{}",
        s.steps,
        s.first_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
        s.last_loss.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
        s.clips_per_second,
        a.out.display(),
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
    /// Output .safetensors with timm's key names.
    #[arg(long)]
    out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<ExitCode> {
    use burn::backend::NdArray;
    let ckpt = mosic_trainer::train::export::<NdArray<f32>>(&a.run, a.checkpoint.as_deref(), &a.out, &Default::default())?;
    let cfg: TrainConfig = toml::from_str(&std::fs::read_to_string(a.run.join("config.toml"))?)?;
    println!("wrote {} (teacher backbone of {}, timm model {} at img_size={})", a.out.display(), ckpt.display(), cfg.model.preset, cfg.model.img_size);
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
    type Output = (f64, f64);
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        mosic_trainer::train::bench::<B>(&self.cfg, &device, self.frames, self.points, self.warmup, self.steps)
    }
}

pub fn bench(a: BenchTrainArgs) -> Result<ExitCode> {
    let cfg = TrainConfig::load(a.config.as_deref(), &a.set)?;
    let (secs, rate) = dispatch(&a.backend, Bench { cfg: cfg.clone(), frames: a.frames, points: a.points, steps: a.steps, warmup: a.warmup })
        .with_context(|| format!("bench on backend {}", a.backend))?;
    println!("backend          {}", a.backend);
    println!("model            {} at {} px, last {} blocks trainable", cfg.model.preset, cfg.model.img_size, cfg.model.trainable_blocks);
    println!("batch            {} clips x {} frames x {} points, mask ratio {}", cfg.data.batch_size, a.frames, a.points, cfg.objective.mask_ratio);
    println!("step             {:.1} ms (mean of {} after {} warm-up steps)", secs * 1e3, a.steps, a.warmup);
    println!("throughput       {rate:.2} clips/s");
    println!("peak memory      {} (resident set, host)", peak_rss());
    Ok(ExitCode::SUCCESS)
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l["VmHWM:".len()..].trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}
