#!/usr/bin/env python3
"""Builds tests/fixtures/eval/probe.json: PyTorch references for eval/src/dense.rs and
eval/src/linear.rs.

- bilinear: F.interpolate(x, size, mode="bilinear", align_corners=False) of a random
  [1, D, h, w] map to several output sizes, up and down.
- probe: Leopart's linear head: a 1x1 Conv2d on patch features, logits upsampled bilinearly to
  the mask size, F.cross_entropy(ignore_index=255); the loss and the gradients of weight and
  bias, then the parameters after three torch.optim.SGD steps (lr, momentum, weight decay)
  on the same batch.

All tensors are float32; values are written with repr so they round-trip.

usage: python tools/goldens/make_probe_golden.py --out tests/fixtures/eval
needs: torch
"""
import argparse
import json
import pathlib

import torch
import torch.nn.functional as F


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/eval")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(args.seed)

    bilinear = []
    for (h, w, d, oh, ow) in [(4, 5, 3, 9, 13), (6, 6, 2, 37, 40), (7, 3, 2, 4, 2), (1, 1, 2, 3, 3)]:
        x = torch.randn(1, d, h, w, generator=g)
        y = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)
        # Rust layout: [h, w, d] in, [oh, ow, d] out.
        bilinear.append({"h": h, "w": w, "dim": d, "out_h": oh, "out_w": ow,
                         "input": flat(x[0].permute(1, 2, 0)), "output": flat(y[0].permute(1, 2, 0))})

    b, d, gh, gw, c, mh, mw = 3, 8, 4, 5, 4, 11, 9
    feats = torch.randn(b, d, gh, gw, generator=g)
    labels = torch.randint(0, c, (b, mh, mw), generator=g)
    labels[torch.rand(b, mh, mw, generator=g) < 0.15] = 255
    conv = torch.nn.Conv2d(d, c, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(c, d, 1, 1, generator=g) * 0.3)
        conv.bias.copy_(torch.randn(c, generator=g) * 0.3)
    w0, b0 = conv.weight.detach().clone(), conv.bias.detach().clone()

    def loss_fn():
        logits = F.interpolate(conv(feats), size=(mh, mw), mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, labels, ignore_index=255)

    loss = loss_fn()
    loss.backward()
    grad_w, grad_b = conv.weight.grad.detach().clone(), conv.bias.grad.detach().clone()
    lr, momentum, wd = 0.05, 0.9, 1e-2
    opt = torch.optim.SGD(conv.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    conv.zero_grad()
    for _ in range(3):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    probe = {
        "images": b, "dim": d, "grid_h": gh, "grid_w": gw, "classes": c, "mask_h": mh, "mask_w": mw,
        "features": flat(feats.permute(0, 2, 3, 1)), "labels": [int(v) for v in labels.reshape(-1).tolist()],
        "weight": flat(w0.reshape(c, d)), "bias": flat(b0),
        "loss": float(loss.detach()), "grad_weight": flat(grad_w.reshape(c, d)), "grad_bias": flat(grad_b),
        "lr": lr, "momentum": momentum, "weight_decay": wd, "steps": 3,
        "weight_after": flat(conv.weight.reshape(c, d)), "bias_after": flat(conv.bias),
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"made_by": "tools/goldens/make_probe_golden.py", "torch": torch.__version__, "seed": args.seed}
    (out / "probe.json").write_text(json.dumps({"meta": meta, "bilinear": bilinear, "probe": probe}) + "\n")
    print(f"wrote {out / 'probe.json'}")


if __name__ == "__main__":
    main()
