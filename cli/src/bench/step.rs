//! `mosic bench step`: our training step beside the PyTorch reference step
//! (`tools/bench/torch_step.py`, timm + PyTorch), on the same machine, in one run, at identical settings.
//! Each side runs in its own process so that its peak memory is its own.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

#[derive(Args)]
pub struct BenchStepArgs {
    /// The PyTorch reference step to run beside ours (torch_step.py; needs torch and timm).
    #[arg(long, default_value = "tools/bench/torch_step.py")]
    reference: PathBuf,
    /// Python interpreter with torch and timm.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Our backend (flex or ndarray on the CPU, or cuda / tch / candle when built in).
    #[arg(long, default_value = mosic_trainer::backend::DEFAULT)]
    backend: String,
    /// Device of both steps: cpu, or cuda / cuda:N (ours on --backend cuda or tch).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Clips per step; a comma list runs each.
    #[arg(long, default_value = "2")]
    batch: String,
    /// fp32 or bf16 (autocast in the reference, model.precision here); a comma list runs each.
    #[arg(long, default_value = "fp32")]
    precision: String,
    #[arg(long, default_value = "vit_small_patch14_dinov2")]
    model: String,
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[arg(long, default_value_t = 12)]
    frames: usize,
    /// Points per clip = grid^2.
    #[arg(long, default_value_t = 16)]
    grid: usize,
    /// Trainable blocks, counted from the end.
    #[arg(long, default_value_t = 2)]
    trainable: usize,
    #[arg(long, value_delimiter = ',', default_value = "2048,2048")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 256)]
    out_dim: usize,
    #[arg(long, default_value_t = 100)]
    prototypes: usize,
    #[arg(long, default_value_t = 0.05)]
    eps: f64,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 0.99)]
    ema: f64,
    /// Timed steps (both report the median on the CPU; on a GPU ours is the mean of queued steps).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// CPU threads of both (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Extra config overrides for our side only, e.g. model.weights (KEY=VALUE).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// One side's figures.
struct Measured {
    ms: f64,
    clips_per_s: f64,
    /// Peak resident set of the process, GiB.
    peak_rss: f64,
    /// Peak device memory as the side reports it, GiB.
    peak_device: Option<f64>,
    seconds: f64,
}

/// Runs a command to completion, returning its stdout, its peak resident set (GiB) and its
/// wall time.
fn run_measured(cmd: &mut Command, what: &str) -> Result<(String, f64, f64)> {
    use std::io::Read;
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let pid = child.id() as libc::pid_t;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    // wait4 rather than Child::wait: it also reports the child's own peak RSS.
    let mut status = 0;
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: `pid` is our child, not yet reaped; status and usage are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        // A signal that interrupts the wait leaves the child unreaped: wait again.
        if r >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break r;
        }
    };
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if r < 0 {
        bail!("{what}: waiting for it failed: {}", std::io::Error::last_os_error());
    }
    let code = std::process::ExitStatus::from_raw(status);
    if !code.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bail!(
            "{what} failed ({code}):\n{stdout}{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok((stdout, usage.ru_maxrss as f64 / (1024.0 * 1024.0), t0.elapsed().as_secs_f64()))
}

/// The number after `key` on the first line of `text` that contains `line` (e.g. "123.4" of
/// "step  123.4 ms").
fn number_after(text: &str, line: &str, key: &str) -> Option<f64> {
    let l = text.lines().find(|l| l.contains(line))?;
    let rest = l[l.find(key)? + key.len()..].trim_start();
    let end = rest
        .find(|c: char| {
            !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == 'n' || c == 'a')
        })
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

