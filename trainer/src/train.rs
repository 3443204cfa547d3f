//! The training loop: student and EMA teacher, one MoSiC step per batch, checkpoints that
//! resume exactly, metrics, and the step benchmark.

use crate::config::{Motion, TrainConfig};
use crate::validate::ValSet;
use crate::head::{ProjectionHead, Prototypes};
use crate::loader::{Batch, Loader, LoaderState};
use crate::loss::{mosic_loss, sample_points};
use crate::model::{Vit, VitConfig};
use crate::params::{self, AdamW};
use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, ElementConversion, Tensor, TensorData};
use mosic::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Backbone, projection head and prototypes: what the student trains and the teacher averages.
#[derive(Module, Debug)]
pub struct MosicModel<B: Backend> {
    pub backbone: Vit<B>,
    pub head: ProjectionHead<B>,
    pub prototypes: Prototypes<B>,
}

/// Figures of one step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepStats {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub lr_backbone: f64,
    pub grad_norm: f64,
    pub visible: f64,
    pub usage_entropy: f64,
    /// Validation mIoU by protocol, on the steps where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<std::collections::BTreeMap<String, f64>>,
}

/// What a checkpoint holds besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: u64,
    pub loader: LoaderState,
}

pub struct Trainer<B: AutodiffBackend> {
    pub cfg: TrainConfig,
    pub vit: VitConfig,
    pub student: MosicModel<B>,
    pub teacher: MosicModel<B::InnerBackend>,
    opt: AdamW<B::InnerBackend>,
    device: B::Device,
    /// Leading blocks that stay frozen (their output is shared by student and teacher).
    frozen: usize,
    /// Steps completed.
    pub step: u64,
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(cfg: &TrainConfig, device: &B::Device) -> Result<Self> {
        let vit = VitConfig::preset(&cfg.model.preset, cfg.model.img_size)?;
        B::seed(device, cfg.run.seed);
        let backbone = if cfg.model.weights.as_os_str().is_empty() {
            Vit::new_seeded(&vit, cfg.run.seed, device)
        } else {
            Vit::load(&vit, &cfg.model.weights, device)?
        };
        let head_cfg = cfg.head_config(vit.embed_dim);
        let depth = vit.depth;
        let n = cfg.model.trainable_blocks;
        let frozen = if n == 0 || n >= depth { 0 } else { depth - n };
        let all = frozen == 0;
        let student = MosicModel { backbone, head: head_cfg.init_head(device), prototypes: head_cfg.init_prototypes(device) };
        let student = params::freeze(student, |p: &str| {
            if p.starts_with("head.") || p.starts_with("prototypes.") || (all && p.starts_with("backbone.")) {
                return true;
            }
            p.strip_prefix("backbone.blocks.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i >= frozen)
        });
        let teacher = student.valid();
        let o = &cfg.optim;
        Ok(Self {
            cfg: cfg.clone(),
            vit,
            student,
            teacher,
            opt: AdamW::new(o.beta1, o.beta2, o.eps, o.weight_decay),
            device: device.clone(),
            frozen,
            step: 0,
        })
    }

    /// (head lr, backbone lr) at a step: linear warm-up, then cosine decay to 0.
    pub fn lr_at(&self, step: u64) -> (f64, f64) {
        let o = &self.cfg.optim;
        let total = self.cfg.run.steps.max(1);
        let f = if step < o.warmup_steps {
            (step + 1) as f64 / o.warmup_steps as f64
        } else {
            let span = (total - o.warmup_steps.min(total)).max(1) as f64;
            let p = ((step - o.warmup_steps) as f64 / span).min(1.0);
            0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        };
        (o.lr * f, o.lr * o.backbone_lr_scale * f)
    }

    fn mask(&self, clips: usize) -> Option<Tensor<B, 2, Bool>> {
        let ratio = self.cfg.objective.mask_ratio;
        let hw = self.vit.num_patches();
        let k = (ratio as f64 * hw as f64).round() as usize;
        if k == 0 {
            return None;
        }
        // Built as integers: not every backend can take booleans from host data.
        let mut flags = vec![0i32; clips * hw];
        for b in 0..clips {
            // One stream per (step, clip): the mask does not depend on anything but the seed.
            let mut rng = SplitMix64::stream(self.cfg.run.seed ^ 0x6d61_736b, self.step * 4096 + b as u64);
            let mut idx: Vec<usize> = (0..hw).collect();
            rng.shuffle(&mut idx);
            for &i in &idx[..k] {
                flags[b * hw + i] = 1;
            }
        }
        Some(Tensor::<B, 2, burn::tensor::Int>::from_data(TensorData::new(flags, [clips, hw]), &self.device).equal_elem(1))
    }

    /// One optimisation step on a batch. Errors on a non-finite loss, before any update.
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        let dev = &self.device;
        let (bsz, t, n, s) = (batch.clips, batch.frames, batch.points, batch.size);
        if s != self.vit.img_size {
            bail!("batch images are {s} px, the model takes {}", self.vit.img_size);
        }
        let (g, d, depth) = (self.vit.grid(), self.vit.embed_dim, self.vit.depth);
        let (hw, patch) = (g * g, self.vit.patch_size as f32);
        let obj = &self.cfg.objective;
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let images = Tensor::<I<B>, 4>::from_data(TensorData::new(batch.images.clone(), [bsz * t, 3, s, s]), dev);
        let (mut track_data, mut vis_data) = (batch.tracks.clone(), batch.visibility.clone());
        if obj.motion == Motion::Identity {
            // No-motion ablation: every frame repeats frame 0's positions and visibility.
            for b in 0..bsz {
                for f in 1..t {
                    track_data.copy_within(b * t * n * 2..(b * t + 1) * n * 2, (b * t + f) * n * 2);
                    vis_data.copy_within(b * t * n..(b * t + 1) * n, (b * t + f) * n);
                }
            }
        }
        let tracks = Tensor::<I<B>, 4>::from_data(TensorData::new(track_data, [bsz, t, n, 2]), dev);
        let vis = Tensor::<I<B>, 3>::from_data(TensorData::new(vis_data, [bsz, t, n]), dev);

        // Prototypes are unit vectors at the start of every step, in both copies.
        self.student.prototypes = self.student.prototypes.normalized();
        self.teacher.prototypes = self.teacher.prototypes.normalized();
        let (student, teacher) = (&self.student, &self.teacher);

        // Teacher: every frame, unmasked, features at the tracked positions.
        let x = teacher.backbone.embed(images.clone(), None);
        let prefix = teacher.backbone.blocks(x, 0..self.frozen);
        let tokens = teacher.backbone.patch_tokens(teacher.backbone.blocks(prefix.clone(), self.frozen..depth));
        let tf = sample_points(tokens.reshape([bsz, t, hw, d]), (g, g), patch, tracks.clone(), obj.teacher_sampling);
        let teacher_scores = teacher.prototypes.scores(teacher.head.forward(tf));

        // Student: frame 0 only (its prediction is compared with every frame's target).
        let mask = self.mask(bsz);
        let x = match mask {
            None if self.frozen > 0 => {
                // Frozen blocks compute the same thing for both; reuse the teacher's frame 0.
                let len = prefix.dims()[1];
                Tensor::from_inner(prefix.reshape([bsz, t, len, d]).narrow(1, 0, 1).reshape([bsz, len, d]))
            }
            mask => {
                let first = images.reshape([bsz, t, 3 * s * s]).narrow(1, 0, 1).reshape([bsz, 3, s, s]);
                let x = student.backbone.embed(Tensor::from_inner(first), mask);
                student.backbone.blocks(x, 0..self.frozen)
            }
        };
        let tokens = student.backbone.patch_tokens(student.backbone.blocks(x, self.frozen..depth));
        let points0 = Tensor::from_inner(tracks.narrow(1, 0, 1));
        let sf = sample_points(tokens.reshape([bsz, 1, hw, d]), (g, g), patch, points0, obj.student_sampling);
        let k = student.prototypes.num_prototypes();
        let student_scores = student.prototypes.scores(student.head.forward(sf)).reshape([bsz, n, k]);

        let out = mosic_loss(student_scores, Tensor::from_inner(teacher_scores), Tensor::from_inner(vis), &self.cfg.loss_config());
        let loss: f64 = out.loss.clone().into_scalar().elem();
        let step = self.step;
        if !loss.is_finite() {
            bail!(NonFiniteLoss { step: step + 1, loss });
        }
        let visible: f64 = out.visible_fraction.into_scalar().elem();
        let usage_entropy: f64 = out.usage_entropy.into_scalar().elem();
        let grads = GradientsParams::from_grads(out.loss.backward(), &self.student);
        let grad_norm = params::grad_norm(&self.student, &grads);
        let clip = self.cfg.optim.grad_clip;
        let scale = if clip > 0.0 && grad_norm > clip { clip / (grad_norm + 1e-6) } else { 1.0 };
        let (lr, lr_backbone) = self.lr_at(step);
        let ema = obj.ema;
        self.student = self.opt.step(self.student.clone(), &grads, lr_backbone, lr, scale);
        self.teacher = params::ema_update::<B, _, _>(self.teacher.clone(), &self.student, ema);
        self.step += 1;
        Ok(StepStats { step: self.step, loss, lr, lr_backbone, grad_norm, visible, usage_entropy, validation: None })
    }

