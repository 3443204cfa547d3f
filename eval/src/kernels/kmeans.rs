//! Seeded k-means (k-means++ initialisation, Lloyd iterations) on row-major f32 points.
//!
//! Determinism: every parallel step either computes per-point results independently
//! (assignment, k-means++ distances) or sums fixed-size chunks whose partial sums are then
//! added in chunk order, so the result depends on the seed only, never on the thread count.
//! Running several seeds and keeping the lowest inertia is left to the caller.

use mosic::rng::SplitMix64;
use rayon::prelude::*;

/// Relative tolerance used by [`kmeans`]: stop once the summed squared centroid shift is at
/// most `tol * mean per-dimension variance of the data` (the scikit-learn convention, so
/// the threshold does not depend on the data's scale).
pub const DEFAULT_TOL: f64 = 1e-4;

/// Points per chunk for the parallel centroid sums. Fixed (not derived from the thread
/// count) so the floating-point summation order is always the same.
const SUM_CHUNK: usize = 4096;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KMeans {
    /// Row-major `k x dim`.
    pub centroids: Vec<f32>,
    /// Index of the nearest centroid for each point.
    pub labels: Vec<u32>,
    /// Sum of squared distances of the points to their centroids.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub iterations: usize,
}

/// k-means of `n` points of dimension `dim` into `k` clusters with at most `iters` Lloyd
/// iterations and the [`DEFAULT_TOL`] stopping rule.
pub fn kmeans(data: &[f32], n: usize, dim: usize, k: usize, seed: u64, iters: usize) -> KMeans {
    kmeans_with_tol(data, n, dim, k, seed, iters, DEFAULT_TOL)
}

/// [`kmeans`] with an explicit relative tolerance (0 runs until the centroids stop moving
/// or `iters` is reached).
pub fn kmeans_with_tol(
    data: &[f32],
    n: usize,
    dim: usize,
    k: usize,
    seed: u64,
    iters: usize,
    tol: f64,
) -> KMeans {
    assert_eq!(data.len(), n * dim, "data has {} values, not {n}x{dim}", data.len());
    assert!(dim > 0, "dim must be positive");
    assert!(k >= 1 && k <= n, "need 1 <= k <= n (k = {k}, n = {n})");

    let mut rng = SplitMix64::new(seed);
    let mut centroids = kmeans_plus_plus(data, n, dim, k, &mut rng);
    let shift_tol = tol * mean_variance(data, n, dim);

    let mut iterations = 0;
    for _ in 0..iters {
        iterations += 1;
        let (mut labels, d2) = assign(data, dim, &centroids, k);
        reseed_empty(data, dim, k, &mut centroids, &mut labels, &d2);
        let updated = update(data, dim, k, &labels, &centroids);
        let shift: f64 =
            updated.iter().zip(&centroids).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        centroids = updated;
        if shift <= shift_tol {
            break;
        }
    }

    // A final assignment so labels and inertia describe the returned centroids.
    let (labels, d2) = assign(data, dim, &centroids, k);
    let inertia = d2.iter().map(|&d| d as f64).sum();
    KMeans { centroids, labels, inertia, iterations }
}

fn point(data: &[f32], dim: usize, i: usize) -> &[f32] {
    &data[i * dim..(i + 1) * dim]
}

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Mean over dimensions of the per-dimension variance, in f64.
fn mean_variance(data: &[f32], n: usize, dim: usize) -> f64 {
    let mut mean = vec![0.0f64; dim];
    for row in data.chunks_exact(dim) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = 0.0f64;
    for row in data.chunks_exact(dim) {
        for (m, &x) in mean.iter().zip(row) {
            var += (x as f64 - m).powi(2);
        }
    }
    var / (n * dim) as f64
}

