//! The demo experiment, the end of `make demo`. Trains the tiny ViT with MoSiC and with the
//! no-motion ablation for several seeds (resuming whatever is already done), evaluates the
//! initial, trained and ablated backbones on held-out synthetic videos with masks, and writes
//! `report.md`, `report.json` and figures into the output directory.

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use image::{Rgb, RgbImage};
use mosic_eval::data::num_classes;
use mosic_eval::protocols::cluster::{
    assign_pixels, cluster_videos, stack_tokens, VideoConfig, VideoSample,
};
use mosic_eval::protocols::consistency::{track_consistency, Consistency, TrackedClip};
use mosic_eval::segmentation::{hungarian_score, Confusion};
use mosic_eval::Score;
use mosic_eval::{kmeans, FeatureMap, Mask};
use mosic_trainer::backend::{dispatch, WithBackend};
use mosic_trainer::eval::features::{extract, load_backbone, Weights};
use mosic_trainer::eval::validate::{load_videos, LoadedVideo};
use mosic_trainer::run::dir as rundir;
use mosic_trainer::run::plot::{self, Chart, Series};
use mosic_trainer::TrainConfig;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything the demo needs; the command line's defaults are `make demo`'s.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Training config of every run (seed and motion are set per run).
    pub config: PathBuf,
    /// Track shards to train on.
    pub tracks: PathBuf,
    /// Labelled videos for in-loop validation (never used for the report's figures).
    pub val: PathBuf,
    /// Held-out labelled videos the report is computed on.
    pub test: PathBuf,
    pub out: PathBuf,
    /// Training seeds 0..seeds, each trained with tracks and without motion.
    pub seeds: u64,
    /// Evaluation input size (2x the training size, as the paper evaluates at 448 after 224).
    pub eval_size: usize,
    pub mask_size: usize,
    /// Evaluate every n-th annotated frame of the held-out videos.
    pub every: usize,
    /// Clusters of the track-consistency k-means (fixed for every backbone).
    pub consistency_k: usize,
    /// Extra config overrides for every run (KEY=VALUE).
    pub set: Vec<String>,
    pub target: mosic_trainer::backend::Target,
}

const VARIANTS: [(&str, &str); 2] = [("mosic", "tracks"), ("no-motion", "identity")];

struct TrainRun {
    cfg: TrainConfig,
    dir: PathBuf,
}

impl WithBackend for TrainRun {
    type Output = mosic_trainer::train::Summary;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        let resume = !mosic_trainer::run::dir::checkpoints(&self.dir).is_empty();
        let name = self.dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        mosic_trainer::train::train::<B>(&self.cfg, &self.dir, resume, None, &[device], &|l| {
            eprintln!("[{name}] {l}")
        })
    }
}

/// Features of every held-out video for each backbone.
struct EvalFeatures {
    backbones: Vec<Weights>,
    videos: Vec<Vec<RgbImage>>,
    size: usize,
}

impl WithBackend for EvalFeatures {
    type Output = Vec<Vec<Vec<FeatureMap>>>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.backbones
            .iter()
            .map(|w| {
                let vit = load_backbone::<B::InnerBackend>(w, Some(self.size), &device)?;
                Ok(self.videos.iter().map(|v| extract::<B::InnerBackend>(&vit, v, 16)).collect())
            })
            .collect()
    }
}

