#!/usr/bin/env bash
# Keeps the optional GPU backends compiling on a machine without a GPU:
#  - cuda (CubeCL): needs nothing at build time;
#  - tch (libtorch): needs libtorch headers; the PyPI torch 2.11.0 wheel provides them
#    (tch 0.22 does not compile against torch 2.15's headers).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo check -p mosic-cli --features cuda

dir="${TMPDIR:-/tmp}/mosic-libtorch-2.11.0"
if [ ! -f "$dir/torch/include/torch/all.h" ]; then
  rm -rf "$dir" && mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check torch==2.11.0 -d "$dir"
  (cd "$dir" && python3 -m zipfile -e torch-2.11.0-*.whl . >/dev/null 2>&1 || unzip -q torch-2.11.0-*.whl 'torch/include/*' 'torch/lib/*' -d .)
  rm -f "$dir"/torch-2.11.0-*.whl
fi
LIBTORCH="$dir/torch" LIBTORCH_BYPASS_VERSION_CHECK=1 cargo check -p mosic-cli --features tch
