//! The heavy products of the protocols: exact top-k search against a memory bank, the k-means
//! assignment step and the Gram matrix of PCA. [`Cpu`] computes them here; the trainer gives
//! an implementation on a Burn backend's device (`cuda`, `tch`, or `flex` on the CPU), so the
//! protocols run their products where the model runs while this crate stays free of any
//! deep-learning framework. Every implementation returns the same neighbours (ties broken by
//! the lower bank index) and the same labels.

use crate::data::dense::FeatureMap;
use crate::data::Mask;
use crate::kernels::probe::LinearProbe;
use anyhow::Result;

/// A running top-k list: best first (larger similarity; on equal similarity the lower index).
pub type TopK = Vec<(f32, usize)>;

/// Whether candidate `a` ranks above `b`.
pub fn better(a: (f32, usize), b: (f32, usize)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Inserts a candidate into a top-`k` list.
pub fn offer(top: &mut TopK, k: usize, c: (f32, usize)) {
    if k == 0 || (top.len() == k && !better(c, top[k - 1])) {
        return;
    }
    let pos = top.partition_point(|&t| better(t, c));
    top.insert(pos, c);
    top.truncate(k);
}

pub trait Products: Sync {
    /// Where the products run, for messages and protocol cards.
    fn name(&self) -> String;

    /// A block of queries (`queries`, `q x dim`) made ready where the products run, to be fed
    /// the bank tile by tile. The block borrows `queries`, so they cannot change while it is
    /// searched: an implementation may keep its own copy for the block's whole life.
    fn queries<'a>(&'a self, queries: &'a [f32], dim: usize) -> Result<Box<dyn Queries + 'a>>;

    /// For every row of `data`: the nearest centroid in L2 (the lower index on a tie) and the
    /// squared distance to it.
    fn nearest_centroids(
        &self,
        data: &[f32],
        dim: usize,
        centroids: &[f32],
    ) -> Result<(Vec<u32>, Vec<f32>)>;

    /// `X^T X` of the rows of `x` (`dim x dim`, row-major), accumulated in f64.
    fn gram(&self, x: &[f32], dim: usize) -> Result<Vec<f64>>;

    /// The linear probe's mean cross-entropy over a batch and its gradient (weight, bias), as
    /// [`LinearProbe::loss_and_grad`] defines them.
    fn probe_grad(
        &self,
        probe: &LinearProbe,
        batch: &[(&FeatureMap, &Mask)],
    ) -> Result<(f64, Vec<f32>, Vec<f32>)> {
        Ok(probe.loss_and_grad(batch))
    }
}

/// A query block of [`Products::queries`].
pub trait Queries {
    /// Feeds bank rows `first..first + n` (`bank`, `n x dim`) to the running top-`k` of every
    /// query of the block (`top.len() == q`), by inner product.
    fn search_tile(&mut self, bank: &[f32], first: usize, k: usize, top: &mut [TopK])
        -> Result<()>;
}
