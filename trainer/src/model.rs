//! The ViT backbone: DINOv2 (with or without registers, SwiGLU for giant) and DINO v1, numerically
//! matching timm's `VisionTransformer` (`forward_features`), with weights loaded by name.
//!
//! Weights come from timm `.safetensors` files or from PyTorch `.pth`/`.pt` state dicts (timm or
//! official DINOv2/DINO names). The `.pth` reader below understands only the tensor-carrying subset
//! of pickle and never runs pickled code. Position embeddings are resampled once at load to the run
//! grid exactly as timm does (`resample_abs_pos_embed`: antialiased bicubic, align_corners=False).
//!
//! Tensor names are timm's throughout, so a saved model loads back into
//! `timm.create_model(name, img_size=cfg.img_size)` with `strict=True`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};
use mosic::rng::SplitMix64;

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
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
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

    /// Names and shapes of timm's `state_dict()` for this config at the run grid, in timm's order.
    pub fn timm_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.embed_dim;
        let p = self.patch_size;
        let mut v: Vec<(String, Vec<usize>)> = vec![("cls_token".into(), vec![1, 1, d])];
        if self.num_registers > 0 {
            v.push(("reg_token".into(), vec![1, self.num_registers, d]));
        }
        v.push(("pos_embed".into(), vec![1, self.pos_prefix() + self.num_patches(), d]));
        v.push(("patch_embed.proj.weight".into(), vec![d, 3, p, p]));
        v.push(("patch_embed.proj.bias".into(), vec![d]));
        for i in 0..self.depth {
            let b = |s: &str| format!("blocks.{i}.{s}");
            v.push((b("norm1.weight"), vec![d]));
            v.push((b("norm1.bias"), vec![d]));
            v.push((b("attn.qkv.weight"), vec![3 * d, d]));
            v.push((b("attn.qkv.bias"), vec![3 * d]));
            v.push((b("attn.proj.weight"), vec![d, d]));
            v.push((b("attn.proj.bias"), vec![d]));
            if self.layer_scale {
                v.push((b("ls1.gamma"), vec![d]));
            }
            v.push((b("norm2.weight"), vec![d]));
            v.push((b("norm2.bias"), vec![d]));
            v.push((b("mlp.fc1.weight"), vec![self.mlp_width(), d]));
            v.push((b("mlp.fc1.bias"), vec![self.mlp_width()]));
            v.push((b("mlp.fc2.weight"), vec![d, self.mlp_hidden()]));
            v.push((b("mlp.fc2.bias"), vec![d]));
            if self.layer_scale {
                v.push((b("ls2.gamma"), vec![d]));
            }
        }
        v.push(("norm.weight".into(), vec![d]));
        v.push(("norm.bias".into(), vec![d]));
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------

/// Where the matrix products of a forward pass run. `Bf16` follows PyTorch's autocast: every
/// linear layer and the attention take bfloat16 inputs and weights, while the residual
/// stream, LayerNorm, LayerScale and the outputs stay float32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

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
            let probs = if crate::host::applies(&scores) {
                crate::host::softmax_last(scores)
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
/// backends [`crate::host::gelu`].
fn gelu_erf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if crate::host::applies(&x) {
        return crate::host::gelu(x);
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
    pub source_pos_embed: Option<SourcePosEmbed>,
    /// Where this copy's matrix products run (the trainer's teacher: `model.precision`).
    #[module(skip)]
    pub precision: Precision,
}

/// A position embedding before resampling: `[1, prefix slots + grid^2, D]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcePosEmbed {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A tensor on the host: shape and row-major f32 values.
#[derive(Clone, Debug)]
struct HostTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl HostTensor {
    fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
    fn numel(&self) -> usize {
        self.data.len()
    }
}

fn transpose2(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// What a load did besides filling the model.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Tensors in the file that the model does not use (heads, optimizer leftovers, ...).
    pub unexpected: Vec<String>,
    /// The pos_embed grid found in the file when it differed from the run grid.
    pub resampled_from: Option<usize>,
    pub mask_token_loaded: bool,
    /// The file's pos_embed before resampling.
    pub source_pos_embed: Option<SourcePosEmbed>,
}

impl LoadReport {
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if let Some(g) = self.resampled_from {
            parts.push(format!("pos_embed resampled from {g}x{g}"));
        }
        if !self.unexpected.is_empty() {
            let shown: Vec<&str> = self.unexpected.iter().take(5).map(String::as_str).collect();
            let more = if self.unexpected.len() > 5 { ", ..." } else { "" };
            parts.push(format!(
                "{} unused tensors ignored ({}{more})",
                self.unexpected.len(),
                shown.join(", ")
            ));
        }
        parts.join("; ")
    }
}

impl<B: Backend> Vit<B> {
    /// Random init like timm's: trunc-normal(0.02) linears and pos_embed, zero biases, unit norms,
    /// LayerScale 1e-5, cls/registers normal(1e-6), PyTorch's default conv init for the patch embed.
    pub fn new(cfg: &VitConfig, device: &B::Device) -> Self {
        Self::new_seeded(cfg, 0, device)
    }

