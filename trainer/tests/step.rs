//! The MoSiC step against its references: the objective golden from stored tracks, crops and
//! dropped patches (tools/goldens/make_loss_golden.py), non-finite steps, exact resume of a
//! trainer, bf16 beside fp32, and several workers against one device.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use mosic::tensors::HostTensor;
use mosic_trainer::config::{LossConfig, Masking, ObjectiveConfig, Sampling};
use mosic_trainer::data::{clip_points, select_points, Aug, Batch, LoaderState};
use mosic_trainer::model::head::{ProjectionHead, Prototypes};
use mosic_trainer::model::paths;
use mosic_trainer::run::dir::StepStats;
use mosic_trainer::train::loss::{gather_points, mosic_loss};
use mosic_trainer::train::step::{StepInputs, Trainer};
use mosic_trainer::TrainConfig;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Trainers are built one at a time: Burn's initialisers draw from one generator per backend.
static INIT: Mutex<()> = Mutex::new(());
use anyhow::{bail, Result};
use mosic_trainer::run::dir as rundir;
use mosic_trainer::train::collective::{Collective, Group};
use mosic_trainer::train::fit::{train, train_hooked};

type Inner = mosic_trainer::testing::Golden;
type AB = Autodiff<Inner>;

/// Tensors by name: (shape, f32 values).
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors fixture as (shape, f32 values); int64 tensors converted.
fn fixture(name: &str) -> (Tensors, serde_json::Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/loss");
    let bytes = std::fs::read(format!("{dir}/{name}.safetensors")).expect("fixture");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (k, v) in st.tensors() {
        let data: Vec<f32> = match v.dtype() {
            safetensors::Dtype::F32 => v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{k}: {other:?}"),
        };
        out.insert(k, (v.shape().to_vec(), data));
    }
    let cfg = serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{name}.json")).unwrap())
        .unwrap();
    (out, cfg)
}

