#!/usr/bin/env bash
# Sharded extraction on one machine, and the S3 cache against a folder.
#
#   tools/bench/scale-out.sh SPEC RUNNER [ROUNDS]
#   tools/bench/scale-out.sh experiments/quickstart.toml target/release/runner 2
#
# Needs moto's S3 server (`pip install 'moto[server]'`; MOTO_SERVER names
# its `moto_server` if it is not on PATH); starts it on 127.0.0.1 and
# stops it at the end. Per round, in alternating order where it matters:
#   extract, N=1   one process, all cores, `--shard 0/1`, into a new folder
#   extract, N=2   two processes at once, one core each, into a new folder
#   ... the same two into a new s3:// prefix
#   build stages   the first full run after the shards (chunks -> stages)
#   cached rerun   `runner extract SPEC` once every stage is finished:
#                  folder / s3 with an empty local copy / s3 with a warm one
# Prints seconds per step and the S3 requests each step made.
set -euo pipefail
spec=${1:?usage: scale-out.sh SPEC RUNNER [ROUNDS]}
runner=$(realpath "${2:?usage: scale-out.sh SPEC RUNNER [ROUNDS]}")
rounds=${3:-2}
spec=$(realpath "$spec")
moto=${MOTO_SERVER:-$(command -v moto_server || true)}
[ -x "$moto" ] || { echo "moto_server not found: pip install 'moto[server]' (or set MOTO_SERVER)" >&2; exit 1; }

work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$moto" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.2; done
curl -fs -X PUT "http://127.0.0.1:$port/bench" >/dev/null
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
cores=$(nproc)

requests() { grep -c '" [0-9][0-9][0-9] ' "$work/moto.log" || true; }
# step NAME COMMAND...: runs the command in $work, prints seconds and requests.
step() {
  local name=$1; shift
  local before; before=$(requests)
  local t0; t0=$(date +%s.%N)
  (cd "$work" && "$@")
  local t1; t1=$(date +%s.%N)
  printf '%-44s %7.2f s %6d S3 requests\n' "$name" "$(echo "$t1 - $t0" | bc)" $(( $(requests) - before ))
}
shards() { # shards CACHE N: N shard processes at once, cores/N threads each
  local cache=$1 n=$2 pids=() i
  for i in $(seq 0 $((n - 1))); do
    "$runner" --quiet --threads $(( cores / n > 0 ? cores / n : 1 )) --runs "m$i" --cache "$cache" \
      extract "$spec" --shard "$i/$n" 2>>"$work/shards.log" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}
full() { "$runner" --quiet --runs "$2" --cache "$1" extract "$spec" 2>>"$work/full.log"; }

# Warm the page cache (images, weights): every step then reads from memory.
(cd "$work" && "$runner" --quiet --cache warm extract "$spec" >/dev/null 2>&1)
for r in $(seq "$rounds"); do
  echo "round $r"
  order="1 2"; [ $((r % 2)) -eq 0 ] && order="2 1"
  for n in $order; do
    step "extract, N=$n shard process(es), folder" shards "dir$r-$n" "$n"
  done
  for n in $order; do
    step "extract, N=$n shard process(es), s3" shards "s3://bench/r$r-$n" "$n"
  done
  step "build stages from the chunks, folder" full "dir$r-2" runs-dir
  step "build stages from the chunks, s3" full "s3://bench/r$r-2" "runs-s3-$r"
  step "cached rerun, folder" full "dir$r-2" runs-dir
  step "cached rerun, s3, empty local copy" full "s3://bench/r$r-2" "fresh-$r"
  step "cached rerun, s3, warm local copy" full "s3://bench/r$r-2" "fresh-$r"
done
