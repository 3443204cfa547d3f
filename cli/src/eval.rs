//! `mosic features` and `mosic eval {cluster,video,linear,incontext}`: dense features of a
//! backbone and the paper's evaluation protocols on them.

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use image::RgbImage;
use mosic_eval::cluster::{cluster_images, cluster_videos, num_classes, ClusterConfig, Score, VideoConfig, VideoSample};
use mosic_eval::data::{image_set, video_set, Mask};
use mosic_eval::{incontext, linear, FeatureMap};
use mosic_trainer::backend::{dispatch, WithBackend};
use mosic_trainer::features::{extract, load_backbone, read_image, save_features, Weights};
use mosic_trainer::validate::{load_images, load_videos, spread};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Which backbone to use.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A training run: its newest checkpoint's EMA teacher.
    #[arg(long, conflicts_with_all = ["weights", "random"])]
    run: Option<PathBuf>,
    /// A checkpoint directory of --run instead of the newest.
    #[arg(long, requires = "run")]
    checkpoint: Option<PathBuf>,
    /// The weights --run started from (random init with its seed, or its model.weights).
    #[arg(long, requires = "run")]
    initial: bool,
    /// timm .safetensors or a .pth state dict (needs --preset).
    #[arg(long, requires = "preset")]
    weights: Option<PathBuf>,
    /// Model preset for --weights or --random (e.g. vit_small_patch14_dinov2).
    #[arg(long)]
    preset: Option<String>,
    /// Randomly initialised --preset with this seed (a baseline).
    #[arg(long, requires = "preset")]
    random: Option<u64>,
    /// Burn backend for the forward passes.
    #[arg(long, default_value = mosic_trainer::backend::DEFAULT)]
    backend: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
}

impl ModelArgs {
    fn weights(&self) -> Result<Weights> {
        Ok(match (&self.run, &self.weights, self.random) {
            (Some(dir), _, _) => Weights::Run { dir: dir.clone(), checkpoint: self.checkpoint.clone(), initial: self.initial },
            (None, Some(path), _) => Weights::File { path: path.clone(), preset: self.preset.clone().unwrap_or_default() },
            (None, None, Some(seed)) => Weights::Random { preset: self.preset.clone().unwrap_or_default(), seed },
            _ => bail!("name the backbone: --run DIR, --weights FILE --preset NAME, or --random SEED --preset NAME"),
        })
    }
}

/// Features of image lists, on the chosen backend: one call per list, one model load.
struct Extract {
    weights: Weights,
    size: Option<usize>,
    batch: usize,
    sets: Vec<Vec<RgbImage>>,
}

impl WithBackend for Extract {
    type Output = (Vec<Vec<FeatureMap>>, usize);
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        let vit = load_backbone::<B::InnerBackend>(&self.weights, self.size, &device)?;
        let size = vit.config().img_size;
        Ok((self.sets.iter().map(|s| extract::<B::InnerBackend>(&vit, s, self.batch)).collect(), size))
    }
}

fn features_of(m: &ModelArgs, size: Option<usize>, sets: Vec<Vec<RgbImage>>) -> Result<(Vec<Vec<FeatureMap>>, usize)> {
    let weights = m.weights()?;
    let n: usize = sets.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    let out = dispatch(&m.backend, Extract { weights: weights.clone(), size, batch: m.batch, sets })?;
    eprintln!("features: {n} images from {} at {} px in {:.1} s", weights.describe(), out.1, t0.elapsed().as_secs_f64());
    Ok(out)
}

#[derive(Args)]
pub struct FeaturesArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An image or video file, or a folder of them (frame folders and video files, recursively).
    #[arg(long)]
    input: PathBuf,
    /// Of a video file, every n-th frame.
    #[arg(long, default_value_t = 1)]
    every: usize,
    /// Output .safetensors: `features` [N, H, W, D] and the image names in the metadata.
    #[arg(long)]
    out: PathBuf,
    /// Model input size (images are resized to a square); default: the model's own.
    #[arg(long)]
    size: Option<usize>,
}

