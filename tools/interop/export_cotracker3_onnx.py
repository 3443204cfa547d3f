#!/usr/bin/env python3
"""Exports CoTracker3 offline to ONNX under the contract of schemas/cotracker3-onnx.md.

The graph takes `video` [B, T, 3, 384, 512] (0..255 RGB) and `queries` [B, N, 3]
(t, x, y in model pixels) and returns `tracks` [B, T, N, 2] and `visibility` [B, T, N]
(sigmoid probabilities, before CoTrackerPredictor's 0.9 threshold). B (clips per call),
T and N are dynamic. The public model fails with more than one clip per call (a `.view`
on a non-contiguous tensor: the expanded initial coordinates); while exporting, `.view`
calls become `.reshape`, which is the same where a view exists and copies where not.
With --fp16 the graph computes in float16 (inputs and outputs stay float32); the float32
graph it is made from is written beside it (NAME_fp32.onnx).

CoTracker samples its feature maps with 5-D grid_sample, which TensorRT and ONNX Runtime's
CUDA provider lack. During export the two 5-D call sites are replaced by 4-D sampling
that computes the same interpolation (see `sample_features5d_4d`, `bilinear_sampler_4d`;
PyTorch's 2-D and 3-D CPU kernels round differently, by at most one ulp per sample), and
every grid_sample call is checked to be 4-D; the saved graph is checked again.

Needs torch, onnx, onnxscript, onnxruntime (for --check) and the co-tracker package
(https://github.com/facebookresearch/co-tracker; `pip install -e CHECKOUT --no-deps` or
PYTHONPATH=CHECKOUT). No model file is downloaded: pass --checkpoint or --random-init.

usage:
  python tools/interop/export_cotracker3_onnx.py --checkpoint scaled_offline.pth --out cotracker3.onnx
  python tools/interop/export_cotracker3_onnx.py --random-init --out /tmp/ct3.onnx --check
  python tools/interop/export_cotracker3_onnx.py --checkpoint scaled_offline.pth --fp16 --out ct3_fp16.onnx --check
"""
import argparse
import contextlib
import functools
import hashlib
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

CONTRACT = "cotracker3-offline-v1"
MODEL_H, MODEL_W = 384, 512
WINDOW_LEN = 60  # CoTrackerPredictor's offline window; sizes the time embedding in the checkpoint
MAX_FRAMES = 200  # the model's forward chunks the encoder beyond 200 frames (fmaps_chunk_size)
MAX_BATCH = 64  # clips per call the graph is traced for
# --check: batched calls must match one clip per call this closely
BATCH_TRACKS_TOL_PX = 1e-3
BATCH_VIS_TOL = 1e-4
# --fp16: ops kept in float32 (ONNX Runtime's CPU provider has no float16 kernel for them,
# and --check runs on the CPU); extend with --fp16-keep
FP16_KEEP = ["GridSample"]
# --check fails above these (ORT vs PyTorch, and the 4-D rewrite vs the original)
TRACKS_TOL_PX = 1e-2
VIS_TOL = 1e-3
# --random-init: std of the update heads' weights (see build_model)
RANDOM_FLOW_STD = 0.05
RANDOM_VIS_STD = 0.02

try:
    from cotracker.version import __version__ as COTRACKER_VERSION
    import cotracker.models.core.model_utils as model_utils
    import cotracker.models.core.cotracker.cotracker3_online as ct3_base
    from cotracker.models.build_cotracker import build_cotracker
except ImportError as exc:
    sys.exit(f"cannot import the co-tracker package ({exc}).\n"
             "Get https://github.com/facebookresearch/co-tracker and either "
             "`pip install -e <checkout> --no-deps` or set PYTHONPATH=<checkout>.")

_original_bilinear_sampler = model_utils.bilinear_sampler
_original_grid_sample = F.grid_sample


