//! TimeT's unsupervised video segmentation protocol (`evaluation.py`, `clustering.py` and
//! `metrics.py` of SMSD75/Timetuning), the one the MoSiC paper's Table 2 reports.
//!
//! Clips come in batches (TimeT's data loader, 16 clips of 4 sampled frames). Per batch the
//! patch tokens are standardised and projected by PCA to 50 dimensions; then, per unit,
//! - F (frame): the frame's PCA features are bilinearly upsampled to the mask size (224) and
//!   clustered by k-means (FAISS: 50 iterations, 5 restarts, seed 1) over its pixels;
//! - C (clip): the same over all pixels of the clip's frames;
//! - D (dataset): one standardisation + PCA over the whole set, features upsampled to 112,
//!   one k-means over every pixel, one matching over all pixels whose label is not 255.
//!
//! K is the number of distinct labels in the unit's ground truth (clustering, Hungarian
//! matching on IoU) or fixed (overclustering: 10 for F and C, 200 or 500 for D, many-to-one
//! by precision). A unit's mIoU averages the labels present in its ground truth, background
//! included; F and C average units within a batch and then batches, as TimeT does. Labels are
//! raw ids (instance ids, or YouTube-VOS categories where `meta.json` maps them).

use crate::backbone::Score;
use crate::data::dense::{Bilinear, FeatureMap};
use crate::data::Mask;
use crate::kernels::kmeans::{faiss_kmeans_on, FaissParams};
use crate::kernels::{cpu::Cpu, products::Products};
use crate::segmentation::{timet_score, Confusion, RefMatching, IGNORE};
use rayon::prelude::*;

/// A clip: feature maps of its frames and their masks at the evaluation size (F and C).
#[derive(Clone, Debug)]
pub struct Clip {
    pub name: String,
    pub frames: Vec<FeatureMap>,
    pub masks: Vec<Mask>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VideoProtocol {
    /// k-means seeds (TimeT: 1); the score is their mean.
    pub seeds: Vec<u64>,
    /// Clips per standardisation + PCA fit for F and C (TimeT's batch size, 16).
    pub batch_clips: usize,
    /// Side of the square the features are upsampled to for D (TimeT: 112); F and C use
    /// the masks' size.
    pub dataset_size: usize,
    pub niter: usize,
    pub nredo: usize,
    pub pca_dim: usize,
    /// Overclustering K for F and C (10); 0 skips.
    pub over_k_local: usize,
    /// Overclustering K for D (200 DAVIS, 500 YouTube-VOS); 0 skips.
    pub over_k_dataset: usize,
    /// Many-to-one matching by precision (TimeT's overclustering setting) or by IoU.
    pub precision: bool,
    /// D only: score the labels TimeT's code ends up with rather than the intended ones. Its
    /// dataset-wise branch multiplies the uint8 annotations by 255 in place (`annotations *=
    /// 255` in `Evaluator.evaluate`, meant for float ToTensor masks), which wraps: label `l`
    /// becomes `(l * 255) mod 256` (0 stays 0, 1 -> 255, 2 -> 254, ..., 255 -> 1), and the
    /// pixels then equal to 255 (label 1) are left out as ignore while the ignore pixels
    /// (255 -> 1) are scored. Off by default: we score the intended labels.
    pub timet_uint8_wrap: bool,
}

impl Default for VideoProtocol {
    fn default() -> Self {
        Self {
            seeds: vec![1],
            batch_clips: 16,
            dataset_size: 112,
            niter: 50,
            nredo: 5,
            pca_dim: crate::kernels::pca::PCA_DIM,
            over_k_local: 10,
            over_k_dataset: 200,
            precision: true,
            timet_uint8_wrap: false,
        }
    }
}

/// `maps` standardised and projected together (TimeT's `normalize_and_transform`), one map
/// per input, each `dim_out` channels.
fn transform(maps: &[&FeatureMap], pca_dim: usize) -> Vec<FeatureMap> {
    let (tokens, dim) = crate::protocols::cluster::protocol_tokens(maps, pca_dim);
    let mut at = 0;
    maps.iter()
        .map(|m| {
            let len = m.len() * dim;
            let f = FeatureMap::new(m.height, m.width, dim, tokens[at..at + len].to_vec());
            at += len;
            f
        })
        .collect()
}

/// Number of distinct label values (255 included, as `torch.unique` counts it).
fn distinct_labels<'a>(masks: impl IntoIterator<Item = &'a Mask>) -> usize {
    let mut seen = [false; 256];
    for m in masks {
        for &l in &m.labels {
            seen[l as usize] = true;
        }
    }
    seen.iter().filter(|&&s| s).count()
}

