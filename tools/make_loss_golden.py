#!/usr/bin/env python3
"""Builds tests/fixtures/loss/: a PyTorch reference for trainer/src/{head,loss}.rs.

One seeded batch goes through the MoSiC objective as the trainer runs it:

    P        = rows of the prototypes L2-normalised (the parameter is replaced, no gradient
               through the normalisation)
    z        = head(features)                  Linear -> exact GELU -> ... -> Linear
    scores   = normalize(z) @ P^T              cosine similarity
    Q        = sinkhorn(teacher scores of all B*T*N rows, eps, iterations)   (SwAV)
    target   = argmax_k Q
    loss     = sum_{b,t,i} vis * CE(log_softmax(student[b,i] / temp), target[b,t,i]) / denom
               denom = #visible (reduction "visible") or B*T*N (reduction "all")

It saves inputs, parameters, Sinkhorn output, targets, both losses and the gradients
of both losses w.r.t. the student head and student prototypes, plus features sampled
at points by F.grid_sample (an independent check of the x = column convention).

Everything is computed in float64 from float32-rounded inputs and saved as float32
(targets as int64), so the float32 Rust side can be compared at 1e-5.
Linear weights are saved in Burn's [in, out] layout.

usage: python tools/make_loss_golden.py --out tests/fixtures/loss
"""
import argparse
import json
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

CFG = dict(B=2, T=3, N=5, D=16, hidden=[24, 20], out_dim=8, K=6,
           temperature=0.1, epsilon=0.06, iterations=3,
           # sample_points check: a 4x5 patch grid of 14-pixel patches
           grid_h=4, grid_w=5, patch=14.0, sample_N=7)


def f32(t):
    """Round to float32 (what the Rust side reads), compute in float64."""
    return t.float().double()


def init_head(g, cfg):
    dims = [cfg["D"], *cfg["hidden"], cfg["out_dim"]]
    layers = []
    for i, o in zip(dims[:-1], dims[1:]):
        k = 1.0 / i ** 0.5
        w = f32((torch.rand(i, o, generator=g, dtype=torch.float64) * 2 - 1) * k)
        b = f32((torch.rand(o, generator=g, dtype=torch.float64) * 2 - 1) * k)
        layers.append((w, b))
    protos = f32(torch.randn(cfg["K"], cfg["out_dim"], generator=g, dtype=torch.float64))
    return layers, protos


def head_forward(layers, x):
    for j, (w, b) in enumerate(layers):
        x = x @ w + b
        if j + 1 < len(layers):
            x = F.gelu(x)  # exact (erf) GELU
    return x


def cosine_scores(z, p):
    return F.normalize(z, dim=-1) @ p.T


@torch.no_grad()
def sinkhorn(out, eps, iters):
    # SwAV's distributed_sinkhorn on one device, verbatim
    Q = torch.exp(out / eps).t()
    B = Q.shape[1]
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iters):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def mosic_loss(student_scores, teacher_scores, vis, cfg, reduction):
    B, T, N, K = teacher_scores.shape
    Q = sinkhorn(teacher_scores.reshape(-1, K).detach(), cfg["epsilon"], cfg["iterations"])
    targets = Q.argmax(dim=1).reshape(B, T, N)
    logp = F.log_softmax(student_scores / cfg["temperature"], dim=-1)  # [B, N, K]
    logp = logp[:, None].expand(B, T, N, K)
    ce = -torch.gather(logp, 3, targets[..., None])[..., 0] * vis
    denom = vis.sum() if reduction == "visible" else torch.tensor(float(B * T * N), dtype=vis.dtype)
    return ce.sum() / denom, Q, targets


