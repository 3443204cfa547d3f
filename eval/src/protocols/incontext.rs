//! In-context dense retrieval, the Hummingbird protocol as open-hummingbird-eval runs it
//! (`hbird/hbird_eval.py`, which the MoSiC paper used, with MoSiC's `hummingbird_eval.sh`
//! settings):
//! - memory bank: training images (two augmented passes), every patch's feature L2-normalised
//!   with, as label, the class shares of its pixels in the mask at input resolution (255
//!   counted as background); with a bounded bank (10,240,000 patches) each image contributes
//!   `memory / (images x passes)` patches, those holding the classes that are rarest in the
//!   image first (ties broken at random);
//! - a query patch takes its 30 nearest bank patches by cosine similarity and averages their
//!   labels with weights softmax(similarity / 0.02); the patch-grid label map is bilinearly
//!   upsampled to the input resolution and arg-maxed;
//! - mIoU over all classes (absent ones 0) after Hungarian matching of predicted to true ids
//!   (`PredsmIoU.compute` defaults), the ignore label (255 for VOC, 0 for ADE20K) left out.
//!
//! The search is exact (the reference's default is ScaNN, approximate).

use crate::data::dense::{Bilinear, FeatureMap};
use crate::data::store::{Budget, MapStore, RowStore};
use crate::data::Mask;
use crate::kernels::cpu::Cpu;
use crate::kernels::products::{Products, TopK};
use crate::segmentation::{reference_score, Confusion, RefMatching};
use mosic::rng::SplitMix64;
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InContextConfig {
    pub neighbours: usize,
    /// Softmax temperature over neighbour similarities (0.02).
    pub temperature: f32,
    /// Most bank patches (10,240,000); None keeps every patch.
    pub memory_size: Option<usize>,
    /// Augmented passes over the training images (2).
    pub passes: usize,
    /// Label left out of the score (255 VOC, 0 ADE20K).
    pub ignore: u8,
}

impl Default for InContextConfig {
    fn default() -> Self {
        Self {
            neighbours: 30,
            temperature: 0.02,
            memory_size: Some(10_240_000),
            passes: 2,
            ignore: 255,
        }
    }
}

/// Patch labels as Hummingbird computes them: the mask (at input resolution, a multiple of the
/// grid) cut into `grid_h x grid_w` patches, 255 turned into 0, class shares per patch
/// (`one_hot(patch pixels).mean()`), row-major `[patch][class]`.
pub fn patch_labels(
    mask: &Mask,
    grid_h: usize,
    grid_w: usize,
    classes: usize,
) -> anyhow::Result<Vec<f32>> {
    anyhow::ensure!(
        mask.height.is_multiple_of(grid_h) && mask.width.is_multiple_of(grid_w),
        "mask of {}x{} does not split into {grid_h}x{grid_w} patches",
        mask.width,
        mask.height
    );
    let (ph, pw) = (mask.height / grid_h, mask.width / grid_w);
    let mut hist = vec![0u32; grid_h * grid_w * classes];
    for y in 0..mask.height {
        for x in 0..mask.width {
            let l = match mask.labels[y * mask.width + x] {
                255 => 0,
                l => l as usize,
            };
            anyhow::ensure!(l < classes, "label {l} >= {classes} classes");
            hist[((y / ph) * grid_w + x / pw) * classes + l] += 1;
        }
    }
    let n = (ph * pw) as f32;
    Ok(hist.iter().map(|&v| v as f32 / n).collect())
}

/// The memory bank: unit-length features (in a [`RowStore`]: in memory up to the bank's share
/// of the budget, on disk beyond) and label distributions, kept sparse (the classes a patch
/// holds; a patch holds one or two of them).
pub struct Bank {
    pub dim: usize,
    pub classes: usize,
    features: RowStore,
    /// Patch i's (class, share) pairs are `entries[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u64>,
    entries: Vec<(u16, f32)>,
}

/// Bank rows are searched in tiles of this many rows: one product per tile and query block.
const TILE_ROWS: usize = 8192;

impl Bank {
    /// A bank that stays in memory.
    pub fn new(dim: usize, classes: usize) -> Self {
        Self::with_memory(dim, classes, u64::MAX, &Budget::default())
    }

