//! A training run: the checks before any work (config, resume, data, validation set), then
//! the global batches fed to one worker per device until the last step.

use super::collective::Collective;
use super::step::CheckpointState;
use super::worker::{panic_text, worker, Job, Record, WorkerCtx};
use crate::data::Loader;
use crate::eval::validate::ValSet;
use crate::model::VitConfig;
use crate::run::dir as rundir;
use crate::TrainConfig;
use anyhow::{anyhow, bail, ensure, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub seconds: f64,
    pub clips_per_second: f64,
    pub last_checkpoint: Option<PathBuf>,
}

pub use super::worker::FaultHook;

/// How long a worker waits in a collective for the others before the run fails: longer than
/// any step or validation, short enough that a wedged device does not hold a run forever.
pub const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Trains into the run directory `run`: `config.toml`, `metrics.jsonl`, `loss.png` and
/// `checkpoints/`. With `resume`, continues from the newest checkpoint exactly where it
/// stopped (model, optimiser, EMA teacher, data position, masking).
///
/// One worker thread per device in `devices`; each takes its share of every global batch of
/// `data.batch_size` clips (split in order) and all take the same step on the summed
/// gradients ([`crate::train::collective`]). Worker 0 writes metrics, checkpoints and validation.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    devices: &[B::Device],
    log: &(dyn Fn(&str) + Sync),
) -> Result<Summary> {
    train_hooked::<B>(cfg, run, resume, stop_after, devices, log, None)
}

#[doc(hidden)]
pub fn train_hooked<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    devices: &[B::Device],
    log: &(dyn Fn(&str) + Sync),
    fault: Option<&FaultHook>,
) -> Result<Summary> {
    let n = devices.len();
    ensure!(n >= 1, "no device to train on");
    let Opened { mut loader, val_set, resume_from, first_step, total, end } =
        open(cfg, run, resume, stop_after, n, log)?;
    let collective = Collective::new(n, COLLECTIVE_TIMEOUT);
    let record = Record {
        history: Mutex::new(rundir::read_metrics(run, first_step)),
        last_checkpoint: Mutex::new(resume_from.clone()),
    };
    let start = Instant::now();
    let ctx = WorkerCtx {
        cfg,
        run,
        resume_from: resume_from.as_deref(),
        total,
        end,
        val_set: val_set.as_ref(),
        record: &record,
        log,
        fault,
        collective: &collective,
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let mut feeds = Vec::new();
        let mut workers = Vec::new();
        for (rank, device) in devices.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1);
            feeds.push(tx);
            let ctx = &ctx;
            let worker = std::thread::Builder::new()
                .name(format!("mosic-train-{rank}"))
                .spawn_scoped(s, move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        worker::<B>(ctx, rank, device, rx)
                    }))
                    .unwrap_or_else(|p| Err(anyhow!("panicked: {}", panic_text(&*p))));
                    let r = r.map_err(|e| e.context(format!("worker {rank} ({device:?})")));
                    if let Err(e) = &r {
                        ctx.collective.fail(format!("{e:#}"));
                    }
                    r
                })
                .expect("a training thread starts");
            workers.push(worker);
        }
        let fed = feed(&mut loader, first_step..end, &feeds);
        if let Err(e) = &fed {
            collective.fail(format!("{e:#}"));
        }
        drop(feeds);
        let mut out: Vec<Result<()>> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a worker thread died"))))
            .collect();
        out.push(fed);
        out
    });
    let history = record.history.into_inner().unwrap_or_else(|e| e.into_inner());
    let last_ckpt = record.last_checkpoint.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = results.into_iter().find_map(Result::err) {
        crate::run::plot::run_curves(run, &history);
        let keep = match &last_ckpt {
            Some(c) => format!("the last good checkpoint is {}", c.display()),
            None => "no checkpoint was written before it".to_string(),
        };
        // The first failure is the cause; the others are workers it stopped.
        let cause = collective.failure().map(|f| anyhow!("{f}")).unwrap_or(e);
        return Err(cause.context(format!("training stopped; {keep}")));
    }
    let steps = history.last().map_or(first_step, |s| s.step).max(end);
    let done = steps.saturating_sub(first_step);
    let seconds = start.elapsed().as_secs_f64();
    Ok(Summary {
        steps,
        first_loss: history.first().map(|s| s.loss),
        last_loss: history.last().map(|s| s.loss),
        seconds,
        clips_per_second: (done * cfg.data.batch_size as u64) as f64 / seconds.max(1e-9),
        last_checkpoint: last_ckpt,
    })
}

/// A run whose checks have passed: the data from where it stopped, the validation set, and
/// the steps to take.
struct Opened {
    loader: Loader,
    val_set: Option<ValSet>,
    resume_from: Option<PathBuf>,
    first_step: u64,
    /// Steps of the whole run (the schedule's length).
    total: u64,
    /// The step this invocation stops after.
    end: u64,
}

