#!/usr/bin/env bash
# Keeps the optional GPU backends compiling on a machine without a GPU:
#  - cuda (CubeCL): needs nothing at build time;
#  - tch (libtorch): needs libtorch headers; the PyPI torch 2.11.0 wheel provides them
#    (tch 0.22 does not compile against torch 2.15's headers).
set -euo pipefail
cd "$(dirname "$0")/.."

# A target folder of its own, which CI deletes afterwards to keep the disk for the test build
# (the two share little: these checks make metadata only, the tests full libraries).
export CARGO_TARGET_DIR="${MOSIC_CHECK_TARGET_DIR:-target/check-features}"

# The trainer is the only crate with feature-dependent code (the CLI forwards the features), and
# leaving out the CLI skips FFmpeg's bindings and ONNX Runtime here. bench_step is the binary a
# GPU machine runs.
check() { cargo check -p mosic-trainer --lib --examples "$@"; }

check --features cuda

dir="${TMPDIR:-/tmp}/mosic-libtorch-2.11.0"
if [ ! -f "$dir/torch/include/torch/all.h" ]; then
  rm -rf "$dir" && mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check torch==2.11.0 -d "$dir"
  # Only the headers: `cargo check` compiles torch-sys's C++ shim but links nothing, and the
  # whole wheel unpacks to gigabytes.
  python3 -c '
import glob, sys, zipfile
d = sys.argv[1]
with zipfile.ZipFile(glob.glob(d + "/torch-2.11.0-*.whl")[0]) as whl:
    whl.extractall(d, [m for m in whl.namelist() if m.startswith("torch/include/")])
' "$dir"
  rm -f "$dir"/torch-2.11.0-*.whl
fi
LIBTORCH="$dir/torch" LIBTORCH_BYPASS_VERSION_CHECK=1 check --features tch
