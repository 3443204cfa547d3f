#!/usr/bin/env python3
"""One MoSiC training step in PyTorch + timm: the speed reference of `mosic bench step`
(which runs this script as a subprocess) and of `tools/bench-gpu.sh`.

The step does the work of the released training step (SMSD75/MoSiC,
experiments/exp_mosic_multigpu.py, MoSiCCoTracker.train_step + update_teacher): teacher
forward on every frame, projection head, cosine scores against prototypes, Sinkhorn-Knopp
over all teacher points, hard targets; student prediction at frame 0, visibility-weighted
cross-entropy against the target at every frame; AdamW; EMA teacher.

What differs from the released code (same values, less work and memory):
- point features are a direct gather of the patch token under each point, instead of
  upsampling every patch map to the full input size (`_resize_features_orig_res`, nearest)
  and indexing the rounded pixel. Points are (x, y) with x the column: the released code
  indexes [.., x, y], i.e. the transposed position, which we do not reproduce;
- the frozen blocks are shared by student and teacher and run once, without grad (the
  released code runs two full backbones); only the trainable blocks are EMA'd (the frozen
  ones stay identical under EMA anyway);
- the student runs frame 0 only: the loss reads only its frame-0 scores (`_hard_assignment`);
- tracks and visibility are random inputs (the released code runs CoTracker3 in the step);
  no masking (train.sh: --mask_ratio 0);
- the loss is averaged over visible entries (paper); the released code averages over all
  B*T*N entries;
- bf16 is autocast mixed precision with fp32 master weights (the released DeepSpeed config
  has its fp16 mode off, i.e. it trains in fp32).

Usage:
  python tools/bench/torch_step.py --device cuda --precision bf16,fp32 --batch 16,64
  python tools/bench/torch_step.py --device cpu --batch 2 --frames 4 --grid 4 --steps 2 --warmup 1 --threads 2
"""
import argparse
import contextlib
import copy
import gc
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm


def make_head(dim, hidden, out_dim):
    # Released MoSiC.__init__ (experiments/exp_mosic.py): Linear-GELU-...-Linear, no GELU after
    # the last layer; its widths are 1024 1024 512 (--hidden 1024 1024 512), the paper's 2048 2048.
    dims = [dim] + list(hidden) + [out_dim]
    layers = []
    for i in range(len(dims) - 1):
        if i > 0:
            layers.append(nn.GELU())
        layers.append(nn.Linear(dims[i], dims[i + 1]))
    return nn.Sequential(*layers)


@torch.no_grad()
def sinkhorn_targets(scores, eps, iters):
    """utils/my_utils.py find_optimal_assignment + sinkhorn (world_size 1): Q = exp(scores/eps)
    as [K, M], uniform marginals 1/K over prototypes and 1/M over points, then each point's
    column normalised to 1; the target is its argmax. In fp32 whatever the autocast dtype."""
    s = scores.float()
    # A global shift, cancelled by the first normalisation (exp(1/0.05) fits fp32 without it,
    # smaller eps would not).
    q = torch.exp((s - s.max()) / eps).t()
    q /= q.sum()
    k, m = q.shape
    for _ in range(iters):
        q *= (1.0 / k) / q.sum(dim=1, keepdim=True)
        q *= (1.0 / m) / q.sum(dim=0, keepdim=True)
    q /= q.sum(dim=0, keepdim=True)
    return q.argmax(dim=0)


