//! Labelled evaluation sets on disk: image sets (Pascal VOC, or plain `images/` + `masks/`)
//! and video sets with instance masks (DAVIS, YouTube-VOS, `mosic synth`), plus the label
//! maps themselves (palette or 8-bit grayscale PNGs, values read as indices, 255 = ignore).

/// Ground-truth label of pixels that are not evaluated (object boundaries in Pascal VOC).
pub const IGNORE: u32 = 255;

pub mod augment;
pub mod dense;
pub mod store;

use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// A label map: `labels[y * width + x]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u8>,
}

impl Mask {
    /// Nearest-neighbour resize exactly as Pillow's `Image.resize(size, NEAREST)` (what the
    /// references' torchvision `Resize(..., NEAREST)` does to PIL masks): source indices from
    /// [`pillow_nearest_index`] per axis; labels are never blended.
    pub fn resize_nearest(&self, width: usize, height: usize) -> Mask {
        let ys = pillow_nearest_index(self.height, height);
        let xs = pillow_nearest_index(self.width, width);
        let labels = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| self.labels[y * self.width + x]))
            .collect();
        Mask { width, height, labels }
    }

    /// Nearest-neighbour resize as PyTorch's `F.interpolate(mode="nearest")`: source index
    /// `floor(dst * in / out)` (not pixel centres), what the references use between tensors.
    pub fn resize_nearest_torch(&self, width: usize, height: usize) -> Mask {
        let ys = torch_nearest_index(self.height, height);
        let xs = torch_nearest_index(self.width, width);
        let labels = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| self.labels[y * self.width + x]))
            .collect();
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

/// Source indices of Pillow's NEAREST resize from `inp` to `out` samples, bit for bit as
/// `ImagingScaleAffine` (libImaging/Geometry.c, reached from `Image.resize` through `_resize`
/// and `ImagingTransform`) computes them: in `double`, the step `a = inp / out`, a coordinate
/// starting at `0 + a * 0.5` and advanced by `xo += a` per output sample (accumulated, not
/// `(x + 0.5) * a`), truncated towards zero. Where the exact coordinate is a whole number the
/// accumulated one can fall just below it and pick the lower pixel, as Pillow does. (Pillow
/// fills a coordinate at or past `inp` with 0; the accumulation error is far too small for
/// that to happen at image sizes, and the index is clamped instead.)
pub fn pillow_nearest_index(inp: usize, out: usize) -> Vec<usize> {
    // `box` is float32 in `_resize`; whole sides below 2^24 convert exactly.
    let a = inp as f64 / out as f64;
    let mut xo = 0.0 + a * 0.5;
    (0..out)
        .map(|_| {
            let i = (xo as usize).min(inp - 1);
            xo += a;
            i
        })
        .collect()
}

/// Reads a label PNG: palette indices of an indexed PNG (VOC, DAVIS, YouTube-VOS) or the
/// values of an 8-bit (or lower) grayscale PNG. Colour-coded RGB masks are refused: their
/// colours would have to be mapped to classes by a palette we do not have.
pub fn read_mask(path: &Path) -> Result<Mask> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open mask {}", path.display()))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader =
        dec.read_info().with_context(|| format!("{}: not a readable PNG", path.display()))?;
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
    let frame = reader
        .next_frame(&mut buf)
        .with_context(|| format!("{}: truncated or corrupt PNG", path.display()))?;
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

/// Raw mask value -> label (a 256-entry table); None: values are labels.
pub type LabelMap = Option<std::sync::Arc<[u8; 256]>>;

fn apply(map: &LabelMap, mut m: Mask) -> Mask {
    if let Some(t) = map {
        m.labels.iter_mut().for_each(|l| *l = t[*l as usize]);
    }
    m
}

/// An image and its label map.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledImage {
    pub name: String,
    pub image: PathBuf,
    pub mask: PathBuf,
    /// How the dataset's mask values become labels (ADE20K, COCO); None for VOC and plain sets.
    pub labels: LabelMap,
}

impl LabelledImage {
    /// The mask with the dataset's labels (255 = ignore).
    pub fn read_mask(&self) -> Result<Mask> {
        Ok(apply(&self.labels, read_mask(&self.mask)?))
    }
}

