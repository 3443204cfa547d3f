//! Faults at random points of the three long commands (`mosic train`, `mosic tracks`,
//! `mosic eval`): each is interrupted by SIGINT or SIGKILL at seeded random times, then resumed
//! (train) or run again (tracks, eval) until it finishes. No finished work is lost, the result
//! equals an uninterrupted run's, and nothing is left in the run, output or scratch folders but
//! what the docs say. Each test prints its figures (faults, kinds, leftovers).

mod common;
mod sets;

use common::*;
use mosic::rng::SplitMix64;
use sets::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How a run ended: finished (its exit status), or stopped by the signal sent.
enum Ended {
    Finished(std::process::Output),
    Stopped(i32),
}

/// Runs `mosic args`; sends `sig` after `after` if it is still running then.
fn run_until(args: &[String], sig: i32, after: Duration) -> Ended {
    let mut child = mosic()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosic starts");
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Ended::Finished(child.wait_with_output().unwrap());
        }
        if t0.elapsed() >= after {
            // SAFETY: a signal to a process this test started and has not reaped.
            unsafe { libc::kill(child.id() as i32, sig) };
            let o = child.wait_with_output().unwrap();
            assert!(t0.elapsed() < after + Duration::from_secs(60), "did not end after the signal");
            // A run that ended by itself just before the signal counts as finished.
            return match o.status.code() {
                Some(0) => Ended::Finished(o),
                _ => Ended::Stopped(sig),
            };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Interrupts `args(attempt)` at random times in `window` until a run finishes (at most
/// `faults` faults, then a run left alone). Returns the faults injected, by kind.
fn with_faults(
    rng: &mut SplitMix64,
    faults: usize,
    window: (f64, f64),
    args: impl Fn(usize) -> Vec<String>,
) -> (usize, usize) {
    let (mut int, mut kill) = (0, 0);
    for attempt in 0.. {
        let sig = if rng.below(2) == 0 { libc::SIGINT } else { libc::SIGKILL };
        let after = if attempt < faults {
            Duration::from_secs_f64(rng.uniform(window.0, window.1))
        } else {
            Duration::from_secs(3600)
        };
        match run_until(&args(attempt), sig, after) {
            Ended::Finished(o) => {
                assert!(o.status.success(), "attempt {attempt}: {}", text(&o));
                break;
            }
            Ended::Stopped(s) if s == libc::SIGINT => int += 1,
            Ended::Stopped(_) => kill += 1,
        }
    }
    (int, kill)
}

/// Every file under `dir` whose name starts with a dot (temporaries, locks), and every folder
/// left by an evaluation's spill.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let (p, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
        if name.starts_with('.') || name.starts_with("mosic-eval-") {
            out.push(p.clone());
        }
        if p.is_dir() {
            out.extend(leftovers(&p));
        }
    }
    out
}

fn train_args(shards: &Path, run: &Path, resume: bool) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--out", run.to_str().unwrap()].map(String::from).to_vec();
    let run = [
        "run.steps=240",
        "run.checkpoint_every=20",
        "run.keep_checkpoints=100",
        "run.log_every=10",
    ];
    for s in mosic_trainer::testing::TINY_RUN.iter().chain(&run) {
        a.extend(["--set".into(), s.to_string()]);
    }
    a.extend(["--set".into(), format!("data.shards={}", shards.display())]);
    if resume {
        a.push("--resume".into());
    }
    a
}

fn checkpoint(
    run: &Path,
    file: &str,
) -> std::collections::BTreeMap<String, mosic::tensors::HostTensor> {
    mosic::tensors::read_safetensors(
        &run.join(format!("checkpoints/step-00000240/{file}.safetensors")),
    )
    .unwrap()
    .tensors
}

