//! Several ranks (threads of one process here; MPI processes in mosic-cli's tests) against
//! one device on the whole batch, and what happens when a rank fails, stalls or resumes.

use anyhow::{bail, Result};
use burn::backend::Autodiff;
use mosic::tensors::HostTensor;
use mosic_trainer::config::Limits;
use mosic_trainer::data::Batch;
use mosic_trainer::model::paths;
use mosic_trainer::run::dir as rundir;
use mosic_trainer::train::comm::threads::Threads;
use mosic_trainer::train::comm::{Comm, Group};
use mosic_trainer::train::fit::{train, train_in, World};
use mosic_trainer::train::step::Trainer;
use mosic_trainer::TrainConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type AB = Autodiff<mosic_trainer::testing::Golden>;

/// Trainers are built one at a time: Burn's initialisers draw from one generator per backend.
static INIT: Mutex<()> = Mutex::new(());

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn tiny() -> TrainConfig {
    let set: Vec<String> = [
        "model.preset=vit_tiny_test",
        "model.img_size=56",
        "model.trainable_blocks=2",
        "head.hidden=[32]",
        "head.out_dim=16",
        "head.prototypes=8",
        "data.batch_size=2",
        "objective.mask_ratio=0.25",
        "optim.lr=1e-3",
        "run.steps=4",
    ]
    .map(String::from)
    .to_vec();
    TrainConfig::load(None, &set).unwrap()
}

fn max_diff_maps(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, HostTensor>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter().map(|(k, t)| max_diff(&t.data, &b[k].data)).fold(0.0, f32::max)
}

