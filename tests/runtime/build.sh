#!/bin/bash
# Builds the CUDA runtime test programs, each with static cudart (nvcc's default) and with
# `-cudart shared`, as <name>_static and <name>_shared.
#
# usage: build.sh [OUT_DIR [NAME...]]
#   OUT_DIR defaults to tests/fixtures/runtime/, the binaries checked in for CI; there only the
#   checked-in set is built unless NAMEs are given: rt_basic and rt_streams both ways, and every
#   program that needs no cuBLAS/cuFFT/cuRAND as <name>_shared only (small). Any other OUT_DIR
#   gets every tests/runtime/rt_*.cu (or just the NAMEs).
#
# nvcc: $NVCC, else `nvcc` on PATH, else NVIDIA's PyPI wheels (CUDA 13.0) installed into a
# virtual environment under target/cuda-pypi (needs network once):
#   nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
#   nvidia-cuda-runtime==13.0.96
#   nvidia-cublas==13.1.0.3 nvidia-cufft==12.0.0.61 nvidia-cuda-cccl==13.0.85 (for rt_cublas_*
#   and rt_cufft; cuBLAS and cuFFT are the versions of the CUDA 13.0 toolkit on the GPU machine)
# Programs that need a library (cuBLAS, cuFFT) whose header or library is not found are
# skipped with a message. A program that fails to compile does not stop the others; the
# script then exits non-zero at the end.
# The shared-cudart programs look for libcudart.so.13 next to themselves ($ORIGIN); the build
# copies the one it linked against there. Programs linked against cuBLAS/cuFFT carry the
# library's directory as a run path as well.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
fixtures=$repo/tests/fixtures/runtime
out=${1:-$fixtures}
shift || true
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Programs built with shared cudart only (no <name>_static).
shared_only=()
if [ $# -gt 0 ]; then
    names=("$@")
elif [ "$out" = "$fixtures" ]; then
    shared_only=(rt_atomics rt_callbacks rt_constant rt_device_props rt_dynsmem rt_events rt_graph
        rt_graph_update rt_meminfo rt_mempool rt_multikernel rt_occupancy rt_pinned_pageable
        rt_printf rt_priorities rt_threads)
    names=(rt_basic rt_streams "${shared_only[@]}")
else
    names=()
    for src in "$here"/rt_*.cu; do names+=("$(basename "$src" .cu)"); done
fi

libdirs=()
incdirs=()
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
    # The library wheels, once; without them (no network) those programs are skipped.
    # (cuBLAS's headers include cuda_fp16.h, which needs CCCL's <nv/target>.)
    [ -e "$cu/include/nv/target" ] || "$venv/bin/pip" install -q --retries 1 --timeout 30 nvidia-cuda-cccl==13.0.85 \
        || echo "build.sh: could not install nvidia-cuda-cccl==13.0.85" >&2
    [ -e "$cu/lib/libcublas.so.13" ] || "$venv/bin/pip" install -q --retries 1 --timeout 30 nvidia-cublas==13.1.0.3 \
        || echo "build.sh: could not install nvidia-cublas==13.1.0.3; cuBLAS programs will be skipped" >&2
    [ -e "$cu/lib/libcufft.so.12" ] || "$venv/bin/pip" install -q --retries 1 --timeout 30 nvidia-cufft==12.0.0.61 \
        || echo "build.sh: could not install nvidia-cufft==12.0.0.61; cuFFT programs will be skipped" >&2
    nvcc=$cu/bin/nvcc
    # The wheels have versioned libraries but no unversioned link-time names.
    mkdir -p "$venv/linklib"
    for l in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcufft.so.12; do
        [ -e "$cu/lib/$l" ] && ln -sf "$cu/lib/$l" "$venv/linklib/${l%.so.*}.so"
    done
    libdirs=(-L"$cu/lib" -L"$venv/linklib")
    incdirs=("$cu/include")
fi
# The toolkit's root (NVCC may be a bare name, or a symlink into the toolkit).
nvcc=$(command -v "$nvcc" || echo "$nvcc")
top=$(dirname "$(dirname "$nvcc")")
[ -e "$top/include/cuda_runtime.h" ] || [ -e "$top/targets/x86_64-linux/include/cuda_runtime.h" ] ||
    top=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
cudart_dir=$top/lib64
[ -e "$cudart_dir/libcudart.so.13" ] || cudart_dir=$top/lib
incdirs+=("$top/include" "$top/targets/x86_64-linux/include" /usr/include)
searchlibs=("${libdirs[@]#-L}" "$top/lib64" "$top/lib" "$top/targets/x86_64-linux/lib" /usr/lib/x86_64-linux-gnu)
# cuRAND is not in every toolkit install; PyTorch's CUDA 13 wheels bring it (nvidia/cu13).
wheels=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))' 2>/dev/null || true)
if [ -n "$wheels" ] && [ -d "$wheels/include" ]; then
    incdirs+=("$wheels/include")
    searchlibs+=("$wheels/lib")
    libdirs+=(-L"$wheels/lib")
