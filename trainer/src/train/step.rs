//! The MoSiC step: student and EMA teacher, what a batch needs on the host ([`StepInputs`]),
//! teacher scores, student scores, the loss, the update, and the checkpoint of a trainer.

use crate::config::SinkhornRows;
use crate::config::{Masking, Motion, ObjectiveConfig, TrainConfig, Trainable};
use crate::data::{Batch, LoaderState, MEAN, STD};
use crate::model::head::{ProjectionHead, Prototypes};
use crate::model::paths;
use crate::model::weights;
use crate::model::{Vit, VitConfig};
use crate::run::dir as rundir;
pub use crate::run::dir::StepStats;
use crate::train::comm::{Group, Op};
use crate::train::loss::{gather_points, mosic_loss, patch_of, point_taps, PointTaps};
use crate::train::params::{self, AdamW};
use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, Int, Tensor, TensorData};
use mosic::rng::SplitMix64;
use mosic::tensors::HostTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Backbone, projection head and prototypes: what the student trains and the teacher averages.
#[derive(Module, Debug)]
pub struct MosicModel<B: Backend> {
    pub backbone: Vit<B>,
    pub head: ProjectionHead<B>,
    pub prototypes: Prototypes<B>,
}

/// What a checkpoint holds besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: u64,
    pub loader: LoaderState,
    /// Ranks the run was split over: a resume over another number would sum the same
    /// gradients in another order, so it is refused.
    #[serde(default = "one")]
    pub world: usize,
}

fn one() -> usize {
    1
}

/// What one step needs from its batch besides the images, worked out on the host: where the
/// teacher and the student read each point, each entry's loss weight and the Sinkhorn rows.
#[derive(Clone, Debug)]
pub struct StepInputs {
    /// Patches each clip's student keeps (drop masking), ascending.
    pub keep: Option<Vec<Vec<usize>>>,
    /// `[B * grid^2]`, 1 where the student's patch is replaced by the mask token (token masking).
    pub token_mask: Option<Vec<i32>>,
    /// `B*T*N` points over the teacher's `[B*T*grid^2, D]` tokens.
    pub teacher: PointTaps,
    /// `B*N` frame-0 points over the student's `[B*L, D]` tokens (L kept patches or all).
    pub student: PointTaps,
    /// `[B, T, N]`.
    pub weights: Vec<f32>,
    /// `[B*T*N]`, 1 for the teacher rows Sinkhorn balances.
    pub rows: Vec<f32>,
    pub visible: f64,
    pub in_loss: f64,
    /// What the shares are made of: visible entries, entries in the loss, selected entries.
    pub counts: [f32; 3],
}

