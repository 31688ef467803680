#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install medti with its workflow tools.
# CPU torch is installed first on its own (MEDTI_TORCH, default torch==2.13.0): an open range would pull a
# multi-GB CUDA build. On a GPU machine install your CUDA torch first, or set MEDTI_TORCH to its spec.
# MEDTI_EXTRAS: the extras to install (default workflow,dicom-codecs,kubernetes,dev: what the tests use; the
# main job, scripts/run-default.sh, installs workflow,dicom-codecs).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MEDTI_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# --no-compile: pip would byte-compile every file of every package, one at a time (half of a fresh install
# here); Python compiles what a job imports on its first import and caches it in the venv instead.
# scripts/run-default.sh and scripts/test.sh unset PYTHONDONTWRITEBYTECODE so that cache is written.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q --no-compile "${MEDTI_TORCH:-torch==2.13.0}"
fi
python -m pip install -q --no-compile -e ".[${MEDTI_EXTRAS:-workflow,dicom-codecs,kubernetes,dev}]"
python -m pip check
