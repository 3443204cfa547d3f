//! Labelled synthetic data for the tests that evaluate or track: videos from `mosic synth`,
//! and an images/ + masks/ set made of their frames.

use crate::common::*;
use std::path::Path;

/// Two synthetic videos (24 frames of 160 x 96, masks), numbered from `first`.
pub fn synth(out: &Path, first: u32) {
    synth_videos(out, 2, 24, (160, 96), &["--no-mp4", "--first-video", &first.to_string()]);
}

/// An images/ + masks/ set with train/val splits, from synthetic frames and instance masks.
pub fn image_set(root: &Path) {
    let data = root.join("synth");
    synth(&data, 50);
    std::fs::create_dir_all(root.join("set/images")).unwrap();
    std::fs::create_dir_all(root.join("set/masks")).unwrap();
    let (mut train, mut val) = (String::new(), String::new());
    for v in ["synth_0050", "synth_0051"] {
        for f in (0..24).step_by(3) {
            let name = format!("{v}_{f:05}");
            std::fs::copy(
                data.join(format!("JPEGImages/{v}/{f:05}.jpg")),
                root.join(format!("set/images/{name}.jpg")),
            )
            .unwrap();
            std::fs::copy(
                data.join(format!("Annotations/{v}/{f:05}.png")),
                root.join(format!("set/masks/{name}.png")),
            )
            .unwrap();
            let list = if v.ends_with('0') { &mut train } else { &mut val };
            list.push_str(&name);
            list.push('\n');
        }
    }
    std::fs::write(root.join("set/train.txt"), train).unwrap();
    std::fs::write(root.join("set/val.txt"), val).unwrap();
}

/// `mosic eval incontext` on `image_set`'s set at 448 px, a random tiny ViT, one seed and no
/// augmentation, spilling into `scratch` (the caller adds `--memory-gb`).
pub fn incontext_spill_args(set: &Path, scratch: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["eval", "incontext", "--data"].map(String::from).to_vec();
    a.push(set.display().to_string());
    a.extend(
        [
            "--size=448",
            "--random=0",
            "--preset=vit_tiny_test",
            "--fractions=1",
            "--seeds=3",
            "--train-split=train",
            "--memory-size=0",
            "--no-augment",
            "--scratch",
        ]
        .map(String::from),
    );
    a.push(scratch.display().to_string());
    a
}
