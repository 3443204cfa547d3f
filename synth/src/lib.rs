//! `mosic synth`: a seeded synthetic dataset with exact ground truth.
//!
//! No real dataset can be assumed, so tests, benchmarks and the demo run on videos whose
//! every point's motion and occlusion is known. The output mimics the real layouts the
//! pipeline reads: YouTube-VOS frames (`JPEGImages/<video>/<00000>.jpg`), DAVIS-style
//! palette masks (`Annotations/<video>/<00000>.png`), MP4 files (`videos/<video>.mp4`),
//! plus a ground-truth shard directory (`gt/`) in the shard schema.

pub mod scene;
mod texture;

use anyhow::{Context, Result};
use mosic::clip::{grid_points, rescale_coord, Clip, ClipPlan, ShardSpec, TrackerInfo};
use mosic::imageio::{encode_jpeg, resize};
use mosic::manifest::Manifest;
use mosic::shard::{ShardWriter, WriteOptions};
use rayon::prelude::*;
use scene::{Scene, SceneConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DATASET: &str = "synth";
pub const GT_TRACKER: &str = "ground-truth";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SynthConfig {
    pub videos: u32,
    pub seed: u64,
    /// First video number, so a held-out set can follow a training set without overlap.
    pub first_video: u32,
    pub scene: SceneConfig,
    pub stored_width: u32,
    pub stored_height: u32,
    pub grid_size: u32,
    pub plan: ClipPlan,
    pub jpeg_quality: u8,
    pub mp4: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            videos: 16,
            seed: 0,
            first_video: 0,
            scene: SceneConfig::default(),
            stored_width: 224,
            stored_height: 224,
            // The grid `mosic tracks` stores by default, so tracks and ground truth compare.
            grid_size: 32,
            plan: ClipPlan::default(),
            jpeg_quality: 90,
            mp4: true,
        }
    }
}

impl SynthConfig {
    pub fn video_name(&self, i: u32) -> String {
        format!("synth_{:04}", self.first_video + i)
    }
    pub fn gt_spec(&self) -> ShardSpec {
        ShardSpec {
            frames_per_clip: self.plan.frames,
            grid_size: self.grid_size,
            width: self.stored_width,
            height: self.stored_height,
            query_frame: 0,
            tracker: TrackerInfo {
                name: GT_TRACKER.into(),
                model_sha256: String::new(),
                params: serde_json::json!({ "seed": self.seed }),
            },
        }
    }
}

#[derive(Debug, Default)]
pub struct SynthReport {
    pub videos: u32,
    pub frames: u64,
    pub clips: u64,
    pub gt_dir: PathBuf,
}

