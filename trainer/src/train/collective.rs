//! Collectives between the workers of one process, one worker (thread) per device.
//!
//! An all-reduce gathers every rank's values on the host, reduces them in rank order and hands
//! the same result to all ranks, so the replicas stay bit-identical. Gradients travel in a
//! few large buckets ([`Group::reduce_grads`]), not one call per tensor. Sinkhorn's sums travel
//! as they are computed, as the released code all-reduces them.
//!
//! A failing worker (an error or a panic) calls [`Collective::fail`]: every rank waiting in a
//! collective, or arriving at one later, gets that error at once. A collective that waits
//! longer than its timeout fails too, so nothing waits forever.

use anyhow::{anyhow, bail, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How values of the ranks are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Sum,
    Max,
}

/// The shared state of a group of `size` ranks.
pub struct Collective {
    size: usize,
    timeout: Duration,
    state: Mutex<State>,
    arrived: Condvar,
}

#[derive(Default)]
struct State {
    /// Completed collectives.
    generation: u64,
    parts: Vec<Option<Vec<f32>>>,
    op: Option<Op>,
    result: Arc<Vec<f32>>,
    failed: Option<String>,
}

impl Collective {
    pub fn new(size: usize, timeout: Duration) -> Arc<Self> {
        let state = State { parts: vec![None; size], ..Default::default() };
        Arc::new(Self { size, timeout, state: Mutex::new(state), arrived: Condvar::new() })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Ends the group with `why`: every waiting and later call returns it as an error. The
    /// first failure is the one reported.
    pub fn fail(&self, why: impl Into<String>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.failed.is_none() {
            s.failed = Some(why.into());
        }
        self.arrived.notify_all();
    }

    /// The failure that ended the group, if one did.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).failed.clone()
    }

    /// Rank `rank`'s `values`, combined with every other rank's (same length), in rank order.
    pub fn all_reduce(&self, rank: usize, values: Vec<f32>, op: Op) -> Result<Arc<Vec<f32>>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = &s.failed {
            bail!("{f}");
        }
        if s.parts[rank].is_some() {
            bail!("rank {rank} entered a collective twice");
        }
        if *s.op.get_or_insert(op) != op {
            let why = format!("ranks disagree on a collective's operation ({op:?} at rank {rank})");
            s.failed = Some(why.clone());
            self.arrived.notify_all();
            bail!("{why}");
        }
        s.parts[rank] = Some(values);
        if s.parts.iter().all(Option::is_some) {
            let parts: Vec<Vec<f32>> =
                s.parts.iter_mut().map(|p| p.take().expect("all in")).collect();
            let n = parts[0].len();
            if let Some(p) = parts.iter().position(|p| p.len() != n) {
                let why = format!(
                    "ranks disagree on a collective's length ({n} at rank 0, {} at rank {p})",
                    parts[p].len()
                );
                s.failed = Some(why.clone());
                self.arrived.notify_all();
                bail!("{why}");
            }
            let mut acc = parts[0].clone();
            for p in &parts[1..] {
                for (a, v) in acc.iter_mut().zip(p) {
                    *a = match op {
                        Op::Sum => *a + v,
                        Op::Max => a.max(*v),
                    };
                }
            }
            s.result = Arc::new(acc);
            s.op = None;
            s.generation += 1;
            self.arrived.notify_all();
            return Ok(s.result.clone());
        }
        let generation = s.generation;
        let deadline = Instant::now() + self.timeout;
        while s.generation == generation && s.failed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let waiting: Vec<String> = s
                    .parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.is_none())
                    .map(|(r, _)| r.to_string())
                    .collect();
                let why = format!(
                    "rank {rank} waited {:.0} s in a collective for rank(s) {}",
                    self.timeout.as_secs_f64(),
                    waiting.join(", ")
                );
                s.failed = Some(why.clone());
                self.arrived.notify_all();
                bail!("{why}");
            }
            s = self.arrived.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        if s.generation == generation {
            bail!("{}", s.failed.clone().unwrap_or_default());
        }
        // No later collective can finish before this rank joins it, so the result is ours.
        Ok(s.result.clone())
    }
}

/// Gradient buckets hold at most this many values (64 MiB of f32).
pub const BUCKET_VALUES: usize = 16 << 20;

/// One worker's place in a group: its rank, and where its clips sit in the global batch.
#[derive(Clone)]
pub struct Group {
    pub rank: usize,
    pub collective: Arc<Collective>,
    /// Index of this worker's first clip in the global batch.
    pub first_clip: usize,
}

impl Group {
    pub fn size(&self) -> usize {
        self.collective.size()
    }

    /// Host values reduced over the group.
    pub fn reduce_host(&self, values: Vec<f32>, op: Op) -> Result<Vec<f32>> {
        Ok(self.collective.all_reduce(self.rank, values, op)?.as_ref().clone())
    }

