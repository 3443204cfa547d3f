#!/usr/bin/env python3
"""Builds tests/fixtures/train_loop/: ten steps of the released MoSiC training loop.

Reproduces the per-step loop of the authors' release (SMSD75/MoSiC,
experiments/exp_mosic_multigpu.py, `MoSiCTrainerDS.train_one_epoch`) on a tiny timm ViT shaped
like our `vit_tiny_test` preset, on CPU in float32, from fixed initial weights through fixed
batches: once in one process (train_loop.*) and once over two processes (ws2.*).
trainer/tests/released_loop.rs runs our Trainer through the one-process steps.

Released code called as-is (imported from the checkout given by --mosic, not copied here):
  - MoSiCCoTracker(...)                 the model: FeatureExtractor, head, prototypes, EMA teacher
  - MoSiCCoTracker.train()/.train_step  forward passes, feature sampling at the tracks,
                                        Sinkhorn on the teacher scores, the hard-assignment loss
  - MoSiCCoTracker.update_teacher       the EMA (after the optimiser and scheduler steps)
  - MoSiC.get_optimization_params       the parameter groups (lr, weight decay)
  - FeatureExtractor.freeze_feature_extractor
  - utils.my_utils.find_optimal_assignment (called by train_step; wrapped to record its output;
                                        with two processes its own all-reduces run)

Replaced, and why:
  - DeepSpeed's engine (0.16.2 in the release's environment): what it does for the release's
    config (no ZeRO, fp32, gradient_accumulation_steps 1, no clipping) is written out:
    zero_grad, train_step, backward, the gradient all-reduce, optimizer.step, scheduler.step,
    update_teacher. The all-reduce is engine.allreduce_gradients -> buffered_allreduce_fallback
    with the config's defaults (prescale_gradients false, gradient_predivide_factor 1): every
    trainable parameter without a gradient gets zeros (here only the unused up_sampler: so its
    weights decay, as under DeepSpeed; nothing compared depends on it), all gradients are
    flattened into one bucket (< 5e8 elements), summed over the ranks (all_reduce) and, when the
    world size is not 1, multiplied by 1/world_size. The optimiser and scheduler are the torch
    classes its config names: torch.optim.AdamW (DeepSpeed's own `torch_adam` choice; its
    default FusedAdam has the same math and needs CUDA) and CosineAnnealingLR(eta_min=0).
  - CoTracker (torch.hub download, run on every batch): a module returning the batch's fixed
    tracks. They are handed over as (y, x): the release indexes its upsampled feature map with
    x as the row, so swapping makes it read row = y, column = x, our convention.
  - torch.distributed: a one-process gloo group, for train_step's dist.get_world_size(); for
    ws2, two processes (torch.multiprocessing spawn, gloo, world_size 2).
  - Sizes the release hard-codes for ViT-S/14 at 224 px (feature grid 16, width 384, head
    384->1024->1024->512->256, trainable blocks 10 and 11) are set for the tiny model after
    construction: grid S/14, width 64, a head of the same layout at small widths, the last two
    of four blocks trainable.
  - Third-party imports the step never calls (deepspeed, cotracker, wandb, ...) are stubbed.

Optimiser settings: the release's lrs (get_optimization_params' default lr 1e-4 for head and
prototypes, 1e-5 for the backbone), CosineAnnealingLR T_max 20 over 10 steps, and weight decay
20 instead of the config's 1e-2. At 1e-2, switching off the decay of the backbone weights or
of the prototypes moves their final parameters by 1.1e-7 and 4.8e-7, under the Rust test's
1e-6. torch's AdamW decays by lr x weight_decay a step (2e-3 for the head, 2e-4 for the
backbone here), so raising the decay rather than the lr makes that visible without raising the
rounding noise, which grows with the lr (gradients perturbed by 1e-7 move the final parameters
by 3e-8 at head lr 1e-4, 3e-7 at 1e-3). Switching off any one decayed group's decay (backbone
weights, head weights, prototypes: what get_optimization_params decays) now moves that
group's final student parameters by >= 1e-4; measured on every run and recorded, the script
stops if one falls short. The loss still falls on every batch. The release's groups decay
exactly the tensors of rank >= 2 (its rule: not ".bias" and not 1-D; every bias here is 1-D).

Initial weights: timm's init, with LayerScale and norm weights set to 1 +- 0.2 and 1-D biases
to +-0.05 so that every block matters, then rounded to float16 (the stored file is float16;
both sides start from exactly these values). Images are normalised with our loader's
mean/std (the release's loader uses std 0.228 for red; that is a data difference, not a step
difference).

Two processes (ws2): a global batch of 4 clips, clips 0-1 on rank 0 and 2-3 on rank 1 (two a
rank, so a rank's own clip order matters too), other batches than the one-process fixture's
(drawn after them from the same generator), the same initial weights and settings. Each rank
runs train_step on its half: its teacher scores go through the release's distributed Sinkhorn
(find_optimal_assignment(..., world_size=2): totals and prototype sums all-reduced, columns
normalised to 1/(B_local * world_size)), and its loss is the mean over its own clips' B_local x
T x N entries (CrossEntropyLoss(reduction='none') x visibility, then .mean()); the gradients
are then averaged as above. With equal shares on every rank the average of the ranks' means is
the mean over the global batch, so the step is the one-process step on all 4 clips up to
float rounding; ws2.json records how far the two are apart, and that the ranks end equal.

mask_ratio stays 0: the release draws its masks inside train_step from torch's global
generator (argsort of torch.randn(B, L) per step), which our trainer, drawing its own, cannot
replay; and it masks the loss by the frame-t patch only, scoring a point whose frame-0 patch
was dropped with the head's answer to a zero feature.

Changed since the first version (which ran torch 2.11.0): weight decay 1e-2 -> 20 (above);
DeepSpeed's gradient all-reduce written out (identity with one process, bar the up_sampler's
zeros); the two-process run and ws2.*; in train_loop.json, param_groups[].name and the
weight_decay_sensitivity*, rounding_sensitivity and sinkhorn_min_margin keys. Inputs, initial
weights and every existing key and tensor shape are unchanged.

Run against SMSD75/MoSiC fed4637bdac1982910d28f10d4f1fa4b8a9e67bd with torch 2.15.0 and
timm 1.0.31 (also needs numpy and safetensors), CPU, one thread a process:

    python tools/goldens/make_train_loop_golden.py --mosic /path/to/MoSiC [--out tests/fixtures/train_loop]

Outputs:
  backbone_init.safetensors  the initial backbone, timm names, float16 (both runs)
  train_loop.safetensors     inputs.{images u8 [NB,B,T,3,S,S], tracks [NB,B,T,N,2] (x, y),
                             visibility [NB,B,T,N]} (step s uses batch s % NB);
                             init.{head.layers.J.*, prototypes.weight};
                             targets i64 [steps,B,T,N], teacher_scores [steps,B,T,N,K];
                             final.{student,teacher}.backbone.<timm name> (trained blocks, timm
                             layout), final.{student,teacher}.{head.layers.J.*,
                             prototypes.weight}. Head weights are in Burn's [in, out] layout.
  train_loop.json            released commit, versions, settings, parameter groups, per-step
                             loss / grad norm / learning rates (float64), frozen-teacher drift,
                             weight_decay_sensitivity (per decayed group: max |change| of its
                             final student tensors with that group's decay off; _teacher: the
                             same for the teacher copies; _loss: max |change| of a step's loss),
                             rounding_sensitivity (every gradient x (1 + 1e-7 N(0,1)), 3 draws:
                             max |change| of losses and final tensors), sinkhorn_min_margin
                             (smallest best-minus-second assignment); param_groups also name
                             their group
  ws2.safetensors, ws2.json  the same layout for the two-process run (B=4 global): targets and
                             teacher scores of the whole batch (rank 0's clips first), rank 0's
                             final tensors; per step the loss each rank reports (`loss` is rank
                             0's, as the release logs it; `loss_rank1`; `loss_mean` = their mean);
                             ranks_final_max_abs_diff; one_process: the one-process loop on the
                             same global batch (losses, final/target differences)
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
import torch.multiprocessing as mp  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors  # noqa: E402

MEAN = [0.485, 0.456, 0.406]  # trainer/src/loader.rs MEAN / STD
STD = [0.229, 0.224, 0.225]
# The tiny model: timm's DINOv2-with-registers ViT at our vit_tiny_test size.
TIMM_NAME = "vit_small_patch14_reg4_dinov2"
S, DIM, DEPTH, HEADS = 56, 64, 4, 2
TRAINED = ["blocks.3", "blocks.2"]
B, T, G, K, OUT, HIDDEN = 2, 3, 4, 8, 16, [32, 32, 24]
WS2, B_WS2 = 2, 4  # the two-process run: world size, global clips (two a rank)
# DeepSpeed config values the groups override or leave alone.
CONFIG_LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
# get_optimization_params' groups, in its order: feature extractor, head, prototypes, up_sampler.
GROUP_NAMES = ["backbone", "backbone_no_decay", "head", "head_no_decay", "prototypes",
               "up_sampler", "up_sampler_no_decay"]
DECAYED = ["backbone", "head", "prototypes"]  # compared groups with decay (up_sampler is unused)
SENSITIVITY_MIN = 1e-4  # 100x the Rust test's tolerance on final parameters
NOISE = 1e-7  # relative gradient perturbation: about float32 rounding of a reordered sum


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


def import_release(mosic):
    sys.path.insert(0, str(pathlib.Path(mosic).resolve()))
    import experiments.exp_mosic_multigpu as E  # seeds torch/numpy/random to 1 on import

    E.CoTrackerFF = FixedTracks
    return E


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


def build_model(E, vit, gen):
    """The run's arguments (train.sh); sk_epsilon / sk_k stay at the class defaults, as run()
    does. Head and prototypes are drawn from gen."""
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
    return m


def batches(gen, count, clips):
    """Random u8 frames; a GxG grid of points drifting by a random walk (some leave the frame),
    ~75% visible, all visible in frame 0."""
    images = torch.randint(0, 256, (count, clips, T, 3, S, S), generator=gen, dtype=torch.uint8)
    lin = torch.linspace(S / 64, S - 1 - S / 64, G)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    start = torch.stack([gx, gy], -1).reshape(1, 1, 1, G * G, 2)
    drift = torch.cumsum(3.0 * torch.randn(count, clips, T, G * G, 2, generator=gen), dim=2)
    drift[:, :, 0] = 0
    tracks = (start + drift).float()
    vis = (torch.rand(count, clips, T, G * G, generator=gen) > 0.25).float()
    vis[:, :, 0] = 1
    return images, tracks, vis


def optimizer(m, a, no_decay=()):
    """DeepSpeed's optimiser and scheduler as the release's config names them; it drops empty
    groups. No betas/eps in the config: the class defaults. Groups named in no_decay lose
    their weight decay (the sensitivity runs)."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every trainable name
        raw = m.get_optimization_params(lr=a.lr)
    named = [(n, g) for n, g in zip(GROUP_NAMES, raw, strict=True) if len(g["params"]) > 0]
    opt = torch.optim.AdamW([g for _, g in named], lr=CONFIG_LR, weight_decay=a.weight_decay,
                            betas=BETAS, eps=EPS, foreach=False)
    for (name, _), g in zip(named, opt.param_groups):
        g["name"] = name
        if name in no_decay:
            g["weight_decay"] = 0.0
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.t_max, eta_min=0)
    return opt, sched