def sample_reference(feats, pts, h, w, patch, mode):
    """features [B, T, h*w, D] at points [B, T, N, 2] (x = column, y = row) by grid_sample."""
    B, T, _, D = feats.shape
    img = feats.reshape(B * T, h, w, D).permute(0, 3, 1, 2)
    # align_corners=False: -1 and 1 are the outer edges of the image, w*patch pixels wide,
    # whose pixel centres sit at integer coordinates
    gx = (pts[..., 0] + 0.5) / (w * patch) * 2 - 1
    gy = (pts[..., 1] + 0.5) / (h * patch) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1).reshape(B * T, 1, -1, 2)
    out = F.grid_sample(img, grid, mode=mode, padding_mode="border", align_corners=False)
    return out[:, :, 0].permute(0, 2, 1).reshape(B, T, -1, D)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/loss")
    ap.add_argument("--seed", type=int, default=20250)
    args = ap.parse_args()
    cfg = dict(CFG, seed=args.seed)
    B, T, N, D, K = cfg["B"], cfg["T"], cfg["N"], cfg["D"], cfg["K"]

    g = torch.Generator().manual_seed(args.seed)
    student_feats = f32(torch.randn(B, N, D, generator=g, dtype=torch.float64))
    teacher_feats = f32(torch.randn(B, T, N, D, generator=g, dtype=torch.float64))
    vis = (torch.rand(B, T, N, generator=g) > 0.3).double()
    vis[:, 0] = 1.0  # the query frame is visible
    s_layers, s_protos = init_head(g, cfg)
    t_layers, t_protos = init_head(g, cfg)

    out = {
        "student_feats": student_feats, "teacher_feats": teacher_feats, "visibility": vis,
        "student.prototypes": s_protos, "teacher.prototypes": t_protos,
    }
    for who, layers in (("student", s_layers), ("teacher", t_layers)):
        for j, (w, b) in enumerate(layers):
            out[f"{who}.layers.{j}.weight"] = w
            out[f"{who}.layers.{j}.bias"] = b

    with torch.no_grad():
        t_scores = cosine_scores(head_forward(t_layers, teacher_feats), F.normalize(t_protos, dim=1))
    out["teacher_scores"] = t_scores

    for reduction in ("visible", "all"):
        params = [p.clone().requires_grad_() for wb in s_layers for p in wb]
        protos = F.normalize(s_protos, dim=1).detach().requires_grad_()
        layers = list(zip(params[0::2], params[1::2]))
        s_scores = cosine_scores(head_forward(layers, student_feats), protos)
        loss, Q, targets = mosic_loss(s_scores, t_scores, vis, cfg, reduction)
        loss.backward()
        out[f"loss_{reduction}"] = loss.detach().reshape(1)
        for j, (w, b) in enumerate(layers):
            out[f"grad_{reduction}.layers.{j}.weight"] = w.grad
            out[f"grad_{reduction}.layers.{j}.bias"] = b.grad
        out[f"grad_{reduction}.prototypes"] = protos.grad
    out["student_scores"] = s_scores.detach()
    out["sinkhorn"] = Q
    out["targets"] = targets

    # argmax must not hinge on float32 rounding on the Rust side
    top2 = Q.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    assert margin > 1e-4, f"near-tie in the Sinkhorn argmax ({margin}); pick another seed"
    cfg["min_argmax_margin"] = margin

    h, w, patch, sn = cfg["grid_h"], cfg["grid_w"], cfg["patch"], cfg["sample_N"]
    feats = f32(torch.randn(B, T, h * w, D, generator=g, dtype=torch.float64))
    # inside the image and a little past its edges, to exercise border clamping
    pts = torch.rand(B, T, sn, 2, generator=g, dtype=torch.float64)
    pts = pts * torch.tensor([w * patch + 20, h * patch + 20], dtype=torch.float64) - 10
    pts = f32(pts)
    out["sample_feats"], out["sample_points"] = feats, pts
    out["sampled_bilinear"] = sample_reference(feats, pts, h, w, patch, "bilinear")
    out["sampled_nearest"] = sample_reference(feats, pts, h, w, patch, "nearest")

    dest = pathlib.Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.contiguous() if v.dtype == torch.int64 else v.float().contiguous()) for k, v in out.items()}
    save_file(tensors, str(dest / "golden.safetensors"))
    cfg["dtype"] = "computed in float64 from float32 inputs, saved as float32"
    cfg["linear_weight_layout"] = "[in, out]"
    cfg["torch"] = torch.__version__
    (dest / "golden.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"loss visible {out['loss_visible'].item():.6f}  all {out['loss_all'].item():.6f}  "
          f"argmax margin {margin:.2e}  -> {dest}")


if __name__ == "__main__":
    main()
