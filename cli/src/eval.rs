//! `mosic features` and `mosic eval {cluster,video,linear,incontext}`: dense features of a
//! backbone and the evaluation protocols, as their reference implementations run them (see
//! the eval crate for each protocol; README "Evaluation" for the settings).

use crate::progress::Progress;
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use image::RgbImage;
use mosic_eval::backbone::Progress as EvalProgress;
use mosic_eval::card::ProtocolCard;
use mosic_eval::protocols::cluster::{ImageProtocol, ImageSet};
use mosic_eval::protocols::incontext::{InContextConfig, RetrievalSet};
use mosic_eval::protocols::linear::{LinearConfig, ProbeSet};
use mosic_eval::protocols::video::{VideoProtocol, VideoSet};
use mosic_eval::Evaluation;
use mosic_eval::Score;
use mosic_trainer::eval::features::{load, read_image, save_features, Loaded, Weights};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
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
    /// cpu, or cuda:N for the cuda and tch backends.
    #[arg(long, default_value = "cpu")]
    device: String,
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

impl ModelArgs {
    /// The backbone these arguments name, at input size `size`, with the products on its device.
    fn load(&self, size: Option<usize>) -> Result<Loaded> {
        let target = mosic_trainer::backend::Target::resolve(
            &self.backend,
            &self.device,
            Default::default(),
        )?;
        load(&target, &self.weights()?, size, self.batch)
    }
}

/// One progress bar per stage a protocol reports.
struct Stages {
    current: Mutex<Option<(String, Progress)>>,
    /// When the last stage ended (or the evaluation began): where the next one's work began,
    /// since a stage may first report with part of its work done.
    since: Mutex<std::time::Instant>,
}

impl Stages {
    fn new() -> Self {
        Self { current: Mutex::new(None), since: Mutex::new(std::time::Instant::now()) }
    }
    fn report(&self, what: &str, done: u64, total: u64) {
        if what.is_empty() {
            return;
        }
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_none_or(|(w, _)| w != what) {
            let (label, unit) = what.split_once(": ").unwrap_or(("eval", what));
            let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
            *cur = Some((what.to_string(), Progress::since(label, unit, since)));
        }
        let (_, bar) = cur.as_ref().expect("set above");
        if done >= total {
            bar.finish(done, "");
            *cur = None;
            *self.since.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        } else {
            bar.set(done, total, "");
        }
    }
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
    let stages = Stages::new();
    let t0 = Instant::now();
    let m = a.model.load(a.size)?;
    let report = |w: &str, d: u64, t: u64| stages.report(w, d, t);
    let maps = mosic_eval::backbone::extract(m.backbone(), &images, "features: images", &report)?;
    let size = m.backbone().input_size();
    eprintln!(
        "features: {} images from {} at {size} px in {:.1} s",
        images.len(),
        a.model.weights()?.describe(),
        t0.elapsed().as_secs_f64()
    );
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
    /// Memory the evaluation's features may hold (GiB); features beyond it (bank, validation
    /// set) go to disk in chunks under --scratch. The model and one --batch of its forward pass
    /// come on top, whatever the dataset's size.
    #[arg(long, default_value_t = mosic_eval::data::store::Budget::DEFAULT_GB)]
    memory_gb: f64,
    /// Folder for features that do not fit the memory budget (default: the system's temp).
    #[arg(long)]
    scratch: Option<PathBuf>,
}

/// Ctrl-C or SIGTERM removes the evaluation's spilled features before the process ends.
fn remove_spills_on_interrupt() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                mosic_eval::data::store::remove_spills();
                eprintln!("interrupted: the evaluation's scratch files are removed");
                std::process::exit(128 + sig);
            }
        });
    });
}

impl Common {
    /// The memory budget and scratch folder, checked before any work: a positive size, a
    /// writable folder (each protocol checks its projected spill against the free space once
    /// it has listed its data). Folders left by killed evaluations are removed, and Ctrl-C or
    /// SIGTERM removes this one's.
    fn budget(&self) -> Result<mosic_eval::data::store::Budget> {
        use mosic_eval::data::store;
        ensure!(
            self.memory_gb.is_finite() && self.memory_gb > 0.0,
            "--memory-gb must be a positive number of GiB, not {}",
            self.memory_gb
        );
        let budget =
            store::Budget { scratch: self.scratch.clone(), ..store::Budget::gb(self.memory_gb) };
        budget.check("the evaluation", 0, 1)?;
        for note in store::sweep_stale(&budget.folder()) {
            eprintln!("note: {note}");
        }
        remove_spills_on_interrupt();
        Ok(budget)
    }
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
    /// D only: reproduce TimeT's uint8 `annotations *= 255` wrap (label l scored as
    /// (l * 255) mod 256: label 1 left out as 255, ignore scored as 1), to compare with
    /// numbers printed by its code. Default: the intended labels.
    #[arg(long)]
    timet_uint8_wrap: bool,
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
    let stages = Stages::new();
    let report = |w: &str, d: u64, t: u64| stages.report(w, d, t);
    let t0 = Instant::now();
    let (name, common, ev) = match &c {
        EvalCommand::Cluster(a) => ("cluster", &a.common, cluster(a, &report)?),
        EvalCommand::Video(a) => ("video", &a.common, video(a, &report)?),
        EvalCommand::Linear(a) => ("linear", &a.common, linear(a, &report)?),
        EvalCommand::Incontext(a) => ("incontext", &a.common, incontext(a, &report)?),
    };
    eprintln!("eval {name}: {:.1} s", t0.elapsed().as_secs_f64());
    print_scores(common, &ev.card, &ev.scores)?;
    record(name, common, &ev)?;
    Ok(ExitCode::SUCCESS)
}