/// Generates the dataset under `out`. Each video is written under a temporary name and
/// renamed when complete, so an interrupted run leaves only whole videos, and a rerun
/// skips the videos already there.
pub fn generate(
    cfg: &SynthConfig,
    out: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<SynthReport> {
    for sub in ["JPEGImages", "Annotations", "videos", "gt"] {
        std::fs::create_dir_all(out.join(sub))
            .with_context(|| format!("cannot create {}", out.join(sub).display()))?;
    }
    let config_path = out.join("synth.json");
    let config_json = serde_json::to_string_pretty(cfg)?;
    if let Ok(old) = std::fs::read_to_string(&config_path) {
        anyhow::ensure!(
            old.trim() == config_json.trim(),
            "{} was made with other settings; choose another --out or delete it",
            config_path.display()
        );
    }
    mosic::fsutil::write_atomic(&config_path, config_json.as_bytes())?;

    let clips: Vec<Vec<Clip>> = (0..cfg.videos)
        .into_par_iter()
        .map(|i| {
            let clips =
                make_video(cfg, i, out).with_context(|| format!("video {}", cfg.video_name(i)))?;
            progress(&cfg.video_name(i));
            Ok(clips)
        })
        .collect::<Result<_>>()?;

    let gt_dir = out.join("gt");
    let spec = cfg.gt_spec();
    let mut manifest = Manifest::new(spec.clone(), serde_json::to_value(cfg)?);
    let mut writer =
        ShardWriter::create(&gt_dir.join("shard-00000.parquet"), &spec, &WriteOptions::default())?;
    let mut n = 0;
    for clip in clips.into_iter().flatten() {
        writer.write(clip)?;
        n += 1;
    }
    manifest.shards.push(writer.finish()?);
    manifest.save(&gt_dir)?;
    Ok(SynthReport {
        videos: cfg.videos,
        frames: cfg.videos as u64 * cfg.scene.num_frames as u64,
        clips: n,
        gt_dir,
    })
}

fn make_video(cfg: &SynthConfig, i: u32, out: &Path) -> Result<Vec<Clip>> {
    let name = cfg.video_name(i);
    let scene_cfg = cfg.scene.clone();
    let scene = Scene::generate(cfg.seed.wrapping_add((cfg.first_video + i) as u64), &scene_cfg);
    let frames_dir = out.join("JPEGImages").join(&name);
    let masks_dir = out.join("Annotations").join(&name);
    let mp4_path = out.join("videos").join(format!("{name}.mp4"));
    let done = frames_dir.is_dir() && masks_dir.is_dir() && (!cfg.mp4 || mp4_path.is_file());
    let plan = cfg.plan.clips(scene_cfg.num_frames as u64, scene_cfg.fps as f64);

    if !done {
        let tmp_frames = out.join("JPEGImages").join(format!(".tmp-{name}"));
        let tmp_masks = out.join("Annotations").join(format!(".tmp-{name}"));
        for d in [&tmp_frames, &tmp_masks] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d)?;
        }
        let mut mp4 = if cfg.mp4 {
            Some(mosic_video::Mp4Writer::create(
                &mp4_path,
                scene_cfg.width,
                scene_cfg.height,
                scene_cfg.fps.round() as u32,
            )?)
        } else {
            None
        };
        for f in 0..scene_cfg.num_frames {
            let (rgb, ids) = scene.render(f);
            let jpeg = encode_jpeg(&rgb, cfg.jpeg_quality).map_err(anyhow::Error::msg)?;
            std::fs::write(tmp_frames.join(format!("{f:05}.jpg")), jpeg)?;
            write_palette_png(&tmp_masks.join(format!("{f:05}.png")), &ids)?;
            if let Some(w) = mp4.as_mut() {
                w.push(&rgb)?;
            }
        }
        if let Some(w) = mp4 {
            w.finish()?;
        }
        // Masks first: a frames folder is what marks a video as present.
        for (tmp, dst) in [(&tmp_masks, &masks_dir), (&tmp_frames, &frames_dir)] {
            let _ = std::fs::remove_dir_all(dst);
            std::fs::rename(tmp, dst)?;
        }
    }

    // Ground truth at the stored size: the grid is placed on the stored frame, mapped to the
    // source, tracked analytically, and mapped back.
    let (sw, sh) = (scene_cfg.width, scene_cfg.height);
    let (tw, th) = (cfg.stored_width, cfg.stored_height);
    let grid = grid_points(cfg.grid_size, tw, th);
    let src: Vec<[f32; 2]> =
        grid.iter().map(|p| [rescale_coord(p[0], tw, sw), rescale_coord(p[1], th, sh)]).collect();
    let mut clips = Vec::with_capacity(plan.len());
    for (ci, frames) in plan.into_iter().enumerate() {
        let (pos, vis) = scene.track(&src, frames[0], &frames);
        let tracks = pos
            .iter()
            .map(|p| [rescale_coord(p[0], sw, tw), rescale_coord(p[1], sh, th)])
            .collect();
        let jpegs = frames
            .iter()
            .map(|&f| {
                encode_jpeg(&resize(&scene.render(f).0, tw, th), cfg.jpeg_quality)
                    .map_err(anyhow::Error::msg)
            })
            .collect::<Result<Vec<_>>>()?;
        clips.push(Clip {
            dataset: DATASET.into(),
            video_id: name.clone(),
            clip_index: ci as u32,
            frame_indices: frames,
            source_fps: scene_cfg.fps,
            frames: jpegs,
            queries: grid.clone(),
            tracks,
            visibility: vis,
        });
    }
    Ok(clips)
}

/// DAVIS palette: object k gets the colour of index k of the VOC colour map.
pub fn palette() -> Vec<u8> {
    let mut p = Vec::with_capacity(256 * 3);
    for i in 0..256u32 {
        let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
        let mut c = i;
        for j in 0..8 {
            r |= ((c & 1) as u8) << (7 - j);
            g |= (((c >> 1) & 1) as u8) << (7 - j);
            b |= (((c >> 2) & 1) as u8) << (7 - j);
            c >>= 3;
        }
        p.extend_from_slice(&[r, g, b]);
    }
    p
}

pub fn write_palette_png(path: &Path, ids: &image::GrayImage) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), ids.width(), ids.height());
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(palette());
    let mut w = enc.write_header()?;
    w.write_image_data(ids.as_raw())?;
    w.finish()?;
    Ok(())
}
