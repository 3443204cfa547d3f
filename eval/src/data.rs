//! Labelled evaluation sets on disk: image sets (Pascal VOC, or plain `images/` + `masks/`)
//! and video sets with instance masks (DAVIS, YouTube-VOS, `mosic synth`), plus the label
//! maps themselves (palette or 8-bit grayscale PNGs, values read as indices, 255 = ignore).

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// A label map: `labels[y * width + x]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u8>,
}

impl Mask {
    /// Nearest-neighbour resize (pixel-centre sampling, as PIL's NEAREST); labels are never blended.
    pub fn resize_nearest(&self, width: usize, height: usize) -> Mask {
        let src = |out: usize, inp: usize, i: usize| (((i as f64 + 0.5) * inp as f64 / out as f64) as usize).min(inp - 1);
        let mut labels = Vec::with_capacity(width * height);
        for y in 0..height {
            let sy = src(height, self.height, y);
            for x in 0..width {
                labels.push(self.labels[sy * self.width + src(width, self.width, x)]);
            }
        }
        Mask { width, height, labels }
    }

    /// Nearest-neighbour resize as PyTorch's `F.interpolate(mode="nearest")`: source index
    /// `floor(dst * in / out)` (not pixel centres), what the references use between tensors.
    pub fn resize_nearest_torch(&self, width: usize, height: usize) -> Mask {
        let ys = torch_nearest_index(self.height, height);
        let xs = torch_nearest_index(self.width, width);
        let labels = ys.iter().flat_map(|&y| xs.iter().map(move |&x| self.labels[y * self.width + x])).collect();
        Mask { width, height, labels }
    }

    /// Largest label other than the ignore value, if any pixel has one.
    pub fn max_label(&self) -> Option<u8> {
        self.labels.iter().copied().filter(|&l| l != 255).max()
    }

    pub fn as_u32(&self) -> Vec<u32> {
        self.labels.iter().map(|&l| l as u32).collect()
    }
}

/// Source indices of PyTorch's nearest interpolation from `inp` to `out` samples (float32
/// scale, as its CPU kernel computes it).
pub fn torch_nearest_index(inp: usize, out: usize) -> Vec<usize> {
    let scale = inp as f32 / out as f32;
    (0..out).map(|o| ((o as f32 * scale).floor() as usize).min(inp - 1)).collect()
}

/// Reads a label PNG: palette indices of an indexed PNG (VOC, DAVIS, YouTube-VOS) or the
/// values of an 8-bit (or lower) grayscale PNG. Colour-coded RGB masks are refused: their
/// colours would have to be mapped to classes by a palette we do not have.
pub fn read_mask(path: &Path) -> Result<Mask> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open mask {}", path.display()))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().with_context(|| format!("{}: not a readable PNG", path.display()))?;
    let info = reader.info();
    let (width, height) = (info.width as usize, info.height as usize);
    let (color, depth) = (info.color_type, info.bit_depth);
    let bits = match depth {
        png::BitDepth::One => 1,
        png::BitDepth::Two => 2,
        png::BitDepth::Four => 4,
        png::BitDepth::Eight => 8,
        png::BitDepth::Sixteen => 16,
    };
    ensure!(
        matches!(color, png::ColorType::Indexed | png::ColorType::Grayscale) && bits <= 8,
        "{}: a label mask must be a palette or 8-bit grayscale PNG (found {color:?}, {bits}-bit)",
        path.display()
    );
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let frame = reader.next_frame(&mut buf).with_context(|| format!("{}: truncated or corrupt PNG", path.display()))?;
    let stride = frame.line_size;
    let mut labels = Vec::with_capacity(width * height);
    for y in 0..height {
        let row = &buf[y * stride..(y + 1) * stride];
        for x in 0..width {
            let v = if bits == 8 {
                row[x]
            } else {
                let per = 8 / bits;
                let byte = row[x / per];
                let shift = 8 - bits * (x % per + 1);
                (byte >> shift) & ((1u16 << bits) - 1) as u8
            };
            labels.push(v);
        }
    }
    Ok(Mask { width, height, labels })
}

/// An image and its label map.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledImage {
    pub name: String,
    pub image: PathBuf,
    pub mask: PathBuf,
}

const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p) && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    out.sort();
    Ok(out)
}

fn find_image(dir: &Path, stem: &str) -> Option<PathBuf> {
    IMAGE_EXTS.iter().flat_map(|e| [e.to_string(), e.to_uppercase()]).map(|e| dir.join(format!("{stem}.{e}"))).find(|p| p.is_file())
}

