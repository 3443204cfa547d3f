//! The run configuration: one TOML file holding every hyperparameter, with `--set key=value`
//! overrides for ablations. Defaults follow what the released code actually runs where the
//! paper gives no value, and the paper otherwise; each comment says which.

use crate::backend::Precision;
use crate::data::LoaderConfig;
use crate::model::head::HeadConfig;
use crate::model::VitConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which backbone blocks the student trains: the last `n`, every parameter of the backbone
/// (`"all"`: patch and position embeddings included), or none (`"none"`: only the head and
/// the prototypes train).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trainable {
    Last(usize),
    All,
    None,
}

impl Serialize for Trainable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Trainable::Last(n) => s.serialize_u64(*n as u64),
            Trainable::All => s.serialize_str("all"),
            Trainable::None => s.serialize_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for Trainable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n >= 1 => Ok(Trainable::Last(n as usize)),
            Raw::N(n) => Err(serde::de::Error::custom(format!(
                "model.trainable_blocks = {n}: give a number of blocks >= 1, \"all\" or \"none\""
            ))),
            Raw::S(s) if s == "all" => Ok(Trainable::All),
            Raw::S(s) if s == "none" => Ok(Trainable::None),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "model.trainable_blocks = {s:?}: give a number of blocks >= 1, \"all\" or \"none\""
            ))),
        }
    }
}

impl Trainable {
    /// Leading blocks that stay frozen in a ViT of `depth` blocks.
    pub fn frozen_blocks(&self, depth: usize) -> usize {
        match *self {
            Trainable::All => 0,
            Trainable::None => depth,
            Trainable::Last(n) => depth.saturating_sub(n),
        }
    }

