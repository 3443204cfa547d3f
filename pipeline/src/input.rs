//! Finding videos: YouTube-VOS and DAVIS frame folders, and directories of video files.

use anyhow::{bail, Context, Result};
use image::RgbImage;
use mosic::clip::ClipPlan;
use std::path::{Path, PathBuf};

pub const VIDEO_EXTENSIONS: [&str; 5] = ["mp4", "webm", "mkv", "avi", "mov"];
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

#[derive(Clone, Debug)]
pub enum Source {
    /// Frame images named by frame number (`00035.jpg`), sorted by number.
    Frames(Vec<(u32, PathBuf)>),
    /// A video file decoded with FFmpeg.
    File(PathBuf),
    /// A folder that cannot be a video (no images, names that are not frame numbers), with
    /// why; it stays in the list so that group membership does not depend on it.
    Unusable(String),
}

#[derive(Clone, Debug)]
pub struct Video {
    pub id: String,
    pub source: Source,
    /// Where the video lives, for messages.
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Discovered {
    pub dataset: String,
    /// Every entry of the input in path order, unusable folders included.
    pub videos: Vec<Video>,
}

fn ext_in(p: &Path, list: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| list.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Finds the videos under `input`: a video file, a folder of video files, a folder of frame
/// folders (YouTube-VOS `JPEGImages`), a dataset root holding `JPEGImages` (YouTube-VOS) or
/// `JPEGImages/480p` (DAVIS), or a mix of video files and frame folders.
pub fn discover(input: &Path, dataset: Option<&str>) -> Result<Discovered> {
    if !input.exists() {
        bail!("input {} does not exist", input.display());
    }
    if input.is_file() {
        if !ext_in(input, &VIDEO_EXTENSIONS) {
            bail!(
                "input {} is not a video file (expected one of {:?})",
                input.display(),
                VIDEO_EXTENSIONS
            );
        }
        let id = stem(input);
        let ds = dataset.map(str::to_string).unwrap_or_else(|| "videos".into());
        return Ok(Discovered {
            dataset: ds,
            videos: vec![Video {
                id,
                source: Source::File(input.to_path_buf()),
                path: input.to_path_buf(),
            }],
        });
    }
    let mut root = input.to_path_buf();
    for sub in ["JPEGImages/480p", "JPEGImages"] {
        if input.join(sub).is_dir() {
            root = input.join(sub);
            break;
        }
    }
    // The dataset is named after the folder above JPEGImages (YouTube-VOS/DAVIS roots).
    let named = root
        .ancestors()
        .find(|a| !matches!(a.file_name().and_then(|n| n.to_str()), Some("JPEGImages" | "480p")))
        .unwrap_or(&root);
    let ds = dataset.map(str::to_string).unwrap_or_else(|| stem(named));

    let mut entries: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    entries.sort();
    let mut videos: Vec<Video> = Vec::new();
    for p in entries {
        let source = if p.is_dir() {
            match frame_files(&p) {
                Ok(frames) => Source::Frames(frames),
                Err(e) => Source::Unusable(format!("{e:#}")),
            }
        } else if ext_in(&p, &VIDEO_EXTENSIONS) {
            Source::File(p.clone())
        } else {
            continue;
        };
        videos.push(Video { id: stem(&p), source, path: p });
    }
    if videos.is_empty() {
        bail!(
            "no videos in {}: expected frame folders or video files ({:?})",
            root.display(),
            VIDEO_EXTENSIONS
        );
    }
    // Shards key clips by video id, so two entries may not share one (a.mp4 beside a.mkv or a/).
    let mut by_id: Vec<&Video> = videos.iter().collect();
    by_id.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = by_id.windows(2).find(|w| w[0].id == w[1].id) {
        bail!(
            "{} and {} would both be video '{}'; rename one of them",
            w[0].path.display(),
            w[1].path.display(),
            w[0].id
        );
    }
    Ok(Discovered { dataset: ds, videos })
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The frame images of a folder, by frame number.
pub fn frame_files(dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let mut frames = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        if !p.is_file() || !ext_in(&p, &IMAGE_EXTENSIONS) {
            continue;
        }
        let name = stem(&p);
        let n: u32 = name.parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: file name '{}' is not a frame number (expected e.g. 00035.jpg)",
                dir.display(),
                name
            )
        })?;
        frames.push((n, p));
    }
    if frames.is_empty() {
        bail!("{}: folder holds no frame images ({:?})", dir.display(), IMAGE_EXTENSIONS);
    }
    frames.sort();
    if let Some(w) = frames.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            "{}: two files for frame {} ({} and {})",
            dir.display(),
            w[0].0,
            w[0].1.display(),
            w[1].1.display()
        );
    }
    Ok(frames)
}

/// Clips of a frame folder. Frame numbers give timing: YouTube-VOS' 6-fps `train` folders
/// number frames at 30 fps in steps of 5, so the clip step is counted in available frames
/// at the folder's effective rate, and the stored indices are the file numbers.
pub fn folder_clips(
    frames: &[(u32, PathBuf)],
    numbering_fps: f64,
    plan: &ClipPlan,
) -> Vec<Vec<usize>> {
    let gap = frames.windows(2).map(|w| w[1].0 - w[0].0).min().unwrap_or(1).max(1);
    let fps = numbering_fps / gap as f64;
    plan.clips(frames.len() as u64, fps)
        .into_iter()
        .map(|c| c.into_iter().map(|i| i as usize).collect())
        .collect()
}

/// Loads one frame image as RGB, whatever its colour type or bit depth.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let img =
        image::open(path).with_context(|| format!("cannot decode frame {}", path.display()))?;
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_fps_folders_keep_their_timing() {
        let frames: Vec<(u32, PathBuf)> =
            (0..40).map(|i| (i * 5, PathBuf::from(format!("{:05}.jpg", i * 5)))).collect();
        let clips = folder_clips(&frames, 30.0, &ClipPlan::default());
        // 6 fps: step round(3.2*6/12) = 2 available frames = 10 numbers.
        assert_eq!(clips.len(), 1);
        let numbers: Vec<u32> = clips[0].iter().map(|&i| frames[i].0).collect();
        assert_eq!(numbers, (0..12).map(|k| k * 10).collect::<Vec<_>>());
    }
}
