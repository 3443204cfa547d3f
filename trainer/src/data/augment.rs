//! Flip and RandomResizedCrop of a clip: drawn once per clip, applied to every frame and to
//! the tracks.

use super::LoaderConfig;
use mosic::rng::SplitMix64;

/// Flip and crop of one clip, in stored pixels; the crop is taken from the flipped frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aug {
    pub flip: bool,
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
    /// Stored frame width, the mirror axis.
    pub frame_width: u32,
}

impl Aug {
    pub fn draw(rng: &mut SplitMix64, w: u32, h: u32, cfg: &LoaderConfig) -> Self {
        // Drawn even when flipping is off, so the crops do not depend on that switch.
        let flip = rng.next_f64() < 0.5 && cfg.hflip;
        let c = random_resized_crop(rng, w, h, cfg.crop_scale, cfg.crop_ratio);
        Self { flip, left: c.left, top: c.top, width: c.width, height: c.height, frame_width: w }
    }

    /// A stored-frame point in pixels of the S x S output.
    pub fn map(&self, p: [f32; 2], s: usize) -> [f32; 2] {
        let x = if self.flip { self.frame_width as f32 - 1.0 - p[0] } else { p[0] };
        let s = s as f32;
        [
            (x + 0.5 - self.left as f32) * s / self.width as f32 - 0.5,
            (p[1] + 0.5 - self.top as f32) * s / self.height as f32 - 0.5,
        ]
    }

    /// Writes the flipped, cropped and resized frame as CHW byte planes into `out`, rounded
    /// as torchvision rounds a resized uint8 image.
    pub(super) fn warp(&self, img: &image::RgbImage, s: usize, out: &mut [u8]) {
        // Two source taps and the weight of the second for each output column or row, as
        // torch's bilinear resize (align_corners = False) computes them within the crop.
        let taps = |lo: u32, len: u32, mirror: Option<u32>| -> Vec<(usize, usize, f32)> {
            let hi = lo + len - 1;
            (0..s)
                .map(|o| {
                    let v = (lo as f32 + (o as f32 + 0.5) * len as f32 / s as f32 - 0.5)
                        .clamp(lo as f32, hi as f32);
                    let i0 = (v.floor() as u32).min(hi);
                    let i1 = (i0 + 1).min(hi);
                    let (i0, i1) = match mirror {
                        Some(w) => (w - 1 - i0, w - 1 - i1),
                        None => (i0, i1),
                    };
                    (i0 as usize, i1 as usize, v - v.floor())
                })
                .collect()
        };
        let xs = taps(self.left, self.width, self.flip.then_some(self.frame_width));
        let ys = taps(self.top, self.height, None);
        let stride = img.width() as usize * 3;
        let raw = img.as_raw();
        let plane = s * s;
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            let (r0, r1) = (&raw[y0 * stride..][..stride], &raw[y1 * stride..][..stride]);
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                for c in 0..3 {
                    let (a, b) = (r0[x0 * 3 + c] as f32, r0[x1 * 3 + c] as f32);
                    let (d, e) = (r1[x0 * 3 + c] as f32, r1[x1 * 3 + c] as f32);
                    let top = a + (b - a) * fx;
                    let v = top + (d + (e - d) * fx - top) * fy;
                    out[c * plane + oy * s + ox] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params` with the config's f32 ranges.
pub(super) fn random_resized_crop(
    rng: &mut SplitMix64,
    w: u32,
    h: u32,
    scale: (f32, f32),
    ratio: (f32, f32),
) -> mosic::rng::Crop {
    rng.random_resized_crop(
        w,
        h,
        (scale.0 as f64, scale.1 as f64),
        (ratio.0 as f64, ratio.1 as f64),
    )
}

pub(super) fn in_crop(v: f32, s: usize) -> bool {
    v >= -0.5 && v < s as f32 - 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::LoaderConfig;

    #[test]
    fn identity_warp_copies_pixels_and_flip_mirrors() {
        let img = image::RgbImage::from_fn(6, 5, |x, y| {
            image::Rgb([(40 * x) as u8, (50 * y) as u8, 200])
        });
        let aug = Aug { flip: false, left: 0, top: 0, width: 6, height: 5, frame_width: 6 };
        // A 6 x 5 frame into 6 x 6 is not the identity; use a square crop of it instead.
        let square = Aug { width: 5, ..aug };
        let mut out = vec![0u8; 3 * 25];
        square.warp(&img, 5, &mut out);
        for y in 0..5u32 {
            for x in 0..5u32 {
                for c in 0..3 {
                    assert_eq!(out[c * 25 + y as usize * 5 + x as usize], img.get_pixel(x, y)[c]);
                }
            }
        }
        // Flipped, column x shows column 4 - x of the crop's mirror, i.e. frame column 5 - x.
        let mut flipped = vec![0u8; 3 * 25];
        Aug { flip: true, ..square }.warp(&img, 5, &mut flipped);
        assert_eq!(flipped[2 * 5], img.get_pixel(5, 2)[0]);
        assert_eq!(Aug { flip: true, ..square }.map([5.0, 2.0], 5), [0.0, 2.0]);
        // Upscaling interpolates and rounds: halfway between 0 and 40 in a 2-pixel crop.
        let two = Aug { flip: false, left: 0, top: 0, width: 2, height: 2, frame_width: 6 };
        let mut up = vec![0u8; 3 * 16];
        two.warp(&img, 4, &mut up);
        assert_eq!(&up[..4], &[0, 10, 30, 40]);
    }

    #[test]
    fn crops_stay_inside_the_frame() {
        let c = LoaderConfig::default();
        let mut rng = SplitMix64::new(4);
        for _ in 0..2000 {
            let (w, h) = (rng.below(300) as u32 + 1, rng.below(300) as u32 + 1);
            let mosic::rng::Crop { left: l, top: t, width: cw, height: ch } =
                random_resized_crop(&mut rng, w, h, c.crop_scale, c.crop_ratio);
            assert!(
                cw >= 1 && ch >= 1 && l + cw <= w && t + ch <= h,
                "{w} x {h}: {l} {t} {cw} {ch}"
            );
        }
        // Impossible ratio: the centre-crop fallback.
        assert_eq!(
            random_resized_crop(&mut rng, 200, 100, (0.9, 1.0), (4.0, 5.0)),
            mosic::rng::Crop { left: 0, top: 25, width: 200, height: 50 }
        );
    }
}
