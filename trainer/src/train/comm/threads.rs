//! Ranks that are threads of one process (`--devices`, the CPU tests): every rank's values
//! are gathered on the host and reduced in rank order by the last rank to arrive, and every
//! rank takes the same result.

use super::{Comm, Op, Wait};
use anyhow::{bail, Result};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// The shared state of a group of `size` ranks; [`Threads::rank`] gives each its handle.
pub struct Threads {
    size: usize,
    state: Mutex<State>,
    arrived: Condvar,
}

#[derive(Default)]
struct State {
    /// Completed collectives.
    generation: u64,
    parts: Vec<Option<Vec<u8>>>,
    kind: Option<Kind>,
    result: Arc<Vec<u8>>,
    failed: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Reduce(Op),
    Broadcast,
}

impl Threads {
    pub fn new(size: usize) -> Arc<Self> {
        let state = State { parts: vec![None; size], ..Default::default() };
        Arc::new(Self { size, state: Mutex::new(state), arrived: Condvar::new() })
    }

    /// Rank `rank`'s view of the group.
    pub fn rank(self: &Arc<Self>, rank: usize) -> ThreadRank {
        assert!(rank < self.size, "rank {rank} of {}", self.size);
        ThreadRank { group: self.clone(), rank }
    }

    fn fail(&self, why: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.failed.is_none() {
            s.failed = Some(why.to_string());
        }
        self.arrived.notify_all();
    }

    /// Rank `rank`'s bytes combined with every other rank's (same length), in rank order.
    fn exchange(
        &self,
        rank: usize,
        bytes: Vec<u8>,
        kind: Kind,
        wait: &Wait,
    ) -> Result<Arc<Vec<u8>>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = &s.failed {
            bail!("{f}");
        }
        if s.parts[rank].is_some() {
            bail!("rank {rank} entered a collective twice");
        }
        if *s.kind.get_or_insert(kind) != kind {
            let why = format!(
                "ranks disagree on a collective ({kind:?} at rank {rank}, in {})",
                wait.what
            );
            s.failed = Some(why.clone());
            self.arrived.notify_all();
            bail!("{why}");
        }
        s.parts[rank] = Some(bytes);
        if s.parts.iter().all(Option::is_some) {
            let parts: Vec<Vec<u8>> =
                s.parts.iter_mut().map(|p| p.take().expect("all in")).collect();
            let n = parts[0].len();
            if let Some(p) = parts.iter().position(|p| p.len() != n) {
                let why = format!(
                    "ranks disagree on the length of {} ({n} bytes at rank 0, {} at rank {p})",
                    wait.what,
                    parts[p].len()
                );
                s.failed = Some(why.clone());
                self.arrived.notify_all();
                bail!("{why}");
            }
            s.result = Arc::new(match kind {
                Kind::Broadcast => parts.into_iter().next().expect("rank 0"),
                Kind::Reduce(op) => combine(&parts, op),
            });
            s.kind = None;
            s.generation += 1;
            self.arrived.notify_all();
            return Ok(s.result.clone());
        }
        let generation = s.generation;
        let deadline = Instant::now() + wait.limit;
        while s.generation == generation && s.failed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<String> = s
                    .parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.is_none())
                    .map(|(r, _)| r.to_string())
                    .collect();
                let why = format!(
                    "rank {rank} waited {:.0} s in {} for rank(s) {} ({}): a rank is stalled or dead",
                    wait.limit.as_secs_f64(),
                    wait.what,
                    missing.join(", "),
                    wait.setting
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

/// f32 values of every rank combined in rank order (so the result does not depend on which
/// rank arrived last).
fn combine(parts: &[Vec<u8>], op: Op) -> Vec<u8> {
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let mut acc = floats(&parts[0]);
    for p in &parts[1..] {
        for (a, v) in acc.iter_mut().zip(floats(p)) {
            *a = op.apply(*a, v);
        }
    }
    acc.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One rank of a [`Threads`] group.
pub struct ThreadRank {
    group: Arc<Threads>,
    rank: usize,
}

impl Comm for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.size
    }

    fn all_reduce(&self, values: &mut [f32], op: Op, wait: &Wait) -> Result<()> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = self.group.exchange(self.rank, bytes, Kind::Reduce(op), wait)?;
        for (v, c) in values.iter_mut().zip(out.chunks_exact(4)) {
            *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    fn broadcast(&self, bytes: &mut [u8], wait: &Wait) -> Result<()> {
        let out = self.group.exchange(self.rank, bytes.to_vec(), Kind::Broadcast, wait)?;
        bytes.copy_from_slice(&out);
        Ok(())
    }

    fn fail(&self, why: &str) {
        self.group.fail(why);
    }

    fn failure(&self) -> Option<String> {
        self.group.state.lock().unwrap_or_else(|e| e.into_inner()).failed.clone()
    }

    fn describe(&self) -> String {
        format!("{} threads of one process", self.group.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait(secs: f64) -> Wait<'static> {
        Wait { what: "a test collective", limit: Duration::from_secs_f64(secs), setting: "test" }
    }

    #[test]
    fn all_ranks_get_the_same_reduction_and_rank_0s_broadcast() {
        let g = Threads::new(3);
        let out: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let c = g.rank(r);
                    s.spawn(move || {
                        let mut a = vec![r as f32, 1.0];
                        c.all_reduce(&mut a, Op::Sum, &wait(10.0)).unwrap();
                        let mut b = vec![-(r as f32)];
                        c.all_reduce(&mut b, Op::Max, &wait(10.0)).unwrap();
                        let mut x = [r as u8; 2];
                        c.broadcast(&mut x, &wait(10.0)).unwrap();
                        vec![a[0], a[1], b[0], x[0] as f32]
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(out.iter().all(|o| o == &vec![3.0, 3.0, 0.0, 0.0]), "{out:?}");
    }

    #[test]
    fn a_failure_wakes_every_waiting_rank_promptly() {
        let g = Threads::new(3);
        let t0 = Instant::now();
        let errs: Vec<String> = std::thread::scope(|s| {
            let waiting: Vec<_> = (0..2)
                .map(|r| {
                    let c = g.rank(r);
                    s.spawn(move || {
                        c.all_reduce(&mut [1.0], Op::Sum, &wait(600.0)).unwrap_err().to_string()
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            g.rank(2).fail("worker 2: out of memory at step 3");
            waiting.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(errs.iter().all(|e| e.contains("worker 2: out of memory")), "{errs:?}");
        assert!(g.rank(2).all_reduce(&mut [1.0], Op::Sum, &wait(1.0)).is_err());
    }

    #[test]
    fn a_rank_that_never_comes_names_itself_what_it_waited_in_and_the_setting() {
        let g = Threads::new(2);
        let e = g.rank(0).all_reduce(&mut [1.0], Op::Sum, &wait(0.2)).unwrap_err().to_string();
        assert!(
            e.contains("rank 0 waited")
                && e.contains("a test collective")
                && e.contains("for rank(s) 1")
                && e.contains("(test)"),
            "{e}"
        );
        assert!(g.rank(1).failure().is_some());
    }
}
