//! A run started by an MPI launcher (`mpirun -n 8 mosic train ...`, `srun --mpi=pmix ...`):
//! this process is one rank, on the device of its local rank.

use anyhow::{bail, Result};
use mosic_trainer::train::comm::{launched_by_mpi, Comm, Wait};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// This process's rank of an MPI job.
pub struct Job {
    pub comm: Arc<dyn Comm>,
    /// Its index among the ranks of its node: its GPU.
    pub local_rank: usize,
}

impl Job {
    /// The job this process belongs to, or None when no MPI launcher started it. Checked
    /// before any work: a launch this build cannot join is an error.
    pub fn detect() -> Result<Option<Job>> {
        if !launched_by_mpi() {
            return Ok(None);
        }
        #[cfg(feature = "mpi")]
        {
            let mpi = mosic_trainer::train::comm::mpi::Mpi::init()?;
            let local_rank = mpi.local_rank;
            Ok(Some(Job { comm: Arc::new(mpi), local_rank }))
        }
        #[cfg(not(feature = "mpi"))]
        bail!(
            "this process was started by an MPI launcher, but this mosic was built without MPI: \
             build with --features mpi (and tch or cuda for GPUs), see docs/devices.md"
        )
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The device of this rank: `cpu`, or for `cuda` / `cuda:N` the GPU of its local rank.
    pub fn device(&self, asked: &str) -> Result<String> {
        match asked {
            "cpu" => Ok("cpu".into()),
            d if d == "cuda" || d.starts_with("cuda:") => Ok(format!("cuda:{}", self.local_rank)),
            d => bail!("--device {d}: expected cpu or cuda"),
        }
    }

    /// Rank 0's `path` on every rank (the run directory every rank writes to or reads from).
    pub fn share_path(&self, path: PathBuf) -> Result<PathBuf> {
        let wait = Wait {
            what: "the run directory from rank 0",
            limit: Duration::from_secs(600),
            setting: "fixed",
        };
        let mine = path.to_string_lossy().into_owned().into_bytes();
        let mut len = (mine.len() as u64).to_le_bytes();
        self.comm.broadcast(&mut len, &wait)?;
        let mut bytes =
            if self.rank() == 0 { mine } else { vec![0; u64::from_le_bytes(len) as usize] };
        self.comm.broadcast(&mut bytes, &wait)?;
        Ok(PathBuf::from(String::from_utf8(bytes)?))
    }
}
