#!/usr/bin/env bash
# The project's lint: ruff (the Python code; settings in pyproject.toml), `snakemake --lint` (Snakemake's checks
# of the rules) and `snakefmt --check` (the format of the Snakefile and workflow/rules/*.smk; `snakefmt Snakefile
# workflow/` rewrites them). Exits non-zero when any finds something. .ci/run runs it before the tests; the
# environment comes from scripts/setup-env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MEDTI_VENV:-.venv}
if [ ! -x "$VENV/bin/snakefmt" ] || [ ! -x "$VENV/bin/snakemake" ] || [ ! -x "$VENV/bin/ruff" ]; then
  bash scripts/setup-env.sh
fi
. "$VENV/bin/activate"
ruff check medti tests scripts
snakemake --lint
snakefmt --check Snakefile workflow/
