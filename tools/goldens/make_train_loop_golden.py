#!/usr/bin/env python3
"""Builds tests/fixtures/train_loop/: ten steps of the released MoSiC training loop.

Reproduces the per-step loop of the authors' release (SMSD75/MoSiC,
experiments/exp_mosic_multigpu.py, `MoSiCTrainerDS.train_one_epoch`) on a tiny timm ViT shaped
like our `vit_tiny_test` preset, on CPU in float32, from fixed initial weights through fixed
batches. trainer/tests/released_loop.rs runs our Trainer through the same steps.

Released code called as-is (imported from the checkout given by --mosic, not copied here):
  - MoSiCCoTracker(...)                 the model: FeatureExtractor, head, prototypes, EMA teacher
  - MoSiCCoTracker.train()/.train_step  forward passes, feature sampling at the tracks,
                                        Sinkhorn on the teacher scores, the hard-assignment loss
  - MoSiCCoTracker.update_teacher       the EMA (after the optimiser and scheduler steps)
  - MoSiC.get_optimization_params       the parameter groups (lr, weight decay)
  - FeatureExtractor.freeze_feature_extractor
  - utils.my_utils.find_optimal_assignment (called by train_step; wrapped to record its output)

Replaced, and why:
  - DeepSpeed's engine: what it does for the release's config (no ZeRO, fp32, no clipping,
    gradient averaging over one process = identity) is written out: zero_grad, train_step,
    backward, optimizer.step, scheduler.step, update_teacher. The optimiser and scheduler are
    the torch classes its config names: torch.optim.AdamW (DeepSpeed's own `torch_adam` choice;
    its default FusedAdam has the same math and needs CUDA) and CosineAnnealingLR(eta_min=0).
  - CoTracker (torch.hub download, run on every batch): a module returning the batch's fixed
    tracks. They are handed over as (y, x): the release indexes its upsampled feature map with
    x as the row, so swapping makes it read row = y, column = x, our convention.
  - torch.distributed: a one-process gloo group, for train_step's dist.get_world_size().
  - Sizes the release hard-codes for ViT-S/14 at 224 px (feature grid 16, width 384, head
    384->1024->1024->512->256, trainable blocks 10 and 11) are set for the tiny model after
    construction: grid S/14, width 64, a head of the same layout at small widths, the last two
    of four blocks trainable.
  - Third-party imports the step never calls (deepspeed, cotracker, wandb, ...) are stubbed.

Initial weights: timm's init, with LayerScale and norm weights set to 1 +- 0.2 and 1-D biases
to +-0.05 so that every block matters, then rounded to float16 (the stored file is float16;
both sides start from exactly these values). Images are normalised with our loader's
mean/std (the release's loader uses std 0.228 for red; that is a data difference, not a step
difference).

Run against SMSD75/MoSiC fed4637bdac1982910d28f10d4f1fa4b8a9e67bd with torch 2.11.0 and
timm 1.0.31 (also needs numpy and safetensors), CPU, one thread:

    python tools/goldens/make_train_loop_golden.py --mosic /path/to/MoSiC [--out tests/fixtures/train_loop]

Outputs:
  backbone_init.safetensors  the initial backbone, timm names, float16
  train_loop.safetensors     inputs.{images u8 [NB,B,T,3,S,S], tracks [NB,B,T,N,2] (x, y),
                             visibility [NB,B,T,N]} (step s uses batch s % NB);
                             init.{head.layers.J.*, prototypes.weight};
                             targets i64 [steps,B,T,N], teacher_scores [steps,B,T,N,K];
                             final.{student,teacher}.backbone.<timm name> (trained blocks, timm
                             layout), final.{student,teacher}.{head.layers.J.*,
                             prototypes.weight}. Head weights are in Burn's [in, out] layout.
  train_loop.json            released commit, versions, settings, parameter groups, per-step
                             loss / grad norm / learning rates (float64), frozen-teacher drift
"""
import argparse
import contextlib
import copy
import importlib.abc
import importlib.machinery
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import types

