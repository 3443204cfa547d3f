//! `mosic train` as an MPI job of real processes on this machine (`mpirun -n 2` over
//! loopback): the same run as one device, exact resume, the replicas identical, a killed or
//! stalled rank ending the job with its message and the finished checkpoints intact, a world
//! size that does not split the batch refused before any work.
#![cfg(feature = "mpi")]

mod common;

use common::*;
use mosic::tensors::HostTensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `mpirun -n ranks mosic ARGS`: processes on this machine, TCP over loopback (works as root
/// and in containers, where shared-memory transports may not).
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"])
        .args(["-n", &ranks.to_string(), env!("CARGO_BIN_EXE_mosic")])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        // No remote launcher is needed on one machine, and CI machines may have no ssh.
        .env("OMPI_MCA_plm_rsh_agent", "")
        // One thread a rank: two ranks share the two cores of a CI machine.
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("mpirun runs (OpenMPI: apt-get install openmpi-bin libopenmpi-dev)")
}

/// A tiny run: 56 px, batch 4 of 3 frames, a checkpoint every step.
fn args(shards: &Path, out: &Path, steps: u64) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--out", out.to_str().unwrap()].map(String::from).to_vec();
    let run = ["run.checkpoint_every=1", "run.keep_checkpoints=100", "run.log_every=1"];
    for s in mosic_trainer::testing::TINY_RUN.iter().chain(&run) {
        a.extend(["--set".into(), s.to_string()]);
    }
    a.extend(["--set".into(), format!("data.shards={}", shards.display())]);
    a.extend(["--set".into(), format!("run.steps={steps}")]);
    a
}

fn shards(dir: &Path) -> PathBuf {
    let s = dir.join("shards");
    write_dir(&s, &spec(3, 6, 56), 8, 2);
    s
}

fn checkpoint(run: &Path, step: u64, file: &str) -> BTreeMap<String, HostTensor> {
    let p = run.join(format!("checkpoints/step-{step:08}/{file}.safetensors"));
    mosic::tensors::read_safetensors(&p).unwrap().tensors
}

fn max_diff(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, HostTensor>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(k, t)| t.data.iter().zip(&b[k].data).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn arg_refs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// Two ranks (processes) on their halves of every batch equal one device on the whole batch
/// after 3 steps: losses and gradient norms within 1e-5 relative, student, teacher and
/// optimiser state within 1e-5 (the sums over ranks are the one device's sums in another
/// order). The ranks' parameters are compared at every checkpoint by the run itself.
#[test]
fn two_ranks_equal_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards(tmp.path());
    let (two, one) = (tmp.path().join("two"), tmp.path().join("one"));
    let o = output(mpirun(2, &arg_refs(&args(&shards, &two, 3))));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ranks: 2 MPI processes"), "{}", text(&o));
    let o = run(&arg_refs(&args(&shards, &one, 3)));
    assert!(o.status.success(), "{}", text(&o));
    let (m2, m1) = (metrics(&two), metrics(&one));
    assert_eq!(m2.len(), 3);
    for (a, b) in m2.iter().zip(&m1) {
        for key in ["loss", "grad_norm"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            println!("step {}: {key} {x} (2 ranks) vs {y} (1 device)", a["step"]);
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1e-9),
                "step {}: {key} {x} vs {y}",
                a["step"]
            );
        }
        assert_eq!(a["visible"], b["visible"]);
    }
    for f in ["student", "teacher", "optimizer"] {
        let d = max_diff(&checkpoint(&two, 3, f), &checkpoint(&one, 3, f));
        println!("{f}: 2 ranks vs 1 device, max |diff| {d:.2e}");
        assert!(d < 1e-5, "{f}: {d}");
    }
}

/// A 2-rank run stopped after step 2 and resumed ends bit for bit where an uninterrupted
/// 2-rank run ends; resuming it over another number of ranks is refused in one line.
#[test]
fn a_resumed_two_rank_run_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards(tmp.path());
    let (straight, split) = (tmp.path().join("straight"), tmp.path().join("split"));
    let o = output(mpirun(2, &arg_refs(&args(&shards, &straight, 4))));
    assert!(o.status.success(), "{}", text(&o));
    let mut first = args(&shards, &split, 4);
    first.extend(["--stop-after".into(), "2".into()]);
    let o = output(mpirun(2, &arg_refs(&first)));
    assert!(o.status.success(), "{}", text(&o));
    let mut again = args(&shards, &split, 4);
    again.push("--resume".into());
    let o = run(&arg_refs(&again));
    assert!(!o.status.success());
    assert!(text(&o).contains("written by a run over 2 rank(s)"), "{}", text(&o));
    let o = output(mpirun(2, &arg_refs(&again)));
    assert!(o.status.success(), "{}", text(&o));
    for f in ["student", "teacher", "optimizer"] {
        assert_eq!(checkpoint(&straight, 4, f), checkpoint(&split, 4, f), "{f}");
    }
    let losses =
        |r: &Path| -> Vec<f64> { metrics(r).iter().map(|m| m["loss"].as_f64().unwrap()).collect() };
    assert_eq!(losses(&straight), losses(&split));
}

