#!/usr/bin/env bash
# A libtorch to link the `tch` GPU binaries against on a machine without the CUDA wheels:
# the layout of tools/libtorch-cpu.sh DIR plus a libtorch_cuda.so that defines only the two
# symbols burn-tch's CUDA hook calls. burn-tch and torch-sys decide at build time whether
# libtorch has CUDA (by that file's presence); without it every CUDA device panics. At run
# time the GPU machine's torch wheel supplies the real libtorch_cuda.so (same soname) through
# LD_LIBRARY_PATH, as tools/bench-gpu.sh sets it.
#   tools/libtorch-cpu.sh /tmp/lt && tools/libtorch-gpu-link.sh /tmp/lt /tmp/ltgpu
#   LIBTORCH=/tmp/ltgpu/torch LIBTORCH_BYPASS_VERSION_CHECK=1 CARGO_TARGET_DIR=target/tch-gpu \
#     cargo build --release -p mosic-trainer --example bench_step --features tch
set -euo pipefail
cpu=${1:?usage: tools/libtorch-gpu-link.sh CPU_DIR OUT_DIR}
out=${2:?usage: tools/libtorch-gpu-link.sh CPU_DIR OUT_DIR}
[ -f "$cpu/torch/lib/libtorch_cpu.so" ] || { echo "libtorch-gpu-link: run tools/libtorch-cpu.sh $cpu first" >&2; exit 2; }
cpu=$(cd "$cpu" && pwd)
mkdir -p "$out/torch/lib"
ln -sfn "$cpu/torch/include" "$out/torch/include"
for f in "$cpu"/torch/lib/*; do ln -sf "$f" "$out/torch/lib/"; done
src=$(mktemp --suffix=.cpp)
trap 'rm -f "$src"' EXIT
cat >"$src" <<'CPP'
struct cublasContext;
namespace at::cuda {
cublasContext *getCurrentCUDABlasHandle() { return nullptr; }
int warp_size() { return 32; }
}
CPP
c++ -std=c++17 -shared -fPIC -Wl,-soname,libtorch_cuda.so -o "$out/torch/lib/libtorch_cuda.so" "$src"
echo "libtorch-gpu-link: $out/torch (link only: run with the GPU machine's torch/lib)"
