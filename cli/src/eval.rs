//! `mosic features` and `mosic eval {cluster,video,linear,incontext}`: dense features of a
//! backbone and the evaluation protocols, as their reference implementations run them (see
//! the eval crate for each protocol; README "Evaluation" for the settings).

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use image::RgbImage;
use mosic::rng::SplitMix64;
use mosic_eval::card::{self, ProtocolCard};
use mosic_eval::cluster::{leopart_clustering, ImageProtocol, Score};
use mosic_eval::data::{
    hummingbird_file_set, open_image_set, video_set, LabelledImage, Mask, SetInfo,
};
use mosic_eval::incontext::{self, Bank, InContextConfig};
use mosic_eval::linear::{self, LinearConfig, LinearProbe};
use mosic_eval::segmentation::{reference_score, Confusion, RefMatching};
use mosic_eval::video::{timet_clustering, Clip, VideoProtocol};
use mosic_eval::{augment, FeatureMap};
use mosic_trainer::backend::{dispatch, WithBackend};
use mosic_trainer::features::{extract, load_backbone, read_image, save_features, Weights};
use rayon::prelude::*;
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
        Ok((
            self.sets.iter().map(|s| extract::<B::InnerBackend>(&vit, s, self.batch)).collect(),
            size,
        ))
    }
}