    /// A bank holding up to `mem_bytes` of features in memory, the rest on disk.
    pub fn with_memory(dim: usize, classes: usize, mem_bytes: u64, budget: &Budget) -> Self {
        Self {
            dim,
            classes,
            features: RowStore::new(dim, mem_bytes, budget),
            offsets: vec![0],
            entries: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of features written to disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.features.spilled_bytes
    }

    /// Patch `i`'s label distribution, dense.
    pub fn label(&self, i: usize) -> Vec<f32> {
        let mut l = vec![0.0; self.classes];
        for &(c, v) in &self.entries[self.offsets[i] as usize..self.offsets[i + 1] as usize] {
            l[c as usize] = v;
        }
        l
    }

    /// Patch `i`'s feature.
    pub fn feature(&self, i: usize) -> anyhow::Result<Vec<f32>> {
        self.features.rows(i, 1)
    }

    /// Patches each image contributes: `memory / (images x passes)` (at least 1), or all of
    /// them for an unbounded bank. The reference fails (`topk` out of range) when that exceeds
    /// the patches of an image; here the image then gives all its patches.
    pub fn per_image(cfg: &InContextConfig, images: usize) -> Option<usize> {
        cfg.memory_size.map(|m| (m / (images * cfg.passes.max(1)).max(1)).max(1))
    }

    /// Adds one (augmented) training image: its features and its mask at input resolution.
    /// `per_image` as [`Bank::per_image`]; `rng` breaks ties between equally rare patches.
    pub fn add(
        &mut self,
        f: &FeatureMap,
        mask: &Mask,
        per_image: Option<usize>,
        rng: &mut SplitMix64,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            f.dim == self.dim,
            "features have {} channels, the bank {}",
            f.dim,
            self.dim
        );
        anyhow::ensure!(self.classes <= u16::MAX as usize + 1, "{} classes", self.classes);
        let c = self.classes;
        let labels = patch_labels(mask, f.height, f.width, c)?;
        let n = f.len();
        let chosen: Vec<usize> = match per_image {
            Some(k) if k < n => {
                // Class frequency = patches containing the class; a patch scores the summed
                // frequencies of its classes, times uniform noise; the k lowest are kept.
                let present: Vec<Vec<usize>> =
                    labels.chunks(c).map(|l| (0..c).filter(|&j| l[j] > 0.0).collect()).collect();
                let mut freq = vec![0f32; c];
                present.iter().flatten().for_each(|&j| freq[j] += 1.0);
                let mut scored: Vec<(f32, usize)> = present
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        (p.iter().map(|&j| freq[j]).sum::<f32>() * rng.next_f64() as f32, i)
                    })
                    .collect();
                scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                scored[..k].iter().map(|s| s.1).collect()
            }
            _ => (0..n).collect(),
        };
        let unit = f.normalized();
        let mut rows = Vec::with_capacity(chosen.len() * self.dim);
        for i in chosen {
            rows.extend_from_slice(&unit.data[i * self.dim..(i + 1) * self.dim]);
            let l = &labels[i * c..(i + 1) * c];
            self.entries.extend(
                l.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(j, &v)| (j as u16, v)),
            );
            self.offsets.push(self.entries.len() as u64);
        }
        self.features.extend(&rows)
    }

    /// The top-`k` bank patches of every query row (`queries`, unit rows), exact, ties by
    /// index; the bank is read once, tile by tile.
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        products: &dyn Products,
    ) -> anyhow::Result<Vec<TopK>> {
        let q = queries.len() / self.dim;
        let mut top = vec![TopK::with_capacity(k + 1); q];
        let k = k.min(self.len());
        let mut block = products.queries(queries, self.dim)?;
        self.features.for_each_block(|first, rows| {
            for (t, tile) in rows.chunks(TILE_ROWS * self.dim).enumerate() {
                block.search_tile(tile, first + t * TILE_ROWS, k, &mut top)?;
            }
            Ok(())
        })?;
        Ok(top)
    }

    /// The label distributions of `top`'s patches averaged with softmax(similarity / T)
    /// weights, per query row (`[rows][classes]`).
    fn vote(&self, top: &[TopK], temperature: f32) -> Vec<f32> {
        let c = self.classes;
        let mut dist = vec![0.0f32; top.len() * c];
        for (d, t) in dist.chunks_mut(c).zip(top) {
            let m = t.iter().map(|s| s.0).fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f32> = t.iter().map(|s| ((s.0 - m) / temperature).exp()).collect();
            let z: f32 = w.iter().sum();
            for (wi, &(_, i)) in w.iter().zip(t) {
                // Only the classes the patch holds: adding wi / z x 0 changes nothing.
                for &(j, l) in &self.entries[self.offsets[i] as usize..self.offsets[i + 1] as usize]
                {
                    d[j as usize] += wi / z * l;
                }
            }
        }
        dist
    }
}

