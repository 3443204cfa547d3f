#!/usr/bin/env python3
"""Builds tests/fixtures/eval/protocols.json: what the reference implementations of the
evaluation protocols give on small generated fixtures of features and masks.

The reference code is run, not re-implemented. Each checkout is given by path (nothing is
fetched):
  --leopart  MkuuWaUjinga/leopart        experiments/utils.py (normalize_and_transform, cluster,
                                         PredsmIoU), experiments/overcluster/sup_overcluster.py
                                         (Overcluster.validation_epoch_end),
                                         experiments/linear_probing/linear_finetune.py
                                         (LinearFinetune steps)
  --timet    SMSD75/Timetuning           evaluation.py (Evaluator.evaluate), clustering.py,
                                         metrics.py
  --hbird    vpariza/open-hummingbird-eval  hbird/hbird_eval.py (HbirdEvaluation)

Only imports that the called functions do not use are stubbed (loggers, experiment
managers, dataset modules, image libraries); the backbone is replaced by a table of the
fixture's features (the protocols are evaluated on given features); Hummingbird's nearest
neighbour backend (ScaNN, or FAISS on GPUs) by an exact FAISS CPU index, the search our
implementation does. FAISS k-means and PCA run as the references call them (faiss-cpu),
seeded as the references seed them; their centroids and PCA outputs are recorded (by
wrapping `faiss.Kmeans` and `normalize_and_transform`, which still run unchanged) so the
Rust side can be checked with the reference's own centroids.

usage: python tools/goldens/make_protocol_goldens.py --leopart /work/refs/leopart \
           --timet /work/refs/Timetuning --hbird /work/refs/open-hummingbird-eval \
           --out tests/fixtures/eval
needs: torch, faiss-cpu, scikit-learn, scipy, numpy, joblib
"""
import argparse
import contextlib
import importlib
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import types

import faiss
import importlib.machinery
import joblib
import os
import numpy as np
import torch
import torch._dynamo  # noqa: F401  (imported before any stub exists: it probes many module names)


# ----------------------------------------------------------------------------- stubs
class Anything:
    """Stands in for an unused import: any attribute, call or decorator."""

    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        if len(a) == 1 and callable(a[0]) and not k:
            return a[0]
        return Anything()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything()

    def __iter__(self):
        return iter(())


def stub(name, **attrs):
    mod = types.ModuleType(name)

    def getattr_(n):
        if n.startswith("__"):
            raise AttributeError(n)
        return Anything()

    mod.__getattr__ = getattr_
    mod.__file__ = f"<stub {name}>"
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
        if parent not in sys.modules:
            stub(parent)
        setattr(sys.modules[parent], child, mod)
    return mod


class Metric:
    """torchmetrics.Metric as far as the references use it: list states."""

    def __init__(self, **kwargs):
        pass

    def add_state(self, name, default, **kwargs):
        self.__dict__.setdefault("_defaults", {})[name] = default
        setattr(self, name, list(default) if isinstance(default, list) else default)

    def reset(self):
        for name, default in self._defaults.items():
            setattr(self, name, list(default) if isinstance(default, list) else default)


class LightningModule(torch.nn.Module):
    logged = {}

    def save_hyperparameters(self, *a, **k):
        pass

    def log(self, name, value, **kwargs):
        LightningModule.logged[name] = float(value)


def common_stubs():
    for name in ["timm", "timm.models", "timm.models.vision_transformer", "skimage", "skimage.measure", "torchvision",
                 "torchvision.models", "torchvision.models.resnet", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.datasets", "click", "sacred", "sacred.experiment", "sacred.observers", "wandb", "cv2",
                 "matplotlib", "matplotlib.pyplot", "PIL", "PIL.Image", "tensorboard", "anyio", "mmcv", "mmcv.cnn"]:
        stub(name)
    stub("torchmetrics", Metric=Metric)
    stub("pytorch_lightning", LightningModule=LightningModule, Trainer=Anything, seed_everything=Anything())
    stub("pytorch_lightning.loggers", NeptuneLogger=Anything)
    stub("pytorch_lightning.callbacks", ModelCheckpoint=Anything)


