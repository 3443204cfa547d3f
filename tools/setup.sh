#!/usr/bin/env bash
# Installs what building and testing need on Debian/Ubuntu, once: FFmpeg's development
# libraries, clang (bindgen), pkg-config, and the Python packages of the interop checks.
# Quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
pkg-config --exists libavcodec libavformat libavutil libswscale 2>/dev/null || need_apt=1
command -v clang >/dev/null || need_apt=1
# OpenMPI for `--features mpi` (the tests run MPI jobs on this machine).
command -v mpicc >/dev/null && command -v mpirun >/dev/null || need_apt=1
if [ "$need_apt" = 1 ]; then
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    echo "setup: install libavcodec-dev libavformat-dev libavutil-dev libswscale-dev clang libclang-dev pkg-config openmpi-bin libopenmpi-dev" >&2
    exit 1
  fi
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends \
    libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev \
    libavfilter-dev libavdevice-dev clang libclang-dev pkg-config openmpi-bin libopenmpi-dev >/dev/null
fi
if ! python3 -c "import pyarrow, pandas, numpy, onnxruntime" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check -r tools/ci/requirements-ci.txt
fi
for c in fmt clippy; do
  cargo $c --version >/dev/null 2>&1 || { echo "setup: cargo $c is missing: rustup component add rustfmt clippy" >&2; exit 1; }
done
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