def reduce_gradients(m, world):
    """DeepSpeed's engine.backward -> allreduce_gradients (buffered_allreduce_fallback,
    allreduce_bucket) for this config: zeros for a trainable parameter without a gradient, one
    flat bucket, all_reduce (sum), then x gradient_predivide_factor / world = 1/world unless
    that is 1."""
    grads = []
    for p in m.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros(p.size(), dtype=p.dtype, device=p.device)
            grads.append(p.grad.data)
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    if world != 1:
        flat.mul_(1.0 / world)
    for g, r in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(r)


def run_loop(E, template, a, images, tracks, vis, no_decay=(), noise=None):
    """The released per-step loop (train_one_epoch) on a copy of template: step s takes batch
    s % len(images). Returns the trained model and the per-step records. noise=(rel, gen):
    every reduced gradient times 1 + rel * N(0, 1), a stand-in for other summation orders."""
    world = dist.get_world_size()
    m = copy.deepcopy(template)
    opt, sched = optimizer(m, a, no_decay)
    groups = {g["name"]: g for g in opt.param_groups}
    mean = torch.tensor(MEAN).view(1, 1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 1, 3, 1, 1) * 255
    clips = images.shape[1]

    captured = {}
    original = E.find_optimal_assignment

    def recorded(scores, epsilon, iterations, world_size=1):
        q = original(scores, epsilon, iterations, world_size=world_size)
        captured.update(scores=scores.detach().clone(), q=q.clone(), epsilon=epsilon,
                        iterations=iterations, world_size=world_size)
        return q

    E.find_optimal_assignment = recorded
    log, targets, scores, qs = [], [], [], []
    try:
        for s in range(a.steps):
            nb = s % images.shape[0]
            datum = (images[nb].float() - mean) / std
            m.FF.current = (tracks[nb][..., [1, 0]].contiguous(), vis[nb])
            lr_backbone, lr_head = groups["backbone"]["lr"], groups["head"]["lr"]
            m.train()  # ds_engine.train()
            opt.zero_grad(set_to_none=True)
            loss = m.train_step(datum, None, None)
            loss.backward()  # ds_engine.backward(): backward, then the gradient all-reduce
            reduce_gradients(m, world)
            if noise is not None:
                for p in m.parameters():
                    if p.grad is not None:
                        p.grad.mul_(1 + noise[0] * torch.randn(p.shape, generator=noise[1]))
            grad_sq = sum(float((p.grad.double() ** 2).sum())
                          for g in opt.param_groups for p in g["params"] if p.grad is not None)
            opt.step()  # ds_engine.step(): no clipping, optimiser, then the scheduler
            sched.step()
            m.update_teacher()
            assert captured["world_size"] == world
            targets.append(captured["q"].argmax(-1).reshape(clips, T, G * G))
            scores.append(captured["scores"].reshape(clips, T, G * G, K))
            qs.append(captured["q"])
            log.append(dict(step=s, batch=nb, loss=loss.item(), grad_norm=grad_sq ** 0.5,
                            lr_head=lr_head, lr_backbone=lr_backbone))
    finally:
        E.find_optimal_assignment = original
    top2 = torch.stack(qs).topk(2, dim=-1).values
    names = {id(p): n for n, p in m.named_parameters()}
    return types.SimpleNamespace(
        model=m, log=log, targets=torch.stack(targets), scores=torch.stack(scores),
        q=torch.stack(qs), epsilon=captured["epsilon"], iterations=captured["iterations"],
        margin=float((top2[..., 0] - top2[..., 1]).min()),
        groups=[dict(name=g["name"], lr=g["initial_lr"], weight_decay=g["weight_decay"],
                     params=[names[id(p)] for p in g["params"]]) for g in opt.param_groups])