/// `mosic train` killed four times at random points and resumed each time ends exactly where an
/// uninterrupted run ends: student, teacher and optimiser bit for bit, the same logged losses.
#[test]
fn train_survives_random_interruptions() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_dir(&shards, &spec(3, 6, 56), 8, 2);
    let (straight, faulted) = (tmp.path().join("straight"), tmp.path().join("faulted"));
    let o =
        run(&train_args(&shards, &straight, false).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let mut rng = SplitMix64::new(3);
    let t0 = Instant::now();
    let o = run(&train_args(&shards, &tmp.path().join("timing"), false)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(o.status.success());
    // Faults anywhere in a run's length, its start-up included.
    let span = t0.elapsed().as_secs_f64();
    let (int, kill) = with_faults(&mut rng, 4, (0.05 * span, 0.35 * span), |_| {
        // Resume once the run has its config; until then it starts afresh.
        train_args(&shards, &faulted, faulted.join("config.toml").is_file())
    });
    for f in ["student", "teacher", "optimizer"] {
        assert_eq!(checkpoint(&straight, f), checkpoint(&faulted, f), "{f}");
    }
    let losses = |r: &Path| -> Vec<String> {
        std::fs::read_to_string(r.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].to_string())
            .collect()
    };
    assert_eq!(losses(&straight), losses(&faulted));
    assert!(int + kill >= 2, "the run ended before most faults: {int} + {kill}");
    let left = leftovers(&faulted);
    println!(
        "train: {int} SIGINT + {kill} SIGKILL, resumed equal bit for bit, leftovers {}",
        left.len()
    );
    assert!(left.is_empty(), "{left:?}");
}

/// `mosic tracks` killed at random points and run again with the same arguments gives the
/// shards of an uninterrupted run, clip for clip, and leaves no temporary or lock behind.
#[test]
fn tracks_survive_random_interruptions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth_videos(&data, 6, 60, (160, 96), &["--no-mp4"]);
    let args = |out: &Path| -> Vec<String> {
        [
            "tracks",
            "--input",
            data.join("JPEGImages").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--frames",
            "4",
            "--span",
            "0.4",
            "--size",
            "64",
            "--videos-per-shard",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let (straight, faulted) = (tmp.path().join("straight"), tmp.path().join("faulted"));
    let t0 = Instant::now();
    let o = run(&args(&straight).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let span = t0.elapsed().as_secs_f64();
    let mut rng = SplitMix64::new(7);
    let (int, kill) = with_faults(&mut rng, 4, (0.05 * span, 0.35 * span), |_| args(&faulted));
    assert_eq!(read_clips(&straight), read_clips(&faulted));
    assert!(int + kill >= 2, "the run ended before most faults: {int} + {kill}");
    let left = leftovers(&faulted);
    println!(
        "tracks: {int} SIGINT + {kill} SIGKILL, shards equal clip for clip, leftovers {}",
        left.len()
    );
    assert!(left.is_empty(), "{left:?}");
}

/// `mosic eval` killed at random points while its features spill, and run again, gives the
/// scores of an uninterrupted run; the scratch folder ends empty (Ctrl-C removes the spill,
/// the next run sweeps what a SIGKILL left).
#[test]
fn eval_survives_random_interruptions() {
    let tmp = tempfile::tempdir().unwrap();
    image_set(tmp.path());
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let args = |json: &Path| -> Vec<String> {
        let mut a = incontext_spill_args(&tmp.path().join("set"), &scratch);
        a.extend(["--memory-gb=0.00002".into(), "--json".into(), json.display().to_string()]);
        a
    };
    let (straight, faulted) = (tmp.path().join("straight.json"), tmp.path().join("faulted.json"));
    let t0 = Instant::now();
    let o = run(&args(&straight).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let span = t0.elapsed().as_secs_f64();
    let mut rng = SplitMix64::new(11);
    let (int, kill) = with_faults(&mut rng, 4, (0.05 * span, 0.6 * span), |_| args(&faulted));
    let scores = |p: &Path| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap()
            ["scores"]
            .clone()
    };
    assert_eq!(scores(&straight), scores(&faulted));
    assert!(int + kill >= 2, "the run ended before most faults: {int} + {kill}");
    let left = leftovers(&scratch);
    println!(
        "eval: {int} SIGINT + {kill} SIGKILL, scores equal, leftovers in the scratch {}",
        left.len()
    );
    assert!(left.is_empty(), "{left:?}");
}
