//! `mosic bench tracks`: clips/s of the tracking stage and of decoding alone, and the stage
//! over synthetic sets of growing size.

use crate::tracks::RunArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use mosic_pipeline::tracker::cotracker::Device;
use std::process::ExitCode;

#[derive(Args)]
pub struct BenchTracksArgs {
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

pub fn bench(a: BenchTracksArgs) -> Result<ExitCode> {
    if !a.synthetic.is_empty() {
        return bench_scale(&a);
    }
    let cfg = a.run.config()?;
    let start = std::time::Instant::now();
    let clips = mosic_pipeline::decode_only(&cfg)?;
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
fn bench_scale(a: &BenchTracksArgs) -> Result<ExitCode> {
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
        let reset = crate::peak::reset();
        let report = mosic_pipeline::run(&cfg, &run.options(), &out, tracker.as_mut(), &|_| {})?;
        let peak = crate::peak::bytes().filter(|_| reset);
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
