//! Training-time augmentations of the reference protocols, applied to an image and its mask
//! together: torchvision's `RandomResizedCrop` (Leopart's linear probe: scale 0.8-1;
//! Hummingbird's memory bank: scale 0.5-2), horizontal flips, and Hummingbird's colour jitter
//! (brightness, contrast, saturation, hue, each +-0.1 and each applied with probability 0.5).
//! The crop is resized to the model input by the feature extractor (bilinear) and by the
//! caller for the mask (nearest). Random draws are ours, so augmented sets are equivalent to,
//! not identical with, the references'.

use crate::data::Mask;
use image::RgbImage;
use mosic::rng::SplitMix64;

pub use mosic::rng::Crop;

/// torchvision's `RandomResizedCrop.get_params` (the workspace's one implementation).
pub fn random_resized_crop(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SplitMix64,
) -> Crop {
    rng.random_resized_crop(width, height, scale, ratio)
}

pub fn crop_image(img: &RgbImage, c: Crop) -> RgbImage {
    image::imageops::crop_imm(img, c.left, c.top, c.width, c.height).to_image()
}

pub fn crop_mask(m: &Mask, c: Crop) -> Mask {
    let (x0, y0) = (c.left as usize, c.top as usize);
    let (w, h) = (c.width as usize, c.height as usize);
    let labels = (y0..y0 + h)
        .flat_map(|y| m.labels[y * m.width + x0..y * m.width + x0 + w].iter().copied())
        .collect();
    Mask { width: w, height: h, labels }
}

pub fn flip_image(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

pub fn flip_mask(m: &Mask) -> Mask {
    let labels = m.labels.chunks(m.width).flat_map(|r| r.iter().rev().copied()).collect();
    Mask { labels, ..m.clone() }
}

/// Leopart's linear-probe augmentation: crop (scale 0.8-1, ratio 3/4-4/3), flip with p = 0.5.
pub fn leopart_train(img: &RgbImage, m: &Mask, rng: &mut SplitMix64) -> (RgbImage, Mask) {
    let c = random_resized_crop(img.width(), img.height(), (0.8, 1.0), (0.75, 4.0 / 3.0), rng);
    let (mut i, mut k) = (crop_image(img, c), crop_mask(m, c));
    if rng.next_f64() < 0.5 {
        i = flip_image(&i);
        k = flip_mask(&k);
    }
    (i, k)
}

/// Hummingbird's memory-bank augmentation: colour jitter, then a shared crop (scale 0.5-2).
pub fn hummingbird_train(img: &RgbImage, m: &Mask, rng: &mut SplitMix64) -> (RgbImage, Mask) {
    let j = color_jitter(img, 0.1, 0.1, 0.1, 0.1, 0.5, rng);
    let c = random_resized_crop(img.width(), img.height(), (0.5, 2.0), (0.75, 4.0 / 3.0), rng);
    (crop_image(&j, c), crop_mask(m, c))
}

fn gray(p: [f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

fn blend(a: f32, b: f32, f: f32) -> f32 {
    (f * a + (1.0 - f) * b).clamp(0.0, 1.0)
}

/// torchvision's `ColorJitter` factors, each adjustment applied with probability `p`.
pub fn color_jitter(
    img: &RgbImage,
    b: f64,
    c: f64,
    s: f64,
    h: f64,
    p: f64,
    rng: &mut SplitMix64,
) -> RgbImage {
    let mut px: Vec<[f32; 3]> = img
        .pixels()
        .map(|q| [q.0[0] as f32 / 255.0, q.0[1] as f32 / 255.0, q.0[2] as f32 / 255.0])
        .collect();
    if rng.next_f64() < p {
        let f = rng.uniform((1.0 - b).max(0.0), 1.0 + b) as f32;
        px.iter_mut().for_each(|q| q.iter_mut().for_each(|v| *v = blend(*v, 0.0, f)));
    }
    if rng.next_f64() < p {
        let f = rng.uniform((1.0 - c).max(0.0), 1.0 + c) as f32;
        let mean = px.iter().map(|&q| gray(q)).sum::<f32>() / px.len().max(1) as f32;
        px.iter_mut().for_each(|q| q.iter_mut().for_each(|v| *v = blend(*v, mean, f)));
    }
    if rng.next_f64() < p {
        let f = rng.uniform((1.0 - s).max(0.0), 1.0 + s) as f32;
        px.iter_mut().for_each(|q| {
            let g = gray(*q);
            q.iter_mut().for_each(|v| *v = blend(*v, g, f));
        });
    }
    if rng.next_f64() < p {
        let shift = rng.uniform(-h, h) as f32;
        px.iter_mut().for_each(|q| *q = hue_shift(*q, shift));
    }
    let mut out = img.clone();
    for (o, q) in out.pixels_mut().zip(&px) {
        o.0 = q.map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8);
    }
    out
}

/// Hue rotated by `shift` turns (HSV), saturation and value kept.
fn hue_shift(p: [f32; 3], shift: f32) -> [f32; 3] {
    let (r, g, b) = (p[0], p[1], p[2]);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    if d <= 0.0 {
        return p;
    }
    let mut hue = if max == r {
        ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        (b - r) / d + 2.0
    } else {
        (r - g) / d + 4.0
    } / 6.0;
    hue = (hue + shift).rem_euclid(1.0);
    let (s, v) = (d / max, max);
    let h6 = hue * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p_, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 % 6 {
        0 => [v, t, p_],
        1 => [q, v, p_],
        2 => [p_, v, t],
        3 => [p_, q, v],
        4 => [t, p_, v],
        _ => [v, p_, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_fit_and_cover_the_requested_area() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..200 {
            let c = random_resized_crop(500, 375, (0.8, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(c.left + c.width <= 500 && c.top + c.height <= 375);
            let share = (c.width * c.height) as f64 / (500.0 * 375.0);
            assert!(share > 0.75, "{share}");
        }
        // Scale up to 2 often does not fit: falls back to (at most) the whole image.
        let c = random_resized_crop(40, 30, (1.9, 2.0), (1.0, 1.0), &mut rng);
        assert!(c.width <= 40 && c.height <= 30);
    }

    #[test]
    fn mask_and_image_are_cut_alike() {
        let img = RgbImage::from_fn(4, 3, |x, y| image::Rgb([(x * 10 + y) as u8, 0, 0]));
        let m = Mask {
            width: 4,
            height: 3,
            labels: (0..12).map(|i| ((i % 4) * 10 + i / 4) as u8).collect(),
        };
        let c = Crop { left: 1, top: 1, width: 2, height: 2 };
        let (ci, cm) = (flip_image(&crop_image(&img, c)), flip_mask(&crop_mask(&m, c)));
        let from_img: Vec<u8> = ci.pixels().map(|p| p.0[0]).collect();
        assert_eq!(from_img, cm.labels);
        assert_eq!(cm.labels, vec![21, 11, 22, 12]);
    }

    #[test]
    fn jitter_keeps_gray_gray_and_hue_round_trips() {
        let img = RgbImage::from_pixel(3, 3, image::Rgb([100, 100, 100]));
        let mut rng = SplitMix64::new(2);
        let j = color_jitter(&img, 0.0, 0.0, 0.5, 0.5, 1.0, &mut rng);
        assert!(j.pixels().all(|p| p.0 == [100, 100, 100]));
        let p = [0.8, 0.3, 0.1];
        let q = hue_shift(hue_shift(p, 0.25), -0.25);
        assert!(p.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-5), "{q:?}");
    }
}
