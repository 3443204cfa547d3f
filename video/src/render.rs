//! Point-track overlays written as animated GIF or MP4.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_hollow_circle_mut, draw_line_segment_mut};

use crate::{Mp4Writer, VideoError};

#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    pub fps: u32,
    /// Nearest-neighbour upscale factor applied before drawing, so markers
    /// stay legible on small (e.g. 224px) frames.
    pub upscale: u32,
    /// Marker radius in output pixels.
    pub radius: i32,
    /// Number of previous frames drawn as a trail behind each point.
    pub trail: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self { fps: 25, upscale: 2, radius: 3, trail: 4 }
    }
}

enum Format {
    Gif,
    Mp4,
    /// The last frame only, with whole trails.
    Png,
}

/// Draws point tracks over `frames` and writes them to `out` (`.gif` or
/// `.mp4`, or a still of the last frame with whole trails as `.png`; chosen by extension), atomically.
///
/// `tracks` is `[T][N][2]` with `x` = column and `y` = row in input pixels
/// (pixel centres at integer coordinates); `visibility` is `[T][N]`, 1 for
/// visible. Visible points are filled discs, occluded ones rings; points
/// outside the frame are skipped. MP4 output is padded to even size.
pub fn render(
    frames: &[RgbImage],
    tracks: &[f32],
    visibility: &[u8],
    num_points: usize,
    out: &Path,
    opts: &RenderOptions,
) -> Result<(), VideoError> {
    let ext = out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let format = match ext.as_deref() {
        Some("gif") => Format::Gif,
        Some("mp4") => Format::Mp4,
        Some("png") => Format::Png,
        _ => return Err(VideoError::UnsupportedFormat { path: out.into() }),
    };
    let invalid = |message: String| VideoError::InvalidInput { path: out.into(), message };
    let (t, n) = (frames.len(), num_points);
    let Some(first) = frames.first() else {
        return Err(invalid("no frames to render".into()));
    };
    let (w, h) = first.dimensions();
    if let Some(f) = frames.iter().find(|f| f.dimensions() != (w, h)) {
        return Err(invalid(format!(
            "frames differ in size: {w}x{h} and {}x{}",
            f.width(),
            f.height()
        )));
    }
    if tracks.len() != t * n * 2 || visibility.len() != t * n {
        return Err(invalid(format!(
            "{t} frames x {n} points need {} track values and {} visibility flags, got {} and {}",
            t * n * 2,
            t * n,
            tracks.len(),
            visibility.len()
        )));
    }
    if opts.upscale == 0 || opts.fps == 0 {
        return Err(invalid(format!(
            "upscale and fps must be positive, got {} and {}",
            opts.upscale, opts.fps
        )));
    }

    let s = opts.upscale;
    let (mut cw, mut ch) = (w * s, h * s);
    if matches!(format, Format::Mp4) {
        (cw, ch) = (cw.next_multiple_of(2), ch.next_multiple_of(2));
    }
    // Output-pixel position of point `i` at frame `k`, if it lies in the frame.
    let pos = |k: usize, i: usize| {
        let (x, y) = (tracks[(k * n + i) * 2], tracks[(k * n + i) * 2 + 1]);
        let inside = |v: f32, len: u32| v.is_finite() && v >= -0.5 && v < len as f32 - 0.5;
        let to_out = |v: f32| ((v + 0.5) * s as f32 - 0.5).round() as i32;
        (inside(x, w) && inside(y, h)).then(|| (to_out(x), to_out(y)))
    };
    let visible = |k: usize, i: usize| visibility[k * n + i] != 0;
    let colors: Vec<Rgb<u8>> = (0..n).map(|i| point_color(i, n)).collect();

    // Frame `k` upscaled onto the canvas, with `trail` frames of trail behind each point.
    let draw = |k: usize, trail: usize| {
        let mut canvas = RgbImage::new(cw, ch);
        let big = image::imageops::resize(&frames[k], w * s, h * s, FilterType::Nearest);
        image::imageops::replace(&mut canvas, &big, 0, 0);
        let at = |p: (i32, i32)| (p.0 as f32, p.1 as f32);
        for (i, &c) in colors.iter().enumerate() {
            for j in k.saturating_sub(trail)..k {
                if let (Some(a), Some(b), true, true) =
                    (pos(j, i), pos(j + 1, i), visible(j, i), visible(j + 1, i))
                {
                    draw_line_segment_mut(&mut canvas, at(a), at(b), c);
                }
            }
        }
        for (i, &c) in colors.iter().enumerate() {
            match pos(k, i) {
                Some(p) if visible(k, i) => draw_filled_circle_mut(&mut canvas, p, opts.radius, c),
                Some(p) => draw_hollow_circle_mut(&mut canvas, p, opts.radius, c),
                None => {}
            }
        }
        canvas
    };

    match format {
        Format::Png => {
            // One still: the last frame with every point's whole trail.
            let tmp = crate::tmp_path(out);
            let res = draw(t - 1, t)
                .save_with_format(&tmp, image::ImageFormat::Png)
                .map_err(|e| VideoError::Encode { path: out.into(), message: e.to_string() })
                .and_then(|_| {
                    std::fs::rename(&tmp, out)
                        .map_err(|source| VideoError::Io { path: out.into(), source })
                });
            if res.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            res
        }
        Format::Mp4 => {
            let mut writer = Mp4Writer::create(out, cw, ch, opts.fps)?;
            for k in 0..t {
                writer.push(&draw(k, opts.trail))?;
            }
            writer.finish()
        }
        Format::Gif => {
            if cw > u16::MAX as u32 || ch > u16::MAX as u32 {
                return Err(invalid(format!("{cw}x{ch} exceeds the GIF size limit")));
            }
            let tmp = crate::tmp_path(out);
            let io_err = |source| VideoError::Io { path: out.into(), source };
            let written = (|| -> Result<(), VideoError> {
                let gif_err = |e: gif::EncodingError| VideoError::Encode {
                    path: out.into(),
                    message: e.to_string(),
                };
                let file = BufWriter::new(File::create(&tmp).map_err(io_err)?);
                let mut enc =
                    gif::Encoder::new(file, cw as u16, ch as u16, &[]).map_err(gif_err)?;
                enc.set_repeat(gif::Repeat::Infinite).map_err(gif_err)?;
                // Browsers replace delays below 2 cs with 10 cs, i.e. slow down.
                let delay = (100.0 / opts.fps as f64).round().max(2.0) as u16;
                for k in 0..t {
                    let mut frame = gif::Frame::from_rgb_speed(
                        cw as u16,
                        ch as u16,
                        draw(k, opts.trail).as_raw(),
                        10,
                    );
                    frame.delay = delay;
                    enc.write_frame(&frame).map_err(gif_err)?;
                }
                let file = enc.into_inner().map_err(gif_err)?;
                file.into_inner()
                    .map_err(|e| io_err(e.into_error()))?
                    .sync_all()
                    .map_err(io_err)?;
                std::fs::rename(&tmp, out).map_err(io_err)
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written
        }
    }
}

/// Colour of point `i` of `n`: evenly spaced hues, so neighbouring points of
/// a row-major grid get neighbouring colours and the grid reads as a rainbow.
pub fn point_color(i: usize, n: usize) -> Rgb<u8> {
    let hue = 6.0 * (i as f32 / n.max(1) as f32).fract();
    let x = 1.0 - (hue % 2.0 - 1.0).abs();
    let (r, g, b) = match hue as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    let q = |v: f32| (v * 255.0).round() as u8;
    Rgb([q(r), q(g), q(b)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_gif(path: &Path) -> (u16, u16, Vec<Vec<u8>>, Vec<u16>) {
        let mut opts = gif::DecodeOptions::new();
        opts.set_color_output(gif::ColorOutput::RGBA);
        let mut dec = opts.read_info(File::open(path).unwrap()).unwrap();
        let (w, h) = (dec.width(), dec.height());
        let (mut frames, mut delays) = (Vec::new(), Vec::new());
        while let Some(f) = dec.read_next_frame().unwrap() {
            assert_eq!((f.width, f.height), (w, h));
            frames.push(f.buffer.to_vec());
            delays.push(f.delay);
        }
        (w, h, frames, delays)
    }

    fn rgb_at(buf: &[u8], w: u16, x: usize, y: usize) -> [u8; 3] {
        let i = (y * w as usize + x) * 4;
        [buf[i], buf[i + 1], buf[i + 2]]
    }

    #[test]
    fn gif_places_points_by_column_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tracks.gif");
        let frames = vec![RgbImage::new(32, 16); 3];
        // Point 0 (red) visible at x=10, y=2 throughout; point 1 occluded at x=25, y=8.
        let tracks: Vec<f32> = (0..3).flat_map(|_| [10.0, 2.0, 25.0, 8.0]).collect();
        let vis = [1, 0].repeat(3);
        render(&frames, &tracks, &vis, 2, &out, &RenderOptions { fps: 10, ..Default::default() })
            .unwrap();
        assert!(!crate::tmp_path(&out).exists());

        let (w, h, frames, delays) = read_gif(&out);
        assert_eq!((w, h, frames.len()), (64, 32, 3));
        assert!(delays.iter().all(|&d| d == 10));
        let red = point_color(0, 2).0;
        assert_eq!(red, [255, 0, 0]);
        let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(&p, q)| p.abs_diff(q) < 40);
        for f in &frames {
            assert!(close(rgb_at(f, w, 20, 4), red) && close(rgb_at(f, w, 21, 5), red));
            assert!(close(rgb_at(f, w, 4, 20), [0, 0, 0]), "transposed");
            // Occluded point: a ring around an untouched centre.
            let ring = point_color(1, 2).0;
            assert!(close(rgb_at(f, w, 51, 17), [0, 0, 0]));
            assert!(close(rgb_at(f, w, 51 + 3, 17), ring));
        }
    }

    #[test]
    fn mp4_output_and_input_checks() {
        let dir = tempfile::tempdir().unwrap();
        let frames = vec![RgbImage::new(33, 17); 4];
        let tracks: Vec<f32> = (0..4).flat_map(|k| [k as f32 * 5.0, 8.0]).collect();
        let vis = vec![1u8; 4];
        let opts = RenderOptions { upscale: 1, ..Default::default() };
        let out = dir.path().join("tracks.mp4");
        render(&frames, &tracks, &vis, 1, &out, &opts).unwrap();
        let (info, decoded) = crate::decode_all(&out).unwrap();
        assert_eq!((info.width, info.height, decoded.len()), (34, 18, 4));

        let bad = dir.path().join("tracks.avi");
        let err = render(&frames, &tracks, &vis, 1, &bad, &opts).unwrap_err().to_string();
        assert!(err.contains("tracks.avi") && err.contains(".gif or .mp4"), "{err}");
        let err =
            render(&frames, &tracks[1..], &vis, 1, &out.with_extension("gif"), &opts).unwrap_err();
        assert!(matches!(err, VideoError::InvalidInput { .. }), "{err}");
    }

    #[test]
    fn markers_at_the_frame_edges_are_clipped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("edge.png");
        let frames = vec![RgbImage::new(8, 8); 2];
        // Point 0 from the bottom-left corner to the top-right one; point 1 in the bottom-right
        // corner, hidden at the end.
        let tracks = [0.0, 7.0, 7.0, 7.0, 7.0, 0.0, 7.0, 7.0];
        let opts = RenderOptions { upscale: 1, radius: 3, ..Default::default() };
        render(&frames, &tracks, &[1, 1, 1, 0], 2, &out, &opts).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(0, 7).0, point_color(0, 2).0);
        assert_eq!(img.get_pixel(4, 3).0, point_color(0, 2).0, "trail from (0, 7) to (7, 0)");
        assert_eq!(img.get_pixel(7, 4).0, point_color(1, 2).0, "ring around (7, 7)");
        assert_eq!(img.get_pixel(7, 7).0, [0, 0, 0], "a ring leaves its centre");
    }
}
