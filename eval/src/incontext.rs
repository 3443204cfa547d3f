//! In-context dense retrieval (Hummingbird protocol): a memory bank of training patch
//! features with their label distributions; every query patch takes the labels of its 30
//! nearest bank patches (cosine similarity, exact search), weighted by a softmax of the
//! similarities, and the patch label map is upsampled to the mask size and arg-maxed.

use crate::cluster::Score;
use crate::data::Mask;
use crate::dense::{Bilinear, FeatureMap};
use crate::segmentation::{miou, Confusion, IGNORE};
use mosic::rng::SplitMix64;
use rayon::prelude::*;

#[derive(Clone, Debug, serde::Serialize)]
pub struct InContextConfig {
    pub neighbours: usize,
    /// Softmax temperature over neighbour similarities (Hummingbird: 0.02).
    pub temperature: f32,
    /// Fractions of the training images in the memory bank (paper: 1, 1/8, 1/64, 1/128).
    pub fractions: Vec<f64>,
    pub seeds: Vec<u64>,
    /// Most patches kept in the bank (sampled at random beyond it); 0 keeps all.
    pub memory_size: usize,
}

impl Default for InContextConfig {
    fn default() -> Self {
        Self { neighbours: 30, temperature: 0.02, fractions: vec![1.0, 1.0 / 8.0, 1.0 / 64.0, 1.0 / 128.0], seeds: vec![0, 1, 2, 3, 4], memory_size: 0 }
    }
}

/// Per-patch class distribution: the share of each class among the mask pixels the patch
/// covers (ignored pixels left out); None for a patch covering only ignored pixels.
pub fn patch_labels(mask: &Mask, grid_h: usize, grid_w: usize, classes: usize) -> Vec<Option<Vec<f32>>> {
    let mut hist = vec![0u32; grid_h * grid_w * classes];
    for y in 0..mask.height {
        let py = y * grid_h / mask.height;
        for x in 0..mask.width {
            let l = mask.labels[y * mask.width + x] as usize;
            if l as u32 == IGNORE || l >= classes {
                continue;
            }
            hist[(py * grid_w + x * grid_w / mask.width) * classes + l] += 1;
        }
    }
    hist.chunks(classes)
        .map(|h| {
            let n: u32 = h.iter().sum();
            (n > 0).then(|| h.iter().map(|&v| v as f32 / n as f32).collect())
        })
        .collect()
}

struct Bank {
    dim: usize,
    classes: usize,
    features: Vec<f32>,
    labels: Vec<f32>,
}

fn build_bank(train: &[&(FeatureMap, Mask)], classes: usize, memory: usize, rng: &mut SplitMix64) -> Bank {
    let dim = train[0].0.dim;
    let mut entries: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    for (f, m) in train {
        let unit = f.normalized();
        for (i, l) in patch_labels(m, f.height, f.width, classes).into_iter().enumerate() {
            if let Some(l) = l {
                entries.push((unit.data[i * dim..(i + 1) * dim].to_vec(), l));
            }
        }
    }
    if memory > 0 && entries.len() > memory {
        rng.shuffle(&mut entries);
        entries.truncate(memory);
    }
    let mut bank = Bank { dim, classes, features: Vec::new(), labels: Vec::new() };
    for (f, l) in entries {
        bank.features.extend(f);
        bank.labels.extend(l);
    }
    bank
}

/// Class distribution of every patch of `query` from its nearest bank entries.
fn retrieve(bank: &Bank, query: &FeatureMap, k: usize, temperature: f32) -> Vec<f32> {
    let (dim, c) = (bank.dim, bank.classes);
    let n = bank.features.len() / dim;
    let k = k.min(n);
    let unit = query.normalized();
    unit.data
        .par_chunks(dim)
        .flat_map_iter(|q| {
            let mut sims: Vec<(f32, usize)> =
                bank.features.chunks(dim).enumerate().map(|(i, b)| (q.iter().zip(b).map(|(x, y)| x * y).sum::<f32>(), i)).collect();
            // Exact top-k: partition, then the k best in any order (ties broken by index).
            let cmp = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            if k < n {
                sims.select_nth_unstable_by(k - 1, cmp);
            }
            let top = &sims[..k];
            let m = top.iter().map(|s| s.0).fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f32> = top.iter().map(|s| ((s.0 - m) / temperature).exp()).collect();
            let z: f32 = w.iter().sum();
            let mut dist = vec![0.0f32; c];
            for (wi, (_, i)) in w.iter().zip(top) {
                for (d, l) in dist.iter_mut().zip(&bank.labels[i * c..(i + 1) * c]) {
                    *d += wi / z * l;
                }
            }
            dist
        })
        .collect()
}

