#!/usr/bin/env bash
# Build-time CUDA 13.0 toolchain for `cargo build --features cuda` on a
# machine WITHOUT a GPU, driver or system CUDA install: NVIDIA's PyPI wheels
# (nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC) in a venv, plus a stub
# libcuda.so to link against (candle links the CUDA libraries at build
# time, so they must exist even where no GPU will ever run the binary).
#
# Usage:
#   tools/gpu/cuda-toolchain.sh            # install (if needed), write env file
#   source "$HOME/.cache/runner-cuda-13.0/env.sh"
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda
# or in one go (progress goes to stderr, only the environment to stdout):
#   source <(tools/gpu/cuda-toolchain.sh --env)
#
# Options / environment:
#   --env                  print the environment (export lines) on stdout
#   --cudnn                also cuDNN 9.21 (for `--features cudnn`: candle's
#                          convolutions through cuDNN; 1.2 -> 2.0 GB)
#   --help                 this text
#   RUNNER_CUDA_TOOLCHAIN  install prefix (default ~/.cache/runner-cuda-13.0);
#                          cache this directory in CI (1.2 GB installed)
#   CUDA_COMPUTE_CAP       GPU architecture to compile kernels for (default 90:
#                          sm_90a code, H100/H200 only; no GPU to query here)
#
# Idempotent: a second run checks what is there and changes nothing. It
# prints every action it takes.
#
# What it does:
#   1. venv $PREFIX/venv with the CUDA 13.0 wheels pinned below (nvvm pinned:
#      unpinned it pulls 13.5, whose PTX a 13.0 driver may refuse);
#      they land in site-packages/nvidia/cu13/{bin,include,lib} = CUDA_HOME;
#   2. lib64 -> lib (the kernel build expects lib64) and unversioned
#      lib*.so symlinks for what is linked with -l (cudart, curand, cublas,
#      cublasLt, nvrtc);
#   3. lib/stubs/libcuda.so (soname libcuda.so.1): every driver API function
#      cudarc declares, each returning CUDA_ERROR_STUB_LIBRARY (34). It is
#      for the linker only: there is deliberately no libcuda.so.1 beside it,
#      so the real driver is what the binary loads on a GPU machine;
#   4. $PREFIX/env.sh: CUDA_HOME, CUDA_PATH, CUDA_ROOT, PATH (cudarc reads
#      the CUDA version from `nvcc --version`), CUDA_COMPUTE_CAP,
#      LIBRARY_PATH (lib and lib/stubs).
#
# Running the binary (on a GPU machine) needs, besides the NVIDIA driver
# (libcuda.so.1), these on LD_LIBRARY_PATH: libcudart.so.13,
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13
# (all in $CUDA_HOME/lib here).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

mode=install
cudnn=0
for arg in "$@"; do
  case "$arg" in
    --env) mode=env ;;
    --cudnn) cudnn=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "$0")/../.." && pwd)"
prefix="${RUNNER_CUDA_TOOLCHAIN:-$HOME/.cache/runner-cuda-13.0}"
cap="${CUDA_COMPUTE_CAP:-90}"
# CUDA 13.0 throughout (the GPU machine's driver 580 is CUDA 13.0).
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
  "nvidia-cublas==13.0.*"
  nvidia-cuda-nvrtc==13.0.88
  "nvidia-curand==10.4.0.*"
)
# --cudnn (for --features cudnn): cuDNN 9.21, the version whose bindings
# cudarc's `cudnn` feature uses; at run time any libcudnn.so.9 serves.
if [ "$cudnn" = 1 ]; then
  wheels+=("nvidia-cudnn-cu13==9.21.*")
fi

log() { echo "cuda-toolchain: $*" >&2; }
# Progress only ever goes to stderr: stdout is the environment in --env mode.
exec 3>&1 1>&2

start=$SECONDS
mkdir -p "$prefix"

# 1. venv + wheels
venv="$prefix/venv"
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  python3 -m venv "$venv"
fi
stamp="$prefix/.wheels"
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]; then
  log "installing wheels: ${wheels[*]}"
  "$venv/bin/python" -m pip install --quiet --no-cache-dir "${wheels[@]}"
  printf '%s' "${wheels[*]}" > "$stamp"
else
  log "wheels already installed ($stamp)"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cuda="$site/nvidia/cu13"
