//! The training loop: student and EMA teacher, one MoSiC step per batch, checkpoints that
//! resume exactly, and the metrics of every logged step.

use crate::collective::Collective;
use crate::collective::{Group, Op};
use crate::config::{Masking, Motion, ObjectiveConfig, TrainConfig, Trainable};
use crate::head::{ProjectionHead, Prototypes};
use crate::loader::{Batch, Loader, LoaderState, MEAN, STD};
use crate::loss::{gather_points, mosic_loss, patch_of, point_taps, PointTaps, SinkhornRows};
use crate::model::{Vit, VitConfig};
use crate::params::{self, AdamW};
pub use crate::rundir::StepStats;
use crate::rundir::{self, MetricsLog};
use crate::validate::ValSet;
use crate::weights;
use anyhow::{anyhow, bail, ensure, Context, Result};
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
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

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
            Vit::new_seeded(&vit, cfg.run.seed, device)
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
        let student = params::freeze(student, |p: &str| {
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
        let share = |values: BTreeMap<String, HostTensor>| -> Result<BTreeMap<String, HostTensor>> {
            let flat: Vec<f32> = values
                .values()
                .flat_map(|t| if g.rank == 0 { t.data.clone() } else { vec![0.0; t.numel()] })
                .collect();
            let all = g.reduce_host(flat, Op::Sum)?;
            let mut at = 0;
            Ok(values
                .into_iter()
                .map(|(k, t)| {
                    let n = t.numel();
                    at += n;
                    (k, HostTensor::new(t.shape, all[at - n..at].to_vec()))
                })
                .collect())
        };
        let student = share(params::collect(&self.student, |_| true))?;
        let teacher = share(params::collect(&self.teacher, |_| true))?;
        if g.rank != 0 {
            self.student = params::assign(self.student.clone(), &student, &self.device, path)?;
            self.teacher = params::assign(self.teacher.clone(), &teacher, &self.device, path)?;
        }
        Ok(())
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
        let dev = &self.device;
        let (bsz, t, n, s) = (batch.clips, batch.frames, batch.points, batch.size);
        if s != self.vit.img_size {
            bail!("batch images are {s} px, the model takes {}", self.vit.img_size);
        }
        let (g, d, depth) = (self.vit.grid(), self.vit.embed_dim, self.vit.depth);
        let (hw, patch) = (g * g, self.vit.patch_size as f32);
        let obj = self.cfg.objective.clone();
        let masked = self.draw_mask(bsz);
        let inputs = StepInputs::new(batch, &obj, g, patch, masked.as_deref());
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let images = self.images(batch);

        // Prototypes are unit vectors at the start of every step, in both copies.
        self.student.prototypes = self.student.prototypes.normalized();
        self.teacher.prototypes = self.teacher.prototypes.normalized();
        let (student, teacher) = (&self.student, &self.teacher);
        let k = student.prototypes.num_prototypes();

        // Teacher: every frame, unmasked, features at the tracked positions.
        let tb = &teacher.backbone;
        let frozen = self.frozen;
        // Frames, then points, in independent chunks (threads on a CPU backend).
        let prefix = in_chunks(bsz * t, self.chunks, |r| {
            tb.blocks(tb.embed(narrow(images.clone(), r), None), 0..frozen)
        });
        let teacher_tail = || {
            let tokens = in_chunks(bsz * t, self.chunks, |r| {
                tb.patch_tokens(tb.blocks(narrow(prefix.clone(), r), frozen..depth))
            });
            let tf = gather_points(tokens.reshape([bsz * t * hw, d]), &inputs.teacher);
            in_chunks(bsz * t * n, self.chunks, |r| {
                teacher.prototypes.scores(teacher.head.forward(narrow(tf.clone(), r)))
            })
            .reshape([bsz, t, n, k])
        };

        // Student: frame 0 only (its prediction is compared with every frame's target).
        let student_forward = || {
            let first = || {
                images.clone().reshape([bsz, t, 3 * s * s]).narrow(1, 0, 1).reshape([bsz, 3, s, s])
            };
            let token_mask = inputs.token_mask.as_ref().map(|f| {
                Tensor::<I<B>, 2, Int>::from_data(TensorData::new(f.clone(), [bsz, hw]), dev)
                    .equal_elem(1)
            });
            let x = if frozen > 0 {
                // The embedding and the first blocks are frozen, equal in both copies: computed
                // once, without autodiff (in the teacher's precision).
                let x = match (&inputs.keep, token_mask) {
                    (Some(keep), _) => {
                        tb.blocks(tb.keep_patches(tb.embed(first(), None), keep), 0..frozen)
                    }
                    (None, Some(mask)) => tb.blocks(tb.embed(first(), Some(mask)), 0..frozen),
                    (None, None) => {
                        let len = prefix.dims()[1];
                        prefix
                            .clone()
                            .reshape([bsz, t, len, d])
                            .narrow(1, 0, 1)
                            .reshape([bsz, len, d])
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
            student.prototypes.scores(student.head.forward(sf)).reshape([bsz, n, k])
        };
        // On a CPU backend the teacher's last blocks and head run beside the student's forward
        // pass, whose ops would otherwise leave cores idle; the values are the same either way.
        // Not from a pool worker: waiting there for the thread would hold a core its jobs need.
        let (teacher_scores, student_scores) =
            if self.chunks > 1 && rayon::current_thread_index().is_none() {
                std::thread::scope(|scope| {
                    let teacher = scope.spawn(teacher_tail);
                    let student = student_forward();
                    (teacher.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), student)
                })
            } else {
                (teacher_tail(), student_forward())
            };

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
                g.reduce(out.loss.clone().inner(), Op::Sum)?,
                g.reduce_grads(&self.student, grads)?,
            ),
            None => (out.loss.clone().inner(), grads),
        };
        if self.keep_grads {
            self.last_grads = Some(params::collect_grads(&self.student, &grads));
        }
        let sq = params::grad_sq_sum(&self.student, &grads, dev);
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
        self.student = self.opt.step(self.student.clone(), &grads, lr_backbone, lr, &gate);
        self.teacher = params::ema_update::<B, _, _>(self.teacher.clone(), &self.student, obj.ema);
        // The first skipped step (1-based), 0 while there is none.
        let first_bad = self.bad_step.clone().unwrap_or_else(|| Tensor::zeros([1], dev));
        let none_yet = first_bad.clone().equal_elem(0.0).float();
        self.bad_step = Some(first_bad + skip.float() * none_yet * (step + 1) as f64);
        self.step += 1;
        let (visible, in_loss, filled) = match &group {
            Some(g) => {
                let [v, l, sel] = inputs.counts;
                let f = batch.filled() as f32 * (batch.clips * batch.points) as f32;
                let c = g.reduce_host(
                    vec![v, l, sel, f, (batch.clips * batch.points) as f32],
                    Op::Sum,
                )?;
                let share = |x: f32, of: f32| x as f64 / of.max(1.0) as f64;
                (share(c[0], c[2]), share(c[1], c[2]), share(c[3], c[4]))
            }
            None => (inputs.visible, inputs.in_loss, batch.filled()),
        };
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

    /// Waits for a step and fills in its figures; errors if any step since the start skipped
    /// its update for a non-finite loss or gradient, naming the first.
    pub fn read(&self, out: StepOutput<B::InnerBackend>) -> Result<StepStats> {
        let bad = self.bad_step.clone().unwrap_or_else(|| Tensor::zeros([1], &self.device));
        let v: Vec<f32> = Tensor::cat(vec![out.values, bad], 0)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 data");
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
    pub fn save_checkpoint(&self, run: &Path, loader: LoaderState) -> Result<PathBuf> {
        let student = params::collect(&self.student, |_| true);
        let teacher = params::collect(&self.teacher, |_| true);
        let state = CheckpointState { step: self.step, loader };
        let files =
            [("student", &student), ("teacher", &teacher), ("optimizer", &self.opt.state())];
        rundir::write_checkpoint(run, self.step, &files, &state)
    }

    pub fn load_checkpoint(&mut self, ckpt: &Path) -> Result<CheckpointState> {
        let state: CheckpointState = rundir::read_checkpoint_state(ckpt)?;
        let file = |f: &str| ckpt.join(format!("{f}.safetensors"));
        let student = rundir::read_checkpoint_tensors(ckpt, "student")?;
        self.student =
            params::assign(self.student.clone(), &student, &self.device, &file("student"))?;
        let teacher = rundir::read_checkpoint_tensors(ckpt, "teacher")?;
        self.teacher =
            params::assign(self.teacher.clone(), &teacher, &self.device, &file("teacher"))?;
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

#[derive(Debug, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub seconds: f64,
    pub clips_per_second: f64,
    pub last_checkpoint: Option<PathBuf>,
}

/// A fault a test makes worker `rank` raise before its step `step` (1-based): an error it
/// returns, or a panic it raises.
#[doc(hidden)]
pub type FaultHook = dyn Fn(usize, u64) -> Result<()> + Sync;

/// How long a worker waits in a collective for the others before the run fails: longer than
/// any step or validation, short enough that a wedged device does not hold a run forever.
pub const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Trains into the run directory `run`: `config.toml`, `metrics.jsonl`, `loss.png` and
/// `checkpoints/`. With `resume`, continues from the newest checkpoint exactly where it
/// stopped (model, optimiser, EMA teacher, data position, masking).
///
/// One worker thread per device in `devices`; each takes its share of every global batch of
/// `data.batch_size` clips (split in order) and all take the same step on the summed
/// gradients ([`crate::collective`]). Worker 0 writes metrics, checkpoints and validation.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    devices: &[B::Device],
    log: &(dyn Fn(&str) + Sync),
) -> Result<Summary> {
    train_hooked::<B>(cfg, run, resume, stop_after, devices, log, None)
}

#[doc(hidden)]
pub fn train_hooked<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run: &Path,
    resume: bool,
    stop_after: Option<u64>,
    devices: &[B::Device],
    log: &(dyn Fn(&str) + Sync),
    fault: Option<&FaultHook>,
) -> Result<Summary> {
    let n = devices.len();
    ensure!(n >= 1, "no device to train on");
    ensure!(
        cfg.data.batch_size.is_multiple_of(n),
        "data.batch_size = {} does not split over {n} devices: use a multiple of {n}",
        cfg.data.batch_size
    );
    let config_path = rundir::config_path(run);
    let text = cfg.to_toml();
    if resume {
        let old = std::fs::read_to_string(&config_path)
            .with_context(|| format!("--resume: no {}", config_path.display()))?;
        let old: TrainConfig = toml::from_str(&old)
            .with_context(|| format!("{} is malformed", config_path.display()))?;
        if &old != cfg {
            bail!(
                "--resume: the configuration differs from {}; resume with the run's own config",
                config_path.display()
            );
        }
    } else if !rundir::checkpoints(run).is_empty() {
        bail!("{} already holds checkpoints; pass --resume to continue it or choose another run directory", run.display());
    }
    let vit = VitConfig::preset(&cfg.model.preset, cfg.model.img_size)?;
    let resume_from = if resume { rundir::newest_checkpoint(run) } else { None };
    let start_state: Option<CheckpointState> =
        resume_from.as_deref().map(rundir::read_checkpoint_state).transpose()?;
    let loader_state = start_state.as_ref().map(|s| s.loader.clone()).unwrap_or_default();
    let first_step = start_state.as_ref().map_or(0, |s| s.step);
    let mut loader = Loader::open(&cfg.data.shards, cfg.loader_config(), loader_state)?;
    for note in loader.notes() {
        log(&format!("note: {}: {note}", cfg.data.shards.display()));
    }
    let per_epoch = loader.batches_per_epoch();
    let total = cfg.total_steps(per_epoch);
    let val_cfg = &cfg.validation;
    let val_set = if val_cfg.every > 0 {
        Some(
            ValSet::load(val_cfg)
                .with_context(|| format!("validation set {}", val_cfg.data.display()))?,
        )
    } else {
        None
    };
    // Everything is checked; from here on the run writes.
    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    mosic::fsutil::write_atomic(&config_path, text.as_bytes())?;
    if let Some(c) = &resume_from {
        log(&format!("resumed from {} (step {first_step})", c.display()));
    }
    let spec = loader.spec().clone();
    let schedule = match cfg.run.steps {
        Some(s) => format!("{s} steps (run.steps; {:.2} epochs)", s as f64 / per_epoch as f64),
        None => format!("{} epochs x {per_epoch} steps = {total} steps", cfg.run.epochs),
    };
    let devices_note = if n > 1 {
        format!(" over {n} devices ({} clips each)", cfg.data.batch_size / n)
    } else {
        String::new()
    };
    log(&format!(
        "training {} ({} blocks, last {} trainable) on {}: {} videos, {} clips/epoch ({} per video), {} frames, {}x{} grid in each \
         crop from a stored {}x{} grid; batch {}{devices_note}, {schedule}",
        cfg.model.preset,
        vit.depth,
        vit.depth - cfg.model.trainable_blocks.frozen_blocks(vit.depth),
        cfg.data.shards.display(),
        loader.videos(),
        loader.clips_per_epoch(),
        if cfg.data.clips_per_video == 0 { "all".to_string() } else { cfg.data.clips_per_video.to_string() },
        spec.frames_per_clip,
        cfg.data.grid_size,
        cfg.data.grid_size,
        spec.grid_size,
        spec.grid_size,
        cfg.data.batch_size,
    ));
    if let Some(set) = &val_set {
        log(&format!(
            "validation every {} steps on {} ({})",
            val_cfg.every,
            val_cfg.data.display(),
            set.describe()
        ));
    }
    let end = stop_after.unwrap_or(total).min(total);
    let collective = Collective::new(n, COLLECTIVE_TIMEOUT);
    let record = Record {
        history: Mutex::new(rundir::read_metrics(run, first_step)),
        last_checkpoint: Mutex::new(resume_from.clone()),
    };
    let start = Instant::now();
    let ctx = WorkerCtx {
        cfg,
        run,
        resume_from: resume_from.as_deref(),
        total,
        end,
        val_set: val_set.as_ref(),
        record: &record,
        log,
        fault,
        collective: &collective,
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let mut feeds = Vec::new();
        let mut workers = Vec::new();
        for (rank, device) in devices.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1);
            feeds.push(tx);
            let ctx = &ctx;
            let worker = std::thread::Builder::new()
                .name(format!("mosic-train-{rank}"))
                .spawn_scoped(s, move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        worker::<B>(ctx, rank, device, rx)
                    }))
                    .unwrap_or_else(|p| Err(anyhow!("panicked: {}", panic_text(&*p))));
                    let r = r.map_err(|e| e.context(format!("worker {rank} ({device:?})")));
                    if let Err(e) = &r {
                        ctx.collective.fail(format!("{e:#}"));
                    }
                    r
                })
                .expect("a training thread starts");
            workers.push(worker);
        }
        // Global batches in order, each split over the workers.
        let mut fed = Ok(());
        for _ in first_step..end {
            let batch = match loader.next_batch() {
                Ok(b) => b,
                Err(e) => {
                    collective.fail(format!("{e:#}"));
                    fed = Err(e);
                    break;
                }
            };
            let state = loader.state();
            let parts = if n == 1 { vec![batch] } else { batch.split(n) };
            if parts
                .into_iter()
                .zip(&feeds)
                .any(|(part, tx)| tx.send(Job { batch: part, loader: state.clone() }).is_err())
            {
                break; // a worker ended: its error says why
            }
        }
        drop(feeds);
        let mut out: Vec<Result<()>> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("a worker thread died"))))
            .collect();
        out.push(fed);
        out
    });
    let history = record.history.into_inner().unwrap_or_else(|e| e.into_inner());
    let last_ckpt = record.last_checkpoint.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = results.into_iter().find_map(Result::err) {
        crate::plot::run_curves(run, &history);
        let keep = match &last_ckpt {
            Some(c) => format!("the last good checkpoint is {}", c.display()),
            None => "no checkpoint was written before it".to_string(),
        };
        // The first failure is the cause; the others are workers it stopped.
        let cause = collective.failure().map(|f| anyhow!("{f}")).unwrap_or(e);
        return Err(cause.context(format!("training stopped; {keep}")));
    }
    let steps = history.last().map_or(first_step, |s| s.step).max(end.min(total));
    let done = steps.saturating_sub(first_step);
    let seconds = start.elapsed().as_secs_f64();
    Ok(Summary {
        steps,
        first_loss: history.first().map(|s| s.loss),
        last_loss: history.last().map(|s| s.loss),
        seconds,
        clips_per_second: (done * cfg.data.batch_size as u64) as f64 / seconds.max(1e-9),
        last_checkpoint: last_ckpt,
    })
}

