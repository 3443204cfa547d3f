//! Unsupervised segmentation by clustering dense features.
//!
//! [`leopart_clustering`] is Leopart's image protocol as its code runs it (the one `mosic eval
//! cluster` reports); the video protocol of TimeT is in [`crate::protocols::video`].
//!
//! [`cluster_images`] and [`cluster_videos`] are the quick variants the trainer validates with
//! in the loop: k-means++ on L2-normalised patch tokens, every label pixel assigned to the
//! nearest centroid of the bilinearly upsampled features, Hungarian matching on overlap
//! (K <= classes) or many-to-one by precision, mIoU over the classes that occur. They follow
//! a training run's progress; their numbers are not comparable with published tables.

use crate::backbone::Score;
use crate::data::dense::FeatureMap;
use crate::data::{num_classes, Mask};
use crate::kernels::kmeans::{faiss_kmeans_on, kmeans, FaissParams};
use crate::segmentation::{
    hungarian_score, miou, overclustering_score, reference_score, Confusion, RefMatching, RefScore,
    SegScore, IGNORE,
};
use rayon::prelude::*;

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Cluster counts; 0 stands for the number of classes.
    pub ks: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Lloyd iterations at most.
    pub iters: usize,
}

/// Points per centroid k-means is fitted on, at most (FAISS's default, which Leopart and TimeT
/// inherit): larger sets are subsampled for fitting and every point is assigned afterwards.
pub const MAX_POINTS_PER_CENTROID: usize = 256;

/// k-means centroids of `n` points, fitted on a seeded sample of at most
/// [`MAX_POINTS_PER_CENTROID`] x k of them.
pub fn fit_centroids(
    data: &[f32],
    n: usize,
    dim: usize,
    k: usize,
    seed: u64,
    iters: usize,
) -> Vec<f32> {
    let cap = MAX_POINTS_PER_CENTROID * k;
    if n <= cap {
        return kmeans(data, n, dim, k, seed, iters).centroids;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    mosic::rng::SplitMix64::stream(seed, 0x5a4d).shuffle(&mut idx);
    idx.truncate(cap);
    idx.sort_unstable();
    let sample: Vec<f32> =
        idx.iter().flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied()).collect();
    kmeans(&sample, cap, dim, k, seed, iters).centroids
}

/// Scores `k` clusters against `classes` classes: Hungarian for K <= classes, else overclustering.
pub fn match_score(conf: &Confusion) -> SegScore {
    if conf.k <= conf.classes {
        hungarian_score(conf)
    } else {
        overclustering_score(conf)
    }
}

pub fn matching_name(k: usize, classes: usize) -> &'static str {
    if k <= classes {
        "hungarian"
    } else {
        "overclustering"
    }
}

/// Unit-length tokens of every map, stacked: the k-means input.
pub fn stack_tokens(maps: &[&FeatureMap]) -> Vec<f32> {
    let mut out = Vec::with_capacity(maps.iter().map(|m| m.data.len()).sum());
    for m in maps {
        out.extend_from_slice(&m.normalized().data);
    }
    out
}

/// Nearest centroid of every pixel of `mask_h x mask_w`, from the map's features upsampled
/// (after normalisation) to that size.
pub fn assign_pixels(
    map: &FeatureMap,
    centroids: &[f32],
    mask_h: usize,
    mask_w: usize,
) -> Vec<u32> {
    let dim = map.dim;
    let up = map.normalized().upsample(mask_h, mask_w);
    let norms: Vec<f32> = centroids.chunks(dim).map(|c| c.iter().map(|v| v * v).sum()).collect();
    up.data
        .par_chunks(dim)
        .map(|x| {
            // argmin |x - c|^2 = argmin |c|^2 - 2 x.c
            let mut best = (0u32, f32::INFINITY);
            for (j, c) in centroids.chunks(dim).enumerate() {
                let d = norms[j] - 2.0 * x.iter().zip(c).map(|(a, b)| a * b).sum::<f32>();
                if d < best.1 {
                    best = (j as u32, d);
                }
            }
            best.0
        })
        .collect()
}

