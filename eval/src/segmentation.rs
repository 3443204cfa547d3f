//! Scoring unsupervised cluster maps against ground-truth segmentations.
//!
//! Two protocols, both built on a cluster x class confusion matrix of pixel counts:
//! - [`hungarian_miou`]: one-to-one matching of clusters to classes maximising the matched
//!   overlap (clustering with K = number of classes, and the per-frame / per-clip /
//!   per-dataset video protocol, which only changes what the confusion is accumulated over);
//! - [`overclustering_miou`]: the Leopart overclustering protocol for K > number of
//!   classes, many-to-one by precision.
//!
//! Pixels whose ground truth is [`IGNORE`] are left out of every count, as in Leopart.
//! Dataset-level scores accumulate one [`Confusion`] over all images and score it once
//! ([`hungarian_score`], [`overclustering_score`]).

use crate::kernels::hungarian;

pub use crate::data::IGNORE;

/// Pixel counts `counts[cluster * classes + class]`: rows are predicted cluster ids,
/// columns ground-truth classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    pub k: usize,
    pub classes: usize,
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(k: usize, classes: usize) -> Self {
        Self { k, classes, counts: vec![0; k * classes] }
    }

    /// Adds one label map (or a whole batch, flattened). Panics on a cluster id >= k or a
    /// class >= classes that is not [`IGNORE`].
    pub fn add(&mut self, pred: &[u32], gt: &[u32]) {
        assert_eq!(pred.len(), gt.len(), "prediction and ground truth differ in size");
        for (&p, &g) in pred.iter().zip(gt) {
            if g == IGNORE {
                continue;
            }
            let (p, g) = (p as usize, g as usize);
            assert!(p < self.k, "cluster id {p} >= k = {}", self.k);
            assert!(g < self.classes, "class {g} >= {} classes", self.classes);
            self.counts[p * self.classes + g] += 1;
        }
    }

    pub fn get(&self, cluster: usize, class: usize) -> u64 {
        self.counts[cluster * self.classes + class]
    }

    /// Collapses clusters onto classes: row `c` of the result sums the clusters mapped to
    /// class `c`, and one extra last row sums the unmapped clusters, whose pixels are
    /// predicted as no class at all (they still count as misses for their true class).
    /// The result is the `(classes + 1) x classes` layout [`miou`] reads.
    pub fn merge(&self, cluster_to_class: &[Option<usize>]) -> Vec<u64> {
        assert_eq!(cluster_to_class.len(), self.k);
        let n = self.classes;
        let mut merged = vec![0u64; (n + 1) * n];
        for (cluster, target) in cluster_to_class.iter().enumerate() {
            let row = target.unwrap_or(n);
            assert!(row <= n, "cluster {cluster} mapped to class {row} >= {n}");
            for g in 0..n {
                merged[row * n + g] += self.get(cluster, g);
            }
        }
        merged
    }
}

/// Confusion matrix of one prediction (cluster ids < k) against ground truth.
pub fn confusion(pred: &[u32], gt: &[u32], k: usize, classes: usize) -> Confusion {
    let mut c = Confusion::new(k, classes);
    c.add(pred, gt);
    c
}

/// Per-class IoU and their mean from a row-major matrix with `classes` columns
/// (ground-truth classes). Row `r < classes` holds the pixels predicted as class `r`; any
/// further rows hold pixels predicted as none of the classes, which only add misses.
///
/// IoU_c = TP / (TP + FP + FN) = M[c][c] / (row sum c + column sum c - M[c][c]).
/// Convention: a class absent from both the prediction and the ground truth (union 0) has
/// no defined IoU; it is reported as NaN and left out of the mean, so scoring a subset of
/// images never rewards or punishes classes that do not occur in it. A class present in
/// only one of them scores 0. The mean is NaN when no class occurs at all.
pub fn miou(confusion: &[u64], classes: usize) -> (f64, Vec<f64>) {
    assert!(
        classes > 0 && confusion.len().is_multiple_of(classes),
        "not a matrix with {classes} columns"
    );
    let rows = confusion.len() / classes;
    assert!(rows >= classes, "need a row per class");
    let at = |r: usize, c: usize| confusion[r * classes + c];
    let per_class: Vec<f64> = (0..classes)
        .map(|c| {
            let tp = at(c, c);
            let predicted: u64 = (0..classes).map(|g| at(c, g)).sum();
            let actual: u64 = (0..rows).map(|r| at(r, c)).sum();
            let union = predicted + actual - tp;
            if union == 0 {
                f64::NAN
            } else {
                tp as f64 / union as f64
            }
        })
        .collect();
    let present: Vec<f64> = per_class.iter().copied().filter(|v| !v.is_nan()).collect();
    let mean = if present.is_empty() {
        f64::NAN
    } else {
        present.iter().sum::<f64>() / present.len() as f64
    };
    (mean, per_class)
}

