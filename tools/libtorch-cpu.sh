#!/usr/bin/env bash
# Lays out the libtorch of the PyPI torch wheel that `--features tch` builds and runs against
# on a machine without a GPU: DIR/torch/include, and DIR/torch/lib with libtorch_cpu, libtorch,
# libc10, libgomp and the two CUDA runtime libraries libtorch_cpu is linked with (cudart,
# cupti; loaded, never used on the CPU device). Nothing else of the wheels (gigabytes of CUDA
# kernels) is unpacked: the trainer links torch_cpu and c10, and the linker drops libtorch
# (as-needed), so libtorch_cuda is never loaded.
#   tools/libtorch-cpu.sh DIR    then   LIBTORCH=DIR/torch LD_LIBRARY_PATH=DIR/torch/lib
# tch 0.22 does not compile against torch 2.15's headers; 2.11.0 is the version it is tested with.
set -euo pipefail
dir=${1:?usage: tools/libtorch-cpu.sh DIR}
TORCH=${TORCH_VERSION:-2.11.0}
if [ -f "$dir/torch/lib/libtorch_cpu.so" ] && [ -f "$dir/torch/include/torch/csrc/api/include/torch/all.h" ]; then
  exit 0
fi
mkdir -p "$dir"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check -d "$wheels" \
  "torch==$TORCH" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
python3 - "$wheels" "$dir" <<'EOF'
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
lib = os.path.join(out, "torch", "lib")
os.makedirs(lib, exist_ok=True)
keep_torch = {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1"}
for whl in glob.glob(os.path.join(wheels, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for m in z.namelist():
            name = os.path.basename(m)
            if m.startswith("torch/include/"):
                z.extract(m, out)
            elif m.startswith("torch/lib/") and name in keep_torch:
                z.extract(m, out)
            elif m.startswith("nvidia/") and name in ("libcudart.so.13", "libcupti.so.13"):
                with z.open(m) as src, open(os.path.join(lib, name), "wb") as dst:
                    dst.write(src.read())
missing = sorted((keep_torch | {"libcudart.so.13", "libcupti.so.13"}) - set(os.listdir(lib)))
if missing:
    sys.exit(f"libtorch-cpu: not found in the wheels: {missing}")
EOF
echo "libtorch-cpu: torch $TORCH in $dir/torch ($(du -sh "$dir" | cut -f1))"