@contextlib.contextmanager
def on_path(root, drop):
    """`root` first on sys.path; the named top-level modules of an earlier reference forgotten."""
    for name in list(sys.modules):
        if name.split(".")[0] in drop:
            del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))


def git_commit(root):
    """The checkout's commit: `git rev-parse HEAD`, or a `.git-commit` file for an exported tree."""
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        f = pathlib.Path(root) / ".git-commit"
        return f.read_text().strip() if f.is_file() else None


class Recorder:
    """faiss.Kmeans that keeps every trained instance's centroids (training unchanged)."""

    def __init__(self):
        self.runs = []
        rec = self

        class Kmeans(faiss.Kmeans):
            def train(self, x, *a, **k):
                out = super().train(x, *a, **k)
                rec.runs.append({"k": int(self.k), "centroids": self.centroids.copy()})
                return out

        self.Kmeans = Kmeans

    def faiss_module(self):
        mod = types.ModuleType("faiss_recording")
        mod.__dict__.update({k: getattr(faiss, k) for k in dir(faiss) if not k.startswith("__")})
        mod.Kmeans = self.Kmeans
        return mod


def f32list(a):
    # 9 significant digits round-trip a float32 exactly.
    return [float("%.9g" % v) for v in np.asarray(a, dtype=np.float32).reshape(-1)]


def unit_floats(ids):
    """float32 values v with float32(v * 255) == id exactly, so that the references'
    `(mask * 255).long()` recovers integer labels from a ToTensor-style mask."""
    out = np.zeros(256, dtype=np.float32)
    for i in range(256):
        v = np.float32(i / 255.0)
        for _ in range(8):
            if np.float32(v * np.float32(255.0)) == np.float32(i):
                break
            v = np.nextafter(v, np.float32(i + 1), dtype=np.float32)
        assert np.float32(v * np.float32(255.0)) == np.float32(i), i
        out[i] = v
    return out[np.asarray(ids)]


