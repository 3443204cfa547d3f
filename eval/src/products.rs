//! The heavy products of the protocols: exact top-k search against a memory bank, the k-means
//! assignment step and the Gram matrix of PCA. [`Cpu`] computes them here; the trainer gives
//! an implementation on a Burn backend's device (`cuda`, `tch`, or `flex` on the CPU), so the
//! protocols run their products where the model runs while this crate stays free of any
//! deep-learning framework. Every implementation returns the same neighbours (ties broken by
//! the lower bank index) and the same labels.

use crate::data::Mask;
use crate::dense::FeatureMap;
use crate::linear::LinearProbe;
use anyhow::Result;
use rayon::prelude::*;

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

/// The products on this machine's CPU (all cores).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Products for Cpu {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn queries<'a>(&'a self, queries: &'a [f32], dim: usize) -> Result<Box<dyn Queries + 'a>> {
        Ok(Box::new(CpuQueries { queries, dim }))
    }

    fn nearest_centroids(
        &self,
        data: &[f32],
        dim: usize,
        centroids: &[f32],
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        Ok(crate::kmeans::nearest_centroids(data, dim, centroids))
    }

    fn gram(&self, x: &[f32], dim: usize) -> Result<Vec<f64>> {
        Ok(crate::pca::gram(x, dim))
    }
}

struct CpuQueries<'a> {
    queries: &'a [f32],
    dim: usize,
}

impl Queries for CpuQueries<'_> {
    fn search_tile(
        &mut self,
        bank: &[f32],
        first: usize,
        k: usize,
        top: &mut [TopK],
    ) -> Result<()> {
        // The tile's own top-k on the fused kernel, then merged into the running lists.
        let found = crate::search::search(self.queries, bank, self.dim, k);
        top.par_iter_mut().zip(found).for_each(|(t, hits)| {
            for (s, j) in hits {
                offer(t, k, (s, first + j));
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_give_the_whole_search_with_ties_by_index() {
        // Unit vectors on a few directions, so that many similarities tie exactly.
        let dim = 4;
        let dirs = [[1.0f32, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]];
        let bank: Vec<f32> = (0..50).flat_map(|i| dirs[i % 3]).collect();
        let queries: Vec<f32> = dirs.iter().flatten().copied().collect();
        let k = 7;
        let mut whole = vec![TopK::new(); 3];
        Cpu.queries(&queries, dim).unwrap().search_tile(&bank, 0, k, &mut whole).unwrap();
        let mut blocks = vec![TopK::new(); 3];
        let mut q = Cpu.queries(&queries, dim).unwrap();
        for (b, chunk) in bank.chunks(dim * 9).enumerate() {
            q.search_tile(chunk, b * 9, k, &mut blocks).unwrap();
        }
        assert_eq!(whole, blocks);
        // Brute force: sort all by (similarity desc, index asc).
        for (qi, q) in queries.chunks(dim).enumerate() {
            let mut all: Vec<(f32, usize)> = bank
                .chunks(dim)
                .enumerate()
                .map(|(j, b)| (q.iter().zip(b).map(|(a, b)| a * b).sum(), j))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            assert_eq!(whole[qi], all, "query {qi}");
        }
    }
}