    /// Writes `dir/step-XXXXXXXX` atomically (temporary folder, then rename).
    pub fn save_checkpoint(&self, dir: &Path, loader: LoaderState) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = format!("step-{:08}", self.step);
        let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        params::save_safetensors(&tmp.join("student.safetensors"), &params::collect(&self.student, |_| true))?;
        params::save_safetensors(&tmp.join("teacher.safetensors"), &params::collect(&self.teacher, |_| true))?;
        params::save_safetensors(&tmp.join("optimizer.safetensors"), &self.opt.state())?;
        let state = CheckpointState { step: self.step, loader };
        mosic::fsutil::write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&state)?.as_bytes())?;
        let dst = dir.join(&name);
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::rename(&tmp, &dst).with_context(|| format!("cannot move checkpoint into {}", dst.display()))?;
        mosic::fsutil::sync_dir(&dst);
        Ok(dst)
    }

    pub fn load_checkpoint(&mut self, ckpt: &Path) -> Result<CheckpointState> {
        let state: CheckpointState = serde_json::from_str(
            &std::fs::read_to_string(ckpt.join("state.json")).with_context(|| format!("{}: no state.json", ckpt.display()))?,
        )
        .with_context(|| format!("{}/state.json is malformed", ckpt.display()))?;
        let s = ckpt.join("student.safetensors");
        let t = ckpt.join("teacher.safetensors");
        self.student = params::assign(self.student.clone(), &params::load_safetensors(&s)?, &self.device, &s)?;
        self.teacher = params::assign(self.teacher.clone(), &params::load_safetensors(&t)?, &self.device, &t)?;
        self.opt.load_state(&params::load_safetensors(&ckpt.join("optimizer.safetensors"))?, state.step, &self.device)?;
        self.step = state.step;
        Ok(state)
    }
}