STUBBED = {"deepspeed", "cotracker", "peft", "wandb", "imageio", "matplotlib", "skimage",
           "IPython", "requests", "cv2", "pycocotools", "torchmetrics", "scann", "faiss",
           "sklearn", "scipy", "joblib"}


class _Dummy:
    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Dummy()

    def __getattr__(self, name):
        return _Dummy()


class _StubModule(types.ModuleType):
    """Any attribute is a class (so `class X(stub.Base)` and module-level calls work)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (_Dummy,), {})
        setattr(self, name, cls)
        return cls


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _StubModule(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StubFinder())

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

MEAN = [0.485, 0.456, 0.406]  # trainer/src/loader.rs MEAN / STD
STD = [0.229, 0.224, 0.225]
# The tiny model: timm's DINOv2-with-registers ViT at our vit_tiny_test size.
TIMM_NAME = "vit_small_patch14_reg4_dinov2"
S, DIM, DEPTH, HEADS = 56, 64, 4, 2
TRAINED = ["blocks.3", "blocks.2"]
B, T, G, K, OUT, HIDDEN = 2, 3, 4, 8, 16, [32, 32, 24]


class FixedTracks(nn.Module):
    """Stands in for CoTrackerFF (models/models.py): forward(video) returns this step's
    (tracks, visibility), tracks as (y, x)."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.current = None

    def forward(self, video):
        return self.current


def released_commit(path, given):
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    if given and out and given != out:
        sys.exit(f"--mosic-commit {given} but the checkout is at {out}")
    if not (given or out):
        sys.exit("the checkout has no git metadata: give its commit with --mosic-commit")
    return given or out


def tiny_backbone(gen):
    vit = timm.create_model(TIMM_NAME, pretrained=False, img_size=S, embed_dim=DIM, depth=DEPTH,
                            num_heads=HEADS, num_classes=0)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if p.ndim == 1 and ("gamma" in name or ("norm" in name and name.endswith("weight"))):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        for p in vit.state_dict().values():
            p.copy_(p.half().float())
    return vit


