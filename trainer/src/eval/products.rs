//! The evaluation's heavy products ([`mosic_eval::kernels::products::Products`]) on a Burn backend's
//! device: the bank search as one matrix product and a top-k per tile, the k-means assignment
//! as one product and an arg-max, the Gram matrix of PCA as one product. Only the short
//! results cross back to the host; the neighbours equal the CPU path's (a tile whose k-th
//! similarity ties with one left out is resolved on the host, by index).

use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use mosic_eval::data::dense::{Bilinear, FeatureMap};
use mosic_eval::kernels::probe::LinearProbe;
use mosic_eval::kernels::products::{offer, Products, Queries, TopK};
use mosic_eval::segmentation::IGNORE;
use mosic_eval::Mask;
use rayon::prelude::*;

pub struct OnDevice<B: Backend> {
    device: B::Device,
    /// The most similarities one product holds (queries go in parts under it).
    scores_bytes: usize,
}

impl<B: Backend> OnDevice<B> {
    pub fn new(device: &B::Device) -> Self {
        Self { device: device.clone(), scores_bytes: SCORES_BYTES }
    }

    fn matrix(&self, data: &[f32], cols: usize) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(data.to_vec(), [data.len() / cols, cols]), &self.device)
    }
}

fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("f32 data")
}

fn host_i64<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().into_vec().expect("int data")
}

impl<B: Backend> Products for OnDevice<B>
where
    B::Device: Sync,
{
    fn name(&self) -> String {
        B::name(&self.device)
    }

    /// The block is copied to the device once and searched against every tile there.
    fn queries<'a>(&'a self, queries: &'a [f32], dim: usize) -> Result<Box<dyn Queries + 'a>> {
        Ok(Box::new(DeviceQueries { products: self, q: self.matrix(queries, dim), dim }))
    }

    fn nearest_centroids(
        &self,
        data: &[f32],
        dim: usize,
        centroids: &[f32],
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let x = self.matrix(data, dim);
        let c = self.matrix(centroids, dim);
        // argmax 2 x.c - |c|^2, the squared distance |x|^2 minus that maximum.
        let norms = (c.clone() * c.clone()).sum_dim(1).transpose();
        let score = x.clone().matmul(c.transpose()) * 2.0 - norms;
        let (best, idx) = score.max_dim_with_indices(1);
        let xx = (x.clone() * x).sum_dim(1);
        let d = (xx - best).clamp_min(0.0);
        let labels = host_i64(idx).into_iter().map(|v| v as u32).collect();
        Ok((labels, host_f32(d)))
    }

    fn gram(&self, x: &[f32], dim: usize) -> Result<Vec<f64>> {
        let m = self.matrix(x, dim);
        let g = m.clone().transpose().matmul(m);
        Ok(host_f32(g).into_iter().map(|v| v as f64).collect())
    }

    /// The probe's batch as matrix products: patch logits, the bilinear upsampling as a dense
    /// map, softmax cross-entropy on the labelled pixels, and the gradient back through the
    /// map's transpose. Batches of mixed shapes take the host path.
    fn probe_grad(
        &self,
        probe: &LinearProbe,
        batch: &[(&FeatureMap, &Mask)],
    ) -> Result<(f64, Vec<f32>, Vec<f32>)> {
        let Some(&(f0, m0)) = batch.first() else { return Ok(probe.loss_and_grad(batch)) };
        let same = batch.iter().all(|(f, m)| {
            (f.height, f.width, f.dim, m.height, m.width)
                == (f0.height, f0.width, f0.dim, m0.height, m0.width)
        });
        if !same || f0.dim != probe.dim {
            return Ok(probe.loss_and_grad(batch));
        }
        let (b, hw, d, c) = (batch.len(), f0.len(), probe.dim, probe.classes);
        let px = m0.height * m0.width;
        let x: Vec<f32> = batch.iter().flat_map(|(f, _)| f.data.iter().copied()).collect();
        let x = self.matrix(&x, d); // [B*hw, d]
        let w = self.matrix(&probe.weight, d); // [c, d]
        let bias =
            Tensor::<B, 1>::from_data(TensorData::new(probe.bias.clone(), [c]), &self.device);
        let logits = (x.clone().matmul(w.transpose()) + bias.unsqueeze::<2>()).reshape([b, hw, c]);
        let up_map =
            self.matrix(&Bilinear::new(f0.height, f0.width, m0.height, m0.width).matrix(), hw); // [px, hw]
        let up = up_map.clone().unsqueeze::<3>().expand([b, px, hw]).matmul(logits); // [B, px, c]
        let labels: Vec<i64> =
            batch.iter().flat_map(|(_, m)| m.labels.iter().map(|&l| l as i64)).collect();
        let valid: Vec<f32> = batch
            .iter()
            .flat_map(|(_, m)| m.labels.iter().map(|&l| (l as u32 != IGNORE) as u8 as f32))
            .collect();
        let pixels = valid.iter().filter(|&&v| v > 0.0).count();
        if let Some(l) = batch
            .iter()
            .flat_map(|(_, m)| m.labels.iter())
            .find(|&&l| l as u32 != IGNORE && l as usize >= c)
        {
            anyhow::bail!("label {l} >= {c} classes");
        }
        let y = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                labels.iter().map(|&l| if l as u32 == IGNORE { 0 } else { l }).collect::<Vec<_>>(),
                [b * px],
            ),
            &self.device,
        )
        .reshape([b, px, 1]);
        let valid = Tensor::<B, 1>::from_data(TensorData::new(valid, [b * px]), &self.device)
            .reshape([b, px, 1]);
        let max = up.clone().max_dim(2);
        let shifted = up - max;
        let e = shifted.clone().exp();
        let z = e.clone().sum_dim(2);
        let picked = shifted.gather(2, y.clone());
        let loss = ((z.clone().log() - picked) * valid.clone()).sum();
        let onehot = Tensor::<B, 3>::zeros([b, px, c], &self.device).scatter(
            2,
            y,
            valid.clone().ones_like(),
            burn::tensor::IndexingUpdateOp::Add,
        );
        let dup = (e / z - onehot) * valid; // [B, px, c]
        let dpatch = up_map.transpose().unsqueeze::<3>().expand([b, hw, px]).matmul(dup); // [B, hw, c]
        let dpatch = dpatch.reshape([b * hw, c]);
        let gw = dpatch.clone().transpose().matmul(x); // [c, d]
        let gb = dpatch.sum_dim(0).reshape([c]);
        let n = pixels.max(1) as f32;
        let loss: f64 = host_f32(loss)[0] as f64;
        let gw = host_f32(gw).into_iter().map(|v| v / n).collect();
        let gb = host_f32(gb).into_iter().map(|v| v / n).collect();
        Ok((loss / n as f64, gw, gb))
    }
}

