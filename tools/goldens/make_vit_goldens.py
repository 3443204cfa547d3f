#!/usr/bin/env python3
"""Golden fixtures for trainer/src/model.rs: tiny timm ViTs with random weights and their patch tokens.

Usage: python tools/goldens/make_vit_goldens.py --out tests/fixtures/vit

Every model is built through timm's own registered entry points (`timm.create_model(<real name>, ...)`)
with only the size overridden, so the fixtures pin the numerics of the real DINOv2 / DINO configs.
Weights loaded at another grid go through timm's `checkpoint_filter_fn`, which is what resamples
pos_embed (and converts official DINOv2 names) when timm loads pretrained weights.

Needs: torch, timm, safetensors, numpy. The output is deterministic for a given torch/timm version.
"""

import argparse
import json
import os
import shutil

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import checkpoint_filter_fn

# Real timm names for the presets in model.rs; the tagged name also fixes num_classes=0 (no head).
PRESETS = [
    "vit_small_patch14_dinov2.lvd142m",
    "vit_base_patch14_dinov2.lvd142m",
    "vit_large_patch14_dinov2.lvd142m",
    "vit_giant_patch14_dinov2.lvd142m",
    "vit_small_patch14_reg4_dinov2.lvd142m",
    "vit_base_patch14_reg4_dinov2.lvd142m",
    "vit_large_patch14_reg4_dinov2.lvd142m",
    "vit_giant_patch14_reg4_dinov2.lvd142m",
    "vit_small_patch16_224.dino",
    "vit_base_patch16_224.dino",
]


def config_of(model, timm_name):
    """The model.rs VitConfig that describes `model` (read from the built module, not from its kwargs)."""
    blk = model.blocks[0]
    swiglu = type(blk.mlp).__name__ == "GluMlp"
    hidden = blk.mlp.fc1.out_features
    dim = model.embed_dim
    mlp_ratio = {4 * dim: 4.0}.get(hidden, 2.66667 * 2)
    assert int(dim * mlp_ratio) == hidden, (dim, mlp_ratio, hidden)
    img = model.patch_embed.img_size[0]
    return dict(
        patch_size=model.patch_embed.patch_size[0],
        embed_dim=dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=mlp_ratio,
        num_registers=model.num_reg_tokens,
        layer_scale=not isinstance(blk.ls1, torch.nn.Identity),
        swiglu=swiglu,
        img_size=img,
        ln_eps=model.norm.eps,
        no_embed_class=model.no_embed_class,
        timm_name=timm_name,
    )


def shapes(model):
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def randomize(model, gen):
    """Random values everywhere, LayerScale and norms included, so every tensor shows in the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=gen))
            elif ".norm" in name or name.startswith("norm"):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def tiny(name, img_size, **size):
    kw = dict(embed_dim=16, depth=2, num_heads=2)
    kw.update(size)
    return timm.create_model(name, pretrained=False, img_size=img_size, **kw).eval()


def patch_tokens(model, x):
    with torch.no_grad():
        return model.forward_features(x)[:, model.num_prefix_tokens:].contiguous()


def masked_patch_tokens(model, x, mask, mask_token):
    """DINOv2's masking: masked patch embeddings become mask_token before the position embedding."""
    with torch.no_grad():
        t = model.patch_embed(x)
        t = torch.where(mask.unsqueeze(-1), mask_token.to(t.dtype).unsqueeze(0), t)
        t = model._pos_embed(t)
        t = model.norm(model.blocks(model.norm_pre(t)))
        return t[:, model.num_prefix_tokens:].contiguous()


class FixedPatchDropout(torch.nn.Module):
    """Keeps the given patch tokens after the position embedding, as the released MoSiC code's
    FixedMaskPatchDropout does inside timm's forward_features (prefix tokens always kept)."""

    def __init__(self, num_prefix_tokens, keep):
        super().__init__()
        self.num_prefix_tokens, self.keep = num_prefix_tokens, keep

    def forward(self, x):
        p = self.num_prefix_tokens
        prefix, x = x[:, :p], x[:, p:]
        x = x.gather(1, self.keep.unsqueeze(-1).expand((-1, -1) + x.shape[2:]))
        return torch.cat((prefix, x), dim=1)


