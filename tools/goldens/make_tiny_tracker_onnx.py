#!/usr/bin/env python3
"""Builds tests/fixtures/tiny_tracker.onnx: a stand-in for the CoTracker3 ONNX model.

It has the I/O contract of schemas/cotracker3-onnx.md (names, dtypes, ranks, dynamic
B/T/N, metadata) but its outputs are a known function of the inputs, so the Rust
runner's resizing, query scaling, thresholding, query-frame override, scaling back and
batching of several clips per call can be tested to the last digit. A second file,
tiny_tracker_b1.onnx, is the same model with the batch dimension fixed at 1 (like an
export without a dynamic batch), for the runner's --batch check:

    tracks[b, t, n]     = (x[b, n] + 2 * t, y[b, n])        (model pixels, 384x512)
    visibility[b, t, n] = 0.5                  if n is odd
                          0.95 if t is even, 0.2 if t is odd, otherwise

where queries[b, n] = (t_q, x, y). The video input is read (its mean, times 0, is
added to the tracks) so that ONNX Runtime checks its shape like the real model's.

Needs only the `onnx` package; when onnxruntime is importable it also runs the model
on a random input and checks the outputs against the formula.

usage: python3 tools/goldens/make_tiny_tracker_onnx.py [--out tests/fixtures/tiny_tracker.onnx]
       (writes tiny_tracker_b1.onnx beside it)
"""
import argparse
import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONTRACT = "cotracker3-offline-v1"
H, W = 384, 512
OPSET = 17
IR_VERSION = 8  # ONNX Runtime 1.20+ (and much older) loads IR <= 9


def const(name, values, dtype=TensorProto.FLOAT, dims=None):
    arr = np.asarray(values)
    return helper.make_node(
        "Constant", [], [name],
        value=helper.make_tensor(name + "_value", dtype, arr.shape if dims is None else dims,
                                 arr.flatten().tolist()))