/// Indices of the `k` bank entries most similar to each query row (exact inner-product
/// search; with unit-length bank entries that is the cosine order), best first, ties by index.
pub fn nearest(bank: &Bank, queries: &[f32], k: usize) -> Vec<TopK> {
    bank.search(queries, k, &Cpu).expect("a bank in memory")
}

/// Class per pixel of a query image at `out_h x out_w`, from its neighbours `top` (one list
/// per patch).
fn predict_from(
    bank: &Bank,
    query: &FeatureMap,
    top: &[TopK],
    out_h: usize,
    out_w: usize,
    cfg: &InContextConfig,
) -> Vec<u32> {
    let c = bank.classes;
    let dist = bank.vote(top, cfg.temperature);
    let up = Bilinear::new(query.height, query.width, out_h, out_w).apply(&dist, c);
    up.chunks(c)
        .map(|d| {
            d.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0 as u32
        })
        .collect()
}

/// Class per pixel of a query image at `out_h x out_w`.
pub fn predict(
    bank: &Bank,
    query: &FeatureMap,
    out_h: usize,
    out_w: usize,
    cfg: &InContextConfig,
) -> Vec<u32> {
    let unit = query.normalized();
    let top = nearest(bank, &unit.data, cfg.neighbours);
    predict_from(bank, query, &top, out_h, out_w, cfg)
}

/// Adds a prediction to the confusion, leaving out the ignore label and labels >= classes.
pub fn accumulate(conf: &mut Confusion, pred: &[u32], mask: &Mask, ignore: u8) {
    for (&p, &g) in pred.iter().zip(&mask.labels) {
        if g != ignore && (g as usize) < conf.classes {
            conf.counts[p as usize * conf.classes + g as usize] += 1;
        }
    }
}

/// mIoU of the bank on `val` (features and masks at input resolution).
pub fn evaluate(bank: &Bank, val: &[(FeatureMap, Mask)], cfg: &InContextConfig) -> f64 {
    let c = bank.classes;
    let parts: Vec<Confusion> = val
        .iter()
        .map(|(f, m)| {
            let mut conf = Confusion::new(c, c);
            accumulate(&mut conf, &predict(bank, f, m.height, m.width, cfg), m, cfg.ignore);
            conf
        })
        .collect();
    let mut total = Confusion::new(c, c);
    for p in parts {
        total.counts.iter_mut().zip(&p.counts).for_each(|(a, b)| *a += b);
    }
    reference_score(&total, RefMatching::Hungarian).miou
}

