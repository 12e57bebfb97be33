#!/usr/bin/env bash
# Extraction on N nodes of a Slurm cluster, then head training on one:
#
#   deploy/slurm/submit.sh SPEC.toml N CACHE [RUNS]
#   deploy/slurm/submit.sh experiments/xception_inception_flip.toml 16 s3://my-bucket/runner-cache
#   deploy/slurm/submit.sh experiments/quickstart.toml 4 /shared/scratch/runner-cache
#
# CACHE: an s3:// prefix (credentials and AWS_ENDPOINT_URL from the
# environment or ~/.aws, which sbatch passes on) or a folder every node
# mounts. RUNS (default: runs) is where the training step writes its run
# directory. RUNNER overrides the command (e.g. "apptainer exec runner.sif
# runner"); extra sbatch options go in SBATCH_* variables
# (SBATCH_PARTITION, SBATCH_ACCOUNT, ...).
set -euo pipefail
usage="usage: submit.sh SPEC.toml SHARDS CACHE [RUNS]"
spec=$(realpath "${1:?$usage}")
shards=${2:?$usage}
cache=${3:?$usage}
[[ $shards =~ ^[1-9][0-9]*$ ]] || { echo "SHARDS must be a whole number >= 1, got '$shards'" >&2; exit 2; }
runs=$(realpath -m "${4:-runs}")
here=$(dirname "$(realpath "$0")")
# A folder cache is passed as an absolute path: the jobs start elsewhere.
case $cache in *://*) ;; *) cache=$(realpath -m "$cache") ;; esac
export RUNNER_SPEC=$spec RUNNER_CACHE=$cache RUNNER_RUNS=$runs
# First one small job hashes the images and weights for the stage keys and
# leaves the hashes in the cache's memo: the shards then read only their
# own images, not every image to hash it.
status=$(sbatch --parsable --export=ALL "$here/status.sbatch")
# A failed step cancels the jobs that wait for it (no "DependencyNeverSatisfied").
array=$(sbatch --parsable --export=ALL --dependency="afterok:${status%%;*}" --kill-on-invalid-dep=yes \
  --array="0-$((shards - 1))" "$here/extract.sbatch")
train=$(sbatch --parsable --export=ALL --dependency="afterok:${array%%;*}" --kill-on-invalid-dep=yes \
  "$here/train.sbatch")
echo "stage keys: job $status; extraction: array job $array ($shards shards) after it; training: job $train after that"
