//! `mosic bench loader`: clips/s of the training loader from real shards, by decode threads.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct BenchLoaderArgs {
    /// Track shards to read (real shards: `mosic tracks` output).
    #[arg(long)]
    shards: PathBuf,
    /// Decode threads to measure; a comma list runs each.
    #[arg(long, default_value = "1,2")]
    threads: String,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Output side S.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Side of the grid of points picked inside each crop.
    #[arg(long, default_value_t = 16)]
    grid: u32,
    /// Timed batches (after one untimed).
    #[arg(long, default_value_t = 8)]
    batches: usize,
}

/// Clips/s the loader delivers: Parquet reads, JPEG decoding, flip + crop + resize and the
/// point selection (normalisation runs on the trainer's device).
pub fn loader(a: BenchLoaderArgs) -> Result<ExitCode> {
    use mosic_trainer::data::{Loader, LoaderConfig, LoaderState};
    let threads: Vec<usize> = a
        .threads
        .split(',')
        .map(|t| t.trim().parse().with_context(|| format!("--threads {t}")))
        .collect::<Result<_>>()?;
    let manifest = mosic::Manifest::load(&a.shards)?;
    println!(
        "shards {} ({} clips, {} frames of {} x {}, stored grid {}), batch {}, output {} px, {}x{} points",
        a.shards.display(),
        manifest.total_rows(),
        manifest.spec.frames_per_clip,
        manifest.spec.width,
        manifest.spec.height,
        manifest.spec.grid_size,
        a.batch,
        a.size,
        a.grid,
        a.grid
    );
    println!("| decode threads | clips/s | frames/s | ms per batch |\n|---|---|---|---|");
    for &t in &threads {
        // Every stored clip an epoch, so short sets still fill the timed batches.
        let cfg = LoaderConfig {
            batch_size: a.batch,
            input_size: a.size,
            grid: a.grid,
            clips_per_video: 0,
            workers: t,
            prefetch: 2,
            ..Default::default()
        };
        let mut l = Loader::open(&a.shards, cfg, LoaderState::default())?;
        let frames = l.spec().frames_per_clip as f64;
        l.next_batch()?;
        let t0 = Instant::now();
        for _ in 0..a.batches {
            l.next_batch()?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let clips = (a.batches * a.batch) as f64 / secs;
        println!(
            "| {t} | {clips:.1} | {:.0} | {:.1} |",
            clips * frames,
            secs * 1e3 / a.batches as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}
