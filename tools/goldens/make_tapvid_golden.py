#!/usr/bin/env python3
"""Builds tests/fixtures/tapvid/golden.json: TAP-Vid metrics from the reference code.

The reference is `compute_tapvid_metrics` of google-deepmind/tapnet
(tapnet/tapvid/evaluation_datasets.py), query mode "first": metrics per video, then the
benchmark's mean over videos. Only that function is loaded from the checkout (its module
imports TensorFlow and more, which the function does not use), so numpy is all this needs.

The fixture holds seeded random clips in the shard's layout (stored pixels of W x H frames,
tracks [T][N], queries on frame 0) with ground truth and predictions, and the metrics the
reference computes for them when each clip is one video, scaled to 256 x 256 as TAP-Vid is.
Coordinates are multiples of 1/64 px, and predictions are placed so that no distance lies within 1e-3 px^2 of a threshold, so float
rounding cannot flip a comparison; the Rust test (`eval::tests::tapvid_golden`) pins every
metric to 1e-6.

usage: python3 tools/goldens/make_tapvid_golden.py TAPNET_CHECKOUT [--out tests/fixtures/tapvid/golden.json]
"""
import argparse
import ast
import json
import pathlib
import subprocess

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = pathlib.Path("tapnet/tapvid/evaluation_datasets.py")
CLIPS, T, GRID, W, H = 6, 8, 4, 224, 224
THRESHOLDS = [1, 2, 4, 8, 16]


def load_reference(checkout):
    """compute_tapvid_metrics compiled from the checkout's source, with numpy only."""
    path = checkout / SOURCE
    tree = ast.parse(path.read_text(), filename=str(path))
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compute_tapvid_metrics"]
    if len(fns) != 1:
        raise SystemExit(f"{path}: no single compute_tapvid_metrics function")
    module = ast.Module(body=fns, type_ignores=[])
    scope = {"np": np, "Mapping": dict}
    exec(compile(module, str(path), "exec"), scope)
    return scope["compute_tapvid_metrics"]


def make_clips(rng):
    n = GRID * GRID
    m = W / 64.0
    lin = lambda lo, hi: lo + (hi - lo) * np.arange(GRID) / (GRID - 1)
    xs, ys = np.meshgrid(lin(m, W - 1 - m), lin(m, H - 1 - m))
    queries = np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)  # row-major, x fastest
    clips = []
    for c in range(CLIPS):
        # Ground truth: random walks from the queries; occlusion in runs after the query frame.
        steps = rng.normal(0.0, 2.0 + c, (T, n, 2)).astype(np.float32)
        steps[0] = 0
        gt = queries[None] + np.cumsum(steps, axis=0)
        vis = np.ones((T, n), bool)
        for i in range(n):
            if rng.random() < 0.4:
                a = rng.integers(1, T)
                vis[a:a + rng.integers(1, T), i] = False
        # Predictions: errors from sub-pixel to far off, visibility sometimes wrong.
        scale = rng.choice([0.2, 0.7, 1.5, 3.0, 6.0, 12.0, 30.0], size=(T, n, 1))
        pred = gt + (rng.normal(0.0, 1.0, (T, n, 2)) * scale).astype(np.float32)
        pvis = np.where(rng.random((T, n)) < 0.15, ~vis, vis)
        pred[0], pvis[0] = queries, True
        gt[0], vis[0] = queries, True
        # Multiples of 1/64 px: exact in float32 and short in JSON.
        gt, pred = np.round(gt * 64) / 64, np.round(pred * 64) / 64
        # Keep every distance clear of the thresholds (at 256 x 256).
        s = np.array([256.0 / W, 256.0 / H], np.float32)
        for _ in range(100):
            d2 = np.sum(np.square(pred * s - gt * s), axis=-1)
            close = np.zeros_like(d2, bool)
            for th in THRESHOLDS:
                close |= np.abs(d2 - th * th) < 1e-3
            if not close.any():
                break
            pred[close] += np.float32(1 / 16)
        else:
            raise SystemExit("could not keep distances clear of the thresholds")
        clips.append(dict(gt=gt.astype(np.float32), vis=vis, pred=pred.astype(np.float32), pvis=pvis))
    return queries, clips


def reference_metrics(fn, queries, clips):
    s = np.array([256.0 / W, 256.0 / H], np.float32)
    n = queries.shape[0]
    # TAP-Vid layout: query_points [b, n, (t, y, x)], occluded [b, n, t], tracks [b, n, t, (x, y)].
    qp = np.zeros((len(clips), n, 3), np.float32)
    qp[:, :, 1] = queries[None, :, 1] * s[1]
    qp[:, :, 2] = queries[None, :, 0] * s[0]
    gt_tracks = np.stack([c["gt"].transpose(1, 0, 2) * s for c in clips])
    pred_tracks = np.stack([c["pred"].transpose(1, 0, 2) * s for c in clips])
    gt_occ = np.stack([~c["vis"].T for c in clips])
    pred_occ = np.stack([~c["pvis"].T for c in clips])
    per_video = fn(qp, gt_occ, gt_tracks, pred_occ, pred_tracks, "first")
    # The benchmark's number: the mean over videos.
    return {k: float(np.mean(v)) for k, v in per_video.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tapnet", type=pathlib.Path, help="checkout of github.com/google-deepmind/tapnet")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "tests/fixtures/tapvid/golden.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fn = load_reference(args.tapnet)
    queries, clips = make_clips(np.random.default_rng(args.seed))
    metrics = reference_metrics(fn, queries, clips)
    try:
        commit = subprocess.run(["git", "-C", str(args.tapnet), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    flat = lambda a: [float(v) for v in np.asarray(a, np.float32).ravel()]
    fixture = {
        "source": f"tapnet {SOURCE} compute_tapvid_metrics, query_mode 'first', commit {commit}; "
                  "each clip one video, coordinates scaled to 256x256, mean over videos",
        "width": W, "height": H, "frames": T, "grid_size": GRID, "seed": args.seed,
        "queries": flat(queries),
        "clips": [{"gt_tracks": flat(c["gt"]), "gt_visible": [int(v) for v in c["vis"].ravel()],
                   "pred_tracks": flat(c["pred"]), "pred_visible": [int(v) for v in c["pvis"].ravel()]}
                  for c in clips],
        "metrics": metrics,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({CLIPS} clips, T={T}, N={GRID * GRID}); reference metrics:")
    for k in sorted(metrics):
        print(f"  {k:28s} {metrics[k]:.9f}")


if __name__ == "__main__":
    main()