fn read_split(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read split file {}", path.display()))?;
    let names: Vec<String> = text.lines().map(|l| l.split_whitespace().next().unwrap_or("").to_string()).filter(|l| !l.is_empty()).collect();
    ensure!(!names.is_empty(), "split file {} lists no images", path.display());
    Ok(names)
}

/// The labelled images of `root` for `split`.
///
/// - Pascal VOC: `JPEGImages/`, `SegmentationClass/<name>.png`, `ImageSets/Segmentation/<split>.txt`
///   (split defaults to `val`).
/// - Plain: `images/<name>.<ext>` and `masks/<name>.png`; with a split, `<split>.txt` in root
///   lists the names, else every image is used.
pub fn image_set(root: &Path, split: Option<&str>) -> Result<Vec<LabelledImage>> {
    let (images, masks, names) = if root.join("SegmentationClass").is_dir() {
        let split = split.unwrap_or("val");
        let list = root.join("ImageSets/Segmentation").join(format!("{split}.txt"));
        (root.join("JPEGImages"), root.join("SegmentationClass"), read_split(&list)?)
    } else if root.join("images").is_dir() && root.join("masks").is_dir() {
        let names = match split {
            Some(s) => read_split(&root.join(format!("{s}.txt")))?,
            None => sorted_files(&root.join("images"))?
                .iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect(),
        };
        (root.join("images"), root.join("masks"), names)
    } else {
        bail!(
            "{}: not a labelled image set (expected VOC's JPEGImages/ + SegmentationClass/ or images/ + masks/)",
            root.display()
        );
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let image = find_image(&images, &name).with_context(|| format!("{}: no image {name}", images.display()))?;
        let mask = masks.join(format!("{name}.png"));
        ensure!(mask.is_file(), "{}: image {name} has no mask {}", root.display(), mask.display());
        out.push(LabelledImage { name, image, mask });
    }
    ensure!(!out.is_empty(), "{}: no labelled images", root.display());
    Ok(out)
}

/// One video's annotated frames, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledVideo {
    pub name: String,
    /// (frame image, instance mask); only frames that have a mask.
    pub frames: Vec<(PathBuf, PathBuf)>,
}

