//! Dense features from a backbone: where the weights come from (a run's checkpoint, its
//! initial weights, or a weights file), and patch tokens of images at a chosen input size.
//! What `mosic features`, the evaluation commands and in-loop validation share.

use crate::config::TrainConfig;
use crate::model::{Vit, VitConfig};
use crate::{params, train};
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use mosic_eval::FeatureMap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::loader::{MEAN, STD};

/// Where a backbone's weights come from.
#[derive(Clone, Debug)]
pub enum Weights {
    /// A training run: its newest checkpoint's EMA teacher (or the given checkpoint), or, with
    /// `initial`, the weights the run started from.
    Run { dir: PathBuf, checkpoint: Option<PathBuf>, initial: bool },
    /// timm `.safetensors` or a `.pth` state dict of a preset.
    File { path: PathBuf, preset: String },
    /// Random initialisation of a preset (a baseline).
    Random { preset: String, seed: u64 },
}

impl Weights {
    pub fn describe(&self) -> String {
        match self {
            Weights::Run { dir, checkpoint: Some(c), .. } => {
                format!("{} ({})", dir.display(), c.display())
            }
            Weights::Run { dir, initial: true, .. } => {
                format!("{} (initial weights)", dir.display())
            }
            Weights::Run { dir, .. } => format!("{} (newest checkpoint)", dir.display()),
            Weights::File { path, preset } => format!("{} ({preset})", path.display()),
            Weights::Random { preset, seed } => format!("random {preset} (seed {seed})"),
        }
    }
}

pub fn run_config(dir: &Path) -> Result<TrainConfig> {
    let p = dir.join("config.toml");
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("{}: not a run directory (no config.toml)", dir.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is malformed", p.display()))
}

/// The backbone at input size `img_size` (None: the size it was trained or made for).
pub fn load_backbone<B: Backend>(
    weights: &Weights,
    img_size: Option<usize>,
    device: &B::Device,
) -> Result<Vit<B>> {
    let vit = match weights {
        Weights::Run { dir, checkpoint, initial } => {
            let cfg = run_config(dir)?;
            let vc = VitConfig::preset(&cfg.model.preset, cfg.model.img_size)?;
            if *initial {
                if checkpoint.is_some() {
                    bail!("choose either a checkpoint or the initial weights of {}", dir.display());
                }
                // Exactly what `Trainer::new` builds.
                if cfg.model.weights.as_os_str().is_empty() {
                    Vit::new_seeded(&vc, cfg.run.seed, device)
                } else {
                    Vit::load(&vc, &cfg.model.weights, device)?
                }
            } else {
                let ckpt = match checkpoint {
                    Some(c) => c.clone(),
                    None => train::checkpoints(dir)
                        .pop()
                        .with_context(|| format!("{} has no checkpoint yet", dir.display()))?,
                };
                let file = ckpt.join("teacher.safetensors");
                let teacher = params::load_safetensors(&file)?;
                let backbone: BTreeMap<_, _> = teacher
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix("backbone.").map(|r| (r.to_string(), v)))
                    .collect();
                let mut vit =
                    params::assign(Vit::<B>::new_seeded(&vc, 0, device), &backbone, device, &file)?;
                // A frozen embedding is resampled from the weights file's grid, as the
                // baseline's is, so a run and its baseline differ only in what trained.
                if !cfg.model.trainable_blocks.trains_pos_embed() {
                    vit.source_pos_embed = train::load_source_pos_embed(dir)?;
                }
                vit
            }
        }
        Weights::File { path, preset } => {
            let vc = VitConfig::preset(
                preset,
                img_size.unwrap_or(VitConfig::preset(preset, 224)?.img_size),
            )?;
            return Vit::load(&vc, path, device);
        }
        Weights::Random { preset, seed } => {
            Vit::new_seeded(&VitConfig::preset(preset, img_size.unwrap_or(224))?, *seed, device)
        }
    };
    match img_size {
        Some(s) => vit.with_img_size(s),
        None => Ok(vit),
    }
}

/// `image` resized (antialiased bilinear, aspect not kept, as Leopart's evaluation does) to the
/// model's square input and ImageNet-normalised, `[3, S, S]`.
pub fn preprocess(image: &RgbImage, size: usize) -> Vec<f32> {
    let img = mosic::imageio::resize(image, size as u32, size as u32);
    let mut out = vec![0.0f32; 3 * size * size];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * size * size + i] = (p.0[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    out
}

/// Final-norm patch tokens (timm's `forward_features` without prefix tokens) of every image,
/// `batch` images per forward pass.
pub fn extract<B: Backend>(vit: &Vit<B>, images: &[RgbImage], batch: usize) -> Vec<FeatureMap> {
    let cfg = vit.config();
    let (s, g, d) = (cfg.img_size, cfg.grid(), cfg.embed_dim);
    let device = vit.pos_embed.val().device();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let data: Vec<f32> = chunk.iter().flat_map(|im| preprocess(im, s)).collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(data, [chunk.len(), 3, s, s]), &device);
        let tokens: Vec<f32> = vit
            .forward_patch_tokens(x, None)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32 data");
        out.extend(tokens.chunks(g * g * d).map(|t| FeatureMap::new(g, g, d, t.to_vec())));
    }
    out
}

/// Reads an image file (JPEG, PNG, ...) as RGB, naming the file on failure.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read image {}", path.display()))?
        .to_rgb8())
}

/// Writes feature maps of one shape as safetensors: `features` `[N, H, W, D]` float32, with
/// metadata `names` (a JSON list, one per map) and whatever `meta` holds. Atomic.
pub fn save_features(
    path: &Path,
    maps: &[FeatureMap],
    names: &[String],
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let Some(first) = maps.first() else { bail!("no features to write to {}", path.display()) };
    let (h, w, d) = (first.height, first.width, first.dim);
    if let Some(m) = maps.iter().find(|m| (m.height, m.width, m.dim) != (h, w, d)) {
        bail!("feature maps differ in shape ({h}x{w}x{d} and {}x{}x{})", m.height, m.width, m.dim);
    }
    let bytes: Vec<u8> =
        maps.iter().flat_map(|m| m.data.iter().flat_map(|v| v.to_le_bytes())).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![maps.len(), h, w, d],
        &bytes,
    )?;
    let mut metadata: std::collections::HashMap<String, String> =
        meta.clone().into_iter().collect();
    metadata.insert("names".into(), serde_json::to_string(names)?);
    let data = safetensors::serialize(vec![("features".to_string(), view)], Some(metadata))?;
    mosic::fsutil::write_atomic(path, &data)?;
    Ok(())
}

/// Reads what [`save_features`] wrote: the maps and their names.
pub fn load_features(path: &Path) -> Result<(Vec<FeatureMap>, Vec<String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not safetensors", path.display()))?;
    let names: Vec<String> = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("names"))
        .map(|n| serde_json::from_str(n))
        .transpose()?
        .unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let t = st
        .tensor("features")
        .with_context(|| format!("{}: no 'features' tensor", path.display()))?;
    let shape = t.shape().to_vec();
    if shape.len() != 4 || t.dtype() != safetensors::Dtype::F32 {
        bail!(
            "{}: 'features' must be float32 [N, H, W, D], found {:?} {shape:?}",
            path.display(),
            t.dtype()
        );
    }
    let (h, w, d) = (shape[1], shape[2], shape[3]);
    let values: Vec<f32> =
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let maps = values.chunks(h * w * d).map(|c| FeatureMap::new(h, w, d, c.to_vec())).collect();
    Ok((maps, names))
}
