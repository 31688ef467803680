#!/usr/bin/env bash
# The main job on the embedded default: phantom DICOMs -> embeddings -> synthetic sets -> classifiers ->
# report (results/report/index.html). Offline, CPU-only, a few minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDTI_EXTRAS=${MEDTI_EXTRAS:-workflow,dicom-codecs} bash scripts/setup-env.sh   # the test tools come with scripts/test.sh
. "${MEDTI_VENV:-.venv}/bin/activate"
snakemake --cores "${CORES:-4}" --resources gpu=1 "$@"
echo "report: $(pwd)/results/report/index.html"