    /// Whether the position embedding trains (only when the whole backbone does).
    pub fn trains_pos_embed(&self) -> bool {
        *self == Trainable::All
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A preset of `model::VitConfig::preset` (timm names: vit_small_patch14_dinov2, ...).
    pub preset: String,
    /// timm .safetensors or official .pth weights; empty = random initialisation.
    pub weights: PathBuf,
    pub img_size: usize,
    /// Released code: blocks 10 and 11 of ViT-S, i.e. the last 2.
    pub trainable_blocks: Trainable,
    /// "bf16": the teacher and the frozen blocks (everything without a gradient) run their
    /// matrix products in bfloat16 as PyTorch's autocast does, on backends that have it
    /// (cuda, tch, flex); master weights, the EMA, Sinkhorn and the loss stay float32.
    pub precision: Precision,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            preset: "vit_small_patch14_dinov2".into(),
            weights: PathBuf::new(),
            img_size: 224,
            trainable_blocks: Trainable::Last(2),
            precision: Precision::Fp32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadSection {
    /// Paper appendix: three linear layers, hidden 2048. Released code: [1024, 1024, 512].
    pub hidden: Vec<usize>,
    pub out_dim: usize,
    /// K. Paper ablation: 100 best, 100-300 robust (released train.sh: 100).
    pub prototypes: usize,
}

impl Default for HeadSection {
    fn default() -> Self {
        Self { hidden: vec![2048, 2048], out_dim: 256, prototypes: 100 }
    }
}

/// How the student's masked patches are hidden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Masking {
    /// Masked patch tokens are dropped from the student's input (the paper; the released
    /// code's patch dropout); an entry counts only where both the point's frame-0 patch and
    /// its frame-t patch were kept.
    #[default]
    Drop,
    /// Masked patch embeddings are replaced by a zero token that trains with the backbone;
    /// masked points stay in the loss.
    Token,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    pub temperature: f32,
    /// Sinkhorn regularisation. Released code: 0.05 (the class default that actually runs;
    /// its command line's 0.06 is never passed on). The paper gives no value.
    pub epsilon: f32,
    /// Released code: 10 (its command line's 3 is never passed on).
    pub sinkhorn_iterations: usize,
    /// Teacher rows Sinkhorn balances: "in_crop" (selected points inside the crop at that
    /// frame) or "all" (every selected point, as the released code, whose points outside the
    /// crop read a clamped border patch).
    pub sinkhorn_rows: SinkhornRows,
    /// Paper: sum over visible points ("visible", normalised by their number). Released
    /// code: mean over all entries, invisible ones counting as zeros ("all").
    pub reduction: Reduction,
    /// Paper: bilinear for the teacher, nearest for the student. Released train.sh: nearest
    /// for both.
    pub teacher_sampling: Sampling,
    pub student_sampling: Sampling,
    /// Fraction of patches masked for the student, the same positions in every frame
    /// (floor(ratio x patches) of them, as the released code). Paper: 10% (Table 6a).
    /// Released train.sh: 0.
    pub mask_ratio: f32,
    pub masking: Masking,
    /// EMA momentum of the teacher (backbone, head and prototypes). Paper and released: 0.99.
    pub ema: f64,
    /// "tracks", or "identity" for the no-motion ablation: every point stays where it is in
    /// the first frame (with its first-frame visibility) in all frames.
    pub motion: Motion,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Motion {
    #[default]
    Tracks,
    Identity,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            epsilon: 0.05,
            sinkhorn_iterations: 10,
            sinkhorn_rows: SinkhornRows::InCrop,
            reduction: Reduction::Visible,
            teacher_sampling: Sampling::Bilinear,
            student_sampling: Sampling::Nearest,
            mask_ratio: 0.1,
            masking: Masking::Drop,
            ema: 0.99,
            motion: Motion::Tracks,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Head and prototypes. Paper and released code (its parameter groups): 1e-4.
    pub lr: f64,
    /// Backbone lr = lr x this. Paper and released code: 1e-5 / 1e-4.
    pub backbone_lr_scale: f64,
    /// AdamW decay on weights of rank >= 2; biases and norms get none (released: 1e-2).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear warm-up steps before the cosine decay to 0 (released code: none).
    pub warmup_steps: u64,
    /// Global gradient-norm clip; 0 disables (paper and released code: no clipping).
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            backbone_lr_scale: 0.1,
            weight_decay: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            grad_clip: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub shards: PathBuf,
    /// Frames per clip the shards must hold.
    pub frames: u32,
    /// Side of the query grid laid inside each random crop (N = grid_size^2 supervised
    /// tracks per clip); the loader picks the stored point nearest each grid position.
    /// Released code and the paper's best (Table 6c): 16.
    pub grid_size: u32,
    /// Clips per video in one epoch, drawn among the video's stored clips; 0 = every stored
    /// clip. Released code (`--num_clips 1`): 1.
    pub clips_per_video: u32,
    /// Clips per step. Released code: a global batch of 64 (8 per GPU on 8 GPUs).
    pub batch_size: usize,
    /// Area range of the random crop (released: 0.4-1); aspect range 3/4-4/3 as torchvision's.
    pub crop_scale: (f32, f32),
    pub hflip: bool,
    pub shuffle_buffer: usize,
    pub workers: usize,
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            shards: PathBuf::from("data/tracks"),
            frames: 12,
            grid_size: 16,
            clips_per_video: 1,
            batch_size: 16,
            crop_scale: (0.4, 1.0),
            hflip: true,
            shuffle_buffer: 256,
            workers: 2,
            prefetch: 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Passes over the shards (an epoch holds `data.clips_per_video` clips of every video).
    /// Released code: 8 for DINOv2.
    pub epochs: u64,
    /// Steps in all; when set it overrides the count derived from `epochs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Checkpoints kept besides the newest (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Seconds a rank waits in a collective of a step for the others before the run ends
    /// with a message naming it (a rank stalled or dead). Not part of what a run is: a
    /// resumed run may change it.
    pub collective_timeout_s: f64,
    /// Seconds the other ranks wait while rank 0 validates or writes a checkpoint, or loads
    /// the weights it hands out.
    pub rank0_timeout_s: f64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            epochs: 8,
            steps: None,
            seed: 0,
            log_every: 10,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            collective_timeout_s: 300.0,
            rank0_timeout_s: 3600.0,
        }
    }
}

impl RunConfig {
    /// How long ranks wait for each other.
    pub fn limits(&self) -> Limits {
        Limits {
            step: std::time::Duration::from_secs_f64(self.collective_timeout_s),
            rank0: std::time::Duration::from_secs_f64(self.rank0_timeout_s),
        }
    }
}

/// How long a rank waits for the others ([`RunConfig::collective_timeout_s`],
/// [`RunConfig::rank0_timeout_s`]).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Within a step: longer than any step, short enough that a dead rank is found in minutes.
    pub step: std::time::Duration,
    /// While rank 0 validates or writes a checkpoint, which the others wait out.
    pub rank0: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        RunConfig::default().limits()
    }
}

