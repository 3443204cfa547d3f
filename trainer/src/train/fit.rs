//! A training run: the checks before any work (config, resume, data, validation set), then
//! the global batches fed to the ranks of this process until the last step.
//!
//! The ranks are the threads of this process, one per device (`--devices`), or this process
//! alone as one rank of an MPI job (`mpirun -n 8 mosic train ...`), which then reads and
//! decodes only its own share of every global batch.

use super::comm::threads::Threads;
use super::comm::Comm;
use super::step::CheckpointState;
use super::worker::{panic_text, worker, Job, Record, Shared};
use crate::data::Loader;
use crate::eval::validate::ValSet;
use crate::model::VitConfig;
use crate::run::dir as rundir;
use crate::TrainConfig;
use anyhow::{anyhow, bail, ensure, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
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

/// Where the ranks of a run are.
pub enum World<D> {
    /// This process, one worker thread per device.
    Threads(Vec<D>),
    /// This process is the rank `comm.rank()` of a job of `comm.size()` processes, on `device`.
    Rank { comm: Arc<dyn Comm>, device: D },
}

impl<D> World<D> {
    fn size(&self) -> usize {
        match self {
            World::Threads(d) => d.len(),
            World::Rank { comm, .. } => comm.size(),
        }
    }

    /// The global rank that writes (rank 0) lives in this process.
    fn writes(&self) -> bool {
        match self {
            World::Threads(_) => true,
            World::Rank { comm, .. } => comm.rank() == 0,
        }
    }
}

/// How long the ranks of this process may take to end once one of them has failed, before
/// the run reports the failure and leaves them (stuck in a device call) behind.
const GRACE: Duration = Duration::from_secs(20);

/// Trains into the run directory `run`: `config.toml`, `metrics.jsonl`, `loss.png` and
/// `checkpoints/`. With `resume`, continues from the newest checkpoint exactly where it
/// stopped (model, optimiser, EMA teacher, data position, masking).
///
/// One worker thread per device in `devices`; each takes its share of every global batch of
/// `data.batch_size` clips (split in order) and all take the same step on the summed
/// gradients ([`crate::train::comm`]). Worker 0 writes metrics, checkpoints and validation.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    devices: &[B::Device],
    log: &(dyn Fn(&str) + Sync),
) -> Result<Summary> {
    train_in::<B>(cfg, run, resume, stop_after, World::Threads(devices.to_vec()), log, None)
}

/// [`train`] over any [`World`], with a fault a test injects.
#[doc(hidden)]
pub fn train_in<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    world: World<B::Device>,
    log: &(dyn Fn(&str) + Sync),
    fault: Option<Arc<FaultHook>>,
) -> Result<Summary> {
    let n = world.size();
    ensure!(n >= 1, "no device to train on");
    let Opened { mut loader, val_set, resume_from, first_step, total, end } =
        open(cfg, run, resume, stop_after, &world, log)?;
    let (log_tx, log_rx) = std::sync::mpsc::channel::<String>();
    let ctx = Arc::new(Shared {
        cfg: cfg.clone(),
        run: run.to_path_buf(),
        resume_from: resume_from.clone(),
        total,
        end,
        val_set: val_set.map(Arc::new),
        record: Record {
            history: std::sync::Mutex::new(if world.writes() {
                rundir::read_metrics(run, first_step)?
            } else {
                Vec::new()
            }),
            last_checkpoint: std::sync::Mutex::new(resume_from.clone()),
        },
        log: log_tx,
        fault,
    });
    let start = Instant::now();
    let ranks: Vec<(Arc<dyn Comm>, B::Device)> = match world {
        World::Threads(devices) => {
            let group = Threads::new(devices.len());
            devices
                .into_iter()
                .enumerate()
                .map(|(r, d)| (Arc::new(group.rank(r)) as Arc<dyn Comm>, d))
                .collect()
        }
        World::Rank { comm, device } => vec![(comm, device)],
    };
    let first_comm = ranks[0].0.clone();
    let local = ranks.len();
    let (feeds, done) = spawn::<B>(&ctx, ranks);
    let fed = feed(&mut loader, first_step..end, &feeds, first_comm.as_ref(), &log_rx, log);
    if let Err(e) = &fed {
        first_comm.fail(&format!("{e:#}"));
    }
    drop(feeds);
    let failure = collect(&done, local, first_comm.as_ref(), &log_rx, log);
    let history = ctx.record.history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last_ckpt = ctx.record.last_checkpoint.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(e) = failure.or(fed.err()) {
        crate::run::plot::run_curves(run, &history);
        let keep = match &last_ckpt {
            Some(c) => format!("the last good checkpoint is {}", c.display()),
            None => "no checkpoint was written before it".to_string(),
        };
        return Err(e.context(format!("training stopped; {keep}")));
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

/// A rank of this process that has ended, and how.
type Ended = (usize, Result<()>);

/// Starts a thread per rank of this process: its feed, and the channel its result comes back
/// on (rank, result). A rank's error or panic ends the run on every rank.
fn spawn<B: AutodiffBackend>(
    ctx: &Arc<Shared>,
    ranks: Vec<(Arc<dyn Comm>, B::Device)>,
) -> (Vec<SyncSender<Job>>, Receiver<Ended>) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut feeds = Vec::new();
    for (comm, device) in ranks {
        let (tx, rx) = sync_channel::<Job>(1);
        feeds.push(tx);
        let (ctx, done) = (ctx.clone(), done_tx.clone());
        let rank = comm.rank();
        std::thread::Builder::new()
            .name(format!("mosic-rank-{rank}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker::<B>(&ctx, comm.clone(), &device, rx)
                }))
                .unwrap_or_else(|p| Err(anyhow!("panicked: {}", panic_text(&*p))));
                let r = r.map_err(|e| e.context(format!("rank {rank} ({device:?})")));
                if let Err(e) = &r {
                    comm.fail(&format!("{e:#}"));
                }
                // This rank's hold on the communicator ends before the caller learns it has
                // ended: an MPI job is finalised when the last one goes.
                drop(comm);
                let _ = done.send((rank, r));
            })
            .expect("a rank's thread starts");
    }
    (feeds, done_rx)
}

