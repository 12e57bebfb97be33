#!/usr/bin/env bash
# Do two builds of runner give the same results? Runs every shipped spec
# with each binary into a fresh runs folder (and so a fresh feature cache),
# then compares byte for byte: each run's oof.csv, submission.csv,
# folds.csv, metrics.json and spec.toml, and every cached feature matrix
# (same keys, same bytes). For refactors, which must change nothing.
#
# Usage: tools/compare/same-outputs.sh OLD_RUNNER NEW_RUNNER [WORK_DIR]
#   e.g. git worktree add /tmp/old HEAD~5 && (cd /tmp/old && cargo build --release)
#        tools/compare/same-outputs.sh /tmp/old/target/release/runner target/release/runner
# Exit status 0 when everything is identical. Takes ~2.5 min per binary on
# 2 cores (the 2017 recipe's features dominate).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
old="$(realpath "$1")"
new="$(realpath "$2")"
work="${3:-$(mktemp -d)}"
specs=(quickstart xception_inception_flip ablations onnx_efficientnet_lite0)

for side in old new; do
  bin="${!side}"
  rm -rf "${work:?}/$side"
  for s in "${specs[@]}"; do
    /usr/bin/time -f "$side $s: %e s" "$bin" --quiet --runs "$work/$side" "experiments/$s.toml" >"$work/$side-$s.log" 2>&1 \
      || { echo "$side $s failed, see $work/$side-$s.log" >&2; exit 1; }
    tail -1 "$work/$side-$s.log"
  done
done

differ=0
# Runs pair up by their folder name after the start time: the spec's name
# (with a sweep member's values) and the resolved spec's hash.
for a in "$work"/old/*/; do
  run="$(basename "$a")"
  run="${run#*Z-}"
  b="$(ls -d "$work"/new/*Z-"$run" 2>/dev/null || true)"
  if [ -z "$b" ]; then
    echo "DIFFERENT  $run: no such run from the new binary"
    differ=1
    continue
  fi
  for f in oof.csv submission.csv folds.csv metrics.json spec.toml; do
    [ -f "$a/$f" ] || continue
    if cmp -s "$a/$f" "$b/$f"; then
      echo "identical  $run/$f"
    else
      echo "DIFFERENT  $run/$f"
      differ=1
    fi
  done
done

keys() { (cd "$1/.cache/features" && find . -name '*.npy' | sort); }
if [ "$(keys "$work/old")" != "$(keys "$work/new")" ]; then
  echo "DIFFERENT  feature cache keys:"
  diff <(keys "$work/old") <(keys "$work/new") || true
  differ=1
fi
n=0
for f in $(keys "$work/new"); do
  [ -f "$work/old/.cache/features/$f" ] && ! cmp -s "$work/old/.cache/features/$f" "$work/new/.cache/features/$f" && n=$((n + 1))
done
echo "feature matrices: $(keys "$work/new" | wc -l) keys, $n with different bytes"
[ "$n" -eq 0 ] || differ=1
exit "$differ"