def finals(m):
    """final.{student,teacher}.*: trained blocks (timm names), head ([in, out]), prototypes."""
    out = {}
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
    return out


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def teacher_name(n):
    for s, t in [("feature_extractor.", "teacher."), ("mlp_head.", "teacher_mlp_head."),
                 ("prototypes", "teacher_prototypes")]:
        if n.startswith(s):
            return t + n[len(s):]
    raise KeyError(n)


def frozen_drift(m, images):
    """The release's EMA also averages the frozen tensors; 0.99 p + 0.01 p moves them by
    rounding. Returns that drift and its effect on the teacher's patch tokens."""
    student = dict(m.feature_extractor.named_parameters())
    frozen = [n for n, p in student.items() if not p.requires_grad]
    teacher = dict(m.teacher.named_parameters())
    drift = max(float((teacher[n] - student[n]).abs().max()) for n in frozen)
    mean = torch.tensor(MEAN).view(1, 1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 1, 3, 1, 1) * 255
    with torch.no_grad():
        x = ((images[0].float() - mean) / std).flatten(0, 1)
        tokens, _ = m.teacher.forward_features(x)
        exact = copy.deepcopy(m.teacher)
        for n, p in exact.named_parameters():
            if n in frozen:
                p.copy_(student[n])
        tokens_exact, _ = exact.forward_features(x)
    return drift, float((tokens - tokens_exact).abs().max())


