//! Labelled evaluation sets decoded into memory, and the clustering validation the trainer
//! runs every N steps on them (the same protocols as `mosic eval cluster` / `mosic eval video`).

use crate::config::ValidationConfig;
use crate::eval::features::{extract, read_image};
use crate::model::Vit;
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use image::RgbImage;
use mosic_eval::data::num_classes;
use mosic_eval::data::{image_set, read_mask, video_set, LabelledImage, LabelledVideo, Mask};
use mosic_eval::protocols::cluster::{
    cluster_images, cluster_videos, ClusterConfig, VideoConfig, VideoSample,
};
use mosic_eval::Score;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Decoded images and their masks at `mask_size` (0 keeps the original size).
pub fn load_images(
    items: &[LabelledImage],
    mask_size: usize,
) -> Result<(Vec<RgbImage>, Vec<Mask>)> {
    items
        .par_iter()
        .map(|it| load_pair(&it.image, &it.mask, mask_size))
        .collect::<Result<Vec<_>>>()
        .map(|v| v.into_iter().unzip())
}

fn load_pair(image: &Path, mask: &Path, mask_size: usize) -> Result<(RgbImage, Mask)> {
    let img = read_image(image)?;
    let m = read_mask(mask)?;
    let m = if mask_size > 0 { m.resize_nearest(mask_size, mask_size) } else { m };
    Ok((img, m))
}

/// One video's decoded frames and masks.
pub struct LoadedVideo {
    pub name: String,
    pub frames: Vec<RgbImage>,
    pub masks: Vec<Mask>,
}

pub fn load_videos(videos: &[LabelledVideo], mask_size: usize) -> Result<Vec<LoadedVideo>> {
    videos
        .iter()
        .map(|v| {
            let (frames, masks) = v
                .frames
                .par_iter()
                .map(|(f, m)| load_pair(f, m, mask_size))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("video {}", v.name))?
                .into_iter()
                .unzip();
            Ok(LoadedVideo { name: v.name.clone(), frames, masks })
        })
        .collect()
}

/// `n` indices spread evenly over `0..len`.
pub fn spread(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    (0..n).map(|i| (i * len + len / 2) / n).collect()
}

/// A validation set in memory.
pub enum ValSet {
    Images { images: Vec<RgbImage>, masks: Vec<Mask>, classes: usize },
    Videos(Vec<LoadedVideo>),
}

impl ValSet {
    /// Loads the set `cfg.data` names: a video set when it has Annotations/, else an image set.
    pub fn load(cfg: &ValidationConfig) -> Result<Self> {
        let root = &cfg.data;
        let split = (!cfg.split.is_empty()).then_some(cfg.split.as_str());
        let max = cfg.max_images.max(1);
        if root.join("Annotations").is_dir() {
            let mut videos = video_set(root, split, 1)?;
            let per = (max / videos.len()).max(1);
            videos.truncate(max);
            for v in &mut videos {
                let keep = spread(v.frames.len(), per);
                v.frames = keep.into_iter().map(|i| v.frames[i].clone()).collect();
            }
            Ok(ValSet::Videos(load_videos(&videos, cfg.mask_size)?))
        } else {
            let items = image_set(root, split)?;
            let items: Vec<LabelledImage> =
                spread(items.len(), max).into_iter().map(|i| items[i].clone()).collect();
            let (images, masks) = load_images(&items, cfg.mask_size)?;
            let classes = num_classes(&masks);
            Ok(ValSet::Images { images, masks, classes })
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ValSet::Images { images, classes, .. } => {
                format!("{} images, {classes} classes", images.len())
            }
            ValSet::Videos(v) => format!(
                "{} videos, {} annotated frames",
                v.len(),
                v.iter().map(|v| v.frames.len()).sum::<usize>()
            ),
        }
    }

    /// Clustering mIoU of `vit`'s features (one k-means seed), by protocol name.
    pub fn evaluate<B: Backend>(
        &self,
        vit: &Vit<B>,
        overclustering: usize,
        batch: usize,
    ) -> BTreeMap<String, f64> {
        let scores: Vec<Score> = match self {
            ValSet::Images { images, masks, classes } => {
                let feats = extract(vit, images, batch);
                let mut ks = vec![0];
                if overclustering > 0 {
                    ks.push(overclustering);
                }
                cluster_images(
                    &feats,
                    masks,
                    *classes,
                    &ClusterConfig { ks, seeds: vec![0], iters: 100 },
                )
            }
            ValSet::Videos(videos) => {
                let samples: Vec<VideoSample> = videos
                    .iter()
                    .map(|v| VideoSample {
                        name: v.name.clone(),
                        frames: extract(vit, &v.frames, batch),
                        masks: v.masks.clone(),
                    })
                    .collect();
                let cfg = VideoConfig {
                    seeds: vec![0],
                    iters: 100,
                    over_k_local: overclustering,
                    over_k_dataset: 0,
                };
                cluster_videos(&samples, &cfg)
            }
        };
        scores.into_iter().map(|s| (s.name, s.mean)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_is_even_and_in_range() {
        assert_eq!(spread(10, 3), vec![1, 5, 8]);
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
        assert_eq!(spread(192, 4), vec![24, 72, 120, 168]);
    }
}
