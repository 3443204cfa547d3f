#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (an H200 with PyTorch 2.11 + CUDA, no network,
# 10 minutes a command): our training step on the `cuda` and `tch` backends beside the PyTorch
# step (tools/bench/torch_step.py, timm) on the same GPU in one run, at identical settings; the two-worker
# path (two workers sharing one GPU); one table, most important rows first.
#
# Build here, then carry the binaries (gzip: the stripped pair is ~64 MB, the carry limit):
#   cargo build --release -p mosic-trainer --example bench_step --features cuda
#     cp target/release/examples/bench_step .gpu/bench_step_cuda
#   tools/libtorch-cpu.sh /tmp/lt && tools/libtorch-gpu-link.sh /tmp/lt /tmp/ltgpu
#   LIBTORCH=/tmp/ltgpu/torch LIBTORCH_BYPASS_VERSION_CHECK=1 \
#     CARGO_TARGET_DIR=target/tch cargo build --release -p mosic-trainer --example bench_step --features tch
#     (linked against a libtorch without libtorch_cuda, burn-tch panics on every CUDA device)
#     cp target/tch/release/examples/bench_step .gpu/bench_step_tch
#   strip .gpu/bench_step_*; gzip -9 .gpu/bench_step_*      (.gpu/ listed in .git/info/exclude, carried)
# There, from the repository root:
#   for f in .gpu/*.gz; do gunzip -f $f; done; chmod +x .gpu/*
#   BENCH_CUDA=.gpu/bench_step_cuda BENCH_TCH=.gpu/bench_step_tch tools/bench-gpu.sh
# The tch binary is linked against libtorch_cpu, libc10 and (a link-only stand-in for)
# libtorch_cuda of the torch 2.11.0 wheel; there it runs with that machine's torch/lib (same
# version), whose libtorch_cuda registers the CUDA kernels.
# The cuda (CubeCL) binary compiles and autotunes its kernels on the first steps: on a cold
# H200 its first ViT-S step took more than 255 s (CUBECL_AUTOTUNE_LEVEL=minimal); give it ROW_S
# to match, or run the tch rows first.
#
# Environment (defaults in brackets):
#   BENCH_CUDA, BENCH_TCH  our binaries [bench_step_cuda, bench_step_tch]; a missing one skips its rows
#   REF      the PyTorch step [tools/bench/torch_step.py]
#   PY       Python with torch and timm [python3]
#   DEVICE   the GPU [cuda:0] (cpu: a dry run on the CPU, with BACKENDS="flex tch")
#   BACKENDS [tch cuda] (tch first: CubeCL spends minutes compiling on a cold machine)
#   RUNS     "precision:batch", most important first [bf16:64 bf16:16 fp32:64 fp32:16]
#   WORKERS  a device list for the multi-worker row [cuda:0,cuda:0] (empty: none)
#   (the one-rank NCCL check runs after the rows: libnccl.so.2 from the torch wheel's nvidia/nccl/lib)
#   BUDGET_S stop starting new rows after this many seconds [480]
#   ROW_S    end any one process after this many seconds (a timed-out row says so) [240]
# Settings of both sides: ViT-S/14 at 224 px, 12 frames x 256 points, last 2 blocks
# trainable, head 384-2048-2048-256, 100 prototypes, Sinkhorn 0.05 x 10 over all points, no
# masking, nearest sampling, EMA 0.99, AdamW, random weights; 10 timed steps after 3 warm-up.
# "first step" is the time a cold process needs before its first update (CubeCL compiles and
# autotunes kernels on the first steps; its caches under target/ shorten later runs).
set -uo pipefail
BENCH_CUDA=${BENCH_CUDA:-bench_step_cuda}
BENCH_TCH=${BENCH_TCH:-bench_step_tch}
REF=${REF:-tools/bench/torch_step.py}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
BACKENDS=${BACKENDS:-tch cuda}
RUNS=${RUNS:-bf16:64 bf16:16 fp32:64 fp32:16}
WORKERS=${WORKERS-cuda:0,cuda:0}
BUDGET_S=${BUDGET_S:-480}
ROW_S=${ROW_S:-240}
CONFIG=${CONFIG:-configs/dinov2_s14_ytvos.toml}