def init_tensors(m):
    out = {}
    linears = [layer for layer in m.mlp_head if isinstance(layer, nn.Linear)]
    for j, lin in enumerate(linears):
        out[f"init.head.layers.{j}.weight"] = lin.weight.detach().t().contiguous().clone()
        out[f"init.head.layers.{j}.bias"] = lin.bias.detach().clone()
    out["init.prototypes.weight"] = m.prototypes.detach().clone()
    return out


def ws2_worker(rank, a, store, state, inputs, out_dir):
    """One rank of the two-process run: the same model (the parent's state), its half of every
    batch, the release's distributed Sinkhorn and DeepSpeed's gradient average."""
    torch.set_num_threads(1)
    E = import_release(a.mosic)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WS2)
    gen = torch.Generator().manual_seed(a.seed)
    template = build_model(E, tiny_backbone(gen), gen)
    template.load_state_dict(state)  # exactly the parent's values
    images, tracks, vis = inputs
    part = slice(rank * B_WS2 // WS2, (rank + 1) * B_WS2 // WS2)
    r = run_loop(E, template, a, images[:, part], tracks[:, part], vis[:, part])
    drift = frozen_drift(r.model, images[:, part])
    torch.save(dict(log=r.log, targets=r.targets, scores=r.scores, q=r.q, margin=r.margin,
                    finals=finals(r.model), drift=drift),
               str(pathlib.Path(out_dir) / f"rank{rank}.pt"))
    dist.destroy_process_group()


def settings(a, r, clips, world):
    return dict(
        backbone=dict(timm=TIMM_NAME, img_size=S, embed_dim=DIM, depth=DEPTH,
                      num_heads=HEADS, trained=sorted(TRAINED), weights_dtype="float16"),
        clips=clips, frames=T, grid=G, points=G * G, prototypes=K, head_hidden=HIDDEN,
        head_out=OUT, steps=a.steps, batches=a.batches, seed=a.seed,
        mean=MEAN, std=STD, tracks="stored (x, y); handed to the release as (y, x)",
        model_type="dinov2r-s", feature_upsampling="nearest",
        teacher_feature_upsampling="nearest", mask_ratio=0,
        sk_epsilon=r.epsilon, sk_k=r.iterations, temperature=0.1, teacher_momentum=0.99,
        optimizer=dict(cls="torch.optim.AdamW", lr=CONFIG_LR, weight_decay=a.weight_decay,
                       betas=list(BETAS), eps=EPS, head_lr=a.lr, backbone_lr=a.lr / 10),
        scheduler=dict(cls="torch.optim.lr_scheduler.CosineAnnealingLR", T_max=a.t_max,
                       eta_min=0),
        grad_clip=None, world_size=world, threads=torch.get_num_threads())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mosic", required=True, type=pathlib.Path,
                    help="checkout of SMSD75/MoSiC (imported, never copied)")
    ap.add_argument("--mosic-commit", help="its commit, when the checkout has no .git")
    repo = pathlib.Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=pathlib.Path, default=repo / "tests/fixtures/train_loop")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batches", type=int, default=3, help="distinct batches, cycled")
    ap.add_argument("--lr", type=float, default=1e-4,
                    help="get_optimization_params(lr=): the head's lr, the backbone's x 1/10")
    ap.add_argument("--weight-decay", type=float, default=20.0,
                    help="AdamW's weight decay (the decayed groups'), large enough to show")
    ap.add_argument("--t-max", type=int, default=20,
                    help="CosineAnnealingLR T_max (our run.steps), so the lr decays visibly")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    commit = released_commit(a.mosic, a.mosic_commit)
    torch.set_num_threads(1)
    E = import_release(a.mosic)

    torch.manual_seed(a.seed)
    if not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(delete=False)
        store.close()
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)

    gen = torch.Generator().manual_seed(a.seed)
    vit = tiny_backbone(gen)
    init_backbone = {k: v.detach().clone().contiguous() for k, v in vit.state_dict().items()}
    template = build_model(E, vit, gen)
    images, tracks, vis = batches(gen, a.batches, B)
    inputs2 = batches(gen, a.batches, B_WS2)  # drawn after: the one-process inputs stay put

    # The one-process run.
    r = run_loop(E, template, a, images, tracks, vis)
    for rec in r.log:
        print(rec)
    out = init_tensors(template)
    out.update(finals(r.model))
    out["inputs.images"] = images.contiguous()
    out["inputs.tracks"] = tracks.contiguous()
    out["inputs.visibility"] = vis.contiguous()
    out["targets"] = r.targets.contiguous()
    out["teacher_scores"] = r.scores.contiguous()
    drift, token_drift = frozen_drift(r.model, images)
    print(f"frozen teacher tensors moved by the EMA's rounding: {drift:.3g} "
          f"(teacher patch tokens: {token_drift:.3g})")

    # Weight decay sensitivity: each decayed group's decay off in turn.
    members = {g["name"]: g["params"] for g in r.groups}
    params = {n: p.detach() for n, p in r.model.named_parameters()}
    sens, sens_teacher, sens_loss = {}, {}, {}
    for name in DECAYED:
        v = run_loop(E, template, a, images, tracks, vis, no_decay=(name,))
        other = {n: p.detach() for n, p in v.model.named_parameters()}
        sens[name] = max(float((params[n] - other[n]).abs().max()) for n in members[name])
        sens_teacher[name] = max(float((params[teacher_name(n)] - other[teacher_name(n)])
                                       .abs().max()) for n in members[name])
        sens_loss[name] = max(abs(x["loss"] - y["loss"]) for x, y in zip(r.log, v.log))
        print(f"weight decay off for {name}: its final student tensors move by "
              f"{sens[name]:.3g} (teacher {sens_teacher[name]:.3g}, loss {sens_loss[name]:.3g})")
    short = [n for n in DECAYED if sens[n] < SENSITIVITY_MIN]
    if short:
        sys.exit(f"weight decay of {short} moves the final parameters by < {SENSITIVITY_MIN}")

    # What rounding does: every gradient perturbed by a relative NOISE, a few draws. (A float64
    # run is no measure: its distance is the float32 storage of the teacher's ~1.5 norm
    # weights, which any float32 implementation shares.)
    noisy = [run_loop(E, template, a, images, tracks, vis,
                      noise=(NOISE, torch.Generator().manual_seed(i))) for i in range(3)]
    rounding = dict(
        grad_rel_noise=NOISE, draws=len(noisy),
        loss_max_abs_diff=max(abs(x["loss"] - y["loss"]) for v in noisy
                              for x, y in zip(r.log, v.log)),
        final_max_abs_diff=max(max_diff(finals(r.model), finals(v.model)) for v in noisy),
        targets_differ=max(int((r.targets != v.targets).sum()) for v in noisy))
    print(f"gradients x (1 + {NOISE:g} N(0,1)): {rounding}")

    # The two-process run, and the one-process loop on its global batch.
    with tempfile.TemporaryDirectory() as tmp:
        store2 = pathlib.Path(tmp) / "store"
        state = {k: v.clone() for k, v in template.state_dict().items()}
        mp.spawn(ws2_worker, args=(a, str(store2), state, inputs2, tmp), nprocs=WS2, join=True)
        ranks = [torch.load(str(pathlib.Path(tmp) / f"rank{i}.pt"), weights_only=False)
                 for i in range(WS2)]
    one = run_loop(E, template, a, *inputs2)
    r0, r1 = ranks
    ranks_diff = max_diff(r0["finals"], r1["finals"])
    targets2 = torch.cat([x["targets"] for x in ranks], dim=1)
    scores2 = torch.cat([x["scores"] for x in ranks], dim=1)
    q2 = torch.cat([x["q"] for x in ranks], dim=1)
    steps2 = []
    for x, y, o in zip(r0["log"], r1["log"], one.log):
        assert x["grad_norm"] == y["grad_norm"] and x["lr_head"] == y["lr_head"]
        steps2.append(dict(x, loss_rank1=y["loss"], loss_mean=(x["loss"] + y["loss"]) / 2))
    one_process = dict(
        steps=[dict(step=o["step"], loss=o["loss"], grad_norm=o["grad_norm"]) for o in one.log],
        loss_max_abs_diff=max(abs(s["loss_mean"] - o["loss"]) for s, o in zip(steps2, one.log)),
        grad_norm_max_rel_diff=max(abs(s["grad_norm"] - o["grad_norm"]) / o["grad_norm"]
                                   for s, o in zip(steps2, one.log)),
        final_max_abs_diff=max_diff(r0["finals"], finals(one.model)),
        targets_differ=int((targets2 != one.targets).sum()),
        # step 0 has the same model on both: the distributed Sinkhorn against the global one
        step0_sinkhorn_q_max_abs_diff=float((q2[0] - one.q[0].reshape(q2[0].shape)).abs().max()))
    for s in steps2:
        print(s)
    print(f"ws2: ranks' final tensors differ by {ranks_diff:.3g}; one process on the same "
          f"batch: {one_process | {'steps': '...'}}")

    a.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() for k, v in init_backbone.items()},
              str(a.out / "backbone_init.safetensors"))
    save_file(out, str(a.out / "train_loop.safetensors"))
    released = dict(repo="SMSD75/MoSiC", commit=commit, file="experiments/exp_mosic_multigpu.py")
    versions = dict(torch=torch.__version__, timm=timm.__version__)
    meta = dict(
        released=released, versions=versions, settings=settings(a, r, B, 1),
        param_groups=r.groups, steps=r.log,
        frozen_teacher_drift=drift, teacher_token_drift=token_drift,
        sinkhorn_min_margin=r.margin,
        weight_decay_sensitivity=sens, weight_decay_sensitivity_teacher=sens_teacher,
        weight_decay_sensitivity_loss=sens_loss, rounding_sensitivity=rounding)
    (a.out / "train_loop.json").write_text(json.dumps(meta, indent=1) + "\n")

    out2 = init_tensors(template)
    out2.update(r0["finals"])
    out2["inputs.images"], out2["inputs.tracks"], out2["inputs.visibility"] = (
        t.contiguous() for t in inputs2)
    out2["targets"] = targets2.contiguous()
    out2["teacher_scores"] = scores2.contiguous()
    save_file(out2, str(a.out / "ws2.safetensors"))
    set2 = settings(a, r, B_WS2, WS2)
    set2.update(
        clips_per_rank=B_WS2 // WS2,
        batch_split="rank 0: clips 0..B/2, rank 1: clips B/2..B of every batch",
        gradient_reduction="zeros for missing grads; flat all_reduce(sum); x 1/world_size",
        loss_normalisation="each rank: mean over its own B/2 x T x N entries; `loss` is rank "
                           "0's (what the release logs), loss_mean the ranks' mean")
    meta2 = dict(
        released=released, versions=versions, settings=set2, param_groups=r.groups,
        steps=steps2, frozen_teacher_drift=r0["drift"][0], teacher_token_drift=r0["drift"][1],
        sinkhorn_min_margin=min(x["margin"] for x in ranks),
        ranks_final_max_abs_diff=ranks_diff, one_process=one_process)
    (a.out / "ws2.json").write_text(json.dumps(meta2, indent=1) + "\n")


if __name__ == "__main__":
    main()
