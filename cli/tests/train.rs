//! Stage 2 end to end: training on synthetic ground-truth shards, exact resume, a
//! non-finite loss, shards of another schema version, and export.

mod common;

use common::*;
use std::path::Path;

fn synth(out: &Path) {
    synth_videos(out, 2, 100, (160, 96), &["--no-mp4"]);
}

/// A tiny, fast configuration: 112 px input (8x8 patches), 2 clips a step.
fn args<'a>(shards: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--out",
        out,
        "--set",
        "model.preset=vit_tiny_test",
        "--set",
        "model.img_size=112",
        "--set",
        "head.hidden=[64]",
        "--set",
        "head.prototypes=16",
        "--set",
        "data.batch_size=2",
        "--set",
        "data.workers=1",
        "--set",
        "data.shuffle_buffer=4",
        "--set",
        "optim.lr=1e-3",
        "--set",
        "run.steps=4",
        "--set",
        "run.checkpoint_every=1",
        "--set",
        "run.log_every=1",
    ];
    v.push("--set");
    v.push(shards);
    v.extend_from_slice(extra);
    v
}

fn read(path: &Path) -> std::collections::BTreeMap<String, mosic::tensors::HostTensor> {
    mosic_trainer::model::paths::load_safetensors(path).unwrap()
}

#[test]
fn resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data);
    let shards = format!("data.shards={}", data.join("gt").display());
    let straight = tmp.path().join("straight");
    let o = run(&args(&shards, straight.to_str().unwrap(), &[]));
    assert!(o.status.success(), "{}", text(&o));

    let split = tmp.path().join("split");
    let o = run(&args(&shards, split.to_str().unwrap(), &["--stop-after", "2"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("train: 2 steps"), "{}", text(&o));
    let o = run(&args(&shards, split.to_str().unwrap(), &["--resume"]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("resumed from") && text(&o).contains("train: 4 steps"),
        "{}",
        text(&o)
    );

    for f in ["student.safetensors", "teacher.safetensors", "optimizer.safetensors"] {
        let a = read(&straight.join("checkpoints/step-00000004").join(f));
        let b = read(&split.join("checkpoints/step-00000004").join(f));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{f}");
        for (k, mosic::tensors::HostTensor { shape: sa, data: va }) in &a {
            let mosic::tensors::HostTensor { shape: sb, data: vb } = &b[k];
            assert_eq!(sa, sb, "{f} {k}");
            let d = va.iter().zip(vb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(d == 0.0, "{f} {k}: max abs diff {d}");
        }
    }
    let metrics = |dir: &Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()
            })
            .collect()
    };
    assert_eq!(metrics(&straight), metrics(&split));
    assert_eq!(metrics(&straight).len(), 4);
    assert!(straight.join("loss.png").is_file() && straight.join("config.toml").is_file());

    // Export: the teacher backbone under timm's names and shapes.
    let out = tmp.path().join("export.safetensors");
    let o = run(&["export", "--run", straight.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let exported = read(&out);
    let cfg = mosic_trainer::model::VitConfig::preset("vit_tiny_test", 112).unwrap();
    let want: Vec<(String, Vec<usize>)> =
        mosic_trainer::model::timm::layout(&cfg).into_iter().map(|e| (e.name, e.shape)).collect();
    let got: Vec<(String, Vec<usize>)> =
        exported.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
    // ...holding the teacher's values.
    let teacher = read(&straight.join("checkpoints/step-00000004/teacher.safetensors"));
    assert_eq!(
        exported["blocks.3.attn.qkv.bias"].data,
        teacher["backbone.blocks.3.attn.qkv.bias"].data
    );
}

#[test]
fn a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data);
    let shards = format!("data.shards={}", data.join("gt").display());
    let run_dir = tmp.path().join("run");
    let o = run(&args(
        &shards,
        run_dir.to_str().unwrap(),
        &["--set", "optim.lr=1e30", "--set", "optim.grad_clip=0", "--set", "run.steps=20"],
    ));
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(msg.contains("the loss or a gradient is not finite at step"), "{msg}");
    assert!(msg.contains("the last good checkpoint is"), "{msg}");
    let ckpts = mosic_trainer::run::dir::checkpoints(&run_dir);
    assert!(!ckpts.is_empty());
    // Every kept checkpoint holds finite weights.
    for (k, mosic::tensors::HostTensor { data: v, .. }) in
        read(&ckpts.last().unwrap().join("student.safetensors"))
    {
        assert!(v.iter().all(|x| x.is_finite()), "{k}");
    }
}

