#!/usr/bin/env bash
# The prepared GPU check: parity of GPU features with the shared
# fixtures, images/s per backbone at a few batch sizes, and the full 2017
# recipe (Xception + InceptionV3, both views, 5 folds) on a generated
# Kaggle-sized set of 20,579 JPEGs, timed per stage. Meant for a GPU machine
# with no network and no Rust toolchain, in under 8 minutes.
#
# It runs the CUDA builds of `runner` (the recipe) and `runner-dev` (the
# checks besides the recipe). Build them here (a machine with the
# toolchain), into target-cuda/:
#   tools/gpu/cuda-toolchain.sh            # see its header for the environment
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda --bin runner --bin runner-dev
# then ship it with the shared models and data: tools/gpu/gpu-pack.sh does that
# in pieces small enough for the device tool; on a machine with everything:
#   tools/gpu/gpu-check.sh [OUT_DIR]          # default /tmp/gpu-check
#
# Environment: SHARED (default ../shared, else /tmp/gpu as staged by
# tools/gpu/gpu-stage.sh, else ./shared), BIN_DIR (default target-cuda/release,
# else /tmp/gpu/bin), CUDA_LIBS (prepended to LD_LIBRARY_PATH; default:
# the nvidia/cu13/lib folder of python3's CUDA 13 wheels, if there is one),
# DEVICE (default cuda), PRECISIONS (default "f32 bf16"), RECIPE_PRECISIONS
# (default "bf16 f32": the recipe once per precision, features recomputed),
# BATCH (recipe extraction batch, default 128), TRAIN / TEST (default
# 10222 / 10357 images), WORK (dataset, caches, runs, step logs; default
# /tmp/gpu-check-work, never under OUT_DIR: the device tool returns OUT),
# BACKBONES_TIMEOUT / RECIPE_TIMEOUT (seconds per step, default 150 / 200:
# expected, not yet measured, ~5-6 min; the device tool allows 10 per call).
# Writes OUT_DIR/results.md (the table) and OUT_DIR/steps.log (every step's
# output); a failing step is recorded and the next one still runs. With a
# cuDNN build beside them (BIN_DIR/runner-cudnn and runner-dev-cudnn,
# `--features cudnn`), its bf16 parity and speed are checked too, and its
# bf16 recipe runs if the check is still under CUDNN_RECIPE_BEFORE seconds
# (default 330).
set -uo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
shared="${SHARED:-}"
if [ -z "$shared" ]; then
  if [ -d ../shared/models ]; then
    shared="$(cd ../shared && pwd)"
  elif [ -d /tmp/gpu/models ]; then
    shared=/tmp/gpu # staged by tools/gpu/gpu-stage.sh
  else
    shared="$root/shared"
  fi
fi
bin="${BIN_DIR:-}"
if [ -z "$bin" ]; then
  if [ ! -x "$root/target-cuda/release/runner" ] && [ -x /tmp/gpu/bin/runner ]; then
    bin=/tmp/gpu/bin
  else
    bin="$root/target-cuda/release"
  fi
fi
out="${1:-/tmp/gpu-check}"
# The generated dataset, caches and run directories (large): not in OUT_DIR,
# which holds only the table and the logs.
work="${WORK:-/tmp/gpu-check-work}"
device="${DEVICE:-cuda}"
logs="$work/logs"
mkdir -p "$out" "$work" "$logs"
: >"$out/steps.log"
if [ -z "${CUDA_LIBS:-}" ] && command -v python3 >/dev/null 2>&1; then
  # cuBLAS, cuRAND and cudart 13 from the PyTorch wheels of the GPU machine.
  # (and cuDNN 9 for a cuDNN build), from the PyTorch wheels.
  CUDA_LIBS="$(python3 -c 'import nvidia, os; r = list(nvidia.__path__)[0]; print(":".join(p for p in (os.path.join(r, "cu13", "lib"), os.path.join(r, "cudnn", "lib")) if os.path.isdir(p)))' 2>/dev/null || true)"
