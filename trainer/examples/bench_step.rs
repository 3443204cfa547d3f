//! The training-step benchmark of `mosic bench train` without the CLI's FFmpeg and ONNX
//! Runtime dependencies, for GPU machines that lack those libraries:
//!   cargo build --release -p mosic-trainer --example bench_step --features cuda
//!   bench_step BACKEND CONFIG [KEY=VALUE ...]
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use mosic_trainer::backend::{dispatch, WithBackend};
use mosic_trainer::TrainConfig;

struct Bench(TrainConfig);

impl WithBackend for Bench {
    type Output = (f64, f64);
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        mosic_trainer::train::bench::<B>(&self.0, &device, 12, 256, 3, 10)
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (backend, config) = match args.as_slice() {
        [b, c, ..] => (b.clone(), c.clone()),
        _ => anyhow::bail!("usage: bench_step BACKEND CONFIG [KEY=VALUE ...]"),
    };
    let cfg = TrainConfig::load(Some(config.as_ref()), &args[2..])?;
    mosic_trainer::backend::check_precision(&backend, cfg.model.precision)?;
    let t0 = std::time::Instant::now();
    let (secs, rate) = dispatch(&backend, Bench(cfg.clone()))?;
    println!(
        "{backend}: {} at {} px, batch {} x 12 frames x 256 points: step {:.1} ms (mean of 10 after 3 warm-up), {rate:.1} clips/s; {:.0} s in all",
        cfg.model.preset,
        cfg.model.img_size,
        cfg.data.batch_size,
        secs * 1e3,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
