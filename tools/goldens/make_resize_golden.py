#!/usr/bin/env python3
"""Builds tests/fixtures/eval/resize_nearest*: what Pillow's NEAREST resize picks, for
eval/src/data.rs (`Mask::resize_nearest`, `pillow_nearest_index`).

The references resize label masks with torchvision's `Resize(..., interpolation=NEAREST)` on
PIL images, i.e. `Image.resize((w, h), Image.NEAREST)`. Pillow's nearest scaling steps a
floating-point source coordinate (`ImagingScaleAffine` in libImaging/Geometry.c), so where the
exact coordinate is a whole number it can pick the pixel below; the golden records what Pillow
itself picks, by resizing index images (nothing here re-derives its arithmetic).

- resize_nearest.json, "pairs": for every (input side -> output side) below, the source index
  Pillow picks for each output column, from a 32-bit 'I' image whose value is x, resized from
  (n, 1) to (m, 2); the same from a (1, n) image whose value is y resized to (2, m) gives the
  rows and must agree (asserted). The output height (width) of 2 keeps Pillow off its
  plain-copy shortcut, so identity pairs go through the same scaling code as a 2D resize with
  one side unchanged.
- resize_nearest_in.png: a 640x480 palette label image (VOC-like: objects with 255 borders,
  plus bands of 1-pixel vertical and horizontal stripes so that any source column or row off
  by one changes labels), and resize_nearest_<w>x<h>.png: it resized by Pillow with NEAREST to
  the sizes in "images" (chosen where Pillow departs from the exact pixel-centre rule on
  both axes: 640 -> 448 and 224, 480 -> 504 and 112).

Generated with Pillow 13.0.0 and numpy 2.4.6 (the versions are also recorded in the JSON).
It also prints, per pair, how many indices the previous rule (floor((x + 0.5) * in / out) in
f64) got wrong.

usage: python tools/goldens/make_resize_golden.py --out tests/fixtures/eval
needs: Pillow, numpy
"""
import argparse
import json
import math
import pathlib

import numpy as np
import PIL
from PIL import Image, ImageDraw

# Sides of the sets' images (VOC, COCO, ADE20K, DAVIS 480p, YouTube-VOS, Hummingbird) and the
# sides the protocols resize masks to; every input is also paired with itself.
INPUTS = [240, 281, 320, 333, 334, 360, 366, 375, 424, 426, 427, 480, 500, 512, 640, 720, 854,
          1080, 1280, 1920]
OUTPUTS = [100, 112, 224, 448, 504, 512, 518]
IMAGES = [(448, 504), (224, 112)]


def pillow_columns(n, m):
    im = Image.fromarray(np.arange(n, dtype=np.int32)[None, :])
    assert im.mode == "I" and im.size == (n, 1)
    out = np.asarray(im.resize((m, 2), Image.NEAREST))
    assert out.shape == (2, m) and (out[0] == out[1]).all()
    return out[0].tolist()


def pillow_rows(n, m):
    im = Image.fromarray(np.arange(n, dtype=np.int32)[:, None])
    assert im.mode == "I" and im.size == (1, n)
    out = np.asarray(im.resize((2, m), Image.NEAREST))
    assert out.shape == (m, 2) and (out[:, 0] == out[:, 1]).all()
    return out[:, 0].tolist()


def old_rule(n, m):
    return [min(math.floor((x + 0.5) * n / m), n - 1) for x in range(m)]


def label_image():
    w, h = 640, 480
    im = Image.new("P", (w, h), 0)
    im.putpalette([v for i in range(256) for v in (i * 37 % 256, i * 91 % 256, i * 53 % 256)])
    d = ImageDraw.Draw(im)
    d.ellipse((40, 30, 230, 200), fill=255)
    d.ellipse((43, 33, 227, 197), fill=5)
    d.rectangle((250, 20, 420, 150), fill=255)
    d.rectangle((253, 23, 417, 147), fill=12)
    d.polygon([(60, 360), (200, 230), (330, 350)], fill=255)
    d.polygon([(66, 356), (200, 236), (322, 347)], fill=20)
    a = np.array(im)
    x = np.arange(w)
    y = np.arange(h)
    a[380:420, :] = (1 + x % 3)[None, :]  # vertical stripes: every column matters
    a[:, 560:600] = (30 + y % 3)[:, None]  # horizontal stripes: every row matters
    out = Image.frombytes("P", (w, h), np.ascontiguousarray(a).tobytes())
    out.putpalette(im.getpalette())
    assert out.mode == "P" and (np.array(out) == a).all()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/eval")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pairs = []
    print(f"{'in':>5} {'out':>5}  old rule wrong")
    for n in INPUTS:
        for m in sorted(set(OUTPUTS + [n])):
            cols = pillow_columns(n, m)
            assert cols == pillow_rows(n, m), (n, m)
            if m == n:
                assert cols == list(range(n)), n
            wrong = sum(a != b for a, b in zip(cols, old_rule(n, m)))
            print(f"{n:>5} {m:>5}  {wrong}")
            pairs.append({"in": n, "out": m, "index": cols})

    src = label_image()
    src.save(out / "resize_nearest_in.png")
    images = []
    for w, h in IMAGES:
        name = f"resize_nearest_{w}x{h}.png"
        r = src.resize((w, h), Image.NEAREST)
        assert r.mode == "P" and r.size == (w, h)
        r.save(out / name)
        images.append({"file": name, "width": w, "height": h})

    doc = {
        "generator": "tools/goldens/make_resize_golden.py",
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "input": {"file": "resize_nearest_in.png", "width": src.size[0], "height": src.size[1]},
        "images": images,
        "pairs": pairs,
    }
    text = json.dumps(doc, separators=(",", ":"))
    (out / "resize_nearest.json").write_text(text + "\n")
    print(f"wrote {len(pairs)} pairs, {len(images)} images to {out}")


if __name__ == "__main__":
    main()
