//! `mosic bench knn` and `mosic bench kmeans`: the exact search and k-means of `mosic-eval` on
//! random unit vectors, which they can save for `tools/bench/bench_faiss.py` to run FAISS on.

use crate::npy::{read_f32_npy, write_f32_npy, write_npy};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

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
    use mosic_eval::kernels::search::TopK;
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
                mosic_trainer::eval::features::with_products(t, |p| {
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
    let peak = crate::peak::mib();
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

/// `mosic bench kmeans`: FAISS-style k-means ([`mosic_eval::kernels::kmeans::faiss_kmeans`]) points/s.
pub fn kmeans(a: BenchKmeansArgs) -> Result<ExitCode> {
    use mosic_eval::kernels::kmeans::{faiss_kmeans, FaissParams};
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
    let peak = crate::peak::mib();
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
