//! Bilinear upsampling and the linear probe against PyTorch (tests/fixtures/eval/probe.json,
//! made by tools/goldens/make_probe_golden.py). Tolerances: 1e-5 absolute on resampled values,
//! loss and gradients; 1e-5 on parameters after three SGD steps (all float32).

use mosic_eval::data::dense::FeatureMap;
use mosic_eval::data::Mask;
use mosic_eval::kernels::probe::LinearProbe;
use mosic_eval::protocols::linear::Sgd;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    bilinear: Vec<Resample>,
    probe: Probe,
}

#[derive(Deserialize)]
struct Resample {
    h: usize,
    w: usize,
    dim: usize,
    out_h: usize,
    out_w: usize,
    input: Vec<f32>,
    output: Vec<f32>,
}

#[derive(Deserialize)]
struct Probe {
    images: usize,
    dim: usize,
    grid_h: usize,
    grid_w: usize,
    classes: usize,
    mask_h: usize,
    mask_w: usize,
    features: Vec<f32>,
    labels: Vec<u8>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    loss: f64,
    grad_weight: Vec<f32>,
    grad_bias: Vec<f32>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    steps: usize,
    weight_after: Vec<f32>,
    bias_after: Vec<f32>,
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/eval/probe.json");
    serde_json::from_str(
        &std::fs::read_to_string(path).expect("run tools/goldens/make_probe_golden.py"),
    )
    .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn bilinear_matches_torch_interpolate() {
    for r in golden().bilinear {
        let out = FeatureMap::new(r.h, r.w, r.dim, r.input).upsample(r.out_h, r.out_w);
        let d = max_diff(&out.data, &r.output);
        assert!(d < 1e-5, "{}x{} -> {}x{}: max diff {d}", r.h, r.w, r.out_h, r.out_w);
    }
}

#[test]
fn probe_loss_gradients_and_sgd_match_torch() {
    let p = golden().probe;
    let per_img = p.grid_h * p.grid_w * p.dim;
    let per_mask = p.mask_h * p.mask_w;
    let feats: Vec<FeatureMap> = (0..p.images)
        .map(|i| {
            FeatureMap::new(
                p.grid_h,
                p.grid_w,
                p.dim,
                p.features[i * per_img..(i + 1) * per_img].to_vec(),
            )
        })
        .collect();
    let masks: Vec<Mask> = (0..p.images)
        .map(|i| Mask {
            width: p.mask_w,
            height: p.mask_h,
            labels: p.labels[i * per_mask..(i + 1) * per_mask].to_vec(),
        })
        .collect();
    let batch: Vec<(&FeatureMap, &Mask)> = feats.iter().zip(&masks).collect();
    let mut probe = LinearProbe { dim: p.dim, classes: p.classes, weight: p.weight, bias: p.bias };
    let (loss, gw, gb) = probe.loss_and_grad(&batch);
    assert!((loss - p.loss).abs() < 1e-5, "loss {loss} vs {}", p.loss);
    assert!(max_diff(&gw, &p.grad_weight) < 1e-5, "grad weight {}", max_diff(&gw, &p.grad_weight));
    assert!(max_diff(&gb, &p.grad_bias) < 1e-5, "grad bias {}", max_diff(&gb, &p.grad_bias));
    let mut sgd = Sgd::default();
    for _ in 0..p.steps {
        let (_, gw, gb) = probe.loss_and_grad(&batch);
        sgd.step(&mut probe, &gw, &gb, p.lr, p.momentum, p.weight_decay);
    }
    assert!(
        max_diff(&probe.weight, &p.weight_after) < 1e-5,
        "weight after SGD {}",
        max_diff(&probe.weight, &p.weight_after)
    );
    assert!(
        max_diff(&probe.bias, &p.bias_after) < 1e-5,
        "bias after SGD {}",
        max_diff(&probe.bias, &p.bias_after)
    );
}