#[test]
fn shards_of_another_schema_version_or_frame_count_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data);
    let gt = data.join("gt");
    let shards = format!("data.shards={}", gt.display());
    let run_dir = tmp.path().join("run");
    let o = run(&args(&shards, run_dir.to_str().unwrap(), &["--set", "data.frames=8"]));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("12 frames per clip, expected 8") && text(&o).contains("gt"),
        "{}",
        text(&o)
    );
    assert!(!run_dir.exists(), "a refused run leaves no directory");

    let mut m = mosic::Manifest::load(&gt).unwrap();
    m.schema_version = "3.1".into();
    m.save(&gt).unwrap();
    let o = run(&args(&shards, tmp.path().join("run2").to_str().unwrap(), &[]));
    assert!(!o.status.success());
    assert!(text(&o).contains("manifest.json") && text(&o).contains("3.1"), "{}", text(&o));
}

/// Nonsense values stop the run before it touches anything, naming the key.
#[test]
fn bad_config_values_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    for (set, key) in [
        ("optim.lr=-1", "optim.lr"),
        ("objective.epsilon=0", "objective.epsilon"),
        ("data.crop_scale=[0.9, 0.1]", "data.crop_scale"),
    ] {
        let o =
            run(&args("data.shards=/no/such/shards", run_dir.to_str().unwrap(), &["--set", set]));
        assert!(!o.status.success());
        assert!(text(&o).contains(key), "{set}: {}", text(&o));
        assert!(!run_dir.exists());
    }
}

/// A device the backend cannot use, a backend not built in, or bf16 where there is none: one
/// line naming the option, before any run directory is made (no GPU here, so these are the
/// errors a researcher sees first).
#[test]
fn devices_and_backends_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--device", "cuda:0"], "--device cuda:0"),
        (vec!["--device", "gpu7"], "--device \"gpu7\""),
        (vec!["--backend", "ndarray", "--set", "model.precision=bf16"], "bf16"),
        (vec!["--devices", "3"], "data.batch_size = 8 does not split over 3 devices"),
        (vec!["--devices", "cpu,cuda:1"], "--device cuda:1"),
        #[cfg(not(feature = "tch"))]
        (vec!["--backend", "tch"], "--backend tch: not built into this binary"),
        #[cfg(not(feature = "cuda"))]
        (
            vec!["--backend", "cuda", "--device", "cuda:0"],
            "--backend cuda: not built into this binary",
        ),
    ];
    for (extra, want) in cases {
        let config = repo_root().join("configs/tiny_synth.toml");
        let mut a =
            vec!["train", "--runs", runs.to_str().unwrap(), "--config", config.to_str().unwrap()];
        a.extend(extra.iter().copied());
        let o = run(&a);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{extra:?} ran");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{extra:?}: one line, not a backtrace: {err}"
        );
        assert!(!runs.exists(), "{extra:?} made {}", runs.display());
    }
}

