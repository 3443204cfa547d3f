#!/usr/bin/env bash
# Trainer step on a GPU in the settings of the reference measurements (shared anchors):
# ViT-S/14 at 224 px, 12 frames x 256 points per clip, last 2 blocks trainable, the released
# head (1024-1024-512-256), 100 prototypes, no student masking, nearest sampling for both
# (the reference's direct gather), fp32, random weights.
#   cargo build --release -p mosic-trainer --example bench_step --features cuda
#   tools/bench-gpu.sh [target/release/examples/bench_step] [batch sizes...]
# bench_step is `mosic bench train` without FFmpeg and ONNX Runtime, so it runs on GPU
# machines that lack those libraries.
set -euo pipefail
BENCH=${1:-target/release/examples/bench_step}
shift || true
BATCHES=${*:-16 64}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for b in $BATCHES; do
  # Peak GPU memory of the device (allocator pools included), sampled every 200 ms.
  log=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$log" 2>/dev/null &
  smi=$!
  "$BENCH" cuda configs/dinov2_s14_ytvos.toml data.batch_size="$b" 'head.hidden=[1024,1024,512]' \
    objective.mask_ratio=0 objective.teacher_sampling=nearest
  kill $smi 2>/dev/null || true
  echo "batch $b: peak GPU memory $(sort -n "$log" | tail -1) MiB (nvidia-smi, whole device)"
  rm -f "$log"
done