/// [`evaluate`] for a validation set too large to hold: features from `val` (a store), masks
/// from `masks(range)` (read again per block), queries searched in blocks of images whose
/// patches and neighbour lists fit `query_bytes`, each block against one pass over the bank,
/// its products on `products`. The same score as [`evaluate`].
pub fn evaluate_stored(
    bank: &Bank,
    val: &MapStore,
    masks: &dyn Fn(std::ops::Range<usize>) -> anyhow::Result<Vec<Mask>>,
    cfg: &InContextConfig,
    products: &dyn Products,
    query_bytes: u64,
    progress: &crate::backbone::Progress,
) -> anyhow::Result<f64> {
    let c = bank.classes;
    let patches = val.height * val.width;
    // A query row costs its feature twice (read, normalised), its running neighbour list and
    // a tile's list before the merge; no product matrix is held (the CPU kernel keeps it in
    // registers, a device in its own memory).
    let per_image = (patches * (bank.dim * 8 + (cfg.neighbours + 1) * 32)) as u64;
    let block = ((query_bytes / per_image.max(1)) as usize).clamp(1, val.len().max(1));
    let mut total = Confusion::new(c, c);
    let mut done = 0;
    progress("queries searched", 0, val.len() as u64);
    while done < val.len() {
        let range = done..(done + block).min(val.len());
        let maps: Vec<FeatureMap> =
            range.clone().map(|i| val.get(i)).collect::<anyhow::Result<_>>()?;
        let queries: Vec<f32> = maps.iter().flat_map(|m| m.normalized().data).collect();
        let top = bank.search(&queries, cfg.neighbours, products)?;
        let ms = masks(range.clone())?;
        anyhow::ensure!(ms.len() == maps.len(), "{} masks for {} images", ms.len(), maps.len());
        for ((f, m), t) in maps.iter().zip(&ms).zip(top.chunks(patches)) {
            accumulate(
                &mut total,
                &predict_from(bank, f, t, m.height, m.width, cfg),
                m,
                cfg.ignore,
            );
        }
        done = range.end;
        progress("queries searched", done as u64, val.len() as u64);
    }
    Ok(reference_score(&total, RefMatching::Hungarian).miou)
}

/// The labelled image set of an in-context run and its training subsets.
#[derive(Clone, Debug)]
pub struct RetrievalSet {
    pub data: std::path::PathBuf,
    pub train_split: String,
    pub val_split: String,
    /// open-hummingbird-eval's `file_sets/<dataset>` folder (published subsets); None:
    /// seeded random subsets.
    pub file_sets: Option<std::path::PathBuf>,
    /// Training fractions as denominators: 1 = all, 8 = 1/8, ...
    pub fractions: Vec<usize>,
    /// Subset seeds of the fractions below 1.
    pub seeds: Vec<u64>,
    /// Model input side (square); predictions are scored at it.
    pub size: usize,
    /// Number of classes (None: the layout's, else from the masks).
    pub classes: Option<usize>,
    /// Colour jitter and random crops for the bank.
    pub augment: bool,
    /// Label left out of the score (None: 0 for ADE20K, 255 otherwise).
    pub ignore: Option<u8>,
}

/// Seeds of the bank's draws: augmentation and tie-breaking noise per (pass, image).
const AUGMENT_SEED: u64 = 0x4b1d;
const SAMPLE_SEED: u64 = 0x5a3e;
/// Training images decoded, augmented and embedded per step of bank filling.
const BANK_CHUNK: usize = 64;

/// `mosic eval incontext`: Hummingbird's dense retrieval, one bank per training subset.
///
/// Memory: the validation features take up to a quarter of `budget`, each bank under half of
/// it, and a block of queries with its neighbour lists a fifth; what does not fit is on disk
/// in the budget's scratch folder. The products (search) run on `products`.
pub fn run_hummingbird(
    bb: &dyn crate::Backbone,
    set: &RetrievalSet,
    cfg: &InContextConfig,
    products: &dyn Products,
    budget: &Budget,
    progress: &crate::backbone::Progress,
    log: &dyn Fn(&str),
) -> anyhow::Result<crate::Evaluation> {
    let splits = Splits::open(set)?;
    let cfg = InContextConfig { ignore: splits.ignore, ..cfg.clone() };
    let subsets = subsets(set, &splits.train)?;
    let per_image = crate::backbone::patches(bb);
    let largest = subsets.iter().map(|s| s.2.len() as u64).max().unwrap_or(0) * per_image;
    let bank = cfg.memory_size.map_or(largest, |m| (m as u64).min(largest));
    let rows = splits.val.len() as u64 * per_image + bank;
    let scratch = budget.check("the bank and the validation features", rows, bb.dim())?;
    let val_store = embed_val(bb, &splits.val, budget, progress)?;
    let s = set.size;
    let val_masks = |r: std::ops::Range<usize>| -> anyhow::Result<Vec<Mask>> {
        Ok(crate::data::load_items(&splits.val[r], s, s)?.1)
    };
    let mut results: Vec<(usize, f64, usize)> = Vec::new();
    for (n, label, items) in &subsets {
        let t0 = std::time::Instant::now();
        let bank = fill_bank(bb, set, &cfg, splits.classes, items, label, budget, progress)?;
        let v = evaluate_stored(
            &bank,
            &val_store,
            &val_masks,
            &cfg,
            products,
            budget.share(0.2),
            progress,
        )?;
        let disk =
            crate::data::store::human_bytes(bank.spilled_bytes() + val_store.spilled_bytes());
        log(&format!(
            "in-context {label}: {} images, {} bank patches ({disk} of features on disk), mIoU {v:.4} ({:.1} s)",
            items.len(),
            bank.len(),
            t0.elapsed().as_secs_f64()
        ));
        results.push((*n, v, bank.len()));
    }
    let mut scores = Vec::new();
    let mut banks = Vec::new();
    for &n in &set.fractions {
        let part: Vec<&(usize, f64, usize)> = results.iter().filter(|r| r.0 == n).collect();
        let sizes: Vec<String> = part.iter().map(|r| r.2.to_string()).collect();
        banks.push(format!("1/{n}: {}", sizes.join(",")));
        let per_seed = part.iter().map(|r| r.1).collect();
        scores.push(crate::backbone::Score::new(
            format!("fraction 1/{n}"),
            splits.classes,
            "nearest-neighbour",
            per_seed,
        ));
    }
    let card = hummingbird_card(set, &cfg, &splits, &banks).notes("scratch", scratch);
    Ok(crate::Evaluation { scores, card })
}