/// Two workers, each on half of every global batch, against one device on the whole batch
/// for 3 steps (masking on, so the mask draws must follow the clips' global places): the
/// same loss, gradients and parameters within 1e-5 (sums in another order; measured about
/// 1e-7), and the two replicas bit-identical.
#[test]
fn two_workers_on_the_split_batch_equal_one_device_on_the_whole() {
    let mut cfg = tiny();
    cfg.data.batch_size = 4;
    let dev = Default::default();
    let batches: Vec<Batch> =
        (0..3u64).map(|i| Batch::random(4, 3, 9, cfg.model.img_size, cfg.run.seed + i)).collect();
    let mut one = Trainer::<AB>::new(&cfg, &dev).unwrap();
    one.keep_grads = true;
    let mut single = Vec::new();
    for b in &batches {
        let stats = one.step(b).unwrap();
        single.push((stats, one.last_grads.clone().unwrap()));
    }
    let threads = Threads::new(2);
    let workers: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|rank| {
                let (cfg, batches) = (&cfg, &batches);
                let comm: Arc<dyn Comm> = Arc::new(threads.rank(rank));
                s.spawn(move || {
                    let mut t = {
                        let _g = INIT.lock().unwrap_or_else(|e| e.into_inner());
                        Trainer::<AB>::new(cfg, &Default::default()).unwrap()
                    };
                    t.keep_grads = true;
                    t.group = Some(Group::new(comm, 2 * rank, Limits::default()));
                    t.broadcast_from_rank0().unwrap();
                    let steps: Vec<_> = batches
                        .iter()
                        .map(|b| {
                            let stats = t.step(&b.split(2)[rank]).unwrap();
                            (stats, t.last_grads.clone().unwrap())
                        })
                        .collect();
                    (
                        steps,
                        paths::collect(&t.student, |_| true),
                        paths::collect(&t.teacher, |_| true),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let tol = 1e-5;
    for (k, ((a, ga), (b, gb))) in single.iter().zip(&workers[0].0).enumerate() {
        let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-9);
        let dg = max_diff_maps(ga, gb);
        println!(
            "step {}: loss {} vs {} ({:.1e} rel), grad norm {:.1e} rel, gradients {dg:.1e}",
            k + 1,
            a.loss,
            b.loss,
            rel(a.loss, b.loss),
            rel(a.grad_norm, b.grad_norm)
        );
        assert!(rel(a.loss, b.loss) < tol as f64, "step {}: loss {} vs {}", k + 1, a.loss, b.loss);
        assert!(rel(a.grad_norm, b.grad_norm) < tol as f64);
        assert!(dg < tol, "step {}: gradients differ by {dg}", k + 1);
        assert_eq!((a.visible, a.in_loss, a.filled), (b.visible, b.in_loss, b.filled));
    }
    let (ds, dt) = (
        max_diff_maps(&paths::collect(&one.student, |_| true), &workers[0].1),
        max_diff_maps(&paths::collect(&one.teacher, |_| true), &workers[0].2),
    );
    println!("after 3 steps: student {ds:.1e}, teacher {dt:.1e}");
    assert!(ds < tol && dt < tol, "parameters differ: student {ds}, teacher {dt}");
    assert_eq!(workers[0].1, workers[1].1, "the replicas drifted apart");
    assert_eq!(workers[0].2, workers[1].2);
}

/// A dataset of shards and a config that trains on it over `devices` CPU workers.
fn shard_run(dir: &Path, steps: u64) -> TrainConfig {
    use mosic_trainer::testing::shards::{spec, write_dir};
    let shards = dir.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    write_dir(&shards, &spec(3, 6, 56), &[4, 4], 2);
    let run = [
        "run.checkpoint_every=1",
        "run.keep_checkpoints=10",
        "run.log_every=1",
        "validation.every=0",
    ];
    let set: Vec<String> = (mosic_trainer::testing::TINY_RUN.iter().chain(&run))
        .map(|s| s.to_string())
        .chain([format!("data.shards={}", shards.display()), format!("run.steps={steps}")])
        .collect();
    TrainConfig::load(None, &set).unwrap()
}

/// A failure on one worker (an error, or a panic) ends every worker at once with that
/// error; the checkpoints finished before it stay.
#[test]
fn a_failing_worker_stops_every_worker_and_keeps_the_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = shard_run(tmp.path(), 6);
    let devices = vec![Default::default(); 2];
    let quiet = |_: &str| {};
    for (rank, panics) in [(1usize, false), (0, true)] {
        let run = tmp.path().join(format!("run-{rank}"));
        let fault = move |r: usize, step: u64| -> Result<()> {
            if r == rank && step == 3 {
                if panics {
                    panic!("injected panic");
                }
                bail!("injected failure");
            }
            Ok(())
        };
        let t0 = Instant::now();
        let e = train_in::<AB>(
            &cfg,
            &run,
            false,
            None,
            World::Threads(devices.clone()),
            &quiet,
            Some(Arc::new(fault)),
        )
        .unwrap_err();
        let e = format!("{e:#}");
        println!("{e}");
        assert!(t0.elapsed() < Duration::from_secs(120), "took {:?}", t0.elapsed());
        let want = if panics { "panicked: injected panic" } else { "injected failure" };
        assert!(e.contains(want) && e.contains(&format!("rank {rank}")), "{e}");
        assert!(e.contains("the last good checkpoint is") && e.contains("step-00000002"), "{e}");
        let kept: Vec<String> = rundir::checkpoints(&run)
            .iter()
            .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["step-00000001", "step-00000002"]);
    }
}

/// Two workers interrupted after step 2 and resumed end exactly where an uninterrupted
/// two-worker run ends (bit for bit), and within 1e-5 of one device on the whole batch.
#[test]
fn a_resumed_two_worker_run_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = shard_run(tmp.path(), 4);
    let (one, two) = (vec![Default::default()], vec![Default::default(); 2]);
    let quiet = |_: &str| {};
    let (straight, split, single) =
        (tmp.path().join("straight"), tmp.path().join("split"), tmp.path().join("single"));
    train::<AB>(&cfg, &straight, false, None, &two, &quiet).unwrap();
    train::<AB>(&cfg, &split, false, Some(2), &two, &quiet).unwrap();
    let s = train::<AB>(&cfg, &split, true, None, &two, &quiet).unwrap();
    assert_eq!(s.steps, 4);
    train::<AB>(&cfg, &single, false, None, &one, &quiet).unwrap();
    let read = |run: &Path, f: &str| {
        rundir::read_checkpoint_tensors(&run.join("checkpoints/step-00000004"), f).unwrap()
    };
    for f in ["student", "teacher", "optimizer"] {
        assert_eq!(read(&straight, f), read(&split, f), "{f}");
        let d = max_diff_maps(&read(&straight, f), &read(&single, f));
        println!("{f}: two workers vs one device {d:.1e}");
        assert!(d < 1e-5, "{f}: {d}");
    }
    let losses = |run: &Path| -> Vec<f64> {
        rundir::read_metrics(run, u64::MAX).unwrap().iter().map(|s| s.loss).collect()
    };
    assert_eq!(losses(&straight), losses(&split));
}