def dropped_patch_tokens(model, x, keep):
    """timm's forward_features with the patches outside `keep` [B, K] dropped."""
    saved = model.patch_drop
    model.patch_drop = FixedPatchDropout(model.num_prefix_tokens, keep)
    try:
        return patch_tokens(model, x)
    finally:
        model.patch_drop = saved


DROP_KEEP = torch.tensor([[0, 2, 3, 4, 7, 8, 9, 10, 12, 13, 15], [1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 14]])


def write_case(out, case, model, weights_file, input_name, x, extra=None, timm_name=None):
    d = os.path.join(out, case)
    os.makedirs(d, exist_ok=True)
    tensors = {"tokens": patch_tokens(model, x)}
    if extra:
        tensors.update(extra)
    save_file(tensors, os.path.join(d, "expected.safetensors"))
    meta = dict(
        case=case,
        timm_model=timm_name,
        weights=weights_file,
        input=input_name,
        config=config_of(model, None),
        state_dict=shapes(model),
    )
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=1)


def official_dinov2_dict(timm_sd, gen):
    """Inverse of timm's _convert_dinov2: official DINOv2 names (register_tokens, w12/w3, pos_embed with
    a cls slot, mask_token)."""
    sd = {}
    p0 = 0.2 * torch.randn(1, timm_sd["cls_token"].shape[-1], generator=gen)
    for k, v in timm_sd.items():
        k = k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        if k == "reg_token":
            k = "register_tokens"
        sd[k] = v.clone()
    sd["pos_embed"] = torch.cat([p0.unsqueeze(0), timm_sd["pos_embed"]], dim=1)
    sd["cls_token"] = timm_sd["cls_token"] - p0
    sd["mask_token"] = 0.2 * torch.randn(1, timm_sd["cls_token"].shape[-1], generator=gen)
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = args.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)

    inputs = {
        "img56": torch.randn(2, 3, 56, 56, generator=gen),
        "img64": torch.randn(1, 3, 64, 64, generator=gen),
    }
    save_file(inputs, os.path.join(out, "inputs.safetensors"))

    # (1) DINOv2, no registers: pos_embed covers the cls token.
    name = "vit_small_patch14_dinov2"
    m = tiny(name, 56)
    randomize(m, gen)
    os.makedirs(os.path.join(out, "dinov2"), exist_ok=True)
    save_file(m.state_dict(), os.path.join(out, "dinov2", "weights.safetensors"))
    extra = {"keep": DROP_KEEP, "tokens_dropped": dropped_patch_tokens(m, inputs["img56"], DROP_KEEP)}
    write_case(out, "dinov2", m, "weights.safetensors", "img56", inputs["img56"], extra=extra, timm_name=name)

    # (2) DINOv2 with 4 registers: no_embed_class, pos_embed covers patches only.
    name = "vit_small_patch14_reg4_dinov2"
    m = tiny(name, 56)
    randomize(m, gen)
    os.makedirs(os.path.join(out, "dinov2_reg4"), exist_ok=True)
    save_file(m.state_dict(), os.path.join(out, "dinov2_reg4", "weights.safetensors"))
    extra = {"keep": DROP_KEEP[:1], "tokens_dropped": dropped_patch_tokens(m, inputs["img56"][:1], DROP_KEEP[:1])}
    write_case(out, "dinov2_reg4", m, "weights.safetensors", "img56", inputs["img56"][:1], extra=extra, timm_name=name)

    # (3) DINO v1: patch 16, no LayerScale, pos_embed incl. cls.
    name = "vit_small_patch16_224"
    m = tiny(name, 64, num_classes=0)
    randomize(m, gen)
    os.makedirs(os.path.join(out, "dino_v1"), exist_ok=True)
    save_file(m.state_dict(), os.path.join(out, "dino_v1", "weights.safetensors"))
    write_case(out, "dino_v1", m, "weights.safetensors", "img64", inputs["img64"], timm_name=name)

    # (4a) pos_embed resampling, downsampling 8x8 -> 4x4, pos_embed with a cls slot.
    # (4b) upsampling 3x3 -> 4x4 with registers (no_embed_class).
    for case, name, src_img in [
        ("resample_down", "vit_small_patch14_dinov2", 112),
        ("resample_up_reg4", "vit_small_patch14_reg4_dinov2", 42),
    ]:
        src = tiny(name, src_img)
        randomize(src, gen)
        sd = {k: v.clone() for k, v in src.state_dict().items()}
        os.makedirs(os.path.join(out, case), exist_ok=True)
        save_file(sd, os.path.join(out, case, "weights.safetensors"))
        dst = tiny(name, 56)
        dst.load_state_dict(checkpoint_filter_fn(dict(sd), dst), strict=True)
        assert dst.pos_embed.shape != src.pos_embed.shape
        write_case(out, case, dst, "weights.safetensors", "img56", inputs["img56"][:1], timm_name=name)

    # (5) official DINOv2 .pth: giant-style SwiGLU (w12/w3) with registers and a mask_token, wrapped the
    # way training checkpoints are ({"teacher": {"backbone.<name>": ...}} plus an unrelated head).
    name = "vit_giant_patch14_reg4_dinov2"
    src = tiny(name, 56, embed_dim=24)
    randomize(src, gen)
    official = official_dinov2_dict(src.state_dict(), gen)
    wrapped = {"backbone." + k: v for k, v in official.items()}
    wrapped["dino_head.last_layer.weight"] = torch.randn(8, 24, generator=gen)
    os.makedirs(os.path.join(out, "official_giant_reg4"), exist_ok=True)
    torch.save({"teacher": wrapped, "iteration": 7}, os.path.join(out, "official_giant_reg4", "weights.pth"))
    dst = tiny(name, 56, embed_dim=24)
    dst.load_state_dict(checkpoint_filter_fn(dict(official), dst), strict=True)
    x = inputs["img56"]
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 6, 15]] = True
    mask[1, 3:9] = True
    extra = {
        "mask": mask.to(torch.uint8),
        "tokens_masked": masked_patch_tokens(dst, x, mask, official["mask_token"]),
    }
    write_case(out, "official_giant_reg4", dst, "weights.pth", "img56", x, extra=extra, timm_name=name)

    # The bicubic antialiased resize on its own, down, up and mixed.
    rs = {}
    for i, (c, h, w, oh, ow) in enumerate([(3, 5, 7, 4, 9), (2, 37, 37, 16, 16), (2, 8, 8, 4, 4), (1, 3, 3, 4, 4),
                                           (2, 37, 37, 13, 21)]):
        s = torch.randn(c, h, w, generator=gen)
        o = F.interpolate(s.unsqueeze(0), size=(oh, ow), mode="bicubic", antialias=True, align_corners=False)[0]
        rs[f"case{i}.src"] = s
        rs[f"case{i}.out"] = o.contiguous()
    save_file(rs, os.path.join(out, "resample.safetensors"))

    # Full-size presets on the meta device: the config each really has and its state_dict layout
    # (non-block tensors plus block 0, every block being asserted identical up to its index).
    presets = {}
    for full in PRESETS:
        with torch.device("meta"):
            m = timm.create_model(full, pretrained=False, img_size=224)
        sd = shapes(m)
        depth = len(m.blocks)
        block0 = [[k, s] for k, s in sd if k.startswith("blocks.0.")]
        for i in range(depth):
            bi = [[k, s] for k, s in sd if k.startswith(f"blocks.{i}.")]
            assert [[k.replace(f"blocks.{i}.", "blocks.0.", 1), s] for k, s in bi] == block0, (full, i)
        presets[full] = dict(
            config=config_of(m, full),
            other=[[k, s] for k, s in sd if not k.startswith("blocks.")],
            block0=block0,
            num_tensors=len(sd),
        )
    with open(os.path.join(out, "presets.json"), "w") as f:
        json.dump(presets, f, indent=1)

    with open(os.path.join(out, "VERSIONS"), "w") as f:
        f.write(f"torch {torch.__version__}\ntimm {timm.__version__}\n")

    # safetensors writes 0600 files; fixtures are meant to be read by everyone.
    for root, _, files in os.walk(out):
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


if __name__ == "__main__":
    main()
