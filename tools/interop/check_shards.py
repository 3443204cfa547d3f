#!/usr/bin/env python3
"""Reads a mosic shard directory with pyarrow and pandas alone, as a Python user would.

Checks that every column has the type and shape that schemas/shard-v1.json promises,
that the tensor columns come back as n-d numpy arrays, that frames are JPEGs of the
stored size and that the manifest's checksums and row counts hold.

usage: python3 tools/interop/check_shards.py SHARD_DIR
"""
import hashlib
import json
import pathlib
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEF = json.loads((ROOT / "schemas" / "shard-v1.json").read_text())
SCALARS = {"string": pa.string(), "uint32": pa.uint32(), "uint16": pa.uint16(),
           "uint8": pa.uint8(), "float32": pa.float32(), "binary": pa.binary()}
NUMPY = {"float32": np.float32, "uint8": np.uint8, "uint32": np.uint32}


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def jpeg_size(b):
    """(width, height) from a baseline or progressive JPEG's SOF marker."""
    if b[:2] != b"\xff\xd8":
        fail("frame is not a JPEG")
    i = 2
    while i < len(b):
        marker, seg = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
        i += 2 + seg
    fail("no frame header in JPEG")


def check_file(path, spec):
    t = pq.read_table(path)
    meta = pq.read_metadata(path).metadata
    if meta[b"mosic.schema_version"].decode().split(".")[0] != DEF["version"].split(".")[0]:
        fail(f"{path}: schema version {meta[b'mosic.schema_version']}")
    T, N = spec["frames_per_clip"], spec["grid_size"] ** 2
    dims = {"T": T, "N": N}
    names = [c["name"] for c in DEF["columns"]]
    if t.column_names != names:
        fail(f"{path}: columns {t.column_names} != {names}")
    for c in DEF["columns"]:
        col = t.column(c["name"]).combine_chunks()
        elem = SCALARS[c["type"]]
        shape = tuple(dims.get(d, d) for d in c.get("shape", []))
        if c.get("tensor"):
            if not isinstance(col.type, pa.FixedShapeTensorType):
                fail(f"{c['name']}: {col.type} is not a fixed_shape_tensor")
            if tuple(col.type.shape) != shape or col.type.value_type != elem:
                fail(f"{c['name']}: tensor {col.type.value_type}{col.type.shape}, want {elem}{shape}")
            arr = col.to_numpy_ndarray()
            if arr.shape != (len(t),) + shape or arr.dtype != NUMPY[c["type"]]:
                fail(f"{c['name']}: numpy {arr.dtype}{arr.shape}")
        elif shape:
            if not (pa.types.is_fixed_size_list(col.type) and col.type.value_type == elem
                    and col.type.list_size == shape[0]):
                fail(f"{c['name']}: {col.type} != fixed_size_list<{elem}>[{shape[0]}]")
        elif col.type != elem:
            fail(f"{c['name']}: {col.type} != {elem}")
    tracks = t.column("tracks").combine_chunks().to_numpy_ndarray()
    vis = t.column("visibility").combine_chunks().to_numpy_ndarray()
    W, H = spec["width"], spec["height"]
    if not np.isfinite(tracks).all():
        fail(f"{path}: non-finite tracks")
    if not set(np.unique(vis)) <= {0, 1}:
        fail(f"{path}: visibility holds values other than 0/1")
    v = vis.astype(bool)
    xs, ys = tracks[..., 0][v], tracks[..., 1][v]
    if len(xs) and (xs.min() < -1.5 or xs.max() > W + 0.5 or ys.min() < -1.5 or ys.max() > H + 0.5):
        fail(f"{path}: visible points outside the frame")
    for frames in t.column("frames").to_pylist():
        for b in frames:
            if jpeg_size(b) != (W, H):
                fail(f"{path}: frame of size {jpeg_size(b)}, want {(W, H)}")
    # pandas: plain numpy arrays per cell, no parsing.
    df = t.to_pandas()
    cell = np.asarray(df["tracks"].iloc[0])
    if cell.dtype != np.float32 or cell.reshape(T, N, 2).shape != (T, N, 2):
        fail(f"{path}: pandas tracks cell is {cell.dtype}{cell.shape}")
    if list(df["frame_indices"].iloc[0]) != sorted(df["frame_indices"].iloc[0]):
        fail(f"{path}: frame indices not increasing")
    return len(t)


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    d = pathlib.Path(sys.argv[1])
    m = json.loads((d / "manifest.json").read_text())
    total = 0
    for s in m["shards"]:
        p = d / s["file"]
        if hashlib.sha256(p.read_bytes()).hexdigest() != s["sha256"]:
            fail(f"{p}: checksum differs from the manifest")
        n = check_file(p, m["spec"])
        if n != s["rows"]:
            fail(f"{p}: {n} rows, manifest says {s['rows']}")
        total += n
    print(f"ok: {len(m['shards'])} shards, {total} clips read with pyarrow {pa.__version__} / pandas {pd.__version__}")


if __name__ == "__main__":
    main()
