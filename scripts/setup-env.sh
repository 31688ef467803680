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
# pip byte-compiles every installed file one at a time (about half of a fresh install here); compileall does it
# once at the end on every core, and only when something was installed.
before=$(python -m pip freeze --all 2>/dev/null | cksum)
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q --no-compile "${MEDTI_TORCH:-torch==2.13.0}"
fi
python -m pip install -q --no-compile -e ".[${MEDTI_EXTRAS:-workflow,dicom-codecs,kubernetes,dev}]"
if [ "$(python -m pip freeze --all 2>/dev/null | cksum)" != "$before" ]; then
  python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
fi
python -m pip check
