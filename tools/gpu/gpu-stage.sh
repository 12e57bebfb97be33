#!/usr/bin/env bash
# Unpacks one piece that tools/gpu/gpu-pack.sh made (carried to the GPU machine
# as .gpu/PART) into /tmp/gpu: bin/ (runner, runner-dev and their cuDNN
# builds), models/, data/woof-dev.
# tools/gpu/gpu-check.sh finds /tmp/gpu by itself when ../shared and
# target-cuda/ are absent, as on the device machine.
#
# Usage: bash tools/gpu/gpu-stage.sh a|b|c|d
set -euo pipefail

part="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
src="$root/.gpu/$part"
dest=/tmp/gpu
mkdir -p "$dest/bin" "$dest/models" "$dest/data"
if [ ! -d "$src" ]; then
  echo "no $src: carry .gpu/$part (tools/gpu/gpu-pack.sh makes it)" >&2
  exit 1
fi
unxz_to() { # FILE.xz DEST: xz if installed, else Python's lzma
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$1" >"$2"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}
for f in "$src"/*; do
  name="$(basename "$f")"
  case "$name" in
    runner.xz | runner-cudnn.xz | runner-dev.xz | runner-dev-cudnn.xz)
      unxz_to "$f" "$dest/bin/${name%.xz}" && chmod +x "$dest/bin/${name%.xz}" ;;
    *.xz) unxz_to "$f" "$dest/models/${name%.xz}" ;;
    *.tar) tar -C "$dest/data" -xf "$f" ;;
    *) cp "$f" "$dest/models/" ;;
  esac
done
echo "staged .gpu/$part into $dest:"
ls -la "$dest/bin" "$dest/models" "$dest/data"