impl StepInputs {
    /// `masked[b]`: the patches hidden from clip b's student (same in every frame), or None
    /// without masking. Entries get weight `visibility`, and with drop masking only where the
    /// point's frame-0 patch (the student's feature of it) and its frame-t patch (the released
    /// code's `not_zero_rows`) were both kept.
    pub fn new(
        batch: &Batch,
        obj: &ObjectiveConfig,
        grid: usize,
        patch: f32,
        masked: Option<&[Vec<usize>]>,
    ) -> Self {
        let (b, t, n) = (batch.clips, batch.frames, batch.points);
        let hw = grid * grid;
        let (mut tracks, mut vis, mut inside) =
            (batch.tracks.clone(), batch.visibility.clone(), batch.inside.clone());
        if obj.motion == Motion::Identity {
            // No-motion ablation: every frame repeats frame 0's positions, visibility and crop test.
            for c in 0..b {
                for f in 1..t {
                    tracks.copy_within(c * t * n * 2..(c * t + 1) * n * 2, (c * t + f) * n * 2);
                    vis.copy_within(c * t * n..(c * t + 1) * n, (c * t + f) * n);
                    inside.copy_within(c * t * n..(c * t + 1) * n, (c * t + f) * n);
                }
            }
        }
        let pts: Vec<[f32; 2]> = tracks.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        let g = (grid, grid);
        let teacher = point_taps(&pts, g, patch, obj.teacher_sampling, |m, p| Some(m / n * hw + p));

        let drop = masked.filter(|_| obj.masking == Masking::Drop);
        let keep: Option<Vec<Vec<usize>>> = drop.map(|m| {
            m.iter().map(|hidden| (0..hw).filter(|p| !hidden.contains(p)).collect()).collect()
        });
        let kept =
            |c: usize, p: usize| keep.as_ref().is_none_or(|k| k[c].binary_search(&p).is_ok());
        let first: Vec<[f32; 2]> =
            (0..b).flat_map(|c| pts[c * t * n..c * t * n + n].iter().copied()).collect();
        let student = match &keep {
            Some(k) => {
                let l = k[0].len();
                point_taps(&first, g, patch, obj.student_sampling, |m, p| {
                    k[m / n].binary_search(&p).ok().map(|r| m / n * l + r)
                })
            }
            None => point_taps(&first, g, patch, obj.student_sampling, |m, p| Some(m / n * hw + p)),
        };
        let token_mask = masked.filter(|_| obj.masking == Masking::Token).map(|m| {
            let mut flags = vec![0i32; b * hw];
            for (c, hidden) in m.iter().enumerate() {
                hidden.iter().for_each(|&p| flags[c * hw + p] = 1);
            }
            flags
        });

        let flat = |(r, c): (usize, usize)| r * grid + c;
        let mut weights = vis.clone();
        if keep.is_some() {
            for c in 0..b {
                for i in 0..n {
                    let own = kept(c, flat(patch_of(pts[c * t * n + i], g, patch)));
                    for f in 0..t {
                        let e = (c * t + f) * n + i;
                        if !(own && kept(c, flat(patch_of(pts[e], g, patch)))) {
                            weights[e] = 0.0;
                        }
                    }
                }
            }
        }
        let rows = match obj.sinkhorn_rows {
            SinkhornRows::InCrop => inside.clone(),
            SinkhornRows::All => {
                (0..b * t * n).map(|e| inside[(e / (t * n)) * t * n + e % n]).collect()
            }
        };
        let selected: f32 =
            (0..b).map(|c| inside[c * t * n..][..n].iter().sum::<f32>()).sum::<f32>() * t as f32;
        let share = |v: &[f32]| v.iter().sum::<f32>() as f64 / selected.max(1.0) as f64;
        let (visible, in_loss) = (share(&vis), share(&weights));
        let counts = [vis.iter().sum::<f32>(), weights.iter().sum::<f32>(), selected];
        Self { keep, token_mask, teacher, student, weights, rows, visible, in_loss, counts }
    }
}

pub struct Trainer<B: AutodiffBackend> {
    pub cfg: TrainConfig,
    pub vit: VitConfig,
    pub student: MosicModel<B>,
    pub teacher: MosicModel<B::InnerBackend>,
    opt: AdamW<B::InnerBackend>,
    device: B::Device,
    /// Leading blocks that stay frozen (their output is shared by student and teacher).
    frozen: usize,
    /// Steps completed.
    pub step: u64,
    /// Steps of the whole run (the learning-rate schedule's length).
    pub total_steps: u64,
    /// On the device: the first step whose update was skipped (1-based), 0 while none was.
    bad_step: Option<Tensor<B::InnerBackend, 1>>,
    /// Host threads the teacher's forward pass is split over ([`crate::backend::forward_chunks`]).
    chunks: usize,
    /// The workers this one shares each global batch with (None: one device, the whole batch).
    pub group: Option<Group>,
    /// Keep each step's (reduced) gradients in `last_grads` (tests).
    pub keep_grads: bool,
    pub last_grads: Option<BTreeMap<String, HostTensor>>,
}

fn narrow<B: Backend, const D: usize>(x: Tensor<B, D>, r: Range<usize>) -> Tensor<B, D> {
    x.narrow(0, r.start, r.len())
}

