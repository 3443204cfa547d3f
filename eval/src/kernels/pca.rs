//! Feature preprocessing of the reference clustering protocols (`normalize_and_transform` in
//! Leopart's `experiments/utils.py` and TimeT's `my_utils.py`): per-dimension standardisation
//! as scikit-learn's `StandardScaler` (mean and population std, a zero std left at 1), then a
//! projection onto the leading principal axes as FAISS's `PCAMatrix` (centred covariance,
//! eigenvectors of the largest eigenvalues, no whitening, fitted on at most 1000 points per
//! input dimension).

use crate::kernels::{cpu::Cpu, products::Products};
use mosic::rng::SplitMix64;
use rayon::prelude::*;

/// Output dimension of the reference protocols' PCA.
pub const PCA_DIM: usize = 50;

/// FAISS's `PCAMatrix::max_points_per_d`: the fit uses at most this many points per input dimension.
pub const MAX_POINTS_PER_DIM: usize = 1000;

/// `StandardScaler` statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Mean and population standard deviation of every column, in f64.
    pub fn fit(data: &[f32], dim: usize) -> Self {
        let n = data.len() / dim;
        assert!(n > 0 && data.len() == n * dim, "no rows to standardise");
        let (sum, sq) = column_moments(data, dim);
        Self::from_moments(&sum, &sq, n)
    }

    /// From column sums and sums of squares over `n` rows.
    pub fn from_moments(sum: &[f64], sq: &[f64], n: usize) -> Self {
        let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
        let scale = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let var = (q / n as f64 - m * m).max(0.0);
                let s = var.sqrt();
                // scikit-learn's `_handle_zeros_in_scale`.
                if s < 10.0 * f64::EPSILON {
                    1.0
                } else {
                    s
                }
            })
            .collect();
        Self { mean, scale }
    }

    /// `(x - mean) / scale` in place, rounded to f32 after each step as NumPy does on a
    /// float32 array.
    pub fn apply(&self, data: &mut [f32]) {
        let dim = self.mean.len();
        data.par_chunks_mut(dim).for_each(|row| {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                let centred = (*x as f64 - m) as f32;
                *x = (centred as f64 / s) as f32;
            }
        });
    }
}

/// Rows per partial sum of [`column_moments`]; a streamed pass folds the partials of blocks
/// that are multiples of it and gets the same sums.
pub const MOMENT_BLOCK: usize = 4096;

/// Column sums and sums of squares in f64 (fixed chunk order, so thread-count independent).
fn column_moments(data: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let mut s = vec![0.0f64; dim];
    let mut q = vec![0.0f64; dim];
    for (ps, pq) in column_partials(data, dim) {
        s.iter_mut().zip(&ps).for_each(|(a, b)| *a += b);
        q.iter_mut().zip(&pq).for_each(|(a, b)| *a += b);
    }
    (s, q)
}

/// The partial column sums and sums of squares of every [`MOMENT_BLOCK`] rows, in order.
pub fn column_partials(data: &[f32], dim: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    data.par_chunks(MOMENT_BLOCK * dim)
        .map(|rows| {
            let mut s = vec![0.0f64; dim];
            let mut q = vec![0.0f64; dim];
            for row in rows.chunks_exact(dim) {
                for ((s, q), &x) in s.iter_mut().zip(q.iter_mut()).zip(row) {
                    *s += x as f64;
                    *q += x as f64 * x as f64;
                }
            }
            (s, q)
        })
        .collect()
}

/// A linear map `y = A x + b` onto the leading principal axes.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    pub dim_in: usize,
    pub dim_out: usize,
    /// Row-major `dim_out x dim_in`, one principal axis per row, largest eigenvalue first.
    pub matrix: Vec<f32>,
    /// `-A mean`.
    pub bias: Vec<f32>,
    /// Eigenvalues of the kept axes (of the summed, not averaged, covariance).
    pub eigenvalues: Vec<f64>,
}