fn features_of(
    m: &ModelArgs,
    size: Option<usize>,
    sets: Vec<Vec<RgbImage>>,
) -> Result<(Vec<Vec<FeatureMap>>, usize)> {
    let weights = m.weights()?;
    let n: usize = sets.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    let out =
        dispatch(&m.backend, Extract { weights: weights.clone(), size, batch: m.batch, sets })?;
    eprintln!(
        "features: {n} images from {} at {} px in {:.1} s",
        weights.describe(),
        out.1,
        t0.elapsed().as_secs_f64()
    );
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
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image and video files under `input` (or `input` itself), sorted, with names relative to it.
fn list_inputs(input: &Path) -> Result<Vec<(String, PathBuf)>> {
    let wanted = |p: &Path| has_ext(p, &["jpg", "jpeg", "png", "bmp"]) || has_ext(p, &VIDEO_EXTS);
    if input.is_file() {
        return Ok(vec![(
            input.file_name().unwrap_or_default().to_string_lossy().into_owned(),
            input.to_path_buf(),
        )]);
    }
    let mut out = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
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
            let (_, frames) = mosic_video::decode_all(&path)
                .with_context(|| format!("decoding {}", path.display()))?;
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
    meta.insert(
        "layout".to_string(),
        "features[n, y, x, channel]: final-norm patch tokens".to_string(),
    );
    save_features(&a.out, &maps, &names, &meta)?;
    let m = &maps[0];
    println!(
        "features: {} images -> {} ([{}, {}, {}, {}] float32)",
        names.len(),
        a.out.display(),
        maps.len(),
        m.height,
        m.width,
        m.dim
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Clustering and overclustering of an image set (Leopart): standardise + PCA 50, FAISS-style k-means, Hungarian (K = classes) or many-to-one by precision.
    Cluster(ClusterArgs),
    /// Unsupervised video segmentation (TimeT): clustering per frame (F), clip (C) and dataset (D), plus overclustering.
    Video(VideoArgs),
    /// Linear segmentation probe on frozen features (Leopart's Pascal setup).
    Linear(LinearArgs),
    /// Dense nearest-neighbour retrieval from a memory bank of labelled patches (Hummingbird).
    Incontext(InContextArgs),
}

#[derive(Args)]
pub struct Common {
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled set: Pascal VOC 2012 (+ SBD SegmentationClassAug), VOCSegmentation, ADE20K
    /// (ADEChallengeData2016), COCO as Leopart prepares it, images/ + masks/; `eval video`:
    /// DAVIS 2017, YouTube-VOS (meta.json maps ids to categories), `mosic synth`.
    #[arg(long)]
    data: PathBuf,
    /// Model input size (square); default per protocol: cluster 448, video 224, linear 448, incontext 504.
    #[arg(long)]
    size: Option<usize>,
    /// Side of the square masks are scored at; default per protocol: cluster and linear 100,
    /// video and incontext the input size.
    #[arg(long)]
    mask_size: Option<usize>,
    /// Number of classes; default: what the layout defines (VOC 21, ADE20K 150, COCO-Things 12,
    /// COCO-Stuff 15), else the largest label + 1 (255 = ignore).
    #[arg(long)]
    classes: Option<usize>,
    /// Write the scores and the protocol card as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    common: Common,
    /// VOC: train, val (default), trainaug; ADE20K: train, val; COCO: things-val, stuff-val, ...
    #[arg(long)]
    split: Option<String>,
    /// Cluster counts; 0 = the number of classes.
    #[arg(long, value_delimiter = ',', default_value = "0,100,300,500")]
    k: Vec<usize>,
    /// k-means seeds 0..N, one clustering each (Leopart: 5).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    #[arg(long, default_value_t = 100)]
    niter: usize,
    #[arg(long, default_value_t = 5)]
    nredo: usize,
    /// PCA dimension after standardisation; 0 clusters raw tokens.
    #[arg(long, default_value_t = 50)]
    pca_dim: usize,
    /// Overclustering matches each cluster by IoU instead of precision.
    #[arg(long)]
    match_by_iou: bool,
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
    /// Annotated frames drawn per clip (sorted; TimeT: 4); 0 takes every annotated frame.
    #[arg(long, default_value_t = 4)]
    frames_per_clip: usize,
    /// Keep every n-th annotated frame before drawing.
    #[arg(long, default_value_t = 1)]
    every: usize,
    /// k-means (and frame-draw) seeds (TimeT: 1).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    seeds: Vec<u64>,
    /// Clips per standardisation + PCA fit for F and C (TimeT's batch size).
    #[arg(long, default_value_t = 16)]
    batch_clips: usize,
    /// Side the dataset-level clustering works at (TimeT: 112).
    #[arg(long, default_value_t = 112)]
    dataset_size: usize,
    #[arg(long, default_value_t = 50)]
    niter: usize,
    #[arg(long, default_value_t = 5)]
    nredo: usize,
    #[arg(long, default_value_t = 50)]
    pca_dim: usize,
    /// Overclustering K per frame and clip (10); 0 skips.
    #[arg(long, default_value_t = 10)]
    over_local: usize,
    /// Overclustering K over the dataset (200 DAVIS, 500 YouTube-VOS); 0 skips.
    #[arg(long, default_value_t = 200)]
    over_dataset: usize,
    /// Overclustering matches each cluster by IoU instead of precision.
    #[arg(long)]
    match_by_iou: bool,
}

/// Training and evaluation splits of a labelled image set.
#[derive(Args)]
pub struct Splits {
    #[arg(long, default_value = "trainaug")]
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
    #[arg(long, default_value_t = 25)]
    epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 60)]
    batch_size: usize,
    /// Epochs at which the learning rate drops 10x.
    #[arg(long, value_delimiter = ',', default_value = "20")]
    lr_drops: Vec<usize>,
    /// No RandomResizedCrop + flip: features computed once and reused every epoch.
    #[arg(long)]
    no_augment: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct InContextArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    splits: Splits,
    /// open-hummingbird-eval's `file_sets/<dataset>` folder: the published training subsets
    /// (`1_div_<n>/..._<n>_<seed>.txt`, `full/...txt`). Without it, seeded random subsets.
    #[arg(long)]
    file_sets: Option<PathBuf>,
    /// Training fractions as denominators: 1 = all, 8 = 1/8, ...
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,128")]
    fractions: Vec<usize>,
    /// Subset seeds of the fractions below 1 (the published lists').
    #[arg(long, value_delimiter = ',', default_value = "42,400,783,1293,4019")]
    seeds: Vec<u64>,
    /// Most memory-bank patches; 0 = every patch.
    #[arg(long, default_value_t = 10_240_000)]
    memory_size: usize,
    /// Augmented passes over the training images.
    #[arg(long, default_value_t = 2)]
    passes: usize,
    /// No colour jitter or random crops for the bank.
    #[arg(long)]
    no_augment: bool,
    #[arg(long, default_value_t = 30)]
    neighbours: usize,
    #[arg(long, default_value_t = 0.02)]
    temperature: f32,
    /// Label left out of the score (default: 0 for ADE20K, 255 otherwise).
    #[arg(long)]
    ignore: Option<u8>,
}

