#!/usr/bin/env bash
# A dataset-scale rehearsal of in-context retrieval (Hummingbird) that fits a small machine:
# labelled synthetic images at 448 px, a ViT-S/14 (dimension 384, 1,024 patches an image), a
# memory bank of every patch of TRAIN images (1,000 by default: 1,024,000 patches, 1.5 GiB of
# features), VAL query images, all under a memory budget a fraction of the features' size.
# Prints the time and peak memory of `mosic eval incontext` (BENCHMARKS.md, "Evaluation at
# scale").
#
# usage: tools/bench/rehearse-incontext.sh OUT [MOSIC]
# env:   TRAIN [1000]  VAL [48]  MEMORY_GB [0.5]  BACKEND [flex]  DEVICE [cpu]
set -euo pipefail
out=${1:?usage: tools/bench/rehearse-incontext.sh OUT [MOSIC]}
mosic=${2:-target/release/mosic}
train=${TRAIN:-1000} val=${VAL:-48} memory=${MEMORY_GB:-0.5}
backend=${BACKEND:-flex} device=${DEVICE:-cpu}
size=448
frames=96
videos=$(( (train + val + frames - 1) / frames ))

mkdir -p "$out"
[ -f "$out/synth/synth.json" ] ||
  "$mosic" synth --out "$out/synth" --videos "$videos" --frames "$frames" --width $size --height $size --no-mp4
# A plain labelled set: the first TRAIN frames to train, the next VAL to val.
set_dir=$out/set
if [ ! -f "$set_dir/val.txt" ]; then
  rm -rf "$set_dir" && mkdir -p "$set_dir/images" "$set_dir/masks"
  : > "$set_dir/train.txt"; : > "$set_dir/val.txt"
  n=0
  for v in $(ls "$out/synth/Annotations" | sort); do
    for m in $(ls "$out/synth/Annotations/$v" | sort); do
      [ $n -ge $((train + val)) ] && break 2
      s=${m%.png}
      ln -sf "$(realpath "$out/synth/JPEGImages/$v/$s.jpg")" "$set_dir/images/${v}_$s.jpg"
      ln -sf "$(realpath "$out/synth/Annotations/$v/$m")" "$set_dir/masks/${v}_$s.png"
      echo "${v}_$s" >> "$set_dir/$([ $n -lt "$train" ] && echo train || echo val).txt"
      n=$((n + 1))
    done
  done
fi
echo "rehearsal: $(wc -l < "$set_dir/train.txt") train, $(wc -l < "$set_dir/val.txt") val images at $size px; budget $memory GiB"
/usr/bin/time -f "rehearsal: %e s wall, %M KB peak resident" \
  "$mosic" eval incontext --data "$set_dir" --train-split train --val-split val --size $size \
  --random 0 --preset vit_small_patch14_dinov2 --batch 16 --backend "$backend" --device "$device" \
  --fractions 1 --no-augment --memory-size 0 --memory-gb "$memory" --scratch "$out" \
  --json "$out/incontext.json"