fn tensor<BB: Backend, const D: usize>(t: &(Vec<usize>, Vec<f32>)) -> Tensor<BB, D> {
    Tensor::from_data(TensorData::new(t.1.clone(), t.0.clone()), &Default::default())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn values<BB: Backend, const D: usize>(t: Tensor<BB, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn head<BB: Backend>(
    g: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    who: &str,
    layers: usize,
) -> (ProjectionHead<BB>, Prototypes<BB>) {
    let layers = (0..layers)
        .map(|j| Linear {
            weight: Param::from_tensor(tensor(&g[&format!("{who}.layers.{j}.weight")])),
            bias: Some(Param::from_tensor(tensor(&g[&format!("{who}.layers.{j}.bias")]))),
        })
        .collect();
    let protos =
        Prototypes { weight: Param::from_tensor(tensor(&g[&format!("{who}.prototypes")])) };
    (ProjectionHead { layers }, protos.normalized())
}

fn tiny(precision: mosic_trainer::backend::Precision) -> TrainConfig {
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
    let mut cfg = TrainConfig::load(None, &set).unwrap();
    cfg.model.precision = precision;
    cfg
}

#[test]
fn a_non_finite_step_is_skipped_on_the_device_and_named_at_the_next_read() {
    let cfg = tiny(mosic_trainer::backend::Precision::Fp32);
    let mut trainer = Trainer::<AB>::new(&cfg, &Default::default()).unwrap();
    let good = Batch::random(cfg.data.batch_size, 3, 9, cfg.model.img_size, cfg.run.seed);
    trainer.step(&good).unwrap();
    let before = paths::collect(&trainer.student, |_| true);
    // An infinite weight makes the loss non-finite.
    let mut bad_weights = good.clone();
    bad_weights.visibility[0] = f32::INFINITY;
    let outs: Vec<_> = [bad_weights.clone(), good.clone(), bad_weights]
        .iter()
        .map(|b| trainer.step_async(b).unwrap())
        .collect();
    let e = trainer.read(outs.into_iter().last().unwrap()).unwrap_err().to_string();
    assert!(e.contains("not finite at step 2"), "{e}");
    let after = paths::collect(&trainer.student, |_| true);
    // Step 3 was a good one and did train; nothing non-finite ever reached the weights.
    assert!(after.values().all(|t| t.data.iter().all(|x| x.is_finite())));
    assert_ne!(before, after);
    assert!(trainer.check_finite().is_err());
}

/// A trainer checkpointed after 2 steps and resumed in a new process's worth of state
/// ends where an uninterrupted 4-step run ends, bit for bit: student, EMA teacher and
/// optimiser moments (the masks follow the restored step).
#[test]
fn a_resumed_trainer_equals_an_uninterrupted_one() {
    let cfg = tiny(mosic_trainer::backend::Precision::Fp32);
    let dev = Default::default();
    let batches: Vec<Batch> = (0..4u64)
        .map(|i| Batch::random(cfg.data.batch_size, 3, 9, cfg.model.img_size, cfg.run.seed + i))
        .collect();
    let mut straight = Trainer::<AB>::new(&cfg, &dev).unwrap();
    for b in &batches {
        straight.step(b).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Trainer::<AB>::new(&cfg, &dev).unwrap();
    for b in &batches[..2] {
        first.step(b).unwrap();
    }
    let ckpt = first.save_checkpoint(tmp.path(), LoaderState::default()).unwrap();
    drop(first);
    let mut resumed = Trainer::<AB>::new(&cfg, &dev).unwrap();
    assert_eq!(resumed.load_checkpoint(&ckpt).unwrap().step, 2);
    for b in &batches[2..] {
        resumed.step(b).unwrap();
    }
    let all = |_: &str| true;
    assert_eq!(paths::collect(&straight.student, all), paths::collect(&resumed.student, all));
    assert_eq!(paths::collect(&straight.teacher, all), paths::collect(&resumed.teacher, all));
    assert_eq!(straight.optimizer().state(), resumed.optimizer().state());
    assert_ne!(
        paths::collect(&straight.student, all),
        paths::collect(&Trainer::<AB>::new(&cfg, &dev).unwrap().student, all)
    );
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
    let mut cfg = tiny(mosic_trainer::backend::Precision::Fp32);
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
    let collective = Collective::new(2, Duration::from_secs(120));
    let workers: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|rank| {
                let (cfg, batches, collective) = (&cfg, &batches, collective.clone());
                s.spawn(move || {
                    let mut t = {
                        let _g = INIT.lock().unwrap_or_else(|e| e.into_inner());
                        Trainer::<AB>::new(cfg, &Default::default()).unwrap()
                    };
                    t.keep_grads = true;
                    t.group = Some(Group { rank, collective, first_clip: 2 * rank });
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
    let set: Vec<String> = [
        "model.preset=vit_tiny_test",
        "model.img_size=56",
        "model.trainable_blocks=2",
        "head.hidden=[32]",
        "head.out_dim=16",
        "head.prototypes=8",
        "data.batch_size=4",
        "data.frames=3",
        "data.grid_size=3",
        "data.workers=1",
        "data.shuffle_buffer=4",
        "objective.mask_ratio=0.25",
        "run.checkpoint_every=1",
        "run.keep_checkpoints=10",
        "run.log_every=1",
        "validation.every=0",
    ]
    .iter()
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
        let e = train_hooked::<AB>(&cfg, &run, false, None, &devices, &quiet, Some(&fault))
            .unwrap_err();
        let e = format!("{e:#}");
        println!("{e}");
        assert!(t0.elapsed() < Duration::from_secs(120), "took {:?}", t0.elapsed());
        let want = if panics { "panicked: injected panic" } else { "injected failure" };
        assert!(e.contains(want) && e.contains(&format!("worker {rank}")), "{e}");
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
        rundir::read_metrics(run, u64::MAX).iter().map(|s| s.loss).collect()
    };
    assert_eq!(losses(&straight), losses(&split));
}

/// bfloat16 for the teacher and the frozen blocks: the step's loss and gradient norm stay
/// within 2% of the float32 step's (stated tolerance; on Flex, or on libtorch's CPU device
/// in a `tch` build), and the teacher's matrix products really ran in bf16.
#[test]
fn a_bf16_step_stays_close_to_the_fp32_step() {
    type F = Autodiff<mosic_trainer::testing::Bf16>;
    use mosic_trainer::backend::Precision;
    let dev = Default::default();
    let mut runs = Vec::new();
    for p in [Precision::Fp32, Precision::Bf16] {
        let cfg = tiny(p);
        let batch = Batch::random(cfg.data.batch_size, 3, 9, cfg.model.img_size, cfg.run.seed);
        let mut trainer = Trainer::<F>::new(&cfg, &dev).unwrap();
        let stats: Vec<StepStats> = (0..3).map(|_| trainer.step(&batch).unwrap()).collect();
        let x = Tensor::<mosic_trainer::testing::Bf16, 4>::ones([1, 3, 56, 56], &dev);
        let tokens = values(trainer.teacher.backbone.forward_patch_tokens(x, None));
        runs.push((stats, tokens));
    }
    let (fp32, bf16) = (&runs[0], &runs[1]);
    for (a, b) in fp32.0.iter().zip(&bf16.0) {
        let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-9);
        println!(
            "step {}: loss {} vs {}, grad {} vs {}",
            a.step, a.loss, b.loss, a.grad_norm, b.grad_norm
        );
        assert!(rel(a.loss, b.loss) < 0.02, "loss {} vs {}", a.loss, b.loss);
        assert!(
            rel(a.grad_norm, b.grad_norm) < 0.02,
            "grad norm {} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
    let d = max_diff(&fp32.1, &bf16.1);
    assert!(d > 1e-4 && d < 0.5, "teacher tokens differ by {d}: bf16 must change them a little");
}

/// tools/goldens/make_loss_golden.py derives the selected points, weights, Sinkhorn rows, targets,
/// loss and gradients from stored tracks, crops and dropped patches with the released
/// code's functions; the trainer's own path from the same inputs must agree to 1e-5.
#[test]
fn golden_objective_from_stored_tracks_crops_and_masks() {
    let (g, cfg) = fixture("objective");
    let u = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (b, t, w, s, patch, grid, d) =
        (u("B"), u("T"), u("W"), u("S"), u("patch") as f32, u("grid") as u32, u("D"));
    let (n, hw, k) = ((grid * grid) as usize, (s / patch as usize).pow(2), u("K"));
    let gs = s / patch as usize;
    let queries: Vec<[f32; 2]> = g["stored_queries"].1.chunks(2).map(|p| [p[0], p[1]]).collect();
    let (mut tracks, mut vis, mut inside) = (Vec::new(), Vec::new(), Vec::new());
    for c in 0..b {
        let crop = &cfg["crops"][c];
        let cu = |k: &str| crop[k].as_u64().unwrap() as u32;
        let aug = Aug {
            flip: crop["flip"].as_bool().unwrap(),
            left: cu("left"),
            top: cu("top"),
            width: cu("width"),
            height: cu("height"),
            frame_width: w as u32,
        };
        let sel = select_points(&queries, &aug, s, grid);
        let want: Vec<Option<usize>> =
            g["selected"].1[c * n..(c + 1) * n].iter().map(|&v| Some(v as usize)).collect();
        assert_eq!(sel, want, "clip {c}: selected stored points");
        let clip = mosic::Clip {
            dataset: "golden".into(),
            video_id: format!("v{c}"),
            clip_index: 0,
            frame_indices: (0..t as u32).collect(),
            source_fps: 30.0,
            frames: vec![],
            queries: queries.clone(),
            tracks: g[&format!("stored_tracks_{c}")].1.chunks(2).map(|p| [p[0], p[1]]).collect(),
            visibility: g[&format!("stored_visibility_{c}")].1.iter().map(|&v| v != 0.0).collect(),
        };
        let (tr, vi, ins) = clip_points(&clip, &aug, s, grid);
        tracks.extend(tr.into_iter().flatten());
        vis.extend(vi.into_iter().map(|v| v as u8 as f32));
        inside.extend(ins.into_iter().map(|v| v as u8 as f32));
    }
    let off = max_diff(&tracks, &g["points"].1);
    assert!(off < 1e-4, "mapped tracks differ by {off}");
    assert_eq!(vis, g["visibility"].1, "visibility in the crop");
    assert_eq!(inside, g["inside"].1, "inside the crop");
    let batch = Batch {
        clips: b,
        frames: t,
        points: n,
        size: s,
        images: vec![],
        tracks,
        visibility: vis,
        inside,
        ids: vec![],
    };
    let dropped: Vec<Vec<usize>> = cfg["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect())
        .collect();

    let layers = cfg["hidden"].as_array().unwrap().len() + 1;
    let (student, s_protos) = head::<AB>(&g, "student", layers);
    let (teacher, t_protos) = head::<Inner>(&g, "teacher", layers);
    let keep = &g["keep"].1;
    let kept_rows: Vec<f32> = g["student_tokens"]
        .1
        .chunks(d)
        .enumerate()
        .filter(|(r, _)| keep[*r] == 1.0)
        .flat_map(|(_, row)| row.to_vec())
        .collect();
    let l = hw - dropped[0].len();
    for v in cfg["variants"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let obj = ObjectiveConfig {
            teacher_sampling: serde_json::from_value(v["teacher_sampling"].clone()).unwrap(),
            student_sampling: Sampling::Nearest,
            sinkhorn_rows: serde_json::from_value(v["sinkhorn_rows"].clone()).unwrap(),
            reduction: serde_json::from_value(v["reduction"].clone()).unwrap(),
            masking: Masking::Drop,
            ..Default::default()
        };
        let inputs = StepInputs::new(&batch, &obj, gs, patch, Some(&dropped));
        assert_eq!(inputs.weights, g["weights"].1, "{name}: loss weights");
        assert_eq!(inputs.rows, g[&format!("{name}.rows")].1, "{name}: Sinkhorn rows");
        let tt: Tensor<Inner, 2> = Tensor::from_data(
            TensorData::new(g["teacher_tokens"].1.clone(), [b * t * hw, d]),
            &Default::default(),
        );
        let t_scores = t_protos
            .scores(teacher.forward(gather_points(tt, &inputs.teacher)))
            .reshape([b, t, n, k]);
        let st: Tensor<AB, 2> =
            Tensor::from_data(TensorData::new(kept_rows.clone(), [b * l, d]), &Default::default());
        let s_scores =
            s_protos.scores(student.forward(gather_points(st, &inputs.student))).reshape([b, n, k]);
        let lc = LossConfig {
            temperature: 0.1,
            epsilon: 0.05,
            iterations: 10,
            reduction: obj.reduction,
        };
        let weights = Tensor::<AB, 3>::from_data(
            TensorData::new(inputs.weights.clone(), [b, t, n]),
            &Default::default(),
        );
        let rows = Tensor::<AB, 1>::from_data(
            TensorData::new(inputs.rows.clone(), [b * t * n]),
            &Default::default(),
        );
        let out =
            mosic_loss(s_scores, Tensor::from_inner(t_scores), weights, Some(rows), &lc, None)
                .unwrap();
        let tol = 1e-5;
        let dq = max_diff(&values(out.assignments.clone()), &g[&format!("{name}.sinkhorn")].1);
        assert!(dq < tol, "{name}: Sinkhorn differs by {dq}");
        let targets: Vec<f32> = out.targets.into_data().iter::<i64>().map(|v| v as f32).collect();
        let want_targets = &g[&format!("{name}.targets")].1;
        for (e, (a, w)) in targets.iter().zip(want_targets).enumerate() {
            assert!(inputs.rows[e] == 0.0 || a == w, "{name}: target of entry {e}: {a} vs {w}");
        }
        let dl = max_diff(&values(out.loss.clone()), &g[&format!("{name}.loss")].1);
        assert!(dl < tol, "{name}: loss differs by {dl}");
        let grads = out.loss.backward();
        let mut worst = dl.max(dq);
        for (j, layer) in student.layers.iter().enumerate() {
            let gw = values(layer.weight.val().grad(&grads).unwrap());
            let gb = values(layer.bias.as_ref().unwrap().val().grad(&grads).unwrap());
            worst = worst.max(max_diff(&gw, &g[&format!("{name}.grad.layers.{j}.weight")].1));
            worst = worst.max(max_diff(&gb, &g[&format!("{name}.grad.layers.{j}.bias")].1));
        }
        let gp = values(s_protos.weight.val().grad(&grads).unwrap());
        worst = worst.max(max_diff(&gp, &g[&format!("{name}.grad.prototypes")].1));
        println!("objective golden {name}: worst max |diff| {worst:.2e} (tolerance {tol:e})");
        assert!(worst < tol, "{name}: gradients differ by {worst}");
    }
}