pub fn eval(c: EvalCommand) -> Result<ExitCode> {
    let (scores, card, common) = match c {
        EvalCommand::Cluster(a) => {
            let (s, c) = cluster(&a)?;
            (s, c, a.common)
        }
        EvalCommand::Video(a) => {
            let (s, c) = video(&a)?;
            (s, c, a.common)
        }
        EvalCommand::Linear(a) => {
            let (s, c) = linear_probe(&a)?;
            (s, c, a.common)
        }
        EvalCommand::Incontext(a) => {
            let (s, c) = in_context(&a)?;
            (s, c, a.common)
        }
    };
    print_scores(&common, &card, &scores)?;
    Ok(ExitCode::SUCCESS)
}

fn print_scores(c: &Common, card: &ProtocolCard, scores: &[Score]) -> Result<()> {
    println!("eval: {} on {}", c.model.weights()?.describe(), c.data.display());
    for l in card.lines() {
        println!("  {l}");
    }
    println!("{:<28} {:>8} {:>8}  per seed", "score", "mIoU %", "std");
    for s in scores {
        let per: Vec<String> = s.per_seed.iter().map(|v| format!("{:.1}", 100.0 * v)).collect();
        println!(
            "{:<28} {:>8.2} {:>8.2}  {}",
            s.name,
            100.0 * s.mean,
            100.0 * s.std,
            per.join(" ")
        );
    }
    if let Some(path) = &c.json {
        let doc = serde_json::json!({
            "card": card,
            "backbone": c.model.weights()?.describe(),
            "data": c.data,
            "scores": scores,
        });
        mosic::fsutil::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}

/// Classes: `--classes`, else the layout's, else the largest label + 1; labels beyond are refused.
fn resolve_classes(c: &Common, info: &SetInfo, masks: &[&Mask], names: &[&str]) -> Result<usize> {
    let classes = c
        .classes
        .or(info.classes)
        .unwrap_or_else(|| mosic_eval::cluster::num_classes(masks.iter().copied()));
    for (m, n) in masks.iter().zip(names) {
        if let Some(l) = m.labels.iter().copied().find(|&l| l != 255 && l as usize >= classes) {
            bail!("{n}: label {l} is not below the {classes} classes (set --classes)");
        }
    }
    Ok(classes)
}

/// Image and mask of a set item; the mask nearest-resized (PIL) to `size` and then, if
/// `mask_size` differs, with PyTorch's nearest (the references' two steps).
fn load_item(it: &LabelledImage, size: usize, mask_size: usize) -> Result<(RgbImage, Mask)> {
    let img = read_image(&it.image)?;
    let m = it.read_mask()?.resize_nearest(size, size);
    let m = if mask_size == size { m } else { m.resize_nearest_torch(mask_size, mask_size) };
    Ok((img, m))
}

fn load_items(
    items: &[LabelledImage],
    size: usize,
    mask_size: usize,
) -> Result<(Vec<RgbImage>, Vec<Mask>)> {
    Ok(items
        .par_iter()
        .map(|it| load_item(it, size, mask_size))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip())
}

fn spread(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    (0..n).map(|i| (i * len + len / 2) / n).collect()
}

fn cluster(a: &ClusterArgs) -> Result<(Vec<Score>, ProtocolCard)> {
    let c = &a.common;
    let (size, mask_size) = (c.size.unwrap_or(448), c.mask_size.unwrap_or(100));
    let (mut items, info) = open_image_set(&c.data, a.split.as_deref())?;
    if let Some(m) = a.max_images {
        items = spread(items.len(), m).into_iter().map(|i| items[i].clone()).collect();
    }
    let (images, masks) = load_items(&items, size, mask_size)?;
    let names: Vec<&str> = items.iter().map(|i| i.mask.to_str().unwrap_or("")).collect();
    let classes = resolve_classes(c, &info, &masks.iter().collect::<Vec<_>>(), &names)?;
    let p = ImageProtocol {
        ks: a.k.clone(),
        seeds: (0..a.seeds).collect(),
        niter: a.niter,
        nredo: a.nredo,
        pca_dim: a.pca_dim,
        precision: !a.match_by_iou,
    };
    let (mut feats, _) = features_of(&c.model, Some(size), vec![images])?;
    let t0 = Instant::now();
    let scores = leopart_clustering(&feats.pop().unwrap(), &masks, classes, &p);
    eprintln!(
        "clustering: {} images, {classes} classes, {:.1} s",
        items.len(),
        t0.elapsed().as_secs_f64()
    );
    let card = ProtocolCard::new(
        "image clustering / overclustering (Leopart)",
        format!(
            "{} experiments/overcluster/sup_overcluster.py, experiments/utils.py",
            card::LEOPART
        ),
        size,
        mask_size,
        p.seeds.clone(),
    )
    .set("data", &info.layout)
    .set("classes", classes)
    .set("images", items.len())
    .set("features", format!("patch tokens, standardised, PCA to {}", p.pca_dim))
    .set(
        "k-means",
        format!(
            "FAISS-style, {} iterations, best of {} starts, <= 256 points per centroid",
            p.niter, p.nredo
        ),
    )
    .set(
        "matching",
        format!(
            "K = classes: Hungarian on IoU; other K: many-to-one by {}",
            if p.precision { "precision" } else { "IoU" }
        ),
    )
    .set("upsampling", "cluster ids nearest to the mask size");
    Ok((scores, card))
}

fn video(a: &VideoArgs) -> Result<(Vec<Score>, ProtocolCard)> {
    let c = &a.common;
    let size = c.size.unwrap_or(224);
    let mask_size = c.mask_size.unwrap_or(size);
    let seed0 = a.seeds.first().copied().unwrap_or(1);
    let mut rng = SplitMix64::new(seed0);
    let set = video_set(&c.data, a.split.as_deref(), a.every)?;
    let mut sets = Vec::new();
    let mut clips = Vec::new();
    for v in &set {
        let mut idx: Vec<usize> = (0..v.frames.len()).collect();
        if a.frames_per_clip > 0 {
            // TimeT's uniform sampling: distinct frames when there are enough, else with repeats.
            idx = if v.frames.len() >= a.frames_per_clip {
                rng.shuffle(&mut idx);
                idx[..a.frames_per_clip].to_vec()
            } else {
                (0..a.frames_per_clip).map(|_| rng.below(v.frames.len() as u64) as usize).collect()
            };
            idx.sort_unstable();
        }
        let loaded: Vec<(RgbImage, Mask)> = idx
            .par_iter()
            .map(|&i| -> Result<(RgbImage, Mask)> {
                let m = v.read_mask(i)?.resize_nearest(size, size);
                Ok((
                    read_image(&v.frames[i].0)?,
                    if mask_size == size {
                        m
                    } else {
                        m.resize_nearest_torch(mask_size, mask_size)
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("video {}", v.name))?;
        let (frames, masks): (Vec<RgbImage>, Vec<Mask>) = loaded.into_iter().unzip();
        sets.push(frames);
        clips.push(Clip { name: v.name.clone(), frames: Vec::new(), masks });
    }
    let (feats, _) = features_of(&c.model, Some(size), sets)?;
    for (clip, f) in clips.iter_mut().zip(feats) {
        clip.frames = f;
    }
    let p = VideoProtocol {
        seeds: a.seeds.clone(),
        batch_clips: a.batch_clips,
        dataset_size: a.dataset_size,
        niter: a.niter,
        nredo: a.nredo,
        pca_dim: a.pca_dim,
        over_k_local: a.over_local,
        over_k_dataset: a.over_dataset,
        precision: !a.match_by_iou,
    };
    let t0 = Instant::now();
    let scores = timet_clustering(&clips, &p);
    eprintln!(
        "clustering: {} videos, {} frames, {:.1} s",
        clips.len(),
        clips.iter().map(|s| s.frames.len()).sum::<usize>(),
        t0.elapsed().as_secs_f64()
    );
    let card = ProtocolCard::new("unsupervised video segmentation (TimeT)", format!("{} evaluation.py, clustering.py, metrics.py", card::TIMET), size, mask_size, p.seeds.clone())
        .set("clips", clips.len())
        .set("frames", if a.frames_per_clip > 0 { format!("{} drawn per clip (seed {seed0})", a.frames_per_clip) } else { "every annotated frame".into() })
        .set("features", format!("patch tokens, standardised + PCA to {} per {} clips (D: over the set), bilinearly upsampled", p.pca_dim, p.batch_clips))
        .set("k-means", format!("FAISS-style, {} iterations, best of {} starts, on pixels", p.niter, p.nredo))
        .set("K", format!("labels in the unit (Hungarian on IoU); F, C over K={}; D over K={} (many-to-one by {})", p.over_k_local, p.over_k_dataset, if p.precision { "precision" } else { "IoU" }))
        .set("D size", format!("{0}x{0}", p.dataset_size));
    Ok((scores, card))
}

/// The linear probe with the backbone in the loop: fresh augmentations every epoch.
struct LinearJob {
    weights: Weights,
    size: usize,
    mask_size: usize,
    batch: usize,
    train: Vec<LabelledImage>,
    val: Vec<LabelledImage>,
    classes: usize,
    cfg: LinearConfig,
    augment: bool,
}

impl WithBackend for LinearJob {
    type Output = Confusion;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Confusion> {
        let vit = load_backbone::<B::InnerBackend>(&self.weights, Some(self.size), &device)?;
        let dim = vit.config().embed_dim;
        let (size, ms) = (self.size, self.mask_size);
        let log = |l: &str| eprintln!("{l}");
        let probe = LinearProbe::new(dim, self.classes, self.cfg.seed);
        let probe = if self.augment {
            let seed = self.cfg.seed;
            let train = &self.train;
            linear::train_probe_batches(
                probe,
                train.len(),
                &self.cfg,
                &mut |epoch, idx| {
                    let pairs: Vec<(RgbImage, Mask)> = idx
                        .par_iter()
                        .map(|&i| -> Result<(RgbImage, Mask)> {
                            let img = read_image(&train[i].image)?;
                            let m = train[i].read_mask()?;
                            let mut rng = SplitMix64::stream(
                                seed ^ 0x11ea7,
                                (epoch * train.len() + i) as u64,
                            );
                            let (img, m) = augment::leopart_train(&img, &m, &mut rng);
                            Ok((img, m.resize_nearest(size, size).resize_nearest_torch(ms, ms)))
                        })
                        .collect::<Result<_>>()?;
                    let (imgs, masks): (Vec<RgbImage>, Vec<Mask>) = pairs.into_iter().unzip();
                    Ok(extract::<B::InnerBackend>(&vit, &imgs, self.batch)
                        .into_iter()
                        .zip(masks)
                        .collect())
                },
                &log,
            )?
        } else {
            let (imgs, masks) = load_items(&self.train, size, ms)?;
            let pairs: Vec<(FeatureMap, Mask)> =
                extract::<B::InnerBackend>(&vit, &imgs, self.batch)
                    .into_iter()
                    .zip(masks)
                    .collect();
            linear::train_probe_batches(
                probe,
                pairs.len(),
                &self.cfg,
                &mut |_, idx| Ok(idx.iter().map(|&i| pairs[i].clone()).collect()),
                &log,
            )?
        };
        let mut total = Confusion::new(self.classes, self.classes);
        for chunk in self.val.chunks(256) {
            let (imgs, masks) = load_items(chunk, size, ms)?;
            let pairs: Vec<(FeatureMap, Mask)> =
                extract::<B::InnerBackend>(&vit, &imgs, self.batch)
                    .into_iter()
                    .zip(masks)
                    .collect();
            let conf = linear::evaluate_probe(&probe, &pairs);
            total.counts.iter_mut().zip(&conf.counts).for_each(|(a, b)| *a += b);
        }
        Ok(total)
    }
}

fn linear_probe(a: &LinearArgs) -> Result<(Vec<Score>, ProtocolCard)> {
    let c = &a.common;
    let (size, mask_size) = (c.size.unwrap_or(448), c.mask_size.unwrap_or(100));
    let (train, info) = open_image_set(&c.data, Some(&a.splits.train_split))?;
    let (val, _) = open_image_set(&c.data, Some(&a.splits.val_split))?;
    let classes = match c.classes.or(info.classes) {
        Some(k) => k,
        None => {
            let masks: Vec<Mask> =
                train.iter().chain(&val).map(|i| i.read_mask()).collect::<Result<_>>()?;
            mosic_eval::cluster::num_classes(&masks)
        }
    };
    let cfg = LinearConfig {
        epochs: a.epochs,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        batch_size: a.batch_size,
        lr_drops: a.lr_drops.clone(),
        drop_last: true,
        shuffle: true,
        seed: a.seed,
    };
    let t0 = Instant::now();
    let job = LinearJob {
        weights: c.model.weights()?,
        size,
        mask_size,
        batch: c.model.batch,
        train: train.clone(),
        val: val.clone(),
        classes,
        cfg: cfg.clone(),
        augment: !a.no_augment,
    };
    let conf = dispatch(&c.model.backend, job)?;
    eprintln!(
        "linear probe: {} train, {} val images, {:.1} s",
        train.len(),
        val.len(),
        t0.elapsed().as_secs_f64()
    );
    let v = reference_score(&conf, RefMatching::Identity).miou;
    let card = ProtocolCard::new("linear segmentation probe (Leopart)", format!("{} experiments/linear_probing/linear_finetune.py (Pascal config)", card::LEOPART), size, mask_size, vec![a.seed])
        .set("data", format!("{} -> {}", info.layout, a.splits.val_split))
        .set("classes", classes)
        .set("training", format!("{} epochs, batch {} (last partial dropped), SGD lr {} momentum {} wd {}, x0.1 at {:?}", cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.lr_drops))
        .set("augment", if a.no_augment { "none (features computed once)".to_string() } else { "RandomResizedCrop(scale 0.8-1) + flip, features recomputed every epoch".to_string() })
        .set("score", "mIoU over all classes (absent ones 0), label 255 ignored, on the whole val split after the last epoch");
    Ok((
        vec![Score::new(
            format!("linear ({} train, {} val)", train.len(), val.len()),
            classes,
            "supervised",
            vec![v],
        )],
        card,
    ))
}

/// One memory bank per training subset, scored on the validation set.
struct InContextJob {
    weights: Weights,
    size: usize,
    batch: usize,
    subsets: Vec<(String, Vec<LabelledImage>)>,
    val: Vec<LabelledImage>,
    classes: usize,
    cfg: InContextConfig,
    augment: bool,
}

impl WithBackend for InContextJob {
    type Output = Vec<(String, f64, usize)>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        let vit = load_backbone::<B::InnerBackend>(&self.weights, Some(self.size), &device)?;
        let dim = vit.config().embed_dim;
        let s = self.size;
        let (vi, vm) = load_items(&self.val, s, s)?;
        let val: Vec<(FeatureMap, Mask)> =
            extract::<B::InnerBackend>(&vit, &vi, self.batch).into_iter().zip(vm).collect();
        let mut out = Vec::new();
        for (label, items) in &self.subsets {
            let t0 = Instant::now();
            let mut bank = Bank::new(dim, self.classes);
            let per = Bank::per_image(&self.cfg, items.len());
            let passes = if self.augment { self.cfg.passes.max(1) } else { 1 };
            for pass in 0..passes {
                for (ci, chunk) in items.chunks(64).enumerate() {
                    let pairs: Vec<(RgbImage, Mask)> = chunk
                        .par_iter()
                        .enumerate()
                        .map(|(j, it)| -> Result<(RgbImage, Mask)> {
                            let img = read_image(&it.image)?;
                            let m = it.read_mask()?;
                            let (img, m) = if self.augment {
                                let mut rng = SplitMix64::stream(
                                    0x4b1d,
                                    (pass * items.len() + ci * 64 + j) as u64,
                                );
                                augment::hummingbird_train(&img, &m, &mut rng)
                            } else {
                                (img, m)
                            };
                            Ok((img, m.resize_nearest(s, s)))
                        })
                        .collect::<Result<_>>()?;
                    let (imgs, masks): (Vec<RgbImage>, Vec<Mask>) = pairs.into_iter().unzip();
                    for (j, (f, m)) in extract::<B::InnerBackend>(&vit, &imgs, self.batch)
                        .iter()
                        .zip(&masks)
                        .enumerate()
                    {
                        let mut rng =
                            SplitMix64::stream(0x5a3e, (pass * items.len() + ci * 64 + j) as u64);
                        bank.add(f, m, per, &mut rng)
                            .with_context(|| format!("bank image {}", chunk[j].name))?;
                    }
                }
            }
            let v = incontext::evaluate(&bank, &val, &self.cfg);
            eprintln!(
                "in-context {label}: {} images, {} bank patches, mIoU {:.4} ({:.1} s)",
                items.len(),
                bank.len(),
                v,
                t0.elapsed().as_secs_f64()
            );
            out.push((label.clone(), v, bank.len()));
        }
        Ok(out)
    }
}

fn in_context(a: &InContextArgs) -> Result<(Vec<Score>, ProtocolCard)> {
    let c = &a.common;
    let size = c.size.unwrap_or(504);
    if let Some(m) = c.mask_size {
        ensure!(m == size, "in-context predictions are scored at the input size; drop --mask-size or set it to {size}");
    }
    let (train, info) = open_image_set(&c.data, Some(&a.splits.train_split))?;
    let (val, _) = open_image_set(&c.data, Some(&a.splits.val_split))?;
    let ade = info.layout.starts_with("ADE20K");
    let classes = match c.classes.or(info.classes) {
        // The reference scores ADE20K over 151 ids with 0 ignored (and counted as a class).
        Some(k) if ade => k + 1,
        Some(k) => k,
        None => {
            let masks: Vec<Mask> =
                train.iter().chain(&val).map(|i| i.read_mask()).collect::<Result<_>>()?;
            mosic_eval::cluster::num_classes(&masks)
        }
    };
    let (train, val) = if ade {
        // Hummingbird reads ADE20K's raw ids (0 = other, ignored).
        (
            train.into_iter().map(|i| LabelledImage { labels: None, ..i }).collect::<Vec<_>>(),
            val.into_iter().map(|i| LabelledImage { labels: None, ..i }).collect::<Vec<_>>(),
        )
    } else {
        (train, val)
    };
    let ignore = a.ignore.unwrap_or(if ade { 0 } else { 255 });
    let by_name: std::collections::HashMap<&str, &LabelledImage> =
        train.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut subsets = Vec::new();
    for &n in &a.fractions {
        ensure!(n >= 1, "--fractions are denominators (1, 8, 64, 128), not {n}");
        let seeds: Vec<u64> = if n == 1 { vec![0] } else { a.seeds.clone() };
        for &seed in &seeds {
            let items: Vec<LabelledImage> = match &a.file_sets {
                Some(dir) => hummingbird_file_set(dir, n, seed)?
                    .iter()
                    .map(|name| by_name.get(name.as_str()).map(|i| (*i).clone()).with_context(|| format!("{}: image {name} of the 1/{n} list (seed {seed}) is not in the {} split", c.data.display(), a.splits.train_split)))
                    .collect::<Result<_>>()?,
                None => {
                    let mut idx: Vec<usize> = (0..train.len()).collect();
                    SplitMix64::new(seed).shuffle(&mut idx);
                    idx.truncate((train.len() / n).max(1));
                    idx.sort_unstable();
                    idx.into_iter().map(|i| train[i].clone()).collect()
                }
            };
            subsets.push((format!("1/{n}#{seed}"), items));
        }
    }
    let cfg = InContextConfig {
        neighbours: a.neighbours,
        temperature: a.temperature,
        memory_size: (a.memory_size > 0).then_some(a.memory_size),
        passes: a.passes,
        ignore,
    };
    let job = InContextJob {
        weights: c.model.weights()?,
        size,
        batch: c.model.batch,
        subsets,
        val: val.clone(),
        classes,
        cfg: cfg.clone(),
        augment: !a.no_augment,
    };
    let results = dispatch(&c.model.backend, job)?;
    let mut scores = Vec::new();
    let mut banks = Vec::new();
    for &n in &a.fractions {
        let prefix = format!("1/{n}#");
        let part: Vec<&(String, f64, usize)> =
            results.iter().filter(|r| r.0.starts_with(&prefix)).collect();
        banks.push(format!(
            "1/{n}: {}",
            part.iter().map(|r| r.2.to_string()).collect::<Vec<_>>().join(",")
        ));
        scores.push(Score::new(
            format!("fraction 1/{n}"),
            classes,
            "nearest-neighbour",
            part.iter().map(|r| r.1).collect(),
        ));
    }
    let mut card = ProtocolCard::new(
        "in-context retrieval (Hummingbird)",
        format!(
            "{} hbird/hbird_eval.py; settings of {} hummingbird_eval.sh",
            card::HUMMINGBIRD,
            card::MOSIC
        ),
        size,
        size,
        a.seeds.clone(),
    )
    .set("data", format!("{} -> {}", info.layout, a.splits.val_split))
    .set("classes", format!("{classes} (label {ignore} ignored)"))
    .set(
        "subsets",
        if a.file_sets.is_some() {
            "published file lists".to_string()
        } else {
            "seeded random subsets".to_string()
        },
    )
    .set(
        "bank",
        format!(
            "{} pass(es){}, per-image class-aware sampling; filled: {}",
            if a.no_augment { 1 } else { a.passes },
            if a.no_augment { "" } else { " with colour jitter + RandomResizedCrop(0.5-2)" },
            banks.join("; ")
        ),
    )
    .set(
        "retrieval",
        format!(
            "exact cosine top-{}, softmax(sim / {}), labels bilinearly upsampled to the input",
            a.neighbours, a.temperature
        ),
    )
    .set(
        "score",
        "mIoU over all classes (absent ones 0) after Hungarian matching, at input resolution",
    );
    card.bank_size = Some(cfg.memory_size.map_or("unbounded".to_string(), |m| m.to_string()));
    Ok((scores, card))
}