/// Cluster ids of every pixel of `maps` upsampled to `size x size`, with `k` clusters, the
/// assignment products where `products` computes them.
fn cluster_pixels(
    maps: &[&FeatureMap],
    size: usize,
    k: usize,
    seed: u64,
    p: &VideoProtocol,
    products: &dyn Products,
) -> anyhow::Result<Vec<u32>> {
    let dim = maps[0].dim;
    let pixels: Vec<f32> = maps
        .par_iter()
        .flat_map_iter(|m| Bilinear::new(m.height, m.width, size, size).apply_f64(&m.data, dim))
        .collect();
    let k = k.min(pixels.len() / dim).max(1);
    let km = faiss_kmeans_on(products, &pixels, dim, k, &FaissParams::new(p.niter, p.nredo, seed))?;
    Ok(products.nearest_centroids(&pixels, dim, &km.centroids)?.0)
}

/// TimeT score of cluster ids against masks (concatenated in order), every label counted
/// (`skip_ignore`: pixels labelled 255 left out, as D does).
fn unit_score(
    clusters: &[u32],
    masks: &[&Mask],
    k: usize,
    matching: RefMatching,
    skip_ignore: bool,
) -> f64 {
    let mut conf =
        Confusion::new(k.max(1 + clusters.iter().copied().max().unwrap_or(0) as usize), 256);
    let mut at = 0;
    for m in masks {
        for &g in &m.labels {
            let p = clusters[at];
            at += 1;
            if skip_ignore && g as u32 == IGNORE {
                continue;
            }
            conf.counts[p as usize * 256 + g as usize] += 1;
        }
    }
    assert_eq!(at, clusters.len(), "cluster ids do not cover the masks");
    timet_score(&conf, matching)
}

/// Which level a score is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Frame,
    Clip,
}

/// F or C over all batches: `over` fixes K, else K = distinct labels of the unit.
fn local(clips: &[Clip], level: Level, over: Option<usize>, seed: u64, p: &VideoProtocol) -> f64 {
    let matching = match over {
        Some(_) => RefMatching::ManyToOne { precision: p.precision },
        None => RefMatching::Hungarian,
    };
    let batch_scores: Vec<f64> = clips
        .chunks(p.batch_clips.max(1))
        .map(|batch| {
            let maps: Vec<&FeatureMap> = batch.iter().flat_map(|c| &c.frames).collect();
            let pca = transform(&maps, p.pca_dim);
            let mut units: Vec<(Vec<&FeatureMap>, Vec<&Mask>)> = Vec::new();
            let mut at = 0;
            for c in batch {
                let feats: Vec<&FeatureMap> = pca[at..at + c.frames.len()].iter().collect();
                at += c.frames.len();
                match level {
                    Level::Frame => units
                        .extend(feats.into_iter().zip(&c.masks).map(|(f, m)| (vec![f], vec![m]))),
                    Level::Clip => units.push((feats, c.masks.iter().collect())),
                }
            }
            let scores: Vec<f64> = units
                .par_iter()
                .map(|(f, m)| {
                    let size = m[0].width;
                    assert!(
                        m.iter().all(|m| m.width == size && m.height == size),
                        "masks must be square and of one size"
                    );
                    let k = over.unwrap_or_else(|| distinct_labels(m.iter().copied()));
                    // Small units, many at once: on the host's cores.
                    let ids = cluster_pixels(f, size, k, seed, p, &Cpu).expect("CPU products");
                    unit_score(&ids, m, k, matching, false)
                })
                .collect();
            scores.iter().sum::<f64>() / scores.len() as f64
        })
        .collect();
    batch_scores.iter().sum::<f64>() / batch_scores.len() as f64
}

/// D: one clustering of the whole set at `p.dataset_size` (the protocol's largest, on
/// `products`).
fn dataset(
    clips: &[Clip],
    over: Option<usize>,
    seed: u64,
    p: &VideoProtocol,
    products: &dyn Products,
) -> anyhow::Result<(f64, usize)> {
    let maps: Vec<&FeatureMap> = clips.iter().flat_map(|c| &c.frames).collect();
    let pca = transform(&maps, p.pca_dim);
    let s = p.dataset_size;
    let masks: Vec<Mask> =
        clips
            .iter()
            .flat_map(|c| &c.masks)
            .map(|m| {
                if m.width == s && m.height == s {
                    m.clone()
                } else {
                    m.resize_nearest_torch(s, s)
                }
            })
            .map(|m| if p.timet_uint8_wrap { timet_uint8_wrap(m) } else { m })
            .collect();
    // The wrap is one-to-one on u8 values, so K (distinct labels) is the same either way.
    let k = over.unwrap_or_else(|| distinct_labels(&masks));
    let refs: Vec<&FeatureMap> = pca.iter().collect();
    let ids = cluster_pixels(&refs, s, k, seed, p, products)?;
    let matching = match over {
        Some(_) => RefMatching::ManyToOne { precision: p.precision },
        None => RefMatching::Hungarian,
    };
    Ok((unit_score(&ids, &masks.iter().collect::<Vec<_>>(), k, matching, true), k))
}

