#!/usr/bin/env python3
"""Loads a `mosic export` file into timm with strict=True, as a user would.

usage: python tools/interop/check_export.py backbone.safetensors --model vit_small_patch14_dinov2 [--img-size 224]

Needs torch, timm and safetensors. Prints the patch-token shape of a forward pass and exits
non-zero if the state dict does not load strictly.
"""
import argparse

import safetensors.torch
import timm
import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights")
    p.add_argument("--model", required=True, help="timm model name, e.g. vit_small_patch14_dinov2")
    p.add_argument("--img-size", type=int, default=224)
    a = p.parse_args()
    model = timm.create_model(a.model, pretrained=False, img_size=a.img_size, num_classes=0)
    state = safetensors.torch.load_file(a.weights)
    model.load_state_dict(state, strict=True)  # raises on any missing, unexpected or mis-shaped key
    model.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, a.img_size, a.img_size)
        tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
    assert torch.isfinite(tokens).all()
    print(f"ok: {len(state)} tensors loaded into timm {timm.__version__} {a.model} with strict=True; "
          f"patch tokens {tuple(tokens.shape)}")


if __name__ == "__main__":
    main()
