#!/usr/bin/env bash
# Install what the tests need, then run the default test suite (slow and GPU tests excluded; GPU tests
# skip by themselves on a machine without CUDA). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. "${MEDTI_VENV:-.venv}/bin/activate"
python -m pytest -m "not slow" "$@"
