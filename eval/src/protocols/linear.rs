//! Linear segmentation probe on frozen dense features, Leopart's `linear_finetune.py` with its
//! Pascal config: a 1x1 convolution from patch features to class logits at the mask size
//! (100; Leopart upsamples the features bilinearly first, which is the same linear map),
//! pixel-wise cross-entropy ignoring 255, SGD (lr 0.01, momentum 0.9, weight decay 1e-4),
//! batches of 60 with the last partial batch dropped, the learning rate x0.1 at epoch 20 of 25.
//! Training images are augmented afresh every epoch (the caller supplies each epoch's
//! features). Scored by Leopart's `PredsmIoU(linear_probe=True)`: mIoU over all classes, a
//! class absent from both maps scoring 0. Plain f32 on the CPU; gradients are summed in a
//! fixed order, so a run depends on its seed only.

use crate::data::dense::FeatureMap;
use crate::data::Mask;
use crate::kernels::probe::LinearProbe;
use crate::segmentation::{Confusion, IGNORE};
use mosic::rng::SplitMix64;
use rayon::prelude::*;

#[derive(Clone, Debug, serde::Serialize)]
pub struct LinearConfig {
    pub epochs: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// Epochs at which the learning rate is multiplied by 0.1.
    pub lr_drops: Vec<usize>,
    /// Skip the last batch of an epoch when it is smaller than `batch_size` (Leopart: yes).
    pub drop_last: bool,
    /// Visit the training images in a new random order every epoch (Leopart: yes).
    pub shuffle: bool,
    pub seed: u64,
}

impl Default for LinearConfig {
    fn default() -> Self {
        Self {
            epochs: 25,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            batch_size: 60,
            lr_drops: vec![20],
            drop_last: true,
            shuffle: true,
            seed: 0,
        }
    }
}

/// PyTorch's SGD (dampening 0, not Nesterov): `d = g + wd * p; buf = m * buf + d; p -= lr * buf`.
#[derive(Clone, Debug, Default)]
pub struct Sgd {
    buffers: Option<(Vec<f32>, Vec<f32>)>,
}