/// A matched score: mean IoU over the classes that occur, per-class IoU (NaN where the
/// class occurs in neither map), and the class each cluster was mapped to.
#[derive(Clone, Debug, PartialEq)]
pub struct SegScore {
    pub miou: f64,
    pub per_class: Vec<f64>,
    pub cluster_to_class: Vec<Option<usize>>,
}

/// Hungarian protocol: clusters and classes matched one-to-one maximising the total
/// overlap, then mIoU. Meant for K = classes; with K != classes, min(K, classes) pairs are
/// matched and the rest of the clusters predict no class (their pixels are misses).
pub fn hungarian_miou(pred: &[u32], gt: &[u32], k: usize, classes: usize) -> SegScore {
    hungarian_score(&confusion(pred, gt, k, classes))
}

/// [`hungarian_miou`] from an accumulated confusion matrix.
pub fn hungarian_score(conf: &Confusion) -> SegScore {
    let overlap: Vec<f64> = conf.counts.iter().map(|&c| c as f64).collect();
    let mut cluster_to_class = vec![None; conf.k];
    for (cluster, class) in hungarian::maximize(&overlap, conf.k, conf.classes) {
        cluster_to_class[cluster] = Some(class);
    }
    score(conf, cluster_to_class)
}

/// Leopart overclustering protocol (K > classes): each cluster goes to the class where its
/// precision (the share of its evaluated pixels that belong to the class) is highest,
/// several clusters may share a class, and the merged map is scored by mIoU.
pub fn overclustering_miou(pred: &[u32], gt: &[u32], k: usize, classes: usize) -> SegScore {
    overclustering_score(&confusion(pred, gt, k, classes))
}

/// [`overclustering_miou`] from an accumulated confusion matrix.
///
/// Choices where the sources leave room:
/// - For one cluster, precision against class g is overlap(g) / cluster size, so the best
///   class is simply the one with the largest overlap; ties go to the lowest class index.
/// - A cluster with no evaluated pixels (all its pixels ignored, or unused) has no
///   precision and is mapped to no class; it contributes nothing either way.
/// - The paper (appendix, "Overclustering") follows the greedy step with Hungarian
///   matching on the merged maps. That step cannot change the result: every cluster merged
///   into class c overlaps c at least as much as any other class, so the merged matrix is
///   row-wise diagonally dominant and the identity is already an optimal matching. It is
///   therefore not run (a test checks the claim).
pub fn overclustering_score(conf: &Confusion) -> SegScore {
    let cluster_to_class = (0..conf.k)
        .map(|cluster| {
            let row = &conf.counts[cluster * conf.classes..(cluster + 1) * conf.classes];
            let size: u64 = row.iter().sum();
            if size == 0 {
                return None;
            }
            // Largest overlap == highest precision (same denominator); first on ties.
            let (best, _) =
                row.iter()
                    .enumerate()
                    .fold((0, 0u64), |acc, (g, &v)| if v > acc.1 { (g, v) } else { acc });
            Some(best)
        })
        .collect();
    score(conf, cluster_to_class)
}

fn score(conf: &Confusion, cluster_to_class: Vec<Option<usize>>) -> SegScore {
    let merged = conf.merge(&cluster_to_class);
    let (miou, per_class) = miou(&merged, conf.classes);
    SegScore { miou, per_class, cluster_to_class }
}

/// How a reference implementation maps clusters to classes before scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RefMatching {
    /// `linear_sum_assignment(1 - IoU)`; clusters left unmatched predict class 0 (background).
    Hungarian,
    /// Each cluster to the class of highest precision (`precision`) or IoU; first class on ties.
    ManyToOne { precision: bool },
    /// Cluster id = class id (a supervised prediction: the linear probe).
    Identity,
}