/// `f` over consecutive ranges of `0..rows` on up to `chunks` threads, joined along dim 0.
/// Every range has fixed bounds, so the result does not depend on scheduling.
fn in_chunks<B: Backend, const D: usize, F>(rows: usize, chunks: usize, f: F) -> Tensor<B, D>
where
    F: Fn(Range<usize>) -> Tensor<B, D> + Sync,
{
    let chunks = chunks.clamp(1, rows.max(1));
    if chunks == 1 {
        return f(0..rows);
    }
    let bounds: Vec<Range<usize>> =
        (0..chunks).map(|c| c * rows / chunks..(c + 1) * rows / chunks).collect();
    let parts: Vec<Tensor<B, D>> = bounds.into_par_iter().map(&f).collect();
    Tensor::cat(parts, 0)
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(cfg: &TrainConfig, device: &B::Device) -> Result<Self> {
        let vit = VitConfig::preset(&cfg.model.preset, cfg.model.img_size)?;
        B::seed(device, cfg.run.seed);
        let mut backbone = if cfg.model.weights.as_os_str().is_empty() {
            crate::model::timm::random(&vit, cfg.run.seed, device)
        } else {
            weights::load(&vit, &cfg.model.weights, device)?
        };
        // The mask-token variant starts from zeros whatever the weights file holds, so one
        // config trains one objective.
        backbone.mask_token = Param::from_tensor(Tensor::zeros([1, vit.embed_dim], device));
        let trainable = cfg.model.trainable_blocks;
        if trainable.trains_pos_embed() {
            // A trained embedding is resampled from what it became, not from the file.
            backbone.source_pos_embed = None;
        }
        let head_cfg = cfg.head_config(vit.embed_dim);
        let frozen = trainable.frozen_blocks(vit.depth);
        let student = MosicModel {
            backbone,
            head: head_cfg.init_head(device),
            prototypes: head_cfg.init_prototypes(device),
        };
        let student = paths::freeze(student, |p: &str| {
            if p.starts_with("head.")
                || p.starts_with("prototypes.")
                || (trainable == Trainable::All && p.starts_with("backbone."))
            {
                return true;
            }
            p.strip_prefix("backbone.blocks.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i >= frozen)
        });
        let mut student = student;
        // As PyTorch's autocast: every matrix product of the backbone in model.precision, the
        // trainable blocks' too (their master weights stay f32).
        student.backbone.precision = cfg.model.precision;
        let mut teacher = student.valid();
        teacher.backbone.precision = cfg.model.precision;
        let o = &cfg.optim;
        Ok(Self {
            cfg: cfg.clone(),
            vit,
            student,
            teacher,
            opt: AdamW::new(o.beta1, o.beta2, o.eps, o.weight_decay),
            device: device.clone(),
            frozen,
            step: 0,
            total_steps: cfg.run.steps.unwrap_or(1).max(1),
            bad_step: None,
            chunks: crate::backend::forward_chunks::<B::InnerBackend>(device),
            group: None,
            keep_grads: false,
            last_grads: None,
        })
    }

    /// Every worker of the group takes rank 0's student and teacher (as DeepSpeed broadcasts
    /// rank 0's parameters), whatever each device's initialisers drew.
    pub fn broadcast_from_rank0(&mut self) -> Result<()> {
        let g = self.group.clone().context("broadcast without a group")?;
        let path = Path::new("rank 0's parameters");
        let share = |values: BTreeMap<String, HostTensor>,
                     what: &str|
         -> Result<BTreeMap<String, HostTensor>> {
            let mut bytes: Vec<u8> =
                values.values().flat_map(|t| t.data.iter().flat_map(|v| v.to_le_bytes())).collect();
            g.broadcast(&mut bytes, what)?;
            let mut floats =
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            Ok(values
                .into_iter()
                .map(|(k, t)| {
                    let data = floats.by_ref().take(t.numel()).collect();
                    (k, HostTensor::new(t.shape, data))
                })
                .collect())
        };
        let student = share(paths::collect(&self.student, |_| true), "rank 0's student")?;
        let teacher = share(paths::collect(&self.teacher, |_| true), "rank 0's teacher")?;
        if g.rank() != 0 {
            self.student = paths::assign(self.student.clone(), &student, &self.device, path)?;
            self.teacher = paths::assign(self.teacher.clone(), &teacher, &self.device, path)?;
        }
        Ok(())
    }

    /// A hash of the student's and the teacher's parameters (bits, in path order).
    pub fn digest(&self) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for map in
            [paths::collect(&self.student, |_| true), paths::collect(&self.teacher, |_| true)]
        {
            for (k, t) in map {
                h.write(k.as_bytes());
                t.data.iter().for_each(|v| h.write_u32(v.to_bits()));
            }
        }
        h.finish()
    }

    /// The optimiser, with its moments.
    pub fn optimizer(&self) -> &AdamW<B::InnerBackend> {
        &self.opt
    }

    /// Blocks the student trains (counted from the end).
    pub fn trainable_blocks(&self) -> usize {
        self.vit.depth - self.frozen
    }

    /// (head lr, backbone lr) at a step: linear warm-up, then cosine decay to 0.
    pub fn lr_at(&self, step: u64) -> (f64, f64) {
        let o = &self.cfg.optim;
        let total = self.total_steps.max(1);
        let f = if step < o.warmup_steps {
            (step + 1) as f64 / o.warmup_steps as f64
        } else {
            let span = (total - o.warmup_steps.min(total)).max(1) as f64;
            let p = ((step - o.warmup_steps) as f64 / span).min(1.0);
            0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        };
        (o.lr * f, o.lr * o.backbone_lr_scale * f)
    }

    /// The patches hidden from each clip's student this step: floor(ratio x patches) of them
    /// (as the released code counts), drawn from the seed, the step and the clip only.
    pub fn draw_mask(&self, clips: usize) -> Option<Vec<Vec<usize>>> {
        let hw = self.vit.num_patches();
        let k = (self.cfg.objective.mask_ratio as f64 * hw as f64).floor() as usize;
        if k == 0 {
            return None;
        }
        Some(
            (0..clips)
                .map(|b| {
                    // Keyed by the clip's place in the global batch: any device count draws alike.
                    let b = b + self.group.as_ref().map_or(0, |g| g.first_clip);
                    let mut rng = SplitMix64::stream(
                        self.cfg.run.seed ^ 0x6d61_736b,
                        self.step * 4096 + b as u64,
                    );
                    let mut idx: Vec<usize> = (0..hw).collect();
                    rng.shuffle(&mut idx);
                    let mut hidden = idx[..k].to_vec();
                    hidden.sort_unstable();
                    hidden
                })
                .collect(),
        )
    }

    /// One optimisation step on a batch, read at once (see [`Trainer::step_async`]).
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        let out = self.step_async(batch)?;
        self.read(out)
    }

    /// The batch's frames on the device as ImageNet-normalised floats `[B*T, 3, S, S]`: they
    /// cross as bytes and are normalised there.
    fn images(&self, batch: &Batch) -> Tensor<B::InnerBackend, 4> {
        let (n, s, dev) = (batch.clips * batch.frames, batch.size, &self.device);
        let bytes = Tensor::<B::InnerBackend, 4, Int>::from_data(
            TensorData::new(batch.images.clone(), [n, 3, s, s]),
            (dev, DType::U8),
        );
        let mean = Tensor::<B::InnerBackend, 1>::from_floats(MEAN.map(|m| m * 255.0), dev)
            .reshape([1, 3, 1, 1]);
        let std = Tensor::<B::InnerBackend, 1>::from_floats(STD.map(|v| v * 255.0), dev)
            .reshape([1, 3, 1, 1]);
        (bytes.float() - mean) / std
    }

    /// One optimisation step on a batch, queued on the device without waiting for it: the
    /// loss, usage and gradient norm stay there until [`Trainer::read`]. A non-finite loss or
    /// gradient skips the update on the device (parameters and optimiser moments keep their
    /// values) and is reported by the next read.
    pub fn step_async(&mut self, batch: &Batch) -> Result<StepOutput<B::InnerBackend>> {
        let (bsz, t, n) = (batch.clips, batch.frames, batch.points);
        if batch.size != self.vit.img_size {
            bail!("batch images are {} px, the model takes {}", batch.size, self.vit.img_size);
        }
        if let Some(g) = &self.group {
            g.at_step(self.step + 1);
        }
        let obj = self.cfg.objective.clone();
        let masked = self.draw_mask(bsz);
        let (g, patch) = (self.vit.grid(), self.vit.patch_size as f32);
        let inputs = StepInputs::new(batch, &obj, g, patch, masked.as_deref());
        let images = self.images(batch);
        // Prototypes are unit vectors at the start of every step, in both copies.
        self.student.prototypes = self.student.prototypes.normalized();
        self.teacher.prototypes = self.teacher.prototypes.normalized();
        let (teacher_scores, student_scores) = self.scores(batch, images, &inputs);

        let dev = &self.device;
        let weights =
            Tensor::<B, 3>::from_data(TensorData::new(inputs.weights.clone(), [bsz, t, n]), dev);
        let rows =
            Tensor::<B, 1>::from_data(TensorData::new(inputs.rows.clone(), [bsz * t * n]), dev);
        let group = self.group.clone();
        let out = mosic_loss(
            student_scores,
            Tensor::from_inner(teacher_scores),
            weights,
            Some(rows),
            &self.cfg.loss_config(),
            group.as_ref(),
        )?;
        let grads = GradientsParams::from_grads(out.loss.backward(), &self.student);
        // With a group: its workers' gradients summed (each loss is its share of the global
        // loss), so every replica takes the same step; the loss reported is the global one.
        let (loss, grads) = match &group {
            Some(g) => (
                g.reduce(out.loss.clone().inner(), Op::Sum, "the loss")?,
                g.reduce_grads(&self.student, grads)?,
            ),
            None => (out.loss.clone().inner(), grads),
        };
        if self.keep_grads {
            self.last_grads = Some(params::collect_grads(&self.student, &grads));
        }
        let (lr, lr_backbone) = self.lr_at(self.step);
        let grad_norm = self.update(&loss, &grads, obj.ema);
        let (visible, in_loss, filled) = self.shares(batch, &inputs)?;
        let stats = StepStats {
            step: self.step,
            loss: f64::NAN,
            lr,
            lr_backbone,
            grad_norm: f64::NAN,
            visible,
            in_loss,
            filled,
            usage_entropy: f64::NAN,
            seconds: None,
            validation: None,
        };
        Ok(StepOutput {
            stats,
            values: Tensor::cat(vec![loss, out.usage_entropy.inner(), grad_norm], 0),
        })
    }

    /// The teacher's scores `[B, T, N, K]` (every frame, unmasked) and the student's `[B, N, K]`
    /// (frame 0, masked as drawn). On a CPU backend the teacher's last blocks and head run
    /// beside the student's forward pass, whose ops would otherwise leave cores idle; the values
    /// are the same either way. Not from a pool worker: waiting there for the thread would hold
    /// a core its jobs need.
    fn scores(
        &self,
        batch: &Batch,
        images: Tensor<B::InnerBackend, 4>,
        inputs: &StepInputs,
    ) -> (Tensor<B::InnerBackend, 4>, Tensor<B, 3>) {
        let tb = &self.teacher.backbone;
        let frozen = self.frozen;
        // Frames in independent chunks (threads on a CPU backend).
        let prefix = in_chunks(batch.clips * batch.frames, self.chunks, |r| {
            tb.blocks(tb.embed(narrow(images.clone(), r), None), 0..frozen)
        });
        let teacher = || self.teacher_scores(batch, &prefix, inputs);
        if self.chunks > 1 && rayon::current_thread_index().is_none() {
            std::thread::scope(|scope| {
                let t = scope.spawn(teacher);
                let student = self.student_scores(batch, &images, &prefix, inputs);
                (t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), student)
            })
        } else {
            (teacher(), self.student_scores(batch, &images, &prefix, inputs))
        }
    }

    /// The teacher's last blocks on every frame (after the frozen `prefix`), its features at
    /// the tracked positions, head and prototype scores, in chunks of frames, then of points.
    fn teacher_scores(
        &self,
        batch: &Batch,
        prefix: &Tensor<B::InnerBackend, 3>,
        inputs: &StepInputs,
    ) -> Tensor<B::InnerBackend, 4> {
        let (bsz, t, n) = (batch.clips, batch.frames, batch.points);
        let (teacher, tb) = (&self.teacher, &self.teacher.backbone);
        let (d, hw, depth) = (self.vit.embed_dim, self.vit.num_patches(), self.vit.depth);
        let k = teacher.prototypes.num_prototypes();
        let tokens = in_chunks(bsz * t, self.chunks, |r| {
            tb.patch_tokens(tb.blocks(narrow(prefix.clone(), r), self.frozen..depth))
        });
        let tf = gather_points(tokens.reshape([bsz * t * hw, d]), &inputs.teacher);
        in_chunks(bsz * t * n, self.chunks, |r| {
            teacher.prototypes.scores(teacher.head.forward(narrow(tf.clone(), r)))
        })
        .reshape([bsz, t, n, k])
    }

    /// The student on frame 0 only (its prediction is compared with every frame's target):
    /// the frozen embedding and first blocks without autodiff (equal in both copies, so the
    /// teacher's `prefix` where nothing is masked), then the trainable blocks, head and scores.
    fn student_scores(
        &self,
        batch: &Batch,
        images: &Tensor<B::InnerBackend, 4>,
        prefix: &Tensor<B::InnerBackend, 3>,
        inputs: &StepInputs,
    ) -> Tensor<B, 3> {
        let (bsz, t, n, s) = (batch.clips, batch.frames, batch.points, batch.size);
        let (student, tb) = (&self.student, &self.teacher.backbone);
        let (d, hw, depth, frozen) =
            (self.vit.embed_dim, self.vit.num_patches(), self.vit.depth, self.frozen);
        let first =
            || images.clone().reshape([bsz, t, 3 * s * s]).narrow(1, 0, 1).reshape([bsz, 3, s, s]);
        let token_mask = inputs.token_mask.as_ref().map(|f| {
            Tensor::<B::InnerBackend, 2, Int>::from_data(
                TensorData::new(f.clone(), [bsz, hw]),
                &self.device,
            )
            .equal_elem(1)
        });
        let x = if frozen > 0 {
            let x = match (&inputs.keep, token_mask) {
                (Some(keep), _) => {
                    tb.blocks(tb.keep_patches(tb.embed(first(), None), keep), 0..frozen)
                }
                (None, Some(mask)) => tb.blocks(tb.embed(first(), Some(mask)), 0..frozen),
                (None, None) => {
                    let len = prefix.dims()[1];
                    prefix.clone().reshape([bsz, t, len, d]).narrow(1, 0, 1).reshape([bsz, len, d])
                }
            };
            student.backbone.blocks(Tensor::from_inner(x), frozen..depth)
        } else {
            let sb = &student.backbone;
            let x = sb.embed(Tensor::from_inner(first()), token_mask.map(Tensor::from_inner));
            let x = match &inputs.keep {
                Some(keep) => sb.keep_patches(x, keep),
                None => x,
            };
            sb.blocks(x, 0..depth)
        };
        let tokens = student.backbone.patch_tokens(x);
        let l = tokens.dims()[1];
        let sf = gather_points(tokens.reshape([bsz * l, d]), &inputs.student);
        let k = student.prototypes.num_prototypes();
        student.prototypes.scores(student.head.forward(sf)).reshape([bsz, n, k])
    }

    /// Clips the gradients to the global norm, takes the AdamW step and the EMA update unless
    /// the loss or a gradient is not finite (decided on the device), and counts the step.
    /// Returns the gradient norm `[1]`, left on the device.
    fn update(
        &mut self,
        loss: &Tensor<B::InnerBackend, 1>,
        grads: &GradientsParams,
        ema: f64,
    ) -> Tensor<B::InnerBackend, 1> {
        let dev = &self.device;
        let sq = params::grad_sq_sum(&self.student, grads, dev);
        // x - x is 0 exactly for finite x; NaN for NaN and infinities.
        let total = loss.clone() + sq.clone();
        let skip = (total.clone() - total).equal_elem(0.0).bool_not();
        let grad_norm = sq.sqrt();
        let clip = self.cfg.optim.grad_clip;
        let scale = if clip > 0.0 {
            (grad_norm.clone().add_scalar(1e-6).recip() * clip).clamp_max(1.0)
        } else {
            Tensor::ones([1], dev)
        };
        let step = self.step;
        let (lr, lr_backbone) = self.lr_at(step);
        let gate = params::UpdateGate { scale, skip: skip.clone() };
        self.student = self.opt.step(self.student.clone(), grads, lr_backbone, lr, &gate);
        self.teacher = params::ema_update::<B, _, _>(self.teacher.clone(), &self.student, ema);
        // The first skipped step (1-based), 0 while there is none.
        let first_bad = self.bad_step.clone().unwrap_or_else(|| Tensor::zeros([1], dev));
        let none_yet = first_bad.clone().equal_elem(0.0).float();
        self.bad_step = Some(first_bad + skip.float() * none_yet * (step + 1) as f64);
        self.step += 1;
        grad_norm
    }

    /// The global batch's visible, in-loss and filled shares (summed over the group).
    fn shares(&self, batch: &Batch, inputs: &StepInputs) -> Result<(f64, f64, f64)> {
        let Some(g) = &self.group else {
            return Ok((inputs.visible, inputs.in_loss, batch.filled()));
        };
        let [v, l, sel] = inputs.counts;
        let entries = (batch.clips * batch.points) as f32;
        let c = g.reduce_host(
            vec![v, l, sel, batch.filled() as f32 * entries, entries],
            Op::Sum,
            "the counts",
        )?;
        let share = |x: f32, of: f32| x as f64 / of.max(1.0) as f64;
        Ok((share(c[0], c[2]), share(c[1], c[2]), share(c[3], c[4])))
    }

    /// Waits for a step and fills in its figures; errors if any step since the start skipped
    /// its update for a non-finite loss or gradient, naming the first.
    pub fn read(&self, out: StepOutput<B::InnerBackend>) -> Result<StepStats> {
        let bad = self.bad_step.clone().unwrap_or_else(|| Tensor::zeros([1], &self.device));
        let read = || -> Vec<f32> {
            Tensor::cat(vec![out.values, bad], 0)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 data")
        };
        // The read waits for the step's device work, its device reductions included.
        let v = match &self.group {
            Some(g) => g.watched("reading the step's results", read),
            None => read(),
        };
        if v[3] > 0.0 {
            bail!(NonFinite { step: v[3] as u64 });
        }
        let mut stats = out.stats;
        (stats.loss, stats.usage_entropy, stats.grad_norm) =
            (v[0] as f64, v[1] as f64, v[2] as f64);
        Ok(stats)
    }

    /// Whether a step since the start skipped its update (a host read).
    pub fn check_finite(&self) -> Result<()> {
        if let Some(bad) = &self.bad_step {
            let first: f64 = bad.clone().into_scalar().elem();
            if first > 0.0 {
                bail!(NonFinite { step: first as u64 });
            }
        }
        Ok(())
    }

    /// The position embedding every input size is resampled from, while it is not trained.
    pub fn source_pos_embed(&self) -> Option<&mosic::tensors::HostTensor> {
        self.teacher.backbone.source_pos_embed.as_ref()
    }

    /// Writes the run's checkpoint of this step (student, teacher, optimiser, data position).
    pub fn save_checkpoint(
        &self,
        run: &Path,
        loader: LoaderState,
        world: usize,
    ) -> Result<PathBuf> {
        let student = paths::collect(&self.student, |_| true);
        let teacher = paths::collect(&self.teacher, |_| true);
        let state = CheckpointState { step: self.step, loader, world };
        let files =
            [("student", &student), ("teacher", &teacher), ("optimizer", &self.opt.state())];
        rundir::write_checkpoint(run, self.step, &files, &state)
    }

    pub fn load_checkpoint(&mut self, ckpt: &Path) -> Result<CheckpointState> {
        let state: CheckpointState = rundir::read_checkpoint_state(ckpt)?;
        let file = |f: &str| ckpt.join(format!("{f}.safetensors"));
        let student = rundir::read_checkpoint_tensors(ckpt, "student")?;
        self.student =
            paths::assign(self.student.clone(), &student, &self.device, &file("student"))?;
        let teacher = rundir::read_checkpoint_tensors(ckpt, "teacher")?;
        self.teacher =
            paths::assign(self.teacher.clone(), &teacher, &self.device, &file("teacher"))?;
        let opt = rundir::read_checkpoint_tensors(ckpt, "optimizer")?;
        self.opt.load_state(&opt, state.step, &self.device)?;
        self.step = state.step;
        Ok(state)
    }
}

