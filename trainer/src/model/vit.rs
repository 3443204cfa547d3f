//! The ViT backbone: DINOv2 (with or without registers, SwiGLU for giant) and DINO v1, numerically
//! matching timm's `VisionTransformer` (`forward_features`): config and presets, layers and the
//! forward pass. Tensors are named as timm names them, so a model is built from (and gives
//! back) timm's state dict; reading and writing weight files is [`crate::model::weights`]'s job.

use std::ops::Range;

use crate::backend::Precision;
use anyhow::{anyhow, bail, Result};
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};
use mosic::tensors::HostTensor;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// timm's ratio: the first MLP layer has `int(embed_dim * mlp_ratio)` outputs (for SwiGLU that
    /// is the packed gate+value width, twice the hidden width).
    pub mlp_ratio: f64,
    pub num_registers: usize,
    pub layer_scale: bool,
    pub swiglu: bool,
    /// Run input size (square); the patch grid is `img_size / patch_size`.
    pub img_size: usize,
    pub ln_eps: f64,
    /// timm's `no_embed_class`: pos_embed covers patches only (DINOv2 with registers); otherwise it
    /// has a leading slot for every prefix token.
    pub no_embed_class: bool,
    /// The timm model (with pretrained tag) whose weights this config takes.
    #[serde(default)]
    pub timm_name: Option<String>,
}

/// Preset name, timm name (with pretrained tag), patch, dim, depth, heads, registers,
/// LayerScale, SwiGLU.
type Preset = (&'static str, Option<&'static str>, usize, usize, usize, usize, usize, bool, bool);

#[rustfmt::skip]
const PRESETS: &[Preset] = &[
    ("vit_small_patch14_dinov2", Some("vit_small_patch14_dinov2.lvd142m"), 14, 384, 12, 6, 0, true, false),
    ("vit_base_patch14_dinov2", Some("vit_base_patch14_dinov2.lvd142m"), 14, 768, 12, 12, 0, true, false),
    ("vit_large_patch14_dinov2", Some("vit_large_patch14_dinov2.lvd142m"), 14, 1024, 24, 16, 0, true, false),
    ("vit_giant_patch14_dinov2", Some("vit_giant_patch14_dinov2.lvd142m"), 14, 1536, 40, 24, 0, true, true),
    ("vit_small_patch14_reg4_dinov2", Some("vit_small_patch14_reg4_dinov2.lvd142m"), 14, 384, 12, 6, 4, true, false),
    ("vit_base_patch14_reg4_dinov2", Some("vit_base_patch14_reg4_dinov2.lvd142m"), 14, 768, 12, 12, 4, true, false),
    ("vit_large_patch14_reg4_dinov2", Some("vit_large_patch14_reg4_dinov2.lvd142m"), 14, 1024, 24, 16, 4, true, false),
    ("vit_giant_patch14_reg4_dinov2", Some("vit_giant_patch14_reg4_dinov2.lvd142m"), 14, 1536, 40, 24, 4, true, true),
    ("vit_small_patch16_224.dino", Some("vit_small_patch16_224.dino"), 16, 384, 12, 6, 0, false, false),
    ("vit_base_patch16_224.dino", Some("vit_base_patch16_224.dino"), 16, 768, 12, 12, 0, false, false),
    // Built-in model for CPU demos and tests, shaped like a DINOv2 with registers.
    ("vit_tiny_test", None, 14, 64, 4, 2, 4, true, false),
];