/// Predicted class per mask pixel for one query image.
pub fn predict(bank_train: &[(FeatureMap, Mask)], query: &FeatureMap, classes: usize, mask_h: usize, mask_w: usize, cfg: &InContextConfig) -> Vec<u32> {
    let refs: Vec<&(FeatureMap, Mask)> = bank_train.iter().collect();
    let bank = build_bank(&refs, classes, cfg.memory_size, &mut SplitMix64::new(0));
    predict_with(&bank, query, mask_h, mask_w, cfg)
}

fn predict_with(bank: &Bank, query: &FeatureMap, mask_h: usize, mask_w: usize, cfg: &InContextConfig) -> Vec<u32> {
    let c = bank.classes;
    let dist = retrieve(bank, query, cfg.neighbours, cfg.temperature);
    let up = Bilinear::new(query.height, query.width, mask_h, mask_w).apply(&dist, c);
    up.chunks(c)
        .map(|d| d.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32)
        .collect()
}

/// mIoU on `val` with memory banks built from fractions of `train`, over seeds.
pub fn evaluate(train: &[(FeatureMap, Mask)], val: &[(FeatureMap, Mask)], classes: usize, cfg: &InContextConfig, log: &dyn Fn(&str)) -> Vec<Score> {
    cfg.fractions
        .iter()
        .map(|&frac| {
            let per_seed = cfg
                .seeds
                .iter()
                .map(|&seed| {
                    let mut rng = SplitMix64::new(seed);
                    let mut idx: Vec<usize> = (0..train.len()).collect();
                    rng.shuffle(&mut idx);
                    let take = ((frac * train.len() as f64).round() as usize).clamp(1, train.len());
                    let chosen: Vec<&(FeatureMap, Mask)> = idx[..take].iter().map(|&i| &train[i]).collect();
                    let bank = build_bank(&chosen, classes, cfg.memory_size, &mut rng);
                    let mut conf = Confusion::new(classes, classes);
                    for (f, m) in val {
                        let gt: Vec<u32> = m.labels.iter().map(|&l| if l as usize >= classes { IGNORE } else { l as u32 }).collect();
                        conf.add(&predict_with(&bank, f, m.height, m.width, cfg), &gt);
                    }
                    let v = miou(&conf.counts, classes).0;
                    log(&format!("in-context fraction {frac} seed {seed}: {take} images, {} bank patches, mIoU {:.4}", bank.features.len() / bank.dim, v));
                    v
                })
                .collect();
            Score::new(format!("fraction {frac}"), classes, "nearest-neighbour", per_seed)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_label_shares() {
        let m = Mask { width: 4, height: 2, labels: vec![0, 1, 2, 2, 0, 255, 2, 2] };
        let l = patch_labels(&m, 1, 2, 3);
        assert_eq!(l[0].as_deref(), Some(&[2.0 / 3.0, 1.0 / 3.0, 0.0][..]));
        assert_eq!(l[1].as_deref(), Some(&[0.0, 0.0, 1.0][..]));
        let all_ignored = Mask { width: 1, height: 1, labels: vec![255] };
        assert_eq!(patch_labels(&all_ignored, 1, 1, 3), vec![None]);
    }

    #[test]
    fn retrieval_recovers_labels_of_matching_features() {
        let mut rng = SplitMix64::new(4);
        let make = |rng: &mut SplitMix64| {
            let labels: Vec<u8> = (0..9).map(|_| rng.below(3) as u8).collect();
            let feats = labels.iter().flat_map(|&l| (0..4).map(move |c| (c == l as usize) as u8 as f32)).collect::<Vec<f32>>();
            let noisy = feats.iter().map(|v| v + rng.uniform(-0.1, 0.1) as f32).collect();
            (FeatureMap::new(3, 3, 4, noisy), Mask { width: 3, height: 3, labels })
        };
        let train: Vec<_> = (0..10).map(|_| make(&mut rng)).collect();
        let val: Vec<_> = (0..4).map(|_| make(&mut rng)).collect();
        let cfg = InContextConfig { neighbours: 5, fractions: vec![1.0, 0.5], seeds: vec![0, 1], ..Default::default() };
        let scores = evaluate(&train, &val, 3, &cfg, &|_| {});
        assert_eq!(scores.len(), 2);
        for s in &scores {
            assert!(s.mean > 0.99, "{s:?}");
        }
        // Labels that ignore the features cannot be predicted.
        let shuffled: Vec<_> = train.iter().map(|(f, m)| (f.clone(), Mask { labels: m.labels.iter().rev().copied().collect(), ..m.clone() })).collect();
        let s = evaluate(&shuffled, &val, 3, &InContextConfig { fractions: vec![1.0], seeds: vec![0], neighbours: 5, ..Default::default() }, &|_| {});
        assert!(s[0].mean < 0.8, "{s:?}");
    }
}
