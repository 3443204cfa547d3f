//! `mosic bench step`: our training step beside the PyTorch reference step
//! (`torch_step.py`, timm + PyTorch), on the same machine, in one run, at identical settings.
//! Each side runs in its own process so that its peak memory is its own.
//! `mosic bench knn` and `mosic bench kmeans`: the exact search and k-means of `mosic-eval` on
//! random unit vectors, which they can save for `tools/bench_faiss.py` to run FAISS on.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

#[derive(Args)]
pub struct BenchStepArgs {
    /// The PyTorch reference step to run beside ours (torch_step.py; needs torch and timm).
    #[arg(long, default_value = "../shared/reference/torch_step.py")]
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
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
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
    let exe = std::env::current_exe()?;
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
            let ours = Measured {
                ms,
                clips_per_s: b as f64 * 1e3 / ms,
                peak_rss: rss,
                peak_device: None,
                seconds: secs,
            };

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
                .args([
                    "--out-dim",
                    &a.out_dim.to_string(),
                    "--prototypes",
                    &a.prototypes.to_string(),
                ])
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
            let (text, rss, secs) = run_measured(
                &mut reference,
                &format!("the reference step ({})", a.reference.display()),
            )?;
            let ms = number_after(&text, "ms/step", ":")
                .context("no ms/step in the reference's output")?;
            let peak = number_after(&text, "ms/step", "peak").filter(|v| v.is_finite());
            let torch = Measured {
                ms,
                clips_per_s: b as f64 * 1e3 / ms,
                peak_rss: rss,
                peak_device: peak,
                seconds: secs,
            };
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
    use mosic_trainer::loader::{Loader, LoaderConfig, LoaderState};
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

#[derive(Args)]
pub struct BenchKnnArgs {
    /// Bank rows.
    #[arg(long, default_value_t = 100_000)]
    bank: usize,
    /// Query rows.
    #[arg(long, default_value_t = 10_000)]
    queries: usize,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Neighbours per query.
    #[arg(long, default_value_t = 30)]
    k: usize,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seed of the random unit vectors.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Feed the bank in chunks of this many rows (0: all at once), as a streamed bank is.
    #[arg(long, default_value_t = 0)]
    chunk: usize,
    /// Timed searches.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Write the vectors (bank rows, then query rows) as a float32 .npy.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Read the vectors from a .npy written by --save instead of drawing them.
    #[arg(long)]
    load: Option<PathBuf>,
    /// Write the neighbours as PREFIX.ids.npy (int64, -1 past the bank) and PREFIX.sims.npy.
    #[arg(long)]
    result: Option<PathBuf>,
    /// Where the search runs: `cpu` (the evaluation's own kernel) or a training backend
    /// (flex, tch, cuda) as `mosic eval --backend` runs it, bank tile by tile.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// The backend's device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
pub struct BenchKmeansArgs {
    #[arg(long, default_value_t = 100_000)]
    points: usize,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Clusters.
    #[arg(long, default_value_t = 256)]
    k: usize,
    /// Lloyd iterations (all run: FAISS's k-means has no early stop).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Points sampled per centroid at most (0: enough that every point is used).
    #[arg(long, default_value_t = 0)]
    max_points_per_centroid: usize,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed runs.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Write the points as a float32 .npy.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Read the points from a .npy written by --save instead of drawing them.
    #[arg(long)]
    load: Option<PathBuf>,
}

/// `rows x dim` random unit vectors: Gaussian rows (Box-Muller), normalised. Row `i` comes
/// from its own stream of `seed`, so they are drawn in parallel and any prefix is the same.
fn unit_vectors(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v = vec![0.0f32; rows * dim];
    v.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        let mut rng = mosic::rng::SplitMix64::stream(seed, i as u64);
        for pair in row.chunks_mut(2) {
            let (u, w) = (1.0 - rng.next_f64(), rng.next_f64());
            let r = (-2.0 * u.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * w;
            pair[0] = (r * a.cos()) as f32;
            if let Some(x) = pair.get_mut(1) {
                *x = (r * a.sin()) as f32;
            }
        }
        let n = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt().max(1e-30);
        row.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    });
    v
}

/// Writes a C-order .npy (format 1.0) of `shape` with elements of type `descr` (`<f4`, `<i8`)
/// whose little-endian bytes `body` writes.
fn write_npy(
    path: &std::path::Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline: a multiple of 64.
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    body(&mut f)?;
    f.flush()?;
    Ok(())
}

/// A float32 .npy, written a value at a time (no copy of the array beside it).
fn write_f32_npy(path: &std::path::Path, shape: &[usize], v: &[f32]) -> Result<()> {
    write_npy(path, "<f4", shape, |w| v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())))
}

