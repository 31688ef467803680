# medti: phantoms/ingest -> embeddings per modality, class and variant -> synthetic sets per variant -> classifiers
# per condition (a job trains its seeds) -> evaluation -> report.  `snakemake --cores 4 --resources gpu=1`; `snakemake -n`.
# params.yaml is the one source of parameters (DVC reads it too); each rule calls the medti CLI with the
# same command dvc.yaml runs (tests/test_workflow.py fails when the two drift apart), and sends its whole stderr
# (medti's log, errors and tracebacks) to the rule's log file. After a successful run, dvc.lock records what it
# made (`medti workflow record`: as `dvc commit --force` of the jobs that ran), so the outputs can be shared with
# `dvc push` as after `dvc repro`.

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    modality="|".join(MODALITIES),
    cls="[a-z0-9_]+",
    condition="|".join(CONDITIONS),
    variant="|".join(VARIANTS),


include: "workflow/rules/data.smk"
include: "workflow/rules/embeddings.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/classifiers.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        OUT["report"],


onsuccess:
    record_in_dvc_lock()