fi
if [ -n "${CUDA_LIBS:-}" ]; then
  export LD_LIBRARY_PATH="$CUDA_LIBS:${LD_LIBRARY_PATH:-}"
fi
results="$out/results.md"
: >"$results"
say() { echo "$*" | tee -a "$results"; }
started=$(date +%s)

# Runs one step with its output in $logs/<name>.log, appended to
# $out/steps.log as well (the device tool brings back at most 8 files: the
# results and one log); records status and time.
# A step that runs past $limit seconds (when set) is stopped (exit 124), so
# one slow step cannot eat the device call and the steps after it.
limit=""
step() {
  local name="$1"
  shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  if [ -n "$limit" ] && command -v timeout >/dev/null 2>&1; then
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
  else
    "$@" >"$logs/$name.log" 2>&1
  fi
  rc=$?
  t1=$(date +%s.%N)
  { echo "==== $name: exit $rc"; cat "$logs/$name.log"; } >>"$out/steps.log"
  printf -- "- step %s: exit %d in %.1f s\n" "$name" "$rc" "$(awk "BEGIN { print $t1 - $t0 }")" | tee -a "$results"
  return $rc
}

say "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say ""
say "binaries: $bin; shared: $shared; device: $device"
for exe in runner runner-dev; do
  if [ ! -x "$bin/$exe" ]; then
    say "missing $bin/$exe: build it first (see the header of this script)"
    exit 1
  fi
done
say "libraries: ${CUDA_LIBS:-none added}"
ldd "$bin/runner" 2>&1 | grep -E "cuda|cublas|curand|not found" | tee -a "$results"
if command -v nvidia-smi >/dev/null 2>&1; then
  say ""
  say '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$results"
  say '```'
else
  say "nvidia-smi: not found (no NVIDIA driver on this machine)"
fi

# 1. Parity and images/s per backbone, in each precision. Should the first
# precision fail with the project's device kernels, it runs again with
# candle's ops alone (RUNNER_DEVICE_KERNELS=0); if that passes, the rest of
# the check uses them, so one GPU session still gets its numbers.
first=1
limit="${BACKBONES_TIMEOUT:-150}"
for precision in ${PRECISIONS:-f32 bf16}; do
  say ""
  say "## Backbones on $device, $precision${RUNNER_DEVICE_KERNELS:+ (RUNNER_DEVICE_KERNELS=$RUNNER_DEVICE_KERNELS)}"
  log="$logs/backbones-$precision.log"
  rc=0
  step "backbones-$precision" "$bin/runner-dev" --device "$device" backbones "$shared/models" \
    --precision "$precision" --batches 32,64,128,256 --seconds 2 || rc=$?
  # Exit 1: a backbone failed parity or could not run (124 is the time limit).
  if [ "$rc" = 1 ]; then
    if [ "$first" = 1 ] && [ -z "${RUNNER_DEVICE_KERNELS:-}" ]; then
      grep '^|' "$log" >>"$results" || tail -3 "$log" >>"$results"
      say ""
      say "### again with candle's ops alone (RUNNER_DEVICE_KERNELS=0)"
      if step "backbones-$precision-candle-ops" env RUNNER_DEVICE_KERNELS=0 "$bin/runner-dev" \
        --device "$device" backbones "$shared/models" --precision "$precision" \
        --batches 32,64,128,256 --seconds 2; then
        export RUNNER_DEVICE_KERNELS=0
        say "the rest of the check runs with RUNNER_DEVICE_KERNELS=0"
      fi
      log="$logs/backbones-$precision-candle-ops.log"
    fi
  fi
  grep '^|' "$log" >>"$results" || tail -3 "$log" >>"$results"
  first=0
done

# 2. A Kaggle-sized dataset from the woof-dev photos.
say ""
say "## The 2017 recipe on generated data"
big="$work/big-woof"
limit=120
step dataset "$bin/runner-dev" big-woof "$shared/data/woof-dev" "$big" \
  --train "${TRAIN:-10222}" --test "${TEST:-10357}"
