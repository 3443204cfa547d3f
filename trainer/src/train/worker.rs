//! One rank's share of a run: its trainer, its part of every global batch, the same step as
//! every other rank; rank 0 also logs, validates and writes checkpoints, and the others wait
//! for it under their own limit.

use super::comm::{Comm, Group};
use super::step::Trainer;
use crate::data::{Batch, LoaderState};
use crate::eval::validate::ValSet;
use crate::model::weights;
use crate::run::dir::{self as rundir, MetricsLog, StepStats};
use crate::TrainConfig;
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A fault a test makes rank `rank` raise before its step `step` (1-based): an error it
/// returns, a panic it raises, or a stall it sleeps through.
#[doc(hidden)]
pub type FaultHook = dyn Fn(usize, u64) -> Result<()> + Send + Sync;

/// A rank's share of one global batch, with the data position after the whole batch.
pub(super) struct Job {
    pub(super) batch: Batch,
    pub(super) loader: LoaderState,
}

/// What the ranks of this process share; owned, so that a rank stuck in a device call can be
/// left behind when the run reports its failure.
pub(super) struct Shared {
    pub(super) cfg: TrainConfig,
    pub(super) run: PathBuf,
    pub(super) resume_from: Option<PathBuf>,
    pub(super) total: u64,
    pub(super) end: u64,
    pub(super) val_set: Option<Arc<ValSet>>,
    pub(super) record: Record,
    pub(super) log: Sender<String>,
    pub(super) fault: Option<Arc<FaultHook>>,
}

/// What rank 0 has written so far, kept for the summary and for a failure's message.
#[derive(Default)]
pub(super) struct Record {
    pub(super) history: Mutex<Vec<StepStats>>,
    pub(super) last_checkpoint: Mutex<Option<PathBuf>>,
}

/// Serialises trainer construction: Burn's random initialisers draw from a per-backend
/// generator that [`Trainer::new`] seeds, so ranks must not draw at the same time.
pub(super) static INIT: Mutex<()> = Mutex::new(());

pub(super) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Rank `comm.rank()`'s training on `device`: the same step as the others on its share of
/// every batch; rank 0 also logs, validates and writes checkpoints.
pub(super) fn worker<B: AutodiffBackend>(
    ctx: &Shared,
    comm: Arc<dyn Comm>,
    device: &B::Device,
    jobs: Receiver<Job>,
) -> Result<()> {
    let cfg = &ctx.cfg;
    let (rank, n) = (comm.rank(), comm.size());
    let mut trainer = {
        let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
        Trainer::<B>::new(cfg, device)?
    };
    trainer.total_steps = ctx.total;
    if n > 1 {
        let group = Group::new(comm, rank * cfg.data.batch_size / n, cfg.run.limits());
        #[cfg(feature = "tch")]
        let group = super::comm::nccl::attach::<B>(group, device)?;
        trainer.group = Some(group);
    }
    match &ctx.resume_from {
        Some(c) => {
            trainer.load_checkpoint(c)?;
        }
        None if n > 1 => trainer.broadcast_from_rank0()?,
        None => {}
    }
    let lead = rank == 0;
    if lead {
        if let Some(src) = trainer.source_pos_embed() {
            rundir::write_source_pos_embed(&ctx.run, src)?;
        }
    }
    let mut metrics = if lead {
        let history = ctx.record.history.lock().unwrap_or_else(|e| e.into_inner());
        Some(MetricsLog::open(&ctx.run, &history)?)
    } else {
        None
    };
    let (mut last_read, mut read_step) = (Instant::now(), trainer.step);
    let val_cfg = &cfg.validation;
    while let Ok(job) = jobs.recv() {
        if let Some(f) = &ctx.fault {
            f(rank, trainer.step + 1)?;
        }
        let out = trainer.step_async(&job.batch)?;
        let step = out.stats.step;
        let log_now = step % cfg.run.log_every == 0 || step == ctx.total || step == ctx.end;
        let ckpt_now = step % cfg.run.checkpoint_every == 0 || step == ctx.end;
        let val_now =
            ctx.val_set.is_some() && (step % val_cfg.every.max(1) == 0 || step == ctx.total);
        if !(log_now || ckpt_now || val_now) {
            continue; // no host read: the device runs ahead
        }
        let mut stats = trainer.read(out)?;
        let secs = last_read.elapsed().as_secs_f64() / (step - read_step).max(1) as f64;
        (last_read, read_step) = (Instant::now(), step);
        stats.seconds = Some(secs);
        if let Some(metrics) = metrics.as_mut() {
            if let (Some(set), true) = (&ctx.val_set, val_now) {
                stats.validation = Some(validate(ctx, &trainer, set, step)?);
            }
            if log_now || stats.validation.is_some() {
                metrics.append(&stats)?;
                ctx.record.history.lock().unwrap_or_else(|e| e.into_inner()).push(stats.clone());
            }
            if log_now {
                let _ = ctx.log.send(format!(
                    "step {step:>6}/{}  loss {:.4}  lr {:.2e}  grad {:.3}  visible {:.2}  in loss {:.2}  usage {:.2}  {:.1} clips/s",
                    ctx.total,
                    stats.loss,
                    stats.lr,
                    stats.grad_norm,
                    stats.visible,
                    stats.in_loss,
                    stats.usage_entropy,
                    cfg.data.batch_size as f64 / secs
                ));
            }
            if ckpt_now {
                metrics.flush()?;
                let c = trainer.save_checkpoint(&ctx.run, job.loader, n)?;
                *ctx.record.last_checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                rundir::prune_checkpoints(&ctx.run, cfg.run.keep_checkpoints);
                let history = ctx.record.history.lock().unwrap_or_else(|e| e.into_inner());
                crate::run::plot::run_curves(&ctx.run, &history);
            }
        }
        // Rank 0's validation and checkpoint are not counted against the others' step limit.
        if let (Some(g), true) = (&trainer.group, ckpt_now || val_now) {
            g.after_rank0(&format!("rank 0's validation or checkpoint after step {step}"))?;
            if ckpt_now {
                g.check_replicas(trainer.digest(), &format!("step {step}"))?;
            }
        }
    }
    Ok(())
}

/// The in-loop validation of the teacher, logged.
fn validate<B: AutodiffBackend>(
    ctx: &Shared,
    trainer: &Trainer<B>,
    set: &ValSet,
    step: u64,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let (cfg, v) = (&ctx.cfg, &ctx.cfg.validation);
    let size = if v.img_size == 0 { cfg.model.img_size } else { v.img_size };
    let vit = weights::resize(trainer.teacher.backbone.clone(), size)?;
    let scores = set.evaluate(&vit, v.overclustering, cfg.data.batch_size.max(8));
    let shown: Vec<String> = scores.iter().map(|(k, x)| format!("{k} {:.1}", 100.0 * x)).collect();
    let _ = ctx.log.send(format!("step {step:>6} validation mIoU: {}", shown.join(", ")));
    Ok(scores)
}