for f in "$REF" "$CONFIG"; do
  [ -e "$f" ] || { echo "bench-gpu: $f not found (see the comment at the top of $0)" >&2; exit 2; }
done
"$PY" -c 'import torch, timm' 2>/dev/null || { echo "bench-gpu: $PY cannot import torch and timm" >&2; exit 2; }
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
nvidia_libs=$("$PY" -c 'import glob, os, torch; print(":".join(sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "*", "lib")))))')
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

have_smi=0
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null 2>&1; then
  have_smi=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

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
binary() { case $1 in cuda) echo "$BENCH_CUDA" ;; tch) echo "$BENCH_TCH" ;; *) echo "${BENCH_CPU:-target/release/examples/bench_step}" ;; esac; }

# Our step on backend $1, device $2, precision $3, batch $4: prints the bench_step line.
ours() {
  local bin; bin=$(binary "$1")
  [ -x "$bin" ] || { echo "bench-gpu: $bin not found: $1 rows skipped" >&2; return 3; }
  local env=(BENCH_DEVICE="$2")
  # CubeCL loads NVRTC at run time: the toolkit's, else the wheels'.
  [ "$1" = cuda ] && env+=(LD_LIBRARY_PATH="/usr/local/cuda/lib64:$nvidia_libs:${LD_LIBRARY_PATH:-}")
  if [ "$1" = tch ]; then
    env+=(LD_LIBRARY_PATH="$torch_lib:$nvidia_libs:${LD_LIBRARY_PATH:-}")
    [ "$2" != cpu ] && [ -e "$torch_lib/libtorch_cuda.so" ] && env+=(LD_PRELOAD="$torch_lib/libtorch_cuda.so")
  fi
  timeout -k 10 "$ROW_S" env "${env[@]}" "$bin" "$1" "$CONFIG" data.batch_size="$4" model.precision="$3" model.trainable_blocks=2 \
    'head.hidden=[2048,2048]' head.out_dim=256 head.prototypes=100 objective.epsilon=0.05 \
    objective.sinkhorn_iterations=10 objective.ema=0.99 objective.mask_ratio=0 \
    objective.teacher_sampling=nearest objective.student_sampling=nearest objective.sinkhorn_rows=all
}

