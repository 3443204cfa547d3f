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
    /// Where the ONNX model runs: cpu, cuda (GPU 0) or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
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

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Instead of --input: synthetic sets of these many short videos (e.g. 50,200,500), made in a
    /// temporary folder; prints clips/s and peak memory for each.
    #[arg(long, value_delimiter = ',')]
    synthetic: Vec<u32>,
    /// Frames per synthetic video (30 fps).
    #[arg(long, default_value_t = 100)]
    synthetic_frames: u32,
    /// Width and height of the synthetic videos.
    #[arg(long, default_value = "160x96")]
    synthetic_size: String,
}

impl RunArgs {
    /// The run's settings, checked before anything is loaded or listed.
    fn config(&self) -> Result<TracksConfig> {
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

    fn options(&self) -> RunOptions {
        RunOptions {
            keep_going: self.keep_going,
            retry_failed: self.retry_failed,
            allow_changed_input: self.allow_changed_input,
            queue_bytes: self.queue_mb.map(|m| ((m * 1048576.0) as usize).max(1)),
            decoders: self.decoders,
        }
    }

    fn tracker(&self) -> Result<(Box<dyn Tracker>, Vec<String>)> {
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
    fn route_logs(&self, bar: &Arc<Progress>) {
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

pub fn bench(a: BenchArgs) -> Result<ExitCode> {
    if !a.synthetic.is_empty() {
        return bench_scale(&a);
    }
    let cfg = a.run.config()?;
    let start = std::time::Instant::now();
    let clips = mosic_pipeline::run::decode_only(&cfg)?;
    let decode_s = start.elapsed().as_secs_f64();
    let tmp = tempfile::tempdir()?;
    let (mut tracker, notes) = a.run.tracker()?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    let name = tracker.info().name;
    let gpu = match a.run.device {
        Device::Cuda(i) => Some(GpuMonitor::start(i)),
        Device::Cpu => None,
    };
    let report =
        mosic_pipeline::run(&cfg, &a.run.options(), tmp.path(), tracker.as_mut(), &|_| {})?;
    let busy = gpu.map(GpuMonitor::stop);
    let decode_rate = clips as f64 / decode_s;
    println!("input            {}", cfg.input.display());
    println!("threads          {}", cores());
    println!("decode only      {clips} clips in {decode_s:.2} s = {decode_rate:.2} clips/s");
    println!(
        "whole stage      {} clips in {:.2} s = {:.2} clips/s (tracker: {name}, batch {})",
        report.clips,
        report.seconds,
        report.clips_per_second,
        tracker.batch_size()
    );
    println!(
        "ratio            {:.2}x of decode-only throughput",
        report.clips_per_second / decode_rate
    );
    let bytes: u64 = mosic::Manifest::load(tmp.path())?.shards.iter().map(|s| s.bytes).sum();
    println!(
        "shards           {:.1} MB, {:.0} KB per clip ({} points x {} frames at {}x{})",
        bytes as f64 / 1e6,
        bytes as f64 / 1e3 / report.clips.max(1) as f64,
        cfg.grid_size * cfg.grid_size,
        cfg.plan.frames,
        cfg.width,
        cfg.height
    );
    println!(
        "tracker busy     {:.0}% of the stage's time",
        100.0 * report.tracker_seconds / report.seconds.max(1e-9)
    );
    match busy {
        Some(Ok(b)) => println!(
            "GPU busy         {:.0}% (mean of {} nvidia-smi samples, every 100 ms)",
            b.0, b.1
        ),
        Some(Err(e)) => println!("GPU busy         not measured: {e}"),
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The stage over synthetic sets of growing size: clips/s should stay flat and peak memory bounded.
fn bench_scale(a: &BenchArgs) -> Result<ExitCode> {
    let (w, h) = a
        .synthetic_size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|&(w, h)| w >= 16 && h >= 16)
        .with_context(|| {
            format!("--synthetic-size '{}' is not WIDTHxHEIGHT (at least 16x16)", a.synthetic_size)
        })?;
    if a.synthetic.contains(&0) {
        bail!("--synthetic counts must be positive");
    }
    let mut run = a.run.clone();
    let tmp = tempfile::tempdir()?;
    run.input = Some(tmp.path().join("probe"));
    run.config()?; // every other argument, before the synthetic set is made
    let most = *a.synthetic.iter().max().expect("non-empty");
    let data = tmp.path().join("synth");
    let mut sc = mosic_synth::SynthConfig { videos: most, mp4: false, ..Default::default() };
    (sc.scene.num_frames, sc.scene.width, sc.scene.height) = (a.synthetic_frames, w, h);
    let start = std::time::Instant::now();
    mosic_synth::generate(&sc, &data, &|_| {})?;
    println!(
        "synthetic set    {most} videos of {} frames at {w}x{h} in {:.1} s",
        a.synthetic_frames,
        start.elapsed().as_secs_f64()
    );
    let (tracker, notes) = a.run.tracker()?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    println!(
        "tracker          {} (batch {}), {} threads",
        tracker.info().name,
        tracker.batch_size(),
        cores()
    );
    drop(tracker);
    println!(
        "{:>8}{:>8}{:>8}{:>10}{:>10}{:>12}{:>14}{:>12}",
        "videos", "clips", "shards", "seconds", "clips/s", "peak RSS", "queue peak", "KB/clip"
    );
    let mut counts = a.synthetic.clone();
    counts.sort();
    for n in counts {
        // The first n videos, as links, so every count reads the same files.
        let subset = tmp.path().join(format!("set-{n}")).join("JPEGImages");
        std::fs::create_dir_all(&subset)?;
        for i in 0..n {
            let name = sc.video_name(i);
            std::os::unix::fs::symlink(data.join("JPEGImages").join(&name), subset.join(&name))?;
        }
        run.input = Some(subset.clone());
        let cfg = run.config()?;
        let (mut tracker, _) = run.tracker()?;
        let out = tmp.path().join(format!("out-{n}"));
        let reset = reset_peak_rss();
        let report = mosic_pipeline::run(&cfg, &run.options(), &out, tracker.as_mut(), &|_| {})?;
        let peak = peak_rss_bytes().filter(|_| reset);
        let bytes: u64 =
            mosic::Manifest::load(&cfg.worker_dir(&out))?.shards.iter().map(|s| s.bytes).sum();
        println!(
            "{n:>8}{:>8}{:>8}{:>10.1}{:>10.2}{:>12}{:>14}{:>12.0}",
            report.clips,
            report.shards,
            report.seconds,
            report.clips_per_second,
            peak.map(|b| format!("{:.0} MB", b as f64 / 1048576.0)).unwrap_or_else(|| "n/a".into()),
            format!("{} clips", report.queue_peak_clips),
            bytes as f64 / 1e3 / report.clips.max(1) as f64
        );
        std::fs::remove_dir_all(&out).ok();
    }
    Ok(ExitCode::SUCCESS)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Peak resident memory of this process since the last [`reset_peak_rss`] (VmHWM, Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Sets the peak resident memory back to the current one (`clear_refs` value 5, Linux 4.0+).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Samples the GPU's utilisation with nvidia-smi while a benchmark runs.
struct GpuMonitor {
    child: std::io::Result<std::process::Child>,
}

impl GpuMonitor {
    fn start(index: u32) -> Self {
        let child = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
                "-i",
                &index.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        Self { child }
    }

    /// Mean utilisation in percent and the number of samples.
    fn stop(self) -> Result<(f64, usize)> {
        let mut child = self.child.context("nvidia-smi could not be started")?;
        let _ = child.kill();
        let out = child.wait_with_output()?;
        mean_utilisation(&String::from_utf8_lossy(&out.stdout))
            .context("nvidia-smi printed no samples")
    }
}

fn mean_utilisation(text: &str) -> Option<(f64, usize)> {
    let v: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64, v.len()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utilisation_samples_are_averaged() {
        assert_eq!(super::mean_utilisation("97\n93\n\n95\n"), Some((95.0, 3)));
        assert_eq!(super::mean_utilisation("[N/A]\n"), None);
    }
}