/// The train and validation splits as Hummingbird reads them, with the class count and the
/// label it ignores.
struct Splits {
    train: Vec<crate::data::LabelledImage>,
    val: Vec<crate::data::LabelledImage>,
    layout: String,
    classes: usize,
    ignore: u8,
}

impl Splits {
    fn open(set: &RetrievalSet) -> anyhow::Result<Self> {
        use crate::data::{open_image_set, LabelledImage};
        let (train, info) = open_image_set(&set.data, Some(&set.train_split))?;
        let (val, _) = open_image_set(&set.data, Some(&set.val_split))?;
        let ade = info.layout.starts_with("ADE20K");
        let classes = match set.classes.or(info.classes) {
            // The reference scores ADE20K over 151 ids with 0 ignored (and counted as a class).
            Some(k) if ade => k + 1,
            Some(k) => k,
            None => {
                let masks: Vec<Mask> = train
                    .iter()
                    .chain(&val)
                    .map(|i| i.read_mask())
                    .collect::<anyhow::Result<_>>()?;
                crate::data::num_classes(&masks)
            }
        };
        // Hummingbird reads ADE20K's raw ids (0 = other, ignored).
        let raw = |v: Vec<LabelledImage>| -> Vec<LabelledImage> {
            if ade {
                v.into_iter().map(|i| LabelledImage { labels: None, ..i }).collect()
            } else {
                v
            }
        };
        Ok(Self {
            train: raw(train),
            val: raw(val),
            layout: info.layout,
            classes,
            ignore: set.ignore.unwrap_or(if ade { 0 } else { 255 }),
        })
    }
}