lib="$cuda/lib"
[ -x "$cuda/bin/nvcc" ] || { log "no nvcc at $cuda/bin/nvcc"; exit 1; }

# 2. lib64 and unversioned symlinks
if [ ! -e "$cuda/lib64" ]; then
  log "symlink $cuda/lib64 -> lib"
  ln -s lib "$cuda/lib64"
fi
for name in cudart curand cublas cublasLt nvrtc; do
  if [ -e "$lib/lib$name.so" ]; then continue; fi
  # the soname file: libX.so.<major>
  target="$(cd "$lib" && ls "lib$name.so."* 2>/dev/null | grep -E "^lib$name\.so\.[0-9]+$" | head -1 || true)"
  [ -n "$target" ] || { log "no lib$name.so.<major> in $lib"; exit 1; }
  log "symlink $lib/lib$name.so -> $target"
  ln -s "$target" "$lib/lib$name.so"
done

cudnn_lib="$site/nvidia/cudnn/lib"
if [ -e "$cudnn_lib/libcudnn.so.9" ] && [ ! -e "$cudnn_lib/libcudnn.so" ]; then
  log "symlink $cudnn_lib/libcudnn.so -> libcudnn.so.9"
  ln -s libcudnn.so.9 "$cudnn_lib/libcudnn.so"
fi
link_path="$lib:$lib/stubs"
if [ -e "$cudnn_lib/libcudnn.so" ]; then
  link_path="$link_path:$cudnn_lib"
fi

# 3. stub libcuda.so from the driver API names cudarc declares. Find the
# cudarc that Cargo.lock resolves for --features cuda (downloads it if needed).
cudarc_dir="$(cd "$repo" && cargo metadata --format-version 1 --locked --features cuda 2>/dev/null \
  | "$venv/bin/python" -c 'import json,sys,os
m=json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')"
decls="$cudarc_dir/src/driver/sys/mod.rs"
[ -f "$decls" ] || { log "cudarc driver bindings not found at $decls"; exit 1; }
stubs="$lib/stubs"
mkdir -p "$stubs"
csrc="$prefix/libcuda_stub.c"
new_c="$(
  echo "/* generated by tools/gpu/cuda-toolchain.sh from $decls */"
  echo "/* link-time stand-in for libcuda.so.1: every call fails with CUDA_ERROR_STUB_LIBRARY */"
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$decls" | sed 's/^pub unsafe fn //' | sort -u \
    | sed 's/.*/int &(void) { return 34; }/'
)"
if [ "$(cat "$csrc" 2>/dev/null)" != "$new_c" ] || [ ! -f "$stubs/libcuda.so" ]; then
  printf '%s\n' "$new_c" > "$csrc"
  log "building stub $stubs/libcuda.so ($(grep -c '^int ' "$csrc") symbols from cudarc $(basename "$cudarc_dir"))"
  gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$csrc"
else
  log "stub $stubs/libcuda.so up to date"
fi

# 4. environment
envfile="$prefix/env.sh"
env_text="# CUDA 13.0 build environment for runner --features cuda (tools/gpu/cuda-toolchain.sh)
export CUDA_HOME='$cuda'
export CUDA_PATH='$cuda'
export CUDA_ROOT='$cuda'
case \":\$PATH:\" in *':$cuda/bin:'*) ;; *) export PATH='$cuda/bin':\"\$PATH\" ;; esac
export CUDA_COMPUTE_CAP='$cap'
case \":\${LIBRARY_PATH:-}:\" in *':$stubs:'*) ;; *) export LIBRARY_PATH='$link_path'\"\${LIBRARY_PATH:+:\$LIBRARY_PATH}\" ;; esac"
if [ "$(cat "$envfile" 2>/dev/null)" != "$env_text" ]; then
  printf '%s\n' "$env_text" > "$envfile"
  log "wrote $envfile"
fi
log "nvcc: $("$cuda/bin/nvcc" --version | grep release)"
log "toolchain: $prefix ($(du -sh "$prefix" | cut -f1)); $((SECONDS - start)) s"

if [ "$mode" = env ]; then
  cat "$envfile" >&3
else
  log "now: source '$envfile'"
  log "then: CARGO_TARGET_DIR=$repo/target-cuda cargo build --release --features cuda"
fi