/// k-means++: the first centre uniformly, each next one with probability proportional to
/// the squared distance to the nearest centre chosen so far.
fn kmeans_plus_plus(
    data: &[f32],
    n: usize,
    dim: usize,
    k: usize,
    rng: &mut SplitMix64,
) -> Vec<f32> {
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.below(n as u64) as usize;
    centroids.extend_from_slice(point(data, dim, first));
    let mut nearest: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| sq_dist(point(data, dim, i), point(data, dim, first)))
        .collect();

    for _ in 1..k {
        // The cumulative sum runs sequentially in point order: the draw must not depend on
        // how the work was split.
        let total: f64 = nearest.iter().map(|&d| d as f64).sum();
        let next = if total > 0.0 {
            let target = rng.next_f64() * total;
            let mut acc = 0.0f64;
            let mut chosen = None;
            for (i, &d) in nearest.iter().enumerate() {
                acc += d as f64;
                if acc > target && d > 0.0 {
                    chosen = Some(i);
                    break;
                }
            }
            // Rounding can leave `target` just above the last partial sum: take the last
            // point with positive weight.
            chosen.unwrap_or_else(|| nearest.iter().rposition(|&d| d > 0.0).unwrap())
        } else {
            // Every point coincides with a centre already: any choice is as good.
            rng.below(n as u64) as usize
        };
        let c = point(data, dim, next).to_vec();
        nearest.par_iter_mut().enumerate().for_each(|(i, d)| {
            *d = d.min(sq_dist(point(data, dim, i), &c));
        });
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// Nearest centroid (lowest index on ties) and its squared distance for every point.
fn assign(data: &[f32], dim: usize, centroids: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    data.par_chunks_exact(dim)
        .map(|x| {
            let mut best = (0u32, f32::INFINITY);
            for c in 0..k {
                let d = sq_dist(x, &centroids[c * dim..(c + 1) * dim]);
                if d < best.1 {
                    best = (c as u32, d);
                }
            }
            best
        })
        .unzip()
}

/// Moves each empty cluster onto one of the points farthest from their own centroid
/// (farthest first, lowest index on ties) and relabels that point. The moved point's
/// distance is no longer counted as "far", so two empty clusters never take the same point.
fn reseed_empty(
    data: &[f32],
    dim: usize,
    k: usize,
    centroids: &mut [f32],
    labels: &mut [u32],
    d2: &[f32],
) {
    let mut counts = vec![0usize; k];
    for &l in labels.iter() {
        counts[l as usize] += 1;
    }
    let empty: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
    if empty.is_empty() {
        return;
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| d2[b].total_cmp(&d2[a]).then(a.cmp(&b)));
    let mut candidates = order.into_iter();
    for c in empty {
        // Skip points that are alone in their cluster: taking them would empty it instead.
        let Some(p) = candidates.by_ref().find(|&p| counts[labels[p] as usize] > 1) else {
            break;
        };
        counts[labels[p] as usize] -= 1;
        counts[c] += 1;
        labels[p] = c as u32;
        centroids[c * dim..(c + 1) * dim].copy_from_slice(point(data, dim, p));
    }
}

/// New centroids as the means of their points, summed in f64 over fixed chunks. A cluster
/// left without points (possible only if re-seeding ran out of candidates) keeps its centre.
fn update(data: &[f32], dim: usize, k: usize, labels: &[u32], old: &[f32]) -> Vec<f32> {
    let partials: Vec<(Vec<f64>, Vec<usize>)> = data
        .par_chunks(SUM_CHUNK * dim)
        .zip(labels.par_chunks(SUM_CHUNK))
        .map(|(rows, labs)| {
            let mut sums = vec![0.0f64; k * dim];
            let mut counts = vec![0usize; k];
            for (x, &l) in rows.chunks_exact(dim).zip(labs) {
                let l = l as usize;
                counts[l] += 1;
                for (s, &v) in sums[l * dim..(l + 1) * dim].iter_mut().zip(x) {
                    *s += v as f64;
                }
            }
            (sums, counts)
        })
        .collect();

    let mut sums = vec![0.0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (s, c) in &partials {
        sums.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
    }
    let mut centroids = old.to_vec();
    for c in 0..k {
        if counts[c] > 0 {
            for j in 0..dim {
                centroids[c * dim + j] = (sums[c * dim + j] / counts[c] as f64) as f32;
            }
        }
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per` points around each of `centres` (2-D), jittered by at most `spread`.
    fn blobs(centres: &[[f32; 2]], per: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = SplitMix64::new(seed);
        let mut data = Vec::new();
        let mut truth = Vec::new();
        for i in 0..per * centres.len() {
            // Interleave blobs so cluster membership is unrelated to point order.
            let b = i % centres.len();
            for c in centres[b] {
                data.push(c + rng.uniform(-spread as f64, spread as f64) as f32);
            }
            truth.push(b);
        }
        (data, truth)
    }

    const CENTRES: [[f32; 2]; 4] = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];

    #[test]
    fn recovers_separated_blobs() {
        let (data, truth) = blobs(&CENTRES, 50, 1.0, 3);
        let n = truth.len();
        // k-means++ can still put two seeds in one blob; several seeds, best inertia, as
        // the evaluation protocol does.
        let best = (0..5)
            .map(|s| kmeans(&data, n, 2, 4, s, 100))
            .min_by(|a, b| a.inertia.total_cmp(&b.inertia))
            .unwrap();
        // Each blob maps to exactly one cluster and vice versa.
        let mut blob_of_cluster = [None; 4];
        for (i, &l) in best.labels.iter().enumerate() {
            let slot = &mut blob_of_cluster[l as usize];
            assert!(slot.is_none() || *slot == Some(truth[i]), "cluster {l} mixes blobs");
            *slot = Some(truth[i]);
        }
        assert!(blob_of_cluster.iter().all(Option::is_some));
        for (c, b) in blob_of_cluster.iter().enumerate() {
            let centre = CENTRES[b.unwrap()];
            let got = &best.centroids[c * 2..c * 2 + 2];
            assert!((got[0] - centre[0]).abs() < 0.5 && (got[1] - centre[1]).abs() < 0.5);
        }
        // Inertia is the sum of squared jitters: under 2 per point with spread 1.
        assert!(best.inertia < 2.0 * n as f64);
    }

    #[test]
    fn deterministic_for_a_seed_and_any_thread_count() {
        let (data, truth) = blobs(&CENTRES, 3000, 4.0, 9);
        let n = truth.len();
        let a = kmeans(&data, n, 2, 6, 11, 50);
        let b = kmeans(&data, n, 2, 6, 11, 50);
        assert_eq!(a, b);
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let c = pool.install(|| kmeans(&data, n, 2, 6, 11, 50));
            assert_eq!(a, c, "{threads} threads");
        }
        let other = kmeans(&data, n, 2, 6, 12, 50);
        assert_ne!(a.centroids, other.centroids);
    }

    #[test]
    fn duplicates_and_k_equal_n() {
        // Fewer distinct points than clusters: k-means++ runs out of positive weights and
        // clusters go empty; re-seeding must keep everything valid.
        let data = [1.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0];
        let r = kmeans(&data, 4, 2, 3, 0, 10);
        assert_eq!(r.labels.len(), 4);
        assert!(r.labels.iter().all(|&l| l < 3));
        assert_eq!(r.inertia, 0.0);
        // k = n: every point its own cluster.
        let data = [0.0f32, 1.0, 2.0, 3.0];
        let r = kmeans(&data, 4, 1, 4, 5, 10);
        let mut l = r.labels.clone();
        l.sort();
        assert_eq!(l, vec![0, 1, 2, 3]);
        assert_eq!(r.inertia, 0.0);
    }

    #[test]
    fn empty_cluster_takes_the_farthest_point() {
        // Cluster 1's centre is far from every point, so it starts empty; point 3 is the
        // farthest from centre 0 and must be moved there.
        let data = [0.0f32, 0.1, 0.2, 5.0];
        let mut centroids = vec![0.0f32, 100.0];
        let (mut labels, d2) = assign(&data, 1, &centroids, 2);
        assert_eq!(labels, vec![0, 0, 0, 0]);
        reseed_empty(&data, 1, 2, &mut centroids, &mut labels, &d2);
        assert_eq!(labels, vec![0, 0, 0, 1]);
        assert_eq!(centroids, vec![0.0, 5.0]);
    }
}

/// FAISS's k-means (`faiss.Kmeans`, the `Clustering` class), as Leopart and TimeT run it:
/// - more than `max_points_per_centroid` x k points: fitted on a random sample of that many;
/// - each of `nredo` runs starts from k distinct random points and does exactly `niter`
///   Lloyd iterations (no early stop); a cluster left empty is re-seeded by splitting a
///   non-empty one picked with probability (size - 1) / (n - k), both centroids nudged by
///   +-1/1024 in alternating coordinates;
/// - the run with the lowest objective (summed squared distances of its last assignment)
///   wins.
///
/// The random draws come from our own generator, not FAISS's, so centroids differ from
/// FAISS's by the choice of starting points only: on clusterable data the result is the same
/// partition.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaissParams {
    pub niter: usize,
    pub nredo: usize,
    pub seed: u64,
    pub max_points_per_centroid: usize,
}

impl FaissParams {
    pub fn new(niter: usize, nredo: usize, seed: u64) -> Self {
        Self { niter, nredo, seed, max_points_per_centroid: 256 }
    }
}

/// Centroids (`k x dim`) and the objective of the winning run.
#[derive(Clone, Debug, PartialEq)]
pub struct FaissKMeans {
    pub centroids: Vec<f32>,
    pub objective: f64,
}

/// Nearest centroid (lowest index on ties) and squared distance of every row of `data`,
/// computed as FAISS's flat L2 index does: |x|^2 + |c|^2 - 2 x.c, here on the fused kernel of
/// [`crate::kernels::search`] (each x.c one fixed chain of multiply-adds, so labels do not depend on the
/// thread count).
pub fn nearest_centroids(data: &[f32], dim: usize, centroids: &[f32]) -> (Vec<u32>, Vec<f32>) {
    crate::kernels::search::nearest_centroids(data, dim, centroids)
}

/// FAISS-style k-means of the rows of `data` (see [`FaissParams`]).
pub fn faiss_kmeans(data: &[f32], dim: usize, k: usize, p: &FaissParams) -> FaissKMeans {
    faiss_kmeans_on(&crate::kernels::cpu::Cpu, data, dim, k, p).expect("the CPU assignment")
}

/// [`faiss_kmeans`] with the assignment step (the product of points and centroids) where
/// `products` computes it, e.g. on the evaluated model's device.
pub fn faiss_kmeans_on(
    products: &dyn crate::kernels::products::Products,
    data: &[f32],
    dim: usize,
    k: usize,
    p: &FaissParams,
) -> anyhow::Result<FaissKMeans> {
    let n = data.len() / dim;
    assert!(dim > 0 && data.len() == n * dim, "data is not rows of {dim} values");
    assert!(k >= 1 && k <= n, "k-means needs 1 <= k <= n (k = {k}, n = {n})");
    let cap = p.max_points_per_centroid.saturating_mul(k);
    let sample: Vec<f32>;
    let (x, n) = if n > cap {
        let mut idx: Vec<usize> = (0..n).collect();
        SplitMix64::stream(p.seed, 0xfa15).shuffle(&mut idx);
        idx.truncate(cap);
        sample = idx.iter().flat_map(|&i| point(data, dim, i).iter().copied()).collect();
        (&sample[..], cap)
    } else {
        (data, n)
    };
    if n == k {
        return Ok(FaissKMeans { centroids: x.to_vec(), objective: 0.0 });
    }
    let mut best: Option<FaissKMeans> = None;
    for redo in 0..p.nredo.max(1) {
        let mut perm: Vec<usize> = (0..n).collect();
        SplitMix64::stream(p.seed, 1 + redo as u64).shuffle(&mut perm);
        let mut centroids: Vec<f32> =
            perm[..k].iter().flat_map(|&i| point(x, dim, i).iter().copied()).collect();
        let mut split_rng = SplitMix64::new(1234);
        let mut objective = 0.0f64;
        for _ in 0..p.niter {
            let (labels, d2) = products.nearest_centroids(x, dim, &centroids)?;
            objective = d2.iter().map(|&d| d as f64).sum();
            let counts = means(x, dim, k, &labels, &mut centroids);
            split_empty(dim, k, n, counts, &mut centroids, &mut split_rng);
        }
        if best.as_ref().is_none_or(|b| objective < b.objective) {
            best = Some(FaissKMeans { centroids, objective });
        }
    }
    Ok(best.expect("at least one run"))
}

/// Centroids as the means of their points (f64 sums over fixed chunks); an empty cluster
/// gets the zero vector, as in FAISS, until [`split_empty`] moves it. Returns the counts.
fn means(x: &[f32], dim: usize, k: usize, labels: &[u32], centroids: &mut [f32]) -> Vec<usize> {
    let partials: Vec<(Vec<f64>, Vec<usize>)> = x
        .par_chunks(SUM_CHUNK * dim)
        .zip(labels.par_chunks(SUM_CHUNK))
        .map(|(rows, labs)| {
            let mut sums = vec![0.0f64; k * dim];
            let mut counts = vec![0usize; k];
            for (r, &l) in rows.chunks_exact(dim).zip(labs) {
                let l = l as usize;
                counts[l] += 1;
                sums[l * dim..(l + 1) * dim].iter_mut().zip(r).for_each(|(s, &v)| *s += v as f64);
            }
            (sums, counts)
        })
        .collect();
    let mut sums = vec![0.0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (s, c) in &partials {
        sums.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
    }
    for c in 0..k {
        for j in 0..dim {
            centroids[c * dim + j] =
                if counts[c] > 0 { (sums[c * dim + j] / counts[c] as f64) as f32 } else { 0.0 };
        }
    }
    counts
}

/// FAISS's `split_clusters`.
fn split_empty(
    dim: usize,
    k: usize,
    n: usize,
    counts: Vec<usize>,
    centroids: &mut [f32],
    rng: &mut SplitMix64,
) {
    const EPS: f32 = 1.0 / 1024.0;
    let mut h: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    for ci in 0..k {
        if h[ci] != 0.0 {
            continue;
        }
        let mut cj = 0;
        loop {
            let p = (h[cj] - 1.0) / (n - k) as f64;
            if rng.next_f64() < p {
                break;
            }
            cj = (cj + 1) % k;
        }
        let src = centroids[cj * dim..(cj + 1) * dim].to_vec();
        centroids[ci * dim..(ci + 1) * dim].copy_from_slice(&src);
        for j in 0..dim {
            let (a, b) = if j % 2 == 0 { (1.0 + EPS, 1.0 - EPS) } else { (1.0 - EPS, 1.0 + EPS) };
            centroids[ci * dim + j] *= a;
            centroids[cj * dim + j] *= b;
        }
        h[ci] = h[cj] / 2.0;
        h[cj] -= h[ci];
    }
}

#[cfg(test)]
mod faiss_tests {
    use super::*;

    #[test]
    fn faiss_kmeans_separates_blobs_and_is_deterministic() {
        let mut rng = SplitMix64::new(7);
        let centres = [
            [0.0f32, 0.0, 0.0],
            [8.0, 0.0, 0.0],
            [0.0, 8.0, 0.0],
            [0.0, 0.0, 8.0],
            [8.0, 8.0, 8.0],
        ];
        let data: Vec<f32> = (0..5000)
            .flat_map(|i| centres[i % 5].map(|c| c + rng.uniform(-1.0, 1.0) as f32))
            .collect();
        let p = FaissParams::new(20, 5, 1);
        let a = faiss_kmeans(&data, 3, 5, &p);
        assert_eq!(a, faiss_kmeans(&data, 3, 5, &p));
        let (labels, _) = nearest_centroids(&data, 3, &a.centroids);
        // Every blob is one cluster.
        for b in 0..5 {
            let l = labels[b];
            assert!(labels.iter().skip(b).step_by(5).all(|&x| x == l), "blob {b} split");
        }
        let mut distinct: Vec<u32> = labels[..5].to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 5);
        // Sampled fit (5000 > 4 x 256) still finds them.
        let small = FaissParams { max_points_per_centroid: 100, ..p };
        let s = faiss_kmeans(&data, 3, 5, &small);
        let (l2, _) = nearest_centroids(&data, 3, &s.centroids);
        let mut d2: Vec<u32> = l2[..5].to_vec();
        d2.sort();
        d2.dedup();
        assert_eq!(d2.len(), 5);
    }

    #[test]
    fn empty_clusters_are_split() {
        // Two distinct points, duplicated: 3 clusters must still all be used afterwards.
        let data = [0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 0.1, 0.0];
        let r = faiss_kmeans(&data, 2, 3, &FaissParams::new(10, 1, 0));
        assert!(r.centroids.iter().all(|v| v.is_finite()));
        let (_, d) = nearest_centroids(&data, 2, &r.centroids);
        assert!(d.iter().sum::<f32>() < 0.1, "{:?}", r.centroids);
    }

    #[test]
    fn gemm_search_matches_the_direct_one() {
        let mut rng = SplitMix64::new(3);
        let data: Vec<f32> = (0..5000 * 7).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let cent: Vec<f32> = (0..9 * 7).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let (l, d) = nearest_centroids(&data, 7, &cent);
        let (l2, d2) = assign(&data, 7, &cent, 9);
        let differ = l.iter().zip(&l2).filter(|(a, b)| a != b).count();
        assert!(differ <= 2, "{differ}");
        assert!(d.iter().zip(&d2).all(|(a, b)| (a - b).abs() < 1e-4));
    }
}
