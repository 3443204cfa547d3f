//! A small PNG line plot (loss and learning rate against step), so a run can be judged at a
//! glance without a plotting stack.

use anyhow::Result;
use image::{Rgb, RgbImage};
use std::path::Path;

const W: u32 = 720;
const PANEL_H: u32 = 260;
const MARGIN_L: u32 = 70;
const MARGIN_R: u32 = 20;
const MARGIN_T: u32 = 28;
const MARGIN_B: u32 = 30;

/// A 3x5 bitmap font: rows top to bottom, 3 bits per row (MSB left); letters in one case.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        'a' => [2, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [3, 4, 4, 4, 3],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 6, 4, 7],
        'f' => [7, 4, 6, 4, 4],
        'g' => [3, 4, 5, 5, 3],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'j' => [1, 1, 1, 5, 2],
        'k' => [5, 5, 6, 5, 5],
        'l' => [4, 4, 4, 4, 7],
        'm' => [5, 7, 7, 5, 5],
        'n' => [6, 5, 5, 5, 5],
        'o' => [2, 5, 5, 5, 2],
        'p' => [6, 5, 6, 4, 4],
        'q' => [2, 5, 5, 6, 3],
        'r' => [6, 5, 6, 5, 5],
        's' => [3, 4, 2, 1, 6],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'w' => [5, 5, 7, 7, 5],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        'z' => [7, 1, 2, 4, 7],
        '=' => [0, 7, 0, 7, 0],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '%' => [5, 1, 2, 4, 5],
        '_' => [0, 0, 0, 0, 7],
        ',' => [0, 0, 0, 2, 4],
        '#' => [5, 7, 5, 7, 5],
        _ => [0; 5],
    }
}

/// Draws `s` with the built-in 3x5 font, each font pixel `scale` x `scale` image pixels.
pub fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, scale: u32, color: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let g = glyph(c);
        for (r, bits) in g.iter().enumerate() {
            for b in 0..3 {
                if bits >> (2 - b) & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (i as u32 * 4 + b) * scale + dx;
                            let py = y + r as u32 * scale + dy;
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

/// One panel per series, stacked; each with its title, min/max labels and step range.
pub fn save(path: &Path, series: &[(&str, &[(f64, f64)])]) -> Result<()> {
    let h = PANEL_H * series.len() as u32;
    let mut img = RgbImage::from_pixel(W, h.max(1), Rgb([255, 255, 255]));
    let colors = [Rgb([31, 119, 180]), Rgb([214, 39, 40])];
    for (k, (name, pts)) in series.iter().enumerate() {
        let top = k as u32 * PANEL_H;
        let (x0, y0) = (MARGIN_L as f64, (top + MARGIN_T) as f64);
        let (x1, y1) = ((W - MARGIN_R) as f64, (top + PANEL_H - MARGIN_B) as f64);
        let grey = Rgb([200, 200, 200]);
        for i in 0..=4 {
            let y = y0 + (y1 - y0) * i as f64 / 4.0;
            line(&mut img, (x0, y), (x1, y), grey);
        }
        line(&mut img, (x0, y0), (x0, y1), Rgb([0, 0, 0]));
        line(&mut img, (x0, y1), (x1, y1), Rgb([0, 0, 0]));
        text(&mut img, MARGIN_L, top + 6, name, 3, Rgb([0, 0, 0]));
        let finite: Vec<&(f64, f64)> = pts.iter().filter(|p| p.1.is_finite()).collect();
        if finite.is_empty() {
            continue;
        }
        let (smin, smax) =
            finite.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (vmin, vmax) =
            finite.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (vmin, vmax) = if vmax > vmin { (vmin, vmax) } else { (vmin - 0.5, vmax + 0.5) };
        let sx = |s: f64| {
            if smax > smin {
                x0 + (x1 - x0) * (s - smin) / (smax - smin)
            } else {
                (x0 + x1) / 2.0
            }
        };
        let sy = |v: f64| y1 - (y1 - y0) * (v - vmin) / (vmax - vmin);
        text(&mut img, 4, y0 as u32, &label(vmax), 2, Rgb([60, 60, 60]));
        text(&mut img, 4, y1 as u32 - 10, &label(vmin), 2, Rgb([60, 60, 60]));
        text(&mut img, x0 as u32, y1 as u32 + 8, &format!("{smin:.0}"), 2, Rgb([60, 60, 60]));
        let last = format!("step {smax:.0}");
        text(
            &mut img,
            (x1 as u32).saturating_sub(8 * last.len() as u32),
            y1 as u32 + 8,
            &last,
            2,
            Rgb([60, 60, 60]),
        );
        for w in finite.windows(2) {
            line(&mut img, (sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), colors[k % 2]);
        }
        if finite.len() == 1 {
            line(
                &mut img,
                (sx(finite[0].0) - 2.0, sy(finite[0].1)),
                (sx(finite[0].0) + 2.0, sy(finite[0].1)),
                colors[k % 2],
            );
        }
    }
    let tmp = mosic::fsutil::temp_path(path);
    img.save_with_format(&tmp, image::ImageFormat::Png)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