/// What a queued step leaves on the device until it is read: `[loss, usage entropy, grad norm]`.
pub struct StepOutput<B: Backend> {
    pub stats: StepStats,
    values: Tensor<B, 1>,
}

#[derive(Debug)]
pub struct NonFinite {
    /// The first step whose loss or gradient was not finite (its update was skipped).
    pub step: u64,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the loss or a gradient is not finite at step {}; that update and any after it were skipped", self.step)
    }
}

impl std::error::Error for NonFinite {}

#[cfg(test)]
mod tests {
    use super::*;

    type Inner = crate::testing::Golden;

    fn values<BB: Backend, const D: usize>(t: Tensor<BB, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The teacher's forward in chunks (one per thread on the CPU) gives what one call gives,
    /// rows in order, whatever the chunk count (uneven splits and more chunks than rows too).
    #[test]
    fn chunked_forward_equals_the_whole_forward() {
        let dev = Default::default();
        let vit = VitConfig { img_size: 28, ..VitConfig::preset("vit_tiny_test", 224).unwrap() };
        let model = crate::model::timm::random::<Inner>(&vit, 5, &dev);
        let images = Tensor::<Inner, 4>::random(
            [5, 3, 28, 28],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &dev,
        );
        let f = |r: Range<usize>| model.forward_patch_tokens(narrow(images.clone(), r), None);
        let whole = values(in_chunks(5, 1, f));
        for chunks in [2, 3, 8] {
            let parts = values(in_chunks(5, chunks, f));
            assert!(
                max_diff(&whole, &parts) < 1e-6,
                "{chunks} chunks differ by {}",
                max_diff(&whole, &parts)
            );
        }
    }
}