def sample_features5d_4d(input, coords):
    """sample_features5d for points whose time coordinate is a frame index.

    input [B, T, C, H, W], coords [B, R1, R2, 3] as (t, x, y) -> [B, R1, R2, C].
    Every frame is sampled at (x, y) with 4-D grid_sample and the point's own frame is
    then picked with a gather. The x/y arithmetic is the original's, and an integral t
    gets trilinear weight 1 on its frame (border padding clamps t like the clamp below),
    so the result is the original's up to float rounding. Every frame is sampled, not just
    the point's own: gathering whole frames per point would cost N feature maps, while
    this is T x (49 N) samples, done once per pyramid level outside the iterations.
    """
    B, T, C, H, W = input.shape
    _, R1, R2, _ = coords.shape
    frames = input.reshape(B * T, C, H, W)
    xy = coords[..., 1:3].unsqueeze(1).expand(B, T, R1, R2, 2).reshape(B * T, R1, R2, 2)
    feats = _original_bilinear_sampler(frames, xy)  # [B*T, C, R1, R2]
    feats = feats.reshape(B, T, C, R1, R2)
    t = coords[..., 0].round().clamp(0, T - 1).long()  # [B, R1, R2]
    index = t[:, None, None].expand(B, 1, C, R1, R2)
    picked = torch.gather(feats, 1, index)[:, 0]  # [B, C, R1, R2]
    return picked.permute(0, 2, 3, 1)


def bilinear_sampler_4d(input, coords, align_corners=True, padding_mode="border"):
    """bilinear_sampler that never calls 5-D grid_sample.

    The only 5-D input left after sample_features5d_4d is the correlation sampling,
    fmaps reshaped to [B*T, C, 1, H, W]: a depth of one, where any t lands on the single
    slice with weight 1. Sampling that slice in 4-D is the same computation.
    """
    if input.dim() == 4:
        return _original_bilinear_sampler(input, coords, align_corners, padding_mode)
    if input.dim() != 5 or input.shape[2] != 1:
        raise RuntimeError(f"no 4-D rewrite for a 5-D input of shape {tuple(input.shape)}")
    N_, C, _, H, W = input.shape
    out_shape = coords.shape[1:-1]
    grid = coords[..., 1:3].reshape(N_, out_shape[0], -1, 2)
    feats = _original_bilinear_sampler(input[:, :, 0], grid, align_corners, padding_mode)
    return feats.reshape(N_, C, *out_shape)


def interpolate_time_embed_always(self, x, t):
    """interpolate_time_embed without the `t == window_len` shortcut, so T can stay symbolic.

    Linear resizing to the same length (align_corners=False) puts every output exactly on
    an input sample, so dropping the shortcut does not change the values (checked in --check).
    """
    previous_dtype = x.dtype
    time_emb = F.interpolate(self.time_emb.float().permute(0, 2, 1), size=t, mode="linear")
    return time_emb.permute(0, 2, 1).to(previous_dtype)


def grid_sample_guard(calls):
    """F.grid_sample that counts calls by input rank in `calls` and refuses 5-D input.

    A plain function (not a callable object): export's tracer reads `__name__`.
    """

    @functools.wraps(_original_grid_sample)
    def guarded(input, grid, *args, **kwargs):
        rank = input.dim()
        calls[rank] = calls.get(rank, 0) + 1
        if rank != 4:
            raise RuntimeError(f"{rank}-D grid_sample reached while exporting")
        return _original_grid_sample(input, grid, *args, **kwargs)

    return guarded


@contextlib.contextmanager
def four_d_sampling(guard=None):
    """Swaps the co-tracker helpers for the 4-D versions (and optionally guards F.grid_sample)."""
    saved = (ct3_base.sample_features5d, ct3_base.bilinear_sampler,
             ct3_base.CoTrackerThreeBase.interpolate_time_embed, F.grid_sample)
    ct3_base.sample_features5d = sample_features5d_4d
    ct3_base.bilinear_sampler = bilinear_sampler_4d
    ct3_base.CoTrackerThreeBase.interpolate_time_embed = interpolate_time_embed_always
    if guard is not None:
        F.grid_sample = guard
    try:
        yield
    finally:
        (ct3_base.sample_features5d, ct3_base.bilinear_sampler,
         ct3_base.CoTrackerThreeBase.interpolate_time_embed, F.grid_sample) = saved