/// Clustering mIoU of an image set: `features[i]` and `masks[i]` (already at the mask size).
pub fn cluster_images(
    features: &[FeatureMap],
    masks: &[Mask],
    classes: usize,
    cfg: &ClusterConfig,
) -> Vec<Score> {
    assert_eq!(features.len(), masks.len());
    let maps: Vec<&FeatureMap> = features.iter().collect();
    let data = stack_tokens(&maps);
    let (n, dim) = (data.len() / features[0].dim, features[0].dim);
    let gts: Vec<Vec<u32>> = masks.iter().map(Mask::as_u32).collect();
    cfg.ks
        .iter()
        .map(|&k| {
            let k = if k == 0 { classes } else { k }.min(n);
            let per_seed = cfg
                .seeds
                .iter()
                .map(|&seed| {
                    let centroids = fit_centroids(&data, n, dim, k, seed, cfg.iters);
                    let mut conf = Confusion::new(k, classes);
                    for ((f, m), gt) in features.iter().zip(masks).zip(&gts) {
                        conf.add(&assign_pixels(f, &centroids, m.height, m.width), gt);
                    }
                    match_score(&conf).miou
                })
                .collect();
            let matching = matching_name(k, classes);
            Score::new(format!("K={k} {matching}"), k, matching, per_seed)
        })
        .collect()
}

/// A video's annotated frames: features and masks (at the mask size).
#[derive(Clone, Debug)]
pub struct VideoSample {
    pub name: String,
    pub frames: Vec<FeatureMap>,
    pub masks: Vec<Mask>,
}

#[derive(Clone, Debug)]
pub struct VideoConfig {
    pub seeds: Vec<u64>,
    pub iters: usize,
    /// Overclustering K per frame and per clip (TimeT: 10).
    pub over_k_local: usize,
    /// Overclustering K over the dataset (TimeT: 200 on DAVIS, 500 on YouTube-VOS).
    pub over_k_dataset: usize,
}

