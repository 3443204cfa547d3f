//! `mosic tracks`, `mosic tracks eval` and `mosic bench tracks`.

use crate::progress::{hms, Progress};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use mosic::clip::ClipPlan;
use mosic_pipeline::tracker::cotracker::{CoTracker, CoTrackerParams, Device};
use mosic_pipeline::tracker::native::{NativeParams, NativeTracker};
use mosic_pipeline::tracker::Tracker;
use mosic_pipeline::TracksConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TracksArgs {
    #[command(subcommand)]
    command: Option<TracksCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum TracksCommand {
    /// TAP-Vid metrics of predicted tracks against ground truth, beside a zero-motion baseline.
    Eval {
        #[arg(long)]
        pred: PathBuf,
        #[arg(long)]
        gt: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Videos: a YouTube-VOS or DAVIS root or JPEGImages folder, a folder of video files, or one video.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output shard directory.
    #[arg(long, default_value = "data/tracks")]
    out: PathBuf,
    /// Dataset name stored in every row (default: the input folder's name).
    #[arg(long)]
    dataset: Option<String>,
    /// CoTracker3 ONNX model (tools/export_cotracker3_onnx.py); without it the native tracker runs.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the ONNX model runs.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Clips per model call (the public CoTracker3 export takes 1).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Frames per clip.
    #[arg(long, default_value_t = 12)]
    frames: u32,
    /// Seconds a clip spans.
    #[arg(long, default_value_t = 3.2)]
    span: f64,
    /// Clips per video (0: every non-overlapping window).
    #[arg(long, default_value_t = 0)]
    clips_per_video: u32,
    /// Stored frame size (square).
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Query grid side (N = grid^2 points).
    #[arg(long, default_value_t = 16)]
    grid: u32,
    #[arg(long, default_value_t = 90)]
    jpeg_quality: u8,
    /// Frame rate of the frame numbers in frame folders (YouTube-VOS and DAVIS numbering).
    #[arg(long, default_value_t = 30.0)]
    folder_fps: f64,
    #[arg(long, default_value_t = 64)]
    videos_per_shard: usize,
    /// Workers in a scale-out run (default: SLURM_ARRAY_TASK_COUNT, else 1).
    #[arg(long, env = "SLURM_ARRAY_TASK_COUNT", default_value_t = 1)]
    num_workers: u32,
    /// This worker's index (default: SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN, else 0).
    #[arg(long)]
    worker_index: Option<u32>,
    /// Exit with status 0 even when some videos failed.
    #[arg(long)]
    keep_going: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    run: RunArgs,
}

impl RunArgs {
    fn config(&self) -> Result<TracksConfig> {
        let input = self.input.clone().context("--input is required (a dataset folder, a folder of videos, or a video file)")?;
        let worker_index = match self.worker_index {
            Some(i) => i,
            None => match std::env::var("SLURM_ARRAY_TASK_ID") {
                Ok(id) => {
                    let id: u32 = id.parse().context("SLURM_ARRAY_TASK_ID is not a number")?;
                    let min: u32 = std::env::var("SLURM_ARRAY_TASK_MIN").ok().and_then(|m| m.parse().ok()).unwrap_or(0);
                    id.saturating_sub(min)
                }
                Err(_) => 0,
            },
        };
        Ok(TracksConfig {
            input,
            dataset: self.dataset.clone(),
            plan: ClipPlan {
                frames: self.frames,
                span_seconds: self.span,
                max_clips: (self.clips_per_video > 0).then_some(self.clips_per_video),
            },
            width: self.size,
            height: self.size,
            grid_size: self.grid,
            jpeg_quality: self.jpeg_quality,
            folder_fps: self.folder_fps,
            videos_per_shard: self.videos_per_shard,
            num_workers: self.num_workers,
            worker_index,
            ..Default::default()
        })
    }

    fn tracker(&self) -> Result<Box<dyn Tracker>> {
        Ok(match &self.model {
            Some(model) => {
                let device = match self.device {
                    DeviceArg::Cpu => Device::Cpu,
                    DeviceArg::Cuda => Device::Cuda,
                };
                let params = CoTrackerParams { batch: self.batch, ..Default::default() };
                Box::new(CoTracker::load(model, device, params)?)
            }
            None => {
                if matches!(self.device, DeviceArg::Cuda) {
                    anyhow::bail!("--device cuda needs --model (the native tracker runs on the CPU)");
                }
                Box::new(NativeTracker::new(NativeParams::default()))
            }
        })
    }
}

pub fn tracks(a: TracksArgs) -> Result<ExitCode> {
    if let Some(TracksCommand::Eval { pred, gt, json }) = a.command {
        let (m, z) = mosic_pipeline::eval::evaluate_dirs(&pred, &gt)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "tracker": m, "zero_motion": z }))?);
        } else {
            println!("{} clips; TAP-Vid metrics at 256x256, query frame excluded", m.clips);
            println!("{:<14}{:>8}{:>8}{:>8}{:>8}{:>8}{:>10}{:>8}{:>8}", "", "<1", "<2", "<4", "<8", "<16", "<d_avg", "OA", "AJ");
            for (name, x) in [("tracks", &m), ("zero motion", &z)] {
                let pa: String = x.position_accuracy.iter().map(|v| format!("{:>8.3}", v)).collect();
                println!("{name:<14}{pa}{:>10.3}{:>8.3}{:>8.3}", x.average_position_accuracy, x.occlusion_accuracy, x.average_jaccard);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let args = a.run;
    let cfg = args.config()?;
    let mut tracker = args.tracker()?;
    let bar = Progress::new("tracks");
    let report = mosic_pipeline::run(&cfg, &args.out, tracker.as_mut(), &|d, t, c| bar.update(d, t, c))?;
    let dir = cfg.worker_dir(&args.out);
    println!(
        "tracks: {} videos, {} clips in {} shards -> {} ({}, {:.2} clips/s{})",
        report.videos,
        report.clips,
        report.shards,
        dir.display(),
        hms(report.seconds),
        report.clips_per_second,
        if report.resumed_groups > 0 { format!(", {} shard groups from an earlier run", report.resumed_groups) } else { String::new() }
    );
    if !report.too_short.is_empty() {
        println!("skipped, too short for one clip: {} ({})", report.too_short.len(), report.too_short.join(", "));
    }
    for (v, e) in &report.failed {
        eprintln!("failed: {v}: {e}");
    }
    if !report.failed.is_empty() {
        eprintln!("{} video(s) failed", report.failed.len());
        if !args.keep_going {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn bench(a: BenchArgs) -> Result<ExitCode> {
    let cfg = a.run.config()?;
    let start = std::time::Instant::now();
    let clips = mosic_pipeline::run::decode_only(&cfg)?;
    let decode_s = start.elapsed().as_secs_f64();
    let tmp = tempfile::tempdir()?;
    let mut tracker = a.run.tracker()?;
    let name = tracker.info().name;
    let report = mosic_pipeline::run(&cfg, tmp.path(), tracker.as_mut(), &|_, _, _| {})?;
    let decode_rate = clips as f64 / decode_s;
    println!("input            {}", cfg.input.display());
    println!("threads          {}", rayon_threads());
    println!("decode only      {clips} clips in {decode_s:.2} s = {decode_rate:.2} clips/s");
    println!(
        "whole stage      {} clips in {:.2} s = {:.2} clips/s (tracker: {name})",
        report.clips, report.seconds, report.clips_per_second
    );
    println!("ratio            {:.2}x of decode-only throughput", report.clips_per_second / decode_rate);
    Ok(ExitCode::SUCCESS)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