@contextlib.contextmanager
def view_as_reshape():
    """`Tensor.view(shape)` as `Tensor.reshape(shape)`, so the model takes several clips per call.

    Only the shape form is replaced (`view(dtype)` is left alone); reshape returns a view
    wherever view would succeed, and the model never writes through one, so results at
    B = 1 are unchanged.
    """
    original = torch.Tensor.view

    def view(self, *shape, **kwargs):
        if kwargs or (len(shape) == 1 and isinstance(shape[0], torch.dtype)):
            return original(self, *shape, **kwargs)
        return self.reshape(*shape)

    torch.Tensor.view = view
    try:
        yield
    finally:
        torch.Tensor.view = original


class TrackerForExport(torch.nn.Module):
    """(video, queries) -> (tracks, visibility), the model call inside CoTrackerPredictor.

    The predictor keeps the first two outputs of the offline model: coordinates and
    sigmoid(visibility logits); the confidence output is not used (nor multiplied in).
    """

    def __init__(self, model, iters):
        super().__init__()
        self.model = model
        self.iters = iters

    def forward(self, video, queries):
        tracks, visibility, *_ = self.model(video=video, queries=queries, iters=self.iters)
        return tracks, visibility


def build_model(args):
    if args.random_init:
        torch.manual_seed(args.seed)
        model = build_cotracker(None, offline=True, window_len=WINDOW_LEN, v2=False)
        # The released init makes the update heads near zero (std 1e-3), so tracks would
        # barely leave the queries and sampling would hardly be exercised; larger heads
        # make points move by pixels, the sampled coordinates fractional and visibility
        # spread over (0, 1) instead of sitting at 0.5.
        with torch.no_grad():
            model.updateformer.flow_head.weight.normal_(0.0, RANDOM_FLOW_STD)
            model.updateformer.vis_conf_head.weight.normal_(0.0, RANDOM_VIS_STD)
        source = (f"co-tracker {COTRACKER_VERSION} CoTrackerThreeOffline "
                  f"window_len={WINDOW_LEN}, RANDOM weights (seed {args.seed}), not for use")
    else:
        digest = hashlib.sha256(pathlib.Path(args.checkpoint).read_bytes()).hexdigest()
        model = build_cotracker(str(args.checkpoint), offline=True, window_len=WINDOW_LEN,
                                v2=False)
        source = (f"co-tracker {COTRACKER_VERSION} CoTrackerThreeOffline "
                  f"window_len={WINDOW_LEN}, checkpoint {pathlib.Path(args.checkpoint).name} "
                  f"sha256={digest}")
    model.eval()
    if tuple(model.model_resolution) != (MODEL_H, MODEL_W):
        sys.exit(f"unexpected model resolution {model.model_resolution}")
    return TrackerForExport(model, args.iters).eval(), source


def example_inputs(frames, points, seed, batch=1):
    """`batch` seeded random clips with queries on frame 0 (a grid when `points` is a square)."""
    videos, queries = [], []
    for b in range(batch):
        g = torch.Generator().manual_seed(seed + 1000 * b)
        videos.append(torch.rand(1, frames, 3, MODEL_H, MODEL_W, generator=g) * 255.0)
        side = math.isqrt(points)
        if side * side == points and side > 1:
            xy = model_utils.get_points_on_a_grid(side, (MODEL_H, MODEL_W))[0]
        else:
            xy = torch.rand(points, 2, generator=g) * torch.tensor([MODEL_W - 1, MODEL_H - 1])
        queries.append(torch.cat([torch.zeros(points, 1), xy], dim=1)[None].float())
    return torch.cat(videos), torch.cat(queries)


