#!/usr/bin/env bash
# Our evaluation commands beside the reference code on the same features (BENCHMARKS.md,
# "Evaluation"): a synthetic labelled set, one backbone, `mosic eval` and
# tools/bench/reference_on_features.py (Leopart, TimeT, open-hummingbird-eval) on its features.
#
# usage: tools/bench/bench-eval.sh OUT LEOPART TIMET HBIRD [PYTHON] [MOSIC]
set -euo pipefail
out=$1 leopart=$2 timet=$3 hbird=$4 py=${5:-python3} mosic=${6:-target/debug/mosic}
model=(--random 0 --preset vit_small_patch14_dinov2 --batch 16)
size=224 every=8

mkdir -p "$out"
[ -f "$out/synth/synth.json" ] || "$mosic" synth --out "$out/synth" --videos 4 --no-mp4
# A plain image set of every 8th frame: videos 0-1 train, 2-3 val (for in-context retrieval).
set_dir=$out/set
rm -rf "$set_dir" && mkdir -p "$set_dir/images" "$set_dir/masks"
: > "$set_dir/train.txt"; : > "$set_dir/val.txt"
i=0
for v in $(ls "$out/synth/Annotations" | sort); do
  list=$([ $i -lt 2 ] && echo train || echo val)
  f=0
  for m in $(ls "$out/synth/Annotations/$v" | sort); do
    if [ $((f % every)) = 0 ]; then
      s=${m%.png}
      cp "$out/synth/JPEGImages/$v/$s.jpg" "$set_dir/images/${v}_$s.jpg"
      cp "$out/synth/Annotations/$v/$m" "$set_dir/masks/${v}_$s.png"
      echo "${v}_$s" >> "$set_dir/$list.txt"
    fi
    f=$((f + 1))
  done
  i=$((i + 1))
done
classes=$("$py" -c "
import sys, numpy as np; from PIL import Image; import glob
print(max(int(np.asarray(Image.open(p)).max()) for p in glob.glob(sys.argv[1] + '/masks/*.png')) + 1)" "$set_dir")
echo "classes: $classes"

"$mosic" features --input "$set_dir/images" --out "$out/features.safetensors" --size $size "${model[@]}"
/usr/bin/time -f "reference: %e s, %M KB" "$py" tools/bench/reference_on_features.py --leopart "$leopart" --timet "$timet" --hbird "$hbird" \
  --set "$set_dir" --features "$out/features.safetensors" --classes "$classes" --k 8 --over-dataset 20 --out "$out/reference.json" > /dev/null
/usr/bin/time -f "eval cluster: %e s, %M KB" "$mosic" eval cluster --data "$set_dir" --size $size --mask-size 100 --k 0,8 --seeds 5 \
  --classes "$classes" --json "$out/cluster.json" "${model[@]}"
/usr/bin/time -f "eval video: %e s, %M KB" "$mosic" eval video --data "$out/synth" --size $size --every $every --frames-per-clip 0 \
  --over-dataset 20 --json "$out/video.json" "${model[@]}"
/usr/bin/time -f "eval incontext: %e s, %M KB" "$mosic" eval incontext --data "$set_dir" --size $size --train-split train --val-split val \
  --fractions 1 --memory-size 0 --no-augment --classes "$classes" --json "$out/incontext.json" "${model[@]}"
"$py" - "$out" <<'PY'
import json, sys, pathlib
o = pathlib.Path(sys.argv[1]); ref = json.loads((o / "reference.json").read_text())
def ours(f): return {s["name"]: s for s in json.loads((o / f).read_text())["scores"]}
c, v, h = ours("cluster.json"), ours("video.json"), ours("incontext.json")
print("| protocol | score | ours (mIoU %) | reference (mIoU %) |\n|---|---|---|---|")
for name, s in c.items():
    k = name.split()[0]
    r = ref["leopart"][k]
    print(f"| cluster (Leopart) | {name} | {100*s['mean']:.2f} | {100*sum(r)/len(r):.2f} |")
for name, s in v.items():
    print(f"| video (TimeT) | {name} | {100*s['mean']:.2f} | {100*ref['timet'][name]:.2f} |")
for name, s in h.items():
    print(f"| in-context (Hummingbird) | {name} | {100*s['mean']:.2f} | {100*ref['hbird'][name]:.2f} |")
PY