    pub fn new_seeded(cfg: &VitConfig, seed: u64, device: &B::Device) -> Self {
        cfg.validate().expect("invalid ViT config");
        let mut rng = SplitMix64::new(seed);
        fn normal(rng: &mut SplitMix64, n: usize, std: f64) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    // Box-Muller; timm truncates at +-2 absolute, i.e. never at std 0.02.
                    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
                    let u2 = rng.next_f64();
                    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    (z * std).clamp(-2.0, 2.0) as f32
                })
                .collect()
        }
        let conv_bound = 1.0 / ((3 * cfg.patch_size * cfg.patch_size) as f64).sqrt();
        let mut map = HashMap::new();
        for (name, shape) in cfg.timm_shapes() {
            let n: usize = shape.iter().product();
            let data = if name.starts_with("patch_embed.") {
                (0..n).map(|_| rng.uniform(-conv_bound, conv_bound) as f32).collect()
            } else if name == "cls_token" || name == "reg_token" {
                normal(&mut rng, n, 1e-6)
            } else if name == "pos_embed"
                || name.ends_with(".weight") && (name.contains(".attn.") || name.contains(".mlp."))
            {
                normal(&mut rng, n, 0.02)
            } else if name.ends_with("gamma") {
                vec![1e-5; n]
            } else if name.contains("norm") && name.ends_with(".weight") {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            };
            map.insert(name, HostTensor::new(shape, data));
        }
        Self::from_timm(cfg, map, device)
    }

    /// Loads `.safetensors` (timm names) or `.pth`/`.pt` (timm or official DINOv2/DINO state dicts,
    /// possibly wrapped) and resamples pos_embed to the run grid. Prints the load note, if any.
    pub fn load(cfg: &VitConfig, path: &Path, device: &B::Device) -> Result<Self> {
        let (model, report) = Self::load_with_report(cfg, path, device)?;
        let note = report.note();
        if !note.is_empty() {
            eprintln!("{}: {note}", path.display());
        }
        Ok(model)
    }

    pub fn load_with_report(
        cfg: &VitConfig,
        path: &Path,
        device: &B::Device,
    ) -> Result<(Self, LoadReport)> {
        cfg.validate()?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let raw = match ext.as_str() {
            "safetensors" => read_safetensors(path)?,
            "pth" | "pt" | "bin" | "ckpt" => read_pth(path)
                .with_context(|| format!("{}: reading PyTorch checkpoint", path.display()))?,
            _ => bail!(
                "{}: unknown weight format (expected .safetensors, .pth or .pt)",
                path.display()
            ),
        };
        let (map, report) =
            to_timm_names(cfg, raw).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut model = Self::from_timm(cfg, map, device);
        model.source_pos_embed = report.source_pos_embed.clone();
        Ok((model, report))
    }

    /// Builds the modules from validated, timm-named host tensors at the run grid.
    fn from_timm(
        cfg: &VitConfig,
        mut map: HashMap<String, HostTensor>,
        device: &B::Device,
    ) -> Self {
        let mask = map
            .remove("mask_token")
            .unwrap_or_else(|| HostTensor::new(vec![1, cfg.embed_dim], vec![0.0; cfg.embed_dim]));
        let mut take = |name: &str| -> HostTensor {
            map.remove(name).unwrap_or_else(|| panic!("tensor {name} was validated"))
        };
        fn tensor<B: Backend, const D: usize>(t: HostTensor, device: &B::Device) -> Tensor<B, D> {
            Tensor::from_data(TensorData::new(t.data, t.shape), device)
        }
        let param = |t: HostTensor| Param::from_tensor(tensor::<B, 1>(t, device));
        let linear = |w: HostTensor, b: HostTensor| -> Linear<B> {
            let (out, inp) = (w.shape[0], w.numel() / w.shape[0]);
            let wt = HostTensor::new(vec![inp, out], transpose2(&w.data, out, inp));
            Linear { weight: Param::from_tensor(tensor::<B, 2>(wt, device)), bias: Some(param(b)) }
        };
        let layer_norm = |w: HostTensor, b: HostTensor| -> LayerNorm<B> {
            let mut ln = LayerNormConfig::new(cfg.embed_dim).with_epsilon(cfg.ln_eps).init(device);
            ln.gamma = param(w);
            ln.beta = Some(param(b));
            ln
        };

        let cls_token = Param::from_tensor(tensor::<B, 3>(take("cls_token"), device));
        let reg_token = (cfg.num_registers > 0)
            .then(|| Param::from_tensor(tensor::<B, 3>(take("reg_token"), device)));
        let pos_embed = Param::from_tensor(tensor::<B, 3>(take("pos_embed"), device));
        let mask_token = Param::from_tensor(tensor::<B, 2>(
            HostTensor::new(vec![1, cfg.embed_dim], mask.data),
            device,
        ));
        let patch_embed = PatchEmbed {
            proj: linear(take("patch_embed.proj.weight"), take("patch_embed.proj.bias")),
            patch_size: cfg.patch_size,
        };
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let mut t = |s: &str| take(&format!("blocks.{i}.{s}"));
            let ls = |g: HostTensor| LayerScale { gamma: param(g) };
            let norm1 = layer_norm(t("norm1.weight"), t("norm1.bias"));
            let attn = Attention {
                qkv: linear(t("attn.qkv.weight"), t("attn.qkv.bias")),
                proj: linear(t("attn.proj.weight"), t("attn.proj.bias")),
                num_heads: cfg.num_heads,
            };
            let ls1 = cfg.layer_scale.then(|| ls(t("ls1.gamma")));
            let norm2 = layer_norm(t("norm2.weight"), t("norm2.bias"));
            let mlp = Mlp {
                fc1: linear(t("mlp.fc1.weight"), t("mlp.fc1.bias")),
                fc2: linear(t("mlp.fc2.weight"), t("mlp.fc2.bias")),
                swiglu: cfg.swiglu,
            };
            let ls2 = cfg.layer_scale.then(|| ls(t("ls2.gamma")));
            blocks.push(Block { norm1, attn, ls1, norm2, mlp, ls2 });
        }
        let norm = layer_norm(take("norm.weight"), take("norm.bias"));
        Vit {
            patch_embed,
            cls_token,
            reg_token,
            pos_embed,
            mask_token,
            blocks,
            norm,
            cfg: cfg.clone(),
            source_pos_embed: None,
            precision: Precision::Fp32,
        }
    }

    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// The same weights for another input size: pos_embed is resampled (bicubic, antialiased,
    /// as timm does on load) from [`Vit::source_pos_embed`] when there is one, else from the
    /// current grid; everything else is kept.
    pub fn with_img_size(self, img_size: usize) -> Result<Self> {
        if img_size == self.cfg.img_size {
            return Ok(self);
        }
        let cfg = VitConfig { img_size, ..self.cfg.clone() };
        let device = self.pos_embed.val().device();
        let mut raw: HashMap<String, HostTensor> =
            self.timm_tensors().into_iter().map(|(n, s, v)| (n, HostTensor::new(s, v))).collect();
        if let Some(src) = &self.source_pos_embed {
            raw.insert("pos_embed".into(), HostTensor::new(src.shape.clone(), src.data.clone()));
        }
        let mask: Vec<f32> =
            self.mask_token.val().into_data().convert::<f32>().into_vec().expect("f32 data");
        raw.insert("mask_token".into(), HostTensor::new(vec![1, cfg.embed_dim], mask));
        let (map, _) =
            to_timm_names(&cfg, raw).map_err(|e| anyhow!("resizing to {img_size}: {e}"))?;
        let mut out = Self::from_timm(&cfg, map, &device);
        out.source_pos_embed = self.source_pos_embed;
        out.precision = self.precision;
        Ok(out)
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

    /// Every tensor under timm's name and shape, in the order of timm's `state_dict()` for
    /// `timm.create_model(name, img_size=cfg.img_size)` (pos_embed at the run grid; no mask_token,
    /// which timm does not have).
    pub fn timm_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
            t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data")
        }
        let linear_w = |l: &Linear<B>| {
            let [inp, out] = l.weight.val().dims();
            transpose2(&host(l.weight.val()), inp, out)
        };
        let bias = |l: &Linear<B>| host(l.bias.as_ref().expect("bias").val());
        let mut values: HashMap<String, Vec<f32>> = HashMap::new();
        let mut put = |k: String, v: Vec<f32>| {
            values.insert(k, v);
        };
        put("cls_token".into(), host(self.cls_token.val()));
        if let Some(r) = &self.reg_token {
            put("reg_token".into(), host(r.val()));
        }
        put("pos_embed".into(), host(self.pos_embed.val()));
        put("patch_embed.proj.weight".into(), linear_w(&self.patch_embed.proj));
        put("patch_embed.proj.bias".into(), bias(&self.patch_embed.proj));
        let ln =
            |n: &LayerNorm<B>| (host(n.gamma.val()), host(n.beta.as_ref().expect("beta").val()));
        for (i, blk) in self.blocks.iter().enumerate() {
            let k = |s: &str| format!("blocks.{i}.{s}");
            let (w, b) = ln(&blk.norm1);
            put(k("norm1.weight"), w);
            put(k("norm1.bias"), b);
            put(k("attn.qkv.weight"), linear_w(&blk.attn.qkv));
            put(k("attn.qkv.bias"), bias(&blk.attn.qkv));
            put(k("attn.proj.weight"), linear_w(&blk.attn.proj));
            put(k("attn.proj.bias"), bias(&blk.attn.proj));
            if let Some(ls) = &blk.ls1 {
                put(k("ls1.gamma"), host(ls.gamma.val()));
            }
            let (w, b) = ln(&blk.norm2);
            put(k("norm2.weight"), w);
            put(k("norm2.bias"), b);
            put(k("mlp.fc1.weight"), linear_w(&blk.mlp.fc1));
            put(k("mlp.fc1.bias"), bias(&blk.mlp.fc1));
            put(k("mlp.fc2.weight"), linear_w(&blk.mlp.fc2));
            put(k("mlp.fc2.bias"), bias(&blk.mlp.fc2));
            if let Some(ls) = &blk.ls2 {
                put(k("ls2.gamma"), host(ls.gamma.val()));
            }
        }
        let (w, b) = ln(&self.norm);
        put("norm.weight".into(), w);
        put("norm.bias".into(), b);
        self.cfg
            .timm_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let v =
                    values.remove(&name).unwrap_or_else(|| panic!("model has no tensor {name}"));
                assert_eq!(v.len(), shape.iter().product::<usize>(), "{name}");
                (name, shape, v)
            })
            .collect()
    }

    /// Saves under timm's names (f32), through a temporary file renamed into place.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let tensors = self.timm_tensors();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views = bytes
            .iter()
            .map(|(n, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
                ))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        if let Some(t) = self.cfg.timm_name() {
            meta.insert("timm_name".to_string(), t.to_string());
        }
        meta.insert("vit_config".to_string(), serde_json::to_string(&self.cfg)?);
        let buf = safetensors::tensor::serialize(views, Some(meta))?;
        mosic::fsutil::write_atomic(path, &buf)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Names: wrappers, official DINOv2 layout, validation
