//! Video I/O for MoSiC: decode any video FFmpeg understands into RGB frames,
//! encode RGB frames to MP4, and render point-track overlays as GIF or MP4.
//!
//! This is the only crate in the workspace that links FFmpeg, so the native
//! dependency (and its build requirements) stays out of everything that only
//! handles tracks, shards and tensors.

mod decode;
mod encode;
mod error;
pub mod log;
mod render;

pub use decode::{decode_all, decode_frames, probe, Decoder, VideoInfo};
pub use encode::Mp4Writer;
pub use error::VideoError;
pub use render::{point_color, render, RenderOptions};

use std::path::{Path, PathBuf};

/// Initialises FFmpeg once per process and silences its logging below errors.
pub(crate) fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        // init() cannot fail with FFmpeg >= 5 (it only registers devices), and
        // any real problem resurfaces as an error when a file is opened.
        let _ = ffmpeg_next::init();
        ffmpeg_next::log::set_level(ffmpeg_next::log::Level::Error);
    });
}

/// Sibling temp file for atomic writes: same directory, so the final rename
/// never crosses filesystems.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(name)
}

#[cfg(test)]
pub(crate) mod test_util {
    use image::RgbImage;

    /// A diagonal gradient that shifts by `k` pixels per frame, so frames are
    /// distinguishable and the codec sees real motion.
    pub fn gradient(w: u32, h: u32, k: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                ((x + 2 * k) * 255 / (w + 40)) as u8,
                (y * 255 / h) as u8,
                ((x + y + k) % 64 * 2 + 60) as u8,
            ])
        })
    }

    pub fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(&p, &q)| p.abs_diff(q) as u64).sum();
        sum as f64 / a.as_raw().len() as f64
    }
}