impl Pca {
    /// Fits on `data` (rows of `dim` values); with more than [`MAX_POINTS_PER_DIM`] x `dim` rows,
    /// on a seeded sample of that many (FAISS draws its own sample; which rows does not matter
    /// beyond sampling noise).
    pub fn fit(data: &[f32], dim: usize, dim_out: usize) -> Self {
        Self::fit_on(data, dim, dim_out, &Cpu)
    }

    /// [`Pca::fit`] with the covariance's products on `products`.
    pub fn fit_on(data: &[f32], dim: usize, dim_out: usize, products: &dyn Products) -> Self {
        let n = data.len() / dim;
        let sample: Vec<f32>;
        let x = match sample_rows(n, dim) {
            Some(idx) => {
                sample = idx
                    .iter()
                    .flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied())
                    .collect();
                &sample[..]
            }
            None => data,
        };
        Self::fit_sample(x, dim, dim_out, products)
    }

    /// The fit on the rows [`sample_rows`] chose (or all rows).
    pub fn fit_sample(x: &[f32], dim: usize, dim_out: usize, products: &dyn Products) -> Self {
        let n = x.len() / dim;
        assert!(dim_out <= dim, "PCA to {dim_out} dims of {dim}-dim features");
        assert!(n >= dim, "PCA needs at least as many points ({n}) as dimensions ({dim})");
        let (sum, _) = column_moments(x, dim);
        let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
        // Centred scatter matrix X^T X - n m m^T, accumulated in f64 over f32 GEMM blocks.
        let cov = scatter(x, dim, &mean, products);
        let eig = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(dim, dim, &cov));
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]).then(a.cmp(&b)));
        let mut matrix = Vec::with_capacity(dim_out * dim);
        let mut eigenvalues = Vec::with_capacity(dim_out);
        for &o in order.iter().take(dim_out) {
            eigenvalues.push(eig.eigenvalues[o]);
            matrix.extend(eig.eigenvectors.column(o).iter().map(|&v| v as f32));
        }
        let bias = (0..dim_out)
            .map(|r| -(0..dim).map(|c| matrix[r * dim + c] as f64 * mean[c]).sum::<f64>() as f32)
            .collect();
        Self { dim_in: dim, dim_out, matrix, bias, eigenvalues }
    }

    /// Projects rows of `dim_in` values to rows of `dim_out`.
    pub fn apply(&self, data: &[f32]) -> Vec<f32> {
        let n = data.len() / self.dim_in;
        assert_eq!(data.len(), n * self.dim_in, "rows are not {}-dim", self.dim_in);
        let mut out = vec![0.0f32; n * self.dim_out];
        let block = 8192;
        out.par_chunks_mut(block * self.dim_out)
            .zip(data.par_chunks(block * self.dim_in))
            .for_each(|(o, x)| {
                let rows = x.len() / self.dim_in;
                for r in o.chunks_exact_mut(self.dim_out) {
                    r.copy_from_slice(&self.bias);
                }
                // o[rows x out] += x[rows x in] * A^T
                // SAFETY: x is rows x dim_in, the matrix dim_out x dim_in and o rows x dim_out,
                // all row-major and as long as the strides below say.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        self.dim_in,
                        self.dim_out,
                        1.0,
                        x.as_ptr(),
                        self.dim_in as isize,
                        1,
                        self.matrix.as_ptr(),
                        1,
                        self.dim_in as isize,
                        1.0,
                        o.as_mut_ptr(),
                        self.dim_out as isize,
                        1,
                    );
                }
            });
        out
    }
}