/// TimeT's in-place `annotations *= 255` on uint8 masks (its D path): `l -> (l * 255) mod 256`.
fn timet_uint8_wrap(mut m: Mask) -> Mask {
    for l in &mut m.labels {
        *l = l.wrapping_mul(255);
    }
    m
}

/// Every level of the protocol, each a mean over `p.seeds`.
pub fn timet_clustering(clips: &[Clip], p: &VideoProtocol) -> Vec<Score> {
    timet_clustering_on(clips, p, &Cpu).expect("the CPU products")
}

/// [`timet_clustering`] with the dataset-level k-means on `products`.
pub fn timet_clustering_on(
    clips: &[Clip],
    p: &VideoProtocol,
    products: &dyn Products,
) -> anyhow::Result<Vec<Score>> {
    assert!(
        !clips.is_empty()
            && clips.iter().all(|c| !c.frames.is_empty() && c.frames.len() == c.masks.len()),
        "empty clip"
    );
    let run = |f: &dyn Fn(u64) -> f64| -> Vec<f64> { p.seeds.iter().map(|&s| f(s)).collect() };
    let hung = crate::protocols::cluster::matching_label(RefMatching::Hungarian);
    let over = crate::protocols::cluster::matching_label(RefMatching::ManyToOne {
        precision: p.precision,
    });
    let mut out = vec![
        Score::new("F hungarian".into(), 0, hung, run(&|s| local(clips, Level::Frame, None, s, p))),
        Score::new("C hungarian".into(), 0, hung, run(&|s| local(clips, Level::Clip, None, s, p))),
    ];
    let d = p.seeds.iter().map(|&s| Ok(dataset(clips, None, s, p, products)?.0));
    let d = d.collect::<anyhow::Result<Vec<f64>>>()?;
    out.push(Score::new("D hungarian".into(), dataset_k(clips, p), hung, d));
    if p.over_k_local > 0 {
        let k = p.over_k_local;
        out.push(Score::new(
            format!("F over K={k}"),
            k,
            over,
            run(&|s| local(clips, Level::Frame, Some(k), s, p)),
        ));
        out.push(Score::new(
            format!("C over K={k}"),
            k,
            over,
            run(&|s| local(clips, Level::Clip, Some(k), s, p)),
        ));
    }
    if p.over_k_dataset > 0 {
        let k = p.over_k_dataset;
        let d = p.seeds.iter().map(|&s| Ok(dataset(clips, Some(k), s, p, products)?.0));
        out.push(Score::new(format!("D over K={k}"), k, over, d.collect::<anyhow::Result<_>>()?));
    }
    Ok(out)
}

/// K of the dataset-level clustering: distinct labels over all masks at the D size.
fn dataset_k(clips: &[Clip], p: &VideoProtocol) -> usize {
    let s = p.dataset_size;
    distinct_labels(
        &clips
            .iter()
            .flat_map(|c| &c.masks)
            .map(|m| m.resize_nearest_torch(s, s))
            .collect::<Vec<_>>(),
    )
}

/// Scores of given per-pixel cluster ids under the protocol's rules, for checking against
/// the reference with its own k-means output: F (one unit per mask), C (all masks one unit)
/// or D (all masks, 255 left out).
pub fn score_units(
    ids: &[u32],
    masks: &[&Mask],
    k: usize,
    matching: RefMatching,
    skip_ignore: bool,
) -> f64 {
    unit_score(ids, masks, k, matching, skip_ignore)
}

/// The video set TimeT's protocol runs on.
#[derive(Clone, Debug)]
pub struct VideoSet {
    pub data: std::path::PathBuf,
    pub split: Option<String>,
    /// Keep every n-th annotated frame before drawing.
    pub every: usize,
    /// Annotated frames drawn per clip (sorted; TimeT: 4); 0 takes every annotated frame.
    pub frames_per_clip: usize,
    /// Model input side (square).
    pub size: usize,
    /// Side of the square masks are scored at (F and C).
    pub mask_size: usize,
}

