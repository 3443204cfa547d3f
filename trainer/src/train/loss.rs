//! The MoSiC objective: features at track points, Sinkhorn-Knopp cluster assignment of the
//! teacher's tracked features, and the cross-entropy that propagates each track's targets
//! back to the student's query frame.
//!
//! Where each point reads its feature is worked out on the host ([`point_taps`]: rows of a
//! flat `[rows, D]` token matrix and their weights, the positions being host data anyway), so
//! the device only gathers rows; the rest is batched tensor ops on whichever device the
//! backend uses.

use crate::config::{LossConfig, Reduction, Sampling};
use crate::train::comm::{Group, Op};
use anyhow::Result;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Where `M` points read their features: `taps` rows of a flat `[rows, D]` token matrix per
/// point, with weights (0 for a tap on a patch the input lacks, e.g. a dropped one).
#[derive(Debug, Clone, PartialEq)]
pub struct PointTaps {
    pub taps: usize,
    /// `[M * taps]` row indices.
    pub rows: Vec<i64>,
    /// `[M * taps]`.
    pub weights: Vec<f32>,
}

impl PointTaps {
    pub fn points(&self) -> usize {
        self.rows.len() / self.taps.max(1)
    }
}

/// The patch `(row, column)` containing a point (x = column, y = row, pixel centres at
/// integers), clamped to the grid: the patch of the rounded pixel in a nearest-upsampled map.
pub fn patch_of(p: [f32; 2], grid: (usize, usize), patch: f32) -> (usize, usize) {
    let (h, w) = grid;
    let c = ((p[0] + 0.5) / patch).floor().clamp(0.0, (w - 1) as f32) as usize;
    let r = ((p[1] + 0.5) / patch).floor().clamp(0.0, (h - 1) as f32) as usize;
    (r, c)
}

/// Taps of `points` (x, y) on an `h x w` patch grid. `row_of(m, patch)` gives the token row
/// of patch `patch` (row-major index) of point `m`'s image, or `None` when that image has no
/// token there (the tap then weighs 0).
///
/// Patch centres sit at `u = (x + 0.5) / patch - 0.5` integer. `Nearest` takes column
/// `floor((x + 0.5) / patch)`; `Bilinear` weighs the four surrounding centres, indices clamped
/// at the border (`grid_sample` with border padding). The released code indexes its upsampled
/// map with x as the row; that transposition is not reproduced.
pub fn point_taps(
    points: &[[f32; 2]],
    grid: (usize, usize),
    patch: f32,
    mode: Sampling,
    row_of: impl Fn(usize, usize) -> Option<usize>,
) -> PointTaps {
    let (h, w) = grid;
    let taps = match mode {
        Sampling::Nearest => 1,
        Sampling::Bilinear => 4,
    };
    let mut rows = Vec::with_capacity(points.len() * taps);
    let mut weights = Vec::with_capacity(points.len() * taps);
    let mut push = |m: usize, r: usize, c: usize, wt: f32| match row_of(m, r * w + c) {
        Some(row) => {
            rows.push(row as i64);
            weights.push(wt);
        }
        None => {
            rows.push(0);
            weights.push(0.0);
        }
    };
    for (m, &p) in points.iter().enumerate() {
        match mode {
            Sampling::Nearest => {
                let (r, c) = patch_of(p, grid, patch);
                push(m, r, c, 1.0);
            }
            Sampling::Bilinear => {
                let u = (p[0] + 0.5) / patch - 0.5;
                let v = (p[1] + 0.5) / patch - 0.5;
                let (u0, v0) = (u.floor(), v.floor());
                let (fu, fv) = (u - u0, v - v0);
                let col = |k: f32| k.clamp(0.0, (w - 1) as f32) as usize;
                let row = |k: f32| k.clamp(0.0, (h - 1) as f32) as usize;
                push(m, row(v0), col(u0), (1.0 - fu) * (1.0 - fv));
                push(m, row(v0), col(u0 + 1.0), fu * (1.0 - fv));
                push(m, row(v0 + 1.0), col(u0), (1.0 - fu) * fv);
                push(m, row(v0 + 1.0), col(u0 + 1.0), fu * fv);
            }
        }
    }
    PointTaps { taps, rows, weights }
}

