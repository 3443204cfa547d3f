#!/usr/bin/env python3
"""Runs the reference evaluation code on features written by `mosic features`, for comparing
`mosic eval` with the references on the same features (BENCHMARKS.md, "Evaluation").

Input: a plain labelled set made from a video set's frames (images/<video>_<frame>.jpg,
masks/<video>_<frame>.png, as tools/bench/bench-eval.sh builds it) and the features of its images
(`mosic features --input SET/images --out F.safetensors --size S`). Frames of one video form a
clip for TimeT; videos listed in SET/train.txt / SET/val.txt split the images for Hummingbird.

Runs, with the stubs and wrappers of make_protocol_goldens.py (nothing re-implemented):
  Leopart  Overcluster.validation_epoch_end   K = classes and each --k (5 seeds)
  TimeT    Evaluator.evaluate                 F, C, D clustering and overclustering
  Hummingbird HbirdEvaluation                 unbounded bank, exact search, no augmentation

usage: python tools/bench/reference_on_features.py --leopart DIR --timet DIR --hbird DIR \
           --set SET --features F.safetensors --classes N --out ref.json
needs: the packages of make_protocol_goldens.py, and pillow
"""
import argparse
import json
import pathlib
import struct
import sys

import numpy as np
from PIL import Image  # before the stubs replace PIL for the reference modules

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "goldens"))
import make_protocol_goldens as g  # noqa: E402

import contextlib  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402

import joblib  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def read_features(path):
    raw = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    names = json.loads(header["__metadata__"]["names"])
    t = header["features"]
    a, b = t["data_offsets"]
    x = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(t["shape"])
    return names, x


def nearest_pil(m, size):
    return np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST))


def main():
    ap = argparse.ArgumentParser()
    for k in ("leopart", "timet", "hbird", "set", "features", "out"):
        ap.add_argument(f"--{k}", required=True, type=pathlib.Path)
    ap.add_argument("--classes", required=True, type=int)
    ap.add_argument("--k", default="8", help="overclustering K for Leopart, comma separated")
    ap.add_argument("--mask-size", type=int, default=100)
    ap.add_argument("--over-local", type=int, default=10)
    ap.add_argument("--over-dataset", type=int, default=20)
    ap.add_argument("--dataset-size", type=int, default=112)
    ap.add_argument("--neighbours", type=int, default=30)
    args = ap.parse_args()

    names, feats = read_features(args.features)
    n, gh, gw, dim = feats.shape
    assert gh == gw
    size = gh * 14
    stems = [pathlib.Path(nm).stem for nm in names]
    # Masks at the input size (PIL nearest, as the references' transforms), all read and
    # resized here: the stubs below replace PIL for the reference modules.
    masks = {s: nearest_pil(np.asarray(Image.open(args.set / "masks" / f"{s}.png")), size) for s in stems}
    videos = sorted({s.rsplit("_", 1)[0] for s in stems})
    out = {"input_size": size, "features": str(args.features), "images": n}

    g.faiss.omp_set_num_threads(1)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), joblib.parallel_backend("threading"):
            out["leopart"] = leopart(args, feats, stems, masks)
            out["timet"] = timet(args, feats, stems, masks, videos, size)
            out["hbird"] = hbird(args, feats, stems, masks, size)
    finally:
        os.dup2(saved, 1)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


def leopart(args, feats, stems, masks):
    g.common_stubs()
    for name in ["data", "data.ade20k", "data.ade20k.ade20kdata", "data.VOCdevkit", "data.VOCdevkit.vocdata", "data.coco",
                 "data.coco.coco_data_module", "src", "src.vit", "src.resnet"]:
        g.stub(name)
    with g.on_path(args.leopart, ["experiments"]):
        utils = __import__("experiments.utils", fromlist=["x"])
        sup = __import__("experiments.overcluster.sup_overcluster", fromlist=["x"])
    results = []
    sup.print = lambda *a, **k: results.append(a[0]) if a and isinstance(a[0], list) else None
    utils.print = lambda *a, **k: None
    n, gsz, _, dim = feats.shape
    size = gsz * 14
    ms = args.mask_size
    # The reference's validation transforms resize masks (PIL nearest) to the input size, then
    # validation_step brings them to 100 with F.interpolate(nearest).
    m = np.stack([masks[s] for s in stems]).astype(np.float32)
    m = F.interpolate(torch.from_numpy(m).unsqueeze(1), size=(ms, ms), mode="nearest")
    tokens = torch.from_numpy(feats.reshape(n * gsz * gsz, dim).copy())
    res = {}
    for k in [args.classes] + [int(x) for x in args.k.split(",") if x]:
        self = types.SimpleNamespace(num_seeds=5, pca_dim=50, spatial_res=gsz, k=k, masks_eval_size=ms, ignore_index=255,
                                     num_classes=args.classes)
        results.clear()
        sup.Overcluster.validation_epoch_end(self, [(tokens, m.clone())])
        res[f"K={k}"] = [float(v) for v in results[-1]]
    return res


