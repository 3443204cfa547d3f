//! `mosic demo`: the end of `make demo` (the experiment itself is the `mosic-demo` library).

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct DemoArgs {
    /// Training config of every run (seed and motion are set per run).
    #[arg(long, default_value = "configs/tiny_synth.toml")]
    config: PathBuf,
    /// Track shards to train on.
    #[arg(long, default_value = "data/demo-tracks")]
    tracks: PathBuf,
    /// Labelled videos for in-loop validation (never used for the report's figures).
    #[arg(long, default_value = "data/synth-val")]
    val: PathBuf,
    /// Held-out labelled videos the report is computed on.
    #[arg(long, default_value = "data/synth-test")]
    test: PathBuf,
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Training seeds 0..seeds, each trained with tracks and without motion.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Evaluation input size (2x the training size, as the paper evaluates at 448 after 224).
    #[arg(long, default_value_t = 224)]
    eval_size: usize,
    #[arg(long, default_value_t = 100)]
    mask_size: usize,
    /// Evaluate every n-th annotated frame of the held-out videos.
    #[arg(long, default_value_t = 8)]
    every: usize,
    /// Clusters of the track-consistency k-means (fixed for every backbone).
    #[arg(long, default_value_t = 16)]
    consistency_k: usize,
    /// Extra config overrides for every run (KEY=VALUE).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(long, default_value = mosic_trainer::backend::DEFAULT)]
    backend: String,
    /// cpu, or cuda:N for the cuda and tch backends.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn demo(a: DemoArgs) -> Result<ExitCode> {
    let cfg = mosic_demo::DemoConfig {
        config: a.config,
        tracks: a.tracks,
        val: a.val,
        test: a.test,
        out: a.out,
        seeds: a.seeds,
        eval_size: a.eval_size,
        mask_size: a.mask_size,
        every: a.every,
        consistency_k: a.consistency_k,
        set: a.set,
        target: mosic_trainer::backend::Target::resolve(&a.backend, &a.device, Default::default())?,
    };
    let report = mosic_demo::run(&cfg)?;
    println!("{report}");
    println!("demo: report in {}", cfg.out.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}
