#!/usr/bin/env bash
# Stage keys, extraction as an Indexed Job, then head training, on the current
# kubectl context:
#
#   deploy/kubernetes/run.sh [NAMESPACE]
#
# Expects: the image runner:latest where the cluster pulls from (edit
# `image:` in both manifests), a Secret runner-s3 with the S3 credentials,
# and PersistentVolumeClaims runner-data (spec.toml, images, weights) and
# runner-runs (run directories). README, "Scale out".
set -euo pipefail
here=$(dirname "$(realpath "$0")")
ns=(--namespace "${1:-default}")
# Waits until job $1 completes (exit 0) or fails (exit 1).
wait_job() {
  local state
  while true; do
    state=$(kubectl "${ns[@]}" get "job/$1" \
      -o jsonpath='{.status.conditions[?(@.status=="True")].type}')
    case $state in
      *Complete*) return 0 ;;
      *Failed*) echo "job $1 failed: kubectl ${ns[*]} describe job/$1" >&2; return 1 ;;
    esac
    sleep 15
  done
}
kubectl "${ns[@]}" delete job runner-status runner-extract runner-train --ignore-not-found
kubectl "${ns[@]}" apply -f "$here/status-job.yaml"
wait_job runner-status
kubectl "${ns[@]}" logs job/runner-status
kubectl "${ns[@]}" apply -f "$here/extract-job.yaml"
wait_job runner-extract
kubectl "${ns[@]}" apply -f "$here/train-job.yaml"
wait_job runner-train
kubectl "${ns[@]}" logs job/runner-train --tail=20
