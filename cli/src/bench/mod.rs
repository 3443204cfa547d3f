//! `mosic bench`: benchmarks that print figures.

use anyhow::Result;
use clap::Subcommand;
use std::process::ExitCode;

mod loader;
mod search;
mod step;
mod tracks;
mod train;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Clips/s of the whole tracking stage and of decoding alone, on the same clips.
    Tracks(tracks::BenchTracksArgs),
    /// Clips/s and peak memory of the training step for a config and backend.
    Train(train::BenchTrainArgs),
    /// Our training step beside the PyTorch reference step (torch_step.py), same machine, same settings.
    Step(step::BenchStepArgs),
    /// Clips/s of the training loader (read, decode, crop) from real shards, by decode threads.
    Loader(loader::BenchLoaderArgs),
    /// Queries/s of the exact top-k search on random unit vectors (tools/bench/bench_faiss.py compares FAISS).
    Knn(search::BenchKnnArgs),
    /// Points/s of the FAISS-style k-means on random unit vectors (tools/bench/bench_faiss.py compares FAISS).
    Kmeans(search::BenchKmeansArgs),
}

pub fn run(c: BenchCommand) -> Result<ExitCode> {
    match c {
        BenchCommand::Tracks(a) => tracks::bench(a),
        BenchCommand::Train(a) => train::bench(a),
        BenchCommand::Step(a) => step::step(a),
        BenchCommand::Loader(a) => loader::loader(a),
        BenchCommand::Knn(a) => search::knn(a),
        BenchCommand::Kmeans(a) => search::kmeans(a),
    }
}