// ---------------------------------------------------------------------------------------------

/// Maps a checkpoint's tensors to timm names at the run grid, or lists everything that is wrong.
fn to_timm_names(
    cfg: &VitConfig,
    raw: HashMap<String, HostTensor>,
) -> Result<(HashMap<String, HostTensor>, LoadReport), String> {
    let mut report = LoadReport::default();

    // The state dict may sit under wrappers ("model.", "teacher.backbone.", "module.", ...): find it
    // by its patch embedding; a training checkpoint's teacher wins over its student.
    const ANCHOR: &str = "patch_embed.proj.weight";
    let mut prefixes: Vec<String> =
        raw.keys().filter_map(|k| k.strip_suffix(ANCHOR).map(str::to_string)).collect();
    prefixes.sort_by_key(|p| (!p.contains("teacher"), p.len(), p.clone()));
    let prefix = prefixes.into_iter().next().unwrap_or_default();

    let mut map: HashMap<String, HostTensor> = HashMap::new();
    for (k, t) in raw {
        let Some(name) = k.strip_prefix(prefix.as_str()) else {
            report.unexpected.push(k);
            continue;
        };
        map.insert(official_to_timm(name), t);
    }

    // Official DINOv2 with registers → timm's no_embed_class layout (what timm's _convert_dinov2 does).
    if let Some(reg) = map.remove("register_tokens") {
        map.insert("reg_token".into(), reg);
        if let (Some(pos), Some(cls)) = (map.get("pos_embed").cloned(), map.get_mut("cls_token")) {
            if pos.shape.len() == 3 && pos.shape[1] > 0 && pos.shape[2] == cls.numel() {
                let d = pos.shape[2];
                for (c, p) in cls.data.iter_mut().zip(&pos.data[..d]) {
                    *c += *p;
                }
                let rest = HostTensor::new(vec![1, pos.shape[1] - 1, d], pos.data[d..].to_vec());
                map.insert("pos_embed".into(), rest);
            }
        }
    }

    let d = cfg.embed_dim;
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut out = HashMap::new();
    for (name, expected) in cfg.timm_shapes() {
        let Some(t) = map.remove(&name) else {
            missing.push(name);
            continue;
        };
        if name == "pos_embed" {
            let pre = cfg.pos_prefix();
            let side =
                (t.shape.len() == 3 && t.shape[0] == 1 && t.shape[2] == d && t.shape[1] > pre)
                    .then(|| square_side(t.shape[1] - pre))
                    .flatten();
            match side {
                Some(s) => {
                    if s != cfg.grid() {
                        report.resampled_from = Some(s);
                    }
                    report.source_pos_embed = Some(SourcePosEmbed { shape: t.shape.clone(), data: t.data.clone() });
                    out.insert(name, resample_pos_embed(&t, pre, s, cfg.grid()));
                }
                None => misshaped.push(format!(
                    "pos_embed: expected {expected:?} (or [1, {pre} + S*S, {d}] for any grid S), found {:?}",
                    t.shape
                )),
            }
        } else if t.shape != expected {
            misshaped.push(format!("{name}: expected {expected:?}, found {:?}", t.shape));
        } else {
            out.insert(name, t);
        }
    }
    if let Some(m) = map.remove("mask_token") {
        if m.numel() == d && (m.shape == [1, d] || m.shape == [d] || m.shape == [1, 1, d]) {
            out.insert("mask_token".into(), HostTensor::new(vec![1, d], m.data));
            report.mask_token_loaded = true;
        } else {
            misshaped.push(format!("mask_token: expected [1, {d}], found {:?}", m.shape));
        }
    }
    report.unexpected.extend(map.into_keys());
    report.unexpected.sort();

    if missing.is_empty() && misshaped.is_empty() {
        return Ok((out, report));
    }
    let what = cfg
        .timm_name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}-dim, {}-block ViT", cfg.embed_dim, cfg.depth));
    let mut msg = format!(
        "weights do not fit {what} (patch {}, {} registers)",
        cfg.patch_size, cfg.num_registers
    );
    if !missing.is_empty() {
        msg += &format!("\n  {} missing tensors: {}", missing.len(), missing.join(", "));
    }
    if !misshaped.is_empty() {
        msg += &format!(
            "\n  {} mis-shaped tensors:\n    {}",
            misshaped.len(),
            misshaped.join("\n    ")
        );
    }
    if !report.unexpected.is_empty() {
        msg += &format!(
            "\n  note: {} tensors in the file are not used by this model",
            report.unexpected.len()
        );
    }
    if !prefix.is_empty() {
        msg += &format!("\n  (names read under the prefix {prefix:?})");
    }
    Err(msg)
}