/// Trains, evaluates and writes the report; returns the report's text.
pub fn run(a: &DemoConfig) -> Result<String> {
    let start = Instant::now();
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let seeds: Vec<u64> = (0..a.seeds).collect();

    // 1. Training runs (resumed when interrupted, skipped when finished).
    let mut summaries = BTreeMap::new();
    for &seed in &seeds {
        for (variant, motion) in VARIANTS {
            let dir = a.out.join(format!("{variant}-seed{seed}"));
            let mut set = vec![
                format!("data.shards={}", a.tracks.display()),
                format!("run.seed={seed}"),
                format!("objective.motion={motion}"),
                format!("validation.data={}", a.val.display()),
            ];
            set.extend(a.set.iter().cloned());
            let cfg = TrainConfig::load(Some(&a.config), &set)?;
            let t0 = Instant::now();
            let s = dispatch(&a.target, TrainRun { cfg, dir: dir.clone() })?;
            eprintln!(
                "demo: {} done: {} steps, loss {:?} -> {:?} ({:.0} s)",
                dir.display(),
                s.steps,
                s.first_loss,
                s.last_loss,
                t0.elapsed().as_secs_f64()
            );
            summaries.insert((variant, seed), s);
        }
    }

    // 2. Held-out evaluation: initial, trained and no-motion backbones of every seed.
    let test = load_videos(&mosic_eval::data::video_set(&a.test, None, a.every)?, a.mask_size)?;
    let mut labels = Vec::new();
    let mut backbones = Vec::new();
    for &seed in &seeds {
        let run = |v: &str| a.out.join(format!("{v}-seed{seed}"));
        for (label, w) in [
            ("initial", Weights::Run { dir: run("mosic"), checkpoint: None, initial: true }),
            ("mosic", Weights::Run { dir: run("mosic"), checkpoint: None, initial: false }),
            ("no-motion", Weights::Run { dir: run("no-motion"), checkpoint: None, initial: false }),
        ] {
            labels.push((label, seed));
            backbones.push(w);
        }
    }
    let tracked = tracked_clips(&a.test.join("gt"))?;
    let t0 = Instant::now();
    let mut videos: Vec<Vec<RgbImage>> = test.iter().map(|v| v.frames.clone()).collect();
    videos.extend(tracked.iter().map(|(frames, _)| frames.clone()));
    let mut feats = dispatch(&a.target, EvalFeatures { backbones, videos, size: a.eval_size })?;
    let track_feats: Vec<Vec<Vec<FeatureMap>>> =
        feats.iter_mut().map(|f| f.split_off(test.len())).collect();
    eprintln!(
        "demo: features of {} backbones in {:.1} s",
        labels.len(),
        t0.elapsed().as_secs_f64()
    );

    // Track consistency along the held-out ground-truth tracks, k-means at a fixed K.
    let mut consistency: BTreeMap<&str, Vec<Consistency>> = BTreeMap::new();
    for (&(label, seed), f) in labels.iter().zip(&track_feats) {
        let clips: Vec<TrackedClip> = tracked
            .iter()
            .zip(f)
            .map(|((_, c), maps)| TrackedClip {
                frames: maps.clone(),
                tracks: c.tracks.clone(),
                visibility: c.visibility.clone(),
                width: c.width,
                height: c.height,
            })
            .collect();
        consistency.entry(label).or_default().push(track_consistency(
            &clips,
            a.consistency_k,
            seed,
            100,
        ));
    }
    let mut per: BTreeMap<(&str, String), Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (&(label, seed), f) in labels.iter().zip(&feats) {
        let samples: Vec<VideoSample> = test
            .iter()
            .zip(f)
            .map(|(v, f)| VideoSample {
                name: v.name.clone(),
                frames: f.clone(),
                masks: v.masks.clone(),
            })
            .collect();
        let cfg =
            VideoConfig { seeds: vec![seed], iters: 100, over_k_local: 10, over_k_dataset: 0 };
        for s in cluster_videos(&samples, &cfg) {
            if !order.contains(&s.name) {
                order.push(s.name.clone());
            }
            per.entry((label, s.name)).or_default().push(s.mean);
        }
    }
    let table: Vec<(&str, Vec<Score>)> = ["initial", "mosic", "no-motion"]
        .into_iter()
        .map(|l| {
            (
                l,
                order
                    .iter()
                    .map(|n| Score::new(n.clone(), 0, "", per[&(l, n.clone())].clone()))
                    .collect(),
            )
        })
        .collect();

    // 3. Figures.
    let tracks_png = a.out.join("tracks.png");
    draw_tracks(&a.tracks, &tracks_png)?;
    let curves = a.out.join("curves.png");
    draw_curves(&a.out, a.seeds, &curves)?;
    let maps = a.out.join("clusters.png");
    let seed0: Vec<&Vec<Vec<FeatureMap>>> = feats.iter().take(3).collect();
    draw_cluster_maps(&test, &seed0, &maps)?;

    // 4. Report.
    write_report(
        a,
        &table,
        &consistency,
        &summaries,
        &test,
        tracked.len(),
        start.elapsed().as_secs_f64(),
    )
}

/// A held-out clip: its frames and ground-truth tracks (stored pixels).
struct GtClip {
    tracks: Vec<[f32; 2]>,
    visibility: Vec<bool>,
    width: u32,
    height: u32,
}