/// A query block on the device, for the life of one search.
struct DeviceQueries<'a, B: Backend> {
    products: &'a OnDevice<B>,
    q: Tensor<B, 2>,
    dim: usize,
}

impl<B: Backend> Queries for DeviceQueries<'_, B> {
    fn search_tile(
        &mut self,
        bank: &[f32],
        first: usize,
        k: usize,
        top: &mut [TopK],
    ) -> Result<()> {
        let rows = bank.len() / self.dim;
        let kk = k.min(rows);
        if kk == 0 {
            return Ok(());
        }
        let bank_t = self.products.matrix(bank, self.dim).transpose();
        // Query rows in parts whose similarity matrix stays under SCORES_BYTES on the device.
        let part = (self.products.scores_bytes / (4 * rows)).max(1);
        for (p, top) in top.chunks_mut(part).enumerate() {
            let q = self.q.clone().narrow(0, p * part, top.len());
            search_part(q.matmul(bank_t.clone()), kk, k, first, top);
        }
        Ok(())
    }
}

/// The similarities any one product may hold on the device (1 GiB).
const SCORES_BYTES: usize = 1 << 30;

/// Offers the top-`kk` of every row of `scores` (queries x bank tile) to `top`, rows whose
/// k-th value ties with one left out resolved on the host, by index.
fn search_part<B: Backend>(
    scores: Tensor<B, 2>,
    kk: usize,
    k: usize,
    first: usize,
    top: &mut [TopK],
) {
    let (values, indices) = scores.clone().topk_with_indices(kk, 1);
    // A row whose k-th value has more equals than the top-k kept is a boundary tie: which
    // of them count is decided on the host, by index.
    let kth = values.clone().narrow(1, kk - 1, 1);
    let at_least = scores.clone().greater_equal(kth).int().sum_dim(1);
    let (values, indices, at_least) = (host_f32(values), host_i64(indices), host_i64(at_least));
    let ties: Vec<usize> =
        at_least.iter().enumerate().filter(|(_, &c)| c as usize > kk).map(|(i, _)| i).collect();
    top.par_iter_mut().enumerate().for_each(|(i, t)| {
        if ties.binary_search(&i).is_err() {
            for j in 0..kk {
                offer(t, k, (values[i * kk + j], first + indices[i * kk + j] as usize));
            }
        }
    });
    for &i in &ties {
        let row = host_f32(scores.clone().narrow(0, i, 1));
        for (j, &s) in row.iter().enumerate() {
            offer(&mut top[i], k, (s, first + j));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosic::rng::SplitMix64;
    use mosic_eval::kernels::cpu::Cpu;

    fn on<B: Backend>() -> OnDevice<B>
    where
        B::Device: Default,
    {
        // Parts of 5 query rows at the 64-row tiles below, so the split is exercised.
        OnDevice { scores_bytes: 5 * 64 * 4, ..OnDevice::<B>::new(&Default::default()) }
    }

    /// The device search returns the CPU path's neighbours exactly, ties included, over
    /// several tiles; the k-means assignment gives the same labels and distances within 1e-4
    /// (of |x|^2 ~ 10); the Gram matrix agrees within 1e-5 relative.
    fn same_as_cpu<B: Backend>(p: &OnDevice<B>)
    where
        B::Device: Sync,
    {
        let mut rng = SplitMix64::new(3);
        let dim = 8;
        // Bank: multiples of 1/8 (every product and sum exact in f32, so any order of
        // summation gives the same similarities), with exact duplicates and many equal
        // similarities besides: ties, whatever kernel computes them.
        let mut bank: Vec<f32> = Vec::new();
        for i in 0..300 {
            let v: Vec<f32> = if i % 7 == 0 && i > 0 {
                bank[(i - 7) * dim..(i - 6) * dim].to_vec()
            } else {
                (0..dim).map(|_| (rng.below(17) as f32 - 8.0) / 8.0).collect()
            };
            bank.extend(v);
        }
        let queries: Vec<f32> = bank[..40 * dim].to_vec();
        for k in [1, 5, 30] {
            let (mut a, mut b) = (vec![TopK::new(); 40], vec![TopK::new(); 40]);
            let (mut qa, mut qb) =
                (Cpu.queries(&queries, dim).unwrap(), p.queries(&queries, dim).unwrap());
            for (t, tile) in bank.chunks(64 * dim).enumerate() {
                qa.search_tile(tile, t * 64, k, &mut a).unwrap();
                qb.search_tile(tile, t * 64, k, &mut b).unwrap();
            }
            let ids = |v: &[TopK]| -> Vec<Vec<usize>> {
                v.iter().map(|t| t.iter().map(|c| c.1).collect()).collect()
            };
            assert_eq!(ids(&a), ids(&b), "k {k} on {}", p.name());
        }
        let data: Vec<f32> = (0..500 * dim).map(|_| rng.uniform(-2.0, 2.0) as f32).collect();
        let cents: Vec<f32> = data[..16 * dim].to_vec();
        let (la, da) = Cpu.nearest_centroids(&data, dim, &cents).unwrap();
        let (lb, db) = p.nearest_centroids(&data, dim, &cents).unwrap();
        assert_eq!(la, lb);
        // Squared distances of points with |x|^2 around 10, by |x|^2 - 2 x.c + |c|^2: the
        // rounding of those terms, not of the distance, bounds the difference.
        let worst = da.iter().zip(&db).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "distances differ by {worst}");
        // A whole k-means: the objective for a seed equal within 1e-4 relative.
        let fp = mosic_eval::kernels::kmeans::FaissParams::new(10, 2, 5);
        let ka = mosic_eval::kernels::kmeans::faiss_kmeans_on(&Cpu, &data, dim, 12, &fp).unwrap();
        let kb = mosic_eval::kernels::kmeans::faiss_kmeans_on(p, &data, dim, 12, &fp).unwrap();
        let rel = (ka.objective - kb.objective).abs() / ka.objective;
        assert!(rel < 1e-4, "k-means objectives {} and {}", ka.objective, kb.objective);
        let (ga, gb) = (Cpu.gram(&data, dim).unwrap(), p.gram(&data, dim).unwrap());
        let worst =
            ga.iter().zip(&gb).map(|(x, y)| (x - y).abs() / x.abs().max(1.0)).fold(0.0, f64::max);
        assert!(worst < 1e-5, "gram differs by {worst}");
    }

    /// The probe's loss and gradients on the device equal the host's within 1e-5 relative
    /// (f32 sums in another order; the host sums its exponentials in f64).
    fn probe_as_cpu<B: Backend>(p: &OnDevice<B>)
    where
        B::Device: Sync,
    {
        let mut rng = SplitMix64::new(9);
        let (g, d, c, px) = (4, 6, 5, 10);
        let probe = LinearProbe::new(d, c, 3);
        let maps: Vec<FeatureMap> = (0..3)
            .map(|_| {
                FeatureMap::new(
                    g,
                    g,
                    d,
                    (0..g * g * d).map(|_| rng.uniform(-1.0, 1.0) as f32).collect(),
                )
            })
            .collect();
        let masks: Vec<Mask> = (0..3)
            .map(|_| Mask {
                width: px,
                height: px,
                labels: (0..px * px)
                    .map(|_| if rng.below(6) == 0 { 255 } else { rng.below(c as u64) as u8 })
                    .collect(),
            })
            .collect();
        let batch: Vec<(&FeatureMap, &Mask)> = maps.iter().zip(&masks).collect();
        let (la, wa, ba) = Cpu.probe_grad(&probe, &batch).unwrap();
        let (lb, wb, bb) = p.probe_grad(&probe, &batch).unwrap();
        let rel = |x: &[f32], y: &[f32]| {
            let scale = x.iter().map(|v| v.abs()).fold(0.0, f32::max).max(1e-6);
            x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
        };
        assert!((la - lb).abs() / la < 1e-5, "loss {la} vs {lb}");
        assert!(rel(&wa, &wb) < 1e-5 && rel(&ba, &bb) < 1e-5, "gradients differ");
    }

    /// One host buffer reused for successive query blocks with new contents (as the
    /// evaluation's blocks are, when the allocator hands the freed block back): every block
    /// is searched with its own queries.
    #[test]
    fn a_reused_query_buffer_is_searched_with_its_new_contents() {
        let p = on::<burn::backend::Flex>();
        let mut rng = SplitMix64::new(5);
        let dim = 8;
        let bank: Vec<f32> = (0..200 * dim).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let mut queries = vec![0.0f32; 10 * dim];
        for block in 0..3 {
            queries.iter_mut().for_each(|v| *v = rng.uniform(-1.0, 1.0) as f32);
            let (mut a, mut b) = (vec![TopK::new(); 10], vec![TopK::new(); 10]);
            let mut qb = p.queries(&queries, dim).unwrap();
            for (t, tile) in bank.chunks(64 * dim).enumerate() {
                Cpu.queries(&queries, dim).unwrap().search_tile(tile, t * 64, 5, &mut a).unwrap();
                qb.search_tile(tile, t * 64, 5, &mut b).unwrap();
            }
            drop(qb);
            let ids = |v: &[TopK]| -> Vec<Vec<usize>> {
                v.iter().map(|t| t.iter().map(|c| c.1).collect()).collect()
            };
            assert_eq!(ids(&a), ids(&b), "query block {block}");
        }
    }

    #[test]
    fn device_products_equal_the_cpu_path() {
        probe_as_cpu(&on::<burn::backend::Flex>());
        probe_as_cpu(&on::<crate::testing::Golden>());
        same_as_cpu(&on::<burn::backend::Flex>());
        same_as_cpu(&on::<crate::testing::Golden>());
    }
}