/// TimeT's frame draw for a clip of `len` annotated frames: `n` distinct frames when there
/// are enough, else `n` with repeats; sorted. From one generator over the whole set, seeded
/// by the protocol's first seed.
pub fn draw_frames(rng: &mut mosic::rng::SplitMix64, len: usize, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    if n == 0 {
        return idx;
    }
    idx = if len >= n {
        rng.shuffle(&mut idx);
        idx[..n].to_vec()
    } else {
        (0..n).map(|_| rng.below(len as u64) as usize).collect()
    };
    idx.sort_unstable();
    idx
}

/// `mosic eval video`: TimeT's protocol on `set`.
pub fn run_timet(
    bb: &dyn crate::Backbone,
    set: &VideoSet,
    p: &VideoProtocol,
    products: &dyn Products,
    budget: &crate::data::store::Budget,
    progress: &crate::backbone::Progress,
) -> anyhow::Result<crate::Evaluation> {
    use crate::card::{self, ProtocolCard};
    use anyhow::Context;
    let (size, mask_size) = (set.size, set.mask_size);
    let seed0 = p.seeds.first().copied().unwrap_or(1);
    let mut rng = mosic::rng::SplitMix64::new(seed0);
    let videos = crate::data::video_set(&set.data, set.split.as_deref(), set.every)?;
    // TimeT clusters every clip's frames and the whole set at once: its features stay in
    // memory, which the budget must hold (checked before any frame is embedded).
    let frames: u64 = videos
        .iter()
        .map(|v| match set.frames_per_clip {
            0 => v.frames.len(),
            n => n.min(v.frames.len()),
        } as u64)
        .sum();
    let bytes = frames * crate::backbone::patches(bb) * bb.dim() as u64 * 4;
    anyhow::ensure!(
        bytes <= budget.bytes,
        "the video protocol holds the features of its {frames} frames in memory ({}), more than --memory-gb allows ({}): raise --memory-gb, or draw fewer frames (--frames-per-clip)",
        crate::data::store::human_bytes(bytes),
        crate::data::store::human_bytes(budget.bytes)
    );
    budget.check("the video features", 0, bb.dim())?;
    let mut clips = Vec::new();
    for (done, v) in videos.iter().enumerate() {
        let idx = draw_frames(&mut rng, v.frames.len(), set.frames_per_clip);
        let loaded: Vec<(image::RgbImage, Mask)> = idx
            .par_iter()
            .map(|&i| -> anyhow::Result<(image::RgbImage, Mask)> {
                let m = v.read_mask(i)?.resize_nearest(size, size);
                let m = if mask_size == size {
                    m
                } else {
                    m.resize_nearest_torch(mask_size, mask_size)
                };
                Ok((crate::data::read_image(&v.frames[i].0)?, m))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("video {}", v.name))?;
        let (frames, masks): (Vec<image::RgbImage>, Vec<Mask>) = loaded.into_iter().unzip();
        let frames =
            crate::backbone::extract(bb, &frames, "frames embedded", &crate::backbone::quiet)?;
        clips.push(Clip { name: v.name.clone(), frames, masks });
        progress("videos embedded", done as u64 + 1, videos.len() as u64);
    }
    let scores = timet_clustering_on(&clips, p, products)?;
    let frames = if set.frames_per_clip > 0 {
        format!("{} drawn per clip (seed {seed0})", set.frames_per_clip)
    } else {
        "every annotated frame".into()
    };
    let card = ProtocolCard::new(
        "unsupervised video segmentation (TimeT)",
        format!("{} evaluation.py, clustering.py, metrics.py", card::TIMET),
        size,
        mask_size,
        p.seeds.clone(),
    )
    .set("clips", clips.len())
    .set("frames", frames)
    .set(
        "features",
        format!(
            "patch tokens, standardised + PCA to {} per {} clips (D: over the set), bilinearly upsampled",
            p.pca_dim, p.batch_clips
        ),
    )
    .set("k-means", format!("FAISS-style, {} iterations, best of {} starts, on pixels", p.niter, p.nredo))
    .set(
        "K",
        format!(
            "labels in the unit (Hungarian on IoU); F, C over K={}; D over K={} (many-to-one by {})",
            p.over_k_local,
            p.over_k_dataset,
            if p.precision { "precision" } else { "IoU" }
        ),
    )
    .set("D size", format!("{0}x{0}", p.dataset_size))
    .set(
        "D labels",
        if p.timet_uint8_wrap {
            "TimeT's uint8 wrap (label l scored as 255 l mod 256; 1 left out)"
        } else {
            "as annotated"
        },
    );
    Ok(crate::Evaluation { scores, card })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosic::rng::SplitMix64;

    /// Frames whose patches point in the direction of their label (plus noise).
    fn clip(rng: &mut SplitMix64, name: &str, labels: u8) -> Clip {
        let (g, dim, size) = (4, 8, 8);
        let mut frames = Vec::new();
        let mut masks = Vec::new();
        for _ in 0..3 {
            let grid: Vec<u8> = (0..g * g).map(|i| ((i % g) * labels as usize / g) as u8).collect();
            let data = grid
                .iter()
                .flat_map(|&l| (0..dim).map(move |c| (c == l as usize) as u8 as f32 * 4.0))
                .map(|v| v + rng.uniform(-0.1, 0.1) as f32)
                .collect();
            frames.push(FeatureMap::new(g, g, dim, data));
            masks.push(Mask { width: g, height: g, labels: grid }.resize_nearest(size, size));
        }
        Clip { name: name.into(), frames, masks }
    }

    #[test]
    fn separable_clips_score_high_at_every_level() {
        let mut rng = SplitMix64::new(4);
        let clips: Vec<Clip> =
            (0..3).map(|i| clip(&mut rng, &format!("c{i}"), 2 + i as u8)).collect();
        let p = VideoProtocol {
            over_k_dataset: 6,
            dataset_size: 8,
            pca_dim: 4,
            niter: 20,
            ..Default::default()
        };
        let s = timet_clustering(&clips, &p);
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "F hungarian",
                "C hungarian",
                "D hungarian",
                "F over K=10",
                "C over K=10",
                "D over K=6"
            ]
        );
        for x in &s {
            assert!(x.mean > 0.9, "{x:?}");
        }
        assert_eq!(s[2].k, 4);
    }

    /// TimeT's `annotations *= 255` on uint8 (D only): label 1 wraps to 255 and is left
    /// out, 255 (ignore) wraps to 1 and is scored, 2 becomes 254; F and C are untouched.
    #[test]
    fn timet_uint8_wrap_changes_only_dataset_level() {
        let m = Mask { width: 5, height: 1, labels: vec![0, 1, 2, 3, 255] };
        assert_eq!(timet_uint8_wrap(m).labels, vec![0, 255, 254, 253, 1]);

        // 4x4 frames, row-major cells: label 0 on feature blob 0 (cells 0-5) and blob 1
        // (6-7), label 1 on blob 1 (8-10), label 2 on blob 2 (11-13), 255 on blob 3 (14-15).
        let (g, dim) = (4, 8);
        let blob = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3];
        let labels = vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 255, 255];
        let mut rng = SplitMix64::new(9);
        let clips: Vec<Clip> = (0..2)
            .map(|c| {
                let frames = (0..3)
                    .map(|_| {
                        let data = blob
                            .iter()
                            .flat_map(|&b| (0..dim).map(move |i| (i == b) as u8 as f32 * 4.0))
                            .map(|v| v + rng.uniform(-0.1, 0.1) as f32)
                            .collect();
                        FeatureMap::new(g, g, dim, data)
                    })
                    .collect();
                let masks = vec![Mask { width: g, height: g, labels: labels.clone() }; 3];
                Clip { name: format!("c{c}"), frames, masks }
            })
            .collect();
        let off = VideoProtocol {
            dataset_size: g,
            pca_dim: 4,
            niter: 20,
            over_k_local: 4,
            over_k_dataset: 4,
            ..Default::default()
        };
        let on = VideoProtocol { timet_uint8_wrap: true, ..off.clone() };
        // Intended labels {0, 1, 2}: blob 1 goes to label 1 (IoU 3/5), label 0 keeps blob 0
        // only (6/8), label 2 is exact; 255 left out.
        let intended = (0.75 + 0.6 + 1.0) / 3.0;
        for over in [None, Some(4)] {
            let (d, k) = dataset(&clips, over, 1, &off, &Cpu).unwrap();
            assert!((d - intended).abs() < 1e-12, "{over:?}: {d}");
            assert_eq!(k, 4);
            // Wrapped {0, 254, 1}: label 1's pixels are left out, so blob 1 only covers
            // label 0 and every remaining label is exact.
            let (d, k) = dataset(&clips, over, 1, &on, &Cpu).unwrap();
            assert!((d - 1.0).abs() < 1e-12, "{over:?}: {d}");
            assert_eq!(k, 4);
        }
        let (a, b) = (timet_clustering(&clips, &off), timet_clustering(&clips, &on));
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.name, b.name);
            if a.name.starts_with('D') {
                assert!((a.mean - intended).abs() < 1e-12 && (b.mean - 1.0).abs() < 1e-12, "{a:?}");
            } else {
                assert_eq!(a.mean, b.mean, "{}", a.name);
            }
        }
    }
}