/// A worker's share of one global batch, with the data position after the whole batch.
struct Job {
    batch: Batch,
    loader: LoaderState,
}

/// What the workers share.
struct WorkerCtx<'a> {
    cfg: &'a TrainConfig,
    run: &'a Path,
    resume_from: Option<&'a Path>,
    total: u64,
    end: u64,
    val_set: Option<&'a ValSet>,
    record: &'a Record,
    log: &'a (dyn Fn(&str) + Sync),
    fault: Option<&'a FaultHook>,
    collective: &'a Arc<Collective>,
}

/// What worker 0 has written so far, kept for the summary and for a failure's message.
struct Record {
    history: Mutex<Vec<StepStats>>,
    last_checkpoint: Mutex<Option<PathBuf>>,
}

/// Serialises trainer construction: Burn's random initialisers draw from a per-backend
/// generator that [`Trainer::new`] seeds, so workers must not draw at the same time.
static INIT: Mutex<()> = Mutex::new(());

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// One device's training: its trainer, its share of every batch, the same step as the others;
/// rank 0 also logs, validates and writes checkpoints.
fn worker<B: AutodiffBackend>(
    ctx: &WorkerCtx,
    rank: usize,
    device: &B::Device,
    jobs: std::sync::mpsc::Receiver<Job>,
) -> Result<()> {
    let cfg = ctx.cfg;
    let n = ctx.collective.size();
    let mut trainer = {
        let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
        Trainer::<B>::new(cfg, device)?
    };
    trainer.total_steps = ctx.total;
    if n > 1 {
        let group = Group {
            rank,
            collective: ctx.collective.clone(),
            first_clip: rank * cfg.data.batch_size / n,
        };
        trainer.group = Some(group);
    }
    match ctx.resume_from {
        Some(c) => {
            trainer.load_checkpoint(c)?;
        }
        None if n > 1 => trainer.broadcast_from_rank0()?,
        None => {}
    }
    let lead = rank == 0;
    if lead {
        if let Some(src) = trainer.source_pos_embed() {
            rundir::write_source_pos_embed(ctx.run, src)?;
        }
    }
    let mut metrics = if lead {
        let history = ctx.record.history.lock().unwrap_or_else(|e| e.into_inner());
        Some(MetricsLog::open(ctx.run, &history)?)
    } else {
        None
    };
    let (mut last_read, mut read_step) = (Instant::now(), trainer.step);
    let val_cfg = &cfg.validation;
    while let Ok(job) = jobs.recv() {
        if let Some(f) = ctx.fault {
            f(rank, trainer.step + 1)?;
        }
        let out = trainer.step_async(&job.batch)?;
        let step = out.stats.step;
        let log_now = step % cfg.run.log_every == 0 || step == ctx.total || step == ctx.end;
        let ckpt_now = step % cfg.run.checkpoint_every == 0 || step == ctx.end;
        let val_now =
            ctx.val_set.is_some() && (step % val_cfg.every.max(1) == 0 || step == ctx.total);
        if !(log_now || ckpt_now || val_now) {
            continue; // no host read: the device runs ahead
        }
        let mut stats = trainer.read(out)?;
        let secs = last_read.elapsed().as_secs_f64() / (step - read_step).max(1) as f64;
        (last_read, read_step) = (Instant::now(), step);
        stats.seconds = Some(secs);
        let Some(metrics) = metrics.as_mut() else { continue };
        if let (Some(set), true) = (ctx.val_set, val_now) {
            let size = if val_cfg.img_size == 0 { cfg.model.img_size } else { val_cfg.img_size };
            let vit = weights::resize(trainer.teacher.backbone.clone(), size)?;
            let v = set.evaluate(&vit, val_cfg.overclustering, cfg.data.batch_size.max(8));
            let shown: Vec<String> =
                v.iter().map(|(k, x)| format!("{k} {:.1}", 100.0 * x)).collect();
            (ctx.log)(&format!("step {step:>6} validation mIoU: {}", shown.join(", ")));
            stats.validation = Some(v);
        }
        if log_now || stats.validation.is_some() {
            metrics.append(&stats)?;
            ctx.record.history.lock().unwrap_or_else(|e| e.into_inner()).push(stats.clone());
        }
        if log_now {
            (ctx.log)(&format!(
                "step {step:>6}/{}  loss {:.4}  lr {:.2e}  grad {:.3}  visible {:.2}  in loss {:.2}  usage {:.2}  {:.1} clips/s",
                ctx.total,
                stats.loss,
                stats.lr,
                stats.grad_norm,
                stats.visible,
                stats.in_loss,
                stats.usage_entropy,
                cfg.data.batch_size as f64 / secs
            ));
        }
        if ckpt_now {
            metrics.flush()?;
            let c = trainer.save_checkpoint(ctx.run, job.loader)?;
            *ctx.record.last_checkpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
            rundir::prune_checkpoints(ctx.run, cfg.run.keep_checkpoints);
            let history = ctx.record.history.lock().unwrap_or_else(|e| e.into_inner());
            crate::plot::run_curves(ctx.run, &history);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Masking;
    use crate::loader::{clip_points, select_points, Aug};
    use crate::loss::{LossConfig, Sampling};
    use burn::backend::Autodiff;
    use burn::nn::Linear;
    use std::collections::HashMap;
    use std::path::Path;

    type Inner = crate::testing::Golden;
    type AB = Autodiff<Inner>;

    /// Tensors by name: (shape, f32 values).
    type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

    /// Every tensor of a safetensors fixture as (shape, f32 values); int64 tensors converted.
    fn fixture(name: &str) -> (Tensors, serde_json::Value) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/loss");
        let bytes = std::fs::read(format!("{dir}/{name}.safetensors")).expect("fixture");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut out = HashMap::new();
        for (k, v) in st.tensors() {
            let data: Vec<f32> = match v.dtype() {
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I64 => v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                other => panic!("{k}: {other:?}"),
            };
            out.insert(k, (v.shape().to_vec(), data));
        }
        let cfg =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{name}.json")).unwrap())
                .unwrap();
        (out, cfg)
    }

    fn tensor<BB: Backend, const D: usize>(t: &(Vec<usize>, Vec<f32>)) -> Tensor<BB, D> {
        Tensor::from_data(TensorData::new(t.1.clone(), t.0.clone()), &Default::default())
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn values<BB: Backend, const D: usize>(t: Tensor<BB, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn head<BB: Backend>(
        g: &HashMap<String, (Vec<usize>, Vec<f32>)>,
        who: &str,
        layers: usize,
    ) -> (ProjectionHead<BB>, Prototypes<BB>) {
        let layers = (0..layers)
            .map(|j| Linear {
                weight: Param::from_tensor(tensor(&g[&format!("{who}.layers.{j}.weight")])),
                bias: Some(Param::from_tensor(tensor(&g[&format!("{who}.layers.{j}.bias")]))),
            })
            .collect();
        let protos =
            Prototypes { weight: Param::from_tensor(tensor(&g[&format!("{who}.prototypes")])) };
        (ProjectionHead { layers }, protos.normalized())
    }

    fn tiny(precision: crate::backend::Precision) -> TrainConfig {
        let set: Vec<String> = [
            "model.preset=vit_tiny_test",
            "model.img_size=56",
            "model.trainable_blocks=2",
            "head.hidden=[32]",
            "head.out_dim=16",
            "head.prototypes=8",
            "data.batch_size=2",
            "objective.mask_ratio=0.25",
            "optim.lr=1e-3",
            "run.steps=4",
        ]
        .map(String::from)
        .to_vec();
        let mut cfg = TrainConfig::load(None, &set).unwrap();
        cfg.model.precision = precision;
        cfg
    }

    /// A step whose loss or gradients are not finite changes nothing, and the next read
    /// names it, however many steps were queued after it.
    /// The teacher's forward in chunks (one per thread on the CPU) gives what one call gives,
    /// rows in order, whatever the chunk count (uneven splits and more chunks than rows too).
    #[test]
    fn chunked_forward_equals_the_whole_forward() {
        let dev = Default::default();
        let vit = VitConfig { img_size: 28, ..VitConfig::preset("vit_tiny_test", 224).unwrap() };
        let model = Vit::<Inner>::new_seeded(&vit, 5, &dev);
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

    #[test]
    fn a_non_finite_step_is_skipped_on_the_device_and_named_at_the_next_read() {
        let cfg = tiny(crate::backend::Precision::Fp32);
        let mut trainer = Trainer::<AB>::new(&cfg, &Default::default()).unwrap();
        let good = Batch::random(cfg.data.batch_size, 3, 9, cfg.model.img_size, cfg.run.seed);
        trainer.step(&good).unwrap();
        let before = params::collect(&trainer.student, |_| true);
        // An infinite weight makes the loss non-finite.
        let mut bad_weights = good.clone();
        bad_weights.visibility[0] = f32::INFINITY;
        let outs: Vec<_> = [bad_weights.clone(), good.clone(), bad_weights]
            .iter()
            .map(|b| trainer.step_async(b).unwrap())
            .collect();
        let e = trainer.read(outs.into_iter().last().unwrap()).unwrap_err().to_string();
        assert!(e.contains("not finite at step 2"), "{e}");
        let after = params::collect(&trainer.student, |_| true);
        // Step 3 was a good one and did train; nothing non-finite ever reached the weights.
        assert!(after.values().all(|t| t.data.iter().all(|x| x.is_finite())));
        assert_ne!(before, after);
        assert!(trainer.check_finite().is_err());
    }

    /// A trainer checkpointed after 2 steps and resumed in a new process's worth of state
    /// ends where an uninterrupted 4-step run ends, bit for bit: student, EMA teacher and
    /// optimiser moments (the masks follow the restored step).
    #[test]
    fn a_resumed_trainer_equals_an_uninterrupted_one() {
        let cfg = tiny(crate::backend::Precision::Fp32);
        let dev = Default::default();
        let batches: Vec<Batch> = (0..4u64)
            .map(|i| Batch::random(cfg.data.batch_size, 3, 9, cfg.model.img_size, cfg.run.seed + i))
            .collect();
        let mut straight = Trainer::<AB>::new(&cfg, &dev).unwrap();
        for b in &batches {
            straight.step(b).unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut first = Trainer::<AB>::new(&cfg, &dev).unwrap();
        for b in &batches[..2] {
            first.step(b).unwrap();
        }
        let ckpt = first.save_checkpoint(tmp.path(), LoaderState::default()).unwrap();
        drop(first);
        let mut resumed = Trainer::<AB>::new(&cfg, &dev).unwrap();
        assert_eq!(resumed.load_checkpoint(&ckpt).unwrap().step, 2);
        for b in &batches[2..] {
            resumed.step(b).unwrap();
        }
        let all = |_: &str| true;
        assert_eq!(params::collect(&straight.student, all), params::collect(&resumed.student, all));
        assert_eq!(params::collect(&straight.teacher, all), params::collect(&resumed.teacher, all));
        assert_eq!(straight.opt.state(), resumed.opt.state());
        assert_ne!(
            params::collect(&straight.student, all),
            params::collect(&Trainer::<AB>::new(&cfg, &dev).unwrap().student, all)
        );
    }

    fn max_diff_maps(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, HostTensor>) -> f32 {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        a.iter().map(|(k, t)| max_diff(&t.data, &b[k].data)).fold(0.0, f32::max)
    }

    /// Two workers, each on half of every global batch, against one device on the whole batch
    /// for 3 steps (masking on, so the mask draws must follow the clips' global places): the
    /// same loss, gradients and parameters within 1e-5 (sums in another order; measured about
    /// 1e-7), and the two replicas bit-identical.
    #[test]
    fn two_workers_on_the_split_batch_equal_one_device_on_the_whole() {
        let mut cfg = tiny(crate::backend::Precision::Fp32);
        cfg.data.batch_size = 4;
        let dev = Default::default();
        let batches: Vec<Batch> = (0..3u64)
            .map(|i| Batch::random(4, 3, 9, cfg.model.img_size, cfg.run.seed + i))
            .collect();
        let mut one = Trainer::<AB>::new(&cfg, &dev).unwrap();
        one.keep_grads = true;
        let mut single = Vec::new();
        for b in &batches {
            let stats = one.step(b).unwrap();
            single.push((stats, one.last_grads.clone().unwrap()));
        }
        let collective = Collective::new(2, Duration::from_secs(120));
        let workers: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|rank| {
                    let (cfg, batches, collective) = (&cfg, &batches, collective.clone());
                    s.spawn(move || {
                        let mut t = {
                            let _g = INIT.lock().unwrap();
                            Trainer::<AB>::new(cfg, &Default::default()).unwrap()
                        };
                        t.keep_grads = true;
                        t.group = Some(Group { rank, collective, first_clip: 2 * rank });
                        t.broadcast_from_rank0().unwrap();
                        let steps: Vec<_> = batches
                            .iter()
                            .map(|b| {
                                let stats = t.step(&b.split(2)[rank]).unwrap();
                                (stats, t.last_grads.clone().unwrap())
                            })
                            .collect();
                        (
                            steps,
                            params::collect(&t.student, |_| true),
                            params::collect(&t.teacher, |_| true),
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let tol = 1e-5;
        for (k, ((a, ga), (b, gb))) in single.iter().zip(&workers[0].0).enumerate() {
            let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-9);
            let dg = max_diff_maps(ga, gb);
            println!(
                "step {}: loss {} vs {} ({:.1e} rel), grad norm {:.1e} rel, gradients {dg:.1e}",
                k + 1,
                a.loss,
                b.loss,
                rel(a.loss, b.loss),
                rel(a.grad_norm, b.grad_norm)
            );
            assert!(
                rel(a.loss, b.loss) < tol as f64,
                "step {}: loss {} vs {}",
                k + 1,
                a.loss,
                b.loss
            );
            assert!(rel(a.grad_norm, b.grad_norm) < tol as f64);
            assert!(dg < tol, "step {}: gradients differ by {dg}", k + 1);
            assert_eq!((a.visible, a.in_loss, a.filled), (b.visible, b.in_loss, b.filled));
        }
        let (ds, dt) = (
            max_diff_maps(&params::collect(&one.student, |_| true), &workers[0].1),
            max_diff_maps(&params::collect(&one.teacher, |_| true), &workers[0].2),
        );
        println!("after 3 steps: student {ds:.1e}, teacher {dt:.1e}");
        assert!(ds < tol && dt < tol, "parameters differ: student {ds}, teacher {dt}");
        assert_eq!(workers[0].1, workers[1].1, "the replicas drifted apart");
        assert_eq!(workers[0].2, workers[1].2);
    }

    /// A dataset of shards and a config that trains on it over `devices` CPU workers.
    fn shard_run(dir: &Path, steps: u64) -> TrainConfig {
        use crate::testing::shards::{spec, write_dir};
        let shards = dir.join("shards");
        std::fs::create_dir_all(&shards).unwrap();
        write_dir(&shards, &spec(3, 6, 56), &[4, 4], 2);
        let set: Vec<String> = [
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
            "run.checkpoint_every=1",
            "run.keep_checkpoints=10",
            "run.log_every=1",
            "validation.every=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("data.shards={}", shards.display()), format!("run.steps={steps}")])
        .collect();
        TrainConfig::load(None, &set).unwrap()
    }

    /// A failure on one worker (an error, or a panic) ends every worker at once with that
    /// error; the checkpoints finished before it stay.
    #[test]
    fn a_failing_worker_stops_every_worker_and_keeps_the_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = shard_run(tmp.path(), 6);
        let devices = vec![Default::default(); 2];
        let quiet = |_: &str| {};
        for (rank, panics) in [(1usize, false), (0, true)] {
            let run = tmp.path().join(format!("run-{rank}"));
            let fault = move |r: usize, step: u64| -> Result<()> {
                if r == rank && step == 3 {
                    if panics {
                        panic!("injected panic");
                    }
                    bail!("injected failure");
                }
                Ok(())
            };
            let t0 = Instant::now();
            let e = train_hooked::<AB>(&cfg, &run, false, None, &devices, &quiet, Some(&fault))
                .unwrap_err();
            let e = format!("{e:#}");
            println!("{e}");
            assert!(t0.elapsed() < Duration::from_secs(120), "took {:?}", t0.elapsed());
            let want = if panics { "panicked: injected panic" } else { "injected failure" };
            assert!(e.contains(want) && e.contains(&format!("worker {rank}")), "{e}");
            assert!(
                e.contains("the last good checkpoint is") && e.contains("step-00000002"),
                "{e}"
            );
            let kept: Vec<String> = rundir::checkpoints(&run)
                .iter()
                .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(kept, ["step-00000001", "step-00000002"]);
        }
    }

    /// Two workers interrupted after step 2 and resumed end exactly where an uninterrupted
    /// two-worker run ends (bit for bit), and within 1e-5 of one device on the whole batch.
    #[test]
    fn a_resumed_two_worker_run_equals_an_uninterrupted_one() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = shard_run(tmp.path(), 4);
        let (one, two) = (vec![Default::default()], vec![Default::default(); 2]);
        let quiet = |_: &str| {};
        let (straight, split, single) =
            (tmp.path().join("straight"), tmp.path().join("split"), tmp.path().join("single"));
        train::<AB>(&cfg, &straight, false, None, &two, &quiet).unwrap();
        train::<AB>(&cfg, &split, false, Some(2), &two, &quiet).unwrap();
        let s = train::<AB>(&cfg, &split, true, None, &two, &quiet).unwrap();
        assert_eq!(s.steps, 4);
        train::<AB>(&cfg, &single, false, None, &one, &quiet).unwrap();
        let read = |run: &Path, f: &str| {
            rundir::read_checkpoint_tensors(&run.join("checkpoints/step-00000004"), f).unwrap()
        };
        for f in ["student", "teacher", "optimizer"] {
            assert_eq!(read(&straight, f), read(&split, f), "{f}");
            let d = max_diff_maps(&read(&straight, f), &read(&single, f));
            println!("{f}: two workers vs one device {d:.1e}");
            assert!(d < 1e-5, "{f}: {d}");
        }
        let losses = |run: &Path| -> Vec<f64> {
            rundir::read_metrics(run, u64::MAX).iter().map(|s| s.loss).collect()
        };
        assert_eq!(losses(&straight), losses(&split));
    }

    /// bfloat16 for the teacher and the frozen blocks: the step's loss and gradient norm stay
    /// within 2% of the float32 step's (stated tolerance; on Flex, or on libtorch's CPU device
    /// in a `tch` build), and the teacher's matrix products really ran in bf16.
    #[test]
    fn a_bf16_step_stays_close_to_the_fp32_step() {
        type F = Autodiff<crate::testing::Bf16>;
        use crate::backend::Precision;
        let dev = Default::default();
        let mut runs = Vec::new();
        for p in [Precision::Fp32, Precision::Bf16] {
            let cfg = tiny(p);
            let batch = Batch::random(cfg.data.batch_size, 3, 9, cfg.model.img_size, cfg.run.seed);
            let mut trainer = Trainer::<F>::new(&cfg, &dev).unwrap();
            let stats: Vec<StepStats> = (0..3).map(|_| trainer.step(&batch).unwrap()).collect();
            let x = Tensor::<crate::testing::Bf16, 4>::ones([1, 3, 56, 56], &dev);
            let tokens = values(trainer.teacher.backbone.forward_patch_tokens(x, None));
            runs.push((stats, tokens));
        }
        let (fp32, bf16) = (&runs[0], &runs[1]);
        for (a, b) in fp32.0.iter().zip(&bf16.0) {
            let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-9);
            println!(
                "step {}: loss {} vs {}, grad {} vs {}",
                a.step, a.loss, b.loss, a.grad_norm, b.grad_norm
            );
            assert!(rel(a.loss, b.loss) < 0.02, "loss {} vs {}", a.loss, b.loss);
            assert!(
                rel(a.grad_norm, b.grad_norm) < 0.02,
                "grad norm {} vs {}",
                a.grad_norm,
                b.grad_norm
            );
        }
        let d = max_diff(&fp32.1, &bf16.1);
        assert!(
            d > 1e-4 && d < 0.5,
            "teacher tokens differ by {d}: bf16 must change them a little"
        );
    }

    /// tools/make_loss_golden.py derives the selected points, weights, Sinkhorn rows, targets,
    /// loss and gradients from stored tracks, crops and dropped patches with the released
    /// code's functions; the trainer's own path from the same inputs must agree to 1e-5.
    #[test]
    fn golden_objective_from_stored_tracks_crops_and_masks() {
        let (g, cfg) = fixture("objective");
        let u = |k: &str| cfg[k].as_u64().unwrap() as usize;
        let (b, t, w, s, patch, grid, d) =
            (u("B"), u("T"), u("W"), u("S"), u("patch") as f32, u("grid") as u32, u("D"));
        let (n, hw, k) = ((grid * grid) as usize, (s / patch as usize).pow(2), u("K"));
        let gs = s / patch as usize;
        let queries: Vec<[f32; 2]> =
            g["stored_queries"].1.chunks(2).map(|p| [p[0], p[1]]).collect();
        let (mut tracks, mut vis, mut inside) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..b {
            let crop = &cfg["crops"][c];
            let cu = |k: &str| crop[k].as_u64().unwrap() as u32;
            let aug = Aug {
                flip: crop["flip"].as_bool().unwrap(),
                left: cu("left"),
                top: cu("top"),
                width: cu("width"),
                height: cu("height"),
                frame_width: w as u32,
            };
            let sel = select_points(&queries, &aug, s, grid);
            let want: Vec<Option<usize>> =
                g["selected"].1[c * n..(c + 1) * n].iter().map(|&v| Some(v as usize)).collect();
            assert_eq!(sel, want, "clip {c}: selected stored points");
            let clip = mosic::Clip {
                dataset: "golden".into(),
                video_id: format!("v{c}"),
                clip_index: 0,
                frame_indices: (0..t as u32).collect(),
                source_fps: 30.0,
                frames: vec![],
                queries: queries.clone(),
                tracks: g[&format!("stored_tracks_{c}")]
                    .1
                    .chunks(2)
                    .map(|p| [p[0], p[1]])
                    .collect(),
                visibility: g[&format!("stored_visibility_{c}")]
                    .1
                    .iter()
                    .map(|&v| v != 0.0)
                    .collect(),
            };
            let (tr, vi, ins) = clip_points(&clip, &aug, s, grid);
            tracks.extend(tr.into_iter().flatten());
            vis.extend(vi.into_iter().map(|v| v as u8 as f32));
            inside.extend(ins.into_iter().map(|v| v as u8 as f32));
        }
        let off = max_diff(&tracks, &g["points"].1);
        assert!(off < 1e-4, "mapped tracks differ by {off}");
        assert_eq!(vis, g["visibility"].1, "visibility in the crop");
        assert_eq!(inside, g["inside"].1, "inside the crop");
        let batch = Batch {
            clips: b,
            frames: t,
            points: n,
            size: s,
            images: vec![],
            tracks,
            visibility: vis,
            inside,
            ids: vec![],
        };
        let dropped: Vec<Vec<usize>> = cfg["dropped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect())
            .collect();

        let layers = cfg["hidden"].as_array().unwrap().len() + 1;
        let (student, s_protos) = head::<AB>(&g, "student", layers);
        let (teacher, t_protos) = head::<Inner>(&g, "teacher", layers);
        let keep = &g["keep"].1;
        let kept_rows: Vec<f32> = g["student_tokens"]
            .1
            .chunks(d)
            .enumerate()
            .filter(|(r, _)| keep[*r] == 1.0)
            .flat_map(|(_, row)| row.to_vec())
            .collect();
        let l = hw - dropped[0].len();
        for v in cfg["variants"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            let obj = ObjectiveConfig {
                teacher_sampling: serde_json::from_value(v["teacher_sampling"].clone()).unwrap(),
                student_sampling: Sampling::Nearest,
                sinkhorn_rows: serde_json::from_value(v["sinkhorn_rows"].clone()).unwrap(),
                reduction: serde_json::from_value(v["reduction"].clone()).unwrap(),
                masking: Masking::Drop,
                ..Default::default()
            };
            let inputs = StepInputs::new(&batch, &obj, gs, patch, Some(&dropped));
            assert_eq!(inputs.weights, g["weights"].1, "{name}: loss weights");
            assert_eq!(inputs.rows, g[&format!("{name}.rows")].1, "{name}: Sinkhorn rows");
            let tt: Tensor<Inner, 2> = Tensor::from_data(
                TensorData::new(g["teacher_tokens"].1.clone(), [b * t * hw, d]),
                &Default::default(),
            );
            let t_scores = t_protos
                .scores(teacher.forward(gather_points(tt, &inputs.teacher)))
                .reshape([b, t, n, k]);
            let st: Tensor<AB, 2> = Tensor::from_data(
                TensorData::new(kept_rows.clone(), [b * l, d]),
                &Default::default(),
            );
            let s_scores = s_protos
                .scores(student.forward(gather_points(st, &inputs.student)))
                .reshape([b, n, k]);
            let lc = LossConfig {
                temperature: 0.1,
                epsilon: 0.05,
                iterations: 10,
                reduction: obj.reduction,
            };
            let weights = Tensor::<AB, 3>::from_data(
                TensorData::new(inputs.weights.clone(), [b, t, n]),
                &Default::default(),
            );
            let rows = Tensor::<AB, 1>::from_data(
                TensorData::new(inputs.rows.clone(), [b * t * n]),
                &Default::default(),
            );
            let out =
                mosic_loss(s_scores, Tensor::from_inner(t_scores), weights, Some(rows), &lc, None)
                    .unwrap();
            let tol = 1e-5;
            let dq = max_diff(&values(out.assignments.clone()), &g[&format!("{name}.sinkhorn")].1);
            assert!(dq < tol, "{name}: Sinkhorn differs by {dq}");
            let targets: Vec<f32> =
                out.targets.into_data().iter::<i64>().map(|v| v as f32).collect();
            let want_targets = &g[&format!("{name}.targets")].1;
            for (e, (a, w)) in targets.iter().zip(want_targets).enumerate() {
                assert!(inputs.rows[e] == 0.0 || a == w, "{name}: target of entry {e}: {a} vs {w}");
            }
            let dl = max_diff(&values(out.loss.clone()), &g[&format!("{name}.loss")].1);
            assert!(dl < tol, "{name}: loss differs by {dl}");
            let grads = out.loss.backward();
            let mut worst = dl.max(dq);
            for (j, layer) in student.layers.iter().enumerate() {
                let gw = values(layer.weight.val().grad(&grads).unwrap());
                let gb = values(layer.bias.as_ref().unwrap().val().grad(&grads).unwrap());
                worst = worst.max(max_diff(&gw, &g[&format!("{name}.grad.layers.{j}.weight")].1));
                worst = worst.max(max_diff(&gb, &g[&format!("{name}.grad.layers.{j}.bias")].1));
            }
            let gp = values(s_protos.weight.val().grad(&grads).unwrap());
            worst = worst.max(max_diff(&gp, &g[&format!("{name}.grad.prototypes")].1));
            println!("objective golden {name}: worst max |diff| {worst:.2e} (tolerance {tol:e})");
            assert!(worst < tol, "{name}: gradients differ by {worst}");
        }
    }
}