def timet(args, feats, stems, masks, videos, size):
    g.common_stubs()
    for name in ["data_loader", "models", "video_transformations", "leoloader"]:
        g.stub(name)
    sys.modules["data_loader"].SamplingMode = g.Anything()
    sys.modules["data_loader"].pascalVOCLoader = g.Anything
    sys.modules["data_loader"].make_loader = g.Anything()
    sys.modules["models"].FeatureExtractor = type("FeatureExtractor", (), {})
    with g.on_path(args.timet, ["my_utils", "clustering", "metrics", "evaluation"]):
        ev = __import__("evaluation")
    for mod in ("evaluation", "clustering", "metrics"):
        sys.modules[mod].print = lambda *a, **k: None
    n, gsz, _, dim = feats.shape
    table = torch.from_numpy(feats.reshape(n, gsz * gsz, dim).copy())
    clips = [[i for i, s in enumerate(stems) if s.rsplit("_", 1)[0] == v] for v in videos]
    frames = len(clips[0])
    assert all(len(c) == frames for c in clips), "clips need the same number of frames"

    class Model:
        feature_extractor = types.SimpleNamespace(spatial_resolution=gsz)

        def eval(self):
            return self

        def __call__(self, data, use_head=False):
            return table[data[:, 0, 0, 0].long()], None

    def loader(dataset_wise, batch=16):
        for b in range(0, len(clips), batch):
            part = clips[b:b + batch]
            data = torch.zeros(len(part), 1, frames, 3, 2, 2)
            ann = np.zeros((len(part), 1, frames, size, size))
            for j, c in enumerate(part):
                data[j, 0, :, 0, 0, 0] = torch.tensor(c, dtype=torch.float32)
                for f, i in enumerate(c):
                    ann[j, 0, f] = masks[stems[i]]
            ann = torch.from_numpy(ann)
            if dataset_wise:
                ann = ann / 255.0
            yield data, ann, torch.zeros(len(part))

    res = {}
    logdir = tempfile.mkdtemp()
    for protocol, name, res_px, over in (("frame-wise", "F", size, None), ("sample-wise", "C", size, None),
                                         ("dataset-wise", "D", args.dataset_size, None),
                                         ("frame-wise", "F", size, args.over_local), ("sample-wise", "C", size, args.over_local),
                                         ("dataset-wise", "D", args.dataset_size, args.over_dataset)):
        evaluator = ev.Evaluator(list(loader(protocol == "dataset-wise")), Model(), logdir)
        score = evaluator.evaluate(many_to_one=over is not None, evaluation_protocol=protocol, eval_resolution=res_px,
                                   num_clusters=over or 0, use_annotations=over is None, precision_based=over is not None)
        res[f"{name} hungarian" if over is None else f"{name} over K={over}"] = float(score)
    return res


def hbird(args, feats, stems, masks, size):
    g.common_stubs()
    with g.on_path(args.hbird, ["hbird"]):
        for real in ["hbird", "hbird.utils", "hbird.nn"]:
            __import__(real)
        for name in ["hbird.data", "hbird.models", "hbird.utils.transforms", "hbird.utils.image_transformations"]:
            g.stub(name)
        sys.modules["hbird.models"].FeatureExtractor = g.Anything
        sys.modules["hbird.models"].FeatureExtractorSimple = g.Anything
        he = __import__("hbird.hbird_eval", fromlist=["x"])

    class ExactSearch:
        def __init__(self, feature_memory, n_neighbors=30, **kwargs):
            self.index = g.faiss.IndexFlatIP(feature_memory.size(1))
            self.index.add(feature_memory.numpy())
            self.k = n_neighbors

        def find_nearest_neighbors(self, q):
            d, i = self.index.search(q.numpy().astype(np.float32), self.k)
            return i, d

    g.stub("hbird.nn.search_faiss", NearestNeighborSearchFaiss=ExactSearch)
    n, gsz, _, dim = feats.shape
    table = torch.from_numpy(feats.reshape(n, gsz * gsz, dim).copy())
    index = {s: i for i, s in enumerate(stems)}
    split = {k: (args.set / f"{k}.txt").read_text().split() for k in ("train", "val")}
    units = {s: g.unit_floats(masks[s].reshape(-1)).reshape(size, size) for s in stems}

    class Extractor(torch.nn.Module):
        eval_spatial_resolution = gsz
        d_model = dim

        def forward_features(self, x):
            return table[x[:, 0, 0, 0].long()], None

    def batches(names, bs=16):
        for b in range(0, len(names), bs):
            part = names[b:b + bs]
            x = torch.zeros(len(part), 3, size, size)
            x[:, 0, 0, 0] = torch.tensor([index[p] for p in part], dtype=torch.float32)
            yield x, torch.from_numpy(np.stack([units[p] for p in part])).unsqueeze(1)

    evaluator = he.HbirdEvaluation(Extractor(), list(batches(split["train"])), num_classes=args.classes,
                                   n_neighbours=args.neighbours, augmentation_epoch=1, device="cpu", nn_method="faiss",
                                   memory_size=None)
    return {"fraction 1/1": float(evaluator.evaluate(list(batches(split["val"])), gsz, ignore_index=255))}


if __name__ == "__main__":
    main()
