//! `mosic shards`: verify, summarise, merge and draw shard directories.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ShardsCommand {
    /// Check checksums, schema, counts, shapes and coordinate ranges of every shard.
    Verify { dir: PathBuf },
    /// Clips, videos, visible fraction and displacement distribution.
    Stats {
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Join shard directories (e.g. of scale-out workers) into one manifest.
    Merge {
        /// Output directory; inputs inside it are referenced in place, others copied in.
        #[arg(long)]
        out: PathBuf,
        /// Shard directories to join.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Draw a clip's tracks over its frames into an animated GIF or an MP4.
    Render {
        dir: PathBuf,
        /// Clip id: VIDEO#INDEX (or DATASET/VIDEO#INDEX).
        #[arg(long)]
        clip: String,
        /// Output file, .gif or .mp4.
        #[arg(long)]
        out: PathBuf,
        /// Upscale factor of the drawing.
        #[arg(long, default_value_t = 2)]
        scale: u32,
        /// Playback frame rate.
        #[arg(long, default_value_t = 4)]
        fps: u32,
    },
}

pub fn shards(c: ShardsCommand) -> Result<ExitCode> {
    match c {
        ShardsCommand::Verify { dir } => {
            let report = mosic::verify::verify_dir(&dir)?;
            for p in &report.problems {
                eprintln!("problem: {p}");
            }
            if report.ok() {
                println!(
                    "ok: {} shards, {} clips in {}",
                    report.shards,
                    report.clips,
                    dir.display()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{} problem(s) in {} ({} shards, {} clips read)",
                    report.problems.len(),
                    dir.display(),
                    report.shards,
                    report.clips
                );
                Ok(ExitCode::FAILURE)
            }
        }
        ShardsCommand::Stats { dir, json } => {
            let s = mosic::verify::stats_dir(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("directory          {}", dir.display());
                println!("shards             {}", s.shards);
                println!("clips              {}", s.clips);
                println!("videos             {}", s.videos);
                println!("datasets           {}", s.datasets.join(", "));
                println!(
                    "clip shape         {} frames x {} points at {}x{}",
                    s.frames_per_clip, s.points_per_clip, s.width, s.height
                );
                println!("tracker            {}", s.tracker);
                println!(
                    "visible            {:.1}% of entries, {:.1}% of points always visible",
                    100.0 * s.visible_fraction,
                    100.0 * s.always_visible_fraction
                );
                for (name, d) in [
                    ("step displacement", &s.step_displacement_px),
                    ("clip displacement", &s.clip_displacement_px),
                ] {
                    println!(
                        "{name:<18} mean {:.2} px, p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2} (n = {})",
                        d.mean, d.p50, d.p90, d.p99, d.max, d.count
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ShardsCommand::Merge { out, inputs } => {
            let m = mosic::manifest::merge(&inputs, &out)?;
            println!(
                "merged {} directories: {} shards, {} clips -> {}",
                inputs.len(),
                m.shards.len(),
                m.total_rows(),
                mosic::manifest::Manifest::path(&out).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ShardsCommand::Render { dir, clip, out, scale, fps } => {
            let (c, spec) = mosic::verify::find_clip(&dir, &clip)?;
            let frames = c
                .frames
                .iter()
                .enumerate()
                .map(|(k, j)| {
                    mosic::imageio::decode_jpeg(j)
                        .map_err(|m| anyhow::anyhow!("clip {clip}, frame {k}: {m}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let tracks: Vec<f32> = c.tracks.iter().flatten().copied().collect();
            let vis: Vec<u8> = c.visibility.iter().map(|&v| v as u8).collect();
            let opts = mosic_video::RenderOptions { upscale: scale, fps, ..Default::default() };
            mosic_video::render(&frames, &tracks, &vis, spec.num_points(), &out, &opts)
                .with_context(|| format!("rendering clip {clip}"))?;
            println!(
                "wrote {} ({} frames, {} points)",
                out.display(),
                frames.len(),
                spec.num_points()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
