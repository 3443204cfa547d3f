#!/usr/bin/env bash
# Trainer step on a GPU in the settings of the reference measurements (shared anchors):
# ViT-S/14 at 224 px, 12 frames x 256 points per clip, last 2 blocks trainable, the released
# head (1024-1024-512-256), 100 prototypes, no student masking, nearest sampling for both
# (the reference's direct gather), fp32. Prints `mosic bench train` figures per batch size.
#   tools/bench-gpu.sh [path/to/mosic built with --features cuda] [batch sizes...]
set -euo pipefail
MOSIC=${1:-target/release/mosic}
shift || true
BATCHES=("${@:-16 64}")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for b in ${BATCHES[@]}; do
  echo "== batch $b"
  # Peak GPU memory of the whole process (allocator pools included), sampled every 200 ms.
  log=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$log" 2>/dev/null &
  smi=$!
  "$MOSIC" bench train --config configs/dinov2_s14_ytvos.toml --backend cuda \
    --set data.batch_size="$b" --set head.hidden='[1024,1024,512]' --set objective.mask_ratio=0 \
    --set objective.teacher_sampling=nearest --warmup 3 --steps 10
  kill $smi 2>/dev/null || true
  echo "peak GPU memory  $(sort -n "$log" | tail -1) MiB (nvidia-smi, whole device)"
  rm -f "$log"
done