/// Every check before any work (the batch split, the config against the run's own on
/// resume, checkpoints of another run, the data, the validation set); then the run's config
/// is written and the run announced.
fn open(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    world: usize,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Opened> {
    ensure!(
        cfg.data.batch_size.is_multiple_of(world),
        "data.batch_size = {} does not split over {world} devices: use a multiple of {world}",
        cfg.data.batch_size
    );
    let config_path = rundir::config_path(run);
    if resume {
        let old = std::fs::read_to_string(&config_path)
            .with_context(|| format!("--resume: no {}", config_path.display()))?;
        let old: TrainConfig = toml::from_str(&old)
            .with_context(|| format!("{} is malformed", config_path.display()))?;
        if &old != cfg {
            bail!(
                "--resume: the configuration differs from {}; resume with the run's own config",
                config_path.display()
            );
        }
    } else if !rundir::checkpoints(run).is_empty() {
        bail!("{} already holds checkpoints; pass --resume to continue it or choose another run directory", run.display());
    }
    let resume_from = if resume { rundir::newest_checkpoint(run) } else { None };
    let start_state: Option<CheckpointState> =
        resume_from.as_deref().map(rundir::read_checkpoint_state).transpose()?;
    let loader_state = start_state.as_ref().map(|s| s.loader.clone()).unwrap_or_default();
    let first_step = start_state.as_ref().map_or(0, |s| s.step);
    let loader = Loader::open(&cfg.data.shards, cfg.loader_config(), loader_state)?;
    for note in loader.notes() {
        log(&format!("note: {}: {note}", cfg.data.shards.display()));
    }
    let total = cfg.total_steps(loader.batches_per_epoch());
    let val_cfg = &cfg.validation;
    let val_set = (val_cfg.every > 0)
        .then(|| {
            ValSet::load(val_cfg)
                .with_context(|| format!("validation set {}", val_cfg.data.display()))
        })
        .transpose()?;
    // Everything is checked; from here on the run writes.
    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    mosic::fsutil::write_atomic(&config_path, cfg.to_toml().as_bytes())?;
    if let Some(c) = &resume_from {
        log(&format!("resumed from {} (step {first_step})", c.display()));
    }
    let opened = Opened {
        loader,
        val_set,
        resume_from,
        first_step,
        total,
        end: stop_after.unwrap_or(total).min(total),
    };
    announce(cfg, &opened, world, log)?;
    Ok(opened)
}

/// The run's one-line description, and its validation's.
fn announce(
    cfg: &TrainConfig,
    o: &Opened,
    world: usize,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let vit = VitConfig::preset(&cfg.model.preset, cfg.model.img_size)?;
    let (spec, per_epoch) = (o.loader.spec(), o.loader.batches_per_epoch());
    let schedule = match cfg.run.steps {
        Some(s) => format!("{s} steps (run.steps; {:.2} epochs)", s as f64 / per_epoch as f64),
        None => format!("{} epochs x {per_epoch} steps = {} steps", cfg.run.epochs, o.total),
    };
    let devices = if world > 1 {
        format!(" over {world} devices ({} clips each)", cfg.data.batch_size / world)
    } else {
        String::new()
    };
    let per_video = match cfg.data.clips_per_video {
        0 => "all".to_string(),
        c => c.to_string(),
    };
    let grid = cfg.data.grid_size;
    log(&format!(
        "training {} ({} blocks, last {} trainable) on {}: {} videos, {} clips/epoch ({per_video} per \
         video), {} frames, {grid}x{grid} grid in each crop from a stored {}x{} grid; batch {}{devices}, \
         {schedule}",
        cfg.model.preset,
        vit.depth,
        vit.depth - cfg.model.trainable_blocks.frozen_blocks(vit.depth),
        cfg.data.shards.display(),
        o.loader.videos(),
        o.loader.clips_per_epoch(),
        spec.frames_per_clip,
        spec.grid_size,
        spec.grid_size,
        cfg.data.batch_size,
    ));
    if let Some(set) = &o.val_set {
        let v = &cfg.validation;
        log(&format!(
            "validation every {} steps on {} ({})",
            v.every,
            v.data.display(),
            set.describe()
        ));
    }
    Ok(())
}

/// The global batches from the first step to the last, each split over the workers' feeds;
/// stops early where a worker has ended (its error says why).
fn feed(
    loader: &mut Loader,
    steps: std::ops::Range<u64>,
    feeds: &[std::sync::mpsc::SyncSender<Job>],
) -> Result<()> {
    let n = feeds.len();
    for _ in steps {
        let batch = loader.next_batch()?;
        let state = loader.state();
        let parts = if n == 1 { vec![batch] } else { batch.split(n) };
        if parts
            .into_iter()
            .zip(feeds)
            .any(|(part, tx)| tx.send(Job { batch: part, loader: state.clone() }).is_err())
        {
            break;
        }
    }
    Ok(())
}
