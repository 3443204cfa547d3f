//! Elementwise kernels for the no-grad forward on the CPU backends: the exact GELU and the
//! attention softmax, in place on the tensor's own buffer.
//!
//! Flex computes GELU with a scalar libm `erff` per element and the softmax as separate
//! passes; on the ViT-S/14 step those took about 14% of the time. Here erf is a rational
//! approximation (`tools/goldens/fit_erf.py`, at most 5e-7 from libm's erf) and exp a Cephes-style
//! polynomial, both in branch-free loops that the compiler vectorises for the widest
//! instruction set found at run time. Same results on every instruction set: nothing is
//! contracted into fused multiply-adds.

use burn::tensor::{backend::Backend, DType, Tensor};
use rayon::prelude::*;

/// Picks the widest vector unit once per call; the body is compiled for each.
macro_rules! dispatch {
    ($f:ident) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn wide(v: &mut [f32]) {
                $f(v)
            }
            #[target_feature(enable = "avx2")]
            fn mid(v: &mut [f32]) {
                $f(v)
            }
            let f: fn(&mut [f32]) = if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the feature.
                |v| unsafe { wide(v) }
            } else if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the feature.
                |v| unsafe { mid(v) }
            } else {
                |v| $f(v)
            };
            f
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let f: fn(&mut [f32]) = |v| $f(v);
            f
        }
    }};
}

/// Elements per parallel task: big enough that scheduling costs nothing.
const TASK: usize = 1 << 15;

/// Whether `x` can go through these kernels: an f32 tensor of a CPU backend, no gradient.
pub fn applies<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    let device = x.device();
    x.dtype() == DType::F32 && !B::ad_enabled(&device) && crate::backend::is_cpu::<B>(&device)
}

/// Exact GELU, x Φ(x), as timm's `nn.GELU()`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    in_place(x, TASK, dispatch!(gelu_slice))
}

/// Softmax over the last dimension.
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let row = x.dims()[D - 1];
    let f = dispatch!(softmax_row);
    in_place(x, TASK.next_multiple_of(row), move |v| v.chunks_mut(row).for_each(f))
}

/// Runs `f` over `x`'s buffer in tasks of `task` elements (a multiple of any row length
/// `f` needs). The buffer is moved out and back without a copy where `x` owns it.
fn in_place<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    task: usize,
    f: impl Fn(&mut [f32]) + Send + Sync,
) -> Tensor<B, D> {
    let device = x.device();
    let mut data = x.into_data();
    data.as_mut_slice::<f32>().expect("an f32 tensor").par_chunks_mut(task).for_each(f);
    Tensor::from_data(data, &device)
}