/// In-loop validation: clustering mIoU of the EMA teacher's features on a labelled set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Steps between validations (and after the last step); 0 disables.
    pub every: u64,
    /// A video set with masks (DAVIS, YouTube-VOS, `mosic synth` layout) or an image set
    /// (Pascal VOC, images/ + masks/).
    pub data: PathBuf,
    /// Split name (VOC: ImageSets/Segmentation/<split>.txt); empty = the layout's default.
    pub split: String,
    /// Model input size for validation; 0 = model.img_size.
    pub img_size: usize,
    /// Label maps are resized (nearest) to mask_size x mask_size.
    pub mask_size: usize,
    /// Images, or annotated frames spread evenly over the videos, used at most.
    pub max_images: usize,
    /// Also an overclustering K (image sets: over the set; videos: per clip); 0 = none.
    pub overclustering: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            every: 0,
            data: PathBuf::new(),
            split: String::new(),
            img_size: 0,
            mask_size: 100,
            max_images: 64,
            overclustering: 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub head: HeadSection,
    pub objective: ObjectiveConfig,
    pub optim: OptimConfig,
    pub data: DataConfig,
    pub run: RunConfig,
    pub validation: ValidationConfig,
}

impl TrainConfig {
    /// Reads a TOML file (or the defaults when `path` is None) and applies `key=value`
    /// overrides, e.g. `objective.mask_ratio=0.2` or `head.hidden=[1024,1024,512]`.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut value: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("config {} is not valid TOML", p.display()))?
            }
            None => toml::Table::try_from(TrainConfig::default())?,
        };
        for o in overrides {
            let (key, raw) =
                o.split_once('=').with_context(|| format!("--set {o}: expected key=value"))?;
            set_path(&mut value, key.trim(), parse_value(raw.trim()))?;
        }
        let cfg: TrainConfig = toml::Value::Table(value).try_into().with_context(|| {
            format!(
                "invalid config{}",
                path.map(|p| format!(" {}", p.display())).unwrap_or_default()
            )
        })?;
        cfg.validate().with_context(|| {
            format!(
                "invalid config{}",
                path.map(|p| format!(" {}", p.display())).unwrap_or_default()
            )
        })?;
        Ok(cfg)
    }

    /// Every value in its allowed range, each error naming the key; runs before any work.
    pub fn validate(&self) -> Result<()> {
        let mut bad: Vec<String> = Vec::new();
        let (m, h, o, p, d, r, v) = (
            &self.model,
            &self.head,
            &self.objective,
            &self.optim,
            &self.data,
            &self.run,
            &self.validation,
        );
        let depth = match VitConfig::preset(&m.preset, m.img_size) {
            Ok(vit) => Some(vit.depth),
            Err(e) => {
                bad.push(format!("model: {e:#}"));
                None
            }
        };
        if !m.weights.as_os_str().is_empty() && !m.weights.is_file() {
            bad.push(format!("model.weights: {} does not exist", m.weights.display()));
        }
        let mut need = |ok: bool, key: &str, rule: &str, got: String| {
            if !ok {
                bad.push(format!("{key} must be {rule}, got {got}"));
            }
        };
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if let (Some(depth), Trainable::Last(n)) = (depth, m.trainable_blocks) {
            need(
                n <= depth,
                "model.trainable_blocks",
                &format!("at most the {depth} blocks of {}", m.preset),
                n.to_string(),
            );
        }
        need(
            !h.hidden.contains(&0),
            "head.hidden",
            "a list of sizes >= 1",
            format!("{:?}", h.hidden),
        );
        need(h.out_dim >= 1, "head.out_dim", ">= 1", h.out_dim.to_string());
        need(h.prototypes >= 2, "head.prototypes", ">= 2", h.prototypes.to_string());

        need(
            finite_pos(o.temperature as f64),
            "objective.temperature",
            "> 0",
            o.temperature.to_string(),
        );
        need(
            finite_pos(o.epsilon as f64),
            "objective.epsilon",
            "> 0 (the Sinkhorn regularisation; released code: 0.05)",
            o.epsilon.to_string(),
        );
        need(
            o.sinkhorn_iterations >= 1,
            "objective.sinkhorn_iterations",
            ">= 1",
            o.sinkhorn_iterations.to_string(),
        );
        need(
            (0.0..1.0).contains(&o.mask_ratio),
            "objective.mask_ratio",
            "in [0, 1)",
            o.mask_ratio.to_string(),
        );
        need((0.0..=1.0).contains(&o.ema), "objective.ema", "in [0, 1]", o.ema.to_string());

        need(finite_pos(p.lr), "optim.lr", "> 0", p.lr.to_string());
        need(
            p.backbone_lr_scale.is_finite() && p.backbone_lr_scale >= 0.0,
            "optim.backbone_lr_scale",
            ">= 0",
            p.backbone_lr_scale.to_string(),
        );
        need(
            p.weight_decay.is_finite() && p.weight_decay >= 0.0,
            "optim.weight_decay",
            ">= 0",
            p.weight_decay.to_string(),
        );
        need((0.0..1.0).contains(&p.beta1), "optim.beta1", "in [0, 1)", p.beta1.to_string());
        need((0.0..1.0).contains(&p.beta2), "optim.beta2", "in [0, 1)", p.beta2.to_string());
        need(finite_pos(p.eps), "optim.eps", "> 0", p.eps.to_string());
        need(
            p.grad_clip.is_finite() && p.grad_clip >= 0.0,
            "optim.grad_clip",
            ">= 0 (0 disables)",
            p.grad_clip.to_string(),
        );

        need(d.frames >= 2, "data.frames", ">= 2", d.frames.to_string());
        need(d.grid_size >= 1, "data.grid_size", ">= 1", d.grid_size.to_string());
        need(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size.to_string());
        let (lo, hi) = d.crop_scale;
        need(
            lo > 0.0 && lo <= hi && hi <= 1.0,
            "data.crop_scale",
            "[min, max] with 0 < min <= max <= 1",
            format!("[{lo}, {hi}]"),
        );

        need(r.epochs >= 1, "run.epochs", ">= 1", r.epochs.to_string());
        if let Some(s) = r.steps {
            need(
                s >= 1,
                "run.steps",
                ">= 1 (leave it out to derive the steps from run.epochs)",
                s.to_string(),
            );
        }
        need(r.log_every >= 1, "run.log_every", ">= 1", r.log_every.to_string());
        for (v, key) in [
            (r.collective_timeout_s, "run.collective_timeout_s"),
            (r.rank0_timeout_s, "run.rank0_timeout_s"),
        ] {
            need(
                v.is_finite() && v > 0.0 && v < 1e9,
                key,
                "a positive number of seconds",
                v.to_string(),
            );
        }
        need(
            r.checkpoint_every >= 1,
            "run.checkpoint_every",
            ">= 1",
            r.checkpoint_every.to_string(),
        );

        if v.every > 0 {
            need(
                !v.data.as_os_str().is_empty(),
                "validation.data",
                "a labelled set when validation.every is set",
                "nothing".into(),
            );
            need(v.mask_size >= 1, "validation.mask_size", ">= 1", v.mask_size.to_string());
            need(v.max_images >= 1, "validation.max_images", ">= 1", v.max_images.to_string());
        }
        if !bad.is_empty() {
            bail!("{}", bad.join("\n  "));
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    pub fn head_config(&self, in_dim: usize) -> HeadConfig {
        HeadConfig {
            in_dim,
            hidden: self.head.hidden.clone(),
            out_dim: self.head.out_dim,
            num_prototypes: self.head.prototypes,
        }
    }

    pub fn loss_config(&self) -> LossConfig {
        LossConfig {
            temperature: self.objective.temperature,
            epsilon: self.objective.epsilon,
            iterations: self.objective.sinkhorn_iterations,
            reduction: self.objective.reduction,
        }
    }

    /// Whether `other` is the same run: equal in everything but the waiting limits, which a
    /// resumed run may change.
    pub fn same_run(&self, other: &TrainConfig) -> bool {
        let limits = |c: &TrainConfig| {
            let mut c = c.clone();
            c.run.collective_timeout_s = 0.0;
            c.run.rank0_timeout_s = 0.0;
            c
        };
        limits(self) == limits(other)
    }

    pub fn loader_config(&self) -> LoaderConfig {
        LoaderConfig {
            share: (0, 1),
            batch_size: self.data.batch_size,
            input_size: self.model.img_size,
            grid: self.data.grid_size,
            clips_per_video: self.data.clips_per_video,
            crop_scale: self.data.crop_scale,
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: self.data.hflip,
            shuffle_buffer: self.data.shuffle_buffer,
            workers: self.data.workers,
            prefetch: self.data.prefetch,
            seed: self.run.seed,
            expect_frames: Some(self.data.frames),
            expect_size: None,
        }
    }

    /// Steps of the run: `run.steps`, or `run.epochs` x the whole batches of an epoch.
    pub fn total_steps(&self, batches_per_epoch: u64) -> u64 {
        self.run.steps.unwrap_or(self.run.epochs * batches_per_epoch).max(1)
    }
}

fn parse_value(raw: &str) -> toml::Value {
    // A TOML literal when it parses as one (numbers, booleans, arrays, quoted strings), else a bare string.
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut t = table;
    for p in &parts[..parts.len() - 1] {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {key}: '{p}' is not a section"))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

// The objective's vocabulary, shared by the loss and the config.

/// How a feature is read at a sub-patch point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// The patch containing the point.
    #[default]
    Nearest,
    /// The 4 surrounding patch centres, weighted by distance, clamped at the border.
    Bilinear,
}

/// Which teacher rows Sinkhorn balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkhornRows {
    /// Selected points at the frames where they lie inside the crop.
    #[default]
    InCrop,
    /// Every selected point at every frame (the released code; outside the crop a point reads
    /// the clamped border patch).
    All,
}

/// How the per-entry cross-entropies are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// Weighted sum / sum of the weights (the paper's sum over visible points).
    #[default]
    Visible,
    /// Weighted sum / all `B*T*N` entries (the released code's mean).
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossConfig {
    /// Student softmax temperature.
    pub temperature: f32,
    /// Sinkhorn entropy regularisation (what the released code runs: 0.05).
    pub epsilon: f32,
    /// Sinkhorn iterations (what the released code runs: 10).
    pub iterations: usize,
    pub reduction: Reduction,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { temperature: 0.1, epsilon: 0.05, iterations: 10, reduction: Reduction::Visible }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_unknown_keys() {
        let c = TrainConfig::load(
            None,
            &[
                "objective.mask_ratio=0.2".into(),
                "head.hidden=[1024,1024,512]".into(),
                "data.shards=x/y".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.objective.mask_ratio, 0.2);
        assert_eq!(c.head.hidden, vec![1024, 1024, 512]);
        assert_eq!(c.data.shards, PathBuf::from("x/y"));
        let e = TrainConfig::load(None, &["objective.mask_rate=0.2".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("mask_rate"), "{e:#}");
        // The resolved config round-trips through TOML.
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let c =
            TrainConfig::load(None, &["model.trainable_blocks=none".into(), "run.steps=7".into()])
                .unwrap();
        assert_eq!((c.model.trainable_blocks, c.run.steps), (Trainable::None, Some(7)));
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn nonsense_values_are_refused_naming_the_key() {
        let err = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            format!("{:#}", TrainConfig::load(None, &set).expect_err("refused"))
        };
        for (set, key) in [
            ("optim.lr=-1", "optim.lr must be > 0"),
            ("optim.lr=0", "optim.lr must be > 0"),
            ("objective.epsilon=0", "objective.epsilon must be > 0"),
            ("objective.temperature=-0.1", "objective.temperature must be > 0"),
            ("objective.ema=1.5", "objective.ema must be in [0, 1]"),
            ("objective.mask_ratio=1", "objective.mask_ratio must be in [0, 1)"),
            ("objective.sinkhorn_iterations=0", "objective.sinkhorn_iterations must be >= 1"),
            ("data.crop_scale=[0.5, 0.2]", "data.crop_scale must be"),
            ("data.crop_scale=[0, 1]", "data.crop_scale must be"),
            ("data.batch_size=0", "data.batch_size must be >= 1"),
            ("data.grid_size=0", "data.grid_size must be >= 1"),
            ("data.frames=1", "data.frames must be >= 2"),
            ("run.steps=0", "run.steps must be >= 1"),
            ("run.epochs=0", "run.epochs must be >= 1"),
            ("head.prototypes=1", "head.prototypes must be >= 2"),
            ("head.hidden=[512, 0]", "head.hidden must be"),
            ("head.out_dim=0", "head.out_dim must be >= 1"),
            ("optim.backbone_lr_scale=-0.1", "optim.backbone_lr_scale must be >= 0"),
            ("optim.beta2=1", "optim.beta2 must be in [0, 1)"),
            ("model.trainable_blocks=13", "model.trainable_blocks must be at most the 12 blocks"),
            ("model.weights=/no/such/file.pth", "model.weights: /no/such/file.pth does not exist"),
            ("model.preset=vit_huge_nothing", "model: "),
        ] {
            let e = err(&[set]);
            assert!(e.contains(key), "{set}: {e}");
        }
        for bad in ["model.trainable_blocks=0", "model.trainable_blocks=some"] {
            assert!(err(&[bad]).contains("trainable_blocks"), "{bad}");
        }
        // Several problems are reported together.
        let e = err(&["optim.lr=-1", "objective.epsilon=0"]);
        assert!(e.contains("optim.lr") && e.contains("objective.epsilon"), "{e}");
    }
}