#[derive(Debug)]
pub struct NonFiniteLoss {
    pub step: u64,
    pub loss: f64,
}

impl std::fmt::Display for NonFiniteLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the loss is {} at step {}", self.loss, self.step)
    }
}

impl std::error::Error for NonFiniteLoss {}

/// Checkpoints of a run, oldest first.
pub fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")) && p.join("state.json").is_file())
        .collect();
    v.sort();
    v
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub seconds: f64,
    pub clips_per_second: f64,
    pub last_checkpoint: Option<PathBuf>,
}

/// Trains into the run directory `run`: `config.toml`, `metrics.jsonl`, `loss.png` and
/// `checkpoints/`. With `resume`, continues from the newest checkpoint exactly where it
/// stopped (model, optimiser, EMA teacher, data position, masking).
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    device: &B::Device,
    log: &dyn Fn(&str),
) -> Result<Summary> {
    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    let config_path = run.join("config.toml");
    let text = cfg.to_toml();
    if resume {
        let old = std::fs::read_to_string(&config_path).with_context(|| format!("--resume: no {}", config_path.display()))?;
        let old: TrainConfig = toml::from_str(&old).with_context(|| format!("{} is malformed", config_path.display()))?;
        if &old != cfg {
            bail!("--resume: the configuration differs from {}; resume with the run's own config", config_path.display());
        }
    } else if !checkpoints(run).is_empty() {
        bail!("{} already holds checkpoints; pass --resume to continue it or choose another run directory", run.display());
    }
    mosic::fsutil::write_atomic(&config_path, text.as_bytes())?;

    let mut trainer = Trainer::<B>::new(cfg, device)?;
    let mut loader_state = LoaderState::default();
    let ckpt_dir = run.join("checkpoints");
    let mut last_ckpt = None;
    if resume {
        if let Some(c) = checkpoints(run).pop() {
            loader_state = trainer.load_checkpoint(&c)?.loader;
            log(&format!("resumed from {} (step {})", c.display(), trainer.step));
            last_ckpt = Some(c);
        }
    }
    let metrics_path = run.join("metrics.jsonl");
    let mut history = read_metrics(&metrics_path, trainer.step)?;
    rewrite_metrics(&metrics_path, &history)?;

    let mut loader = Loader::open(&cfg.data.shards, cfg.loader_config(), loader_state)?;
    let spec = loader.spec().clone();
    log(&format!(
        "training {} ({} blocks, last {} trainable) on {} ({} clips/epoch, {} frames x {} points), batch {}, {} steps",
        cfg.model.preset,
        trainer.vit.depth,
        trainer.vit.depth - trainer.frozen,
        cfg.data.shards.display(),
        loader.clips_per_epoch(),
        spec.frames_per_clip,
        spec.num_points(),
        cfg.data.batch_size,
        cfg.run.steps
    ));
    let val_cfg = &cfg.validation;
    let val_set = if val_cfg.every > 0 {
        let set = ValSet::load(val_cfg).with_context(|| format!("validation set {}", val_cfg.data.display()))?;
        log(&format!("validation every {} steps on {} ({})", val_cfg.every, val_cfg.data.display(), set.describe()));
        Some(set)
    } else {
        None
    };
    let mut metrics = std::fs::OpenOptions::new().append(true).create(true).open(&metrics_path)?;
    let start = Instant::now();
    let first_step = trainer.step;
    let end = stop_after.unwrap_or(cfg.run.steps).min(cfg.run.steps);
    while trainer.step < end {
        let batch = loader.next_batch()?;
        let t0 = Instant::now();
        let stats = match trainer.step(&batch) {
            Ok(s) => s,
            Err(e) => {
                plot_history(run, &history);
                let keep = match &last_ckpt {
                    Some(c) => format!("the last good checkpoint is {}", c.display()),
                    None => "no checkpoint was written before it".to_string(),
                };
                return Err(e.context(format!("training stopped; {keep}")));
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        let mut stats = stats;
        if let Some(set) = &val_set {
            if stats.step % val_cfg.every == 0 || stats.step == cfg.run.steps {
                let size = if val_cfg.img_size == 0 { cfg.model.img_size } else { val_cfg.img_size };
                let vit = trainer.teacher.backbone.clone().with_img_size(size)?;
                let v = set.evaluate(&vit, val_cfg.overclustering, cfg.data.batch_size.max(8));
                let shown: Vec<String> = v.iter().map(|(k, x)| format!("{k} {:.1}", 100.0 * x)).collect();
                log(&format!("step {:>6} validation mIoU: {}", stats.step, shown.join(", ")));
                stats.validation = Some(v);
            }
        }
        let mut line = serde_json::to_value(&stats)?;
        line["seconds"] = serde_json::json!(secs);
        line["clips_per_second"] = serde_json::json!(batch.clips as f64 / secs);
        writeln!(metrics, "{line}")?;
        history.push(stats.clone());
        if stats.step % cfg.run.log_every.max(1) == 0 || stats.step == cfg.run.steps {
            log(&format!(
                "step {:>6}/{}  loss {:.4}  lr {:.2e}  grad {:.3}  visible {:.2}  usage {:.2}  {:.1} clips/s",
                stats.step,
                cfg.run.steps,
                stats.loss,
                stats.lr,
                stats.grad_norm,
                stats.visible,
                stats.usage_entropy,
                batch.clips as f64 / secs
            ));
        }
        if stats.step % cfg.run.checkpoint_every.max(1) == 0 || stats.step == end {
            metrics.flush()?;
            last_ckpt = Some(trainer.save_checkpoint(&ckpt_dir, loader.state())?);
            prune_checkpoints(run, cfg.run.keep_checkpoints);
            plot_history(run, &history);
        }
    }
    let done = trainer.step - first_step;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Summary {
        steps: trainer.step,
        first_loss: history.first().map(|s| s.loss),
        last_loss: history.last().map(|s| s.loss),
        seconds,
        clips_per_second: (done * cfg.data.batch_size as u64) as f64 / seconds.max(1e-9),
        last_checkpoint: last_ckpt,
    })
}

fn read_metrics(path: &Path, upto: u64) -> Result<Vec<StepStats>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    // Steps after the checkpoint being resumed are dropped: they will be run again.
    Ok(text.lines().filter_map(|l| serde_json::from_str::<StepStats>(l).ok()).filter(|s| s.step <= upto).collect())
}