/// A rank stuck inside a step (a device call that never returns, injected as a long sleep)
/// is reported within the collective limit plus the grace the others get to end, naming the
/// rank that waited, what it waited in and the rank it waited for; the run returns though
/// the stuck thread never ends.
#[test]
fn a_stalled_rank_is_reported_within_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = shard_run(tmp.path(), 6);
    cfg.run.collective_timeout_s = 2.0;
    let fault = |r: usize, step: u64| -> Result<()> {
        if r == 1 && step == 3 {
            std::thread::sleep(Duration::from_secs(3600));
        }
        Ok(())
    };
    let t0 = Instant::now();
    let e = train_in::<AB>(
        &cfg,
        &tmp.path().join("run"),
        false,
        None,
        World::Threads(vec![Default::default(); 2]),
        &|_: &str| {},
        Some(Arc::new(fault)),
    )
    .unwrap_err();
    let e = format!("{e:#}");
    println!("{e} ({:.1} s)", t0.elapsed().as_secs_f64());
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
    assert!(
        e.contains("rank 0 waited 2 s in")
            && e.contains("of step 3")
            && e.contains("for rank(s) 1"),
        "{e}"
    );
    assert!(e.contains("run.collective_timeout_s") && e.contains("did not end within"), "{e}");
    assert!(e.contains("step-00000002"), "{e}");
}

/// The step benchmark over two ranks: a panicking rank or a stalled one ends the other at
/// once or within the limit, with the rank's message, instead of a 30-minute wait.
#[test]
fn a_failing_or_stalled_rank_ends_the_benchmark() {
    let mut cfg = tiny();
    cfg.run.collective_timeout_s = 2.0;
    let devices = vec![Default::default(); 2];
    let panics = |r: usize, step: u64| -> Result<()> {
        if r == 1 && step == 2 {
            panic!("injected panic");
        }
        Ok(())
    };
    let stalls = |r: usize, step: u64| -> Result<()> {
        if r == 0 && step == 2 {
            std::thread::sleep(Duration::from_secs(5));
        }
        Ok(())
    };
    for (fault, want) in [
        (&panics as &mosic_trainer::train::fit::FaultHook, "rank 1: panicked: injected panic"),
        (&stalls, "rank 1 waited 2 s in"),
    ] {
        let t0 = Instant::now();
        let e = mosic_trainer::train::bench::bench_devices_with::<AB>(
            &cfg,
            &devices,
            2,
            9,
            1,
            2,
            Some(fault),
        )
        .unwrap_err();
        let e = format!("{e:#}");
        println!("{e} ({:.1} s)", t0.elapsed().as_secs_f64());
        assert!(e.contains(want), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
}

/// A resume whose metrics history does not read stops before any work and leaves the file as
/// it was (it used to start over with an empty history and rewrite the file empty).
#[test]
fn a_resume_never_wipes_a_history_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = shard_run(tmp.path(), 4);
    let run = tmp.path().join("run");
    let one = vec![Default::default()];
    train::<AB>(&cfg, &run, false, Some(2), &one, &|_: &str| {}).unwrap();
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let damaged = text.replacen("\"step\":1", "\"step\":\u{0}1", 1);
    std::fs::write(&path, &damaged).unwrap();
    let e = format!("{:#}", train::<AB>(&cfg, &run, true, None, &one, &|_: &str| {}).unwrap_err());
    assert!(e.contains("metrics.jsonl line 1"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);
}