/// Video segmentation by clustering (TimeT protocol). Classes of a video are its instance ids
/// 0..=max (0 = background), K = that number unless overclustering.
/// - F: k-means per frame, matched per frame; mean over frames.
/// - C: k-means over all frames of a clip, matched per clip; mean over clips.
/// - D: one k-means over the whole dataset (K = the most classes any clip has), matched per
///   clip (instance ids mean nothing across clips); mean over clips.
///
/// Per-unit mIoU averages the classes present in its ground truth or prediction.
pub fn cluster_videos(videos: &[VideoSample], cfg: &VideoConfig) -> Vec<Score> {
    let classes: Vec<usize> = videos.iter().map(|v| num_classes(&v.masks)).collect();
    let gts: Vec<Vec<Vec<u32>>> =
        videos.iter().map(|v| v.masks.iter().map(Mask::as_u32).collect()).collect();
    let max_classes = classes.iter().copied().max().unwrap_or(1);
    let mut out = Vec::new();

    // Scores one clip given a clustering function per frame; returns per-frame or per-clip mIoU.
    let frame_level = |over: Option<usize>, seed: u64| -> f64 {
        let scores: Vec<f64> = videos
            .par_iter()
            .enumerate()
            .flat_map_iter(|(v, vid)| {
                let c = classes[v];
                vid.frames
                    .iter()
                    .zip(&vid.masks)
                    .enumerate()
                    .map(move |(i, (f, m))| (v, c, i, f, m))
            })
            .map(|(v, c, i, f, m)| {
                let k = over.unwrap_or(c).min(f.len());
                let km = kmeans(&f.normalized().data, f.len(), f.dim, k, seed, cfg.iters);
                let mut conf = Confusion::new(k, c);
                conf.add(&assign_pixels(f, &km.centroids, m.height, m.width), &gts[v][i]);
                match_score(&conf).miou
            })
            .filter(|v| !v.is_nan())
            .collect();
        scores.iter().sum::<f64>() / scores.len().max(1) as f64
    };
    let clip_level =
        |over: Option<usize>, seed: u64, shared: Option<&[f32]>, shared_k: usize| -> f64 {
            let scores: Vec<f64> = videos
                .par_iter()
                .enumerate()
                .map(|(v, vid)| {
                    let c = classes[v];
                    let (centroids, k) = match shared {
                        Some(cent) => (cent.to_vec(), shared_k),
                        None => {
                            let maps: Vec<&FeatureMap> = vid.frames.iter().collect();
                            let data = stack_tokens(&maps);
                            let n = data.len() / vid.frames[0].dim;
                            let k = over.unwrap_or(c).min(n);
                            (fit_centroids(&data, n, vid.frames[0].dim, k, seed, cfg.iters), k)
                        }
                    };
                    let mut conf = Confusion::new(k, c);
                    for (i, (f, m)) in vid.frames.iter().zip(&vid.masks).enumerate() {
                        conf.add(&assign_pixels(f, &centroids, m.height, m.width), &gts[v][i]);
                    }
                    match_score(&conf).miou
                })
                .filter(|v| !v.is_nan())
                .collect();
            scores.iter().sum::<f64>() / scores.len().max(1) as f64
        };
    let all: Vec<&FeatureMap> = videos.iter().flat_map(|v| &v.frames).collect();
    let dataset = stack_tokens(&all);
    let dim = all[0].dim;
    let n_all = dataset.len() / dim;
    let dataset_level = |k: usize, seed: u64| -> f64 {
        let k = k.min(n_all);
        let centroids = fit_centroids(&dataset, n_all, dim, k, seed, cfg.iters);
        clip_level(None, seed, Some(&centroids), k)
    };

    let seeds = &cfg.seeds;
    let run = |f: &dyn Fn(u64) -> f64| -> Vec<f64> { seeds.iter().map(|&s| f(s)).collect() };
    out.push(Score::new("F hungarian".into(), 0, "hungarian", run(&|s| frame_level(None, s))));
    out.push(Score::new(
        "C hungarian".into(),
        0,
        "hungarian",
        run(&|s| clip_level(None, s, None, 0)),
    ));
    out.push(Score::new(
        format!("D hungarian (K={max_classes})"),
        max_classes,
        "hungarian",
        run(&|s| dataset_level(max_classes, s)),
    ));
    let (kl, kd) = (cfg.over_k_local, cfg.over_k_dataset);
    if kl > 0 {
        out.push(Score::new(
            format!("F over K={kl}"),
            kl,
            "overclustering",
            run(&|s| frame_level(Some(kl), s)),
        ));
        out.push(Score::new(
            format!("C over K={kl}"),
            kl,
            "overclustering",
            run(&|s| clip_level(Some(kl), s, None, 0)),
        ));
    }
    if kd > 0 {
        out.push(Score::new(
            format!("D over K={kd}"),
            kd,
            "overclustering",
            run(&|s| dataset_level(kd, s)),
        ));
    }
    out
}

/// mIoU of a hard prediction against labels (both at the same size), for the supervised probes.
pub fn prediction_miou(conf: &Confusion) -> f64 {
    miou(&conf.counts, conf.classes).0
}

/// Leopart's clustering and overclustering protocol for image sets
/// (`experiments/overcluster/sup_overcluster.py`): raw patch tokens of the whole set are
/// standardised and projected by PCA, clustered by FAISS-style k-means, each image's
/// patch-grid cluster map is nearest-upsampled to the mask size, and the map is matched to
/// the classes: K = classes by Hungarian matching on IoU (unmatched clusters to background),
/// any other K many-to-one by precision; mIoU over all classes (absent ones score 0), on the
/// pixels whose label is not 255.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ImageProtocol {
    /// Cluster counts; 0 stands for the number of classes.
    pub ks: Vec<usize>,
    /// One k-means per seed (Leopart: 0..5); the score is their mean.
    pub seeds: Vec<u64>,
    pub niter: usize,
    pub nredo: usize,
    /// PCA output dimension after standardisation; 0 clusters the raw tokens.
    pub pca_dim: usize,
    /// Overclustering matches by precision (Leopart's reported numbers) or by IoU.
    pub precision: bool,
}

impl Default for ImageProtocol {
    fn default() -> Self {
        Self {
            ks: vec![0, 100, 300, 500],
            seeds: (0..5).collect(),
            niter: 100,
            nredo: 5,
            pca_dim: crate::kernels::pca::PCA_DIM,
            precision: true,
        }
    }
}