/// Official DINOv2 names to timm's: chunked blocks (`blocks.<chunk>.<i>.` holds global index i)
/// and the giant's packed SwiGLU (`w12`, `w3`).
fn official_to_timm(name: &str) -> String {
    let mut name = name.to_string();
    if let Some(rest) = name.strip_prefix("blocks.") {
        let parts: Vec<&str> = rest.splitn(3, '.').collect();
        if parts.len() == 3
            && parts[0].parse::<usize>().is_ok()
            && parts[1].parse::<usize>().is_ok()
        {
            name = format!("blocks.{}.{}", parts[1], parts[2]);
        }
    }
    name.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
}

fn square_side(n: usize) -> Option<usize> {
    let s = (n as f64).sqrt().round() as usize;
    (s * s == n).then_some(s)
}

/// timm's `resample_abs_pos_embed`: prefix slots kept, the grid part resized channel by channel.
fn resample_pos_embed(t: &HostTensor, prefix: usize, from: usize, to: usize) -> HostTensor {
    let d = t.shape[2];
    if from == to {
        return t.clone();
    }
    let grid = &t.data[prefix * d..];
    let chw = transpose2(grid, from * from, d);
    let resized = resample_bicubic_aa(&chw, d, from, from, to, to);
    let mut data = t.data[..prefix * d].to_vec();
    data.extend(transpose2(&resized, d, to * to));
    HostTensor::new(vec![1, prefix + to * to, d], data)
}

// ---------------------------------------------------------------------------------------------
// Antialiased bicubic resize (PyTorch's CPU kernel, in its float32 arithmetic)
// ---------------------------------------------------------------------------------------------

/// Keys' cubic with a = -0.5, PyTorch's (and Pillow's) antialias filter.
fn cubic_aa(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// For each output index: first input index and normalised weights. The support widens with the
/// downscale factor, which is what makes it antialiased.
fn aa_weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f32 / out_size as f32;
    let support: f32 = if scale >= 1.0 { (4.0 * 0.5) * scale } else { 4.0 * 0.5 };
    let invscale: f32 = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = (scale as f64 * (i as f64 + 0.5)) as f32;
            let xmin = ((center as f64 - support as f64 + 0.5) as i64).max(0);
            let xmax = ((center as f64 + support as f64 + 0.5) as i64).min(in_size as i64);
            let mut w: Vec<f32> = (xmin..xmax)
                .map(|j| cubic_aa((((j as f32 - center) as f64 + 0.5) * invscale as f64) as f32))
                .collect();
            let total: f32 = w.iter().fold(0.0, |a, b| a + b);
            if total != 0.0 {
                w.iter_mut().for_each(|x| *x /= total);
            }
            (xmin as usize, w)
        })
        .collect()
}