/// Reads a 2-D little-endian float32 C-order .npy: (rows, cols, values). The values are read
/// a slice at a time, so the file's bytes are never held beside them.
fn read_f32_npy(path: &std::path::Path) -> Result<(usize, usize, Vec<f32>)> {
    use std::io::Read;
    let bad = || anyhow::anyhow!("{}: not a 2-D float32 .npy", path.display());
    let mut f = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let mut pre = [0u8; 8];
    f.read_exact(&mut pre).map_err(|_| bad())?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad());
    }
    let len = match pre[6] {
        1 => {
            let mut l = [0u8; 2];
            f.read_exact(&mut l)?;
            u16::from_le_bytes(l) as usize
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            f.read_exact(&mut l)?;
            u32::from_le_bytes(l) as usize
        }
        _ => return Err(bad()),
    };
    let mut header = vec![0u8; len];
    f.read_exact(&mut header).map_err(|_| bad())?;
    let header = String::from_utf8(header)?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        bail!("{}: want little-endian float32 in C order, header {header}", path.display());
    }
    let shape = &header[header.find("'shape': (").ok_or_else(bad)? + 10..];
    let dims: Vec<usize> = shape[..shape.find(')').ok_or_else(bad)?]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let [rows, cols] = dims[..] else { return Err(bad()) };
    let mut v = Vec::with_capacity(rows * cols);
    let mut buf = vec![0u8; 1 << 20];
    while v.len() < rows * cols {
        let want = ((rows * cols - v.len()) * 4).min(buf.len());
        f.read_exact(&mut buf[..want]).map_err(|_| bad())?;
        v.extend(buf[..want].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())));
    }
    if f.read(&mut [0u8; 1])? != 0 {
        return Err(bad());
    }
    Ok((rows, cols, v))
}

/// Peak resident set of this process, MiB (VmHWM).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kb| kb / 1024.0)
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new().num_threads(threads).build()?)
}

/// Random (or loaded) vectors, `rows x dim`; saved when asked.
fn vectors(
    rows: usize,
    dim: usize,
    seed: u64,
    load: &Option<PathBuf>,
    save: &Option<PathBuf>,
) -> Result<Vec<f32>> {
    let v = match load {
        Some(p) => {
            let (r, c, v) = read_f32_npy(p)?;
            if (r, c) != (rows, dim) {
                bail!("{}: {r} x {c} vectors, the flags ask for {rows} x {dim}", p.display());
            }
            v
        }
        None => unit_vectors(rows, dim, seed),
    };
    if let Some(p) = save {
        write_f32_npy(p, &[rows, dim], &v)?;
    }
    Ok(v)
}