    /// A tensor reduced over the group, back on its device.
    pub fn reduce<B: Backend, const D: usize>(
        &self,
        t: Tensor<B, D>,
        op: Op,
    ) -> Result<Tensor<B, D>> {
        let (shape, device) = (t.dims(), t.device());
        let values =
            t.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| anyhow!("{e:?}"))?;
        let out = self.reduce_host(values, op)?;
        Ok(Tensor::from_data(TensorData::new(out, shape), &device))
    }

    /// Every gradient of `module` summed over the group, in buckets of up to
    /// [`BUCKET_VALUES`] values (parameters in the module's order, so every rank packs alike).
    pub fn reduce_grads<B: AutodiffBackend, M: Module<B>>(
        &self,
        module: &M,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams> {
        let mut order = Order::<B> { ids: Vec::new(), _b: std::marker::PhantomData };
        module.visit(&mut order);
        // Each bucket: its parameters' ids, ranks and shapes, and their gradients flattened.
        type Entry = (burn::module::ParamId, usize, Vec<usize>);
        let mut bucket: Vec<Entry> = Vec::new();
        let mut parts: Vec<Tensor<B::InnerBackend, 1>> = Vec::new();
        let mut filled = 0;
        let flush = |bucket: &mut Vec<Entry>,
                     parts: &mut Vec<Tensor<B::InnerBackend, 1>>,
                     grads: &mut GradientsParams|
         -> Result<()> {
            if bucket.is_empty() {
                return Ok(());
            }
            let flat = self.reduce(Tensor::cat(std::mem::take(parts), 0), Op::Sum)?;
            let mut at = 0;
            for (id, rank, shape) in bucket.drain(..) {
                let n: usize = shape.iter().product();
                let g = flat.clone().narrow(0, at, n);
                at += n;
                match rank {
                    1 => grads.register::<B::InnerBackend, 1>(id, g),
                    2 => grads.register::<B::InnerBackend, 2>(id, g.reshape([shape[0], shape[1]])),
                    3 => grads.register::<B::InnerBackend, 3>(
                        id,
                        g.reshape([shape[0], shape[1], shape[2]]),
                    ),
                    4 => grads.register::<B::InnerBackend, 4>(
                        id,
                        g.reshape([shape[0], shape[1], shape[2], shape[3]]),
                    ),
                    r => bail!("a gradient of rank {r}"),
                }
            }
            Ok(())
        };
        for (id, rank) in order.ids {
            let flat = match rank {
                1 => grads.remove::<B::InnerBackend, 1>(id).map(|g| (g.dims().to_vec(), g)),
                2 => grads
                    .remove::<B::InnerBackend, 2>(id)
                    .map(|g| (g.dims().to_vec(), g.flatten(0, 1))),
                3 => grads
                    .remove::<B::InnerBackend, 3>(id)
                    .map(|g| (g.dims().to_vec(), g.flatten(0, 2))),
                4 => grads
                    .remove::<B::InnerBackend, 4>(id)
                    .map(|g| (g.dims().to_vec(), g.flatten(0, 3))),
                r => bail!("a parameter of rank {r}"),
            };
            // Every rank has a gradient for every trainable parameter (same graph).
            let Some((shape, g)) = flat else { continue };
            let n: usize = shape.iter().product();
            if filled + n > BUCKET_VALUES && !bucket.is_empty() {
                flush(&mut bucket, &mut parts, &mut grads)?;
                filled = 0;
            }
            bucket.push((id, rank, shape));
            parts.push(g);
            filled += n;
        }
        flush(&mut bucket, &mut parts, &mut grads)?;
        Ok(grads)
    }
}

/// The float parameters of a module in visiting order, with their ranks.
struct Order<B: Backend> {
    ids: Vec<(burn::module::ParamId, usize)>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for Order<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.ids.push((param.id, D));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_ranks_get_the_same_reduction() {
        let c = Collective::new(3, Duration::from_secs(10));
        let out: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let c = c.clone();
                    s.spawn(move || {
                        let a = c.all_reduce(r, vec![r as f32, 1.0], Op::Sum).unwrap();
                        let b = c.all_reduce(r, vec![-(r as f32)], Op::Max).unwrap();
                        vec![a[0], a[1], b[0]]
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(out.iter().all(|o| o == &vec![3.0, 3.0, 0.0]), "{out:?}");
    }

    #[test]
    fn a_failure_wakes_every_waiting_rank_promptly() {
        let c = Collective::new(3, Duration::from_secs(600));
        let t0 = Instant::now();
        let errs: Vec<String> = std::thread::scope(|s| {
            let waiting: Vec<_> = (0..2)
                .map(|r| {
                    let c = c.clone();
                    s.spawn(move || c.all_reduce(r, vec![1.0], Op::Sum).unwrap_err().to_string())
                })
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            c.fail("worker 2: out of memory at step 3");
            waiting.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(errs.iter().all(|e| e.contains("worker 2: out of memory")), "{errs:?}");
        // Later calls fail at once too.
        assert!(c.all_reduce(2, vec![1.0], Op::Sum).is_err());
    }

    #[test]
    fn a_rank_that_never_comes_times_the_collective_out() {
        let c = Collective::new(2, Duration::from_millis(200));
        let e = c.all_reduce(0, vec![1.0], Op::Sum).unwrap_err().to_string();
        assert!(e.contains("rank 0 waited") && e.contains("for rank(s) 1"), "{e}");
        assert!(c.failure().is_some());
    }
}
