#!/usr/bin/env bash
# The optional GPU backends on a machine without a GPU:
#  - cuda (CubeCL): compiled and linted (it needs nothing at build time; nothing to run it on
#    here), with MPI as every GPU build has it;
#  - tch (libtorch) with MPI: built against the PyPI torch 2.11.0 wheel's libtorch, the NCCL
#    path compiled with warnings as errors, and the trainer's tests run on libtorch's CPU
#    device: timm parity, the loss goldens from the released functions, bf16 beside fp32,
#    exact resume, the dropped-token student, several ranks, the device checks.
set -euo pipefail
cd "$(dirname "$0")/../.."

# A target folder of its own, which CI deletes afterwards to keep the disk for the test build.
export CARGO_TARGET_DIR="${MOSIC_CHECK_TARGET_DIR:-target/check-features}"

# The trainer is the only crate with feature-dependent code (the CLI forwards the features), and
# leaving out the CLI skips FFmpeg's bindings and ONNX Runtime here. bench_step is the binary a
# GPU machine runs.
cargo clippy -p mosic-trainer --lib --examples --features cuda,mpi -- -D warnings

libtorch="${MOSIC_LIBTORCH_DIR:-${TMPDIR:-/tmp}/mosic-libtorch-2.11.0}"
tools/libtorch-cpu.sh "$libtorch"
export LIBTORCH="$libtorch/torch" LIBTORCH_BYPASS_VERSION_CHECK=1
export LD_LIBRARY_PATH="$libtorch/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The test build compiles the library, its tests and examples with the feature; warnings in our
# code fail it (dependencies' lints are capped by cargo).
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo nextest run -p mosic-trainer --features tch,mpi --no-fail-fast
