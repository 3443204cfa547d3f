#!/usr/bin/env bash
# The prepared trainer-speed run for a lent GPU machine: our step beside the PyTorch step
# (torch_step.py, timm) on the same GPU in one run, at identical settings, one table.
#
# Build here, then carry the binary and the reference script:
#   cargo build --release -p mosic-trainer --example bench_step --features cuda
#   tools/bench-gpu.sh            (on the GPU machine, from the repository root)
# Environment (defaults in brackets):
#   BENCH    our binary [target/release/examples/bench_step]
#   REF      the PyTorch step [shared/reference/torch_step.py]
#   PY       Python with torch and timm [python3]
#   BACKEND  our backend [cuda]   DEVICE  the reference's device [cuda]
#   RUNS     "precision:batch" pairs, headline first [bf16:16 bf16:64 fp32:16 fp32:64]
#   BUDGET_S stop starting new rows after this many seconds [420]
# Settings of both sides: ViT-S/14 at 224 px, 12 frames x 256 points, last 2 blocks
# trainable, head 384-2048-2048-256, 100 prototypes, Sinkhorn 0.05 x 10 over all points, no
# masking, nearest sampling, EMA 0.99, AdamW, random weights; 10 timed steps after 3 warm-up.
#
# Kernel and autotune caches: CubeCL keeps them under the project's target/ (its default when
# run from a folder with a Cargo.toml), so a second run on a warm machine skips compilation;
# "first step" in the table is the time a cold process needs before its first update.
# PROFILE=1 reruns the headline with CUBECL_DEBUG_OPTION=profile-medium and prints the
# top kernels. With no GPU (BACKEND=flex DEVICE=cpu) the same script runs on the CPU as a
# dry run.
set -uo pipefail
BENCH=${BENCH:-target/release/examples/bench_step}
REF=${REF:-shared/reference/torch_step.py}
PY=${PY:-python3}
BACKEND=${BACKEND:-cuda}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-bf16:16 bf16:64 fp32:16 fp32:64}
BUDGET_S=${BUDGET_S:-420}
CONFIG=${CONFIG:-configs/dinov2_s14_ytvos.toml}

for f in "$BENCH" "$REF" "$CONFIG"; do
  [ -e "$f" ] || { echo "bench-gpu: $f not found (see the comment at the top of $0)" >&2; exit 2; }
done
"$PY" -c 'import torch, timm' 2>/dev/null || { echo "bench-gpu: $PY cannot import torch and timm" >&2; exit 2; }

have_smi=0
if command -v nvidia-smi >/dev/null 2>&1; then
  have_smi=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

# Peak device memory (MiB, whole device, 100 ms samples) of one command; "n/a" without a GPU.
peak_of() {
  local log; log=$(mktemp)
  if [ $have_smi = 1 ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" 2>/dev/null &
    local smi=$!
  fi
  "$@"
  local rc=$?
  if [ $have_smi = 1 ]; then kill $smi 2>/dev/null; wait $smi 2>/dev/null; PEAK=$(sort -n "$log" | tail -1); else PEAK=n/a; fi
  rm -f "$log"
  return $rc
}
field() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p" <<<"$2" | tail -1; }

start=$(date +%s)
rows=()
for run in $RUNS; do
  p=${run%%:*}; b=${run##*:}
  if [ $(( $(date +%s) - start )) -gt "$BUDGET_S" ]; then echo "budget of ${BUDGET_S}s spent: $run not run"; continue; fi
  echo "== ours: $BACKEND $p batch $b"
  out=$(mktemp)
  peak_of "$BENCH" "$BACKEND" "$CONFIG" data.batch_size="$b" model.precision="$p" model.trainable_blocks=2 \
    'head.hidden=[2048,2048]' head.out_dim=256 head.prototypes=100 objective.epsilon=0.05 \
    objective.sinkhorn_iterations=10 objective.ema=0.99 objective.mask_ratio=0 \
    objective.teacher_sampling=nearest objective.student_sampling=nearest objective.sinkhorn_rows=all >"$out" 2>&1
  rc=$?; ours=$(grep '^bench_step ' "$out"); ours_peak=$PEAK
  [ $rc = 0 ] || { tail -20 "$out"; rows+=("| $p | $b | failed (exit $rc) | | | | | | | |"); rm -f "$out"; continue; }
  echo "$ours"
  echo "== PyTorch: $DEVICE $p batch $b"
  peak_of "$PY" "$REF" --device "$DEVICE" --precision "$p" --batch "$b" --trainable 2 --hidden 2048 2048 \
    --out-dim 256 --prototypes 100 --eps 0.05 --iters 10 --ema 0.99 --steps 10 --warmup 3 >"$out" 2>&1
  rc=$?; ref=$(cat "$out"); ref_peak=$PEAK; rm -f "$out"
  echo "$ref" | tail -3
  [ $rc = 0 ] || { rows+=("| $p | $b | $(field step_ms "$ours") | failed (exit $rc) | | | | | | |"); continue; }
  ours_ms=$(field step_ms "$ours")
  ref_ms=$(sed -n 's/.*: *\([0-9.]*\) ms\/step.*/\1/p' <<<"$ref" | tail -1)
  ratio=$(awk -v a="$ours_ms" -v b="$ref_ms" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "n/a" }')
  rows+=("| $p | $b | $ours_ms | $ref_ms | **${ratio}x** | $(field clips_per_s "$ours") | $(awk -v b="$b" -v m="$ref_ms" 'BEGIN { printf "%.1f", b * 1000 / m }') | $ours_peak | $ref_peak | $(field first_step_s "$ours") |")
done

echo
echo "our backend $BACKEND, reference on $DEVICE; ratio = PyTorch ms / ours ms (above 1: ours faster); peak = device MiB (nvidia-smi, whole device)"
echo "| precision | clips | ours ms/step | PyTorch ms/step | ratio | ours clips/s | PyTorch clips/s | ours peak MiB | PyTorch peak MiB | ours first step s |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"

if [ "${PROFILE:-0}" = 1 ] && [ "$BACKEND" = cuda ]; then
  first=${RUNS%% *}; p=${first%%:*}; b=${first##*:}
  echo; echo "== top kernels, $p batch $b (CUBECL_DEBUG_OPTION=profile-medium)"
  CUBECL_DEBUG_OPTION=profile-medium CUBECL_DEBUG_LOG=stdout "$BENCH" "$BACKEND" "$CONFIG" data.batch_size="$b" \
    model.precision="$p" 'head.hidden=[2048,2048]' objective.mask_ratio=0 objective.teacher_sampling=nearest \
    objective.student_sampling=nearest objective.sinkhorn_rows=all 2>&1 | tail -60
fi
