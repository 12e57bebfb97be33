#!/usr/bin/env bash
# Regenerates crates/models/src/onnx/onnx_pb.rs from onnx.proto3 beside it,
# with protox + prost-build (pure Rust: no protoc). The versions are pinned
# by tools/codegen/Cargo.lock, so a rerun on an unchanged schema rewrites the
# file byte for byte; `--check` fails when the committed file differs.
# onnx.proto3 is ONNX's own schema (IR version 9, Apache-2.0: its SPDX line
# is kept), the copy candle-onnx 0.11.1 ships; to move to a newer ONNX,
# replace it with that release's onnx/onnx.proto3 and rerun.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
onnx="$repo/crates/models/src/onnx"
target="${CARGO_TARGET_DIR:-$repo/target}/codegen"

cargo run --quiet --locked --manifest-path "$here/Cargo.toml" \
  --target-dir "$target" -- "$onnx/onnx.proto3" "$target/onnx_pb.rs"

if [ "${1:-}" = "--check" ]; then
  diff -u "$onnx/onnx_pb.rs" "$target/onnx_pb.rs"
  echo "onnx_pb.rs is up to date"
else
  cp "$target/onnx_pb.rs" "$onnx/onnx_pb.rs"
  echo "wrote $onnx/onnx_pb.rs"
fi
