//! A training run on disk: [`dir`] (config, metrics, checkpoints, evaluation results),
//! [`plot`] (its figures) and [`compare`] (runs side by side, `mosic runs`).

pub mod compare;
pub mod dir;
pub mod plot;