/// The rows a PCA of `n` rows is fitted on, ascending, when there are more than
/// [`MAX_POINTS_PER_DIM`] x `dim` of them (a seeded draw; FAISS draws its own, which rows does
/// not matter beyond sampling noise); None: all.
pub fn sample_rows(n: usize, dim: usize) -> Option<Vec<usize>> {
    let cap = MAX_POINTS_PER_DIM * dim;
    if n <= cap {
        return None;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::new(1234).shuffle(&mut idx);
    idx.truncate(cap);
    idx.sort_unstable();
    Some(idx)
}

/// Rows per block of the scatter matrix: each block's Gram matrix is one product.
const SCATTER_BLOCK: usize = 4096;

fn scatter(x: &[f32], dim: usize, mean: &[f64], products: &dyn Products) -> Vec<f64> {
    let parts: Vec<Vec<f64>> = x
        .par_chunks(SCATTER_BLOCK * dim)
        .map(|rows| {
            // Centre in f32 first: the scatter of centred data loses far less to rounding.
            let c: Vec<f32> = rows
                .chunks_exact(dim)
                .flat_map(|r| r.iter().zip(mean).map(|(&v, &m)| (v as f64 - m) as f32))
                .collect();
            products.gram(&c, dim).expect("the Gram matrix of a block")
        })
        .collect();
    let mut cov = vec![0.0f64; dim * dim];
    for p in parts {
        cov.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    // Exactly symmetric for the eigen-solver.
    for i in 0..dim {
        for j in 0..i {
            let m = 0.5 * (cov[i * dim + j] + cov[j * dim + i]);
            cov[i * dim + j] = m;
            cov[j * dim + i] = m;
        }
    }
    cov
}

/// Leopart's and TimeT's `normalize_and_transform`: standardise, then PCA to `dim_out`.
pub fn normalize_and_transform(data: &[f32], dim: usize, dim_out: usize) -> Vec<f32> {
    let mut x = data.to_vec();
    Standardizer::fit(&x, dim).apply(&mut x);
    Pca::fit(&x, dim, dim_out).apply(&x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardised_columns_have_zero_mean_unit_std_and_constant_columns_stay() {
        let mut rng = SplitMix64::new(1);
        let mut data: Vec<f32> = (0..300)
            .flat_map(|_| [rng.uniform(-3.0, 5.0) as f32, 7.0, rng.uniform(0.0, 1.0) as f32])
            .collect();
        let s = Standardizer::fit(&data, 3);
        assert_eq!(s.scale[1], 1.0);
        s.apply(&mut data);
        for c in [0, 2] {
            let col: Vec<f64> = data.chunks(3).map(|r| r[c] as f64).collect();
            let m = col.iter().sum::<f64>() / 300.0;
            let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 300.0;
            assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5, "{m} {v}");
        }
        assert!(data.chunks(3).all(|r| r[1] == 0.0));
    }

    #[test]
    fn pca_finds_the_dominant_axes() {
        // Points spread along (1, 1, 0) / sqrt 2 (large), (0, 0, 1) (medium), noise elsewhere.
        let mut rng = SplitMix64::new(2);
        let data: Vec<f32> = (0..2000)
            .flat_map(|_| {
                let (a, b, e) =
                    (rng.uniform(-10.0, 10.0), rng.uniform(-3.0, 3.0), rng.uniform(-0.1, 0.1));
                [(a + e) as f32 + 1.0, (a - e) as f32, b as f32, (0.5 * e) as f32]
            })
            .collect();
        let p = Pca::fit(&data, 4, 2);
        let r = std::f32::consts::FRAC_1_SQRT_2;
        let a0 = &p.matrix[0..4];
        assert!(
            (a0[0].abs() - r).abs() < 1e-2 && (a0[1].abs() - r).abs() < 1e-2 && a0[2].abs() < 1e-2,
            "{a0:?}"
        );
        assert!((p.matrix[6].abs() - 1.0).abs() < 1e-2, "{:?}", &p.matrix[4..8]);
        assert!(p.eigenvalues[0] > p.eigenvalues[1]);
        // Projected data are centred.
        let y = p.apply(&data);
        let m: f64 = y.chunks(2).map(|r| r[0] as f64).sum::<f64>() / 2000.0;
        assert!(m.abs() < 1e-3, "{m}");
    }
}