/// What a dataset layout implies for the protocols.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SetInfo {
    /// e.g. "Pascal VOC 2012 + SBD (trainaug)", "ADE20K (ADEChallengeData2016)".
    pub layout: String,
    /// Number of classes the layout defines (None: from the masks).
    pub classes: Option<usize>,
}

const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && is_image(p)
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn find_image(dir: &Path, stem: &str) -> Option<PathBuf> {
    IMAGE_EXTS
        .iter()
        .flat_map(|e| [e.to_string(), e.to_uppercase()])
        .map(|e| dir.join(format!("{stem}.{e}")))
        .find(|p| p.is_file())
}

fn read_split(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read split file {}", path.display()))?;
    let names: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(!names.is_empty(), "split file {} lists no images", path.display());
    Ok(names)
}

/// The labelled images of `root` for `split` (see [`open_image_set`]).
pub fn image_set(root: &Path, split: Option<&str>) -> Result<Vec<LabelledImage>> {
    Ok(open_image_set(root, split)?.0)
}

fn pairs(
    images: &Path,
    masks: &Path,
    names: Vec<String>,
    root: &Path,
    labels: &LabelMap,
) -> Result<Vec<LabelledImage>> {
    ensure!(images.is_dir(), "{}: no image folder {}", root.display(), images.display());
    ensure!(masks.is_dir(), "{}: no mask folder {}", root.display(), masks.display());
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let image = find_image(images, &name)
            .with_context(|| format!("{}: no image {name}", images.display()))?;
        let mask = masks.join(format!("{name}.png"));
        ensure!(mask.is_file(), "{}: image {name} has no mask {}", root.display(), mask.display());
        out.push(LabelledImage { name, image, mask, labels: labels.clone() });
    }
    ensure!(!out.is_empty(), "{}: no labelled images", root.display());
    Ok(out)
}

fn stems(dir: &Path) -> Result<Vec<String>> {
    Ok(sorted_files(dir)?
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect())
}