/// Bicubic antialiased resize of a `[C, H, W]` grid, exactly like
/// `torch.nn.functional.interpolate(x[None], (out_h, out_w), mode="bicubic", antialias=True,
/// align_corners=False)[0]`: separable, width first, then height.
pub fn resample_bicubic_aa(
    src: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), channels * in_h * in_w, "resample_bicubic_aa: src is not [C, H, W]");
    let apply = |row: &[f32], stride: usize, (start, w): &(usize, Vec<f32>)| -> f32 {
        let mut acc = row[start * stride] * w[0];
        for (j, wj) in w.iter().enumerate().skip(1) {
            acc += row[(start + j) * stride] * wj;
        }
        acc
    };
    let mut tmp = src.to_vec();
    let mut w_now = in_w;
    if out_w != in_w {
        let ws = aa_weights(in_w, out_w);
        tmp = vec![0.0; channels * in_h * out_w];
        for r in 0..channels * in_h {
            let row = &src[r * in_w..(r + 1) * in_w];
            for (o, wt) in ws.iter().enumerate() {
                tmp[r * out_w + o] = apply(row, 1, wt);
            }
        }
        w_now = out_w;
    }
    if out_h == in_h {
        return tmp;
    }
    let hs = aa_weights(in_h, out_h);
    let mut out = vec![0.0; channels * out_h * w_now];
    for c in 0..channels {
        let plane = &tmp[c * in_h * w_now..(c + 1) * in_h * w_now];
        for (o, wt) in hs.iter().enumerate() {
            for x in 0..w_now {
                out[(c * out_h + o) * w_now + x] = apply(&plane[x..], w_now, wt);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------

fn f16_to_f32(bits: u16) -> f32 {
    burn::tensor::f16::from_bits(bits).to_f32()
}
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Little-endian element bytes of a float/int dtype to f32 (ints only ever end up as unused tensors).
fn decode(dtype: &str, bytes: &[u8]) -> Option<Vec<f32>> {
    let v = match dtype {
        "f32" => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        "f64" => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        "f16" => {
            bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()
        }
        "bf16" => {
            bytes.chunks_exact(2).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()
        }
        "i64" => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        "i32" => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        "u8" | "bool" => bytes.iter().map(|&b| b as f32).collect(),
        _ => return None,
    };
    Some(v)
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        use safetensors::Dtype as T;
        let dt = match view.dtype() {
            T::F32 => "f32",
            T::F64 => "f64",
            T::F16 => "f16",
            T::BF16 => "bf16",
            T::I64 => "i64",
            T::I32 => "i32",
            T::U8 => "u8",
            T::BOOL => "bool",
            other => bail!("{}: tensor {name} has unsupported dtype {other:?}", path.display()),
        };
        let data = decode(dt, view.data()).expect("known dtype");
        out.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok(out)
}

// --- .pth: torch.save's zip archive of a pickle plus raw storages --------------------------------
// (burn's `store` feature builds burn-store without its `pytorch` reader, so .pth is read here.)

/// One stored (uncompressed) zip member: where its bytes start and how many there are.
struct ZipEntry {
    offset: u64,
    size: u64,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}
fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The central directory of a zip file (zip64 included; checkpoints of giant models exceed 4 GB).
fn zip_entries(f: &mut std::fs::File) -> Result<HashMap<String, ZipEntry>> {
    let len = f.seek(SeekFrom::End(0))?;
    let tail_len = len.min(65_557 + 20);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail)?;
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| {
            anyhow!(
                "not a zip archive (a legacy torch.save file? re-save it with a recent PyTorch)"
            )
        })?;
    let mut count = le16(&tail, eocd + 10);
    let mut cd_size = le32(&tail, eocd + 12);
    let mut cd_offset = le32(&tail, eocd + 16);
    if eocd >= 20 && tail[eocd - 20..eocd - 16] == [0x50, 0x4b, 0x06, 0x07] {
        let rec = le64(&tail, eocd - 20 + 8);
        let mut z = [0u8; 56];
        f.seek(SeekFrom::Start(rec))?;
        f.read_exact(&mut z)?;
        if z[..4] == [0x50, 0x4b, 0x06, 0x06] {
            count = le64(&z, 32);
            cd_size = le64(&z, 40);
            cd_offset = le64(&z, 48);
        }
    }
    let mut cd = vec![0u8; cd_size as usize];
    f.seek(SeekFrom::Start(cd_offset))?;
    f.read_exact(&mut cd)?;
    let mut entries = HashMap::new();
    let mut p = 0usize;
    for _ in 0..count {
        if cd.len() < p + 46 || cd[p..p + 4] != [0x50, 0x4b, 0x01, 0x02] {
            bail!("corrupt zip central directory");
        }
        let method = le16(&cd, p + 10);
        let mut size = le32(&cd, p + 20);
        let mut usize_ = le32(&cd, p + 24);
        let (nlen, elen, clen) =
            (le16(&cd, p + 28) as usize, le16(&cd, p + 30) as usize, le16(&cd, p + 32) as usize);
        let mut local = le32(&cd, p + 42);
        let name = String::from_utf8_lossy(&cd[p + 46..p + 46 + nlen]).into_owned();
        // zip64 extra field: the 0xFFFFFFFF fields, in order usize, size, offset.
        let mut e = p + 46 + nlen;
        let end = e + elen;
        while e + 4 <= end {
            let (id, l) = (le16(&cd, e), le16(&cd, e + 2) as usize);
            if id == 1 {
                let mut q = e + 4;
                for field in [&mut usize_, &mut size, &mut local] {
                    if *field == 0xFFFF_FFFF && q + 8 <= e + 4 + l {
                        *field = le64(&cd, q);
                        q += 8;
                    }
                }
            }
            e += 4 + l;
        }
        if method != 0 {
            bail!("zip member {name} is compressed (method {method}); torch.save writes stored members");
        }
        let mut lh = [0u8; 30];
        f.seek(SeekFrom::Start(local))?;
        f.read_exact(&mut lh)?;
        let offset = local + 30 + le16(&lh, 26) + le16(&lh, 28);
        entries.insert(name, ZipEntry { offset, size });
        p += 46 + nlen + elen + clen;
    }
    Ok(entries)
}

/// The values a state-dict pickle is made of. Anything else becomes `Opaque`: it is never
/// constructed, so no pickled code runs.
#[derive(Clone, Debug)]
enum Pv {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Pv>),
    List(Vec<Pv>),
    Dict(Vec<(Pv, Pv)>),
    Global(String),
    Storage {
        key: String,
        dtype: &'static str,
    },
    Tensor {
        key: String,
        dtype: &'static str,
        offset: usize,
        shape: Vec<usize>,
        stride: Vec<usize>,
    },
    Opaque,
    Mark,
}