/// The ranks' processes, children of `mpirun`.
fn ranks_of(mpirun: &Child) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1));
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if ppid == Some(&mpirun.id().to_string()) && exe.ends_with("mosic") {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Starts a long 2-rank run and waits until its checkpoint of step 2 is written.
fn start_long_run(run: &Path, shards: &Path, extra: &[&str]) -> Child {
    let mut a = args(shards, run, 100_000);
    a.extend(extra.iter().map(|s| s.to_string()));
    let mut c = mpirun(2, &arg_refs(&a));
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while !run.join("checkpoints/step-00000002/student.safetensors").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Waits for a job to end, at most `limit`; kills it and fails the test past that.
fn ends_within(mut child: Child, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), t0.elapsed());
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "the job did not end within {limit:?}: {}",
                text(&child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every checkpoint left in the run directory reads back whole.
fn checkpoints_intact(run: &Path) -> usize {
    let dirs: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
        .collect();
    for d in &dirs {
        for f in ["student", "teacher", "optimizer"] {
            mosic::tensors::read_safetensors(&d.join(format!("{f}.safetensors")))
                .unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        assert!(d.join("state.json").is_file(), "{}", d.display());
    }
    dirs.len()
}

/// A rank killed mid-run (SIGKILL) ends the job within 60 s, with the launcher naming the
/// rank and the signal, and every checkpoint written before it intact.
#[test]
fn a_killed_rank_ends_the_job_within_a_minute() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards(tmp.path());
    let run_dir = tmp.path().join("run");
    let child = start_long_run(&run_dir, &shards, &[]);
    let ranks = ranks_of(&child);
    assert_eq!(ranks.len(), 2, "rank processes: {ranks:?}");
    // SAFETY: sends SIGKILL to a process this test started.
    unsafe { libc::kill(ranks[1] as i32, libc::SIGKILL) };
    let (o, took) = ends_within(child, Duration::from_secs(60));
    println!("ended {:.1} s after the kill:\n{}", took.as_secs_f64(), text(&o));
    assert!(!o.status.success());
    assert!(text(&o).contains("signal 9") || text(&o).contains("Killed"), "{}", text(&o));
    assert!(checkpoints_intact(&run_dir) >= 2);
}

/// A rank that stops (SIGSTOP: a process that no longer runs, as a wedged device call) is
/// found by the other's watchdog within the collective limit: the job ends with the message
/// of the rank that waited, what it waited in, and the setting that bounds it.
#[test]
fn a_stalled_rank_ends_the_job_within_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards(tmp.path());
    let run_dir = tmp.path().join("run");
    let child = start_long_run(&run_dir, &shards, &["--set", "run.collective_timeout_s=3"]);
    let ranks = ranks_of(&child);
    // SAFETY: sends SIGSTOP to a process this test started; mpirun kills it at the end.
    unsafe { libc::kill(ranks[1] as i32, libc::SIGSTOP) };
    let (o, took) = ends_within(child, Duration::from_secs(60));
    println!("ended {:.1} s after the stop:\n{}", took.as_secs_f64(), text(&o));
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("rank 0 of 2") && t.contains("waited 3 s in"), "{t}");
    assert!(t.contains("run.collective_timeout_s"), "{t}");
    assert!(checkpoints_intact(&run_dir) >= 2);
}

/// Three ranks cannot split a batch of 4: refused before any work, nothing written.
#[test]
fn a_world_that_does_not_split_the_batch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = shards(tmp.path());
    let run_dir = tmp.path().join("run");
    let t0 = Instant::now();
    let o = output(mpirun(3, &arg_refs(&args(&shards, &run_dir, 3))));
    assert!(!o.status.success());
    assert!(text(&o).contains("does not split over 3 MPI ranks"), "{}", text(&o));
    assert!(!run_dir.join("checkpoints").exists());
    assert!(t0.elapsed() < Duration::from_secs(60));
}