/// Passes on what the ranks log.
fn relay(log_rx: &Receiver<String>, log: &(dyn Fn(&str) + Sync)) {
    while let Ok(line) = log_rx.try_recv() {
        log(&line);
    }
}

/// The global batches from the first step to the last, each split over the feeds of this
/// process's ranks; stops early where a rank has ended or the run has failed.
fn feed(
    loader: &mut Loader,
    steps: std::ops::Range<u64>,
    feeds: &[SyncSender<Job>],
    comm: &dyn Comm,
    log_rx: &Receiver<String>,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let n = feeds.len();
    for _ in steps {
        let batch = loader.next_batch()?;
        let state = loader.state();
        let parts = if n == 1 { vec![batch] } else { batch.split(n) };
        for (part, tx) in parts.into_iter().zip(feeds) {
            let mut job = Job { batch: part, loader: state.clone() };
            loop {
                relay(log_rx, log);
                match tx.try_send(job) {
                    Ok(()) => break,
                    Err(TrySendError::Full(j)) if comm.failure().is_none() => {
                        job = j;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    // A rank ended or the run failed: its error says why.
                    Err(_) => return Ok(()),
                }
            }
        }
    }
    Ok(())
}

/// Waits for the ranks of this process to end: every one of them when none fails; once one
/// has, at most [`GRACE`] more, then the failure is reported with the ranks still running
/// named (stuck in a device call, they are left behind).
fn collect(
    done: &Receiver<Ended>,
    local: usize,
    comm: &dyn Comm,
    log_rx: &Receiver<String>,
    log: &(dyn Fn(&str) + Sync),
) -> Option<anyhow::Error> {
    let mut ended = std::collections::BTreeSet::new();
    let mut first_error: Option<anyhow::Error> = None;
    let mut failed_at: Option<Instant> = None;
    loop {
        relay(log_rx, log);
        if ended.len() == local {
            break;
        }
        match done.recv_timeout(Duration::from_millis(50)) {
            Ok((rank, r)) => {
                ended.insert(rank);
                if let Err(e) = r {
                    failed_at.get_or_insert_with(Instant::now);
                    first_error.get_or_insert(e);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if comm.failure().is_some() {
            failed_at.get_or_insert_with(Instant::now);
        }
        if failed_at.is_some_and(|t| t.elapsed() > GRACE) {
            break;
        }
    }
    relay(log_rx, log);
    // The first failure is the cause; the others are ranks it stopped.
    let cause = comm.failure().map(|f| anyhow!("{f}")).or(first_error)?;
    if ended.len() < local {
        return Some(cause.context(format!(
            "{} rank(s) of this process did not end within {} s of it (stuck in a device call)",
            local - ended.len(),
            GRACE.as_secs()
        )));
    }
    Some(cause)
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
fn open<D>(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    ranks: &World<D>,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Opened> {
    let world = ranks.size();
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
        if !old.same_run(cfg) {
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
    if let (Some(s), Some(c)) = (&start_state, &resume_from) {
        ensure!(
            s.world == world,
            "--resume: {} was written by a run over {} rank(s); resume it over {} (--devices or mpirun -n), \
             since another number sums the gradients in another order, or start a new run",
            c.display(),
            s.world,
            s.world
        );
    }
    let loader_state = start_state.as_ref().map(|s| s.loader.clone()).unwrap_or_default();
    let first_step = start_state.as_ref().map_or(0, |s| s.step);
    // An MPI rank reads and decodes its own share of every batch only.
    let share = match ranks {
        World::Rank { comm, .. } => (comm.rank(), world),
        World::Threads(_) => (0, 1),
    };
    let loader =
        Loader::open(&cfg.data.shards, cfg.loader_config().with_share(share), loader_state)?;
    if ranks.writes() {
        for note in loader.notes() {
            log(&format!("note: {}: {note}", cfg.data.shards.display()));
        }
    }
    let total = cfg.total_steps(loader.batches_per_epoch());
    let val_cfg = &cfg.validation;
    let val_set = (val_cfg.every > 0)
        .then(|| {
            ValSet::load(val_cfg)
                .with_context(|| format!("validation set {}", val_cfg.data.display()))
        })
        .transpose()?;
    // Everything is checked; from here on the run writes (rank 0 alone).
    if ranks.writes() {
        std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
        // Temporaries of a run that was killed while writing are never read; they go.
        for p in rundir::remove_stale_checkpoint_temps(run) {
            log(&format!("removed {}, left by an interrupted run", p.display()));
        }
        mosic::fsutil::write_atomic(&config_path, cfg.to_toml().as_bytes())?;
        if let Some(c) = &resume_from {
            log(&format!("resumed from {} (step {first_step})", c.display()));
        }
    }
    let opened = Opened {
        loader,
        val_set,
        resume_from,
        first_step,
        total,
        end: stop_after.unwrap_or(total).min(total),
    };
    if ranks.writes() {
        announce(cfg, &opened, world, log)?;
    }
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
