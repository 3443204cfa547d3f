//! `mosic tracks`, `mosic tracks eval` and `mosic bench tracks`.

use crate::progress::{hms, Progress};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mosic::clip::ClipPlan;
use mosic_pipeline::tracker::cotracker::{self, CoTracker, CoTrackerParams, Device};
use mosic_pipeline::tracker::native::{NativeParams, NativeTracker};
use mosic_pipeline::tracker::Tracker;
use mosic_pipeline::{Report, RunOptions, TracksConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Videos: a YouTube-VOS or DAVIS root or JPEGImages folder, a folder of video files, or one video.
    #[arg(long)]
    pub(crate) input: Option<PathBuf>,
    /// Output shard directory.
    #[arg(long, default_value = "data/tracks")]
    out: PathBuf,
    /// Dataset name stored in every row (default: the input folder's name).
    #[arg(long)]
    dataset: Option<String>,
    /// CoTracker3 ONNX model (tools/interop/export_cotracker3_onnx.py); without it the native tracker runs.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the ONNX model runs: cpu, cuda (GPU 0) or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub(crate) device: Device,
    /// Run even if some nodes of the model fall back to the CPU on a GPU device.
    #[arg(long)]
    allow_cpu_fallback: bool,
    /// Clips per model call (an export with a dynamic batch dimension takes several).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Frames per clip.
    #[arg(long, default_value_t = 12)]
    frames: u32,
    /// Seconds a clip spans.
    #[arg(long, default_value_t = 3.2, allow_negative_numbers = true)]
    span: f64,
    /// Clips per video (0: every non-overlapping window).
    #[arg(long, default_value_t = 0)]
    clips_per_video: u32,
    /// Stored frame size (square).
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Query grid side (N = grid^2 points); the trainer picks its 16 x 16 points inside each crop.
    #[arg(long, default_value_t = 32)]
    grid: u32,
    #[arg(long, default_value_t = 90)]
    jpeg_quality: u8,
    /// Frame rate of the frame numbers in frame folders (YouTube-VOS and DAVIS numbering).
    #[arg(long, default_value_t = 30.0, allow_negative_numbers = true)]
    folder_fps: f64,
    #[arg(long, default_value_t = 64)]
    videos_per_shard: usize,
    /// Workers in a scale-out run (default: SLURM_ARRAY_TASK_COUNT, else 1).
    #[arg(long, env = "SLURM_ARRAY_TASK_COUNT", default_value_t = 1)]
    num_workers: u32,
    /// This worker's index (default: SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN, else 0).
    #[arg(long)]
    worker_index: Option<u32>,
    /// Record a video that fails and go on without it (exit status 0); without it the run stops there.
    #[arg(long)]
    keep_going: bool,
    /// Process again the shard groups where videos failed in an earlier run.
    #[arg(long)]
    retry_failed: bool,
    /// Resume although the input's video list changed, with the list the run began with.
    #[arg(long)]
    allow_changed_input: bool,
    /// Megabytes of decoded clips that may wait for the tracker (default: two batches, at least 64).
    #[arg(long)]
    queue_mb: Option<f64>,
    /// Decoding threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    decoders: usize,
    /// Settings of the native tracker as JSON, over its defaults (e.g. '{"ncc_threshold":0.5}');
    /// they are recorded in every shard.
    #[arg(long)]
    native_params: Option<String>,
    /// Show every FFmpeg message (debug level), not only errors.
    #[arg(long)]
    verbose: bool,
}

fn parse_device(s: &str) -> Result<Device, String> {
    s.parse()
}

impl RunArgs {
    /// The run's settings, checked before anything is loaded or listed.
    pub(crate) fn config(&self) -> Result<TracksConfig> {
        let input = self.input.clone().context(
            "--input is required (a dataset folder, a folder of videos, or a video file)",
        )?;
        let worker_index = match self.worker_index {
            Some(i) => i,
            None => match std::env::var("SLURM_ARRAY_TASK_ID") {
                Ok(id) => {
                    let id: u32 = id.parse().context("SLURM_ARRAY_TASK_ID is not a number")?;
                    let min: u32 = std::env::var("SLURM_ARRAY_TASK_MIN")
                        .ok()
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0);
                    id.saturating_sub(min)
                }
                Err(_) => 0,
            },
        };
        let cfg = TracksConfig {
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
        };
        cfg.validate()?;
        if self.batch < 1 {
            bail!("--batch must be at least 1");
        }
        if self.model.is_some() && self.native_params.is_some() {
            bail!("--native-params is for the native tracker, not --model");
        }
        if self.model.is_none() && self.batch != 1 {
            bail!("--batch is for the ONNX model (--model); the native tracker takes the clips as they come");
        }
        if let Some(q) = self.queue_mb {
            if !(q > 0.0 && q.is_finite()) {
                bail!("--queue-mb must be positive (got {q})");
            }
        }
        Ok(cfg)
    }

    pub(crate) fn options(&self) -> RunOptions {
        RunOptions {
            keep_going: self.keep_going,
            retry_failed: self.retry_failed,
            allow_changed_input: self.allow_changed_input,
            queue_bytes: self.queue_mb.map(|m| ((m * 1048576.0) as usize).max(1)),
            decoders: self.decoders,
        }
    }

    pub(crate) fn tracker(&self) -> Result<(Box<dyn Tracker>, Vec<String>)> {
        Ok(match &self.model {
            Some(model) => {
                let params = CoTrackerParams {
                    batch: self.batch,
                    allow_cpu_fallback: self.allow_cpu_fallback,
                    ..Default::default()
                };
                let t = CoTracker::load(model, self.device, params)?;
                let notes = t.notes.clone();
                (Box::new(t), notes)
            }
            None => {
                if self.device != Device::Cpu {
                    bail!(
                        "--device {} needs --model (the native tracker runs on the CPU)",
                        self.device
                    );
                }
                let params: NativeParams = match &self.native_params {
                    None => NativeParams::default(),
                    Some(j) => {
                        let mut v = serde_json::to_value(NativeParams::default())?;
                        let over: serde_json::Value =
                            serde_json::from_str(j).context("--native-params is not JSON")?;
                        let (Some(base), Some(over)) = (v.as_object_mut(), over.as_object()) else {
                            bail!("--native-params must be a JSON object");
                        };
                        for (k, x) in over {
                            if !base.contains_key(k) {
                                bail!(
                                    "--native-params: no setting '{k}' (there are: {})",
                                    base.keys().cloned().collect::<Vec<_>>().join(", ")
                                );
                            }
                            base.insert(k.clone(), x.clone());
                        }
                        serde_json::from_value(v).context("--native-params")?
                    }
                };
                (Box::new(NativeTracker::new(params)), Vec::new())
            }
        })
    }

    /// FFmpeg's and ONNX Runtime's messages go above the progress bar.
    pub(crate) fn route_logs(&self, bar: &Arc<Progress>) {
        let level = if self.verbose {
            mosic_video::log::Level::Debug
        } else {
            mosic_video::log::Level::Error
        };
        let b = bar.clone();
        mosic_video::log::set_sink(
            level,
            Arc::new(move |m: &mosic_video::log::Message| {
                let who = m.video.as_deref().unwrap_or("-");
                b.println(&format!("ffmpeg: {who}: {}", m.text));
            }),
        );
        let b = bar.clone();
        cotracker::set_log_sink(Arc::new(move |line: &str| b.println(line)));
    }
}