#[inline(always)]
fn gelu_slice(v: &mut [f32]) {
    for x in v {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = lanes_fold(row, f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let inv = 1.0 / lanes_fold(row, 0.0, |a, b| a + b);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// A fold in 16 independent lanes, so that it vectorises (a single accumulator is a
/// dependency chain the compiler may not reorder for floats).
#[inline(always)]
fn lanes_fold(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let (chunks, tail) = v.as_chunks::<16>();
    let mut acc = [init; 16];
    for c in chunks {
        for j in 0..16 {
            acc[j] = f(acc[j], c[j]);
        }
    }
    tail.iter().fold(acc.into_iter().reduce(&f).expect("16 lanes"), |a, &b| f(a, b))
}

/// erf(x) ≈ x P(x²) / Q(x²) on |x| ≤ 3.92, ±1 beyond (erf(3.92) rounds to 1 in f32).
/// Coefficients from `tools/goldens/fit_erf.py`.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f32; 7] = [
        1.128_378_7,
        0.206_068_81,
        0.051_391_25,
        0.003_971_025,
        0.000_148_947_7,
        -1.994_299_3e-6,
        1.992_517_3e-8,
    ];
    const Q: [f32; 5] = [1.0, 0.515_952_47, 0.117_545_776, 0.014_885_366, 0.001_023_69];
    let x = x.clamp(-3.92, 3.92);
    let z = x * x;
    let p = P.iter().rev().fold(0.0, |acc, &c| acc * z + c);
    let q = Q.iter().rev().fold(0.0, |acc, &c| acc * z + c);
    x * p / q
}

/// e^x for x ≤ 0 (softmax arguments): x = n ln 2 + r with |r| ≤ ln 2 / 2, e^r by Cephes'
/// `expf` polynomial, 2^n from the exponent bits. About 1 ulp; 0 below -87.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Round to nearest without a rounding instruction (baseline x86-64 has none to vectorise).
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + SHIFTER) - SHIFTER;
    // ln 2 in two parts, so that n ln 2 is exact in the first.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1]
        .iter()
        .fold(0.0, |acc, &c| acc * r + c);
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..=n).map(|i| lo + (hi - lo) * i as f32 / n as f32).collect()
    }

    #[test]
    fn erf_is_within_5e_7_of_libm() {
        let worst = grid(-6.0, 6.0, 2_000_000)
            .into_iter()
            .map(|x| (erf(x) as f64 - libm::erf(x as f64)).abs())
            .fold(0.0, f64::max);
        assert!(worst < 5e-7, "erf: {worst}");
        assert_eq!((erf(0.0), erf(f32::INFINITY), erf(f32::NEG_INFINITY)), (0.0, 1.0, -1.0));
    }

    #[test]
    fn exp_is_within_2_ulp_of_libm() {
        for x in grid(-87.0, 0.0, 2_000_000) {
            let (got, want) = (exp(x), libm::exp(x as f64));
            assert!(
                ((got as f64 - want) / want).abs() < 2.0 * f32::EPSILON as f64,
                "exp({x}) = {got}, not {want}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) < 1e-37 && exp(f32::NEG_INFINITY) >= 0.0);
    }

    #[test]
    fn kernels_equal_burns_ops_on_flex() {
        let device = Default::default();
        <Flex as Backend>::seed(&device, 7);
        // Rows of 257 (the ViT's tokens) do not divide the task size.
        let x =
            Tensor::<Flex, 4>::random([2, 3, 257, 257], Distribution::Normal(0.0, 4.0), &device);
        assert!(applies(&x));
        let diff = |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>| a.sub(b).abs().max().into_scalar();
        let want = burn::tensor::activation::softmax(x.clone(), 3);
        // Within a few ulp of probabilities up to 1, against the softmax in f64 (Flex's own is
        // about 1.5e-6 off there).
        let xs = x.clone().into_data().to_vec::<f32>().unwrap();
        let exact: Vec<f32> = xs
            .chunks(257)
            .flat_map(|r| {
                let m = r.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| (v / s) as f32)
            })
            .collect();
        let exact = Tensor::<Flex, 4>::from_data(TensorData::new(exact, [2, 3, 257, 257]), &device);
        let (ours, burns) = (diff(softmax_last(x.clone()), exact.clone()), diff(want, exact));
        assert!(ours < 1e-6, "softmax: {ours} from the exact values (Burn's: {burns})");
        // Values up to about 16: erf's 5e-7 times x / 2.
        let want = burn::tensor::activation::gelu(x.clone());
        let d = diff(gelu(x.clone()), want);
        assert!(d < 5e-6, "gelu: {d}");
        // Values kept: the buffer was worked on in place, not lost.
        let y = Tensor::<Flex, 1>::from_data(TensorData::from([-1.0f32, 0.0, 1.0]), &device);
        let g = gelu(y).into_data().to_vec::<f32>().unwrap();
        assert!(
            (g[0] + 0.158_655_26).abs() < 1e-6 && g[1] == 0.0 && (g[2] - 0.841_344_7).abs() < 1e-6,
            "{g:?}"
        );
    }
}