/// The training subsets of every fraction 1/n and seed: the published file lists, or seeded
/// random subsets.
fn subsets(
    set: &RetrievalSet,
    train: &[crate::data::LabelledImage],
) -> anyhow::Result<Vec<(usize, String, Vec<crate::data::LabelledImage>)>> {
    use anyhow::{ensure, Context};
    let by_name: std::collections::HashMap<&str, &crate::data::LabelledImage> =
        train.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut subsets = Vec::new();
    for &n in &set.fractions {
        ensure!(n >= 1, "--fractions are denominators (1, 8, 64, 128), not {n}");
        let seeds: Vec<u64> = if n == 1 { vec![0] } else { set.seeds.clone() };
        for &seed in &seeds {
            let items = match &set.file_sets {
                Some(dir) => crate::data::hummingbird_file_set(dir, n, seed)?
                    .iter()
                    .map(|name| {
                        by_name.get(name.as_str()).map(|i| (*i).clone()).with_context(|| {
                            format!(
                                "{}: image {name} of the 1/{n} list (seed {seed}) is not in the {} split",
                                set.data.display(),
                                set.train_split
                            )
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
                None => {
                    let mut idx: Vec<usize> = (0..train.len()).collect();
                    SplitMix64::new(seed).shuffle(&mut idx);
                    idx.truncate((train.len() / n).max(1));
                    idx.sort_unstable();
                    idx.into_iter().map(|i| train[i].clone()).collect()
                }
            };
            subsets.push((n, format!("1/{n}#{seed}"), items));
        }
    }
    Ok(subsets)
}

/// The validation images' features, once, under their share of the budget (the masks are
/// read again per query block).
fn embed_val(
    bb: &dyn crate::Backbone,
    val: &[crate::data::LabelledImage],
    budget: &Budget,
    progress: &crate::backbone::Progress,
) -> anyhow::Result<MapStore> {
    use anyhow::Context;
    let mut store: Option<MapStore> = None;
    let per_call = crate::backbone::chunk_len(bb);
    for (ci, chunk) in val.chunks(per_call).enumerate() {
        let imgs: Vec<image::RgbImage> = chunk
            .par_iter()
            .map(|it| crate::data::read_image(&it.image))
            .collect::<anyhow::Result<_>>()?;
        for f in crate::backbone::extract(bb, &imgs, "", &crate::backbone::quiet)? {
            let store = store.get_or_insert_with(|| {
                MapStore::new(f.height, f.width, f.dim, budget.share(0.25), budget)
            });
            store.push(&f)?;
        }
        let done = (ci * per_call + chunk.len()) as u64;
        progress("val images embedded", done, val.len() as u64);
    }
    store.context("no validation images")
}

/// One subset's memory bank: every image (each augmentation pass), its features and the
/// patches drawn from it, under the bank's share of the budget.
#[allow(clippy::too_many_arguments)]
fn fill_bank(
    bb: &dyn crate::Backbone,
    set: &RetrievalSet,
    cfg: &InContextConfig,
    classes: usize,
    items: &[crate::data::LabelledImage],
    label: &str,
    budget: &Budget,
    progress: &crate::backbone::Progress,
) -> anyhow::Result<Bank> {
    use anyhow::Context;
    let s = set.size;
    let mut bank = Bank::with_memory(bb.dim(), classes, budget.share(0.45), budget);
    let per = Bank::per_image(cfg, items.len());
    let passes = if set.augment { cfg.passes.max(1) } else { 1 };
    let total = (passes * items.len()) as u64;
    for pass in 0..passes {
        for (ci, chunk) in items.chunks(BANK_CHUNK).enumerate() {
            let first = pass * items.len() + ci * BANK_CHUNK;
            let pairs: Vec<(image::RgbImage, Mask)> = chunk
                .par_iter()
                .enumerate()
                .map(|(j, it)| -> anyhow::Result<(image::RgbImage, Mask)> {
                    let img = crate::data::read_image(&it.image)?;
                    let m = it.read_mask()?;
                    let (img, m) = if set.augment {
                        let mut rng = SplitMix64::stream(AUGMENT_SEED, (first + j) as u64);
                        crate::data::augment::hummingbird_train(&img, &m, &mut rng)
                    } else {
                        (img, m)
                    };
                    Ok((img, m.resize_nearest(s, s)))
                })
                .collect::<anyhow::Result<_>>()?;
            let (imgs, masks): (Vec<image::RgbImage>, Vec<Mask>) = pairs.into_iter().unzip();
            let feats = crate::backbone::extract(bb, &imgs, "", &crate::backbone::quiet)?;
            for (j, (f, m)) in feats.iter().zip(&masks).enumerate() {
                let mut rng = SplitMix64::stream(SAMPLE_SEED, (first + j) as u64);
                bank.add(f, m, per, &mut rng)
                    .with_context(|| format!("bank image {}", chunk[j].name))?;
            }
            progress(&format!("bank {label}: images"), (first + chunk.len()) as u64, total);
        }
    }
    Ok(bank)
}

/// What the Hummingbird run did, for its card.
fn hummingbird_card(
    set: &RetrievalSet,
    cfg: &InContextConfig,
    splits: &Splits,
    banks: &[String],
) -> crate::card::ProtocolCard {
    use crate::card::{self, ProtocolCard};
    let augment = if set.augment {
        format!("{} pass(es) with colour jitter + RandomResizedCrop(0.5-2)", cfg.passes)
    } else {
        "1 pass(es)".to_string()
    };
    let subsets =
        if set.file_sets.is_some() { "published file lists" } else { "seeded random subsets" };
    let mut card = ProtocolCard::new(
        "in-context retrieval (Hummingbird)",
        format!(
            "{} hbird/hbird_eval.py; settings of {} hummingbird_eval.sh",
            card::HUMMINGBIRD,
            card::MOSIC
        ),
        set.size,
        set.size,
        set.seeds.clone(),
    )
    .set("data", format!("{} -> {}", splits.layout, set.val_split))
    .set("classes", format!("{} (label {} ignored)", splits.classes, splits.ignore))
    .set("subsets", subsets)
    .set("bank", format!("{augment}, per-image class-aware sampling; filled: {}", banks.join("; ")))
    .set(
        "retrieval",
        format!(
            "exact cosine top-{}, softmax(sim / {}), labels bilinearly upsampled to the input",
            cfg.neighbours, cfg.temperature
        ),
    )
    .set(
        "score",
        "mIoU over all classes (absent ones 0) after Hungarian matching, at input resolution",
    );
    card.bank_size = Some(cfg.memory_size.map_or("unbounded".to_string(), |m| m.to_string()));
    card
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_labels_count_ignored_pixels_as_background() {
        let m = Mask { width: 4, height: 2, labels: vec![0, 1, 2, 2, 0, 255, 2, 2] };
        let l = patch_labels(&m, 1, 2, 3).unwrap();
        assert_eq!(&l[..3], &[0.75, 0.25, 0.0]);
        assert_eq!(&l[3..], &[0.0, 0.0, 1.0]);
        assert!(patch_labels(&m, 3, 2, 3).is_err());
        assert!(patch_labels(&m, 1, 2, 2).is_err());
    }

    #[test]
    fn bounded_bank_keeps_rare_classes_first() {
        // One patch of class 1 among 15 of class 0: with 1 patch per image it is the one kept.
        let mut labels = vec![0u8; 16];
        labels[5] = 1;
        let mask = Mask { width: 4, height: 4, labels };
        let f = FeatureMap::new(4, 4, 2, (0..32).map(|i| i as f32 + 1.0).collect());
        let mut bank = Bank::new(2, 2);
        bank.add(&f, &mask, Some(1), &mut SplitMix64::new(0)).unwrap();
        assert_eq!(bank.len(), 1);
        assert_eq!(bank.label(0), vec![0.0, 1.0]);
        let cfg = InContextConfig { memory_size: Some(100), passes: 2, ..Default::default() };
        assert_eq!(Bank::per_image(&cfg, 10), Some(5));
        assert_eq!(Bank::per_image(&InContextConfig { memory_size: None, ..cfg }, 10), None);
    }

    #[test]
    fn exact_search_and_retrieval() {
        let mut rng = SplitMix64::new(4);
        let make = |rng: &mut SplitMix64| {
            let labels: Vec<u8> = (0..9).map(|_| rng.below(3) as u8).collect();
            let feats = labels
                .iter()
                .flat_map(|&l| (0..4).map(move |c| (c == l as usize) as u8 as f32))
                .map(|v| v + rng.uniform(-0.1, 0.1) as f32)
                .collect();
            (FeatureMap::new(3, 3, 4, feats), Mask { width: 3, height: 3, labels })
        };
        let mut bank = Bank::new(4, 3);
        for _ in 0..10 {
            let (f, m) = make(&mut rng);
            bank.add(&f, &m, None, &mut rng).unwrap();
        }
        let val: Vec<_> = (0..4).map(|_| make(&mut rng)).collect();
        let cfg = InContextConfig { neighbours: 5, ..Default::default() };
        assert!(evaluate(&bank, &val, &cfg) > 0.99);
        // The search returns the exact top-k in order.
        let q = bank.feature(0).unwrap();
        let top = &nearest(&bank, &q, 3)[0];
        let mut all: Vec<(f32, usize)> = (0..bank.len())
            .map(|i| (bank.feature(i).unwrap().iter().zip(&q).map(|(x, y)| x * y).sum(), i))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(
            top.iter().map(|t| t.1).collect::<Vec<_>>(),
            all[..3].iter().map(|t| t.1).collect::<Vec<_>>()
        );
    }
}
