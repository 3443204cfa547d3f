//! Weight files of the ViT: timm `.safetensors` and PyTorch `.pth` state dicts (timm names, or the
//! official DINOv2 / DINO layout, possibly under wrappers such as `teacher.backbone.`), mapped to
//! timm's names and checked against the model, every problem listed at once. Position
//! embeddings are resampled to the run grid exactly as timm does on load
//! (`resample_abs_pos_embed`: antialiased bicubic, align_corners=False, [`resample`]).
//!
//! Names are timm's throughout, so a saved model loads back into
//! `timm.create_model(name, img_size=cfg.img_size)` with `strict=True`.

mod pth;
pub mod resample;

use crate::model::timm::{self, transpose2};
use crate::model::{Vit, VitConfig};
use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::Backend;
use mosic::tensors::{self, HostTensor};
use std::collections::HashMap;
use std::path::Path;

/// What a load did besides filling the model.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Tensors in the file that the model does not use (heads, optimizer leftovers, ...).
    pub unexpected: Vec<String>,
    /// The pos_embed grid found in the file when it differed from the run grid.
    pub resampled_from: Option<usize>,
    pub mask_token_loaded: bool,
    /// The file's pos_embed before resampling.
    pub source_pos_embed: Option<HostTensor>,
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

/// Every tensor of a weights file by its stored name, as f32.
pub fn read(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => Ok(tensors::read_safetensors(path)?.tensors.into_iter().collect()),
        "pth" | "pt" | "bin" | "ckpt" => pth::read(path)
            .with_context(|| format!("{}: reading PyTorch checkpoint", path.display())),
        _ => {
            bail!("{}: unknown weight format (expected .safetensors, .pth or .pt)", path.display())
        }
    }
}

/// Loads a backbone for `cfg` from `.safetensors` or `.pth`, with pos_embed resampled to the
/// run grid. Prints the load note, if any.
pub fn load<B: Backend>(cfg: &VitConfig, path: &Path, device: &B::Device) -> Result<Vit<B>> {
    let (model, report) = load_with_report(cfg, path, device)?;
    let note = report.note();
    if !note.is_empty() {
        eprintln!("{}: {note}", path.display());
    }
    Ok(model)
}

pub fn load_with_report<B: Backend>(
    cfg: &VitConfig,
    path: &Path,
    device: &B::Device,
) -> Result<(Vit<B>, LoadReport)> {
    cfg.validate()?;
    let raw = read(path)?;
    let (map, report) = to_timm_names(cfg, raw).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut model = timm::build(cfg, map, device)?;
    model.source_pos_embed = report.source_pos_embed.clone();
    Ok((model, report))
}

/// Saves the backbone under timm's names (f32) with its config in the metadata, atomically.
pub fn save<B: Backend>(vit: &Vit<B>, path: &Path) -> Result<()> {
    let cfg = vit.config();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    if let Some(t) = cfg.timm_name() {
        meta.insert("timm_name".to_string(), t.to_string());
    }
    meta.insert("vit_config".to_string(), serde_json::to_string(cfg)?);
    let named = timm::tensors(vit);
    tensors::write_safetensors(path, named.iter().map(|(n, t)| (n.as_str(), t)), &meta)?;
    Ok(())
}

/// The same weights for another input size: pos_embed is resampled (bicubic, antialiased,
/// as timm does on load) from [`Vit::source_pos_embed`] when there is one, else from the
/// current grid; everything else is kept.
pub fn resize<B: Backend>(vit: Vit<B>, img_size: usize) -> Result<Vit<B>> {
    if img_size == vit.cfg.img_size {
        return Ok(vit);
    }
    let cfg = VitConfig { img_size, ..vit.cfg.clone() };
    let device = vit.pos_embed.val().device();
    let mut raw: HashMap<String, HostTensor> = timm::tensors(&vit).into_iter().collect();
    if let Some(src) = &vit.source_pos_embed {
        raw.insert("pos_embed".into(), src.clone());
    }
    let mask: Vec<f32> =
        vit.mask_token.val().into_data().convert::<f32>().into_vec().expect("f32 data");
    raw.insert("mask_token".into(), HostTensor::new(vec![1, cfg.embed_dim], mask));
    let (map, _) = to_timm_names(&cfg, raw).map_err(|e| anyhow!("resizing to {img_size}: {e}"))?;
    let mut out = timm::build(&cfg, map, &device)?;
    out.source_pos_embed = vit.source_pos_embed;
    out.precision = vit.precision;
    Ok(out)
}

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
    for timm::Entry { name, shape: expected, .. } in timm::layout(cfg) {
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
                    report.source_pos_embed = Some(t.clone());
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
    let resized = resample::bicubic_aa(&chw, d, from, from, to, to);
    let mut data = t.data[..prefix * d].to_vec();
    data.extend(transpose2(&resized, d, to * to));
    HostTensor::new(vec![1, prefix + to * to, d], data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{cases, st};
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn save_then_load_round_trips() {
        let device = Default::default();
        let (dir, case) =
            cases().into_iter().find(|(_, c)| c.case == "official_giant_reg4").unwrap();
        let model = load::<B>(&case.config, &dir.join(&case.weights), &device).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("w.safetensors");
        save(&model, &out).unwrap();
        let again = load::<B>(&case.config, &out, &device).unwrap();
        for ((n1, t1), (n2, t2)) in timm::tensors(&model).into_iter().zip(timm::tensors(&again)) {
            assert_eq!(n1, n2);
            assert_eq!(t1, t2, "{n1}");
        }
        // The pos_embed saved at the run grid is what timm's state_dict holds for the golden model.
        let saved = st(&out);
        assert_eq!(saved["pos_embed"].shape, vec![1, 16, 24]);
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
        let named: Vec<(String, HostTensor)> = tensors.into_iter().collect();
        tensors::write_safetensors(
            &path,
            named.iter().map(|(n, t)| (n.as_str(), t)),
            &HashMap::new(),
        )
        .unwrap();
        let err = load::<B>(&case.config, &path, &Default::default()).unwrap_err().to_string();
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
}