/// Stacked tokens of `maps`, standardised and projected as the protocol says (`pca_dim` 0:
/// unchanged). Returns the rows and their dimension.
pub fn protocol_tokens(maps: &[&FeatureMap], pca_dim: usize) -> (Vec<f32>, usize) {
    let dim = maps[0].dim;
    let mut data = Vec::with_capacity(maps.iter().map(|m| m.data.len()).sum());
    for m in maps {
        assert_eq!(m.dim, dim, "feature maps differ in channels");
        data.extend_from_slice(&m.data);
    }
    if pca_dim == 0 {
        return (data, dim);
    }
    (crate::kernels::pca::normalize_and_transform(&data, dim, pca_dim.min(dim)), pca_dim.min(dim))
}

/// Matching rule of the image protocol for `k` clusters of `classes` classes.
pub fn image_matching(k: usize, classes: usize, precision: bool) -> RefMatching {
    if k == classes {
        RefMatching::Hungarian
    } else {
        RefMatching::ManyToOne { precision }
    }
}

/// Scores per-token cluster ids (`labels`, the images' patch grids in order) against the
/// masks: grid maps nearest-upsampled (PyTorch's `interpolate(mode="nearest")`) to each mask.
pub fn score_cluster_maps(
    labels: &[u32],
    grids: &[(usize, usize)],
    masks: &[Mask],
    k: usize,
    classes: usize,
    matching: RefMatching,
) -> RefScore {
    let mut conf = Confusion::new(k, classes);
    let mut at = 0;
    for (&(gh, gw), m) in grids.iter().zip(masks) {
        let grid = &labels[at..at + gh * gw];
        at += gh * gw;
        let ys = crate::data::torch_nearest_index(gh, m.height);
        let xs = crate::data::torch_nearest_index(gw, m.width);
        for (y, &sy) in ys.iter().enumerate() {
            for (x, &sx) in xs.iter().enumerate() {
                let g = m.labels[y * m.width + x];
                if g as u32 != IGNORE && (g as usize) < classes {
                    conf.counts[grid[sy * gw + sx] as usize * classes + g as usize] += 1;
                }
            }
        }
    }
    assert_eq!(at, labels.len(), "cluster ids do not cover the grids");
    reference_score(&conf, matching)
}

/// [`protocol_tokens`] of a set held in a store (in memory up to its share of the budget, on
/// disk beyond), in two passes: column moments, then standardisation and projection block by
/// block. Only the PCA sample (at most [`crate::kernels::pca::MAX_POINTS_PER_DIM`] x dim rows) and the
/// projected rows are held. The same values as the in-memory path.
pub fn protocol_tokens_stored(
    store: &crate::data::store::MapStore,
    pca_dim: usize,
    products: &dyn crate::kernels::products::Products,
) -> anyhow::Result<(Vec<f32>, usize)> {
    use crate::kernels::pca::{column_partials, sample_rows, Pca, Standardizer};
    let rows = store.rows();
    let (dim, n) = (rows.dim(), rows.len());
    if pca_dim == 0 {
        return Ok((rows.rows(0, n)?, dim));
    }
    let (mut sum, mut sq) = (vec![0.0f64; dim], vec![0.0f64; dim]);
    rows.for_each_block(|_, block| {
        for (ps, pq) in column_partials(block, dim) {
            sum.iter_mut().zip(&ps).for_each(|(a, b)| *a += b);
            sq.iter_mut().zip(&pq).for_each(|(a, b)| *a += b);
        }
        Ok(())
    })?;
    let st = Standardizer::from_moments(&sum, &sq, n);
    let mut sample = match sample_rows(n, dim) {
        Some(idx) => {
            let mut out = Vec::with_capacity(idx.len() * dim);
            let mut at = 0;
            rows.for_each_block(|first, block| {
                let end = first + block.len() / dim;
                while at < idx.len() && idx[at] < end {
                    let r = idx[at] - first;
                    out.extend_from_slice(&block[r * dim..(r + 1) * dim]);
                    at += 1;
                }
                Ok(())
            })?;
            out
        }
        None => rows.rows(0, n)?,
    };
    st.apply(&mut sample);
    let out_dim = pca_dim.min(dim);
    let pca = Pca::fit_sample(&sample, dim, out_dim, products);
    drop(sample);
    let mut out = Vec::with_capacity(n * out_dim);
    rows.for_each_block(|_, block| {
        let mut b = block.to_vec();
        st.apply(&mut b);
        out.extend(pca.apply(&b));
        Ok(())
    })?;
    Ok((out, out_dim))
}