class Step:
    """Student and EMA teacher (MoSiCCoTracker.__init__ with use_EMA_teacher) and one step."""

    def __init__(self, a, batch, device, precision):
        self.a, self.device = a, device
        dev_type = torch.device(device).type
        self.autocast = (torch.autocast(dev_type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())
        vit = timm.create_model(a.model, pretrained=False, img_size=a.size, num_classes=0)
        vit = vit.to(device).train()
        depth = len(vit.blocks)
        if not 0 <= a.trainable <= depth:
            raise SystemExit(f"--trainable {a.trainable}: the model has {depth} blocks")
        # freeze_feature_extractor(["blocks.11", "blocks.10"]): everything frozen (final norm
        # included) but the last blocks; we count them from the end.
        for p in vit.parameters():
            p.requires_grad_(False)
        self.vit = vit
        self.frozen = vit.blocks[: depth - a.trainable]
        self.student = vit.blocks[depth - a.trainable:]
        for p in self.student.parameters():
            p.requires_grad_(True)
        self.prefix = vit.num_prefix_tokens
        self.patch = vit.patch_embed.patch_size[0]
        self.gh, self.gw = vit.patch_embed.grid_size
        dim = vit.num_features

        self.head = make_head(dim, a.hidden, a.out_dim).to(device)
        self.protos = nn.Parameter(F.normalize(torch.randn(a.prototypes, a.out_dim, device=device), dim=1))
        # EMA teacher: deep copies, no grad.
        self.t_blocks = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.t_head = copy.deepcopy(self.head).requires_grad_(False).eval()
        self.t_protos = self.protos.detach().clone()

        # MoSiC.get_optimization_params(lr=1e-4) + the DeepSpeed config: AdamW, weight decay
        # 1e-2 except biases and 1-D parameters; backbone lr/10, head and prototypes lr (the
        # cosine schedule is left out: it does not change the step's cost). DeepSpeed's AdamW is
        # its fused CUDA kernel, hence fused=True on CUDA.
        def groups(module, lr):
            ps = [p for p in module.parameters() if p.requires_grad]
            return [{"params": [p for p in ps if p.ndim > 1], "lr": lr},
                    {"params": [p for p in ps if p.ndim <= 1], "lr": lr, "weight_decay": 0.0}]
        param_groups = groups(self.student, 1e-5) + groups(self.head, 1e-4) + [{"params": [self.protos], "lr": 1e-4}]
        param_groups = [g for g in param_groups if g["params"]]
        self.opt = torch.optim.AdamW(param_groups, lr=1e-4, weight_decay=1e-2,
                                     fused=(dev_type == "cuda") or None)
        self.ema_pairs = (list(self.t_blocks.parameters()) + list(self.t_head.parameters()) + [self.t_protos],
                          list(self.student.parameters()) + list(self.head.parameters()) + [self.protos])

        # A fixed batch: ImageNet-normalised-like frames, track points, visibility.
        b, t, n = batch, a.frames, a.grid * a.grid
        self.b, self.t, self.n = b, t, n
        self.frames = torch.randn(b, t, 3, a.size, a.size, device=device)
        self.points = torch.rand(b, t, n, 2, device=device) * a.size
        vis = (torch.rand(b, t, n, device=device) > 0.1).float()
        vis[:, 0] = 1.0  # a track is visible at its query frame
        self.vis = vis

    def trunk(self, x):
        # timm VisionTransformer.forward_features up to the first trainable block.
        v = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))
        return self.frozen(x)

    def patch_index(self, pts):
        # Nearest patch of each (x, y): what nearest upsampling to full size then indexing the
        # rounded pixel picks (floor(round(x) / patch) = floor((x + 0.5) / patch)).
        col = torch.floor((pts[..., 0] + 0.5) / self.patch).long().clamp_(0, self.gw - 1)
        row = torch.floor((pts[..., 1] + 0.5) / self.patch).long().clamp_(0, self.gh - 1)
        return row * self.gw + col

    def features_at(self, tokens, idx):
        # tokens [F, prefix + L, D] after the final norm, idx [F, N] -> [F, N, D].
        patches = tokens[:, self.prefix:]
        return torch.gather(patches, 1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))

    def step(self):
        a, b, t, n = self.a, self.b, self.t, self.n
        # train_step: both prototype sets L2-normalised at the start of every step.
        with torch.no_grad():
            self.protos.copy_(F.normalize(self.protos, dim=1))
            self.t_protos.copy_(F.normalize(self.t_protos, dim=1))
        idx = self.patch_index(self.points)  # [B, T, N]
        with self.autocast:
            with torch.no_grad():
                x = self.trunk(self.frames.flatten(0, 1))  # [B*T, prefix + L, D]
                # Teacher: every frame, unmasked.
                tt = self.vit.norm(self.t_blocks(x))
                tf = self.features_at(tt, idx.flatten(0, 1))  # [B*T, N, D]
                tz = F.normalize(self.t_head(tf).flatten(0, 1), dim=-1)
                t_scores = tz @ self.t_protos.t()  # [B*T*N, K]
                targets = sinkhorn_targets(t_scores, a.eps, a.iters).view(b, t, n)
            # Student: frame 0 only (the loss reads no other frame of it).
            x0 = x.view(b, t, *x.shape[1:])[:, 0]
            st = self.vit.norm(self.student(x0))
            sf = self.features_at(st, idx[:, 0])  # [B, N, D]
            sz = F.normalize(self.head(sf), dim=-1)
            s_scores = torch.einsum("bnd,kd->bnk", sz, self.protos)
        # _hard_assignment: CE(frame-0 scores / 0.1, target at frame t), weighted by visibility.
        logp = F.log_softmax(s_scores.float() / 0.1, dim=-1)  # [B, N, K]
        nll = -logp.unsqueeze(1).expand(b, t, n, logp.shape[-1]).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        loss = (nll * self.vis).sum() / self.vis.sum().clamp_min(1.0)

        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        # update_teacher: t = m t + (1 - m) s over blocks, head and prototypes.
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_pairs[0], self.ema_pairs[1], 1.0 - a.ema)
        return loss


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", help="fp32, bf16, or a comma list")
    p.add_argument("--batch", default="16", help="clips per step, or a comma list")
    p.add_argument("--model", default="vit_small_patch14_dinov2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--grid", type=int, default=16, help="grid^2 points per clip and frame")
    p.add_argument("--trainable", type=int, default=2, help="last blocks trained")
    p.add_argument("--hidden", type=int, nargs="*", default=[2048, 2048])
    p.add_argument("--out-dim", type=int, default=256)
    p.add_argument("--prototypes", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads when > 0")
    a = p.parse_args()

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    precisions = [s.strip() for s in a.precision.split(",") if s.strip()]
    for pr in precisions:
        if pr not in ("fp32", "bf16"):
            raise SystemExit(f"--precision {pr}: fp32 or bf16")
    batches = [int(s) for s in a.batch.split(",") if s.strip()]
    if a.steps < 1:
        raise SystemExit("--steps must be at least 1")
    cuda = torch.device(a.device).type == "cuda"
    torch.manual_seed(0)

    for pr in precisions:
        for b in batches:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(a.device)
            s = Step(a, b, a.device, pr)
            times = []
            for i in range(a.warmup + a.steps):
                if cuda:
                    torch.cuda.synchronize(a.device)
                t0 = time.perf_counter()
                loss = s.step()
                loss.item()
                if cuda:
                    torch.cuda.synchronize(a.device)
                if i >= a.warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
            ms = statistics.median(times)
            mem = torch.cuda.max_memory_allocated(a.device) / 2**30 if cuda else float("nan")
            print(f"torch {torch.__version__} {a.device} {pr} {a.model} batch {b} x {a.frames} frames x "
                  f"{a.grid * a.grid} points: {ms:.1f} ms/step, {b * 1e3 / ms:.2f} clips/s, peak {mem:.2f} GiB",
                  flush=True)
            del s, loss


if __name__ == "__main__":
    main()
