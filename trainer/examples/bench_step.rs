//! The training-step benchmark of `mosic bench train` without the CLI's FFmpeg and ONNX
//! Runtime dependencies, for GPU machines that lack those libraries:
//!   cargo build --release -p mosic-trainer --example bench_step --features cuda
//!   bench_step BACKEND CONFIG [KEY=VALUE ...]
//! BENCH_DEVICE (default cuda:0 for cuda and tch, else cpu) names the device, or a list of them
//! (`cuda:0,cuda:0`: two workers sharing the global batch); BENCH_WARMUP and
//! BENCH_STEPS (default 3 and 10) set the untimed and timed steps. BENCH_NCCL=1 (GPU builds)
//! runs the one-GPU NCCL check instead (tch): a world of one rank whose reductions go through
//! NCCL, beside the step without a collective (same weights, same batch).
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use mosic_trainer::backend::{dispatch, Target, WithBackend};
use mosic_trainer::TrainConfig;

#[global_allocator]
static ALLOCATOR: mosic_trainer::backend::Allocator = mosic_trainer::backend::Allocator {};

struct Bench(TrainConfig);

impl WithBackend for Bench {
    type Output = mosic_trainer::train::bench::BenchFigures;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.run_on::<B>(vec![device])
    }
    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
        let n = |key: &str, default: usize| {
            std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        mosic_trainer::train::bench::bench_devices::<B>(
            &self.0,
            &devices,
            12,
            256,
            n("BENCH_WARMUP", 3),
            n("BENCH_STEPS", 10),
        )
    }
}

/// The one-GPU NCCL check, printed as one key=value line.
#[cfg(feature = "tch")]
struct NcclCheck(TrainConfig);

#[cfg(feature = "tch")]
impl WithBackend for NcclCheck {
    type Output = String;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String> {
        let c = mosic_trainer::train::bench::nccl_check::<B>(&self.0, &device, 12, 256, 6)?;
        Ok(format!(
            "nccl_check version={} loss_rel={:.1e} grad_rel={:.1e} same_parameters={} param_rel={:.1e} control_rel={:.1e} step_ms={:.2} step_nccl_ms={:.2}",
            c.version.map_or("none (this backend reduces on the host)".into(), |v| v.to_string()),
            c.loss_rel,
            c.grad_rel,
            c.same_parameters,
            c.param_rel,
            c.control_rel,
            c.step_s * 1e3,
            c.step_nccl_s * 1e3
        ))
    }
}

fn main() -> Result<()> {
    mosic_trainer::backend::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (backend, config) = match args.as_slice() {
        [b, c, ..] => (b.clone(), c.clone()),
        _ => anyhow::bail!("usage: bench_step BACKEND CONFIG [KEY=VALUE ...]"),
    };
    let cfg = TrainConfig::load(Some(config.as_ref()), &args[2..])?;
    let gpu = matches!(backend.as_str(), "cuda" | "tch");
    let device = std::env::var("BENCH_DEVICE")
        .unwrap_or_else(|_| (if gpu { "cuda:0" } else { "cpu" }).into());
    let target = Target::resolve(&backend, &device, cfg.model.precision)?;
    if std::env::var("BENCH_NCCL").is_ok_and(|v| v == "1") {
        #[cfg(feature = "tch")]
        println!("{}", dispatch(&target, NcclCheck(cfg))?);
        // CubeCL's buffers sit behind Burn's fusion layer: its reductions cross the host.
        #[cfg(not(feature = "tch"))]
        println!("nccl_check version=none loss_rel=- grad_rel=- same_parameters=- param_rel=- control_rel=- step_ms=- step_nccl_ms=-");
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let f = dispatch(&target, Bench(cfg.clone()))?;
    // One line that tools/bench-gpu.sh reads: keep the key=value fields.
    println!(
        "bench_step backend={backend} device={device} precision={} model={} size={} batch={} frames=12 points=256 step_ms={:.2} clips_per_s={:.1} first_step_s={:.1} total_s={:.0} collective_share={}",
        format!("{:?}", cfg.model.precision).to_lowercase(),
        cfg.model.preset,
        cfg.model.img_size,
        cfg.data.batch_size,
        f.step_s * 1e3,
        f.clips_per_s,
        f.first_step_s,
        t0.elapsed().as_secs_f64(),
        f.collective_share.map_or("-".into(), |s| format!("{:.3}", s))
    );
    Ok(())
}