fn storage_dtype(class: &str) -> &'static str {
    match class.rsplit('.').next().unwrap_or("") {
        "FloatStorage" => "f32",
        "DoubleStorage" => "f64",
        "HalfStorage" => "f16",
        "BFloat16Storage" => "bf16",
        "LongStorage" => "i64",
        "IntStorage" => "i32",
        "ByteStorage" => "u8",
        "BoolStorage" => "bool",
        _ => "unsupported",
    }
}

fn as_usizes(v: &Pv) -> Option<Vec<usize>> {
    match v {
        Pv::Tuple(xs) | Pv::List(xs) => xs
            .iter()
            .map(|x| if let Pv::Int(i) = x { usize::try_from(*i).ok() } else { None })
            .collect(),
        _ => None,
    }
}

/// A pickle VM for protocols 2-5 that only builds data, dicts and tensor references.
fn unpickle(b: &[u8]) -> Result<Pv> {
    let mut stack: Vec<Pv> = Vec::new();
    let mut memo: HashMap<u64, Pv> = HashMap::new();
    let mut p = 0usize;
    let need = |p: usize, n: usize| -> Result<()> {
        if p + n > b.len() {
            bail!("truncated pickle")
        } else {
            Ok(())
        }
    };
    let pop_mark = |stack: &mut Vec<Pv>| -> Result<Vec<Pv>> {
        let at = stack
            .iter()
            .rposition(|v| matches!(v, Pv::Mark))
            .ok_or_else(|| anyhow!("pickle: no mark"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    fn pop(stack: &mut Vec<Pv>) -> Result<Pv> {
        stack.pop().ok_or_else(|| anyhow!("pickle: stack underflow"))
    }
    fn set_items(target: &mut Pv, items: Vec<Pv>) {
        if let Pv::Dict(d) = target {
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                d.push((k, v));
            }
        }
    }
    loop {
        need(p, 1)?;
        let op = b[p];
        p += 1;
        match op {
            0x80 => p += 1, // PROTO
            0x95 => p += 8, // FRAME
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Pv::Mark),
            b'}' => stack.push(Pv::Dict(Vec::new())),
            b']' => stack.push(Pv::List(Vec::new())),
            b')' => stack.push(Pv::Tuple(Vec::new())),
            b'N' => stack.push(Pv::None),
            0x88 => stack.push(Pv::Bool),
            0x89 => stack.push(Pv::Bool),
            b'K' => {
                need(p, 1)?;
                stack.push(Pv::Int(b[p] as i64));
                p += 1;
            }
            b'M' => {
                need(p, 2)?;
                stack.push(Pv::Int(le16(b, p) as i64));
                p += 2;
            }
            b'J' => {
                need(p, 4)?;
                stack.push(Pv::Int(i32::from_le_bytes(b[p..p + 4].try_into().unwrap()) as i64));
                p += 4;
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                need(p, 1)?;
                let n = b[p] as usize;
                need(p + 1, n)?;
                let mut v: i64 = 0;
                for (i, &byte) in b[p + 1..p + 1 + n].iter().enumerate().take(8) {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[p + n] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Pv::Int(v));
                p += 1 + n;
            }
            b'G' => {
                need(p, 8)?;
                stack.push(Pv::Float);
                p += 8;
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' | b'B' | b'C' | 0x8e => {
                let (n, w) = match op {
                    b'X' | b'T' | b'B' => (le32(b, p) as usize, 4),
                    0x8d | 0x8e => (le64(b, p) as usize, 8),
                    _ => (b[p] as usize, 1),
                };
                need(p + w, n)?;
                let s = &b[p + w..p + w + n];
                p += w + n;
                stack.push(match op {
                    b'B' | b'C' | 0x8e => Pv::Bytes,
                    _ => Pv::Str(String::from_utf8_lossy(s).into_owned()),
                });
            }
            b'c' => {
                let line = |p: &mut usize| -> Result<String> {
                    let end = b[*p..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .ok_or_else(|| anyhow!("pickle: bad GLOBAL"))?;
                    let s = String::from_utf8_lossy(&b[*p..*p + end]).into_owned();
                    *p += end + 1;
                    Ok(s)
                };
                let module = line(&mut p)?;
                let name = line(&mut p)?;
                stack.push(Pv::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Pv::Str(m), Pv::Str(n)) => stack.push(Pv::Global(format!("{m}.{n}"))),
                    _ => bail!("pickle: bad STACK_GLOBAL"),
                }
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => {
                        p += 1;
                        b[p - 1] as u64
                    }
                    b'r' => {
                        p += 4;
                        le32(b, p - 4)
                    }
                    _ => memo.len() as u64,
                };
                let top =
                    stack.last().cloned().ok_or_else(|| anyhow!("pickle: PUT on empty stack"))?;
                memo.insert(idx, top);
            }
            b'h' | b'j' => {
                let idx = if op == b'h' {
                    p += 1;
                    b[p - 1] as u64
                } else {
                    p += 4;
                    le32(b, p - 4)
                };
                stack.push(
                    memo.get(&idx).cloned().ok_or_else(|| anyhow!("pickle: unknown memo {idx}"))?,
                );
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Pv::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    bail!("pickle: stack underflow");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Pv::Tuple(items));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                if let Some(Pv::List(l)) = stack.last_mut() {
                    l.push(v);
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                if let Some(Pv::List(l)) = stack.last_mut() {
                    l.extend(items);
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                if let Some(t) = stack.last_mut() {
                    set_items(t, vec![k, v]);
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if let Some(t) = stack.last_mut() {
                    set_items(t, items);
                }
            }
            b'b' => {
                pop(&mut stack)?; // BUILD's state: objects stay opaque, dicts keep their items
            }
            b'Q' => {
                // BINPERSID: ('storage', storage class, key, location, numel)
                let pid = pop(&mut stack)?;
                let v = match &pid {
                    Pv::Tuple(t) if t.len() >= 3 => match (&t[1], &t[2]) {
                        (Pv::Global(class), Pv::Str(key)) => {
                            Pv::Storage { key: key.clone(), dtype: storage_dtype(class) }
                        }
                        _ => Pv::Opaque,
                    },
                    _ => Pv::Opaque,
                };
                stack.push(v);
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                let name = if let Pv::Global(g) = &callable { g.as_str() } else { "" };
                let args = if let Pv::Tuple(a) = args { a } else { Vec::new() };
                let v = match name {
                    "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                        match (
                            args.first(),
                            args.get(1),
                            args.get(2).and_then(as_usizes),
                            args.get(3).and_then(as_usizes),
                        ) {
                            (
                                Some(Pv::Storage { key, dtype }),
                                Some(Pv::Int(off)),
                                Some(shape),
                                Some(stride),
                            ) => Pv::Tensor {
                                key: key.clone(),
                                dtype,
                                offset: *off as usize,
                                shape,
                                stride,
                            },
                            _ => Pv::Opaque,
                        }
                    }
                    "torch._utils._rebuild_parameter"
                    | "torch._utils._rebuild_parameter_with_state" => {
                        args.into_iter().next().unwrap_or(Pv::Opaque)
                    }
                    "collections.OrderedDict" | "builtins.dict" => Pv::Dict(Vec::new()),
                    _ => Pv::Opaque,
                };
                stack.push(v);
            }
            0x82..=0x84 => bail!("pickle: extension registry opcodes are not supported"),
            _ => bail!(
                "pickle: opcode 0x{op:02x} at byte {} is not supported in a state dict",
                p - 1
            ),
        }
    }
}