tail -1 "$logs/dataset.log" >>"$results"

# 3. The recipe end to end, timed per stage (run.json), once per precision
# (each its own feature cache, so each computes its features).
limit="${RECIPE_TIMEOUT:-200}"
for precision in ${RECIPE_PRECISIONS:-bf16 f32}; do
  spec="$work/recipe-$precision.toml"
  cat >"$spec" <<EOF
name = "gpu_check_recipe_$precision"
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
batch_size = ${BATCH:-128}
precision = "$precision"
[cv]
folds = 5
EOF
  say ""
  say "### recipe, $precision"
  step "recipe-$precision" "$bin/runner" --quiet --device "$device" --runs "$work/runs" \
    --cache "$work/cache-$precision" "$spec"
  grep -E "device|decoding|propagation|folds|error" "$logs/recipe-$precision.log" >>"$results" || true
  run_json=$(ls -d "$work"/runs/*"gpu_check_recipe_$precision"*/run.json 2>/dev/null | tail -1)
  if [ -n "$run_json" ]; then
    say '```'
    tee -a "$results" <"$run_json"
    say ""
    say '```'
  fi
done

# 4. Heads on the CPU for comparison: the f32 recipe again with every
# feature from its cache, so only hashing and the 10 heads run (on the
# machine's cores instead of the GPU).
if [ -d "$work/cache-f32" ]; then
  say ""
  say "### recipe, f32, features cached, heads on the CPU"
  step "heads-cpu" "$bin/runner" --quiet --device cpu --runs "$work/runs" \
    --cache "$work/cache-f32" "$work/recipe-f32.toml"
  run_json=$(ls -d "$work"/runs/*"gpu_check_recipe_f32"*/run.json 2>/dev/null | tail -1)
  [ -n "$run_json" ] && grep -E '"(seconds|hash_seconds|heads_seconds)"' "$run_json" | tee -a "$results"
fi
# 5. The cuDNN build, if shipped: bf16 parity and speed, then (time
# allowing) the bf16 recipe, to compare candle's im2col convolutions with
# cuDNN's.
if [ -x "$bin/runner-cudnn" ] && [ -x "$bin/runner-dev-cudnn" ]; then
  say ""
  say "## cuDNN build (runner-cudnn, runner-dev-cudnn)"
  limit="${BACKBONES_TIMEOUT:-150}"
  step "backbones-bf16-cudnn" "$bin/runner-dev-cudnn" --device "$device" backbones "$shared/models" \
    --precision bf16 --batches 64,128,256 --seconds 2
  grep '^|' "$logs/backbones-bf16-cudnn.log" >>"$results" || tail -3 "$logs/backbones-bf16-cudnn.log" >>"$results"
  if [ -f "$work/recipe-bf16.toml" ] && [ $(( $(date +%s) - started )) -lt "${CUDNN_RECIPE_BEFORE:-330}" ]; then
    limit="${RECIPE_TIMEOUT:-200}"
    say ""
    say "### recipe, bf16, cuDNN build"
    step "recipe-bf16-cudnn" "$bin/runner-cudnn" --quiet --device "$device" --runs "$work/runs-cudnn" \
      --cache "$work/cache-bf16-cudnn" "$work/recipe-bf16.toml"
    grep -E "decoding|propagation|folds|error" "$logs/recipe-bf16-cudnn.log" >>"$results" || true
    run_json=$(ls -d "$work"/runs-cudnn/*/run.json 2>/dev/null | tail -1)
    [ -n "$run_json" ] && grep -E '"(seconds|hash_seconds|decode_seconds|features_seconds|heads_seconds)"' "$run_json" | tee -a "$results"
  else
    say "(recipe with cuDNN skipped: past ${CUDNN_RECIPE_BEFORE:-330} s)"
  fi
fi

"$bin/runner" report --runs "$work/runs" --format markdown >>"$results" 2>&1 || true

say ""
say "total: $(( $(date +%s) - started )) s"
echo "results: $results"