/// Videos with instance masks under `root`:
/// - DAVIS: `JPEGImages/480p/<video>/`, `Annotations/480p/<video>/`, split list
///   `ImageSets/2017/<split>.txt` when a split is given;
/// - YouTube-VOS (`train/`, `valid/`) and `mosic synth`: `JPEGImages/<video>/`, `Annotations/<video>/`;
///   a split is then a file `<split>.txt` in root naming videos.
///
/// Frames without a mask (YouTube-VOS annotates every 5th) are skipped; `every` keeps every
/// n-th annotated frame.
pub fn video_set(root: &Path, split: Option<&str>, every: usize) -> Result<Vec<LabelledVideo>> {
    let (frames_root, masks_root, split_file) = if root.join("JPEGImages/480p").is_dir() {
        (root.join("JPEGImages/480p"), root.join("Annotations/480p"), split.map(|s| root.join(format!("ImageSets/2017/{s}.txt"))))
    } else if root.join("JPEGImages").is_dir() && root.join("Annotations").is_dir() {
        (root.join("JPEGImages"), root.join("Annotations"), split.map(|s| root.join(format!("{s}.txt"))))
    } else {
        bail!("{}: not a video set with masks (expected JPEGImages/ and Annotations/)", root.display());
    };
    ensure!(masks_root.is_dir(), "{}: no {}", root.display(), masks_root.display());
    let names = match split_file {
        Some(f) => read_split(&f)?,
        None => {
            let mut v: Vec<String> = std::fs::read_dir(&masks_root)
                .with_context(|| format!("cannot list {}", masks_root.display()))?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            v.sort();
            v
        }
    };
    let mut out = Vec::new();
    for name in names {
        let (fdir, mdir) = (frames_root.join(&name), masks_root.join(&name));
        let masks = sorted_files(&mdir)?;
        let mut frames = Vec::new();
        for m in masks.iter().filter(|m| m.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))) {
            let stem = m.file_stem().unwrap_or_default().to_string_lossy();
            let img = find_image(&fdir, &stem).with_context(|| format!("{}: mask {} has no frame", fdir.display(), m.display()))?;
            frames.push((img, m.clone()));
        }
        ensure!(!frames.is_empty(), "{}: no annotated frames", mdir.display());
        let frames = frames.into_iter().step_by(every.max(1)).collect();
        out.push(LabelledVideo { name, frames });
    }
    ensure!(!out.is_empty(), "{}: no videos", root.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(f, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if color == png::ColorType::Indexed {
            enc.set_palette(vec![0u8; 256 * 3]);
        }
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(data).unwrap();
    }

    #[test]
    fn masks_are_read_as_indices() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        write_png(&p, 3, 2, png::ColorType::Indexed, png::BitDepth::Eight, &[0, 1, 255, 7, 20, 0]);
        let m = read_mask(&p).unwrap();
        assert_eq!((m.width, m.height, m.labels.clone()), (3, 2, vec![0, 1, 255, 7, 20, 0]));
        assert_eq!(m.max_label(), Some(20));
        // 4-bit palette: two pixels per byte, high nibble first.
        write_png(&p, 3, 1, png::ColorType::Indexed, png::BitDepth::Four, &[0x12, 0x30]);
        assert_eq!(read_mask(&p).unwrap().labels, vec![1, 2, 3]);
        write_png(&p, 2, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[4, 9]);
        assert_eq!(read_mask(&p).unwrap().labels, vec![4, 9]);
        write_png(&p, 1, 1, png::ColorType::Rgb, png::BitDepth::Eight, &[1, 2, 3]);
        let e = format!("{:#}", read_mask(&p).unwrap_err());
        assert!(e.contains("a.png") && e.contains("palette"), "{e}");
        std::fs::write(&p, b"\x89PNG\r\n\x1a\nxx").unwrap();
        assert!(format!("{:#}", read_mask(&p).unwrap_err()).contains("a.png"));
    }

    #[test]
    fn nearest_resize_keeps_labels() {
        let m = Mask { width: 4, height: 2, labels: vec![0, 0, 1, 1, 2, 2, 255, 255] };
        let r = m.resize_nearest(2, 2);
        assert_eq!(r.labels, vec![0, 1, 2, 255]);
        let up = m.resize_nearest(8, 4);
        assert_eq!(&up.labels[..8], &[0, 0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn voc_plain_and_video_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let voc = dir.path().join("voc");
        for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
            std::fs::create_dir_all(voc.join(d)).unwrap();
        }
        for n in ["a", "b"] {
            std::fs::write(voc.join(format!("JPEGImages/{n}.jpg")), b"x").unwrap();
            write_png(&voc.join(format!("SegmentationClass/{n}.png")), 1, 1, png::ColorType::Indexed, png::BitDepth::Eight, &[1]);
        }
        std::fs::write(voc.join("ImageSets/Segmentation/val.txt"), "b\n").unwrap();
        std::fs::write(voc.join("ImageSets/Segmentation/train.txt"), "a\nc\n").unwrap();
        let set = image_set(&voc, None).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].name, "b");
        let e = format!("{:#}", image_set(&voc, Some("train")).unwrap_err());
        assert!(e.contains("no image c"), "{e}");
        assert!(format!("{:#}", image_set(&voc, Some("test")).unwrap_err()).contains("test.txt"));

        let plain = dir.path().join("plain");
        std::fs::create_dir_all(plain.join("images")).unwrap();
        std::fs::create_dir_all(plain.join("masks")).unwrap();
        std::fs::write(plain.join("images/x.png"), b"x").unwrap();
        assert!(format!("{:#}", image_set(&plain, None).unwrap_err()).contains("has no mask"));
        write_png(&plain.join("masks/x.png"), 1, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[0]);
        assert_eq!(image_set(&plain, None).unwrap().len(), 1);

        let vids = dir.path().join("vids");
        for (v, n) in [("v0", 4), ("v1", 2)] {
            std::fs::create_dir_all(vids.join("JPEGImages").join(v)).unwrap();
            std::fs::create_dir_all(vids.join("Annotations").join(v)).unwrap();
            for f in 0..n {
                std::fs::write(vids.join(format!("JPEGImages/{v}/{f:05}.jpg")), b"x").unwrap();
                // Sparse annotation: every other frame has a mask.
                if f % 2 == 0 {
                    write_png(&vids.join(format!("Annotations/{v}/{f:05}.png")), 1, 1, png::ColorType::Indexed, png::BitDepth::Eight, &[0]);
                }
            }
        }
        let set = video_set(&vids, None, 1).unwrap();
        assert_eq!(set.iter().map(|v| v.frames.len()).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(video_set(&vids, None, 2).unwrap()[0].frames.len(), 1);
        std::fs::remove_file(vids.join("JPEGImages/v1/00000.jpg")).unwrap();
        assert!(format!("{:#}", video_set(&vids, None, 1).unwrap_err()).contains("has no frame"));
    }
}