impl Sgd {
    pub fn step(
        &mut self,
        probe: &mut LinearProbe,
        gw: &[f32],
        gb: &[f32],
        lr: f64,
        momentum: f64,
        wd: f64,
    ) {
        let update = |p: &mut [f32], g: &[f32], buf: &mut Vec<f32>, fresh: bool| {
            for ((p, g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                let d = g + wd as f32 * *p;
                *b = if fresh { d } else { momentum as f32 * *b + d };
                *p -= lr as f32 * *b;
            }
        };
        let fresh = self.buffers.is_none();
        let (bw, bb) =
            self.buffers.get_or_insert_with(|| (vec![0.0; gw.len()], vec![0.0; gb.len()]));
        update(&mut probe.weight, gw, bw, fresh);
        update(&mut probe.bias, gb, bb, fresh);
    }
}

/// Trains a probe on `train` (features, masks at the training label size), the same data
/// every epoch; `log` gets one line per epoch with the mean loss.
pub fn train_probe(
    train: &[(FeatureMap, Mask)],
    classes: usize,
    cfg: &LinearConfig,
    log: &dyn Fn(&str),
) -> LinearProbe {
    assert!(!train.is_empty(), "no training images");
    let probe = LinearProbe::new(train[0].0.dim, classes, cfg.seed);
    train_probe_batches(
        probe,
        train.len(),
        cfg,
        &mut |_, idx| Ok(idx.iter().map(|&i| train[i].clone()).collect()),
        log,
    )
    .expect("data in memory")
}

/// The training pairs of the images `indices` in epoch `epoch` (e.g. freshly augmented).
pub type BatchData<'a> = dyn FnMut(usize, &[usize]) -> anyhow::Result<Vec<(FeatureMap, Mask)>> + 'a;

/// Trains `probe` on `n` training images whose pairs `data` supplies batch by batch.
pub fn train_probe_batches(
    probe: LinearProbe,
    n: usize,
    cfg: &LinearConfig,
    data: &mut BatchData<'_>,
    log: &dyn Fn(&str),
) -> anyhow::Result<LinearProbe> {
    train_probe_on(probe, n, cfg, data, &crate::kernels::cpu::Cpu, log)
}

/// [`train_probe_batches`] with each batch's loss and gradient computed on `products`.
pub fn train_probe_on(
    mut probe: LinearProbe,
    n: usize,
    cfg: &LinearConfig,
    data: &mut BatchData<'_>,
    products: &dyn crate::kernels::products::Products,
    log: &dyn Fn(&str),
) -> anyhow::Result<LinearProbe> {
    anyhow::ensure!(n > 0, "no training images");
    let mut sgd = Sgd::default();
    let mut rng = SplitMix64::new(cfg.seed ^ 0x5eed);
    let bs = cfg.batch_size.max(1);
    for epoch in 0..cfg.epochs {
        let lr = cfg.lr * 0.1f64.powi(cfg.lr_drops.iter().filter(|&&e| e <= epoch).count() as i32);
        let mut order: Vec<usize> = (0..n).collect();
        if cfg.shuffle {
            rng.shuffle(&mut order);
        }
        let (mut sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(bs) {
            // Leopart drops the last partial batch; a set smaller than one batch keeps it.
            if cfg.drop_last && chunk.len() < bs && batches > 0 {
                continue;
            }
            let pairs = data(epoch, chunk)?;
            let batch: Vec<(&FeatureMap, &Mask)> = pairs.iter().map(|(f, m)| (f, m)).collect();
            let (loss, gw, gb) = products.probe_grad(&probe, &batch)?;
            sgd.step(&mut probe, &gw, &gb, lr, cfg.momentum, cfg.weight_decay);
            sum += loss;
            batches += 1;
        }
        log(&format!(
            "linear probe epoch {}/{}  loss {:.4}  lr {lr:.1e}",
            epoch + 1,
            cfg.epochs,
            sum / batches as f64
        ));
    }
    Ok(probe)
}

/// Dataset-level confusion of the probe's predictions on `val` (masks at the evaluation size).
pub fn evaluate_probe(probe: &LinearProbe, val: &[(FeatureMap, Mask)]) -> Confusion {
    let parts: Vec<Confusion> = val
        .par_iter()
        .map(|(f, m)| {
            let mut c = Confusion::new(probe.classes, probe.classes);
            let gt: Vec<u32> = m
                .labels
                .iter()
                .map(|&l| if l as usize >= probe.classes { IGNORE } else { l as u32 })
                .collect();
            c.add(&probe.predict(f, m.height, m.width), &gt);
            c
        })
        .collect();
    let mut total = Confusion::new(probe.classes, probe.classes);
    for p in parts {
        total.counts.iter_mut().zip(&p.counts).for_each(|(a, b)| *a += b);
    }
    total
}

/// The labelled image set the probe trains and is scored on.
#[derive(Clone, Debug)]
pub struct ProbeSet {
    pub data: std::path::PathBuf,
    pub train_split: String,
    pub val_split: String,
    /// Model input side (square).
    pub size: usize,
    /// Side of the square masks the logits are scored at.
    pub mask_size: usize,
    /// Number of classes (None: the layout's, else from the masks).
    pub classes: Option<usize>,
    /// RandomResizedCrop + flip with features recomputed every epoch; else features once.
    pub augment: bool,
}

/// `mosic eval linear`: Leopart's linear probe on `set`.
///
/// Memory: training features computed once (without augmentation) stay in memory up to half
/// of `budget` and go to disk beyond; with augmentation they are made batch by batch. The
/// probe's loss and gradients run on `products`.
pub fn run_probe(
    bb: &dyn crate::Backbone,
    set: &ProbeSet,
    cfg: &LinearConfig,
    products: &dyn crate::kernels::products::Products,
    budget: &crate::data::store::Budget,
    progress: &crate::backbone::Progress,
    log: &dyn Fn(&str),
) -> anyhow::Result<crate::Evaluation> {
    use crate::backbone::{extract, quiet};
    use crate::card::{self, ProtocolCard};
    use crate::data::{load_items, open_image_set, read_image};
    use crate::segmentation::{reference_score, RefMatching};
    let (size, ms) = (set.size, set.mask_size);
    let (train, info) = open_image_set(&set.data, Some(&set.train_split))?;
    let (val, _) = open_image_set(&set.data, Some(&set.val_split))?;
    let classes = match set.classes.or(info.classes) {
        Some(k) => k,
        None => {
            let masks: Vec<Mask> =
                train.iter().chain(&val).map(|i| i.read_mask()).collect::<anyhow::Result<_>>()?;
            crate::data::num_classes(&masks)
        }
    };
    let rows = (train.len() + val.len()) as u64 * crate::backbone::patches(bb);
    let scratch = budget.check("the probe's features", rows, bb.dim())?;
    let probe = LinearProbe::new(bb.dim(), classes, cfg.seed);
    let epochs = cfg.epochs as u64;
    let report = |epoch: usize| progress("probe epochs", epoch as u64, epochs);
    let epoch_log = |l: &str| {
        log(l);
        if let Some(e) = l.strip_prefix("linear probe epoch ").and_then(|r| r.split('/').next()) {
            report(e.parse().unwrap_or(0));
        }
    };
    let probe = if set.augment {
        let seed = cfg.seed;
        train_probe_on(
            probe,
            train.len(),
            cfg,
            &mut |epoch, idx| {
                let pairs: Vec<(image::RgbImage, Mask)> = idx
                    .par_iter()
                    .map(|&i| -> anyhow::Result<(image::RgbImage, Mask)> {
                        let img = read_image(&train[i].image)?;
                        let m = train[i].read_mask()?;
                        let mut rng =
                            SplitMix64::stream(seed ^ 0x11ea7, (epoch * train.len() + i) as u64);
                        let (img, m) = crate::data::augment::leopart_train(&img, &m, &mut rng);
                        Ok((img, m.resize_nearest(size, size).resize_nearest_torch(ms, ms)))
                    })
                    .collect::<anyhow::Result<_>>()?;
                let (imgs, masks): (Vec<image::RgbImage>, Vec<Mask>) = pairs.into_iter().unzip();
                Ok(extract(bb, &imgs, "", &quiet)?.into_iter().zip(masks).collect())
            },
            products,
            &epoch_log,
        )?
    } else {
        // Features once; masks (small) in memory, features under half the budget.
        let mut store: Option<crate::data::store::MapStore> = None;
        let mut masks = Vec::with_capacity(train.len());
        let per_call = crate::backbone::chunk_len(bb);
        for (ci, chunk) in train.chunks(per_call).enumerate() {
            let (imgs, ms_) = load_items(chunk, size, ms)?;
            for f in extract(bb, &imgs, "", &quiet)? {
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
            masks.extend(ms_);
            let done = (ci * per_call + chunk.len()) as u64;
            progress("train images embedded", done, train.len() as u64);
        }
        let store = store.ok_or_else(|| anyhow::anyhow!("no training images"))?;
        train_probe_on(
            probe,
            train.len(),
            cfg,
            &mut |_, idx| idx.iter().map(|&i| Ok((store.get(i)?, masks[i].clone()))).collect(),
            products,
            &epoch_log,
        )?
    };
    let mut total = Confusion::new(classes, classes);
    for chunk in val.chunks(256) {
        let (imgs, masks) = load_items(chunk, size, ms)?;
        let pairs: Vec<(FeatureMap, Mask)> =
            extract(bb, &imgs, "", &quiet)?.into_iter().zip(masks).collect();
        let conf = evaluate_probe(&probe, &pairs);
        total.counts.iter_mut().zip(&conf.counts).for_each(|(a, b)| *a += b);
    }
    let v = reference_score(&total, RefMatching::Identity).miou;
    let augment = if set.augment {
        "RandomResizedCrop(scale 0.8-1) + flip, features recomputed every epoch"
    } else {
        "none (features computed once)"
    };
    let card = ProtocolCard::new(
        "linear segmentation probe (Leopart)",
        format!(
            "{} experiments/linear_probing/linear_finetune.py (Pascal config)",
            card::LEOPART
        ),
        size,
        ms,
        vec![cfg.seed],
    )
    .set("data", format!("{} -> {}", info.layout, set.val_split))
    .set("classes", classes)
    .set(
        "training",
        format!(
            "{} epochs, batch {} (last partial dropped), SGD lr {} momentum {} wd {}, x0.1 at {:?}",
            cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.lr_drops
        ),
    )
    .set("augment", augment)
    .set(
        "score",
        "mIoU over all classes (absent ones 0), label 255 ignored, on the whole val split after the last epoch",
    );
    let name = format!("linear ({} train, {} val)", train.len(), val.len());
    let scores = vec![crate::backbone::Score::new(name, classes, "supervised", vec![v])];
    let card = card.notes("scratch", scratch);
    Ok(crate::Evaluation { scores, card })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(9);
        let f = FeatureMap::new(3, 3, 4, (0..36).map(|_| rng.uniform(-1.0, 1.0) as f32).collect());
        let labels = (0..25).map(|i| if i % 7 == 3 { 255 } else { (i % 3) as u8 }).collect();
        let m = Mask { width: 5, height: 5, labels };
        let probe = LinearProbe::new(4, 3, 1);
        let (_, gw, gb) = probe.loss_and_grad(&[(&f, &m)]);
        let eps = 1e-2f32;
        for i in [0, 5, 11] {
            let (mut a, mut b) = (probe.clone(), probe.clone());
            a.weight[i] += eps;
            b.weight[i] -= eps;
            let num = (a.loss_and_grad(&[(&f, &m)]).0 - b.loss_and_grad(&[(&f, &m)]).0)
                / (2.0 * eps as f64);
            assert!((num - gw[i] as f64).abs() < 1e-3, "w{i}: {num} vs {}", gw[i]);
        }
        let (mut a, mut b) = (probe.clone(), probe.clone());
        a.bias[2] += eps;
        b.bias[2] -= eps;
        let num =
            (a.loss_and_grad(&[(&f, &m)]).0 - b.loss_and_grad(&[(&f, &m)]).0) / (2.0 * eps as f64);
        assert!((num - gb[2] as f64).abs() < 1e-3);
    }

    #[test]
    fn learns_a_separable_problem() {
        let mut rng = SplitMix64::new(2);
        let data: Vec<(FeatureMap, Mask)> = (0..20)
            .map(|_| {
                let labels: Vec<u8> = (0..16).map(|_| rng.below(3) as u8).collect();
                let feats = labels
                    .iter()
                    .flat_map(|&l| (0..5).map(move |c| if c == l as usize { 2.0 } else { 0.0 }))
                    .map(|v: f32| v + rng.uniform(-0.1, 0.1) as f32)
                    .collect();
                (FeatureMap::new(4, 4, 5, feats), Mask { width: 4, height: 4, labels })
            })
            .collect();
        let cfg = LinearConfig {
            epochs: 30,
            lr: 0.5,
            batch_size: 4,
            lr_drops: vec![],
            drop_last: false,
            ..Default::default()
        };
        let probe = train_probe(&data, 3, &cfg, &|_| {});
        let miou = crate::protocols::cluster::prediction_miou(&evaluate_probe(&probe, &data));
        assert!(miou > 0.99, "{miou}");
    }
}
