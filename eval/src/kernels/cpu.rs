//! [`Products`] on this machine's CPU: the fused search kernel for the bank search and the
//! k-means assignment, one sgemm for the Gram matrix.

use super::products::{offer, Products, Queries, TopK};
use anyhow::Result;
use rayon::prelude::*;

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
        Ok(super::search::nearest_centroids(data, dim, centroids))
    }

    fn gram(&self, x: &[f32], dim: usize) -> Result<Vec<f64>> {
        Ok(gram(x, dim))
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
        let found = crate::kernels::search::search(self.queries, bank, self.dim, k);
        top.par_iter_mut().zip(found).for_each(|(t, hits)| {
            for (s, j) in hits {
                offer(t, k, (s, first + j));
            }
        });
        Ok(())
    }
}

/// `X^T X` of one block of rows, an f32 GEMM widened to f64.
pub fn gram(x: &[f32], dim: usize) -> Vec<f64> {
    let n = x.len() / dim;
    let mut g = vec![0.0f32; dim * dim];
    // SAFETY: the strides describe the row-major `n x dim` block and the `dim x dim` output.
    unsafe {
        matrixmultiply::sgemm(
            dim,
            n,
            dim,
            1.0,
            x.as_ptr(),
            1,
            dim as isize,
            x.as_ptr(),
            dim as isize,
            1,
            0.0,
            g.as_mut_ptr(),
            dim as isize,
            1,
        );
    }
    g.into_iter().map(|v| v as f64).collect()
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