/// `torch.save`d (nested) dicts of tensors, flattened to dotted names.
fn read_pth(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let mut f = std::fs::File::open(path)?;
    let entries = zip_entries(&mut f)?;
    let pkl_name = entries
        .keys()
        .filter(|k| k.ends_with("data.pkl") && k.matches('/').count() == 1)
        .min()
        .ok_or_else(|| anyhow!("no data.pkl in the archive"))?
        .clone();
    let root = pkl_name.trim_end_matches("data.pkl").to_string();
    let read = |f: &mut std::fs::File, e: &ZipEntry, from: u64, n: u64| -> Result<Vec<u8>> {
        if from + n > e.size {
            bail!("tensor data runs past its storage");
        }
        let mut buf = vec![0u8; n as usize];
        f.seek(SeekFrom::Start(e.offset + from))?;
        f.read_exact(&mut buf)?;
        Ok(buf)
    };
    let pkl = read(&mut f, &entries[&pkl_name], 0, entries[&pkl_name].size)?;
    let value = unpickle(&pkl)?;

    let mut found: Vec<(String, Pv)> = Vec::new();
    fn walk(v: &Pv, path: &str, out: &mut Vec<(String, Pv)>) {
        match v {
            Pv::Dict(items) => {
                for (k, v) in items {
                    let key = match k {
                        Pv::Str(s) => s.clone(),
                        Pv::Int(i) => i.to_string(),
                        _ => continue,
                    };
                    let full = if path.is_empty() { key } else { format!("{path}.{key}") };
                    walk(v, &full, out);
                }
            }
            Pv::Tensor { .. } => out.push((path.to_string(), v.clone())),
            _ => {}
        }
    }
    if !matches!(value, Pv::Dict(_)) {
        bail!(
            "the pickle holds no dict of tensors (a whole pickled model rather than a state dict?)"
        );
    }
    walk(&value, "", &mut found);

    let mut out = HashMap::new();
    for (name, t) in found {
        let Pv::Tensor { key, dtype, offset, shape, stride } = t else { unreachable!() };
        let Some(esize) = (match dtype {
            "f64" | "i64" => Some(8),
            "f32" | "i32" => Some(4),
            "f16" | "bf16" => Some(2),
            "u8" | "bool" => Some(1),
            _ => None,
        }) else {
            continue; // complex, quantised, ...: never a ViT weight
        };
        let entry = entries
            .get(&format!("{root}data/{key}"))
            .ok_or_else(|| anyhow!("storage {key} of {name} is missing"))?;
        let numel: usize = shape.iter().product();
        let span = if numel == 0 {
            0
        } else {
            1 + shape.iter().zip(&stride).map(|(n, s)| (n - 1) * s).sum::<usize>()
        };
        let bytes = read(&mut f, entry, (offset * esize) as u64, (span * esize) as u64)?;
        let flat = decode(dtype, &bytes).expect("known dtype");
        let contiguous = {
            let mut expect = 1;
            shape.iter().zip(&stride).rev().all(|(n, s)| {
                let ok = *n == 1 || *s == expect;
                expect *= n;
                ok
            })
        };
        let data = if contiguous {
            flat[..numel].to_vec()
        } else {
            (0..numel)
                .map(|mut i| {
                    let mut at = 0;
                    for (n, s) in shape.iter().zip(&stride).rev() {
                        at += (i % n) * s;
                        i /= n;
                    }
                    flat[at]
                })
                .collect()
        };
        out.insert(name, HostTensor::new(shape, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use std::path::PathBuf;

    type B = NdArray<f32>;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vit")
    }

    fn st(path: &Path) -> HashMap<String, HostTensor> {
        read_safetensors(path).unwrap()
    }

    fn to_tensor<BB: Backend, const D: usize>(t: &HostTensor) -> Tensor<BB, D> {
        Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), &Default::default())
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn host3<BB: Backend>(t: Tensor<BB, 3>) -> (Vec<usize>, Vec<f32>) {
        (t.dims().to_vec(), t.into_data().into_vec::<f32>().unwrap())
    }

    #[derive(serde::Deserialize)]
    struct Case {
        case: String,
        timm_model: String,
        weights: String,
        input: String,
        config: VitConfig,
        state_dict: Vec<(String, Vec<usize>)>,
    }

    fn cases() -> Vec<(PathBuf, Case)> {
        let mut v: Vec<(PathBuf, Case)> = std::fs::read_dir(fixtures())
            .unwrap()
            .filter_map(|e| {
                let dir = e.unwrap().path();
                let json = dir.join("case.json");
                json.exists().then(|| {
                    (dir.clone(), serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap())
                })
            })
            .collect();
        v.sort_by(|a, b| a.1.case.cmp(&b.1.case));
        assert!(v.len() >= 6, "expected the generated fixture cases in {}", fixtures().display());
        v
    }

    /// Every fixture case on ndarray and Flex (the CPU path: head slices, explicit softmax, the
    /// backend's GELU) and under autodiff (the path the student trains through).
    #[test]
    fn model_matches_timm_patch_tokens() {
        timm_cases::<B>("ndarray");
        timm_cases::<burn::backend::Flex>("flex");
        timm_cases::<burn::backend::Autodiff<B>>("autodiff<ndarray>");
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
                Vit::<B>::load_with_report(&case.config, &dir.join(&case.weights), &device)
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
            let names: Vec<(String, Vec<usize>)> =
                model.timm_tensors().into_iter().map(|(n, s, _)| (n, s)).collect();
            assert_eq!(names, case.state_dict, "{}: timm_tensors() layout", case.case);
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let device = Default::default();
        let (dir, case) =
            cases().into_iter().find(|(_, c)| c.case == "official_giant_reg4").unwrap();
        let model = Vit::<B>::load(&case.config, &dir.join(&case.weights), &device).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("w.safetensors");
        model.save_safetensors(&out).unwrap();
        let again = Vit::<B>::load(&case.config, &out, &device).unwrap();
        for ((n1, s1, v1), (n2, s2, v2)) in
            model.timm_tensors().into_iter().zip(again.timm_tensors())
        {
            assert_eq!((n1.clone(), s1), (n2, s2));
            assert_eq!(v1, v2, "{n1}");
        }
        // The pos_embed saved at the run grid is what timm's state_dict holds for the golden model.
        let saved = st(&out);
        assert_eq!(saved["pos_embed"].shape, vec![1, 16, 24]);
    }

    #[test]
    fn resample_matches_torch() {
        let rs = st(&fixtures().join("resample.safetensors"));
        for i in 0.. {
            let Some(src) = rs.get(&format!("case{i}.src")) else {
                break;
            };
            let want = &rs[&format!("case{i}.out")];
            let (c, h, w) = (src.shape[0], src.shape[1], src.shape[2]);
            let got = resample_bicubic_aa(&src.data, c, h, w, want.shape[1], want.shape[2]);
            let diff = max_abs_diff(&got, &want.data);
            println!(
                "resample case{i} [{c},{h},{w}] -> {:?}: max abs diff {diff:.3e}",
                &want.shape[1..]
            );
            assert!(diff < 2e-6, "case{i}: {diff}");
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
            let shapes = cfg.timm_shapes();
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
    fn load_errors_list_every_offending_tensor() {
        let (dir, case) = cases().into_iter().find(|(_, c)| c.case == "dinov2").unwrap();
        let mut tensors = st(&dir.join(&case.weights));
        tensors.remove("blocks.1.attn.qkv.bias");
        tensors.remove("norm.weight");
        tensors
            .insert("blocks.0.mlp.fc1.weight".into(), HostTensor::new(vec![8, 16], vec![0.0; 128]));
        tensors.insert("pos_embed".into(), HostTensor::new(vec![1, 15, 16], vec![0.0; 240]));
        tensors.insert("head.weight".into(), HostTensor::new(vec![2, 16], vec![0.0; 32]));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("broken.safetensors");
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, t)| (n, t.shape, t.data.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views: Vec<_> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
        let err = Vit::<B>::load(&case.config, &path, &Default::default()).unwrap_err().to_string();
        println!("{err}");
        for needle in [
            path.display().to_string(),
            "2 missing tensors".into(),
            "blocks.1.attn.qkv.bias".into(),
            "norm.weight".into(),
            "2 mis-shaped tensors".into(),
            "blocks.0.mlp.fc1.weight: expected [64, 16], found [8, 16]".into(),
            "pos_embed: expected [1, 17, 16]".into(),
            "found [1, 15, 16]".into(),
            "1 tensors in the file are not used".into(),
        ] {
            assert!(err.contains(&needle), "error lacks {needle:?}:\n{err}");
        }
    }

    #[test]
    fn random_init_runs_and_block_ranges_compose() {
        let device = Default::default();
        let cfg = VitConfig { img_size: 28, ..VitConfig::preset("vit_tiny_test", 224).unwrap() };
        let model = Vit::<B>::new(&cfg, &device);
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
        assert_eq!(model.timm_tensors().len(), cfg.timm_shapes().len());
    }
}