impl VitConfig {
    /// A known backbone at the run input size `img_size`. Also accepts the timm name with its
    /// pretrained tag (e.g. `vit_small_patch14_dinov2.lvd142m`).
    pub fn preset(name: &str, img_size: usize) -> Result<Self> {
        let &(_, timm, patch, dim, depth, heads, registers, layer_scale, swiglu) =
            PRESETS.iter().find(|p| p.0 == name || p.1 == Some(name)).ok_or_else(|| {
                let known: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                anyhow!("unknown ViT preset {name:?}; known presets: {}", known.join(", "))
            })?;
        let cfg = VitConfig {
            patch_size: patch,
            embed_dim: dim,
            depth,
            num_heads: heads,
            // timm's giant: packed SwiGLU width 2 * 4096 = int(1536 * 2.66667 * 2).
            mlp_ratio: if swiglu { 2.66667 * 2.0 } else { 4.0 },
            num_registers: registers,
            layer_scale,
            swiglu,
            img_size,
            ln_eps: 1e-6,
            // timm converts DINOv2-with-registers checkpoints to no_embed_class (cls gets its pos).
            no_embed_class: registers > 0,
            timm_name: timm.map(str::to_string),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0
            || !self.img_size.is_multiple_of(self.patch_size)
            || self.img_size == 0
        {
            bail!(
                "img_size {} is not a positive multiple of patch_size {}",
                self.img_size,
                self.patch_size
            );
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            bail!("embed_dim {} is not divisible by num_heads {}", self.embed_dim, self.num_heads);
        }
        if self.swiglu && !self.mlp_width().is_multiple_of(2) {
            bail!("SwiGLU needs an even packed MLP width, got {}", self.mlp_width());
        }
        Ok(())
    }

    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// cls plus registers.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.num_registers
    }
    pub fn timm_name(&self) -> Option<&str> {
        self.timm_name.as_deref()
    }
    /// Output width of `mlp.fc1`, truncated like Python's `int()`.
    pub fn mlp_width(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
    /// Input width of `mlp.fc2`.
    pub fn mlp_hidden(&self) -> usize {
        if self.swiglu {
            self.mlp_width() / 2
        } else {
            self.mlp_width()
        }
    }
    /// pos_embed slots that belong to prefix tokens (0 when `no_embed_class`).
    pub fn pos_prefix(&self) -> usize {
        if self.no_embed_class {
            0
        } else {
            self.num_prefix_tokens()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------

/// `layer(x)` with bfloat16 inputs and weights under [`Precision::Bf16`]; the output then
/// stays bfloat16 (cast back by the caller where autocast would leave float32).
fn linear_in<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    p: Precision,
) -> Tensor<B, D> {
    match p {
        Precision::Fp32 => layer.forward(x),
        Precision::Bf16 => {
            let bf = FloatDType::BF16;
            let w = layer.weight.val().cast(bf);
            let b = layer.bias.as_ref().map(|b| b.val().cast(bf));
            burn::tensor::module::linear(x.cast(bf), w, b)
        }
    }
}

fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>, p: Precision) -> Tensor<B, D> {
    match p {
        Precision::Fp32 => x,
        Precision::Bf16 => x.cast(FloatDType::F32),
    }
}

/// Conv with stride = kernel = patch, computed as patchify + matmul (same sums, no conv kernel).
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// weight `[3 * p * p, D]`, rows in the conv kernel's (channel, y, x) order.
    pub proj: Linear<B>,
    pub patch_size: usize,
}

impl<B: Backend> PatchEmbed<B> {
    /// `[B, 3, H, W]` → `[B, (H/p)*(W/p), D]`, patches in row-major grid order.
    pub fn forward(&self, images: Tensor<B, 4>, p: Precision) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let ps = self.patch_size;
        let (gh, gw) = (h / ps, w / ps);
        let x = images.reshape([b, c, gh, ps, gw, ps]).permute([0, 2, 4, 1, 3, 5]).reshape([
            b,
            gh * gw,
            c * ps * ps,
        ]);
        to_f32(linear_in(&self.proj, x, p), p)
    }
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: Backend> Attention<B> {
    /// Scaled dot-product attention. On GPUs and under autodiff through Burn's attention op,
    /// which runs the backend's fused kernel where there is one (flash attention on `cuda`,
    /// `scaled_dot_product_attention` on `tch`) and is decomposed under autodiff; without a
    /// gradient on the CPU backends as batched products and a softmax (see below).
    pub fn forward(&self, x: Tensor<B, 3>, p: Precision) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let device = x.device();
        if crate::backend::is_cpu::<B>(&device) && !B::ad_enabled(&device) {
            // On the CPU backends: q, k and v stay strided views of qkv (their products read
            // strides; a permuted 4D copy goes element by element), the products and the
            // softmax run on all cores (Flex's fused kernel is one thread per call), and the
            // heads are stacked back from 2D slices. The softmax scale is folded into q's
            // weights (a pass over d x 3d, not B x H x N x N). Same values as the fused op.
            let scale = 1.0 / (hd as f64).sqrt();
            let scaled = |t: Tensor<B, 1>| {
                Tensor::cat(vec![t.clone().narrow(0, 0, d) * scale, t.narrow(0, d, 2 * d)], 0)
            };
            let w = self.qkv.weight.val();
            let w = Tensor::cat(vec![w.clone().narrow(1, 0, d) * scale, w.narrow(1, d, 2 * d)], 1);
            let layer = Linear {
                weight: Param::from_tensor(w),
                bias: self.qkv.bias.as_ref().map(|b| Param::from_tensor(scaled(b.val()))),
            };
            let qkv = linear_in(&layer, x, p).reshape([b, n, 3 * h, hd]).swap_dims(1, 2);
            let part = |i: usize| qkv.clone().narrow(1, i * h, h);
            let scores = part(0).matmul(part(1).swap_dims(2, 3));
            let probs = if crate::model::host::applies(&scores) {
                crate::model::host::softmax_last(scores)
            } else {
                burn::tensor::activation::softmax(scores, 3)
            };
            let out = probs.matmul(part(2));
            let heads = (0..h).map(|j| out.clone().narrow(1, j, 1).reshape([b, n, hd])).collect();
            return to_f32(linear_in(&self.proj, Tensor::cat(heads, 2), p), p);
        }
        // [B, N, 3D] → [3, B, H, N, hd], the layout of timm's qkv.
        let qkv = linear_in(&self.qkv, x, p).reshape([b, n, 3, h, hd]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, h, n, hd]);
        let (q, k, v) = (part(0), part(1), part(2));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        let out = out.swap_dims(1, 2).reshape([b, n, d]);
        to_f32(linear_in(&self.proj, out, p), p)
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    /// timm's SwiGLUPacked: fc1 packs [gate, value]; hidden = silu(gate) * value.
    pub swiglu: bool,
}

