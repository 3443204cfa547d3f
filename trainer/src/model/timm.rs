//! timm's state dict of a ViT: the one table of its tensor names ([`layout`]), in timm's
//! order, with each tensor's shape and how it sits in [`Vit`]. Shapes, loading, saving and the
//! random initialisation all read this table, so a name is written here and nowhere else.
//!
//! Everything but the names follows from the module tree: a tensor's path in [`Vit`] is its
//! timm name, except that a linear layer keeps its weight transposed (`[in, out]`, the patch
//! embedding's `[D, 3, p, p]` kernel flattened) and a LayerNorm calls its weight and bias
//! `gamma` and `beta`.

use super::paths;
use super::vit::{Vit, VitConfig};
use anyhow::{anyhow, Result};
use burn::tensor::backend::Backend;
use mosic::rng::SplitMix64;
use mosic::tensors::HostTensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// How a tensor of timm's state dict is held in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Held as it is.
    Plain,
    /// A linear layer's weight: held transposed, `[in, out]`.
    Linear,
    /// A LayerNorm's `weight` / `bias`: held as `gamma` / `beta`.
    Norm,
}

/// One tensor of timm's state dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// timm's shape, at the config's run grid.
    pub shape: Vec<usize>,
    pub kind: Kind,
}

impl Entry {
    /// The tensor's path in [`Vit`]'s module tree.
    pub fn path(&self) -> String {
        match self.kind {
            Kind::Norm => match self.name.rsplit_once('.') {
                Some((layer, "weight")) => format!("{layer}.gamma"),
                Some((layer, "bias")) => format!("{layer}.beta"),
                _ => self.name.clone(),
            },
            _ => self.name.clone(),
        }
    }

    /// timm's values as the model holds them.
    fn to_model(&self, t: HostTensor) -> HostTensor {
        match self.kind {
            Kind::Linear => {
                let (out, inp) = (t.shape[0], t.numel() / t.shape[0]);
                HostTensor::new(vec![inp, out], transpose2(&t.data, out, inp))
            }
            _ => t,
        }
    }

    /// The model's values as timm holds them.
    fn to_timm(&self, t: HostTensor) -> HostTensor {
        match self.kind {
            Kind::Linear => {
                let (inp, out) = (t.shape[0], t.shape[1]);
                HostTensor::new(self.shape.clone(), transpose2(&t.data, inp, out))
            }
            _ => HostTensor::new(self.shape.clone(), t.data),
        }
    }
}

/// timm's `state_dict()` of `timm.create_model(name, img_size=cfg.img_size)`, in its order
/// (pos_embed at the run grid; no mask_token, which timm does not have).
pub fn layout(cfg: &VitConfig) -> Vec<Entry> {
    let (d, p) = (cfg.embed_dim, cfg.patch_size);
    let mut v = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, kind: Kind| v.push(Entry { name, shape, kind });
    put("cls_token".into(), vec![1, 1, d], Kind::Plain);
    if cfg.num_registers > 0 {
        put("reg_token".into(), vec![1, cfg.num_registers, d], Kind::Plain);
    }
    put("pos_embed".into(), vec![1, cfg.pos_prefix() + cfg.num_patches(), d], Kind::Plain);
    put("patch_embed.proj.weight".into(), vec![d, 3, p, p], Kind::Linear);
    put("patch_embed.proj.bias".into(), vec![d], Kind::Plain);
    for i in 0..cfg.depth {
        let mut b = |s: &str, shape: Vec<usize>, kind| put(format!("blocks.{i}.{s}"), shape, kind);
        b("norm1.weight", vec![d], Kind::Norm);
        b("norm1.bias", vec![d], Kind::Norm);
        b("attn.qkv.weight", vec![3 * d, d], Kind::Linear);
        b("attn.qkv.bias", vec![3 * d], Kind::Plain);
        b("attn.proj.weight", vec![d, d], Kind::Linear);
        b("attn.proj.bias", vec![d], Kind::Plain);
        if cfg.layer_scale {
            b("ls1.gamma", vec![d], Kind::Plain);
        }
        b("norm2.weight", vec![d], Kind::Norm);
        b("norm2.bias", vec![d], Kind::Norm);
        b("mlp.fc1.weight", vec![cfg.mlp_width(), d], Kind::Linear);
        b("mlp.fc1.bias", vec![cfg.mlp_width()], Kind::Plain);
        b("mlp.fc2.weight", vec![d, cfg.mlp_hidden()], Kind::Linear);
        b("mlp.fc2.bias", vec![d], Kind::Plain);
        if cfg.layer_scale {
            b("ls2.gamma", vec![d], Kind::Plain);
        }
    }
    put("norm.weight".into(), vec![d], Kind::Norm);
    put("norm.bias".into(), vec![d], Kind::Norm);
    v
}

