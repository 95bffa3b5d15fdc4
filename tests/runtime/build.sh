#!/bin/bash
# Builds the CUDA runtime test programs, each with static cudart (nvcc's default) and with
# `-cudart shared`, into tests/fixtures/runtime/ (or $1).
#
# nvcc: $NVCC, else `nvcc` on PATH, else NVIDIA's PyPI wheels (CUDA 13.0) installed into a
# virtual environment under target/cuda-pypi (needs network once):
#   nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
#   nvidia-cuda-runtime==13.0.96
# The shared-cudart programs look for libcudart.so.13 next to themselves ($ORIGIN); the build
# copies the one it linked against there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/tests/fixtures/runtime}
mkdir -p "$out"

libdirs=()
if [ -n "${NVCC:-}" ]; then
    nvcc=$NVCC
elif command -v nvcc >/dev/null; then
    nvcc=$(command -v nvcc)
else
    venv=$repo/target/cuda-pypi
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
            nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
    fi
    cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
    nvcc=$cu/bin/nvcc
    # The wheel has libcudart.so.13 but no unversioned link-time name.
    mkdir -p "$venv/linklib"
    ln -sf "$cu/lib/libcudart.so.13" "$venv/linklib/libcudart.so"
    libdirs=(-L"$cu/lib" -L"$venv/linklib")
fi
top=$(dirname "$(dirname "$nvcc")")
cudart_dir=$top/lib64
[ -e "$cudart_dir/libcudart.so.13" ] || cudart_dir=$top/lib

echo "using $nvcc ($("$nvcc" --version | tail -1))"
for src in "$here"/rt_*.cu; do
    name=$(basename "$src" .cu)
    "$nvcc" -O2 -arch=sm_90 "${libdirs[@]}" -Xlinker -s -o "$out/${name}_static" "$src"
    "$nvcc" -O2 -arch=sm_90 -cudart shared "${libdirs[@]}" -Xlinker -s -Xlinker -rpath='$ORIGIN' \
        -o "$out/${name}_shared" "$src"
done
for d in "$cudart_dir" "${libdirs[@]#-L}"; do
    if [ -e "$d/libcudart.so.13" ]; then
        cp -L "$d/libcudart.so.13" "$out/libcudart.so.13"
        break
    fi
done
ls -la "$out"
