//! Training: [`loss`] (features at track points, Sinkhorn-Knopp, the loss), [`params`]
//! (AdamW, the update gate, EMA), [`step`] (the MoSiC step), [`comm`] (collectives between
//! ranks: threads, MPI, NCCL), `worker` (one device's loop), [`fit`] (the run), [`bench`] (the step benchmark).

pub mod bench;
pub mod comm;
pub mod fit;
pub mod loss;
pub mod params;
pub mod step;
mod worker;

pub use fit::{train, Summary};
