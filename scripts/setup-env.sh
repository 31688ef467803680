#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install medti with its workflow tools.
# CPU torch is pinned (torch==2.13.0, installed with the rest): an open range would pull a multi-GB CUDA build.
# On a GPU machine install your CUDA torch first, or set MEDTI_TORCH to its spec (installed first, on its own).
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
# pip byte-compiles every file of every package one at a time (about half of a fresh install here): install with
# --no-compile and compile once at the end on every core, only when something changed.
before=$(python -m pip freeze --all 2>/dev/null | cksum)
extras=".[${MEDTI_EXTRAS:-workflow,dicom-codecs,kubernetes,dev}]"
if python -c "import torch" 2>/dev/null; then          # an installed torch (a user's CUDA build) is kept
  python -m pip install -q --no-compile -e "$extras"
elif [ -n "${MEDTI_TORCH:-}" ]; then                   # its own call: the spec may name another index
  # shellcheck disable=SC2086  # MEDTI_TORCH may hold options (--index-url ...)
  python -m pip install -q --no-compile $MEDTI_TORCH
  python -m pip install -q --no-compile -e "$extras"
else                                                   # CPU torch and the rest in one resolver pass
  python -m pip install -q --no-compile torch==2.13.0 -e "$extras"
fi
if [ "$(python -m pip freeze --all 2>/dev/null | cksum)" != "$before" ]; then
  python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >/dev/null || true
fi
python -m pip check