const VIDEO_EXTS: [&str; 5] = ["mp4", "webm", "mkv", "avi", "mov"];

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image and video files under `input` (or `input` itself), sorted, with names relative to it.
fn list_inputs(input: &Path) -> Result<Vec<(String, PathBuf)>> {
    let wanted = |p: &Path| has_ext(p, &["jpg", "jpeg", "png", "bmp"]) || has_ext(p, &VIDEO_EXTS);
    if input.is_file() {
        return Ok(vec![(input.file_name().unwrap_or_default().to_string_lossy().into_owned(), input.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let p = e?.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if wanted(&p) {
                let name = p.strip_prefix(input).unwrap_or(&p).to_string_lossy().into_owned();
                out.push((name, p));
            }
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{}: no images or videos found", input.display());
    }
    Ok(out)
}

/// Decoded images with their names; a video contributes every `every`-th frame as `NAME#FRAME`.
fn read_inputs(input: &Path, every: usize) -> Result<(Vec<String>, Vec<RgbImage>)> {
    let (mut names, mut images) = (Vec::new(), Vec::new());
    for (name, path) in list_inputs(input)? {
        if has_ext(&path, &VIDEO_EXTS) {
            let (_, frames) = mosic_video::decode_all(&path).with_context(|| format!("decoding {}", path.display()))?;
            for (i, f) in frames.into_iter().enumerate().step_by(every.max(1)) {
                names.push(format!("{name}#{i:05}"));
                images.push(f);
            }
        } else {
            names.push(name);
            images.push(read_image(&path)?);
        }
    }
    Ok((names, images))
}

pub fn features(a: FeaturesArgs) -> Result<ExitCode> {
    let (names, images) = read_inputs(&a.input, a.every)?;
    let (mut maps, size) = features_of(&a.model, a.size, vec![images])?;
    let maps = maps.pop().unwrap_or_default();
    let mut meta = BTreeMap::new();
    meta.insert("source".to_string(), a.model.weights()?.describe());
    meta.insert("img_size".to_string(), size.to_string());
    meta.insert("layout".to_string(), "features[n, y, x, channel]: final-norm patch tokens".to_string());
    save_features(&a.out, &maps, &names, &meta)?;
    let m = &maps[0];
    println!("features: {} images -> {} ([{}, {}, {}, {}] float32)", names.len(), a.out.display(), maps.len(), m.height, m.width, m.dim);
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// K-means clustering of an image set's dense features (K = classes, Hungarian; K > classes, overclustering).
    Cluster(ClusterArgs),
    /// Clustering of videos with instance masks, matched per frame, per clip and per dataset (TimeT).
    Video(VideoArgs),
    /// Linear segmentation probe on frozen features (Leopart setup).
    Linear(LinearArgs),
    /// Dense nearest-neighbour retrieval from a memory bank of labelled patches (Hummingbird).
    Incontext(InContextArgs),
}

#[derive(Args)]
pub struct Common {
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled set: Pascal VOC (JPEGImages, SegmentationClass, ImageSets) or images/ + masks/
    /// (eval video: DAVIS or YouTube-VOS / `mosic synth` layout).
    #[arg(long)]
    data: PathBuf,
    /// Model input size (paper: 448).
    #[arg(long, default_value_t = 448)]
    size: usize,
    /// Label maps are resized (nearest) to this square size (paper: 100).
    #[arg(long, default_value_t = 100)]
    mask_size: usize,
    /// Number of classes; default: largest label in the masks + 1 (255 = ignore).
    #[arg(long)]
    classes: Option<usize>,
    /// Write the scores as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    split: Option<String>,
    /// Cluster counts; 0 = the number of classes.
    #[arg(long, value_delimiter = ',', default_value = "0,100,300,500")]
    k: Vec<usize>,
    /// k-means seeds (0..seeds).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// Use at most this many images (evenly spaced).
    #[arg(long)]
    max_images: Option<usize>,
}

#[derive(Args)]
pub struct VideoArgs {
    #[command(flatten)]
    common: Common,
    /// DAVIS: ImageSets/2017/<split>.txt; others: <split>.txt in the data folder.
    #[arg(long)]
    split: Option<String>,
    /// Keep every n-th annotated frame.
    #[arg(long, default_value_t = 1)]
    every: usize,
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// Overclustering K per frame and clip (TimeT: 10); 0 skips.
    #[arg(long, default_value_t = 10)]
    over_local: usize,
    /// Overclustering K over the dataset (TimeT: 200 DAVIS, 500 YouTube-VOS); 0 skips.
    #[arg(long, default_value_t = 200)]
    over_dataset: usize,
}

/// Training and evaluation splits of a labelled image set.
#[derive(Args)]
pub struct Splits {
    #[arg(long, default_value = "train")]
    train_split: String,
    #[arg(long, default_value = "val")]
    val_split: String,
}

#[derive(Args)]
pub struct LinearArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    splits: Splits,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Epochs at which the learning rate drops 10x.
    #[arg(long, value_delimiter = ',', default_value = "15")]
    lr_drops: Vec<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct InContextArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    splits: Splits,
    #[arg(long, default_value_t = 30)]
    neighbours: usize,
    #[arg(long, default_value_t = 0.02)]
    temperature: f32,
    /// Fractions of the training images in the memory bank.
    #[arg(long, value_delimiter = ',', default_value = "1,0.125,0.015625,0.0078125")]
    fractions: Vec<f64>,
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Most bank patches (random sample beyond); 0 keeps all.
    #[arg(long, default_value_t = 0)]
    memory_size: usize,
}

pub fn eval(c: EvalCommand) -> Result<ExitCode> {
    let (what, scores, common) = match c {
        EvalCommand::Cluster(a) => ("cluster", cluster(&a)?, a.common),
        EvalCommand::Video(a) => ("video", video(&a)?, a.common),
        EvalCommand::Linear(a) => ("linear", linear_probe(&a)?, a.common),
        EvalCommand::Incontext(a) => ("incontext", in_context(&a)?, a.common),
    };
    print_scores(what, &common, &scores)?;
    Ok(ExitCode::SUCCESS)
}

fn print_scores(what: &str, c: &Common, scores: &[Score]) -> Result<()> {
    println!("eval {what}: {} on {} ({} px input, {}x{} masks)", c.model.weights()?.describe(), c.data.display(), c.size, c.mask_size, c.mask_size);
    println!("{:<28} {:>8} {:>8}  per seed", "protocol", "mIoU %", "std");
    for s in scores {
        let per: Vec<String> = s.per_seed.iter().map(|v| format!("{:.1}", 100.0 * v)).collect();
        println!("{:<28} {:>8.2} {:>8.2}  {}", s.name, 100.0 * s.mean, 100.0 * s.std, per.join(" "));
    }
    if let Some(path) = &c.json {
        let doc = serde_json::json!({
            "protocol": what,
            "backbone": c.model.weights()?.describe(),
            "data": c.data,
            "img_size": c.size,
            "mask_size": c.mask_size,
            "scores": scores,
        });
        mosic::fsutil::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}

fn classes_of(c: &Common, masks: &[&Mask]) -> usize {
    c.classes.unwrap_or_else(|| num_classes(masks.iter().copied()))
}

fn cluster(a: &ClusterArgs) -> Result<Vec<Score>> {
    let c = &a.common;
    let mut items = image_set(&c.data, a.split.as_deref())?;
    if let Some(m) = a.max_images {
        items = spread(items.len(), m).into_iter().map(|i| items[i].clone()).collect();
    }
    let (images, masks) = load_images(&items, c.mask_size)?;
    let classes = classes_of(c, &masks.iter().collect::<Vec<_>>());
    let (mut feats, _) = features_of(&c.model, Some(c.size), vec![images])?;
    let t0 = Instant::now();
    let scores = cluster_images(&feats.pop().unwrap(), &masks, classes, &ClusterConfig { ks: a.k.clone(), seeds: (0..a.seeds).collect(), iters: a.iters });
    eprintln!("clustering: {} images, {classes} classes, {:.1} s", items.len(), t0.elapsed().as_secs_f64());
    Ok(scores)
}

fn video(a: &VideoArgs) -> Result<Vec<Score>> {
    let c = &a.common;
    let videos = load_videos(&video_set(&c.data, a.split.as_deref(), a.every)?, c.mask_size)?;
    let sets: Vec<Vec<RgbImage>> = videos.iter().map(|v| v.frames.clone()).collect();
    let (feats, _) = features_of(&c.model, Some(c.size), sets)?;
    let samples: Vec<VideoSample> =
        videos.into_iter().zip(feats).map(|(v, f)| VideoSample { name: v.name, frames: f, masks: v.masks }).collect();
    let t0 = Instant::now();
    let cfg = VideoConfig { seeds: (0..a.seeds).collect(), iters: a.iters, over_k_local: a.over_local, over_k_dataset: a.over_dataset };
    let scores = cluster_videos(&samples, &cfg);
    eprintln!("clustering: {} videos, {} frames, {:.1} s", samples.len(), samples.iter().map(|s| s.frames.len()).sum::<usize>(), t0.elapsed().as_secs_f64());
    Ok(scores)
}

/// Train and val features with their masks.
type Pairs = Vec<(FeatureMap, Mask)>;

fn train_val(c: &Common, s: &Splits) -> Result<(Pairs, Pairs, usize)> {
    let (ti, tm) = load_images(&image_set(&c.data, Some(&s.train_split))?, c.mask_size)?;
    let (vi, vm) = load_images(&image_set(&c.data, Some(&s.val_split))?, c.mask_size)?;
    let classes = classes_of(c, &tm.iter().chain(&vm).collect::<Vec<_>>());
    let (mut f, _) = features_of(&c.model, Some(c.size), vec![ti, vi])?;
    let vf = f.pop().unwrap();
    let tf = f.pop().unwrap();
    Ok((tf.into_iter().zip(tm).collect(), vf.into_iter().zip(vm).collect(), classes))
}

fn linear_probe(a: &LinearArgs) -> Result<Vec<Score>> {
    let (train, val, classes) = train_val(&a.common, &a.splits)?;
    let cfg = linear::LinearConfig {
        epochs: a.epochs,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        batch_size: a.batch_size,
        lr_drops: a.lr_drops.clone(),
        seed: a.seed,
    };
    let probe = linear::train_probe(&train, classes, &cfg, &|l| eprintln!("{l}"));
    let conf = linear::evaluate_probe(&probe, &val);
    let v = mosic_eval::cluster::prediction_miou(&conf);
    Ok(vec![Score::new(format!("linear ({} train, {} val)", train.len(), val.len()), classes, "supervised", vec![v])])
}

fn in_context(a: &InContextArgs) -> Result<Vec<Score>> {
    let (train, val, classes) = train_val(&a.common, &a.splits)?;
    let cfg = incontext::InContextConfig {
        neighbours: a.neighbours,
        temperature: a.temperature,
        fractions: a.fractions.clone(),
        seeds: (0..a.seeds).collect(),
        memory_size: a.memory_size,
    };
    Ok(incontext::evaluate(&train, &val, classes, &cfg, &|l| eprintln!("{l}")))
}
