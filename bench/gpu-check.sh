#!/usr/bin/env bash
# The prepared GPU check of issue 5: parity of GPU features with the shared
# fixtures, images/s per backbone at a few batch sizes, and the full 2017
# recipe (Xception + InceptionV3, both views, 5 folds) on a generated
# Kaggle-sized set of 20,579 JPEGs, timed per stage. Meant for a GPU machine
# with no network and no Rust toolchain, in under 8 minutes.
#
# Build here (a machine with the toolchain), into target-cuda/:
#   scripts/cuda-toolchain.sh            # see its header for the environment
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda \
#       --bin runner --example backbone_check --example make_big_woof
# Ship the repository (with target-cuda/release/{runner,examples/*} and the
# CUDA libraries the toolchain script lists) and ../shared; then, there:
#   bench/gpu-check.sh [OUT_DIR]          # default /tmp/gpu-check
#
# Environment: SHARED (default ../shared, else ./shared), BIN_DIR (default
# target-cuda/release), CUDA_LIBS (prepended to LD_LIBRARY_PATH), DEVICE
# (default cuda), PRECISIONS (default "f32 bf16"), TRAIN / TEST (default
# 10222 / 10357 images).
# Writes OUT_DIR/results.md (the table) and one log per step beside it; a
# failing step is recorded and the next one still runs.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
shared="${SHARED:-}"
if [ -z "$shared" ]; then
  if [ -d ../shared/models ]; then shared="$(cd ../shared && pwd)"; else shared="$root/shared"; fi
fi
bin="${BIN_DIR:-$root/target-cuda/release}"
out="${1:-/tmp/gpu-check}"
device="${DEVICE:-cuda}"
mkdir -p "$out"
if [ -n "${CUDA_LIBS:-}" ]; then
  export LD_LIBRARY_PATH="$CUDA_LIBS:${LD_LIBRARY_PATH:-}"
fi
results="$out/results.md"
: >"$results"
say() { echo "$*" | tee -a "$results"; }
started=$(date +%s)

# Runs one step with its output in $out/<name>.log; records status and time.
step() {
  local name="$1"
  shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$@" >"$out/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf -- "- step %s: exit %d in %.1f s (log: %s)\n" "$name" "$rc" "$(echo "$t1 - $t0" | bc)" "$out/$name.log" | tee -a "$results"
  return $rc
}

say "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say ""
say "binaries: $bin; shared: $shared; device: $device"
for b in runner examples/backbone_check examples/make_big_woof; do
  if [ ! -x "$bin/$b" ]; then
    say "missing $bin/$b: build it first (see the header of this script)"
    exit 1
  fi
done
if command -v nvidia-smi >/dev/null 2>&1; then
  say ""
  say '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$results"
  say '```'
else
  say "nvidia-smi: not found (no NVIDIA driver on this machine)"
fi

# 1. Parity and images/s per backbone, in each precision.
for precision in ${PRECISIONS:-f32 bf16}; do
  say ""
  say "## Backbones on $device, $precision"
  step "backbones-$precision" "$bin/examples/backbone_check" "$shared/models" --device "$device" \
    --precision "$precision" --batches 32,64,128 --seconds 3
  grep '^|' "$out/backbones-$precision.log" >>"$results" || tail -3 "$out/backbones-$precision.log" >>"$results"
done

# 2. A Kaggle-sized dataset from the woof-dev photos.
say ""
say "## The 2017 recipe on generated data"
big="$out/big-woof"
step dataset "$bin/examples/make_big_woof" "$shared/data/woof-dev" "$big" \
  --train "${TRAIN:-10222}" --test "${TEST:-10357}"
tail -1 "$out/dataset.log" >>"$results"

# 3. The recipe end to end, timed per stage (run.json).
spec="$out/recipe.toml"
cat >"$spec" <<EOF
name = "gpu_check_recipe"
views = ["original", "hflip"]
[data]
layout = "kaggle"
root = "$big"
[[backbone]]
arch = "xception"
weights = "$shared/models/xception_imagenet_notop.safetensors"
[[backbone]]
arch = "inception_v3"
weights = "$shared/models/inception_v3_nsfwjs_notop.safetensors"
[extract]
batch_size = 64
[cv]
folds = 5
EOF
step recipe "$bin/runner" --quiet --device "$device" --runs "$out/runs" "$spec"
grep -E "device|decoding|propagation|folds" "$out/recipe.log" >>"$results" || true
run_json=$(ls -d "$out"/runs/*/run.json 2>/dev/null | tail -1)
if [ -n "$run_json" ]; then
  say ""
  say '```'
  tee -a "$results" <"$run_json"
  say ""
  say '```'
fi
"$bin/runner" report --runs "$out/runs" --format markdown >>"$results" 2>&1 || true

say ""
say "total: $(( $(date +%s) - started )) s"
echo "results: $results"
