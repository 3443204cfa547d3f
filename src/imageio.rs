//! Frame encoding shared by producers and consumers: JPEG in shards, resizing to the stored size.

use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, RgbImage};

pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity((img.width() * img.height()) as usize / 4);
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .map_err(|e| format!("JPEG encoding failed: {e}"))?;
    Ok(out)
}

pub fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, String> {
    image::load_from_memory_with_format(bytes, ImageFormat::Jpeg)
        .map(|i| i.to_rgb8())
        .map_err(|e| format!("undecodable JPEG: {e}"))
}

/// Resizes with a triangle (bilinear) filter widened on downscale, i.e. antialiased like
/// torchvision's `antialias=True`; pixel centres follow the half-pixel convention of
/// [`crate::clip::rescale_coord`].
pub fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if img.width() == width && img.height() == height {
        return img.clone();
    }
    image::imageops::resize(img, width, height, image::imageops::FilterType::Triangle)
}