/// Leopart's protocol ([`ImageProtocol`]) on an image set: `features[i]` and `masks[i]` (at the
/// evaluation size, e.g. 100 x 100).
pub fn leopart_clustering(
    features: &[FeatureMap],
    masks: &[Mask],
    classes: usize,
    p: &ImageProtocol,
) -> Vec<Score> {
    assert_eq!(features.len(), masks.len());
    let maps: Vec<&FeatureMap> = features.iter().collect();
    let (tokens, dim) = protocol_tokens(&maps, p.pca_dim);
    let grids: Vec<(usize, usize)> = features.iter().map(|f| (f.height, f.width)).collect();
    leopart_on_tokens(&tokens, dim, &grids, masks, classes, p, &crate::kernels::cpu::Cpu)
        .expect("the CPU products")
}

/// Leopart's clustering and scoring of the set's projected tokens (`grids[i]`: image i's
/// patch grid; its tokens follow those of the images before it).
pub fn leopart_on_tokens(
    tokens: &[f32],
    dim: usize,
    grids: &[(usize, usize)],
    masks: &[Mask],
    classes: usize,
    p: &ImageProtocol,
    products: &dyn crate::kernels::products::Products,
) -> anyhow::Result<Vec<Score>> {
    let n = tokens.len() / dim;
    p.ks.iter()
        .map(|&k| {
            let k = if k == 0 { classes } else { k }.min(n);
            let matching = image_matching(k, classes, p.precision);
            let per_seed = p
                .seeds
                .iter()
                .map(|&seed| {
                    let fp = FaissParams::new(p.niter, p.nredo, seed);
                    let km = faiss_kmeans_on(products, tokens, dim, k, &fp)?;
                    let (labels, _) = products.nearest_centroids(tokens, dim, &km.centroids)?;
                    Ok(score_cluster_maps(&labels, grids, masks, k, classes, matching).miou)
                })
                .collect::<anyhow::Result<_>>()?;
            let name = match matching {
                RefMatching::Hungarian => format!("K={k} hungarian"),
                _ => format!("K={k} overclustering"),
            };
            Ok(Score::new(name, k, matching_label(matching), per_seed))
        })
        .collect()
}

pub fn matching_label(m: RefMatching) -> &'static str {
    match m {
        RefMatching::Hungarian => "hungarian (IoU; unmatched to background)",
        RefMatching::ManyToOne { precision: true } => "many-to-one by precision",
        RefMatching::ManyToOne { precision: false } => "many-to-one by IoU",
        RefMatching::Identity => "supervised",
    }
}

/// The image set a protocol runs on, and the sizes it is scored at.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub data: std::path::PathBuf,
    pub split: Option<String>,
    /// Model input side (square).
    pub size: usize,
    /// Side of the square masks are scored at.
    pub mask_size: usize,
    /// Number of classes (None: the layout's, else from the masks).
    pub classes: Option<usize>,
    /// At most this many images, evenly spaced.
    pub max_images: Option<usize>,
}