fn rewrite_metrics(path: &Path, history: &[StepStats]) -> Result<()> {
    let mut text = String::new();
    for s in history {
        text.push_str(&serde_json::to_string(s)?);
        text.push('\n');
    }
    mosic::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn prune_checkpoints(run: &Path, keep: usize) {
    let all = checkpoints(run);
    if all.len() > keep + 1 {
        for old in &all[..all.len() - keep - 1] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
}

fn plot_history(run: &Path, history: &[StepStats]) {
    let loss: Vec<(f64, f64)> = history.iter().map(|s| (s.step as f64, s.loss)).collect();
    let lr: Vec<(f64, f64)> = history.iter().map(|s| (s.step as f64, s.lr)).collect();
    if let Err(e) = crate::plot::save(&run.join("loss.png"), &[("loss", &loss), ("learning rate", &lr)]) {
        eprintln!("warning: could not write {}: {e:#}", run.join("loss.png").display());
    }
    let mut val: std::collections::BTreeMap<&str, Vec<(f64, f64)>> = Default::default();
    for s in history {
        for (k, v) in s.validation.iter().flatten() {
            val.entry(k.as_str()).or_default().push((s.step as f64, 100.0 * v));
        }
    }
    if !val.is_empty() {
        let titles: Vec<String> = val.keys().map(|k| format!("validation miou % {k}")).collect();
        let series: Vec<(&str, &[(f64, f64)])> = titles.iter().zip(val.values()).map(|(t, v)| (t.as_str(), v.as_slice())).collect();
        if let Err(e) = crate::plot::save(&run.join("validation.png"), &series) {
            eprintln!("warning: could not write {}: {e:#}", run.join("validation.png").display());
        }
    }
}

/// Writes the teacher backbone of a checkpoint as timm safetensors.
pub fn export<B: Backend>(run: &Path, checkpoint: Option<&Path>, out: &Path, device: &B::Device) -> Result<PathBuf> {
    let cfg: TrainConfig = toml::from_str(
        &std::fs::read_to_string(run.join("config.toml")).with_context(|| format!("{}: no config.toml", run.display()))?,
    )?;
    let ckpt = match checkpoint {
        Some(c) => c.to_path_buf(),
        None => checkpoints(run).pop().with_context(|| format!("{} has no checkpoint", run.display()))?,
    };
    let vit = VitConfig::preset(&cfg.model.preset, cfg.model.img_size)?;
    let teacher = params::load_safetensors(&ckpt.join("teacher.safetensors"))?;
    let backbone: std::collections::BTreeMap<_, _> =
        teacher.into_iter().filter_map(|(k, v)| k.strip_prefix("backbone.").map(|r| (r.to_string(), v))).collect();
    let model = params::assign(Vit::<B>::new_seeded(&vit, 0, device), &backbone, device, &ckpt.join("teacher.safetensors"))?;
    model.save_safetensors(out)?;
    Ok(ckpt)
}

/// Clips/s of the training step on random batches of the configured shape.
pub fn bench<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
    frames: usize,
    points: usize,
    warmup: usize,
    steps: usize,
) -> Result<(f64, f64)> {
    let mut trainer = Trainer::<B>::new(cfg, device)?;
    let (b, s) = (cfg.data.batch_size, cfg.model.img_size);
    let mut rng = SplitMix64::new(cfg.run.seed);
    let batch = Batch {
        clips: b,
        frames,
        points,
        size: s,
        images: (0..b * frames * 3 * s * s).map(|_| rng.uniform(-2.0, 2.0) as f32).collect(),
        tracks: (0..b * frames * points * 2).map(|_| rng.uniform(0.0, (s - 1) as f64) as f32).collect(),
        visibility: (0..b * frames * points).map(|_| (rng.next_f64() < 0.8) as u8 as f32).collect(),
        ids: vec![String::new(); b],
    };
    for _ in 0..warmup {
        trainer.step(&batch)?; // allocation; kernel compilation and autotuning on GPUs
    }
    let t0 = Instant::now();
    for _ in 0..steps.max(1) {
        trainer.step(&batch)?;
    }
    let secs = t0.elapsed().as_secs_f64() / steps.max(1) as f64;
    Ok((secs, b as f64 / secs))
}