/// A score under a reference convention: mean IoU and per-class IoU over the scored
/// classes, and the class each cluster was mapped to.
#[derive(Clone, Debug, PartialEq)]
pub struct RefScore {
    pub miou: f64,
    pub per_class: Vec<f64>,
    pub cluster_to_class: Vec<usize>,
}

/// `tp / max(tp + fp + fn, 1e-8)`, as every reference computes it (an absent class scores 0).
fn jaccard(tp: u64, predicted: u64, actual: u64) -> f64 {
    tp as f64 / ((predicted + actual - tp) as f64).max(1e-8)
}

/// The `(class, cluster)` score matrix of `PredsmIoU.compute_score_matrix`, row-major
/// `classes x clusters`, over the given subsets of rows (clusters) and columns (classes).
fn score_matrix(
    conf: &Confusion,
    clusters: &[usize],
    classes: &[usize],
    precision: bool,
) -> Vec<f64> {
    let size: Vec<u64> =
        clusters.iter().map(|&p| (0..conf.classes).map(|g| conf.get(p, g)).sum()).collect();
    let actual: Vec<u64> =
        classes.iter().map(|&g| (0..conf.k).map(|p| conf.get(p, g)).sum()).collect();
    let mut m = Vec::with_capacity(classes.len() * clusters.len());
    for (gi, &g) in classes.iter().enumerate() {
        for (pi, &p) in clusters.iter().enumerate() {
            let tp = conf.get(p, g);
            m.push(if precision {
                tp as f64 / (size[pi] as f64).max(1e-8)
            } else {
                jaccard(tp, size[pi], actual[gi])
            });
        }
    }
    m
}

/// Position in `classes` each of `clusters` is mapped to (None: left unmatched by Hungarian).
fn map_clusters(
    conf: &Confusion,
    clusters: &[usize],
    classes: &[usize],
    matching: RefMatching,
) -> Vec<Option<usize>> {
    let (np, ng) = (clusters.len(), classes.len());
    match matching {
        RefMatching::Identity => (0..np).map(Some).collect(),
        RefMatching::Hungarian => {
            let iou = score_matrix(conf, clusters, classes, false);
            let cost: Vec<f64> = iou.iter().map(|v| 1.0 - v).collect();
            let mut map = vec![None; np];
            for (g, p) in hungarian::linear_sum_assignment(&cost, ng, np) {
                map[p] = Some(g);
            }
            map
        }
        RefMatching::ManyToOne { precision } => {
            let s = score_matrix(conf, clusters, classes, precision);
            (0..np)
                .map(|p| {
                    let mut best = 0;
                    for g in 1..ng {
                        if s[g * np + p] > s[best * np + p] {
                            best = g;
                        }
                    }
                    Some(best)
                })
                .collect()
        }
    }
}

/// Leopart's (and Hummingbird's) `PredsmIoU`: `conf` counts the evaluated pixels (ignore
/// label already removed), clusters are matched to the `conf.classes` classes, and the mean
/// runs over all of them, a class absent from both maps scoring 0.
pub fn reference_score(conf: &Confusion, matching: RefMatching) -> RefScore {
    if matching == RefMatching::Identity {
        assert_eq!(conf.k, conf.classes, "identity matching needs as many clusters as classes");
    }
    let clusters: Vec<usize> = (0..conf.k).collect();
    let classes: Vec<usize> = (0..conf.classes).collect();
    // Unmatched clusters predict the background, class 0.
    let map: Vec<usize> = map_clusters(conf, &clusters, &classes, matching)
        .into_iter()
        .map(|g| g.unwrap_or(0))
        .collect();
    let merged = conf.merge(&map.iter().map(|&g| Some(g)).collect::<Vec<_>>());
    let n = conf.classes;
    let per_class: Vec<f64> = (0..n)
        .map(|c| {
            let tp = merged[c * n + c];
            let predicted: u64 = merged[c * n..(c + 1) * n].iter().sum();
            let actual: u64 = (0..=n).map(|r| merged[r * n + c]).sum();
            jaccard(tp, predicted, actual)
        })
        .collect();
    RefScore { miou: per_class.iter().sum::<f64>() / n as f64, per_class, cluster_to_class: map }
}

