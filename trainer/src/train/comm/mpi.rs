//! One process per device, started by an MPI launcher (`mpirun -n 8 mosic train ...`,
//! `mpirun -H a:8,b:8 ...`, `srun --mpi=pmix ...`): the rank and the world size come from MPI,
//! the local rank from the ranks that share a node. MPI moves host data (the CPU backends';
//! OpenMPI as packaged is not CUDA-aware) and hands out NCCL's id for device data.
//!
//! A rank that fails ends the job: an error or a panic prints the rank's message and calls
//! `MPI_Abort`; a rank that waits in a collective longer than its limit (a peer stalled or
//! dead) prints what it waited in and exits, and the launcher ends the others; a rank that is
//! killed is noticed by the launcher, which ends the others.

use super::{Comm, Op, Wait};
use anyhow::{bail, Context, Result};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// This process's place in an MPI job. Dropping it finalises MPI.
pub struct Mpi {
    world: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
    /// This rank's index among the ranks of its node, and their number.
    pub local_rank: usize,
    pub local_size: usize,
    pub host: String,
    watchdog: Arc<Watchdog>,
    _universe: mpi::environment::Universe,
}

// SAFETY: MPI is initialised with MPI_THREAD_MULTIPLE (checked in `init`), and every call on
// the communicator goes through the mutex, one at a time.
unsafe impl Send for Mpi {}
// SAFETY: as above.
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI; every process of the job must call it.
    pub fn init() -> Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Multiple)
            .context("MPI was already initialised in this process")?;
        if threading != mpi::Threading::Multiple {
            bail!(
                "this MPI library gives {threading:?} threading, and a rank's collectives and its \
                 watchdog need MPI_THREAD_MULTIPLE; use an MPI built with thread support (Debian's OpenMPI is)"
            );
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let local = world.split_shared(world.rank());
        let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
        let watchdog = Watchdog::start(format!("rank {rank} of {size} ({host})"));
        Ok(Self {
            world: Mutex::new(world),
            rank,
            size,
            local_rank,
            local_size,
            host,
            watchdog,
            _universe: universe,
        })
    }

    fn guarded<T>(&self, wait: &Wait, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        self.watchdog.arm(wait);
        let out = f(&world);
        self.watchdog.disarm();
        out
    }
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce(&self, values: &mut [f32], op: Op, wait: &Wait) -> Result<()> {
        match op {
            Op::Sum => {
                let send = values.to_vec();
                self.guarded(wait, |w| {
                    w.all_reduce_into(&send[..], values, SystemOperation::sum())
                });
            }
            // MPI_MAX leaves NaN to the implementation: gather, then combine in rank order.
            Op::Max => {
                let mut all = vec![0f32; values.len() * self.size];
                self.guarded(wait, |w| w.all_gather_into(&values[..], &mut all[..]));
                let len = values.len();
                for (i, v) in values.iter_mut().enumerate() {
                    *v = (1..self.size).fold(all[i], |a, r| op.apply(a, all[r * len + i]));
                }
            }
        }
        Ok(())
    }

    fn broadcast(&self, bytes: &mut [u8], wait: &Wait) -> Result<()> {
        self.guarded(wait, |w| w.process_at_rank(0).broadcast_into(bytes));
        Ok(())
    }

    fn fail(&self, why: &str) {
        eprintln!("error: rank {} of {} ({}): {why}", self.rank, self.size, self.host);
        // Not through the mutex: the failing thread may not be the one inside a collective.
        SimpleCommunicator::world().abort(1)
    }

    fn failure(&self) -> Option<String> {
        None
    }

    fn arm(&self, wait: &Wait) {
        self.watchdog.arm(wait);
    }

    fn disarm(&self) {
        self.watchdog.disarm();
    }

    fn describe(&self) -> String {
        format!(
            "{} MPI processes ({} on this node, {})",
            self.size,
            self.local_size,
            mpi::environment::library_version().unwrap_or_default().lines().next().unwrap_or("")
        )
    }
}

/// Ends the process when a collective waits past its limit: MPI has no timeout of its own,
/// and a rank stuck in one cannot report anything itself.
struct Watchdog {
    /// Nanoseconds since `epoch` at which the armed collective times out; 0 while none is.
    deadline: AtomicU64,
    epoch: Instant,
    message: Mutex<String>,
    who: String,
}

impl Watchdog {
    fn start(who: String) -> Arc<Self> {
        let w = Arc::new(Self {
            deadline: AtomicU64::new(0),
            epoch: Instant::now(),
            message: Mutex::new(String::new()),
            who,
        });
        let watch = w.clone();
        std::thread::Builder::new()
            .name("mosic-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(200));
                let d = watch.deadline.load(Ordering::Acquire);
                if d != 0 && watch.epoch.elapsed().as_nanos() as u64 > d {
                    let m = watch.message.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    eprintln!("error: {}: {m}", watch.who);
                    // SAFETY: ends the process at once; the launcher ends the other ranks.
                    unsafe { libc::_exit(3) }
                }
            })
            .expect("the watchdog thread starts");
        w
    }

    fn arm(&self, wait: &Wait) {
        *self.message.lock().unwrap_or_else(|e| e.into_inner()) = format!(
            "waited {:.0} s in {} for the other ranks ({}): a rank is stalled or dead",
            wait.limit.as_secs_f64(),
            wait.what,
            wait.setting
        );
        let at = self.epoch.elapsed() + wait.limit;
        self.deadline.store(at.as_nanos().max(1) as u64, Ordering::Release);
    }

    fn disarm(&self) {
        self.deadline.store(0, Ordering::Release);
    }
}