def export(wrapper, args, source, out):
    # Two clips: an example batch of one would be specialised to 1.
    video, queries = example_inputs(args.frames, args.points, args.seed, batch=2)
    B = torch.export.Dim("B", min=1, max=MAX_BATCH)
    T = torch.export.Dim("T", min=2, max=MAX_FRAMES)
    N = torch.export.Dim("N", min=1, max=100_000)
    calls = {}
    start = time.perf_counter()
    with torch.no_grad(), four_d_sampling(grid_sample_guard(calls)), view_as_reshape():
        program = torch.onnx.export(
            wrapper, (video, queries), dynamo=True, opset_version=args.opset,
            input_names=["video", "queries"], output_names=["tracks", "visibility"],
            dynamic_shapes={"video": {0: B, 1: T}, "queries": {0: B, 1: N}}, external_data=False)
    print(f"export: {time.perf_counter() - start:.1f} s; grid_sample calls while tracing "
          f"by input rank: {calls}")
    if set(calls) != {4}:
        sys.exit("FAIL: tracing did not go through 4-D grid_sample only")

    model = program.model_proto
    set_metadata(model, {"mosic.contract": CONTRACT, "mosic.iters": str(args.iters), "mosic.source": source,
                         "mosic.max_batch": str(MAX_BATCH), "mosic.precision": "fp32"})
    out.parent.mkdir(parents=True, exist_ok=True)
    import onnx
    onnx.save_model(model, str(out))
    return inspect_graph(out)


def set_metadata(model, meta):
    for key, value in meta.items():
        for prop in model.metadata_props:
            if prop.key == key:
                prop.value = value
                break
        else:
            model.metadata_props.add(key=key, value=value)


def to_fp16(fp32_path, out, keep):
    """The fp32 graph computing in float16, inputs and outputs still float32."""
    import onnx
    from onnx import TensorProto
    from onnxconverter_common import float16
    start = time.perf_counter()
    source = onnx.load(str(fp32_path))
    # The exporter's shape annotations would contradict the converted types.
    del source.graph.value_info[:]
    original = {n.name for n in source.graph.node}
    model = float16.convert_float_to_float16(source, keep_io_types=True, op_block_list=list(keep))
    # The converter leaves the graph's own casts to float32 (e.g. frame indices to float)
    # as they were, feeding float32 into float16 nodes; they now cast to float16, except
    # where an op kept in float32 or a graph output takes them.
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    outputs = {o.name for o in model.graph.output}
    for n in model.graph.node:
        if n.op_type != "Cast" or n.name not in original:
            continue
        to = next(a for a in n.attribute if a.name == "to")
        if to.i == TensorProto.FLOAT and n.output[0] not in outputs and \
                not any(op in keep for op in consumers.get(n.output[0], [])):
            to.i = TensorProto.FLOAT16
    set_metadata(model, {"mosic.precision": f"fp16 (kept in fp32: {', '.join(keep) or 'nothing'})"})
    onnx.save_model(model, str(out))
    print(f"fp16: converted in {time.perf_counter() - start:.1f} s, ops kept in fp32: {list(keep)}")
    return inspect_graph(out)


def inspect_graph(path):
    """Prints size, opset and GridSample input ranks of the saved graph; fails on 5-D."""
    import onnx
    from collections import Counter
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    ops = Counter()
    grid = []

    def walk(graph):
        for node in graph.node:
            ops[node.op_type] += 1
            if node.op_type == "GridSample":
                grid.append(ranks.get(node.input[0]))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(inferred.graph)
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    size = path.stat().st_size
    print(f"graph: {path} {size / 2**20:.1f} MiB, IR {model.ir_version}, opsets {opset}")
    print(f"GridSample nodes: {len(grid)}, input ranks: {dict(Counter(grid))}")
    print("most used ops: " + ", ".join(f"{k} {v}" for k, v in ops.most_common(8)))
    print("metadata: " + ", ".join(f"{p.key}={p.value!r}" for p in model.metadata_props))
    if any(r != 4 for r in grid):
        sys.exit("FAIL: the graph has GridSample nodes whose input is not known to be 4-D")
    return model


