//! Fixtures and comparisons the trainer's golden tests share.

use crate::model::VitConfig;

/// The backend the goldens run on: ndarray, or in a build with `tch` libtorch's CPU device
/// (the libtorch that runs on GPUs, here with its CPU kernels).
#[cfg(not(feature = "tch"))]
pub type Golden = burn::backend::NdArray<f32>;
#[cfg(feature = "tch")]
pub type Golden = burn::backend::LibTorch<f32>;

/// A CPU backend with bfloat16 tensors: Flex, or libtorch's CPU device with `tch`.
#[cfg(not(feature = "tch"))]
pub type Bf16 = burn::backend::Flex;
#[cfg(feature = "tch")]
pub type Bf16 = burn::backend::LibTorch<f32>;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use mosic::tensors::HostTensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `--set` values of the tiny run that the multi-worker, MPI and fault tests train: 56 px,
/// batch 4 of 3 frames, a 3 x 3 grid, every clip masked at 0.25 (shards of
/// `shards::spec(3, 6, 56)`). Each test adds its `data.shards` and `run.*`.
pub const TINY_RUN: &[&str] = &[
    "model.preset=vit_tiny_test",
    "model.img_size=56",
    "model.trainable_blocks=2",
    "head.hidden=[32]",
    "head.out_dim=16",
    "head.prototypes=8",
    "data.batch_size=4",
    "data.frames=3",
    "data.grid_size=3",
    "data.workers=1",
    "data.shuffle_buffer=4",
    "objective.mask_ratio=0.25",
];

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vit")
}

pub fn st(path: &Path) -> HashMap<String, HostTensor> {
    mosic::tensors::read_safetensors(path).unwrap().tensors.into_iter().collect()
}

pub fn to_tensor<BB: Backend, const D: usize>(t: &HostTensor) -> Tensor<BB, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), &Default::default())
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn host3<BB: Backend>(t: Tensor<BB, 3>) -> (Vec<usize>, Vec<f32>) {
    (t.dims().to_vec(), t.into_data().into_vec::<f32>().unwrap())
}

#[derive(serde::Deserialize)]
pub struct Case {
    pub case: String,
    pub timm_model: String,
    pub weights: String,
    pub input: String,
    pub config: VitConfig,
    pub state_dict: Vec<(String, Vec<usize>)>,
}

pub fn cases() -> Vec<(PathBuf, Case)> {
    let mut v: Vec<(PathBuf, Case)> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| {
            let dir = e.unwrap().path();
            let json = dir.join("case.json");
            json.exists().then(|| {
                (dir.clone(), serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap())
            })
        })
        .collect();
    v.sort_by(|a, b| a.1.case.cmp(&b.1.case));
    assert!(v.len() >= 6, "expected the generated fixture cases in {}", fixtures().display());
    v
}

/// Shards of synthetic clips the loader and training tests read: a white dot per clip whose
/// stored point follows it.
pub mod shards {
    use mosic::{Clip, ShardSpec};
    use std::path::Path;

    pub use mosic::testing::spec;

    /// The stored point clip i's dot starts on: an interior grid point (the first on small grids).
    pub fn dot_point(i: u32, g: u32) -> usize {
        if g < 3 {
            return 0;
        }
        let inner = g - 2;
        ((1 + i % inner) * g + 1 + (i / inner) % inner) as usize
    }

    /// Centre of clip i's 5 x 5 white dot in frame k: it starts on its stored point and moves
    /// right and down by whole pixels.
    pub fn dot(i: u32, k: u32, spec: &ShardSpec) -> [f32; 2] {
        let q = mosic::grid_points(spec.grid_size, spec.width, spec.height)
            [dot_point(i, spec.grid_size)];
        [q[0] + 2.0 * k as f32, q[1] + k as f32]
    }

    /// Clip i of video `video`: a white dot on a dark background that tells clips apart; the
    /// dot's stored point tracks it, the others stay on the grid, every third one hidden.
    pub fn clip_of(i: u32, video: u32, index: u32, spec: &ShardSpec) -> Clip {
        let t = spec.t();
        let size = spec.width;
        let grid = mosic::grid_points(spec.grid_size, spec.width, spec.height);
        let p0 = dot_point(i, spec.grid_size);
        let (mut frames, mut tracks, mut visibility) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..t as u32 {
            let d = dot(i, k, spec);
            let img = image::RgbImage::from_fn(size, size, |x, y| {
                let on = (x as f32 - d[0]).abs() <= 2.0 && (y as f32 - d[1]).abs() <= 2.0;
                if on {
                    image::Rgb([255, 255, 255])
                } else {
                    image::Rgb([(20 + 3 * i) as u8, 30, (x / 4) as u8])
                }
            });
            frames.push(mosic::imageio::encode_jpeg(&img, 95).unwrap());
            for (p, &g) in grid.iter().enumerate() {
                tracks.push(if p == p0 { d } else { g });
                visibility.push(p == p0 || p % 3 != 0);
            }
        }
        Clip {
            dataset: "test".into(),
            video_id: format!("v{video:03}"),
            clip_index: index,
            frame_indices: (0..t as u32).map(|k| k + 100 * index).collect(),
            source_fps: 30.0,
            frames,
            queries: grid,
            tracks,
            visibility,
        }
    }

    pub fn clip(i: u32, spec: &ShardSpec) -> Clip {
        clip_of(i, i, 0, spec)
    }

    /// Writes shards of `rows[j]` dot clips each, `per_group` clips per row group.
    pub fn write_dir(dir: &Path, spec: &ShardSpec, rows: &[u32], per_group: usize) {
        mosic::testing::write_shards(dir, spec, rows, per_group, clip);
    }
}