/// `make train` again and again: every run gets its own directory, `--resume` continues the
/// newest, and the step count comes from the epochs.
#[test]
fn each_run_gets_a_new_directory_and_resume_takes_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data);
    let runs = tmp.path().join("runs");
    let config = tmp.path().join("tiny.toml");
    std::fs::write(&config, "[run]\nepochs = 2\ncheckpoint_every = 1\n").unwrap();
    let shards = format!("data.shards={}", data.join("gt").display());
    let go = |extra: &[&str]| {
        let mut a =
            vec!["train", "--config", config.to_str().unwrap(), "--runs", runs.to_str().unwrap()];
        for set in [
            "model.preset=vit_tiny_test",
            "model.img_size=112",
            "head.hidden=[64]",
            "head.prototypes=16",
            "data.batch_size=2",
        ] {
            a.extend(["--set", set]);
        }
        a.extend([
            "--set",
            shards.as_str(),
            "--set",
            "data.workers=1",
            "--set",
            "data.shuffle_buffer=4",
        ]);
        a.extend_from_slice(extra);
        run(&a)
    };
    let o = go(&[]);
    assert!(o.status.success(), "{}", text(&o));
    // 2 videos, one clip each an epoch, batch 2: one step an epoch.
    assert!(text(&o).contains("2 epochs x 1 steps = 2 steps"), "{}", text(&o));
    let o = go(&["--stop-after", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let dirs = |_: ()| {
        let mut d: Vec<_> =
            std::fs::read_dir(runs.join("tiny")).unwrap().flatten().map(|e| e.path()).collect();
        d.sort();
        d
    };
    let made = dirs(());
    assert_eq!(made.len(), 2, "{made:?}");
    let o = go(&["--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("resumed from") && text(&o).contains(made[1].to_str().unwrap()),
        "{}",
        text(&o)
    );
    assert_eq!(dirs(()).len(), 2, "resume makes no new run");
    assert_eq!(
        mosic_trainer::run::dir::checkpoints(&made[1]).last().unwrap().file_name().unwrap(),
        "step-00000002"
    );
}

/// While the backbone is frozen, a run's features at any size are exactly those of the weights
/// file it started from: both resample the file's position embedding.
#[test]
fn a_frozen_backbone_gives_its_baseline_features_at_other_sizes() {
    use burn::backend::NdArray;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data);
    // Weights with a 10 x 10 position grid (140 px); the run trains at 112 px (8 x 8).
    let weights = tmp.path().join("w.safetensors");
    let cfg = mosic_trainer::model::VitConfig::preset("vit_tiny_test", 140).unwrap();
    let vit = mosic_trainer::model::timm::random::<NdArray<f32>>(&cfg, 3, &Default::default());
    mosic_trainer::model::weights::save(&vit, &weights).unwrap();
    let shards = format!("data.shards={}", data.join("gt").display());
    let run_dir = tmp.path().join("run");
    let w = format!("model.weights={}", weights.display());
    let o = run(&args(
        &shards,
        run_dir.to_str().unwrap(),
        &["--set", &w, "--set", "model.trainable_blocks=none", "--set", "run.steps=2"],
    ));
    assert!(o.status.success(), "{}", text(&o));
    let frames = data.join("JPEGImages/synth_0000");
    let feats = |name: &str, src: &[&str], size: &str| {
        let out = tmp.path().join(name);
        let mut a = vec![
            "features",
            "--input",
            frames.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--size",
            size,
        ];
        a.extend_from_slice(src);
        let o = run(&a);
        assert!(o.status.success(), "{}", text(&o));
        mosic_trainer::eval::features::load_features(&out).unwrap().0
    };
    for size in ["224", "112"] {
        let a = feats("run.safetensors", &["--run", run_dir.to_str().unwrap()], size);
        let b = feats(
            "file.safetensors",
            &["--weights", weights.to_str().unwrap(), "--preset", "vit_tiny_test"],
            size,
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.data, y.data, "features at {size} px");
        }
    }
}

#[test]
fn bad_weights_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w.safetensors");
    let mut t = std::collections::BTreeMap::new();
    t.insert(
        "cls_token".to_string(),
        mosic::tensors::HostTensor::new(vec![1, 1, 7], vec![0f32; 7]),
    );
    mosic_trainer::model::paths::save_safetensors(&w, &t).unwrap();
    let o = run(&[
        "bench",
        "train",
        "--set",
        "model.preset=vit_tiny_test",
        "--set",
        &format!("model.weights={}", w.display()),
        "--steps",
        "1",
    ]);
    let msg = text(&o);
    assert!(!o.status.success());
    assert!(
        msg.contains("w.safetensors") && msg.contains("pos_embed") && msg.contains("cls_token"),
        "{msg}"
    );
}