/// Exact GELU. Under autodiff it is built from erf so the exact function is differentiated
/// (Burn's default GELU backward is the tanh approximation's derivative); without a gradient
/// the backend's own GELU (exact erf, one pass where the backend fuses it) runs, or on the CPU
/// backends [`crate::model::host::gelu`].
fn gelu_erf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if crate::model::host::applies(&x) {
        return crate::model::host::gelu(x);
    }
    if !B::ad_enabled(&x.device()) {
        return burn::tensor::activation::gelu(x);
    }
    x.clone() * ((x * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>, p: Precision) -> Tensor<B, 3> {
        let h = linear_in(&self.fc1, x, p);
        let h = if self.swiglu {
            let mut parts = h.chunk(2, 2);
            let value = parts.pop().expect("two chunks");
            let gate = parts.pop().expect("two chunks");
            silu(gate) * value
        } else {
            gelu_erf(h)
        };
        to_f32(linear_in(&self.fc2, h, p), p)
    }
}

#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerScale<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

/// Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub ls1: Option<LayerScale<B>>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub ls2: Option<LayerScale<B>>,
}

impl<B: Backend> Block<B> {
    pub fn forward(&self, x: Tensor<B, 3>, p: Precision) -> Tensor<B, 3> {
        let a = self.attn.forward(self.norm1.forward(x.clone()), p);
        let a = match &self.ls1 {
            Some(ls) => ls.forward(a),
            None => a,
        };
        let x = x + a;
        let m = self.mlp.forward(self.norm2.forward(x.clone()), p);
        let m = match &self.ls2 {
            Some(ls) => ls.forward(m),
            None => m,
        };
        x + m
    }
}

#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    /// `[1, 1, D]`
    pub cls_token: Param<Tensor<B, 3>>,
    /// `[1, R, D]`, present when the config has registers.
    pub reg_token: Option<Param<Tensor<B, 3>>>,
    /// `[1, pos_prefix + grid*grid, D]` at the run grid.
    pub pos_embed: Param<Tensor<B, 3>>,
    /// `[1, D]`: DINOv2's embedding for masked patches (zeros unless the checkpoint has one).
    pub mask_token: Param<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub norm: LayerNorm<B>,
    #[module(skip)]
    pub cfg: VitConfig,
    /// The position embedding as the weights file holds it; while it is not trained, every
    /// input size resamples from it, exactly as timm does when it loads the file.
    #[module(skip)]
    pub source_pos_embed: Option<HostTensor>,
    /// Where this copy's matrix products run (the trainer's teacher: `model.precision`).
    #[module(skip)]
    pub precision: Precision,
}

