//! The run configuration: one TOML file holding every hyperparameter, with `--set key=value`
//! overrides for ablations. Defaults follow the paper; where the released code differs, the
//! comment says so.

use crate::head::HeadConfig;
use crate::loader::LoaderConfig;
use crate::loss::{LossConfig, Reduction, Sampling};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A preset of `model::VitConfig::preset` (timm names: vit_small_patch14_dinov2, ...).
    pub preset: String,
    /// timm .safetensors or official .pth weights; empty = random initialisation.
    pub weights: PathBuf,
    pub img_size: usize,
    /// Blocks trained, counted from the end (released code: the last 2); 0 = all.
    pub trainable_blocks: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { preset: "vit_small_patch14_dinov2".into(), weights: PathBuf::new(), img_size: 224, trainable_blocks: 2 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadSection {
    /// Paper: three linear layers, hidden 2048. Released code: [1024, 1024, 512].
    pub hidden: Vec<usize>,
    pub out_dim: usize,
    /// K. Paper ablation: 100 best, 100-300 robust.
    pub prototypes: usize,
}

impl Default for HeadSection {
    fn default() -> Self {
        Self { hidden: vec![2048, 2048], out_dim: 256, prototypes: 100 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    pub temperature: f32,
    /// Sinkhorn regularisation; the paper gives no value, the released code uses 0.06.
    pub epsilon: f32,
    pub sinkhorn_iterations: usize,
    /// Paper: sum over visible points ("visible", normalised by their number). Released
    /// code: mean over all entries, invisible ones counting as zeros ("all").
    pub reduction: Reduction,
    /// Paper: bilinear for the teacher, nearest for the student. Released code: nearest for both.
    pub teacher_sampling: Sampling,
    pub student_sampling: Sampling,
    /// Fraction of patches masked for the student, same positions in every frame.
    /// Paper: 10% (Table 6a). Released train.sh: 0.
    pub mask_ratio: f32,
    /// EMA momentum of the teacher (backbone, head and prototypes).
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
            epsilon: 0.06,
            sinkhorn_iterations: 3,
            reduction: Reduction::Visible,
            teacher_sampling: Sampling::Bilinear,
            student_sampling: Sampling::Nearest,
            mask_ratio: 0.1,
            ema: 0.99,
            motion: Motion::Tracks,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Head and prototypes. Paper: 1e-4; released code: 1e-3.
    pub lr: f64,
    /// Backbone lr = lr x this (both paper and released code: 1/10).
    pub backbone_lr_scale: f64,
    /// AdamW decay on weights of rank >= 2; biases and norms get none (released: 1e-2).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear warm-up steps before the cosine decay to 0 (released code: none).
    pub warmup_steps: u64,
    /// Global gradient-norm clip; 0 disables.
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
            grad_clip: 3.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub shards: PathBuf,
    /// What the shards must hold: frames per clip and query-grid side.
    pub frames: u32,
    pub grid_size: u32,
    /// Clips per step (released code: 64 per GPU).
    pub batch_size: usize,
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
    pub steps: u64,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Checkpoints kept besides the newest (older ones are deleted).
    pub keep_checkpoints: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { steps: 1000, seed: 0, log_every: 10, checkpoint_every: 100, keep_checkpoints: 2 }
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
        Self { every: 0, data: PathBuf::new(), split: String::new(), img_size: 0, mask_size: 100, max_images: 64, overclustering: 0 }
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
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("config {} is not valid TOML", p.display()))?
            }
            None => toml::Table::try_from(TrainConfig::default())?,
        };
        for o in overrides {
            let (key, raw) = o.split_once('=').with_context(|| format!("--set {o}: expected key=value"))?;
            set_path(&mut value, key.trim(), parse_value(raw.trim()))?;
        }
        let cfg: TrainConfig = toml::Value::Table(value)
            .try_into()
            .with_context(|| format!("invalid config{}", path.map(|p| format!(" {}", p.display())).unwrap_or_default()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.objective.mask_ratio) {
            bail!("objective.mask_ratio must be in [0, 1), got {}", self.objective.mask_ratio);
        }
        if !(0.0..=1.0).contains(&self.objective.ema) {
            bail!("objective.ema must be in [0, 1], got {}", self.objective.ema);
        }
        if self.validation.every > 0 && self.validation.data.as_os_str().is_empty() {
            bail!("validation.every is set but validation.data names no labelled set");
        }
        if self.data.batch_size == 0 || self.run.steps == 0 {
            bail!("data.batch_size and run.steps must be positive");
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

    pub fn loader_config(&self) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.data.batch_size,
            input_size: self.model.img_size,
            crop_scale: self.data.crop_scale,
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: self.data.hflip,
            shuffle_buffer: self.data.shuffle_buffer,
            workers: self.data.workers,
            prefetch: self.data.prefetch,
            seed: self.run.seed,
            expect_frames: Some(self.data.frames),
            expect_grid: Some(self.data.grid_size),
            expect_size: None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_unknown_keys() {
        let c = TrainConfig::load(None, &["objective.mask_ratio=0.2".into(), "head.hidden=[1024,1024,512]".into(), "data.shards=x/y".into()]).unwrap();
        assert_eq!(c.objective.mask_ratio, 0.2);
        assert_eq!(c.head.hidden, vec![1024, 1024, 512]);
        assert_eq!(c.data.shards, PathBuf::from("x/y"));
        let e = TrainConfig::load(None, &["objective.mask_rate=0.2".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("mask_rate"), "{e:#}");
        // The resolved config round-trips through TOML.
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }
}
