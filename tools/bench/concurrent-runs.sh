#!/usr/bin/env bash
# Four runs of one spec started together: on one shared cache (each stage
# computed once under its lock, the others wait) vs each on its own cache
# (what four separate caches cost: every run extracts every stage).
# Prints wall seconds and CPU seconds (user + sys of all four) per case.
#
#   tools/bench/concurrent-runs.sh [SPEC] [RUNNER]
set -euo pipefail
cd "$(dirname "$0")/../.."
spec="${1:-experiments/quickstart.toml}"
runner="${2:-target/release/runner}"
[ -x "$runner" ] || { echo "no $runner: cargo build --release first" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

measure() { # name, then the command
  local name="$1"; shift
  /usr/bin/time -f "%e %U %S" -o "$tmp/$name.time" "$@"
  read -r wall user sys < "$tmp/$name.time"
  printf '%-22s wall %6.1f s   cpu %6.1f s\n' "$name" "$wall" "$(echo "$user + $sys" | bc)"
}

# Four runs at once; CACHE names the cache of run $i.
four='for i in 1 2 3 4; do "$0" --quiet --runs "$1/runs-$i" --cache "$(eval echo "$2")" "$3" 2>/dev/null & done; wait'
# Alternate the order so neither case always runs on a warmer machine.
measure "separate caches" bash -c "$four" "$runner" "$tmp/separate" "$tmp/separate/cache-\$i" "$spec"
measure "one shared cache" bash -c "$four" "$runner" "$tmp/shared" "$tmp/shared/cache" "$spec"
rm -rf "$tmp/shared" "$tmp/separate"
measure "one shared cache" bash -c "$four" "$runner" "$tmp/shared" "$tmp/shared/cache" "$spec"
measure "separate caches" bash -c "$four" "$runner" "$tmp/separate" "$tmp/separate/cache-\$i" "$spec"
computed=$(cat "$tmp"/shared/runs-*/*/run.json | grep -o '"feature_stages_computed": [0-9]*' | awk '{s += $2} END {print s}')
echo "stages computed across the four shared-cache runs: $computed"