/// TimeT's `PredsmIoU` (`metrics.py`, `involve_bg=True`): only the cluster ids present in the
/// prediction and the labels present in the ground truth take part; unmatched clusters
/// predict label 0; the mean runs over the labels present in the ground truth. `conf` has a
/// column per label value (e.g. 256), so label values need not be contiguous.
pub fn timet_score(conf: &Confusion, matching: RefMatching) -> f64 {
    let clusters: Vec<usize> =
        (0..conf.k).filter(|&p| (0..conf.classes).any(|g| conf.get(p, g) > 0)).collect();
    let labels: Vec<usize> =
        (0..conf.classes).filter(|&g| (0..conf.k).any(|p| conf.get(p, g) > 0)).collect();
    if labels.is_empty() {
        return f64::NAN;
    }
    // Unmatched clusters predict label value 0, present in the ground truth or not.
    let mut target = vec![0usize; conf.k];
    for (pi, g) in map_clusters(conf, &clusters, &labels, matching).into_iter().enumerate() {
        target[clusters[pi]] = g.map_or(0, |g| labels[g]);
    }
    let scores: Vec<f64> = labels
        .iter()
        .map(|&g| {
            let mut tp = 0;
            let mut predicted = 0;
            for &p in &clusters {
                if target[p] == g {
                    tp += conf.get(p, g);
                    predicted += (0..conf.classes).map(|c| conf.get(p, c)).sum::<u64>();
                }
            }
            let actual: u64 = (0..conf.k).map(|p| conf.get(p, g)).sum();
            jaccard(tp, predicted, actual)
        })
        .collect();
    scores.iter().sum::<f64>() / scores.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: u32 = IGNORE;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn perfect_prediction() {
        let gt = [0, 0, 1, 1, 2, 2, 2, 0];
        let s = hungarian_miou(&gt, &gt, 3, 3);
        assert_eq!(s.miou, 1.0);
        assert_eq!(s.per_class, vec![1.0; 3]);
        assert_eq!(s.cluster_to_class, vec![Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn permuted_cluster_ids_are_matched() {
        let gt = [0, 0, 1, 1, 2, 2, 2, 0];
        // Cluster ids are class ids shifted by one: 0->1, 1->2, 2->0.
        let pred: Vec<u32> = gt.iter().map(|g| (g + 1) % 3).collect();
        let s = hungarian_miou(&pred, &gt, 3, 3);
        assert_eq!(s.miou, 1.0);
        assert_eq!(s.cluster_to_class, vec![Some(2), Some(0), Some(1)]);
        // Unmatched, the same prediction scores 0 on every class.
        let c = confusion(&pred, &gt, 3, 3);
        let (m, _) = miou(&c.counts, 3);
        assert_eq!(m, 0.0);
    }

    #[test]
    fn ignored_pixels_do_not_count() {
        // The last three pixels are ignored: the prediction is wrong there on purpose.
        let gt = [0, 0, 1, 1, I, I, I];
        let pred = [1, 1, 0, 0, 0, 1, 0];
        let s = hungarian_miou(&pred, &gt, 2, 2);
        assert_eq!(s.miou, 1.0);
        let c = confusion(&pred, &gt, 2, 2);
        assert_eq!(c.counts.iter().sum::<u64>(), 4);
    }

    #[test]
    fn class_missing_from_prediction() {
        // Three classes, but the prediction uses two clusters only: class 2 is all missed.
        let gt = [0, 0, 0, 1, 1, 1, 2, 2];
        let pred = [0, 0, 0, 1, 1, 1, 1, 1];
        let s = hungarian_miou(&pred, &gt, 3, 3);
        // Class 0 exact; class 1: TP 3 of union 5; class 2 gets the unused cluster 2: IoU 0.
        assert!(close(s.per_class[0], 1.0));
        assert!(close(s.per_class[1], 3.0 / 5.0));
        assert_eq!(s.per_class[2], 0.0);
        assert!(close(s.miou, (1.0 + 0.6 + 0.0) / 3.0));
    }

    #[test]
    fn class_absent_from_both_is_left_out() {
        // Four classes, class 3 occurs nowhere: the mean is over classes 0..3 only.
        let gt = [0, 0, 1, 1, 2, 2];
        let pred = [0, 0, 1, 1, 2, 1];
        let (m, per) = miou(&confusion(&pred, &gt, 4, 4).counts, 4);
        assert!(per[3].is_nan());
        let want = (1.0 + 2.0 / 3.0 + 1.0 / 2.0) / 3.0;
        assert!(close(m, want), "{m} vs {want}");
        // Nothing evaluated at all: no classes, NaN mean.
        let (m, _) = miou(&confusion(&[0, 1], &[I, I], 2, 2).counts, 2);
        assert!(m.is_nan());
    }

    #[test]
    fn more_clusters_than_classes_under_hungarian() {
        // K = 3 clusters for 2 classes: cluster 2 (a quarter of class 1) is left unmatched
        // and its pixel counts as a miss for class 1.
        let gt = [0, 0, 1, 1, 1, 1];
        let pred = [0, 0, 1, 1, 1, 2];
        let s = hungarian_miou(&pred, &gt, 3, 2);
        assert_eq!(s.cluster_to_class, vec![Some(0), Some(1), None]);
        assert!(close(s.per_class[1], 0.75));
        assert!(close(s.miou, 0.875));
    }

    #[test]
    fn overclustering_merges_two_clusters_into_one_class() {
        // Class 0 is split into clusters 0 and 3, class 1 is cluster 1 except one pixel of
        // cluster 2; cluster 2 is mostly class 2.
        let gt = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, I, I];
        let pred = [0, 0, 3, 3, 1, 1, 2, 2, 2, 2, 3, 1];
        let s = overclustering_miou(&pred, &gt, 4, 3);
        assert_eq!(s.cluster_to_class, vec![Some(0), Some(1), Some(2), Some(0)]);
        // Class 0: clusters 0 + 3 cover it exactly. Class 1: TP 2, FN 1 (the pixel of
        // cluster 2). Class 2: TP 3, FP 1.
        assert!(close(s.per_class[0], 1.0));
        assert!(close(s.per_class[1], 2.0 / 3.0));
        assert!(close(s.per_class[2], 3.0 / 4.0));
        assert!(close(s.miou, (1.0 + 2.0 / 3.0 + 0.75) / 3.0));
        // One-to-one matching of the same map must drop one half of class 0.
        let h = hungarian_miou(&pred, &gt, 4, 3);
        assert!(h.miou < s.miou);
    }

    #[test]
    fn overclustering_leaves_fully_ignored_clusters_unmapped() {
        let gt = [0, 1, I, I];
        let pred = [0, 1, 2, 2];
        let s = overclustering_miou(&pred, &gt, 3, 2);
        assert_eq!(s.cluster_to_class, vec![Some(0), Some(1), None]);
        assert_eq!(s.miou, 1.0);
    }

    #[test]
    fn hungarian_after_greedy_merge_is_the_identity() {
        // The claim in `overclustering_score`: on random maps, Hungarian matching of the
        // merged (class x class) matrix finds nothing better than the identity.
        let mut rng = mosic::rng::SplitMix64::new(5);
        for _ in 0..200 {
            let (k, classes) = (2 + rng.below(12) as usize, 2 + rng.below(5) as usize);
            let len = 1 + rng.below(300) as usize;
            let gt: Vec<u32> = (0..len)
                .map(|_| if rng.below(10) == 0 { I } else { rng.below(classes as u64) as u32 })
                .collect();
            // Noisy clusters correlated with the classes.
            let pred: Vec<u32> = gt
                .iter()
                .map(|&g| {
                    let base = if g == I { 0 } else { g as u64 * 3 };
                    ((base + rng.below(4)) % k as u64) as u32
                })
                .collect();
            let conf = confusion(&pred, &gt, k, classes);
            let s = overclustering_score(&conf);
            let merged = conf.merge(&s.cluster_to_class);
            let square: Vec<f64> = merged[..classes * classes].iter().map(|&c| c as f64).collect();
            let best = hungarian::assignment_cost(
                &square,
                classes,
                &hungarian::maximize(&square, classes, classes),
            );
            let identity: f64 = (0..classes).map(|c| square[c * classes + c]).sum();
            assert_eq!(best, identity);
        }
    }
}