/// `tokens` `[rows, D]` read at the taps: `[M, D]`. Gradients flow into the gathered rows.
pub fn gather_points<B: Backend>(tokens: Tensor<B, 2>, taps: &PointTaps) -> Tensor<B, 2> {
    let [_, d] = tokens.dims();
    let device = tokens.device();
    let (m, k) = (taps.points(), taps.taps);
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(taps.rows.clone(), [m * k]), &device);
    let w = Tensor::<B, 2>::from_data(TensorData::new(taps.weights.clone(), [m * k, 1]), &device);
    let picked = tokens.select(0, idx) * w;
    if k == 1 {
        picked
    } else {
        picked.reshape([m, k, d]).sum_dim(1).reshape([m, d])
    }
}

/// Features at points of per-frame token maps, the dense form of [`point_taps`] +
/// [`gather_points`]: `features` `[B, T, h*w, D]`, `points` `[B, T, N, 2]` -> `[B, T, N, D]`.
pub fn sample_points<B: Backend>(
    features: Tensor<B, 4>,
    grid: (usize, usize),
    patch: f32,
    points: &[[f32; 2]],
    mode: Sampling,
) -> Tensor<B, 4> {
    let [b, t, hw, d] = features.dims();
    assert_eq!(hw, grid.0 * grid.1, "features have {hw} tokens, grid is {}x{}", grid.0, grid.1);
    let n = points.len() / (b * t);
    let taps = point_taps(points, grid, patch, mode, |m, p| Some(m / n * hw + p));
    gather_points(features.reshape([b * t * hw, d]), &taps).reshape([b, t, n, d])
}

/// SwAV's `distributed_sinkhorn` (the released `find_optimal_assignment`) over the rows
/// `rows` selects: `scores` `[M, K]` -> assignments `[M, K]` whose selected rows sum to 1 and
/// whose columns tend to (selected rows) / K; rows left out are 0 and do not count. Not
/// differentiated. With a `group` the rows are spread over its workers and every sum over
/// rows (the total, each prototype's column, the row count) and the shift are global, as the
/// released code all-reduces them; without one, the batch is all on this device.
///
/// Kept in `[M, K]` orientation; SwAV's `K x M` row step is the column step here.
pub fn sinkhorn<B: Backend>(
    scores: Tensor<B, 2>,
    rows: Option<Tensor<B, 1>>,
    epsilon: f32,
    iterations: usize,
    group: Option<&Group>,
) -> Result<Tensor<B, 2>> {
    let [m, k] = scores.dims();
    let device = scores.device();
    let s = scores.detach() / epsilon;
    let tiny = f32::MIN_POSITIVE;
    let global = |t: Tensor<B, 1>, op: Op, what: &str| -> Result<Tensor<B, 1>> {
        match group {
            Some(g) => g.reduce(t, op, what),
            None => Ok(t),
        }
    };
    let (q, count) = match rows {
        None => {
            // The global shift cancels in the first normalisation but keeps exp finite.
            let max = global(s.clone().max(), Op::Max, "Sinkhorn's shift")?.reshape([1, 1]);
            let count = match group {
                Some(_) => Some(
                    global(
                        Tensor::from_floats([m as f32], &device),
                        Op::Sum,
                        "Sinkhorn's row count",
                    )?
                    .reshape([1, 1]),
                ),
                None => None,
            };
            ((s - max).exp(), count)
        }
        Some(rows) => {
            let keep = rows.reshape([m, 1]);
            let out = keep.clone().lower_elem(0.5).expand([m, k]);
            let max =
                global(s.clone().mask_fill(out, f32::MIN).max(), Op::Max, "Sinkhorn's shift")?
                    .reshape([1, 1]);
            // Rows left out may lie above the kept maximum: clamped so exp stays finite before the 0.
            let count =
                global(keep.clone().sum(), Op::Sum, "Sinkhorn's row count")?.reshape([1, 1]);
            ((s - max).clamp_max(0.0).exp() * keep.clone(), Some(count))
        }
    };
    let mut q = q.clone() / global(q.sum(), Op::Sum, "Sinkhorn's total")?.reshape([1, 1]);
    for i in 0..iterations {
        let cols = match group {
            Some(g) => g.reduce(
                q.clone().sum_dim(0),
                Op::Sum,
                &format!("Sinkhorn's column sums (iteration {})", i + 1),
            )?,
            None => q.clone().sum_dim(0),
        };
        q = q.clone() / cols.clamp_min(tiny) / k as f32;
        let r = q.clone() / q.clone().sum_dim(1).clamp_min(tiny);
        q = match &count {
            None => r / m as f32,
            Some(c) => r / c.clone(),
        };
    }
    Ok(q.clone() / q.sum_dim(1).clamp_min(tiny))
}

