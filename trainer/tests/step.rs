//! The MoSiC step against its references: the objective golden from stored tracks, crops and
//! dropped patches (tools/goldens/make_loss_golden.py), non-finite steps, exact resume of a
//! trainer, bf16 beside fp32.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use mosic_trainer::config::{LossConfig, Masking, ObjectiveConfig, Sampling};
use mosic_trainer::data::{clip_points, select_points, Aug, Batch, LoaderState};
use mosic_trainer::model::head::{ProjectionHead, Prototypes};
use mosic_trainer::model::paths;
use mosic_trainer::run::dir::StepStats;
use mosic_trainer::train::bench::parameter_difference;
use mosic_trainer::train::loss::{gather_points, mosic_loss};
use mosic_trainer::train::step::{StepInputs, Trainer};
use mosic_trainer::TrainConfig;
use std::collections::HashMap;

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
    let ckpt = first.save_checkpoint(tmp.path(), LoaderState::default(), 1).unwrap();
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
    assert_eq!(parameter_difference(&straight, &resumed), 0.0);
    // Against fresh weights: the largest change relative to its tensor's largest magnitude,
    // computed here by hand over the student and the teacher.
    let fresh = Trainer::<AB>::new(&cfg, &dev).unwrap();
    let mut by_hand = 0f64;
    let pairs = [
        (paths::collect(&straight.student, all), paths::collect(&fresh.student, all)),
        (paths::collect(&straight.teacher, all), paths::collect(&fresh.teacher, all)),
    ];
    for (a, b) in &pairs {
        for (k, t) in a {
            let scale = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (x, y) in t.data.iter().zip(&b[k].data) {
                by_hand = by_hand.max(((x - y).abs() / scale) as f64);
            }
        }
    }
    assert!(by_hand > 0.0);
    assert_eq!(parameter_difference(&straight, &fresh), by_hand);
    assert_ne!(
        paths::collect(&straight.student, all),
        paths::collect(&Trainer::<AB>::new(&cfg, &dev).unwrap().student, all)
    );
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
