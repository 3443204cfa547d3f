//! Dense features from a backbone: where the weights come from (a run's checkpoint, its
//! initial weights, or a weights file), and patch tokens of images at a chosen input size.
//! What `mosic features`, the evaluation commands and in-loop validation share.

use crate::model::{paths, weights};
use crate::model::{Vit, VitConfig};
use crate::run::dir as rundir;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use mosic_eval::FeatureMap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::{MEAN, STD};

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

/// The backbone at input size `img_size` (None: the size it was trained or made for).
pub fn load_backbone<B: Backend>(
    weights: &Weights,
    img_size: Option<usize>,
    device: &B::Device,
) -> Result<Vit<B>> {
    let vit = match weights {
        Weights::Run { dir, checkpoint, initial } => {
            let cfg = rundir::read_config(dir)?;
            let vc = VitConfig::preset(&cfg.model.preset, cfg.model.img_size)?;
            if *initial {
                if checkpoint.is_some() {
                    bail!("choose either a checkpoint or the initial weights of {}", dir.display());
                }
                // Exactly what `Trainer::new` builds.
                if cfg.model.weights.as_os_str().is_empty() {
                    crate::model::timm::random(&vc, cfg.run.seed, device)
                } else {
                    weights::load(&vc, &cfg.model.weights, device)?
                }
            } else {
                let ckpt = match checkpoint {
                    Some(c) => c.clone(),
                    None => rundir::newest_checkpoint(dir)
                        .with_context(|| format!("{} has no checkpoint yet", dir.display()))?,
                };
                let file = ckpt.join("teacher.safetensors");
                let teacher = rundir::read_checkpoint_tensors(&ckpt, "teacher")?;
                let backbone: BTreeMap<_, _> = teacher
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix("backbone.").map(|r| (r.to_string(), v)))
                    .collect();
                let mut vit = paths::assign(
                    crate::model::timm::random::<B>(&vc, 0, device),
                    &backbone,
                    device,
                    &file,
                )?;
                // A frozen embedding is resampled from the weights file's grid, as the
                // baseline's is, so a run and its baseline differ only in what trained.
                if !cfg.model.trainable_blocks.trains_pos_embed() {
                    vit.source_pos_embed = rundir::read_source_pos_embed(dir)?;
                }
                vit
            }
        }
        Weights::File { path, preset } => {
            let vc = VitConfig::preset(
                preset,
                img_size.unwrap_or(VitConfig::preset(preset, 224)?.img_size),
            )?;
            return weights::load(&vc, path, device);
        }
        Weights::Random { preset, seed } => crate::model::timm::random(
            &VitConfig::preset(preset, img_size.unwrap_or(224))?,
            *seed,
            device,
        ),
    };
    match img_size {
        Some(s) => weights::resize(vit, s),
        None => Ok(vit),
    }
}

/// Writes the teacher backbone of a checkpoint as timm safetensors at `img_size` (None: the
/// run's). While the run's position embedding is frozen it is resampled from the weights
/// file's grid, as timm resamples the original checkpoint.
pub fn export<B: Backend>(
    run: &Path,
    checkpoint: Option<&Path>,
    img_size: Option<usize>,
    out: &Path,
    device: &B::Device,
) -> Result<PathBuf> {
    let ckpt = match checkpoint {
        Some(c) => c.to_path_buf(),
        None => rundir::newest_checkpoint(run)
            .with_context(|| format!("{} has no checkpoint", run.display()))?,
    };
    let model = load_backbone::<B>(
        &Weights::Run { dir: run.to_path_buf(), checkpoint: Some(ckpt.clone()), initial: false },
        img_size,
        device,
    )?;
    weights::save(&model, out)?;
    Ok(ckpt)
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

pub use mosic_eval::data::read_image;

/// A loaded backbone as the evaluation protocols see it: images in, feature maps out.
pub struct Extractor<B: Backend> {
    pub vit: Vit<B>,
    /// Images per forward pass.
    pub batch: usize,
}

impl<B: Backend> mosic_eval::Backbone for Extractor<B> {
    fn features(&self, images: &[RgbImage]) -> Result<Vec<FeatureMap>> {
        Ok(extract(&self.vit, images, self.batch))
    }
    fn dim(&self) -> usize {
        self.vit.config().embed_dim
    }
    fn input_size(&self) -> usize {
        self.vit.config().img_size
    }
    fn patch_size(&self) -> usize {
        self.vit.config().patch_size
    }
    fn batch(&self) -> usize {
        self.batch
    }
}

/// A backbone loaded on a device with the evaluation's heavy products on the same device,
/// behind the protocols' traits: what `mosic eval` and `mosic features` hand the protocols.
pub struct Loaded {
    backbone: Box<dyn mosic_eval::Backbone>,
    products: Box<dyn mosic_eval::kernels::products::Products>,
}

impl Loaded {
    pub fn backbone(&self) -> &dyn mosic_eval::Backbone {
        self.backbone.as_ref()
    }
    pub fn products(&self) -> &dyn mosic_eval::kernels::products::Products {
        self.products.as_ref()
    }
}

/// The backbone `weights` names at input size `size` (None: its own) on `target`, `batch`
/// images per forward pass, with the evaluation's products on the same device (on a CPU
/// device `mosic-eval`'s own kernels, which beat a framework's product + top-k there).
pub fn load(
    target: &crate::backend::Target,
    weights: &Weights,
    size: Option<usize>,
    batch: usize,
) -> Result<Loaded> {
    struct Job<'a> {
        weights: &'a Weights,
        size: Option<usize>,
        batch: usize,
        host: bool,
    }
    impl crate::backend::WithBackend for Job<'_> {
        type Output = Loaded;
        fn run<B: burn::tensor::backend::AutodiffBackend>(
            self,
            device: B::Device,
        ) -> Result<Loaded> {
            let vit = load_backbone::<B::InnerBackend>(self.weights, self.size, &device)?;
            let backbone = Box::new(Extractor { vit, batch: self.batch.max(1) });
            let products: Box<dyn mosic_eval::kernels::products::Products> = if self.host {
                Box::new(mosic_eval::kernels::cpu::Cpu)
            } else {
                Box::new(crate::eval::products::OnDevice::<B::InnerBackend>::new(&device))
            };
            Ok(Loaded { backbone, products })
        }
    }
    let host = target.device() == crate::backend::Device::Cpu;
    crate::backend::dispatch(target, Job { weights, size, batch, host })
}

/// Runs `f` with the evaluation's products on `target`'s first device (no model: benches and
/// work on features computed before).
pub fn with_products<T>(
    target: &crate::backend::Target,
    f: impl FnOnce(&dyn mosic_eval::kernels::products::Products) -> Result<T>,
) -> Result<T> {
    struct Job<F, T>(F, std::marker::PhantomData<T>);
    impl<T, F> crate::backend::WithBackend for Job<F, T>
    where
        F: FnOnce(&dyn mosic_eval::kernels::products::Products) -> Result<T>,
    {
        type Output = T;
        fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device) -> Result<T> {
            (self.0)(&crate::eval::products::OnDevice::<B::InnerBackend>::new(&device))
        }
    }
    crate::backend::dispatch(target, Job(f, std::marker::PhantomData))
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