pub fn step(a: BenchStepArgs) -> Result<ExitCode> {
    if !a.reference.is_file() {
        bail!(
            "--reference {}: no such file (the PyTorch step to compare with, torch_step.py)",
            a.reference.display()
        );
    }
    let batches: Vec<usize> = a
        .batch
        .split(',')
        .map(|b| b.trim().parse().with_context(|| format!("--batch {b}")))
        .collect::<Result<_>>()?;
    let precisions: Vec<String> = a.precision.split(',').map(|p| p.trim().to_string()).collect();
    if let Some(p) = precisions.iter().find(|p| !matches!(p.as_str(), "fp32" | "bf16")) {
        bail!("--precision {p}: fp32 or bf16");
    }
    let threads = if a.threads > 0 {
        a.threads
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    };
    let head: Vec<String> = a.hidden.iter().map(|h| h.to_string()).collect();
    println!(
        "settings (both sides): {} at {} px, {} frames x {} points (direct gather, nearest for teacher and student), last {} \
         blocks trainable, head D-{}-{}, {} prototypes, Sinkhorn eps {} x {} iterations over all points, no masking, \
         EMA {}, AdamW; {} timed steps after {} warm-up; {threads} CPU threads; ours on {}, reference on {}",
        a.model,
        a.size,
        a.frames,
        a.grid * a.grid,
        a.trainable,
        head.join("-"),
        a.out_dim,
        a.prototypes,
        a.eps,
        a.iters,
        a.ema,
        a.steps,
        a.warmup,
        a.backend,
        a.device
    );
    println!("| precision | batch | ours ms/step | PyTorch ms/step | ratio (PyTorch time / ours) | ours clips/s | PyTorch clips/s | ours peak RSS | PyTorch peak RSS | PyTorch peak device |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in &precisions {
        for &b in &batches {
            let ours = ours_step(&a, p, b, threads)?;
            let torch = reference_step(&a, p, b, threads)?;
            println!(
                "| {p} | {b} | {:.1} | {:.1} | {:.2}x | {:.2} | {:.2} | {:.2} GiB | {:.2} GiB | {} |",
                ours.ms,
                torch.ms,
                torch.ms / ours.ms,
                ours.clips_per_s,
                torch.clips_per_s,
                ours.peak_rss,
                torch.peak_rss,
                torch.peak_device.map(|g| format!("{g:.2} GiB")).unwrap_or_else(|| "-".into())
            );
            eprintln!("bench step: {p} batch {b}: ours {:.0} s, reference {:.0} s in all (start-up included); ours peak device memory: {}", ours.seconds, torch.seconds, ours.peak_device.map(|g| format!("{g:.2} GiB")).unwrap_or_else(|| "sampled by tools/bench-gpu.sh on GPUs".into()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Our step through `mosic bench train`, in a process of its own.
fn ours_step(a: &BenchStepArgs, p: &str, b: usize, threads: usize) -> Result<Measured> {
    let exe = std::env::current_exe()?;
    let head: Vec<String> = a.hidden.iter().map(|h| h.to_string()).collect();
    let mut ours = Command::new(&exe);
    ours.args([
        "bench",
        "train",
        "--backend",
        &a.backend,
        "--device",
        &a.device,
        "--frames",
        &a.frames.to_string(),
    ])
    .args([
        "--points",
        &(a.grid * a.grid).to_string(),
        "--steps",
        &a.steps.to_string(),
        "--warmup",
        &a.warmup.to_string(),
    ])
    .env("RAYON_NUM_THREADS", threads.to_string());
    for s in [
        format!("model.preset={}", a.model),
        format!("model.img_size={}", a.size),
        format!("model.trainable_blocks={}", a.trainable),
        format!("model.precision={p}"),
        format!("head.hidden=[{}]", head.join(",")),
        format!("head.out_dim={}", a.out_dim),
        format!("head.prototypes={}", a.prototypes),
        format!("objective.epsilon={}", a.eps),
        format!("objective.sinkhorn_iterations={}", a.iters),
        format!("objective.ema={}", a.ema),
        "objective.mask_ratio=0".into(),
        "objective.teacher_sampling=nearest".into(),
        "objective.student_sampling=nearest".into(),
        "objective.sinkhorn_rows=all".into(),
        format!("data.batch_size={b}"),
    ]
    .into_iter()
    .chain(a.set.iter().cloned())
    {
        ours.args(["--set", &s]);
    }
    let (text, rss, secs) = run_measured(&mut ours, "our step (mosic bench train)")?;
    let ms = number_after(&text, " ms (m", "step")
        .context("no step time in `mosic bench train`'s output")?;
    Ok(Measured {
        ms,
        clips_per_s: b as f64 * 1e3 / ms,
        peak_rss: rss,
        peak_device: None,
        seconds: secs,
    })
}

/// The PyTorch step at the same settings, in a process of its own.
fn reference_step(a: &BenchStepArgs, p: &str, b: usize, threads: usize) -> Result<Measured> {
    let head: Vec<String> = a.hidden.iter().map(|h| h.to_string()).collect();
    let mut reference = Command::new(&a.python);
    reference
        .arg(&a.reference)
        .args([
            "--device",
            &a.device,
            "--precision",
            p,
            "--batch",
            &b.to_string(),
            "--model",
            &a.model,
        ])
        .args([
            "--size",
            &a.size.to_string(),
            "--frames",
            &a.frames.to_string(),
            "--grid",
            &a.grid.to_string(),
        ])
        .args(["--trainable", &a.trainable.to_string(), "--hidden"])
        .args(&head)
        .args(["--out-dim", &a.out_dim.to_string(), "--prototypes", &a.prototypes.to_string()])
        .args([
            "--eps",
            &a.eps.to_string(),
            "--iters",
            &a.iters.to_string(),
            "--ema",
            &a.ema.to_string(),
        ])
        .args([
            "--steps",
            &a.steps.to_string(),
            "--warmup",
            &a.warmup.to_string(),
            "--threads",
            &threads.to_string(),
        ]);
    let (text, rss, secs) =
        run_measured(&mut reference, &format!("the reference step ({})", a.reference.display()))?;
    let ms = number_after(&text, "ms/step", "points:")
        .context("no ms/step in the reference's output")?;
    let peak = number_after(&text, "ms/step", "peak").filter(|v| v.is_finite());
    Ok(Measured {
        ms,
        clips_per_s: b as f64 * 1e3 / ms,
        peak_rss: rss,
        peak_device: peak,
        seconds: secs,
    })
}
