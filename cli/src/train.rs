//! `mosic train`, `mosic export` and `mosic bench train`.

use crate::job::Job;
use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use mosic_trainer::backend::{dispatch, Target, WithBackend};
use mosic_trainer::run::dir as rundir;
use mosic_trainer::train::comm::Comm;
use mosic_trainer::train::fit::{train_in, World};
use mosic_trainer::TrainConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    /// Device: cpu, or cuda:N for the cuda and tch backends. Under an MPI launcher, cpu or
    /// cuda: each rank takes the GPU of its local rank.
    #[arg(long, default_value = "cpu", conflicts_with = "devices")]
    device: String,
    /// Train over several devices of this process, one worker thread each, sharing every
    /// batch of data.batch_size clips: a count of CPU workers (2), or a list
    /// (cuda:0,cuda:1,...). Across processes and nodes: mpirun instead (docs/devices.md).
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
    /// The MPI job this process is a rank of.
    job: Option<Arc<dyn Comm>>,
}

impl WithBackend for Train {
    type Output = mosic_trainer::train::Summary;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.run_on::<B>(vec![device])
    }
    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
        let world = match self.job {
            Some(comm) => World::Rank { comm, device: devices[0].clone() },
            None => World::Threads(devices),
        };
        train_in::<B>(
            &self.cfg,
            &self.out,
            self.resume,
            self.stop_after,
            world,
            &|l| eprintln!("{l}"),
            None,
        )
    }
}

/// The backend on the devices `--devices` (or `--device`) names, checked with the config:
/// every device usable, and the global batch split evenly over them.
pub(crate) fn target(
    backend: &str,
    device: &str,
    devices: Option<&str>,
    cfg: &TrainConfig,
) -> Result<Target> {
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
    let job = Job::detect()?;
    let r = train_as(a, &job);
    // A rank that fails ends the whole job at once, with its message.
    if let (Err(e), Some(j)) = (&r, &job) {
        j.comm.fail(&format!("{e:#}"));
    }
    r
}

fn train_as(a: TrainArgs, job: &Option<Job>) -> Result<ExitCode> {
    if let (Some(_), Some(d)) = (job, &a.devices) {
        anyhow::bail!("--devices {d}: under an MPI launcher every process is one rank on one device; drop --devices (docs/devices.md)");
    }
    let lead = job.as_ref().is_none_or(|j| j.rank() == 0);
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
    let device = match job {
        Some(j) => j.device(&a.device)?,
        None => a.device.clone(),
    };
    let target = target(&a.backend, &device, a.devices.as_deref(), &cfg)?;
    if let Some(j) = job {
        anyhow::ensure!(
            cfg.data.batch_size.is_multiple_of(j.comm.size()),
            "data.batch_size = {} does not split over {} MPI ranks; use a multiple of {} (it is the global batch)",
            cfg.data.batch_size,
            j.comm.size(),
            j.comm.size()
        );
    }
    let out = if out.as_os_str().is_empty() && lead {
        rundir::new_run(&rundir::runs_of(&a.runs, a.config.as_deref()))?
    } else {
        out
    };
    // Every rank writes to or reads from rank 0's run directory.
    let out = match job {
        Some(j) => j.share_path(out)?,
        None => out,
    };
    if lead {
        eprintln!("run directory {}", out.display());
        if let Some(j) = job {
            eprintln!("ranks: {}", j.comm.describe());
        }
    }
    let s = dispatch(
        &target,
        Train {
            cfg,
            out: out.clone(),
            resume: a.resume,
            stop_after: a.stop_after,
            job: job.as_ref().map(|j| j.comm.clone()),
        },
    )?;
    if !lead {
        return Ok(ExitCode::SUCCESS);
    }
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
    let ckpt = mosic_trainer::eval::features::export::<NdArray<f32>>(
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