/// The labelled images of `root` for `split`, and what the layout implies. Layouts:
/// - Pascal VOC 2012 (`VOC2012/`): `JPEGImages/`, `SegmentationClass/`,
///   `ImageSets/Segmentation/<split>.txt` (default `val`); split `trainaug` reads the SBD
///   masks in `SegmentationClassAug/` and the list `ImageSets/Segmentation/trainaug.txt` (or
///   `trainaug.txt` beside the folders). 21 classes, 255 ignored.
/// - VOC as Leopart and Hummingbird prepare it (`VOCSegmentation/`): `images/`,
///   `SegmentationClass/` (val), `SegmentationClassAug/` (train, trainaug), `sets/<split>.txt`.
/// - ADE20K (`ADEChallengeData2016/`): `images/{training,validation}/`,
///   `annotations/{training,validation}/`; split `train`/`training` or `val`/`validation`
///   (default). Label 0 ("other") is ignored: 1..=150 become 0..150 (150 classes).
/// - COCO as Leopart prepares it (the root holding `coco/images/{train,val}2017/` and
///   `annotations/`): COCO-Things from the panoptic semantic maps
///   (`annotations/panoptic_annotations/semantic_segmentation_<split>2017/`, categories from
///   `panoptic_val2017.json`: 12 super-categories, stuff ignored), COCO-Stuff from
///   `annotations/annotations/stuff_annotations/stuff_<split>2017_pixelmaps/` (categories
///   from `stuff_val2017.json`: 15 super-categories, things and "other" ignored); choose with
///   `split` `stuff-val`, `things-train`, ... (default `things-val`).
/// - Plain: `images/<name>.<ext>` and `masks/<name>.png`; with a split, `<split>.txt` in root
///   lists the names, else every image is used.
pub fn open_image_set(root: &Path, split: Option<&str>) -> Result<(Vec<LabelledImage>, SetInfo)> {
    ensure!(root.is_dir(), "{}: no such directory", root.display());
    if root.join("JPEGImages").is_dir() && root.join("SegmentationClass").is_dir() {
        let split = split.unwrap_or("val");
        let sets = root.join("ImageSets/Segmentation");
        let (masks, list, layout) = if split == "trainaug" {
            let aug = root.join("SegmentationClassAug");
            ensure!(
                aug.is_dir(),
                "{}: split trainaug needs the SBD masks in {} (SegmentationClassAug)",
                root.display(),
                aug.display()
            );
            let list = [sets.join("trainaug.txt"), root.join("trainaug.txt")]
                .into_iter()
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "{}: split trainaug needs {} or {}",
                        root.display(),
                        sets.join("trainaug.txt").display(),
                        root.join("trainaug.txt").display()
                    )
                })?;
            (aug, list, "Pascal VOC 2012 + SBD (trainaug)")
        } else {
            (root.join("SegmentationClass"), sets.join(format!("{split}.txt")), "Pascal VOC 2012")
        };
        let items = pairs(&root.join("JPEGImages"), &masks, read_split(&list)?, root, &None)?;
        return Ok((items, SetInfo { layout: format!("{layout}, {split}"), classes: Some(21) }));
    }
    if root.join("images").is_dir()
        && root.join("sets").is_dir()
        && root.join("SegmentationClass").is_dir()
    {
        let split = split.unwrap_or("val");
        let masks = if split == "val" {
            root.join("SegmentationClass")
        } else {
            root.join("SegmentationClassAug")
        };
        let items = pairs(
            &root.join("images"),
            &masks,
            read_split(&root.join("sets").join(format!("{split}.txt")))?,
            root,
            &None,
        )?;
        return Ok((
            items,
            SetInfo { layout: format!("Pascal VOC (VOCSegmentation), {split}"), classes: Some(21) },
        ));
    }
    if root.join("images/validation").is_dir() || root.join("images/training").is_dir() {
        let dir = match split.unwrap_or("val") {
            "train" | "training" => "training",
            "val" | "validation" => "validation",
            other => bail!("{}: ADE20K has splits train and val, not {other}", root.display()),
        };
        let mut t = [255u8; 256];
        for (v, l) in t.iter_mut().enumerate().skip(1).take(150) {
            *l = (v - 1) as u8;
        }
        let images = root.join("images").join(dir);
        let items = pairs(
            &images,
            &root.join("annotations").join(dir),
            stems(&images)?,
            root,
            &Some(std::sync::Arc::new(t)),
        )?;
        return Ok((
            items,
            SetInfo {
                layout: format!("ADE20K (ADEChallengeData2016), {dir}, label 0 ignored"),
                classes: Some(150),
            },
        ));
    }
    if root.join("coco/images").is_dir() && root.join("annotations").is_dir() {
        let split = split.unwrap_or("things-val");
        let (kind, part) = split.split_once('-').with_context(|| {
            format!(
                "{}: COCO splits are things-train, things-val, stuff-train, stuff-val",
                root.display()
            )
        })?;
        ensure!(
            matches!(part, "train" | "val"),
            "{}: COCO split {split}: use train or val",
            root.display()
        );
        let (maps, table) = match kind {
            "things" => (
                root.join(format!(
                    "annotations/panoptic_annotations/semantic_segmentation_{part}2017"
                )),
                coco_things(&root.join("annotations/panoptic_annotations/panoptic_val2017.json"))?,
            ),
            "stuff" => (
                root.join(format!(
                    "annotations/annotations/stuff_annotations/stuff_{part}2017_pixelmaps"
                )),
                coco_stuff(
                    &root.join("annotations/annotations/stuff_annotations/stuff_val2017.json"),
                )?,
            ),
            other => {
                bail!("{}: COCO split {split}: {other} is neither things nor stuff", root.display())
            }
        };
        let images = root.join(format!("coco/images/{part}2017"));
        let classes = if kind == "things" { 12 } else { 15 };
        let items =
            pairs(&images, &maps, stems(&images)?, root, &Some(std::sync::Arc::new(table)))?;
        return Ok((
            items,
            SetInfo {
                layout: format!(
                    "COCO-{} (Leopart), {part}2017",
                    if kind == "things" { "Things" } else { "Stuff" }
                ),
                classes: Some(classes),
            },
        ));
    }
    if root.join("images").is_dir() && root.join("masks").is_dir() {
        let names = match split {
            Some(s) => read_split(&root.join(format!("{s}.txt")))?,
            None => stems(&root.join("images"))?,
        };
        let items = pairs(&root.join("images"), &root.join("masks"), names, root, &None)?;
        return Ok((
            items,
            SetInfo {
                layout: format!(
                    "images/ + masks/{}",
                    split.map(|s| format!(", {s}")).unwrap_or_default()
                ),
                classes: None,
            },
        ));
    }
    bail!(
        "{}: not a labelled image set (expected Pascal VOC's JPEGImages/ + SegmentationClass/, VOCSegmentation's images/ + sets/, \
         ADE20K's images/validation/, COCO's coco/images/ + annotations/, or images/ + masks/)",
        root.display()
    )
}