/// DINOv2's embedding of masked patches: not in timm, kept beside its tensors.
pub const MASK_TOKEN: &str = "mask_token";

/// The model from timm-named host tensors at the run grid, already checked against
/// [`layout`] (`mask_token` optional: zeros).
pub fn build<B: Backend>(
    cfg: &VitConfig,
    mut map: HashMap<String, HostTensor>,
    device: &B::Device,
) -> Result<Vit<B>> {
    let mut values = BTreeMap::new();
    for e in layout(cfg) {
        let t = map.remove(&e.name).ok_or_else(|| anyhow!("no tensor {}", e.name))?;
        values.insert(e.path(), e.to_model(t));
    }
    let d = cfg.embed_dim;
    let mask = map.remove(MASK_TOKEN).map_or_else(|| vec![0.0; d], |t| t.data);
    values.insert(MASK_TOKEN.into(), HostTensor::new(vec![1, d], mask));
    paths::assign(Vit::zeros(cfg, device), &values, device, Path::new("timm state dict"))
}

/// Every tensor under timm's name and shape, in timm's order.
pub fn tensors<B: Backend>(vit: &Vit<B>) -> Vec<(String, HostTensor)> {
    let mut held = paths::collect(vit, |_| true);
    layout(vit.config())
        .into_iter()
        .map(|e| {
            let t = held.remove(&e.path()).unwrap_or_else(|| panic!("model has no {}", e.path()));
            (e.name.clone(), e.to_timm(t))
        })
        .collect()
}

/// Random init like timm's: trunc-normal(0.02) linears and pos_embed, zero biases, unit norms,
/// LayerScale 1e-5, cls/registers normal(1e-6), PyTorch's default conv init for the patch embed.
pub fn random<B: Backend>(cfg: &VitConfig, seed: u64, device: &B::Device) -> Vit<B> {
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
    for Entry { name, shape, .. } in layout(cfg) {
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
    build(cfg, map, device).expect("every tensor of the layout")
}

/// A row-major `rows x cols` matrix transposed.
pub(crate) fn transpose2(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::NdArray<f32>;

    /// Every parameter of the model is named by the table exactly once (mask_token aside).
    #[test]
    fn the_table_names_every_parameter_once() {
        for preset in ["vit_tiny_test", "vit_small_patch16_224.dino"] {
            let cfg = VitConfig { img_size: 28, ..VitConfig::preset(preset, 224).unwrap() };
            let vit = Vit::<B>::zeros(&cfg, &Default::default());
            let held = paths::collect(&vit, |_| true);
            let mut named: Vec<String> = layout(&cfg).iter().map(Entry::path).collect();
            named.push(MASK_TOKEN.into());
            named.sort();
            assert_eq!(held.keys().cloned().collect::<Vec<_>>(), named, "{preset}");
            for e in layout(&cfg) {
                let n: usize = e.shape.iter().product();
                assert_eq!(held[&e.path()].numel(), n, "{}", e.name);
            }
        }
    }
}