def check(wrapper, args, fp32_path):
    """ORT vs original PyTorch, and patched vs original PyTorch, on a seeded random clip;
    batched calls vs one clip per call; with --fp16, the fp16 graph vs the fp32 one."""
    import onnxruntime as ort

    # the dropped time-embedding shortcut: resizing to window_len must be the identity
    emb = wrapper.model.time_emb
    same = F.interpolate(emb.float().permute(0, 2, 1), size=emb.shape[1],
                         mode="linear").permute(0, 2, 1)
    print(f"time embedding resized to its own length: max abs diff "
          f"{(same - emb).abs().max().item():.3g}")

    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(fp32_path), opts, providers=["CPUExecutionProvider"])
    failed = False
    for frames, points, label in [(args.frames, args.points, "main"), (5, 7, "other T/N")]:
        video, queries = example_inputs(frames, points, args.seed + 1)
        with torch.no_grad():
            start = time.perf_counter()
            ref_tracks, ref_vis = wrapper(video, queries)
            t_ref = time.perf_counter() - start
            with four_d_sampling():
                start = time.perf_counter()
                p_tracks, p_vis = wrapper(video, queries)
                t_patched = time.perf_counter() - start
        start = time.perf_counter()
        o_tracks, o_vis = sess.run(["tracks", "visibility"],
                                   {"video": video.numpy(), "queries": queries.numpy()})
        t_ort = time.perf_counter() - start
        ref_tracks, ref_vis = ref_tracks.numpy(), ref_vis.numpy()
        d = {
            "ort_tracks_px": np.abs(o_tracks - ref_tracks).max(),
            "ort_vis": np.abs(o_vis - ref_vis).max(),
            "patched_tracks_px": np.abs(p_tracks.numpy() - ref_tracks).max(),
            "patched_vis": np.abs(p_vis.numpy() - ref_vis).max(),
        }
        moved = np.abs(ref_tracks - queries.numpy()[:, None, :, 1:]).mean()
        print(f"[{label}] T={frames} N={points}: outputs {o_tracks.shape} {o_vis.shape}; "
              f"mean |track - query| {moved:.2f} px; visibility range "
              f"{ref_vis.min():.3f}..{ref_vis.max():.3f}")
        print(f"[{label}] max abs diff ORT vs PyTorch: tracks {d['ort_tracks_px']:.3g} px, "
              f"visibility {d['ort_vis']:.3g}")
        print(f"[{label}] max abs diff 4-D patched vs original PyTorch: tracks "
              f"{d['patched_tracks_px']:.3g} px, visibility {d['patched_vis']:.3g}")
        print(f"[{label}] time per clip (one run, {torch.get_num_threads()} threads): "
              f"PyTorch original {t_ref:.2f} s, PyTorch 4-D {t_patched:.2f} s, "
              f"ORT CPU {t_ort:.2f} s")
        if max(d["ort_tracks_px"], d["patched_tracks_px"]) > TRACKS_TOL_PX or \
                max(d["ort_vis"], d["patched_vis"]) > VIS_TOL:
            print(f"[{label}] FAIL: above tolerance (tracks {TRACKS_TOL_PX} px, "
                  f"visibility {VIS_TOL})")
            failed = True
    failed |= check_batches(sess, args)
    if args.fp16:
        check_fp16(sess, args)
    if failed:
        sys.exit(1)
    print(f"check passed (tolerances: tracks {TRACKS_TOL_PX} px, visibility {VIS_TOL}; batched vs single "
          f"{BATCH_TRACKS_TOL_PX} px, {BATCH_VIS_TOL})")


def check_batches(sess, args):
    """Several clips per call (ONNX Runtime) against each clip alone; True on failure."""
    most = max(args.check_batches, default=0)
    if most < 2:
        return False
    video, queries = example_inputs(args.frames, args.points, args.seed + 2, batch=most)
    single, t_single = [], 0.0
    for b in range(most):
        start = time.perf_counter()
        single.append(sess.run(["tracks", "visibility"], {"video": video[b:b + 1].numpy(),
                                                          "queries": queries[b:b + 1].numpy()}))
        t_single += time.perf_counter() - start
    failed = False
    for bsz in sorted(args.check_batches):
        start = time.perf_counter()
        tracks, vis = sess.run(["tracks", "visibility"], {"video": video[:bsz].numpy(),
                                                          "queries": queries[:bsz].numpy()})
        t_batch = time.perf_counter() - start
        dt = max(np.abs(tracks[b] - single[b][0][0]).max() for b in range(bsz))
        dv = max(np.abs(vis[b] - single[b][1][0]).max() for b in range(bsz))
        print(f"[batch {bsz}] T={args.frames} N={args.points}: outputs {tracks.shape} {vis.shape}; max abs diff "
              f"vs one clip per call: tracks {dt:.3g} px, visibility {dv:.3g}; ORT CPU {t_batch:.2f} s for "
              f"{bsz} clips ({t_batch / bsz:.2f} s/clip; alone {t_single / most:.2f} s/clip)")
        if dt > BATCH_TRACKS_TOL_PX or dv > BATCH_VIS_TOL:
            print(f"[batch {bsz}] FAIL: above tolerance ({BATCH_TRACKS_TOL_PX} px, {BATCH_VIS_TOL})")
            failed = True
    return failed