fi

# Extra flags per program (link flags last on the command line).
extra_flags() {
    case $1 in
    rt_cublas_*) echo "-lcublas" ;;
    rt_cufft) echo "-lcufft" ;;
    rt_curand) echo "-l:libcurand.so.10" ;;
    rt_threads) echo "-Xcompiler -pthread" ;;
    esac
}
# The library a program needs: "<header> <soname-prefix>", or nothing.
needs() {
    case $1 in
    rt_cublas_*) echo "cublas_v2.h libcublas.so" ;;
    rt_cufft) echo "cufft.h libcufft.so" ;;
    rt_curand) echo "curand.h libcurand.so" ;;
    esac
}
# Prints the directory holding the library when both the header and the library are found.
find_lib() { # header, library prefix
    local inc="" d
    for d in "${incdirs[@]}"; do [ -e "$d/$1" ] && inc=$d && break; done
    [ -n "$inc" ] || return 1
    for d in "${searchlibs[@]}"; do
        if compgen -G "$d/$2*" >/dev/null; then echo "$d"; return 0; fi
    done
    return 1
}

build_one() { # name
    local name=$1 src=$here/$1.cu flags=() lib
    flags=($(extra_flags "$name"))
    if [ -n "$(needs "$name")" ]; then
        lib=$(find_lib $(needs "$name")) || {
            echo "SKIP $name: $(needs "$name" | cut -d' ' -f1) or its library not found" >&2
            return 0
        }
        flags+=(-Xlinker -rpath="$lib" -Xlinker -rpath-link="$lib")
    fi
    [[ " ${shared_only[*]:-} " == *" $name "* ]] ||
        "$nvcc" -O2 -arch=sm_90 "${libdirs[@]}" -Xlinker -s -o "$out/${name}_static" "$src" "${flags[@]}" ||
        return 1
    "$nvcc" -O2 -arch=sm_90 -cudart shared "${libdirs[@]}" -Xlinker -s -Xlinker -rpath='$ORIGIN' \
        -o "$out/${name}_shared" "$src" "${flags[@]}"
}

echo "using $nvcc ($("$nvcc" --version | tail -1))"
jobs_max=${BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
status=$(mktemp -d)
for name in "${names[@]}"; do
    [ -e "$here/$name.cu" ] || { echo "build.sh: no $here/$name.cu" >&2; touch "$status/$name.failed"; continue; }
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done
    (
        if build_one "$name" >"$status/$name.log" 2>&1; then
            grep -h '^SKIP' "$status/$name.log" || { echo "built $name"; cat "$status/$name.log"; }
        else
            touch "$status/$name.failed"
            echo "FAILED $name:"
            cat "$status/$name.log"
        fi
    ) &
done
wait
for d in "$cudart_dir" "${libdirs[@]#-L}"; do
    if [ -e "$d/libcudart.so.13" ]; then
        cp -L "$d/libcudart.so.13" "$out/libcudart.so.13"
        break
    fi
done
ls -la "$out"
failed=$(cd "$status" && for f in *.failed; do [ -e "$f" ] && echo -n "${f%.failed} "; done; true)
rm -rf "$status"
if [ -n "$failed" ]; then
    echo "build.sh: failed to build: $failed" >&2
    exit 1
fi
