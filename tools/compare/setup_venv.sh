#!/usr/bin/env bash
# Creates the Python virtualenv the benchmarks' peers run in (onnxruntime,
# TensorFlow/Keras, tf2onnx), from PyPI: about 1.5 minutes and 1.5 GB.
#
#   tools/compare/setup_venv.sh [VENV_DIR]     (default: tools/compare/.venv)
#   VENV_DIR/bin/python tools/compare/side_by_side.py
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"
"$venv/bin/python" -c "import onnxruntime, tensorflow, tf2onnx; print('venv ready:', '$venv')"