impl<B: Backend> Vit<B> {
    /// The module tree of `cfg` with every tensor zero: the frame `timm::build` fills.
    pub fn zeros(cfg: &VitConfig, device: &B::Device) -> Self {
        let d = cfg.embed_dim;
        let param = |n: usize| Param::from_tensor(Tensor::<B, 1>::zeros([n], device));
        let linear = |inp: usize, out: usize| Linear {
            weight: Param::from_tensor(Tensor::zeros([inp, out], device)),
            bias: Some(param(out)),
        };
        let layer_norm = || LayerNormConfig::new(d).with_epsilon(cfg.ln_eps).init(device);
        let ls = || cfg.layer_scale.then(|| LayerScale { gamma: param(d) });
        let blocks = (0..cfg.depth)
            .map(|_| Block {
                norm1: layer_norm(),
                attn: Attention {
                    qkv: linear(d, 3 * d),
                    proj: linear(d, d),
                    num_heads: cfg.num_heads,
                },
                ls1: ls(),
                norm2: layer_norm(),
                mlp: Mlp {
                    fc1: linear(d, cfg.mlp_width()),
                    fc2: linear(cfg.mlp_hidden(), d),
                    swiglu: cfg.swiglu,
                },
                ls2: ls(),
            })
            .collect();
        let p = cfg.patch_size;
        Vit {
            patch_embed: PatchEmbed { proj: linear(3 * p * p, d), patch_size: p },
            cls_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
            reg_token: (cfg.num_registers > 0)
                .then(|| Param::from_tensor(Tensor::zeros([1, cfg.num_registers, d], device))),
            pos_embed: Param::from_tensor(Tensor::zeros(
                [1, cfg.pos_prefix() + cfg.num_patches(), d],
                device,
            )),
            mask_token: Param::from_tensor(Tensor::zeros([1, d], device)),
            blocks,
            norm: layer_norm(),
            cfg: cfg.clone(),
            source_pos_embed: None,
            precision: Precision::Fp32,
        }
    }

    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// The embedded tokens `[B, prefix + grid^2, D]` of [`Vit::embed`] with only the patches
    /// each image keeps: `[B, prefix + K, D]`, prefix first, then `keep[b]` (K ascending patch
    /// indices per image), as timm's patch dropout after the position embedding.
    pub fn keep_patches(&self, x: Tensor<B, 3>, keep: &[Vec<usize>]) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        assert_eq!(keep.len(), b, "one keep list per image");
        let p = self.cfg.num_prefix_tokens();
        let k = keep[0].len();
        let mut rows = Vec::with_capacity(b * (p + k));
        for (i, kept) in keep.iter().enumerate() {
            assert_eq!(kept.len(), k, "every image keeps as many patches");
            rows.extend((0..p).map(|j| (i * n + j) as i64));
            rows.extend(kept.iter().map(|&j| (i * n + p + j) as i64));
        }
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [b * (p + k)]), &x.device());
        x.reshape([b * n, d]).select(0, idx).reshape([b, p + k, d])
    }

    /// Tokens `[B, prefix + grid*grid, D]` (cls, registers, patches) with position embeddings.
    /// Masked patches (`mask[b, i]` true) are replaced by `mask_token` before the position embedding.
    pub fn embed(&self, images: Tensor<B, 4>, mask: Option<Tensor<B, 2, Bool>>) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let s = self.cfg.img_size;
        assert!(
            c == 3 && h == s && w == s,
            "expected images [B, 3, {s}, {s}], got [{b}, {c}, {h}, {w}]"
        );
        let d = self.cfg.embed_dim;
        let mut x = self.patch_embed.forward(images, self.precision);
        let n = x.dims()[1];
        if let Some(mask) = mask {
            assert_eq!(mask.dims(), [b, n], "mask must be [B, grid*grid]");
            let m = mask.reshape([b, n, 1]).expand([b, n, d]);
            let tok = self.mask_token.val().reshape([1, 1, d]).expand([b, n, d]);
            x = x.mask_where(m, tok);
        }
        let mut prefix = vec![self.cls_token.val().expand([b, 1, d])];
        if let Some(reg) = &self.reg_token {
            prefix.push(reg.val().expand([b, self.cfg.num_registers, d]));
        }
        let pos = self.pos_embed.val();
        if self.cfg.no_embed_class {
            prefix.push(x + pos);
            Tensor::cat(prefix, 1)
        } else {
            prefix.push(x);
            Tensor::cat(prefix, 1) + pos
        }
    }

    /// Runs `blocks[range]`.
    pub fn blocks(&self, x: Tensor<B, 3>, range: Range<usize>) -> Tensor<B, 3> {
        self.blocks[range].iter().fold(x, |x, blk| blk.forward(x, self.precision))
    }

    /// Final norm, then drops the prefix tokens: `[B, grid*grid, D]`.
    pub fn patch_tokens(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let p = self.cfg.num_prefix_tokens();
        self.norm.forward(x).slice([0..b, p..n, 0..d])
    }

    /// timm's `forward_features(images)[:, num_prefix_tokens:]`, with optional DINOv2 masking.
    pub fn forward_patch_tokens(
        &self,
        images: Tensor<B, 4>,
        mask: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let x = self.embed(images, mask);
        let x = self.blocks(x, 0..self.blocks.len());
        self.patch_tokens(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights;
    use crate::testing::{cases, fixtures, host3, max_abs_diff, st, to_tensor};
    use burn::backend::NdArray;
    use std::collections::HashMap;

    type B = NdArray<f32>;

    /// Every fixture case on ndarray and Flex (the CPU path: head slices, explicit softmax, the
    /// backend's GELU) and under autodiff (the path the student trains through).
    #[test]
    fn model_matches_timm_patch_tokens() {
        timm_cases::<B>("ndarray");
        timm_cases::<burn::backend::Flex>("flex");
        timm_cases::<burn::backend::Autodiff<B>>("autodiff<ndarray>");
        #[cfg(feature = "tch")]
        {
            timm_cases::<burn::backend::LibTorch<f32>>("tch (cpu)");
            timm_cases::<burn::backend::Autodiff<burn::backend::LibTorch<f32>>>(
                "autodiff<tch (cpu)>",
            );
        }
    }

    fn timm_cases<B: Backend>(backend: &str) {
        let device: B::Device = Default::default();
        let inputs = st(&fixtures().join("inputs.safetensors"));
        for (dir, case) in cases() {
            let expected = st(&dir.join("expected.safetensors"));
            let want = &expected["tokens"];
            let images = &inputs[&case.input];
            let batch = want.shape[0];
            let per = images.numel() / images.shape[0];
            let img = HostTensor::new(
                [vec![batch], images.shape[1..].to_vec()].concat(),
                images.data[..batch * per].to_vec(),
            );
            let (model, report) =
                weights::load_with_report::<B>(&case.config, &dir.join(&case.weights), &device)
                    .unwrap();
            let (shape, got) = host3(model.forward_patch_tokens(to_tensor(&img), None));
            assert_eq!(shape, want.shape, "{}", case.case);
            let diff = max_abs_diff(&got, &want.data);
            println!(
                "{backend:<18} {:<22} ({}) max abs diff vs timm: {diff:.3e}  [{}]",
                case.case,
                case.timm_model,
                report.note()
            );
            assert!(diff < 1e-4, "{backend} {}: max abs diff {diff}", case.case);

            if let Some(mask) = expected.get("mask") {
                assert!(report.mask_token_loaded);
                let m: Tensor<B, 2, Bool> = Tensor::<B, 2>::from_data(
                    TensorData::new(mask.data.clone(), mask.shape.clone()),
                    &device,
                )
                .greater_elem(0.5);
                let (_, got) = host3(model.forward_patch_tokens(to_tensor(&img), Some(m)));
                let diff = max_abs_diff(&got, &expected["tokens_masked"].data);
                println!("{:<22} masked: max abs diff vs DINOv2 masking: {diff:.3e}", case.case);
                assert!(diff < 1e-4, "{backend} {} masked: max abs diff {diff}", case.case);
            }

            if let Some(keep) = expected.get("keep") {
                // timm's forward_features with patch dropout after the position embedding.
                let k = keep.shape[1];
                let keep: Vec<Vec<usize>> =
                    keep.data.chunks(k).map(|r| r.iter().map(|&v| v as usize).collect()).collect();
                let x = model.keep_patches(model.embed(to_tensor(&img), None), &keep);
                let (shape, got) =
                    host3(model.patch_tokens(model.blocks(x, 0..model.blocks.len())));
                let want = &expected["tokens_dropped"];
                assert_eq!(shape, want.shape, "{} dropped", case.case);
                let diff = max_abs_diff(&got, &want.data);
                println!("{:<22} dropped patches: max abs diff vs timm: {diff:.3e}", case.case);
                assert!(diff < 1e-4, "{backend} {} dropped: max abs diff {diff}", case.case);
            }

            // What load_state_dict(strict=True) in timm needs: same names, same order, same shapes.
            let names: Vec<(String, Vec<usize>)> = super::super::timm::tensors(&model)
                .into_iter()
                .map(|(n, t)| (n, t.shape))
                .collect();
            assert_eq!(names, case.state_dict, "{}: timm_tensors() layout", case.case);
        }
    }

    #[test]
    fn presets_match_timm() {
        #[derive(serde::Deserialize)]
        struct P {
            config: VitConfig,
            other: Vec<(String, Vec<usize>)>,
            block0: Vec<(String, Vec<usize>)>,
            num_tensors: usize,
        }
        let presets: HashMap<String, P> =
            serde_json::from_slice(&std::fs::read(fixtures().join("presets.json")).unwrap())
                .unwrap();
        assert_eq!(presets.len(), 10);
        for (timm_name, p) in presets {
            let short = timm_name.split_once(".lvd142m").map(|(a, _)| a).unwrap_or(&timm_name);
            let cfg = VitConfig::preset(short, 224).unwrap();
            assert_eq!(cfg, p.config, "{short}");
            assert_eq!(VitConfig::preset(&timm_name, 224).unwrap(), cfg);
            assert_eq!(cfg.timm_name(), Some(timm_name.as_str()));
            let shapes: Vec<(String, Vec<usize>)> =
                super::super::timm::layout(&cfg).into_iter().map(|e| (e.name, e.shape)).collect();
            assert_eq!(shapes.len(), p.num_tensors, "{short}");
            let other: Vec<_> =
                shapes.iter().filter(|(k, _)| !k.starts_with("blocks.")).cloned().collect();
            let block0: Vec<_> =
                shapes.iter().filter(|(k, _)| k.starts_with("blocks.0.")).cloned().collect();
            assert_eq!(other, p.other, "{short}");
            assert_eq!(block0, p.block0, "{short}");
        }
        let err = VitConfig::preset("vit_huge", 224).unwrap_err().to_string();
        assert!(
            err.contains("vit_tiny_test") && err.contains("vit_base_patch16_224.dino"),
            "{err}"
        );
        assert_eq!(VitConfig::preset("vit_tiny_test", 224).unwrap().grid(), 16);
        assert_eq!(VitConfig::preset("vit_small_patch16_224.dino", 224).unwrap().grid(), 14);
    }

    #[test]
    fn random_init_runs_and_block_ranges_compose() {
        let device = Default::default();
        let cfg = VitConfig { img_size: 28, ..VitConfig::preset("vit_tiny_test", 224).unwrap() };
        let model = super::super::timm::random::<B>(&cfg, 0, &device);
        let images = Tensor::<B, 4>::random(
            [2, 3, 28, 28],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let x = model.embed(images.clone(), None);
        assert_eq!(x.dims(), [2, 5 + 4, 64]);
        let split = model.blocks(model.blocks(x.clone(), 0..1), 1..4);
        let whole = model.blocks(x, 0..4);
        let (_, a) = host3(model.patch_tokens(split));
        let (shape, b) = host3(model.patch_tokens(whole));
        assert_eq!(shape, vec![2, 4, 64]);
        assert_eq!(a, b);
        let (_, c) = host3(model.forward_patch_tokens(images, None));
        assert_eq!(b, c);
        assert!(c.iter().all(|v| v.is_finite()));
        assert_eq!(
            super::super::timm::tensors(&model).len(),
            super::super::timm::layout(&cfg).len()
        );
    }
}