def build(batch="B"):
    nodes = [
        # frame index t as float, shaped [1, T, 1] to broadcast against [B, 1, N]
        helper.make_node("Shape", ["video"], ["video_shape"]),
        const("i1", [1], TensorProto.INT64),
        const("i2", [2], TensorProto.INT64),
        helper.make_node("Slice", ["video_shape", "i1", "i2"], ["t_len"]),  # [T]
        helper.make_node("Squeeze", ["t_len"], ["t_len_s"]),
        const("i0s", 0, TensorProto.INT64, dims=[]),
        const("i1s", 1, TensorProto.INT64, dims=[]),
        helper.make_node("Range", ["i0s", "t_len_s", "i1s"], ["t_idx"]),  # [T] int64
        helper.make_node("Cast", ["t_idx"], ["t_f"], to=TensorProto.FLOAT),
        const("shape_1t1", [1, -1, 1], TensorProto.INT64),
        helper.make_node("Reshape", ["t_f", "shape_1t1"], ["t_1t1"]),

        # the video term: mean over everything but B, times zero -> [B, 1, 1]
        helper.make_node("ReduceMean", ["video"], ["video_mean"], axes=[1, 2, 3, 4],
                         keepdims=0),
        const("zero", 0.0),
        helper.make_node("Mul", ["video_mean", "zero"], ["video_zero"]),
        const("shape_b11", [-1, 1, 1], TensorProto.INT64),
        helper.make_node("Reshape", ["video_zero", "shape_b11"], ["video_zero_b11"]),

        # x, y from the queries: [B, N] each, then [B, 1, N]
        const("q1", [1], TensorProto.INT64),
        const("q2", [2], TensorProto.INT64),
        const("q3", [3], TensorProto.INT64),
        const("ax2", [2], TensorProto.INT64),
        helper.make_node("Slice", ["queries", "q1", "q2", "ax2"], ["qx"]),  # [B, N, 1]
        helper.make_node("Slice", ["queries", "q2", "q3", "ax2"], ["qy"]),
        const("ax1", [1], TensorProto.INT64),
        helper.make_node("Squeeze", ["qx", "ax2"], ["qx_bn"]),
        helper.make_node("Squeeze", ["qy", "ax2"], ["qy_bn"]),
        helper.make_node("Unsqueeze", ["qx_bn", "ax1"], ["qx_b1n"]),
        helper.make_node("Unsqueeze", ["qy_bn", "ax1"], ["qy_b1n"]),

        # tracks: x + 2t (+ 0 * mean(video)), y broadcast over T -> [B, T, N, 2]
        const("two", 2.0),
        helper.make_node("Mul", ["t_1t1", "two"], ["shift"]),
        helper.make_node("Add", ["qx_b1n", "shift"], ["x_btn_a"]),
        helper.make_node("Add", ["x_btn_a", "video_zero_b11"], ["x_btn"]),
        helper.make_node("Mul", ["t_1t1", "zero"], ["t_zero"]),
        helper.make_node("Add", ["qy_b1n", "t_zero"], ["y_btn"]),
        const("ax3", [3], TensorProto.INT64),
        helper.make_node("Unsqueeze", ["x_btn", "ax3"], ["x_btn1"]),
        helper.make_node("Unsqueeze", ["y_btn", "ax3"], ["y_btn1"]),
        helper.make_node("Concat", ["x_btn1", "y_btn1"], ["tracks"], axis=3),

        # visibility: t parity picks 0.95 / 0.2, n parity forces 0.5 -> [B, T, N]
        const("two_i", 2, TensorProto.INT64, dims=[]),
        helper.make_node("Mod", ["t_idx", "two_i"], ["t_mod"]),
        const("zero_i", 0, TensorProto.INT64, dims=[]),
        helper.make_node("Equal", ["t_mod", "zero_i"], ["t_even"]),  # [T]
        const("shape_1t1_b", [1, -1, 1], TensorProto.INT64),
        helper.make_node("Reshape", ["t_even", "shape_1t1_b"], ["t_even_1t1"]),
        const("hi", 0.95),
        const("lo", 0.2),
        const("mid", 0.5),
        helper.make_node("Where", ["t_even_1t1", "hi", "lo"], ["vis_t"]),  # [1, T, 1]
        helper.make_node("Shape", ["qx_bn"], ["bn_shape"]),
        helper.make_node("Slice", ["bn_shape", "i1", "i2"], ["n_len"]),
        helper.make_node("Squeeze", ["n_len"], ["n_len_s"]),
        helper.make_node("Range", ["i0s", "n_len_s", "i1s"], ["n_idx"]),
        helper.make_node("Mod", ["n_idx", "two_i"], ["n_mod"]),
        helper.make_node("Equal", ["n_mod", "i1s"], ["n_odd"]),  # [N]
        const("shape_11n", [1, 1, -1], TensorProto.INT64),
        helper.make_node("Reshape", ["n_odd", "shape_11n"], ["n_odd_11n"]),
        helper.make_node("Where", ["n_odd_11n", "mid", "vis_t"], ["vis_1tn"]),  # [1, T, N]
        # broadcast to [B, T, N] through the (all zero) x term
        helper.make_node("Mul", ["x_btn", "zero"], ["btn_zero"]),
        helper.make_node("Add", ["vis_1tn", "btn_zero"], ["visibility"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_tracker",
        inputs=[
            helper.make_tensor_value_info("video", TensorProto.FLOAT, [batch, "T", 3, H, W]),
            helper.make_tensor_value_info("queries", TensorProto.FLOAT, [batch, "N", 3]),
        ],
        outputs=[
            helper.make_tensor_value_info("tracks", TensorProto.FLOAT, [batch, "T", "N", 2]),
            helper.make_tensor_value_info("visibility", TensorProto.FLOAT, [batch, "T", "N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mosic-tools")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "mosic.contract": CONTRACT,
        "mosic.iters": "0",
        "mosic.source": "tiny test model (tools/goldens/make_tiny_tracker_onnx.py); "
                        "tracks = x + 2t, y; vis 0.95/0.2 by t parity, 0.5 for odd n",
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def expected(queries, T):
    B, N, _ = queries.shape
    t = np.arange(T, dtype=np.float32)[None, :, None]
    tracks = np.empty((B, T, N, 2), np.float32)
    tracks[..., 0] = queries[:, None, :, 1] + 2.0 * t
    tracks[..., 1] = queries[:, None, :, 2]
    vis = np.where(np.arange(T)[None, :, None] % 2 == 0, 0.95, 0.2).astype(np.float32)
    vis = np.where(np.arange(N)[None, None, :] % 2 == 1, np.float32(0.5), vis)
    return tracks, np.broadcast_to(vis, (B, T, N))


def run_check(path, batches=((1, 12, 256), (2, 5, 7), (4, 3, 9))):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not importable: skipped the run check")
        return
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for B, T, N in batches:
        video = rng.uniform(0, 255, (B, T, 3, H, W)).astype(np.float32)
        queries = np.stack([np.zeros((B, N)), rng.uniform(0, W - 1, (B, N)),
                            rng.uniform(0, H - 1, (B, N))], axis=-1).astype(np.float32)
        tracks, vis = sess.run(["tracks", "visibility"], {"video": video, "queries": queries})
        want_tracks, want_vis = expected(queries, T)
        assert tracks.shape == (B, T, N, 2) and vis.shape == (B, T, N), (tracks.shape, vis.shape)
        assert tracks.dtype == np.float32 and vis.dtype == np.float32
        # x + 2t is exact in float32 for these magnitudes; the video term adds 0
        assert np.array_equal(tracks, want_tracks), np.abs(tracks - want_tracks).max()
        assert np.array_equal(vis, want_vis), np.abs(vis - want_vis).max()
        print(f"onnxruntime {ort.__version__}: B={B} T={T} N={N} outputs match the formula")
    # a wrong frame size must be refused, as the real model would
    try:
        sess.run(None, {"video": np.zeros((1, 2, 3, 224, 224), np.float32),
                        "queries": np.zeros((1, 1, 3), np.float32)})
    except Exception:
        print("onnxruntime refuses a 224x224 video, as intended")
    else:
        sys.exit("FAIL: a 224x224 video was accepted")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path,
                    default=ROOT / "tests" / "fixtures" / "tiny_tracker.onnx")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    b1 = args.out.with_name(args.out.stem + "_b1" + args.out.suffix)
    for path, batch, checks in [(args.out, "B", None), (b1, 1, ((1, 12, 256), (1, 5, 7)))]:
        model = build(batch)
        onnx.save(model, str(path))
        print(f"wrote {path} ({path.stat().st_size} bytes, opset {OPSET}, IR {model.ir_version}, batch {batch})")
        if checks is None:
            run_check(path)
        else:
            run_check(path, checks)


if __name__ == "__main__":
    main()