/// Every clip of the ground-truth shards in `gt` with its decoded frames.
fn tracked_clips(gt: &Path) -> Result<Vec<(Vec<RgbImage>, GtClip)>> {
    let manifest = mosic::Manifest::load(gt)
        .with_context(|| format!("held-out ground-truth tracks in {}", gt.display()))?;
    let mut out = Vec::new();
    for e in &manifest.shards {
        let path = mosic::Manifest::shard_path(gt, e);
        for c in mosic::ShardReader::open(&path)?.read_all(true)? {
            let frames = c
                .frames
                .iter()
                .map(|j| {
                    mosic::imageio::decode_jpeg(j)
                        .map_err(|m| anyhow::anyhow!("{}: clip {}: {m}", path.display(), c.id()))
                })
                .collect::<Result<Vec<_>>>()?;
            let (width, height) = (manifest.spec.width, manifest.spec.height);
            out.push((
                frames,
                GtClip { tracks: c.tracks, visibility: c.visibility, width, height },
            ));
        }
    }
    Ok(out)
}

fn draw_tracks(shards: &Path, out: &Path) -> Result<()> {
    let manifest = mosic::Manifest::load(shards)?;
    let first = manifest.shards.first().context("no shards")?;
    let path = shards.join(&first.file);
    let clip = mosic::ShardReader::open(&path)?
        .clips_in(true, Some(vec![0]))?
        .next()
        .context("empty shard")??;
    let frames = clip
        .frames
        .iter()
        .map(|j| {
            mosic::imageio::decode_jpeg(j).map_err(|m| anyhow::anyhow!("{}: {m}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let tracks: Vec<f32> = clip.tracks.iter().flatten().copied().collect();
    let vis: Vec<u8> = clip.visibility.iter().map(|&v| v as u8).collect();
    let n = clip.tracks.len() / frames.len().max(1);
    mosic_video::render(
        &frames,
        &tracks,
        &vis,
        n,
        out,
        &mosic_video::RenderOptions { upscale: 2, ..Default::default() },
    )?;
    Ok(())
}

/// Loss and in-loop validation of MoSiC and the no-motion ablation, each a mean over the
/// seeds with a min-max band, one chart per quantity.
fn draw_curves(out: &Path, seeds: u64, png: &Path) -> Result<()> {
    let mut loss = Chart::new("training loss (mean over seeds, band: min-max)", "step", "loss");
    let mut val = Chart::new(
        "held-out validation during training: per-clip clustering (C, Hungarian)",
        "step",
        "mIoU %",
    );
    for (variant, _) in VARIANTS {
        let (mut l, mut v) = (Vec::new(), Vec::new());
        for seed in 0..seeds {
            let h = rundir::read_metrics(&out.join(format!("{variant}-seed{seed}")), u64::MAX)?;
            l.push(h.iter().map(|s| (s.step as f64, s.loss)).collect());
            v.push(
                h.iter()
                    .filter_map(|s| {
                        Some((s.step as f64, 100.0 * s.validation.as_ref()?.get("C hungarian")?))
                    })
                    .collect(),
            );
        }
        let label = if variant == "mosic" { "MoSiC (tracks)" } else { "no-motion ablation" };
        loss.series.push(Series::over_seeds(label, &l));
        val.series.push(Series::over_seeds(label, &v));
    }
    plot::save(png, &[loss, val])
}

/// Colour of class `c` (the DAVIS / VOC palette the synthetic masks use); grey for none.
fn class_colour(c: Option<usize>) -> Rgb<u8> {
    let Some(c) = c else { return Rgb([128, 128, 128]) };
    let p = mosic_synth::palette();
    Rgb([p[3 * c], p[3 * c + 1], p[3 * c + 2]])
}

/// Per clip: k-means (K = classes, seed 0) over the clip's frames, Hungarian-matched to the
/// clip's ids; the middle frame is drawn for image, ground truth and each backbone.
fn draw_cluster_maps(
    test: &[LoadedVideo],
    feats: &[&Vec<Vec<FeatureMap>>],
    out: &Path,
) -> Result<()> {
    let rows = test.len().min(3);
    let (cell, pad, head) = (200u32, 6u32, 24u32);
    let cols = 2 + feats.len() as u32;
    let mut img = RgbImage::from_pixel(
        cols * (cell + pad) + pad,
        head + rows as u32 * (cell + pad) + pad,
        Rgb([255, 255, 255]),
    );
    for (c, t) in ["frame", "ground truth", "initial", "mosic", "no-motion"]
        .iter()
        .enumerate()
        .take(cols as usize)
    {
        let font = ab_glyph::FontRef::try_from_slice(dejavu::sans::regular()).expect("DejaVu Sans");
        let x = (pad + c as u32 * (cell + pad)) as i32;
        imageproc::drawing::draw_text_mut(&mut img, Rgb([0, 0, 0]), x, 2, 18.0, &font, t);
    }
    let blit = |img: &mut RgbImage, tile: &RgbImage, col: u32, row: u32| {
        let (x0, y0) = (pad + col * (cell + pad), head + row * (cell + pad));
        for (x, y, p) in tile.enumerate_pixels() {
            img.put_pixel(x0 + x, y0 + y, *p);
        }
    };
    let paint = |labels: &[u32], m: &Mask, map: &dyn Fn(u32) -> Option<usize>| {
        let small = RgbImage::from_fn(m.width as u32, m.height as u32, |x, y| {
            class_colour(map(labels[y as usize * m.width + x as usize]))
        });
        image::imageops::resize(&small, cell, cell, image::imageops::FilterType::Nearest)
    };
    for (r, v) in test.iter().take(rows).enumerate() {
        let mid = v.frames.len() / 2;
        let m = &v.masks[mid];
        blit(&mut img, &mosic::imageio::resize(&v.frames[mid], cell, cell), 0, r as u32);
        let gt = m.as_u32();
        blit(&mut img, &paint(&gt, m, &|l| (l != 255).then_some(l as usize)), 1, r as u32);
        let classes = num_classes(&v.masks);
        for (b, f) in feats.iter().enumerate() {
            let frames: Vec<&FeatureMap> = f[r].iter().collect();
            let data = stack_tokens(&frames);
            let dim = frames[0].dim;
            let km = kmeans(&data, data.len() / dim, dim, classes, 0, 100);
            let mut conf = Confusion::new(classes, classes);
            let preds: Vec<Vec<u32>> = frames
                .iter()
                .zip(&v.masks)
                .map(|(f, m)| assign_pixels(f, &km.centroids, m.height, m.width))
                .collect();
            for (p, m) in preds.iter().zip(&v.masks) {
                conf.add(p, &m.as_u32());
            }
            let map = hungarian_score(&conf).cluster_to_class;
            blit(&mut img, &paint(&preds[mid], m, &|c| map[c as usize]), 2 + b as u32, r as u32);
        }
    }
    let tmp = mosic::fsutil::temp_path(out);
    img.save_with_format(&tmp, image::ImageFormat::Png)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn pct(s: &Score) -> String {
    format!("{:.1} ± {:.1}", 100.0 * s.mean, 100.0 * s.std)
}

#[allow(clippy::too_many_arguments)]
fn write_report(
    a: &DemoConfig,
    table: &[(&str, Vec<Score>)],
    consistency: &BTreeMap<&str, Vec<Consistency>>,
    summaries: &BTreeMap<(&str, u64), mosic_trainer::train::Summary>,
    test: &[LoadedVideo],
    tracked: usize,
    seconds: f64,
) -> Result<String> {
    let cfg = TrainConfig::load(Some(&a.config), &a.set)?;
    let mut r = String::new();
    writeln!(r, "# MoSiC demo report\n")?;
    report_intro(&mut r, a, &cfg, summaries, test)?;
    report_segmentation(&mut r, a, table)?;
    report_result(&mut r, table)?;
    report_consistency(&mut r, a, consistency, tracked)?;
    report_training(&mut r, summaries)?;
    report_figures(&mut r)?;
    writeln!(r, "Total demo time (this invocation): {seconds:.0} s.")?;
    mosic::fsutil::write_atomic(&a.out.join("report.md"), r.as_bytes())?;
    let json = serde_json::json!({
        "config": a.config, "tracks": a.tracks, "test": a.test, "seeds": a.seeds, "eval_size": a.eval_size,
        "mask_size": a.mask_size, "every": a.every,
        "scores": table.iter().map(|(l, s)| (l.to_string(), s.clone())).collect::<BTreeMap<_, _>>(),
        "consistency_k": a.consistency_k,
        "track_consistency": consistency,
    });
    mosic::fsutil::write_atomic(
        &a.out.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(r)
}

/// What was trained, on what, and what it is evaluated on.
fn report_intro(
    r: &mut String,
    a: &DemoConfig,
    cfg: &TrainConfig,
    summaries: &BTreeMap<(&str, u64), mosic_trainer::train::Summary>,
    test: &[LoadedVideo],
) -> std::fmt::Result {
    let frames: usize = test.iter().map(|v| v.frames.len()).sum();
    writeln!(
        r,
        "A {} ({} px, random initialisation) post-trained for {} steps (batch {}) on track shards of \
         synthetic videos (`{}`), with MoSiC and with the no-motion ablation (every point kept at its \
         first-frame position), for {} seeds. Evaluation on {} held-out synthetic videos (`{}`, {} annotated \
         frames, every {}th), never seen in training or validation; input {} px, masks {}x{}.\n",
        cfg.model.preset,
        cfg.model.img_size,
        summaries.values().map(|s| s.steps).max().unwrap_or(0),
        cfg.data.batch_size,
        a.tracks.display(),
        a.seeds,
        test.len(),
        a.test.display(),
        frames,
        a.every,
        a.eval_size,
        a.mask_size,
        a.mask_size
    )?;
    Ok(())
}

/// The held-out segmentation table.
fn report_segmentation(
    r: &mut String,
    a: &DemoConfig,
    table: &[(&str, Vec<Score>)],
) -> std::fmt::Result {
    writeln!(
        r,
        "## Held-out video segmentation by clustering (mIoU %, mean ± std over {} seeds)\n",
        a.seeds
    )?;
    let names: Vec<&str> = table[0].1.iter().map(|s| s.name.as_str()).collect();
    writeln!(r, "| weights | {} |", names.join(" | "))?;
    writeln!(r, "|---|{}", "---|".repeat(names.len()))?;
    for (label, scores) in table {
        let name = match *label {
            "initial" => "initial (random init)",
            "mosic" => "MoSiC (tracks)",
            _ => "no-motion ablation",
        };
        writeln!(r, "| {name} | {} |", scores.iter().map(pct).collect::<Vec<_>>().join(" | "))?;
    }
    writeln!(r)?;
    writeln!(
        r,
        "Protocols (TimeT): k-means with K = the clip's number of ids (background included), matched \
         one-to-one (Hungarian) per frame (F), per clip (C) or with one k-means over the whole set and \
         matching per clip (D); \"over K=10\" clusters into 10 and matches many-to-one by precision. \
         Each seed is one training run and the same k-means seed.\n"
    )?;
    Ok(())
}

/// MoSiC against the initial weights and the no-motion ablation, with the seed spread.
fn report_result(r: &mut String, table: &[(&str, Vec<Score>)]) -> std::fmt::Result {
    let get = |label: &str, name: &str| {
        table
            .iter()
            .find(|t| t.0 == label)
            .and_then(|t| t.1.iter().find(|s| s.name == name))
            .cloned()
    };
    if let (Some(init), Some(tr), Some(nm)) = (
        get("initial", "C hungarian"),
        get("mosic", "C hungarian"),
        get("no-motion", "C hungarian"),
    ) {
        let verdict = |x: &Score, y: &Score| {
            let d = 100.0 * (x.mean - y.mean);
            let spread = 100.0 * (x.std.powi(2) + y.std.powi(2)).sqrt();
            if x.per_seed.len() < 2 {
                return format!(
                    "{d:+.1} points (one seed: no estimate of the spread, so no conclusion)"
                );
            }
            let size = if d.abs() > 2.0 * spread {
                "larger than twice the seed spread"
            } else {
                "within twice the seed spread, so not a clear difference"
            };
            format!("{d:+.1} points ({size}; spread {spread:.1})")
        };
        writeln!(r, "## Result\n")?;
        writeln!(r, "- MoSiC vs initial weights, per-clip mIoU: {}.", verdict(&tr, &init))?;
        writeln!(r, "- MoSiC vs no-motion ablation, per-clip mIoU: {}.", verdict(&tr, &nm))?;
        writeln!(
            r,
            "- Per seed (C, %): initial {:?}, MoSiC {:?}, no-motion {:?}.\n",
            per_seed(&init),
            per_seed(&tr),
            per_seed(&nm)
        )?;
    }
    Ok(())
}

/// Track consistency of each variant.
fn report_consistency(
    r: &mut String,
    a: &DemoConfig,
    consistency: &BTreeMap<&str, Vec<Consistency>>,
    tracked: usize,
) -> std::fmt::Result {
    writeln!(
        r,
        "## Track consistency on held-out ground-truth tracks (mean ± std over {} seeds)\n",
        a.seeds
    )?;
    writeln!(
        r,
        "Patch tokens of the {tracked} held-out clips clustered by k-means at K = {}; a track point visible at \
         frame 0 and at frame t is consistent when its patch at frame t falls in the cluster of its patch at \
         frame 0. One cluster would make every point consistent, so the clusters in use (exp of the \
         entropy of the cluster shares) stand beside it.\n",
        a.consistency_k
    )?;
    writeln!(r, "| weights | consistency % | clusters in use (effective) |\n|---|---|---|")?;
    let stats = |v: &[f64]| -> (f64, f64) {
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let sd = if v.len() > 1 {
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
        } else {
            0.0
        };
        (m, sd)
    };
    let mut cons = BTreeMap::new();
    for label in ["initial", "mosic", "no-motion"] {
        let Some(c) = consistency.get(label) else { continue };
        let share: Vec<f64> = c.iter().map(|x| 100.0 * x.consistency).collect();
        let eff: Vec<f64> = c.iter().map(|x| x.effective_clusters).collect();
        let ((m, sd), (em, esd)) = (stats(&share), stats(&eff));
        writeln!(r, "| {label} | {m:.1} ± {sd:.1} | {em:.1} ± {esd:.1} |")?;
        cons.insert(label, (m, sd, share));
    }
    if let (Some(t), Some(n)) = (cons.get("mosic"), cons.get("no-motion")) {
        let d = t.0 - n.0;
        let spread = (t.1.powi(2) + n.1.powi(2)).sqrt();
        let size = if d > 2.0 * spread {
            "more than twice the seed spread"
        } else {
            "not more than twice the seed spread"
        };
        writeln!(r, "\n- MoSiC vs no-motion ablation, consistency: {d:+.1} points ({size}; spread {spread:.1}); per seed MoSiC {:?}, no-motion {:?}.\n", round1(&t.2), round1(&n.2))?;
    }
    Ok(())
}

/// The training runs.
fn report_training(
    r: &mut String,
    summaries: &BTreeMap<(&str, u64), mosic_trainer::train::Summary>,
) -> std::fmt::Result {
    writeln!(r, "## Training\n")?;
    writeln!(
        r,
        "| run | steps | first loss | last loss | clips/s | seconds |\n|---|---|---|---|---|---|"
    )?;
    for ((variant, seed), s) in summaries {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or("-".into());
        writeln!(
            r,
            "| {variant}-seed{seed} | {} | {} | {} | {:.1} | {:.0} |",
            s.steps,
            f(s.first_loss),
            f(s.last_loss),
            s.clips_per_second,
            s.seconds
        )?;
    }
    writeln!(r, "\n(Steps already done by an earlier, interrupted demo are not timed again.)\n")?;
    Ok(())
}

fn report_figures(r: &mut String) -> std::fmt::Result {
    writeln!(r, "## Figures\n")?;
    writeln!(r, "- `tracks.png`: tracks of the first training clip over its last frame (filled: visible, ring: occluded).")?;
    writeln!(
        r,
        "- `curves.png`: loss and validation mIoU (C) during training, seed 0, both variants."
    )?;
    writeln!(r, "- `clusters.png`: middle frame of held-out clips; ground truth; per-clip clusters of each backbone (seed 0), coloured by their matched id.\n")?;
    writeln!(r, "![tracks](tracks.png)\n\n![curves](curves.png)\n\n![clusters](clusters.png)\n")?;
    Ok(())
}

fn round1(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (10.0 * x).round() / 10.0).collect()
}

fn per_seed(s: &Score) -> Vec<f64> {
    s.per_seed.iter().map(|v| (1000.0 * v).round() / 10.0).collect()
}