fn cluster(a: &ClusterArgs, report: &EvalProgress) -> Result<Evaluation> {
    let c = &a.common;
    let set = ImageSet {
        data: c.data.clone(),
        split: a.split.clone(),
        size: c.size.unwrap_or(448),
        mask_size: c.mask_size.unwrap_or(100),
        classes: c.classes,
        max_images: a.max_images,
    };
    let p = ImageProtocol {
        ks: a.k.clone(),
        seeds: (0..a.seeds).collect(),
        niter: a.niter,
        nredo: a.nredo,
        pca_dim: a.pca_dim,
        precision: !a.match_by_iou,
    };
    let budget = c.budget()?;
    let m = c.model.load(Some(set.size))?;
    mosic_eval::protocols::cluster::run_leopart(
        m.backbone(),
        &set,
        &p,
        m.products(),
        &budget,
        report,
    )
}

fn video(a: &VideoArgs, report: &EvalProgress) -> Result<Evaluation> {
    let c = &a.common;
    let size = c.size.unwrap_or(224);
    let set = VideoSet {
        data: c.data.clone(),
        split: a.split.clone(),
        every: a.every,
        frames_per_clip: a.frames_per_clip,
        size,
        mask_size: c.mask_size.unwrap_or(size),
    };
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
        timet_uint8_wrap: a.timet_uint8_wrap,
    };
    let budget = c.budget()?;
    let m = c.model.load(Some(size))?;
    mosic_eval::protocols::video::run_timet(m.backbone(), &set, &p, m.products(), &budget, report)
}

fn linear(a: &LinearArgs, report: &EvalProgress) -> Result<Evaluation> {
    let c = &a.common;
    let set = ProbeSet {
        data: c.data.clone(),
        train_split: a.splits.train_split.clone(),
        val_split: a.splits.val_split.clone(),
        size: c.size.unwrap_or(448),
        mask_size: c.mask_size.unwrap_or(100),
        classes: c.classes,
        augment: !a.no_augment,
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
    let budget = c.budget()?;
    let m = c.model.load(Some(set.size))?;
    let log = |l: &str| eprintln!("{l}");
    mosic_eval::protocols::linear::run_probe(
        m.backbone(),
        &set,
        &cfg,
        m.products(),
        &budget,
        report,
        &log,
    )
}

fn incontext(a: &InContextArgs, report: &EvalProgress) -> Result<Evaluation> {
    let c = &a.common;
    let size = c.size.unwrap_or(504);
    if let Some(m) = c.mask_size {
        ensure!(m == size, "in-context predictions are scored at the input size; drop --mask-size or set it to {size}");
    }
    ensure!(
        a.fractions.iter().all(|&n| n >= 1),
        "--fractions are denominators (1, 8, 64, 128), not {:?}",
        a.fractions
    );
    let set = RetrievalSet {
        data: c.data.clone(),
        train_split: a.splits.train_split.clone(),
        val_split: a.splits.val_split.clone(),
        file_sets: a.file_sets.clone(),
        fractions: a.fractions.clone(),
        seeds: a.seeds.clone(),
        size,
        classes: c.classes,
        augment: !a.no_augment,
        ignore: a.ignore,
    };
    let cfg = InContextConfig {
        neighbours: a.neighbours,
        temperature: a.temperature,
        memory_size: (a.memory_size > 0).then_some(a.memory_size),
        passes: a.passes,
        ignore: 255,
    };
    let budget = c.budget()?;
    let m = c.model.load(Some(size))?;
    let log = |l: &str| eprintln!("{l}");
    mosic_eval::protocols::incontext::run_hummingbird(
        m.backbone(),
        &set,
        &cfg,
        m.products(),
        &budget,
        report,
        &log,
    )
}

/// The result as JSON: card, backbone, data and scores.
fn result_json(c: &Common, card: &ProtocolCard, scores: &[Score]) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "card": card,
        "backbone": c.model.weights()?.describe(),
        "data": c.data,
        "scores": scores,
        "finished": unix_now(),
    }))
}

/// Seconds since the Unix epoch, for the record.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An evaluation of a run's newest checkpoint is kept in the run directory
/// (`eval/<protocol>.json`; `<protocol>-initial.json` for `--initial`), where `mosic runs`
/// finds it.
fn record(name: &str, c: &Common, ev: &Evaluation) -> Result<()> {
    let Some(run) = &c.model.run else { return Ok(()) };
    let file = match (&c.model.checkpoint, c.model.initial) {
        (_, true) => format!("{name}-initial"),
        (Some(ck), _) => format!("{name}-{}", ck.file_name().unwrap_or_default().to_string_lossy()),
        (None, false) => name.to_string(),
    };
    let path =
        mosic_trainer::run::dir::write_eval(run, &file, &result_json(c, &ev.card, &ev.scores)?)?;
    eprintln!("eval: recorded in {}", path.display());
    Ok(())
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
        let doc = result_json(c, card, scores)?;
        mosic::fsutil::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}