/// `mosic bench knn`: exact top-k queries/s of [`mosic_eval::search`].
pub fn knn(a: BenchKnnArgs) -> Result<ExitCode> {
    use mosic_eval::search::TopK;
    let (n, m, d) = (a.bank, a.queries, a.dim);
    for (flag, v) in [("--bank", n), ("--queries", m), ("--dim", d), ("--k", a.k)] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    // Checked before the vectors are drawn or read.
    let target = match a.backend.as_str() {
        "cpu" => None,
        b => Some(mosic_trainer::backend::Target::resolve(b, &a.device, Default::default())?),
    };
    let v = vectors(n + m, d, a.seed, &a.load, &a.save)?;
    let (bank, queries) = v.split_at(n * d);
    let pool = pool(a.threads)?;
    let threads = pool.current_num_threads();
    println!("knn: bank {n}, queries {m}, dim {d}, k {}, threads {threads}, on {}", a.k, {
        match &target {
            None => "cpu (mosic-eval's kernel)".to_string(),
            Some(_) => format!("{} {}", a.backend, a.device),
        }
    });
    // A device search goes tile by tile, as `mosic eval` feeds the bank (8,192 rows a tile).
    let chunk = match (a.chunk, &target) {
        (0, None) => n.max(1),
        (0, Some(_)) => 8192,
        (c, _) => c,
    };
    let mut times = Vec::new();
    let mut lists = Vec::new();
    for _ in 0..a.runs.max(1) {
        let t0 = Instant::now();
        lists = match &target {
            None => pool.install(|| {
                let mut top = TopK::new(m, d, a.k);
                for (i, c) in bank.chunks(chunk * d).enumerate() {
                    top.feed(queries, c, i * chunk);
                }
                top.into_sorted()
            }),
            Some(t) => pool.install(|| {
                mosic_trainer::features::with_products(t, |p| {
                    let mut top = vec![Vec::with_capacity(a.k + 1); m];
                    let mut block = p.queries(queries, d)?;
                    for (i, c) in bank.chunks(chunk * d).enumerate() {
                        block.search_tile(c, i * chunk, a.k, &mut top)?;
                    }
                    Ok(top)
                })
            })?,
        };
        let s = t0.elapsed().as_secs_f64();
        println!("search {s:.3} s, {:.0} queries/s", m as f64 / s);
        times.push(s);
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    if let Some(p) = &a.result {
        let mut ids = vec![-1i64; m * a.k];
        let mut sims = vec![f32::NAN; m * a.k];
        for (q, l) in lists.iter().enumerate() {
            for (r, &(s, i)) in l.iter().enumerate() {
                ids[q * a.k + r] = i as i64;
                sims[q * a.k + r] = s;
            }
        }
        write_npy(&p.with_extension("ids.npy"), "<i8", &[m, a.k], |w| {
            ids.iter().try_for_each(|x| w.write_all(&x.to_le_bytes()))
        })?;
        write_f32_npy(&p.with_extension("sims.npy"), &[m, a.k], &sims)?;
    }
    let peak = peak_rss_mib();
    println!(
        "queries/s {:.0} (best of {}), wall {best:.3} s, peak memory {} (VmHWM; vectors {:.0} MiB)",
        m as f64 / best,
        times.len(),
        peak.map_or("unknown".into(), |p| format!("{p:.0} MiB")),
        (v.len() * 4) as f64 / (1 << 20) as f64
    );
    let json = serde_json::json!({
        "bench": "knn", "bank": n, "queries": m, "dim": d, "k": a.k, "threads": threads,
        "seconds": times, "queries_per_s": m as f64 / best, "peak_rss_mib": peak,
    });
    println!("json {json}");
    Ok(ExitCode::SUCCESS)
}

/// `mosic bench kmeans`: FAISS-style k-means ([`mosic_eval::kmeans::faiss_kmeans`]) points/s.
pub fn kmeans(a: BenchKmeansArgs) -> Result<ExitCode> {
    use mosic_eval::kmeans::{faiss_kmeans, FaissParams};
    let (n, d, k) = (a.points, a.dim, a.k);
    if d == 0 {
        bail!("--dim must be at least 1");
    }
    if k == 0 || k > n {
        bail!("--k must be between 1 and --points ({n}), not {k}");
    }
    let x = vectors(n, d, a.seed, &a.load, &a.save)?;
    let pool = pool(a.threads)?;
    let threads = pool.current_num_threads();
    let mppc =
        if a.max_points_per_centroid == 0 { n.div_ceil(k) } else { a.max_points_per_centroid };
    let used = n.min(mppc * k);
    println!(
        "kmeans: points {n} ({used} used), dim {d}, k {k}, iterations {}, max points per centroid {mppc}, threads {threads}",
        a.iters
    );
    let p = FaissParams { niter: a.iters, nredo: 1, seed: a.seed, max_points_per_centroid: mppc };
    let mut times = Vec::new();
    let mut objective = 0.0;
    for _ in 0..a.runs.max(1) {
        let t0 = Instant::now();
        objective = pool.install(|| faiss_kmeans(&x, d, k, &p)).objective;
        let s = t0.elapsed().as_secs_f64();
        println!(
            "train {s:.3} s, {:.1} ms per iteration, objective {objective:.6e}",
            s * 1e3 / a.iters.max(1) as f64
        );
        times.push(s);
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let peak = peak_rss_mib();
    println!(
        "points/s {:.0} (points x iterations / s, best of {}), wall {best:.3} s, peak memory {} (VmHWM; points {:.0} MiB)",
        (used * a.iters) as f64 / best,
        times.len(),
        peak.map_or("unknown".into(), |p| format!("{p:.0} MiB")),
        (x.len() * 4) as f64 / (1 << 20) as f64
    );
    let json = serde_json::json!({
        "bench": "kmeans", "points": n, "used": used, "dim": d, "k": k, "iters": a.iters,
        "max_points_per_centroid": mppc, "threads": threads, "seconds": times,
        "points_per_s": (used * a.iters) as f64 / best, "objective": objective,
        "peak_rss_mib": peak,
    });
    println!("json {json}");
    Ok(ExitCode::SUCCESS)
}