# ----------------------------------------------------------------------------- fixtures
def blobs_features(rng, labels_grid, classes, dim, sep=6.0, sub=2.0, noise=0.4, centres=None):
    """Features of patches whose latent blob is 2 * class + (random half): two tight
    sub-blobs per class, classes far apart."""
    if centres is None:
        S = rng.normal(size=(classes, dim))
        S = S / np.linalg.norm(S, axis=1, keepdims=True) * sep
        s = rng.normal(size=(2 * classes, dim))
        s = s / np.linalg.norm(s, axis=1, keepdims=True) * sub
        centres = np.stack([S[b // 2] + s[b] for b in range(2 * classes)]) + 3.0
    flat = labels_grid.reshape(-1)
    half = rng.integers(0, 2, size=flat.shape)
    blob = 2 * flat + half
    x = centres[blob] + noise * rng.normal(size=(flat.size, dim))
    return x.reshape(*labels_grid.shape, dim).astype(np.float32), centres


def detailed_masks(rng, grid_labels, size, ignore_frac=0.05, noise_frac=0.08, classes=None):
    """Masks at `size` from patch labels (nearest), with pixel-level label noise and a few
    ignored (255) pixels: finer than the patch grid, so upsampling and matching matter."""
    n, g, _ = grid_labels.shape
    ys = (np.arange(size) * g) // size
    m = grid_labels[:, ys][:, :, ys].copy()
    if classes is not None:
        flip = rng.random(m.shape) < noise_frac
        m[flip] = rng.integers(0, classes, size=flip.sum())
    m[rng.random(m.shape) < ignore_frac] = 255
    return m.astype(np.uint8)


def leopart_clustering(leopart, out):
    """Overcluster.validation_epoch_end on features + masks; K = classes and overclustering."""
    common_stubs()
    for name in ["data", "data.ade20k", "data.ade20k.ade20kdata", "data.VOCdevkit", "data.VOCdevkit.vocdata", "data.coco",
                 "data.coco.coco_data_module", "src", "src.vit", "src.resnet"]:
        stub(name)
    with on_path(leopart, ["experiments"]):
        utils = importlib.import_module("experiments.utils")
        sup = importlib.import_module("experiments.overcluster.sup_overcluster")
    rec = Recorder()
    utils.faiss = rec.faiss_module()
    pca_out = []
    real_nt = utils.normalize_and_transform

    def recording_nt(feats, pca_dim):
        r = real_nt(feats, pca_dim)
        pca_out.append(r.numpy().copy())
        return r

    sup.normalize_and_transform = recording_nt
    results = []
    sup.print = lambda *a, **k: results.append(a[0]) if a and isinstance(a[0], list) else None
    utils.print = lambda *a, **k: None

    rng = np.random.default_rng(11)
    classes, g, dim, mask_size, n = 4, 4, 16, 10, 24
    grid = rng.integers(0, classes, size=(n, g, g))
    feats, _ = blobs_features(rng, grid, classes, dim)
    masks = detailed_masks(rng, grid, mask_size, classes=classes)
    cases = []
    for k in (classes, 8):
        self = types.SimpleNamespace(num_seeds=5, pca_dim=8, spatial_res=g, k=k, masks_eval_size=mask_size,
                                     ignore_index=255, num_classes=classes)
        tokens = torch.from_numpy(feats.reshape(n * g * g, dim))
        m = torch.from_numpy(masks.astype(np.float32)).reshape(n, 1, mask_size, mask_size)
        results.clear()
        rec.runs.clear()
        pca_out.clear()
        sup.Overcluster.validation_epoch_end(self, [(tokens, m)])
        cases.append({"k": k, "per_seed": [float(v) for v in results[-1]], "pca_features": f32list(pca_out[-1]),
                      "centroids": [f32list(r["centroids"]) for r in rec.runs]})
    out["leopart_clustering"] = {
        "images": n, "grid": g, "dim": dim, "classes": classes, "mask_size": mask_size, "pca_dim": 8,
        "niter": 100, "nredo": 5, "seeds": list(range(5)),
        "features": f32list(feats), "masks": masks.reshape(-1).tolist(), "cases": cases,
    }

    # PredsmIoU on hand-made maps with ties: an absent class, an empty cluster, ignored pixels.
    pm = []
    for trial in range(6):
        r = np.random.default_rng(100 + trial)
        num_gt, num_pred = 5, [5, 5, 9, 9, 3, 5][trial]
        gt = r.integers(0, num_gt - 1, size=400)  # class num_gt - 1 never occurs
        pred = (gt + r.integers(0, 2, size=400)) % max(num_pred - 1, 1)  # cluster num_pred - 1 empty
        metric = utils.PredsmIoU(num_pred, num_gt)
        many = num_pred != num_gt
        for precision in ([False, True] if many else [False]):
            score = metric.compute_miou(gt, pred, num_pred, num_gt, many_to_one=many, precision_based=precision)[0]
            pm.append({"num_pred": num_pred, "num_gt": num_gt, "many_to_one": many, "precision": precision,
                       "gt": gt.tolist(), "pred": pred.tolist(), "miou": float(score)})
    out["leopart_preds_miou"] = pm


def leopart_linear(leopart, out):
    """LinearFinetune: training_step + its SGD/StepLR for a few epochs, then validation."""
    common_stubs()
    for name in ["data", "data.VOCdevkit", "data.VOCdevkit.vocdata", "data.coco", "data.coco.coco_data_module",
                 "src", "src.resnet", "src.linear_finetuning_transforms", "experiments.linear_probing.fcn",
                 "experiments.linear_probing.fcn.fcn_head"]:
        stub(name)
    rng = np.random.default_rng(5)
    n_train, n_val, g, dim, classes, in_size, mask_size = 12, 6, 4, 8, 4, 16, 8
    grid = rng.integers(0, classes, size=(n_train + n_val, g, g))
    feats, _ = blobs_features(rng, grid, classes, dim, sep=2.0, sub=1.0, noise=1.0)
    masks = detailed_masks(rng, grid, in_size, classes=classes)
    table = torch.from_numpy(feats.reshape(n_train + n_val, g * g, dim))

    class Backbone(torch.nn.Module):
        """The backbone replaced by the fixture: image i's pixel [0,0,0] holds i."""
        embed_dim = dim

        def forward_backbone(self, imgs):
            idx = imgs[:, 0, 0, 0].long()
            cls = torch.zeros(len(idx), 1, dim)
            return torch.cat([cls, table[idx]], dim=1)

    stub("src.vit", vit_small=lambda patch_size=16: Backbone(), vit_base=lambda patch_size=16: Backbone())
    with on_path(leopart, ["experiments"]):
        importlib.import_module("experiments.utils").print = lambda *a, **k: None
        lf = importlib.import_module("experiments.linear_probing.linear_finetune")
    lf.print = lambda *a, **k: None
    torch.manual_seed(0)
    model = lf.LinearFinetune(patch_size=in_size // g, num_classes=classes, lr=0.1, input_size=in_size, spatial_res=g,
                              val_iters=100, drop_at=2, arch="vit-small", decay_rate=0.1, ignore_index=255)
    model.train_mask_size = model.val_mask_size = mask_size
    w0 = model.finetune_head.weight.detach().clone().reshape(classes, dim)
    b0 = model.finetune_head.bias.detach().clone()
    [opt], [sched] = model.configure_optimizers()
    units = unit_floats(masks.reshape(-1)).reshape(masks.shape)

    def batch(ids):
        imgs = torch.zeros(len(ids), 3, in_size, in_size)
        imgs[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32)
        return imgs, torch.from_numpy(units[ids]).unsqueeze(1).clone()

    epochs, bs = 3, 5
    for _ in range(epochs):
        order = list(range(n_train))
        for i in range(0, n_train - bs + 1, bs):  # drop_last
            opt.zero_grad()
            loss = model.training_step(batch(order[i:i + bs]), i)
            loss.backward()
            model.on_after_backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        model.validation_step(batch(list(range(n_train, n_train + n_val))), 0)
        model.validation_epoch_end([])
    out["leopart_linear"] = {
        "train": n_train, "val": n_val, "grid": g, "dim": dim, "classes": classes, "input_size": in_size,
        "mask_size": mask_size, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "drop_at": 2, "epochs": epochs,
        "batch_size": bs, "features": f32list(feats), "masks": masks.reshape(-1).tolist(),
        "weight": f32list(w0), "bias": f32list(b0),
        "weight_after": f32list(model.finetune_head.weight.detach().reshape(classes, dim)),
        "bias_after": f32list(model.finetune_head.bias.detach()), "miou": LightningModule.logged["miou_val"],
    }


def timet_video(timet, out):
    """Evaluator.evaluate for frame-, sample- and dataset-wise clustering and overclustering."""
    common_stubs()
    for name in ["data_loader", "models", "video_transformations", "leoloader"]:
        stub(name)
    sys.modules["data_loader"].SamplingMode = Anything()
    sys.modules["data_loader"].pascalVOCLoader = Anything
    sys.modules["data_loader"].make_loader = Anything()
    FeatureExtractor = type("FeatureExtractor", (), {})
    sys.modules["models"].FeatureExtractor = FeatureExtractor
    with on_path(timet, ["my_utils", "clustering", "metrics", "evaluation"]):
        ev = importlib.import_module("evaluation")
        clustering = importlib.import_module("clustering")
        metrics = importlib.import_module("metrics")
    for m in (ev, clustering, metrics):
        m.print = lambda *a, **k: None
    rec = Recorder()
    clustering.faiss = rec.faiss_module()
    pca_out = []
    real_nt = clustering.normalize_and_transform

    def recording_nt(feats, dim):
        r = real_nt(feats, dim)
        pca_out.append(r.numpy().copy())
        return r

    clustering.normalize_and_transform = recording_nt

    rng = np.random.default_rng(21)
    clips, frames, g, dim, size, dsize, batch = 5, 3, 6, 64, 12, 6, 2
    # Per clip a few instance ids (0 = background), frames share them.
    grids = []
    for c in range(clips):
        ids = 2 + (c % 2)
        base = rng.integers(0, ids, size=(g, g))
        grids.append(np.stack([np.where(rng.random((g, g)) < 0.1, rng.integers(0, ids, size=(g, g)), base) for _ in range(frames)]))
    grids = np.stack(grids)  # clips, frames, g, g
    feats, _ = blobs_features(rng, grids, 4, dim, sep=8.0, sub=0.5, noise=0.3)
    masks = np.stack([detailed_masks(rng, grids[c], size, ignore_frac=0.0, noise_frac=0.03, classes=2) for c in range(clips)])
    table = torch.from_numpy(feats.reshape(clips * frames, g * g, dim))

    class Model:
        """The backbone replaced by the fixture: frame i's pixel [0,0,0] holds i."""
        feature_extractor = types.SimpleNamespace(spatial_resolution=g)

        def eval(self):
            return self

        def __call__(self, data, use_head=False):
            return table[data[:, 0, 0, 0].long()], None

    def loader(dataset_wise):
        for b in range(0, clips, batch):
            ids = list(range(b, min(b + batch, clips)))
            data = torch.zeros(len(ids), 1, frames, 3, size, size)
            for j, c in enumerate(ids):
                data[j, 0, :, 0, 0, 0] = torch.arange(c * frames, (c + 1) * frames, dtype=torch.float32)
            ann = torch.from_numpy(masks[ids].astype(np.float64)).unsqueeze(1)
            if dataset_wise:
                # The dataset-wise branch multiplies by 255 (a ToTensor mask); undo it exactly.
                ann = ann / 255.0
                assert torch.equal((ann * 255).long(), torch.from_numpy(masks[ids]).long().unsqueeze(1))
            yield data, ann, torch.zeros(len(ids))

    results = []
    pca = {}
    logdir = tempfile.mkdtemp()
    for protocol, res in (("frame-wise", size), ("sample-wise", size), ("dataset-wise", dsize)):
        for over in (None, 10 if protocol != "dataset-wise" else 8):
            rec.runs.clear()
            pca_out.clear()
            evaluator = ev.Evaluator(list(loader(protocol == "dataset-wise")), Model(), logdir)
            score = evaluator.evaluate(many_to_one=over is not None, evaluation_protocol=protocol, eval_resolution=res,
                                       num_clusters=over or 0, use_annotations=over is None, precision_based=over is not None)
            # The PCA outputs depend on the batching only: one copy per batching.
            key = "dataset" if protocol == "dataset-wise" else "batches"
            got = [f32list(p) for p in pca_out]
            if key in pca:
                assert pca[key] == got, "PCA output differs between runs"
            pca[key] = got
            results.append({"protocol": protocol, "over_k": over, "score": float(score),
                            "centroids": [f32list(r["centroids"]) for r in rec.runs], "k": [r["k"] for r in rec.runs]})
    out["timet_video"] = {
        "clips": clips, "frames": frames, "grid": g, "dim": dim, "mask_size": size, "dataset_size": dsize,
        "batch_clips": batch, "niter": 50, "nredo": 5, "seed": 1, "features": f32list(feats),
        "masks": masks.reshape(-1).tolist(), "pca_batches": pca["batches"], "pca_dataset": pca["dataset"][0],
        "results": results,
    }


def hbird(hbird_root, out):
    """HbirdEvaluation (unbounded bank; exact search) built and evaluated on fixtures."""
    common_stubs()
    with on_path(hbird_root, ["hbird"]):
        for real in ["hbird", "hbird.utils", "hbird.nn"]:
            importlib.import_module(real)
        for name in ["hbird.data", "hbird.models", "hbird.utils.transforms", "hbird.utils.image_transformations"]:
            stub(name)
        sys.modules["hbird.models"].FeatureExtractor = Anything
        sys.modules["hbird.models"].FeatureExtractorSimple = Anything
        he = importlib.import_module("hbird.hbird_eval")

    class ExactSearch:
        """FAISS CPU exact inner-product index with the backend's interface."""

        def __init__(self, feature_memory, n_neighbors=30, **kwargs):
            self.index = faiss.IndexFlatIP(feature_memory.size(1))
            self.index.add(feature_memory.numpy())
            self.k = n_neighbors

        def find_nearest_neighbors(self, q):
            d, i = self.index.search(q.numpy().astype(np.float32), self.k)
            return i, d

    stub("hbird.nn.search_faiss", NearestNeighborSearchFaiss=ExactSearch)
    rng = np.random.default_rng(31)
    n_train, n_val, g, dim, classes, size = 10, 4, 4, 16, 5, 16
    grid = rng.integers(0, classes - 1, size=(n_train + n_val, g, g))
    feats, _ = blobs_features(rng, grid, classes, dim, sep=2.0, sub=1.0, noise=1.2)
    masks = detailed_masks(rng, grid, size, ignore_frac=0.05, noise_frac=0.1, classes=classes - 1)
    table = torch.from_numpy(feats.reshape(n_train + n_val, g * g, dim))
    units = unit_floats(masks.reshape(-1)).reshape(masks.shape)

    class Extractor(torch.nn.Module):
        eval_spatial_resolution = g
        d_model = dim

        def forward_features(self, x):
            return table[x[:, 0, 0, 0].long()], None

    def batches(ids, bs=3):
        for b in range(0, len(ids), bs):
            part = ids[b:b + bs]
            x = torch.zeros(len(part), 3, size, size)
            x[:, 0, 0, 0] = torch.tensor(part, dtype=torch.float32)
            yield x, torch.from_numpy(units[part]).unsqueeze(1).clone()

    train = list(batches(list(range(n_train))))
    val = list(batches(list(range(n_train, n_train + n_val))))
    res = []
    for k in (5, 30):
        evaluator = he.HbirdEvaluation(Extractor(), train, num_classes=classes, n_neighbours=k, augmentation_epoch=1,
                                       device="cpu", nn_method="faiss", memory_size=None)
        res.append({"neighbours": k, "miou": float(evaluator.evaluate(val, g, ignore_index=255))})
    out["hbird"] = {
        "train": n_train, "val": n_val, "grid": g, "dim": dim, "classes": classes, "input_size": size,
        "temperature": 0.02, "features": f32list(feats), "masks": masks.reshape(-1).tolist(), "results": res,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--leopart", required=True, type=pathlib.Path)
    ap.add_argument("--timet", required=True, type=pathlib.Path)
    ap.add_argument("--hbird", required=True, type=pathlib.Path)
    ap.add_argument("--out", default="tests/fixtures/eval", type=pathlib.Path)
    args = ap.parse_args()
    for p in (args.leopart / "experiments/utils.py", args.timet / "evaluation.py", args.hbird / "hbird/hbird_eval.py"):
        if not p.is_file():
            sys.exit(f"{p}: not found (give the reference checkouts' roots)")
    faiss.omp_set_num_threads(1)
    out = {"meta": {
        "made_by": "tools/goldens/make_protocol_goldens.py", "faiss": faiss.__version__, "torch": torch.__version__,
        "numpy": np.__version__,
        "references": {"leopart": git_commit(args.leopart), "timet": git_commit(args.timet), "hbird": git_commit(args.hbird)},
    }}
    # joblib's process workers would re-import the reference modules without the stubs.
    # FAISS prints from C++ (Leopart runs it verbose): the process's stdout is muted meanwhile.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), joblib.parallel_backend("threading"):
            leopart_clustering(args.leopart, out)
            leopart_linear(args.leopart, out)
            timet_video(args.timet, out)
            hbird(args.hbird, out)
    finally:
        os.dup2(saved, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "protocols.json"
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    lc = out["leopart_clustering"]["cases"]
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    for c in lc:
        print(f"  leopart K={c['k']}: per seed {np.round(c['per_seed'], 4).tolist()}")
    print(f"  leopart linear: mIoU {out['leopart_linear']['miou']:.4f}")
    for r in out["timet_video"]["results"]:
        print(f"  timet {r['protocol']} over={r['over_k']}: {r['score']:.4f} ({len(r['centroids'])} k-means)")
    for r in out["hbird"]["results"]:
        print(f"  hummingbird {r['neighbours']} neighbours: {r['miou']:.4f}")


if __name__ == "__main__":
    main()