def batches(gen, count):
    """Random u8 frames; a GxG grid of points drifting by a random walk (some leave the frame),
    ~75% visible, all visible in frame 0."""
    images = torch.randint(0, 256, (count, B, T, 3, S, S), generator=gen, dtype=torch.uint8)
    lin = torch.linspace(S / 64, S - 1 - S / 64, G)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    start = torch.stack([gx, gy], -1).reshape(1, 1, 1, G * G, 2)
    drift = torch.cumsum(3.0 * torch.randn(count, B, T, G * G, 2, generator=gen), dim=2)
    drift[:, :, 0] = 0
    tracks = (start + drift).float()
    vis = (torch.rand(count, B, T, G * G, generator=gen) > 0.25).float()
    vis[:, :, 0] = 1
    return images, tracks, vis


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mosic", required=True, type=pathlib.Path,
                    help="checkout of SMSD75/MoSiC (imported, never copied)")
    ap.add_argument("--mosic-commit", help="its commit, when the checkout has no .git")
    repo = pathlib.Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=pathlib.Path, default=repo / "tests/fixtures/train_loop")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batches", type=int, default=3, help="distinct batches, cycled")
    ap.add_argument("--t-max", type=int, default=20,
                    help="CosineAnnealingLR T_max (our run.steps), so the lr decays visibly")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    commit = released_commit(a.mosic, a.mosic_commit)
    sys.path.insert(0, str(a.mosic.resolve()))
    torch.set_num_threads(1)

    import experiments.exp_mosic_multigpu as E  # seeds torch/numpy/random to 1 on import

    torch.manual_seed(a.seed)
    if not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(delete=False)
        store.close()
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)

    gen = torch.Generator().manual_seed(a.seed)
    vit = tiny_backbone(gen)
    init_backbone = {k: v.detach().clone().contiguous() for k, v in vit.state_dict().items()}

    # The run's arguments (train.sh); sk_epsilon / sk_k stay at the class defaults, as run() does.
    E.CoTrackerFF = FixedTracks
    m = E.MoSiCCoTracker(S, vit, num_prototypes=K, model_type="dinov2r-s", grid_size=G,
                         latent_tracking=False, feature_upsampling="nearest",
                         teacher_feature_upsampling="nearest", use_EMA_teacher=True,
                         teacher_momentum=0.99, mask_ratio=0)
    m.spatial_resolution = S // 14
    m.feature_extractor.d_model = m.teacher.d_model = DIM
    m.feature_extractor.freeze_feature_extractor(TRAINED)
    dims = [DIM, *HIDDEN, OUT]
    layers = []
    for i, (di, do) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(di, do))
        if i < len(dims) - 2:
            layers.append(nn.GELU())
    m.mlp_head = nn.Sequential(*layers)
    m.prototypes = nn.Parameter(F.normalize(torch.randn(K, OUT, generator=gen), dim=-1, p=2))
    # The teacher's head and prototypes copied again, as the constructor does (its backbone
    # copy is already equal: freezing changes no values).
    m.teacher_mlp_head = copy.deepcopy(m.mlp_head)
    for p in m.teacher_mlp_head.parameters():
        p.requires_grad = False
    m.teacher_prototypes = nn.Parameter(m.prototypes.data.clone(), requires_grad=False)

    out = {}
    linears = [layer for layer in m.mlp_head if isinstance(layer, nn.Linear)]
    for j, lin in enumerate(linears):
        out[f"init.head.layers.{j}.weight"] = lin.weight.detach().t().contiguous().clone()
        out[f"init.head.layers.{j}.bias"] = lin.bias.detach().clone()
    out["init.prototypes.weight"] = m.prototypes.detach().clone()

    images, tracks, vis = batches(gen, a.batches)
    mean = torch.tensor(MEAN).view(1, 1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 1, 3, 1, 1) * 255

    # DeepSpeed's optimiser and scheduler as the release's config names them; it drops empty
    # groups. No betas/eps in the config: the class defaults.
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every trainable name
        groups = [g for g in m.get_optimization_params() if len(g["params"]) > 0]
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8,
                            foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.t_max, eta_min=0)
    names = {id(p): n for n, p in m.named_parameters()}
    group_info = [dict(lr=g["lr"], weight_decay=g["weight_decay"],
                       params=[names[id(p)] for p in g["params"]]) for g in opt.param_groups]

    captured = {}
    original = E.find_optimal_assignment

    def recorded(scores, epsilon, iterations, world_size=1):
        q = original(scores, epsilon, iterations, world_size=world_size)
        captured.update(scores=scores.detach().clone(), q=q.clone(), epsilon=epsilon,
                        iterations=iterations, world_size=world_size)
        return q

    E.find_optimal_assignment = recorded

    log, targets, teacher_scores = [], [], []
    for s in range(a.steps):
        nb = s % a.batches
        datum = (images[nb].float() - mean) / std
        m.FF.current = (tracks[nb][..., [1, 0]].contiguous(), vis[nb])
        lr_backbone, lr_head = opt.param_groups[0]["lr"], opt.param_groups[2]["lr"]
        m.train()  # ds_engine.train()
        opt.zero_grad(set_to_none=True)
        loss = m.train_step(datum, None, None)
        loss.backward()
        grad_sq = sum(float((p.grad.double() ** 2).sum())
                      for g in opt.param_groups for p in g["params"] if p.grad is not None)
        opt.step()  # ds_engine.step(): no clipping, optimiser, then the scheduler
        sched.step()
        m.update_teacher()
        assert captured["world_size"] == 1
        targets.append(captured["q"].argmax(-1).reshape(B, T, G * G))
        teacher_scores.append(captured["scores"].reshape(B, T, G * G, K))
        log.append(dict(step=s, batch=nb, loss=loss.item(), grad_norm=grad_sq ** 0.5,
                        lr_head=lr_head, lr_backbone=lr_backbone))
        print(log[-1])

    sd = m.state_dict()
    for who, backbone, head, protos in [("student", "feature_extractor.model.", "mlp_head.",
                                         "prototypes"),
                                        ("teacher", "teacher.model.", "teacher_mlp_head.",
                                         "teacher_prototypes")]:
        for k, v in sd.items():
            if k.startswith(backbone) and any(k[len(backbone):].startswith(b + ".")
                                              for b in TRAINED):
                out[f"final.{who}.backbone.{k[len(backbone):]}"] = v.detach().clone().contiguous()
            elif k.startswith(head):
                j, what = k[len(head):].split(".")
                v = v.detach().t() if v.ndim == 2 else v.detach()
                out[f"final.{who}.head.layers.{int(j) // 2}.{what}"] = v.contiguous().clone()
        out[f"final.{who}.prototypes.weight"] = sd[protos].detach().clone()
    out["inputs.images"] = images.contiguous()
    out["inputs.tracks"] = tracks.contiguous()
    out["inputs.visibility"] = vis.contiguous()
    out["targets"] = torch.stack(targets).contiguous()
    out["teacher_scores"] = torch.stack(teacher_scores).contiguous()

    # The release's EMA also averages the frozen tensors; 0.99 p + 0.01 p moves them by rounding.
    student = dict(m.feature_extractor.named_parameters())
    frozen = [n for n, p in student.items() if not p.requires_grad]
    teacher = dict(m.teacher.named_parameters())
    drift = max(float((teacher[n] - student[n]).abs().max()) for n in frozen)
    with torch.no_grad():
        x = ((images[0].float() - mean) / std).flatten(0, 1)
        tokens, _ = m.teacher.forward_features(x)
        exact = copy.deepcopy(m.teacher)
        for n, p in exact.named_parameters():
            if n in frozen:
                p.copy_(student[n])
        tokens_exact, _ = exact.forward_features(x)
        token_drift = float((tokens - tokens_exact).abs().max())
    print(f"frozen teacher tensors moved by the EMA's rounding: {drift:.3g} "
          f"(teacher patch tokens: {token_drift:.3g})")

    a.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() for k, v in init_backbone.items()},
              str(a.out / "backbone_init.safetensors"))
    save_file(out, str(a.out / "train_loop.safetensors"))
    meta = dict(
        released=dict(repo="SMSD75/MoSiC", commit=commit,
                      file="experiments/exp_mosic_multigpu.py"),
        versions=dict(torch=torch.__version__, timm=timm.__version__),
        settings=dict(
            backbone=dict(timm=TIMM_NAME, img_size=S, embed_dim=DIM, depth=DEPTH,
                          num_heads=HEADS, trained=sorted(TRAINED), weights_dtype="float16"),
            clips=B, frames=T, grid=G, points=G * G, prototypes=K, head_hidden=HIDDEN,
            head_out=OUT, steps=a.steps, batches=a.batches, seed=a.seed,
            mean=MEAN, std=STD, tracks="stored (x, y); handed to the release as (y, x)",
            model_type="dinov2r-s", feature_upsampling="nearest",
            teacher_feature_upsampling="nearest", mask_ratio=0,
            sk_epsilon=captured["epsilon"], sk_k=captured["iterations"],
            temperature=0.1, teacher_momentum=m.teacher_momentum,
            optimizer=dict(cls="torch.optim.AdamW", lr=1e-3, weight_decay=1e-2,
                           betas=[0.9, 0.999], eps=1e-8, head_lr=1e-4, backbone_lr=1e-4 / 10),
            scheduler=dict(cls="torch.optim.lr_scheduler.CosineAnnealingLR", T_max=a.t_max,
                           eta_min=0),
            grad_clip=None, world_size=1, threads=torch.get_num_threads()),
        param_groups=group_info,
        steps=log,
        frozen_teacher_drift=drift,
        teacher_token_drift=token_drift,
    )
    (a.out / "train_loop.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