#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend> {
    /// `[1]`.
    pub loss: Tensor<B, 1>,
    /// Prototype index per teacher entry, `[B, T, N]`.
    pub targets: Tensor<B, 3, Int>,
    /// Sinkhorn output over the `B*T*N` teacher rows (ordered b, t, n), `[B*T*N, K]`; rows
    /// left out of Sinkhorn are 0.
    pub assignments: Tensor<B, 2>,
    /// Sum of the loss weights, `[1]`.
    pub weight: Tensor<B, 1>,
    /// Entropy (nats) of how the targets of the Sinkhorn rows spread over prototypes, `[1]`;
    /// `ln K` is uniform use, 0 is collapse onto one prototype.
    pub usage_entropy: Tensor<B, 1>,
}

/// The MoSiC loss.
///
/// `student_scores`: `[B, N, K]` cosine scores of the student at the query frame's points.
/// `teacher_scores`: `[B, T, N, K]` cosine scores of the teacher at each frame's tracked
/// point. `weights`: `[B, T, N]`, each entry's weight (visibility, times the masking rule).
/// `rows`: `[B*T*N]`, 1 for the teacher rows Sinkhorn balances (None: all). Each entry's
/// argmax is the target of its track's student prediction, frame 0 included. With a `group`,
/// this worker's part of the global batch: the loss is its share of the global loss (the
/// denominator is global), so the group's gradients sum to the global loss's gradient.
pub fn mosic_loss<B: Backend>(
    student_scores: Tensor<B, 3>,
    teacher_scores: Tensor<B, 4>,
    weights: Tensor<B, 3>,
    rows: Option<Tensor<B, 1>>,
    cfg: &LossConfig,
    group: Option<&Group>,
) -> Result<LossOutput<B>> {
    let [b, t, n, k] = teacher_scores.dims();
    assert_eq!(student_scores.dims(), [b, n, k], "student scores vs teacher [B, T, N, K]");
    assert_eq!(weights.dims(), [b, t, n], "weights vs teacher [B, T, N, K]");
    let m = b * t * n;
    let device = weights.device();
    let rows = rows.map(|r| r.detach());
    let assignments =
        sinkhorn(teacher_scores.reshape([m, k]), rows.clone(), cfg.epsilon, cfg.iterations, group)?;
    let global = |t: Tensor<B, 1>| -> Result<Tensor<B, 1>> {
        match group {
            Some(g) => g.reduce(t, Op::Sum, "the loss weights' sum"),
            None => Ok(t),
        }
    };
    let flat_targets = assignments.clone().argmax(1); // [M, 1]
    let targets = flat_targets.reshape([b, t, n]);

    let logp = log_softmax(student_scores / cfg.temperature, 2);
    let logp = logp.unsqueeze_dim::<4>(1).expand([b, t, n, k]);
    let nll = logp.gather(3, targets.clone().unsqueeze_dim(3)).reshape([b, t, n]).neg();
    let w = weights.detach();
    let total = (nll * w.clone()).sum();
    let weight = global(w.sum())?;
    let entries = match group {
        Some(g) => g.reduce_host(vec![m as f32], Op::Sum, "the entry count")?[0],
        None => m as f32,
    };
    let loss = match cfg.reduction {
        // clamped so that a batch with nothing to learn from gives 0, not NaN
        Reduction::Visible => total / weight.clone().clamp_min(1.0),
        Reduction::All => total / entries,
    };

    // Usage without a one-hot: an assignment row's maximum marks its target.
    let rows = rows.unwrap_or_else(|| Tensor::ones([m], &device));
    let hard = assignments.clone().greater_equal(assignments.clone().max_dim(1)).float()
        * rows.clone().reshape([m, 1]);
    let usage = global(hard.sum_dim(0).reshape([k]))? / global(rows.sum())?.clamp_min(1.0);
    let usage_entropy = (usage.clone() * usage.clamp_min(1e-12).log()).sum().neg();
    Ok(LossOutput { loss, targets, assignments, weight, usage_entropy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::head::{ProjectionHead, Prototypes};
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::tensor::{Distribution, TensorData};
    use safetensors::SafeTensors;

    type Inner = crate::testing::Golden;
    type B = Autodiff<Inner>;

    fn vec<BB: Backend, const D: usize>(x: Tensor<BB, D>) -> Vec<f32> {
        x.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn max_abs_diff<BB: Backend, const D: usize>(a: Tensor<BB, D>, b: Tensor<BB, D>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        vec(a).iter().zip(vec(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn sinkhorn_rows_sum_to_one_and_columns_balance() {
        let dev = Default::default();
        let (m, k) = (200, 10);
        let scores = Tensor::<Inner, 2>::random([m, k], Distribution::Uniform(-1.0, 1.0), &dev);
        let q = sinkhorn(scores, None, 0.06, 100, None).unwrap();
        for r in vec(q.clone().sum_dim(1)) {
            assert!((r - 1.0).abs() < 1e-5, "row sum {r}");
        }
        let target = m as f32 / k as f32;
        for c in vec(q.sum_dim(0)) {
            assert!((c - target).abs() < 1e-3 * target, "column sum {c}, want {target}");
        }
    }

    /// Rows left out of Sinkhorn change nothing for the others: the result on the kept rows is
    /// Sinkhorn of those rows alone, and the left-out rows are 0.
    #[test]
    fn sinkhorn_over_selected_rows_equals_sinkhorn_of_those_rows() {
        let dev = Default::default();
        let (m, k) = (60, 7);
        let scores = Tensor::<Inner, 2>::random([m, k], Distribution::Uniform(-1.0, 1.0), &dev);
        let keep: Vec<usize> = (0..m).filter(|i| i % 3 != 1).collect();
        let mask: Vec<f32> = (0..m).map(|i| (i % 3 != 1) as u8 as f32).collect();
        // A left-out row far above the others must not disturb the kept rows' numerics.
        let scores = scores.slice_assign([1..2, 0..k], Tensor::full([1, k], 40.0, &dev));
        let masked = sinkhorn(
            scores.clone(),
            Some(Tensor::from_floats(mask.as_slice(), &dev)),
            0.05,
            10,
            None,
        )
        .unwrap();
        let idx = Tensor::<Inner, 1, Int>::from_data(
            TensorData::new(keep.iter().map(|&i| i as i64).collect::<Vec<_>>(), [keep.len()]),
            &dev,
        );
        let alone = sinkhorn(scores.select(0, idx.clone()), None, 0.05, 10, None).unwrap();
        assert!(max_abs_diff(masked.clone().select(0, idx), alone) < 1e-6);
        let left_out: Vec<f32> = vec(masked)
            .chunks(k)
            .enumerate()
            .filter(|(i, _)| i % 3 == 1)
            .flat_map(|(_, r)| r.to_vec())
            .collect();
        assert!(left_out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn loss_matches_hand_computation() {
        let dev = Default::default();
        // one track, two frames, two prototypes: frame 0 clearly on prototype 0, frame 1 on 1
        let teacher = Tensor::<Inner, 4>::from_floats([[[[1.0, 0.0]], [[0.0, 1.0]]]], &dev);
        let student = Tensor::<Inner, 3>::from_floats([[[0.2, 0.1]]], &dev);
        // logits 2 and 1: CE is ln(1 + e^-1) for target 0, 1 + ln(1 + e^-1) for target 1
        let ce0 = (1.0 + (-1.0f64).exp()).ln();
        let ce1 = 1.0 + ce0;
        let cases = [
            ([1.0, 1.0], Reduction::Visible, (ce0 + ce1) / 2.0),
            ([1.0, 1.0], Reduction::All, (ce0 + ce1) / 2.0),
            ([1.0, 0.0], Reduction::Visible, ce0),
            ([1.0, 0.0], Reduction::All, ce0 / 2.0),
            ([0.0, 1.0], Reduction::Visible, ce1),
        ];
        for (vis, reduction, want) in cases {
            let vis = Tensor::<Inner, 3>::from_floats([[[vis[0]], [vis[1]]]], &dev);
            let cfg = LossConfig { reduction, ..Default::default() };
            let out = mosic_loss(student.clone(), teacher.clone(), vis, None, &cfg, None).unwrap();
            assert_eq!(out.targets.into_data().iter::<i64>().collect::<Vec<_>>(), [0, 1]);
            let got = out.loss.into_scalar() as f64;
            assert!((got - want).abs() < 1e-6, "{reduction:?}: {got} vs {want}");
            let h = out.usage_entropy.into_scalar() as f64;
            assert!((h - 2f64.ln()).abs() < 1e-6);
        }
        let nothing = Tensor::<Inner, 3>::zeros([1, 2, 1], &dev);
        let out =
            mosic_loss(student, teacher, nothing, None, &LossConfig::default(), None).unwrap();
        assert_eq!(out.loss.into_scalar(), 0.0);
    }

    /// An object patch moves right (increasing column) over frames; points with increasing
    /// x must follow it, and the same points with x and y swapped must not.
    #[test]
    fn sampling_follows_x_as_column() {
        let dev = Default::default();
        let (h, w, patch, t) = (4usize, 6usize, 14.0f32, 3usize);
        let object = |f: usize| (0usize, 2 + f); // (row, column) in frame f
                                                 // channel 0: object marker; 1: row; 2: column
        let mut data = vec![0.0f32; t * h * w * 3];
        for f in 0..t {
            for r in 0..h {
                for c in 0..w {
                    let at = ((f * h + r) * w + c) * 3;
                    data[at] = ((r, c) == object(f)) as u8 as f32;
                    data[at + 1] = r as f32;
                    data[at + 2] = c as f32;
                }
            }
        }
        let feats = Tensor::<B, 4>::from_data(TensorData::new(data, [1, t, h * w, 3]), &dev);
        let centre = |i: usize| i as f32 * patch + 6.5;
        let patch_coord = |p: f32| (p + 0.5) / patch - 0.5;
        // at the object's patch centre, and off-centre but inside the same patch
        for off in [0.0f32, 5.9, -6.4] {
            let xy: Vec<[f32; 2]> =
                (0..t).map(|f| [centre(object(f).1) + off, centre(object(f).0) - off]).collect();
            let pts = xy.clone();
            let swapped: Vec<[f32; 2]> = xy.iter().map(|p| [p[1], p[0]]).collect();
            for mode in [Sampling::Nearest, Sampling::Bilinear] {
                let got = vec(sample_points(feats.clone(), (h, w), patch, &pts, mode));
                let away = vec(sample_points(feats.clone(), (h, w), patch, &swapped, mode));
                for (f, [x, y]) in xy.iter().copied().enumerate() {
                    let (marker, row, col) = (got[f * 3], got[f * 3 + 1], got[f * 3 + 2]);
                    let (r, c) = object(f);
                    assert_eq!(away[f * 3], 0.0, "{mode:?} frame {f}: swapped x/y hit the object");
                    if mode == Sampling::Nearest || off == 0.0 {
                        assert_eq!(
                            (marker, row, col),
                            (1.0, r as f32, c as f32),
                            "{mode:?} frame {f}"
                        );
                    } else {
                        // the row/column channels are linear, so bilinear returns the
                        // (border-clamped) patch coordinates themselves
                        let (u, v) = (patch_coord(x), patch_coord(y).max(0.0));
                        assert!(
                            (col - u).abs() < 1e-5 && (row - v).abs() < 1e-5,
                            "frame {f}: {row},{col}"
                        );
                        assert!(marker > 0.25, "frame {f}: marker {marker}");
                        assert!((away[f * 3 + 2] - u).abs() > 1.0);
                    }
                }
            }
        }
    }

    #[test]
    fn bilinear_at_patch_centres_equals_nearest() {
        let dev = Default::default();
        let (h, w, patch) = (3usize, 5usize, 16.0f32);
        let feats = Tensor::<Inner, 4>::random([2, 2, h * w, 4], Distribution::Default, &dev);
        let pts: Vec<[f32; 2]> = (0..2 * 2 * h * w)
            .map(|i| {
                let (r, c) = ((i % (h * w)) / w, i % w);
                [c as f32 * patch + 7.5, r as f32 * patch + 7.5]
            })
            .collect();
        let near = sample_points(feats.clone(), (h, w), patch, &pts, Sampling::Nearest);
        let bil = sample_points(feats.clone(), (h, w), patch, &pts, Sampling::Bilinear);
        assert_eq!(max_abs_diff(near.clone(), feats), 0.0);
        assert!(max_abs_diff(near, bil) < 1e-6);
    }

    /// The student's features must get gradients through the sampling; bilinear weights
    /// sum to 1, so a summed output gives each point a total gradient of 1 per channel.
    #[test]
    fn sampling_passes_gradients_to_features() {
        let dev = Default::default();
        let feats =
            Tensor::<B, 4>::random([1, 2, 12, 3], Distribution::Default, &dev).require_grad();
        let mut rng = mosic::rng::SplitMix64::new(3);
        let pts: Vec<[f32; 2]> = (0..10)
            .map(|_| [rng.uniform(-5.0, 60.0) as f32, rng.uniform(-5.0, 60.0) as f32])
            .collect();
        for mode in [Sampling::Nearest, Sampling::Bilinear] {
            let out = sample_points(feats.clone(), (3, 4), 14.0, &pts, mode);
            let grads = out.sum().backward();
            let total = feats.grad(&grads).unwrap().sum().into_scalar();
            assert!((total - 2.0 * 5.0 * 3.0).abs() < 1e-4, "{mode:?}: {total}");
        }
    }

    // ---- golden: tools/goldens/make_loss_golden.py ----

    struct Golden {
        bytes: Vec<u8>,
        cfg: serde_json::Value,
    }

    impl Golden {
        fn load() -> Self {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/loss");
            let bytes = std::fs::read(format!("{dir}/golden.safetensors")).expect("golden fixture");
            let cfg = std::fs::read_to_string(format!("{dir}/golden.json")).unwrap();
            Self { bytes, cfg: serde_json::from_str(&cfg).unwrap() }
        }
        fn usize(&self, key: &str) -> usize {
            self.cfg[key].as_u64().unwrap() as usize
        }
        fn f32(&self, key: &str) -> f32 {
            self.cfg[key].as_f64().unwrap() as f32
        }
        fn tensor<BB: Backend, const D: usize>(&self, name: &str) -> Tensor<BB, D> {
            let st = SafeTensors::deserialize(&self.bytes).unwrap();
            let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let shape = view.shape().to_vec();
            let data = match view.dtype() {
                safetensors::Dtype::F32 => TensorData::new(
                    view.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    shape,
                ),
                safetensors::Dtype::I64 => TensorData::new(
                    view.data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    shape,
                ),
                other => panic!("{name}: unexpected {other:?}"),
            };
            Tensor::from_data(data, &Default::default())
        }
        fn head(&self, who: &str) -> (ProjectionHead<B>, Prototypes<B>) {
            let n = self.cfg["hidden"].as_array().unwrap().len() + 1;
            let layers = (0..n)
                .map(|j| Linear {
                    weight: Param::from_tensor(self.tensor(&format!("{who}.layers.{j}.weight"))),
                    bias: Some(Param::from_tensor(self.tensor(&format!("{who}.layers.{j}.bias")))),
                })
                .collect();
            let protos = Prototypes {
                weight: Param::from_tensor(self.tensor(&format!("{who}.prototypes"))),
            };
            (ProjectionHead { layers }, protos.normalized())
        }
    }

    #[test]
    fn golden_loss_sinkhorn_and_gradients() {
        let g = Golden::load();
        let tol = 1e-5;
        let mut worst = 0.0f32;
        let mut check = |what: &str, d: f32| {
            println!("golden max |diff| {what:<28} {d:.3e}");
            assert!(d < tol, "{what}: max |diff| {d:e}");
            worst = worst.max(d);
        };
        let (student, s_protos) = g.head("student");
        let (teacher, t_protos) = g.head("teacher");
        let student_feats: Tensor<B, 3> = g.tensor("student_feats");
        let vis: Tensor<B, 3> = g.tensor("visibility");
        let t_scores = t_protos.scores(teacher.forward(g.tensor::<B, 4>("teacher_feats"))).detach();
        check("teacher scores", max_abs_diff(t_scores.clone(), g.tensor("teacher_scores")));

        for (name, reduction) in [("visible", Reduction::Visible), ("all", Reduction::All)] {
            let cfg = LossConfig {
                temperature: g.f32("temperature"),
                epsilon: g.f32("epsilon"),
                iterations: g.usize("iterations"),
                reduction,
            };
            let s_scores = s_protos.scores(student.forward(student_feats.clone()));
            check("student scores", max_abs_diff(s_scores.clone(), g.tensor("student_scores")));
            let out =
                mosic_loss(s_scores, t_scores.clone(), vis.clone(), None, &cfg, None).unwrap();
            check("sinkhorn", max_abs_diff(out.assignments.clone(), g.tensor("sinkhorn")));
            let want: Vec<i64> =
                g.tensor::<Inner, 3>("targets").into_data().iter::<i64>().collect();
            assert_eq!(out.targets.into_data().iter::<i64>().collect::<Vec<_>>(), want, "targets");
            check(
                &format!("loss ({name})"),
                max_abs_diff(out.loss.clone(), g.tensor(&format!("loss_{name}"))),
            );

            let grads = out.loss.backward();
            for (j, layer) in student.layers.iter().enumerate() {
                let gw = layer.weight.val().grad(&grads).unwrap();
                let gb = layer.bias.as_ref().unwrap().val().grad(&grads).unwrap();
                let key = format!("grad_{name}.layers.{j}");
                check(
                    &format!("{key}.weight"),
                    max_abs_diff(gw, g.tensor(&format!("{key}.weight"))),
                );
                check(&format!("{key}.bias"), max_abs_diff(gb, g.tensor(&format!("{key}.bias"))));
            }
            let gp = s_protos.weight.val().grad(&grads).unwrap();
            check(
                &format!("grad_{name}.prototypes"),
                max_abs_diff(gp, g.tensor(&format!("grad_{name}.prototypes"))),
            );
        }

        let (h, w, patch) = (g.usize("grid_h"), g.usize("grid_w"), g.f32("patch"));
        let feats: Tensor<Inner, 4> = g.tensor("sample_feats");
        let pts: Vec<[f32; 2]> =
            vec(g.tensor::<Inner, 4>("sample_points")).chunks(2).map(|p| [p[0], p[1]]).collect();
        for (name, mode) in [("nearest", Sampling::Nearest), ("bilinear", Sampling::Bilinear)] {
            let got = sample_points(feats.clone(), (h, w), patch, &pts, mode);
            check(
                &format!("sample_points {name}"),
                max_abs_diff(got, g.tensor(&format!("sampled_{name}"))),
            );
        }
        println!("golden worst max |diff| {worst:.3e} (tolerance {tol:e})");
    }
}