/// `mosic eval cluster`: Leopart's image clustering and overclustering on `set`.
///
/// Memory: the set's features stay in memory up to half of `budget`, on disk beyond; then the
/// PCA sample and the projected tokens (`pca_dim` values a patch) are held.
pub fn run_leopart(
    bb: &dyn crate::Backbone,
    set: &ImageSet,
    p: &ImageProtocol,
    products: &dyn crate::kernels::products::Products,
    budget: &crate::data::store::Budget,
    progress: &crate::backbone::Progress,
) -> anyhow::Result<crate::Evaluation> {
    use crate::card::{self, ProtocolCard};
    use crate::data::{open_image_set, resolve_classes, spread};
    let (mut items, info) = open_image_set(&set.data, set.split.as_deref())?;
    if let Some(m) = set.max_images {
        items = spread(items.len(), m).into_iter().map(|i| items[i].clone()).collect();
    }
    // Masks first (small, and a bad one is reported before any work), then features.
    let masks: Vec<Mask> = items
        .par_iter()
        .map(|it| crate::data::load_mask(it, set.size, set.mask_size))
        .collect::<anyhow::Result<_>>()?;
    let names: Vec<&str> = items.iter().map(|i| i.mask.to_str().unwrap_or("")).collect();
    let classes = resolve_classes(set.classes, &info, &masks.iter().collect::<Vec<_>>(), &names)?;
    let rows = items.len() as u64 * crate::backbone::patches(bb);
    let scratch = budget.check("Leopart's features", rows, bb.dim())?;
    let mut store: Option<crate::data::store::MapStore> = None;
    let per_call = crate::backbone::chunk_len(bb);
    for (ci, chunk) in items.chunks(per_call).enumerate() {
        let images: Vec<image::RgbImage> = chunk
            .par_iter()
            .map(|it| crate::data::read_image(&it.image))
            .collect::<anyhow::Result<_>>()?;
        for f in crate::backbone::extract(bb, &images, "", &crate::backbone::quiet)? {
            let s = store.get_or_insert_with(|| {
                crate::data::store::MapStore::new(
                    f.height,
                    f.width,
                    f.dim,
                    budget.share(0.5),
                    budget,
                )
            });
            s.push(&f)?;
        }
        progress("images embedded", (ci * per_call + chunk.len()) as u64, items.len() as u64);
    }
    let store = store.ok_or_else(|| anyhow::anyhow!("{}: no images", set.data.display()))?;
    let (tokens, dim) = protocol_tokens_stored(&store, p.pca_dim, products)?;
    let grids = vec![(store.height, store.width); store.len()];
    let scores = leopart_on_tokens(&tokens, dim, &grids, &masks, classes, p, products)?;
    let reference = format!(
        "{} experiments/overcluster/sup_overcluster.py, experiments/utils.py",
        card::LEOPART
    );
    let matching = if p.precision { "precision" } else { "IoU" };
    let card = ProtocolCard::new(
        "image clustering / overclustering (Leopart)",
        reference,
        set.size,
        set.mask_size,
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
    .set("matching", format!("K = classes: Hungarian on IoU; other K: many-to-one by {matching}"))
    .set("upsampling", "cluster ids nearest to the mask size");
    let card = card.notes("scratch", scratch);
    Ok(crate::Evaluation { scores, card })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two-pass projection of a stored set equals the in-memory one, bit for bit, when the
    /// set spills to disk and the PCA samples its rows.
    #[test]
    fn stored_tokens_equal_the_in_memory_tokens() {
        let mut rng = SplitMix64::new(5);
        let (g, dim) = (64, 4);
        let maps: Vec<FeatureMap> = (0..6)
            .map(|_| {
                let data = (0..g * g * dim).map(|_| rng.uniform(-1.0, 3.0) as f32).collect();
                FeatureMap::new(g, g, dim, data)
            })
            .collect();
        let budget = crate::data::store::Budget { bytes: 0, scratch: None };
        let mut store = crate::data::store::MapStore::new(g, g, dim, 1000, &budget);
        maps.iter().for_each(|m| store.push(m).unwrap());
        assert!(store.spilled_bytes() > 0);
        assert!(crate::kernels::pca::sample_rows(6 * g * g, dim).is_some());
        let refs: Vec<&FeatureMap> = maps.iter().collect();
        let (a, da) = protocol_tokens(&refs, 2);
        let (b, db) = protocol_tokens_stored(&store, 2, &crate::kernels::cpu::Cpu).unwrap();
        assert_eq!(da, db);
        assert!(a == b, "projected tokens differ");
    }
    use mosic::rng::SplitMix64;

    /// Features whose direction encodes the label of the patch (plus noise): clustering must
    /// recover the labels exactly; pure noise must not.
    fn toy(
        labels: &[u8],
        g: usize,
        dim: usize,
        noise: f64,
        signal: bool,
        rng: &mut SplitMix64,
    ) -> FeatureMap {
        let mut data = Vec::new();
        for &l in labels {
            for c in 0..dim {
                let base = if signal && c == l as usize { 1.0 } else { 0.0 };
                data.push((base + rng.uniform(-noise, noise)) as f32);
            }
        }
        FeatureMap::new(g, g, dim, data)
    }

    fn image(rng: &mut SplitMix64, classes: u8, g: usize) -> Vec<u8> {
        // Quadrants: every class once (shuffled), the rest random.
        let mut q: Vec<u8> =
            (0..4).map(|i| if i < classes { i } else { rng.below(classes as u64) as u8 }).collect();
        rng.shuffle(&mut q);
        (0..g * g).map(|i| q[(i / g >= g / 2) as usize * 2 + (i % g >= g / 2) as usize]).collect()
    }

    #[test]
    fn separable_features_score_one_and_noise_scores_low() {
        let mut rng = SplitMix64::new(3);
        let (g, dim, classes) = (4, 8, 4u8);
        let mut feats = Vec::new();
        let mut noise = Vec::new();
        let mut masks = Vec::new();
        for _ in 0..12 {
            let labels = image(&mut rng, classes, g);
            feats.push(toy(&labels, g, dim, 0.05, true, &mut rng));
            noise.push(toy(&labels, g, dim, 1.0, false, &mut rng));
            // Masks at 2x the patch grid: every patch covers 2x2 pixels of its label.
            masks.push(
                Mask { width: g, height: g, labels: labels.clone() }.resize_nearest(2 * g, 2 * g),
            );
        }
        let cfg = ClusterConfig { ks: vec![0, 10], seeds: vec![0, 1, 2], iters: 50 };
        let good = cluster_images(&feats, &masks, classes as usize, &cfg);
        assert_eq!(good[0].name, "K=4 hungarian");
        assert_eq!(good[1].matching, "overclustering");
        for s in &good {
            assert!(s.mean > 0.95, "{s:?}");
        }
        let bad = cluster_images(&noise, &masks, classes as usize, &cfg);
        assert!(bad[0].mean < 0.5, "{:?}", bad[0]);
    }

    #[test]
    fn video_protocols_on_separable_clips() {
        let mut rng = SplitMix64::new(5);
        let (g, dim) = (4, 6);
        let videos: Vec<VideoSample> = (0..3)
            .map(|v| {
                let mut frames = Vec::new();
                let mut masks = Vec::new();
                for _ in 0..4 {
                    let labels = image(&mut rng, 3, g);
                    frames.push(toy(&labels, g, dim, 0.05, true, &mut rng));
                    masks.push(Mask { width: g, height: g, labels }.resize_nearest(8, 8));
                }
                VideoSample { name: format!("v{v}"), frames, masks }
            })
            .collect();
        let cfg = VideoConfig { seeds: vec![0, 1], iters: 50, over_k_local: 5, over_k_dataset: 6 };
        let scores = cluster_videos(&videos, &cfg);
        let names: Vec<&str> = scores.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "F hungarian",
                "C hungarian",
                "D hungarian (K=3)",
                "F over K=5",
                "C over K=5",
                "D over K=6"
            ]
        );
        for s in &scores {
            assert!(s.mean > 0.9, "{s:?}");
        }
    }

    #[test]
    fn large_sets_are_fitted_on_a_sample() {
        // 2 well-separated blobs of 600 points each: a 512-point sample still finds both.
        let mut rng = SplitMix64::new(8);
        let data: Vec<f32> = (0..1200)
            .flat_map(|i| {
                let c = if i % 2 == 0 { 5.0 } else { -5.0 };
                [c + rng.uniform(-0.5, 0.5) as f32, rng.uniform(-0.5, 0.5) as f32]
            })
            .collect();
        let mut c = fit_centroids(&data, 1200, 2, 2, 1, 50);
        if c[0] > c[2] {
            c = vec![c[2], c[3], c[0], c[1]];
        }
        assert!((c[0] + 5.0).abs() < 0.2 && (c[2] - 5.0).abs() < 0.2, "{c:?}");
    }

    #[test]
    fn score_statistics() {
        let s = Score::new("x".into(), 2, "hungarian", vec![0.5, 0.7, 0.9]);
        assert!((s.mean - 0.7).abs() < 1e-12 && (s.std - 0.2).abs() < 1e-12);
        assert_eq!(Score::new("x".into(), 2, "hungarian", vec![0.4]).std, 0.0);
    }
}
