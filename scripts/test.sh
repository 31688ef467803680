#!/usr/bin/env bash
# Install what the tests need (Chromium and a one-node SLURM where apt-get is allowed, the virtual environment),
# then run the default test suite (slow and GPU tests excluded; GPU tests skip by themselves without CUDA).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-packages.sh   # Chromium, SLURM, munge, MariaDB (their tests skip without root/apt)
bash scripts/setup-env.sh
. "${MEDTI_VENV:-.venv}/bin/activate"
python -m pytest -m "not slow" "$@"
