//! `mosic synth`: the seeded synthetic dataset (frames, MP4s, masks, ground-truth shards).

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct SynthArgs {
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
pub enum CameraArg {
    Default,
    Strong,
}

pub fn synth(a: SynthArgs) -> Result<ExitCode> {
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
