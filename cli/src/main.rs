//! The `mosic` command line: argument parsing and reporting over the workspace libraries.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;
mod demo;
mod eval;
mod progress;
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
    Synth(SynthArgs),
    /// Inspect and check shard directories.
    #[command(subcommand)]
    Shards(ShardsCommand),
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
    Runs(RunsArgs),
    /// Benchmarks that print throughput figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Clips/s of the whole tracking stage and of decoding alone, on the same clips.
    Tracks(tracks::BenchArgs),
    /// Clips/s and peak memory of the training step for a config and backend.
    Train(train::BenchTrainArgs),
    /// Our training step beside the PyTorch reference step (torch_step.py), same machine, same settings.
    Step(bench::BenchStepArgs),
    /// Clips/s of the training loader (read, decode, crop) from real shards, by decode threads.
    Loader(bench::BenchLoaderArgs),
    /// Queries/s of the exact top-k search on random unit vectors (tools/bench_faiss.py compares FAISS).
    Knn(bench::BenchKnnArgs),
    /// Points/s of the FAISS-style k-means on random unit vectors (tools/bench_faiss.py compares FAISS).
    Kmeans(bench::BenchKmeansArgs),
}

#[derive(Args)]
struct SynthArgs {
    /// Output directory.
    #[arg(long, default_value = "data/synth")]
    out: PathBuf,
    /// Number of videos.
    #[arg(long, default_value_t = 16)]
    videos: u32,
    /// Seed; the same seed gives the same dataset, byte for byte.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of the first video (to make a held-out set that follows a training set).
    #[arg(long, default_value_t = 0)]
    first_video: u32,
    /// Frames per video (30 fps).
    #[arg(long, default_value_t = 192)]
    frames: u32,
    /// Source frame width and height.
    #[arg(long, default_value_t = 320)]
    width: u32,
    #[arg(long, default_value_t = 180)]
    height: u32,
    /// Skip writing MP4 files.
    #[arg(long)]
    no_mp4: bool,
    /// Query grid side of the ground truth (the grid `mosic tracks` stores by default).
    #[arg(long, default_value_t = 32)]
    grid: u32,
    /// Camera motion: default (pan, zoom within 6%) or strong (also zoom by 10-25% and turn by
    /// 4-10 degrees per 3.2 s).
    #[arg(long, value_enum, default_value = "default")]
    camera: CameraArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CameraArg {
    Default,
    Strong,
}

#[derive(Args)]
struct RunsArgs {
    /// Run directories (anything else, e.g. a report matched by a glob, is skipped with a note).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Overlay their loss and validation curves in this figure (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print CSV (for pandas) instead of the table.
    #[arg(long)]
    csv: bool,
}

#[derive(Subcommand)]
enum ShardsCommand {
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
        Command::Synth(a) => synth(a),
        Command::Shards(c) => shards(c),
        Command::Tracks(a) => tracks::tracks(a),
        Command::Bench(BenchCommand::Tracks(a)) => tracks::bench(a),
        Command::Bench(BenchCommand::Train(a)) => train::bench(a),
        Command::Bench(BenchCommand::Step(a)) => bench::step(a),
        Command::Bench(BenchCommand::Loader(a)) => bench::loader(a),
        Command::Bench(BenchCommand::Knn(a)) => bench::knn(a),
        Command::Bench(BenchCommand::Kmeans(a)) => bench::kmeans(a),
        Command::Train(a) => train::train(a),
        Command::Export(a) => train::export(a),
        Command::Features(a) => eval::features(a),
        Command::Eval(c) => eval::eval(c),
        Command::Demo(a) => demo::demo(a),
        Command::Runs(a) => runs(a),
    }
}

fn synth(a: SynthArgs) -> Result<ExitCode> {
    let mut cfg = mosic_synth::SynthConfig {
        videos: a.videos,
        seed: a.seed,
        first_video: a.first_video,
        mp4: !a.no_mp4,
        ..Default::default()
    };
    cfg.scene.num_frames = a.frames;
    cfg.scene.width = a.width;
    cfg.scene.height = a.height;
    cfg.scene.camera = match a.camera {
        CameraArg::Default => mosic_synth::scene::Camera::Default,
        CameraArg::Strong => mosic_synth::scene::Camera::Strong,
    };
    if a.grid < 1 || a.grid > cfg.stored_width.min(cfg.stored_height) {
        anyhow::bail!(
            "--grid must be in 1..={} (got {})",
            cfg.stored_width.min(cfg.stored_height),
            a.grid
        );
    }
    if a.frames < 1 || a.width < 16 || a.height < 16 || a.videos < 1 {
        anyhow::bail!("--videos and --frames must be positive, --width and --height at least 16");
    }
    cfg.grid_size = a.grid;
    let start = std::time::Instant::now();
    let done = std::sync::atomic::AtomicU32::new(0);
    let total = cfg.videos;
    let report = mosic_synth::generate(&cfg, &a.out, &|name| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        eprint!("\rsynth: {n}/{total} videos ({name})   ");
    })?;
    eprintln!();
    println!(
        "synth: {} videos, {} frames, {} ground-truth clips in {:.1} s -> {} (ground truth: {})",
        report.videos,
        report.frames,
        report.clips,
        start.elapsed().as_secs_f64(),
        a.out.display(),
        report.gt_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn runs(a: RunsArgs) -> Result<ExitCode> {
    use mosic_trainer::compare;
    let (runs, notes) = compare::collect(&a.runs);
    for n in &notes {
        eprintln!("note: {n}");
    }
    if runs.is_empty() {
        anyhow::bail!("none of the {} arguments is a run directory", a.runs.len());
    }
    let (header, rows) = compare::table(&runs);
    if a.csv {
        print!("{}", compare::csv(&header, &rows));
    } else {
        print!("{}", compare::render(&header, &rows));
    }
    if let Some(p) = &a.plot {
        compare::plot(&runs, p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn shards(c: ShardsCommand) -> Result<ExitCode> {
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
