//! The `mosic` command line: parses the arguments and hands each command to its module.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod demo;
mod eval;
mod job;
mod npy;
mod peak;
mod progress;
mod runs;
mod shards;
mod synth;
mod tracks;
mod train;

#[derive(Parser)]
#[command(
    name = "mosic",
    version,
    about = "Motion-guided Sinkhorn clustering: track shards and dense post-training of ViTs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the synthetic dataset: videos (JPEG frames, MP4), masks and ground-truth shards.
    Synth(synth::SynthArgs),
    /// Inspect and check shard directories.
    #[command(subcommand)]
    Shards(shards::ShardsCommand),
    /// Stage 1: track videos into shards (`mosic tracks --input DIR`), or score tracks (`mosic tracks eval`).
    Tracks(tracks::TracksArgs),
    /// Stage 2: post-train a ViT on track shards.
    Train(train::TrainArgs),
    /// Write a run's teacher backbone as timm-compatible safetensors.
    Export(train::ExportArgs),
    /// Dense patch features of images or video frames, written as safetensors.
    Features(eval::FeaturesArgs),
    /// Evaluation protocols on dense features: cluster, video, linear, incontext.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Train with and without motion for several seeds, evaluate on held-out videos, write a report.
    Demo(demo::DemoArgs),
    /// Runs side by side: differing config values, steps, final loss, validation, evaluations, speed.
    Runs(runs::RunsArgs),
    /// Benchmarks that print throughput figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[global_allocator]
static ALLOCATOR: mosic_trainer::backend::Allocator = mosic_trainer::backend::Allocator {};

fn main() -> ExitCode {
    mosic_trainer::backend::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Synth(a) => synth::synth(a),
        Command::Shards(c) => shards::shards(c),
        Command::Tracks(a) => tracks::tracks(a),
        Command::Bench(c) => bench::run(c),
        Command::Train(a) => train::train(a),
        Command::Export(a) => train::export(a),
        Command::Features(a) => eval::features(a),
        Command::Eval(c) => eval::eval(c),
        Command::Demo(a) => demo::demo(a),
        Command::Runs(a) => runs::runs(a),
    }
}