/// COCO categories of a JSON file: (id, supercategory, isthing).
fn coco_categories(json: &Path) -> Result<Vec<(usize, String, Option<bool>)>> {
    let text = std::fs::read_to_string(json)
        .with_context(|| format!("COCO needs its categories in {}", json.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", json.display()))?;
    let cats = doc["categories"]
        .as_array()
        .with_context(|| format!("{}: no categories", json.display()))?;
    cats.iter()
        .map(|c| {
            let id = c["id"]
                .as_u64()
                .with_context(|| format!("{}: category without id", json.display()))?
                as usize;
            let sup = c["supercategory"].as_str().with_context(|| {
                format!("{}: category {id} without supercategory", json.display())
            })?;
            ensure!(id < 256, "{}: category id {id} does not fit a label PNG", json.display());
            Ok((id, sup.to_string(), c["isthing"].as_u64().map(|v| v == 1)))
        })
        .collect()
}

/// Leopart's COCO-Things map: thing categories to their sorted super-category index, stuff
/// and unlabelled (0, read as 200, a stuff id) to 255.
fn coco_things(json: &Path) -> Result<[u8; 256]> {
    let cats = coco_categories(json)?;
    let mut sups: Vec<&String> = cats.iter().filter(|c| c.2 == Some(true)).map(|c| &c.1).collect();
    sups.sort();
    sups.dedup();
    let mut t = [255u8; 256];
    for (id, sup, thing) in &cats {
        if *thing == Some(true) {
            t[*id] = sups.iter().position(|s| *s == sup).unwrap() as u8;
        }
    }
    t[0] = t[200];
    Ok(t)
}

/// Leopart's COCO-Stuff map: categories to their sorted super-category index, "other" to
/// 255; 0 (things) is read as 183 ("other").
fn coco_stuff(json: &Path) -> Result<[u8; 256]> {
    let cats = coco_categories(json)?;
    let mut sups: Vec<&String> =
        cats.iter().map(|c| &c.1).filter(|s| s.as_str() != "other").collect();
    sups.sort();
    sups.dedup();
    let mut t = [255u8; 256];
    for (id, sup, _) in &cats {
        if sup != "other" {
            t[*id] = sups.iter().position(|s| *s == sup).unwrap() as u8;
        }
    }
    t[0] = t[183];
    Ok(t)
}

/// Hummingbird's published training subsets (open-hummingbird-eval's `file_sets/<dataset>/`,
/// given by path): `1_div_<n>/<name>_<n>_<seed>.txt` for the fraction 1/n, `full/<name>.txt`
/// for n = 1 (seed ignored). Returns the image names.
pub fn hummingbird_file_set(dir: &Path, denominator: usize, seed: u64) -> Result<Vec<String>> {
    ensure!(
        dir.is_dir(),
        "{}: no such directory (the file_sets/<dataset> folder of open-hummingbird-eval)",
        dir.display()
    );
    let (sub, suffix) = if denominator <= 1 {
        (dir.join("full"), None)
    } else {
        (dir.join(format!("1_div_{denominator}")), Some(format!("_{denominator}_{seed}")))
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sub)
        .with_context(|| {
            format!("{}: no {} for the fraction 1/{denominator}", dir.display(), sub.display())
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .filter(|p| {
            suffix.as_ref().is_none_or(|s| {
                p.file_stem().is_some_and(|n| n.to_string_lossy().ends_with(s.as_str()))
            })
        })
        .collect();
    files.sort();
    let file = files.first().with_context(|| match &suffix {
        Some(s) => {
            format!("{}: no list *{s}.txt (fraction 1/{denominator}, seed {seed})", sub.display())
        }
        None => format!("{}: no list *.txt", sub.display()),
    })?;
    read_split(file)
}

/// One video's annotated frames, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledVideo {
    pub name: String,
    /// (frame image, instance mask); only frames that have a mask.
    pub frames: Vec<(PathBuf, PathBuf)>,
    /// Instance id -> category id, from YouTube-VOS's `meta.json` (TimeT's mapping: categories
    /// sorted by name over all videos, numbered from 1, 0 = background); None keeps the ids.
    pub labels: LabelMap,
}

impl LabelledVideo {
    /// Mask `i` with the set's labels.
    pub fn read_mask(&self, i: usize) -> Result<Mask> {
        Ok(apply(&self.labels, read_mask(&self.frames[i].1)?))
    }
}

/// Per video, the instance -> category table of a YouTube-VOS `meta.json`.
fn ytvos_categories(meta: &Path) -> Result<std::collections::BTreeMap<String, [u8; 256]>> {
    let text =
        std::fs::read_to_string(meta).with_context(|| format!("cannot read {}", meta.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", meta.display()))?;
    let videos =
        doc["videos"].as_object().with_context(|| format!("{}: no \"videos\"", meta.display()))?;
    let mut names: Vec<&str> = videos
        .values()
        .filter_map(|v| v["objects"].as_object())
        .flat_map(|o| o.values().filter_map(|x| x["category"].as_str()))
        .collect();
    names.sort();
    names.dedup();
    ensure!(
        names.len() < 255,
        "{}: {} categories do not fit label values",
        meta.display(),
        names.len()
    );
    let mut out = std::collections::BTreeMap::new();
    for (video, v) in videos {
        let mut t = [0u8; 256];
        t[255] = 255;
        if let Some(objs) = v["objects"].as_object() {
            for (id, o) in objs {
                let id: usize = id
                    .parse()
                    .with_context(|| format!("{}: object id {id} of {video}", meta.display()))?;
                let cat = o["category"].as_str().with_context(|| {
                    format!("{}: object {id} of {video} has no category", meta.display())
                })?;
                ensure!(
                    id < 255,
                    "{}: object id {id} of {video} does not fit a label PNG",
                    meta.display()
                );
                t[id] = 1 + names.iter().position(|n| *n == cat).unwrap() as u8;
            }
        }
        out.insert(video.clone(), t);
    }
    Ok(out)
}

/// Videos with instance masks under `root`:
/// - DAVIS: `JPEGImages/480p/<video>/`, `Annotations/480p/<video>/`, split list
///   `ImageSets/2017/<split>.txt` when a split is given;
/// - YouTube-VOS (`train/`, `valid/`) and `mosic synth`: `JPEGImages/<video>/`, `Annotations/<video>/`;
///   a split is then a file `<split>.txt` in root naming videos (e.g. the fixed 20% of train);
///   with a `meta.json` beside them (YouTube-VOS train), instance ids become category ids.
///
/// Frames without a mask (YouTube-VOS annotates every 5th) are skipped; `every` keeps every
/// n-th annotated frame.
pub fn video_set(root: &Path, split: Option<&str>, every: usize) -> Result<Vec<LabelledVideo>> {
    let (frames_root, masks_root, split_file) = if root.join("JPEGImages/480p").is_dir() {
        (
            root.join("JPEGImages/480p"),
            root.join("Annotations/480p"),
            split.map(|s| root.join(format!("ImageSets/2017/{s}.txt"))),
        )
    } else if root.join("JPEGImages").is_dir() && root.join("Annotations").is_dir() {
        (
            root.join("JPEGImages"),
            root.join("Annotations"),
            split.map(|s| root.join(format!("{s}.txt"))),
        )
    } else {
        bail!(
            "{}: not a video set with masks (expected JPEGImages/ and Annotations/)",
            root.display()
        );
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
    let meta = root.join("meta.json");
    let categories = if meta.is_file() { Some(ytvos_categories(&meta)?) } else { None };
    let mut out = Vec::new();
    for name in names {
        let (fdir, mdir) = (frames_root.join(&name), masks_root.join(&name));
        let labels = match &categories {
            Some(c) => Some(std::sync::Arc::new(*c.get(&name).with_context(|| {
                format!("{}: video {name} is not in meta.json", root.display())
            })?)),
            None => None,
        };
        let masks = sorted_files(&mdir)?;
        let mut frames = Vec::new();
        for m in
            masks.iter().filter(|m| m.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        {
            let stem = m.file_stem().unwrap_or_default().to_string_lossy();
            let img = find_image(&fdir, &stem).with_context(|| {
                format!("{}: mask {} has no frame", fdir.display(), m.display())
            })?;
            frames.push((img, m.clone()));
        }
        ensure!(!frames.is_empty(), "{}: no annotated frames", mdir.display());
        let frames = frames.into_iter().step_by(every.max(1)).collect();
        out.push(LabelledVideo { name, frames, labels });
    }
    ensure!(!out.is_empty(), "{}: no videos", root.display());
    Ok(out)
}

/// An image and its mask: the mask nearest-resized (PIL) to `size` and then, if `mask_size`
/// differs, with PyTorch's nearest (the references' two steps).
pub fn load_item(it: &LabelledImage, size: usize, mask_size: usize) -> Result<(RgbImage, Mask)> {
    Ok((read_image(&it.image)?, load_mask(it, size, mask_size)?))
}

/// The mask of [`load_item`] alone.
pub fn load_mask(it: &LabelledImage, size: usize, mask_size: usize) -> Result<Mask> {
    let m = it.read_mask()?.resize_nearest(size, size);
    Ok(if mask_size == size { m } else { m.resize_nearest_torch(mask_size, mask_size) })
}

/// [`load_item`] of every item, decoded in parallel.
pub fn load_items(
    items: &[LabelledImage],
    size: usize,
    mask_size: usize,
) -> Result<(Vec<RgbImage>, Vec<Mask>)> {
    use rayon::prelude::*;
    Ok(items
        .par_iter()
        .map(|it| load_item(it, size, mask_size))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip())
}

/// Reads an image file (JPEG, PNG, ...) as RGB, naming the file on failure.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read image {}", path.display()))?
        .to_rgb8())
}

/// Classes: `given`, else the layout's, else the largest label + 1; a label beyond them is
/// refused, naming its file.
pub fn resolve_classes(
    given: Option<usize>,
    info: &SetInfo,
    masks: &[&Mask],
    names: &[&str],
) -> Result<usize> {
    let classes = given.or(info.classes).unwrap_or_else(|| num_classes(masks.iter().copied()));
    for (m, n) in masks.iter().zip(names) {
        if let Some(l) = m.labels.iter().copied().find(|&l| l != 255 && l as usize >= classes) {
            bail!("{n}: label {l} is not below the {classes} classes (set --classes)");
        }
    }
    Ok(classes)
}

/// `n` indices spread evenly over `0..len`.
pub fn spread(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    (0..n).map(|i| (i * len + len / 2) / n).collect()
}

/// Number of classes of a label set: largest label (255 excluded) + 1.
pub fn num_classes<'a>(masks: impl IntoIterator<Item = &'a Mask>) -> usize {
    masks.into_iter().filter_map(Mask::max_label).max().map_or(1, |m| m as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(
        path: &Path,
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) {
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

    fn resize_fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/eval").join(name)
    }

    /// Every (input -> output) side of tools/goldens/make_resize_golden.py: Pillow's own choice of
    /// source column and row, matched exactly, through both axes of `resize_nearest`.
    #[test]
    fn nearest_resize_matches_pillow_per_axis() {
        let text = std::fs::read_to_string(resize_fixture("resize_nearest.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let pairs = doc["pairs"].as_array().unwrap();
        assert!(pairs.len() > 100);
        // The pixel-centre rule computed exactly, for the count of what it got wrong.
        let exact =
            |n: usize, m: usize, x: usize| ((x as f64 + 0.5) * n as f64 / m as f64) as usize;
        let mut differs = 0;
        for p in pairs {
            let (n, m) = (p["in"].as_u64().unwrap() as usize, p["out"].as_u64().unwrap() as usize);
            let want: Vec<usize> = p["index"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(want.len(), m);
            assert_eq!(pillow_nearest_index(n, m), want, "{n} -> {m}");
            differs += want.iter().enumerate().filter(|&(x, &i)| exact(n, m, x) != i).count();
            // Labels x mod 251 tell neighbouring source indices apart.
            let labels: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let want_labels: Vec<u8> = want.iter().map(|&i| (i % 251) as u8).collect();
            let row = Mask { width: n, height: 1, labels: labels.clone() };
            assert_eq!(row.resize_nearest(m, 1).labels, want_labels, "columns {n} -> {m}");
            let col = Mask { width: 1, height: n, labels };
            assert_eq!(col.resize_nearest(1, m).labels, want_labels, "rows {n} -> {m}");
        }
        // Pillow does depart from the exact rule (e.g. 28 of 448 columns from 512).
        assert!(differs > 0);
    }

    /// A whole label image resized by Pillow (NEAREST) to several sizes.
    #[test]
    fn nearest_resize_matches_pillow_2d() {
        let text = std::fs::read_to_string(resize_fixture("resize_nearest.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let src = read_mask(&resize_fixture(doc["input"]["file"].as_str().unwrap())).unwrap();
        let (sw, sh) = (doc["input"]["width"].as_u64(), doc["input"]["height"].as_u64());
        assert_eq!((Some(src.width as u64), Some(src.height as u64)), (sw, sh));
        let images = doc["images"].as_array().unwrap();
        assert!(!images.is_empty());
        for im in images {
            let want = read_mask(&resize_fixture(im["file"].as_str().unwrap())).unwrap();
            let (w, h) =
                (im["width"].as_u64().unwrap() as usize, im["height"].as_u64().unwrap() as usize);
            assert_eq!((want.width, want.height), (w, h));
            let got = src.resize_nearest(w, h);
            let wrong = got.labels.iter().zip(&want.labels).filter(|(a, b)| a != b).count();
            assert_eq!(wrong, 0, "{w}x{h}: {wrong} pixels differ from Pillow");
        }
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
            write_png(
                &voc.join(format!("SegmentationClass/{n}.png")),
                1,
                1,
                png::ColorType::Indexed,
                png::BitDepth::Eight,
                &[1],
            );
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
        write_png(
            &plain.join("masks/x.png"),
            1,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &[0],
        );
        assert_eq!(image_set(&plain, None).unwrap().len(), 1);

        let vids = dir.path().join("vids");
        for (v, n) in [("v0", 4), ("v1", 2)] {
            std::fs::create_dir_all(vids.join("JPEGImages").join(v)).unwrap();
            std::fs::create_dir_all(vids.join("Annotations").join(v)).unwrap();
            for f in 0..n {
                std::fs::write(vids.join(format!("JPEGImages/{v}/{f:05}.jpg")), b"x").unwrap();
                // Sparse annotation: every other frame has a mask.
                if f % 2 == 0 {
                    write_png(
                        &vids.join(format!("Annotations/{v}/{f:05}.png")),
                        1,
                        1,
                        png::ColorType::Indexed,
                        png::BitDepth::Eight,
                        &[0],
                    );
                }
            }
        }
        let set = video_set(&vids, None, 1).unwrap();
        assert_eq!(set.iter().map(|v| v.frames.len()).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(video_set(&vids, None, 2).unwrap()[0].frames.len(), 1);
        std::fs::remove_file(vids.join("JPEGImages/v1/00000.jpg")).unwrap();
        assert!(format!("{:#}", video_set(&vids, None, 1).unwrap_err()).contains("has no frame"));
    }

    fn gray(path: &Path, w: u32, h: u32, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_png(path, w, h, png::ColorType::Grayscale, png::BitDepth::Eight, data);
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn voc_trainaug_ade20k_and_coco_layouts() {
        let dir = tempfile::tempdir().unwrap();
        // VOC 2012 without SBD: trainaug is refused naming what is missing.
        let voc = dir.path().join("VOC2012");
        touch(&voc.join("JPEGImages/a.jpg"));
        gray(&voc.join("SegmentationClass/a.png"), 1, 1, &[1]);
        std::fs::create_dir_all(voc.join("ImageSets/Segmentation")).unwrap();
        let e = format!("{:#}", open_image_set(&voc, Some("trainaug")).unwrap_err());
        assert!(e.contains("SegmentationClassAug"), "{e}");
        gray(&voc.join("SegmentationClassAug/a.png"), 1, 1, &[2]);
        let e = format!("{:#}", open_image_set(&voc, Some("trainaug")).unwrap_err());
        assert!(e.contains("trainaug.txt"), "{e}");
        std::fs::write(voc.join("ImageSets/Segmentation/trainaug.txt"), "a\n").unwrap();
        let (items, info) = open_image_set(&voc, Some("trainaug")).unwrap();
        assert_eq!(items[0].read_mask().unwrap().labels, vec![2]);
        assert_eq!(info.classes, Some(21));
        // VOCSegmentation (Leopart / Hummingbird): val from SegmentationClass, train from the Aug masks.
        let vs = dir.path().join("VOCSegmentation");
        touch(&vs.join("images/a.jpg"));
        gray(&vs.join("SegmentationClass/a.png"), 1, 1, &[3]);
        gray(&vs.join("SegmentationClassAug/a.png"), 1, 1, &[4]);
        touch(&vs.join("sets/x"));
        std::fs::write(vs.join("sets/val.txt"), "a\n").unwrap();
        std::fs::write(vs.join("sets/trainaug.txt"), "a\n").unwrap();
        assert_eq!(open_image_set(&vs, None).unwrap().0[0].read_mask().unwrap().labels, vec![3]);
        assert_eq!(
            open_image_set(&vs, Some("trainaug")).unwrap().0[0].read_mask().unwrap().labels,
            vec![4]
        );
        // ADE20K: 0 ignored, 1..=150 shifted down.
        let ade = dir.path().join("ADEChallengeData2016");
        touch(&ade.join("images/validation/x.jpg"));
        gray(&ade.join("annotations/validation/x.png"), 3, 1, &[0, 1, 150]);
        let (items, info) = open_image_set(&ade, None).unwrap();
        assert_eq!(items[0].read_mask().unwrap().labels, vec![255, 0, 149]);
        assert_eq!(info.classes, Some(150));
        assert!(
            format!("{:#}", open_image_set(&ade, Some("test")).unwrap_err()).contains("not test")
        );
        // COCO-Things as Leopart: thing super-categories sorted, stuff and unlabelled ignored.
        let coco = dir.path().join("cocoroot");
        touch(&coco.join("coco/images/val2017/i.jpg"));
        let cats = r#"{"categories":[{"id":1,"supercategory":"person","isthing":1},{"id":3,"supercategory":"animal","isthing":1},{"id":200,"supercategory":"wall","isthing":0}]}"#;
        touch(&coco.join("annotations/panoptic_annotations/panoptic_val2017.json"));
        std::fs::write(coco.join("annotations/panoptic_annotations/panoptic_val2017.json"), cats)
            .unwrap();
        gray(
            &coco.join("annotations/panoptic_annotations/semantic_segmentation_val2017/i.png"),
            4,
            1,
            &[1, 3, 200, 0],
        );
        let (items, info) = open_image_set(&coco, None).unwrap();
        assert_eq!(items[0].read_mask().unwrap().labels, vec![1, 0, 255, 255]);
        assert_eq!(info.classes, Some(12));
        assert!(format!("{:#}", open_image_set(&coco, Some("stuff-val")).unwrap_err())
            .contains("stuff_val2017.json"));
    }

    #[test]
    fn youtube_vos_categories_and_hummingbird_lists() {
        let dir = tempfile::tempdir().unwrap();
        let yt = dir.path().join("train");
        for v in ["v1", "v2"] {
            touch(&yt.join(format!("JPEGImages/{v}/00000.jpg")));
            gray(&yt.join(format!("Annotations/{v}/00000.png")), 3, 1, &[0, 1, 2]);
        }
        let meta = r#"{"videos":{"v1":{"objects":{"1":{"category":"zebra"},"2":{"category":"ape"}}},"v2":{"objects":{"1":{"category":"ape"},"2":{"category":"cat"}}}}}"#;
        std::fs::write(yt.join("meta.json"), meta).unwrap();
        let set = video_set(&yt, None, 1).unwrap();
        // Sorted categories: ape 1, cat 2, zebra 3.
        assert_eq!(set[0].read_mask(0).unwrap().labels, vec![0, 3, 1]);
        assert_eq!(set[1].read_mask(0).unwrap().labels, vec![0, 1, 2]);

        let fs = dir.path().join("file_sets/voc");
        touch(&fs.join("1_div_8/trainaug_8_42.txt"));
        std::fs::write(fs.join("1_div_8/trainaug_8_42.txt"), "b\na\n").unwrap();
        touch(&fs.join("full/trainaug.txt"));
        std::fs::write(fs.join("full/trainaug.txt"), "a\nb\nc\n").unwrap();
        assert_eq!(hummingbird_file_set(&fs, 8, 42).unwrap(), ["b", "a"]);
        assert_eq!(hummingbird_file_set(&fs, 1, 0).unwrap().len(), 3);
        let e = format!("{:#}", hummingbird_file_set(&fs, 8, 400).unwrap_err());
        assert!(e.contains("_8_400"), "{e}");
        assert!(
            format!("{:#}", hummingbird_file_set(&fs, 64, 42).unwrap_err()).contains("1_div_64")
        );
    }
}