start=$(date +%s)
rows=()
# Each row is printed as soon as it is measured too, so a run cut short keeps what it found.
row() { rows+=("$1"); echo "row: $1"; }
over() { [ $(( $(date +%s) - start )) -gt "$BUDGET_S" ]; }
ref_device=${DEVICE%%:*}
for run in $RUNS; do
  p=${run%%:*}; b=${run##*:}
  if over; then echo "budget of ${BUDGET_S}s spent: $run not run"; continue; fi
  echo "== PyTorch: $DEVICE $p batch $b"
  out=$(mktemp)
  peak_of timeout -k 10 "$ROW_S" "$PY" "$REF" --device "$ref_device" --precision "$p" --batch "$b" --trainable 2 --hidden 2048 2048 \
    --out-dim 256 --prototypes 100 --eps 0.05 --iters 10 --ema 0.99 --steps 10 --warmup 3 >"$out" 2>&1
  rc=$?; ref=$(cat "$out"); ref_peak=$PEAK
  echo "$ref" | tail -2
  ref_ms=$(sed -n 's/.*: *\([0-9.]*\) ms\/step.*/\1/p' <<<"$ref" | tail -1)
  [ $rc = 0 ] || ref_ms=""
  for be in $BACKENDS; do
    if over; then echo "budget of ${BUDGET_S}s spent: $be $run not run"; continue; fi
    echo "== ours: $be $DEVICE $p batch $b"
    peak_of ours "$be" "$DEVICE" "$p" "$b" >"$out" 2>&1
    rc=$?; line=$(grep '^bench_step ' "$out"); ours_peak=$PEAK
    if [ $rc = 3 ]; then continue; fi
    if [ $rc != 0 ]; then tail -15 "$out"; row "| $p | $b | $be | $( [ $rc = 124 ] && echo "timed out (${ROW_S}s)" || echo "failed (exit $rc)") | ${ref_ms:-failed} | | | | | | |"; continue; fi
    echo "$line"
    ms=$(field step_ms "$line")
    ratio=$(awk -v a="$ms" -v r="$ref_ms" 'BEGIN { if (a > 0 && r > 0) printf "%.2f", r / a; else print "n/a" }')
    ref_cps=$(awk -v b="$b" -v m="$ref_ms" 'BEGIN { if (m > 0) printf "%.1f", b * 1000 / m; else print "n/a" }')
    row "| $p | $b | $be | $ms | ${ref_ms:-failed} | **${ratio}x** | $(field clips_per_s "$line") | $ref_cps | $ours_peak | $ref_peak | $(field first_step_s "$line") |"
  done
  rm -f "$out"
done

# Two workers sharing the global batch on the device list WORKERS (one GPU: the multi-device
# path's collectives run; a second GPU would split the work).
if [ -n "$WORKERS" ] && [ "$DEVICE" != cpu ] && ! over; then
  first=${RUNS%% *}; p=${first%%:*}; b=${first##*:}
  for be in $BACKENDS; do
    echo "== ours: $be workers $WORKERS $p batch $b"
    out=$(mktemp)
    # Two ranks on one GPU: NCCL refuses that (one rank per device), so their reductions
    # take the host path here.
    MOSIC_NCCL=off peak_of ours "$be" "$WORKERS" "$p" "$b" >"$out" 2>&1
    rc=$?; line=$(grep '^bench_step ' "$out")
    [ $rc = 3 ] && { rm -f "$out"; continue; }
    [ $rc = 0 ] || tail -15 "$out"
    row "| $p | $b | $be on $WORKERS | $(field step_ms "$line") | | | $(field clips_per_s "$line") | | $PEAK | | $(field first_step_s "$line") |"
    rm -f "$out"
  done
fi

# The one-GPU NCCL check: a world of one rank whose reductions (gradient buckets, Sinkhorn's
# sums, the loss) go through NCCL, beside the step without a collective, same weights and batch.
nccl_rows=()
if [ "$DEVICE" != cpu ] && ! over; then
  first=${RUNS%% *}; p=${first%%:*}; b=${first##*:}
  for be in $BACKENDS; do
    echo "== ours: $be one-rank NCCL check $p batch $b"
    out=$(mktemp)
    BENCH_NCCL=1 ours "$be" "$DEVICE" "$p" "$b" >"$out" 2>&1
    rc=$?; line=$(grep '^nccl_check ' "$out")
    [ $rc = 3 ] && { rm -f "$out"; continue; }
    [ $rc = 0 ] || tail -15 "$out"
    echo "$line"
    nccl_rows+=("| $be | $p | $b | $(field version "$line") | $(field loss_rel "$line") | $(field grad_rel "$line") | $(field same_parameters "$line") | $(field param_rel "$line") | $(field control_rel "$line") | $(field step_ms "$line") | $(field step_nccl_ms "$line") |")
    rm -f "$out"
  done
fi

echo
echo "device $DEVICE; ratio = PyTorch ms / ours ms (above 1: ours faster); peak = device MiB (nvidia-smi, whole device)"
echo "| precision | clips | ours | ours ms/step | PyTorch ms/step | ratio | ours clips/s | PyTorch clips/s | ours peak MiB | PyTorch peak MiB | ours first step s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ ${#nccl_rows[@]} -gt 0 ]; then
  echo
  echo "One-rank NCCL check (reductions through NCCL vs no collective; rel = largest relative difference over 6 steps)"
  echo "| backend | precision | clips | NCCL | loss rel | grad norm rel | same parameters | parameters rel | plain rerun rel | ms/step | ms/step with NCCL |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${nccl_rows[@]}"
fi