pub fn tracks(a: TracksArgs) -> Result<ExitCode> {
    if let Some(TracksCommand::Eval { pred, gt, json }) = a.command {
        let (m, z) = mosic_pipeline::eval::evaluate_dirs(&pred, &gt)?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "tracker": m, "zero_motion": z })
                )?
            );
        } else {
            println!("{} clips; TAP-Vid metrics at 256x256 (each clip a video, query mode \"first\"), averaged over clips", m.clips);
            println!(
                "{:<14}{:>8}{:>8}{:>8}{:>8}{:>8}{:>10}{:>8}{:>8}{:>10}{:>10}",
                "", "<1", "<2", "<4", "<8", "<16", "<d_avg", "OA", "AJ", "vis.rec", "vis.prec"
            );
            for (name, x) in [("tracks", &m), ("zero motion", &z)] {
                let pa: String =
                    x.position_accuracy.iter().map(|v| format!("{:>8.3}", v)).collect();
                println!(
                    "{name:<14}{pa}{:>10.3}{:>8.3}{:>8.3}{:>10.3}{:>10.3}",
                    x.average_position_accuracy,
                    x.occlusion_accuracy,
                    x.average_jaccard,
                    x.visible_recall,
                    x.visible_precision
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let args = a.run;
    let cfg = args.config()?;
    let opts = args.options();
    let bar = Arc::new(Progress::new("tracks", "clips tracked"));
    args.route_logs(&bar);
    let (mut tracker, notes) = args.tracker()?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    let b = bar.clone();
    let report = mosic_pipeline::run(&cfg, &opts, &args.out, tracker.as_mut(), &move |p| {
        let note = format!("{}/{} videos decoded", p.videos_decoded, p.videos);
        b.set(p.clips_tracked, p.clips_expected(), &note)
    })?;
    bar.finish(report.clips, &format!("{} videos", report.videos));
    print_report(&report, &cfg.worker_dir(&args.out));
    if !report.failed.is_empty() {
        if args.keep_going {
            eprintln!(
                "{} video(s) failed and were skipped (--keep-going); after fixing them, run again with --retry-failed",
                report.failed.len()
            );
        } else {
            eprintln!(
                "{} video(s) failed in an earlier run and were skipped; fix them and run again with --retry-failed, or pass --keep-going",
                report.failed.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &Report, dir: &Path) {
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    let mut extra = String::new();
    if report.resumed_groups > 0 {
        extra += &format!(", {} shard groups from an earlier run", report.resumed_groups);
    }
    if report.retried_groups > 0 {
        extra += &format!(", {} retried", report.retried_groups);
    }
    println!(
        "tracks: {} videos, {} clips in {} shards -> {} ({}, {:.2} clips/s{extra})",
        report.videos,
        report.clips,
        report.shards,
        dir.display(),
        hms(report.seconds),
        report.clips_per_second,
    );
    println!(
        "queue: at most {} clips ({:.1} MB) waited for the tracker; decoding waited for room {} times; tracker busy {:.0}% of the time",
        report.queue_peak_clips,
        report.queue_peak_bytes as f64 / 1048576.0,
        report.queue_full_waits,
        100.0 * report.tracker_seconds / report.seconds.max(1e-9)
    );
    if report.hidden_outside > 0 {
        println!(
            "{} visible points the tracker placed outside the frame were stored as invisible",
            report.hidden_outside
        );
    }
    if !report.too_short.is_empty() {
        println!(
            "skipped, too short for one clip: {} ({})",
            report.too_short.len(),
            report.too_short.join(", ")
        );
    }
    for (v, e) in &report.failed {
        eprintln!("failed: {v}: {e}");
    }
}