def check_fp16(sess32, args):
    """How far the fp16 graph is from the fp32 one (measured, not a pass/fail check)."""
    import onnxruntime as ort
    sess16 = ort.InferenceSession(str(args.out), ort.SessionOptions(), providers=["CPUExecutionProvider"])
    video, queries = example_inputs(args.frames, args.points, args.seed + 1)
    feeds = {"video": video.numpy(), "queries": queries.numpy()}
    start = time.perf_counter()
    t32, v32 = sess32.run(["tracks", "visibility"], feeds)
    s32 = time.perf_counter() - start
    start = time.perf_counter()
    t16, v16 = sess16.run(["tracks", "visibility"], feeds)
    s16 = time.perf_counter() - start
    d = np.sqrt(np.sum(np.square(t16 - t32), axis=-1))
    flips = np.mean((v16 > 0.9) != (v32 > 0.9))
    print(f"[fp16] T={args.frames} N={args.points}: track distance fp16 vs fp32 (model px): mean {d.mean():.3g}, "
          f"p99 {np.quantile(d, 0.99):.3g}, max {d.max():.3g}; visibility max abs diff "
          f"{np.abs(v16 - v32).max():.3g}; decisions at 0.9 that differ {100 * flips:.3f}%; "
          f"ORT CPU {s16:.2f} s (fp32 {s32:.2f} s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=pathlib.Path, help="scaled_offline.pth")
    src.add_argument("--random-init", action="store_true",
                     help="random weights: only for checking the export")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="ONNX file to write")
    ap.add_argument("--iters", type=int, default=6, help="update iterations (predictor: 6)")
    ap.add_argument("--frames", type=int, default=12, help="T of the example clip")
    ap.add_argument("--points", type=int, default=256,
                    help="N of the example queries (a grid when a square)")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true",
                    help="compare ONNX Runtime (CPU) and the 4-D rewrite with PyTorch, batched calls "
                         "with single ones, and (--fp16) the fp16 graph with the fp32 one")
    ap.add_argument("--check-batches", type=lambda s: [int(x) for x in s.split(",") if x], default=[2, 4],
                    help="batch sizes --check compares with one clip per call (default 2,4; empty: none)")
    ap.add_argument("--fp16", action="store_true", help="write a graph that computes in float16")
    ap.add_argument("--fp16-keep", default=",".join(FP16_KEEP),
                    help=f"op types kept in float32 with --fp16 (default {','.join(FP16_KEEP)})")
    args = ap.parse_args()
    if not 2 <= args.frames <= MAX_FRAMES:
        ap.error(f"--frames must be in 2..{MAX_FRAMES}")
    if any(not 2 <= b <= MAX_BATCH for b in args.check_batches):
        ap.error(f"--check-batches must be in 2..{MAX_BATCH}")

    wrapper, source = build_model(args)
    fp32_path = args.out.with_name(args.out.stem + "_fp32" + args.out.suffix) if args.fp16 else args.out
    export(wrapper, args, source, fp32_path)
    if args.fp16:
        to_fp16(fp32_path, args.out, [k for k in args.fp16_keep.split(",") if k])
    if args.check:
        check(wrapper, args, fp32_path)


if __name__ == "__main__":
    main()
