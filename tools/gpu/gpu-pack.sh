#!/usr/bin/env bash
# Packs what tools/gpu/gpu-check.sh needs on a GPU machine into pieces that the
# device tool can carry (64 MiB per call, the working tree included):
#   .gpu/a  the CUDA runner, Xception weights and fixture
#   .gpu/b  InceptionV3 and EfficientNet-Lite0 weights and fixtures, woof-dev
#   .gpu/c  the EfficientNet-Lite0 ONNX export and the cuDNN runner
#   .gpu/d  the CUDA and cuDNN runner-dev (the checks besides the recipe)
# Weights and the binary are xz-compressed (InceptionV3's f16 weights shrink
# 44 -> 15 MB: they were 8-bit quantised once). tools/gpu/gpu-stage.sh unpacks
# each piece into /tmp/gpu on the device machine; the last call runs the
# check. The device-tool calls, in order (back to back: the machine stays
# warm only ~30 s between calls):
#   run carry=[".gpu/a"]  command="bash tools/gpu/gpu-stage.sh a"
#   run carry=[".gpu/b"]  command="bash tools/gpu/gpu-stage.sh b"
#   run carry=[".gpu/c"]  command="bash tools/gpu/gpu-stage.sh c"
#   run carry=[".gpu/d"]  command="bash tools/gpu/gpu-stage.sh d && bash tools/gpu/gpu-check.sh $OUT/check"
#
# Usage: tools/gpu/gpu-pack.sh. It builds both CUDA builds of runner and
# runner-dev first (`--features cuda`, then `--features cudnn`, in
# target-cuda/; ~2 min each once built before), which needs
# `tools/gpu/cuda-toolchain.sh --cudnn` run once.
# Environment: SHARED (default ../shared), NO_BUILD=1 (pack what
# target-cuda/release/runner and runner-dev are, no cuDNN build). Adds /.gpu/
# to .git/info/exclude.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
shared="${SHARED:-$root/../shared}"
release="$root/target-cuda/release"
bin="$release/runner"
dev="$release/runner-dev"
mkdir -p .gpu
if [ "${NO_BUILD:-0}" != 1 ]; then
  env_sh="${RUNNER_CUDA_TOOLCHAIN:-$HOME/.cache/runner-cuda-13.0}/env.sh"
  [ -f "$env_sh" ] || { echo "no $env_sh: run tools/gpu/cuda-toolchain.sh --cudnn first" >&2; exit 1; }
  # shellcheck disable=SC1090
  source "$env_sh"
  CARGO_TARGET_DIR=target-cuda cargo build --release --features cudnn --bin runner --bin runner-dev
  cp "$bin" .gpu/runner-cudnn
  cp "$dev" .gpu/runner-dev-cudnn
  CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda --bin runner --bin runner-dev
else
  rm -f .gpu/runner-cudnn .gpu/runner-dev-cudnn
fi
for exe in "$bin" "$dev"; do
  if [ ! -x "$exe" ]; then
    echo "no CUDA build at $exe; build it first (see tools/gpu/gpu-check.sh)" >&2
    exit 1
  fi
done
if ! grep -qx '/.gpu/' .git/info/exclude 2>/dev/null; then
  echo '/.gpu/' >>.git/info/exclude
fi
rm -rf .gpu/a .gpu/b .gpu/c .gpu/d
mkdir -p .gpu/a .gpu/b .gpu/c .gpu/d
pack() { # SRC DEST_DIR: xz-compressed copy
  xz -9 -T0 -c "$1" >"$2/$(basename "$1").xz"
}
m="$shared/models"
pack "$bin" .gpu/a
pack "$m/xception_imagenet_notop.safetensors" .gpu/a
cp "$m/xception_imagenet_notop.fixture.safetensors" .gpu/a/
pack "$m/inception_v3_nsfwjs_notop.safetensors" .gpu/b
pack "$m/efficientnet_lite0_imagenet.safetensors" .gpu/b
cp "$m/inception_v3_nsfwjs_notop.fixture.safetensors" "$m/efficientnet_lite0_imagenet.fixture.safetensors" .gpu/b/
tar -C "$shared/data" -cf .gpu/b/woof-dev.tar woof-dev
pack "$m/efficientnet_lite0_imagenet.onnx" .gpu/c
if [ -x .gpu/runner-cudnn ]; then
  pack .gpu/runner-cudnn .gpu/c
fi
pack "$dev" .gpu/d
if [ -x .gpu/runner-dev-cudnn ]; then
  pack .gpu/runner-dev-cudnn .gpu/d
fi

# Each call carries the tracked tree too; keep every piece under the limit.
tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{ s += $1 } END { print s }')
limit=$((64 * 1024 * 1024))
status=0
for part in a b c d; do
  size=$(du -sb ".gpu/$part" | cut -f1)
  total=$((size + tree))
  printf '.gpu/%s: %.1f MiB + tree %.1f MiB = %.1f MiB of 64\n' "$part" \
    "$(awk "BEGIN { print $size / 1048576 }")" "$(awk "BEGIN { print $tree / 1048576 }")" \
    "$(awk "BEGIN { print $total / 1048576 }")"
  if [ "$total" -ge "$limit" ]; then
    echo "  over the device tool's 64 MiB" >&2
    status=1
  fi
done
exit $status
