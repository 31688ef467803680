# Helpers shared by the rules: validated parameters, the lists the DAG is built from, output paths.

import os
import shlex
import shutil
import subprocess
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from medti.config import condition_variant, stage as stage_section, validate as validate_params, variants
from medti.errors import ConfigError

PARAMS = "params.yaml"

if workflow.config_settings.overwrite_config:
    raise WorkflowError(
        "medti takes its parameters from params.yaml only (DVC reads the same file): "
        "edit params.yaml instead of passing --config"
    )
try:
    validate_params(config, PARAMS)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

MODALITIES = list(config["modalities"])
CONDITIONS = list(config["classifier"]["conditions"])
VARIANTS = list(variants(config))  # embedding variants: each its own embeddings and synthetic set; first: main
OUT = {
    "phantoms": config["phantoms"]["out"],
    "prepared": config["prepare"]["out"],
    "embeddings": config["train_embedding"]["out"],
    "train_reports": config["train_embedding"]["reports"],
    "synthetic": config["generate"]["out"],
    "interpolate": config["interpolate"]["out"],
    "classifiers": config["classifier"]["out"],
    "evaluate": config["evaluate"]["out"],
    "report": config["report"]["out"],
}
PHANTOM_MODALITIES = list(config["phantoms"]["modalities"])


def classes(modality):
    return config["modalities"][modality]["classes"]


# GPU rules: the jobs that put their model on base_model.device (train_embedding, generate, interpolate) or on
# classifier.device (train_classifier); prepare, evaluate and report run on the CPU. Each GPU rule declares
# `resources: gpu=...`, and both cluster profiles give exactly these rules one GPU each (tests/test_workflow.py
# fails when the rules and a profile disagree). Locally a GPU rule claims one unit of `gpu` only where a GPU
# exists and its device setting is not cpu (`snakemake --resources gpu=N` runs N at a time); on a CPU-only
# machine it claims none, so those jobs run side by side. Jobs pick their device themselves; Snakemake does not
# set CUDA_VISIBLE_DEVICES.
HAS_GPU = shutil.which("nvidia-smi") is not None


# Job order among ready jobs: the chain to the synthetic-set classifiers first (prepare, then the embeddings,
# the sets and the sweeps; each evaluation as soon as it can run); the classifiers fill the cores meanwhile and
# at the end, where one-thread jobs pack two cores best. Snakemake starts the set of jobs with the largest sum
# of priorities, so each tier outweighs up to a hundred jobs of the tier below. Without them, on two cores, a
# modality's preparation waited for another's embeddings and the last synthetic set for the sweeps.
PRIORITY = {"prepare": 10000, "train_embedding": 100, "generate": 100, "interpolate": 100, "evaluate": 100}


def gpu(section):
    """The `gpu` resource of a job whose device is ``<section>.device`` (a modality may override classifier)."""

    def get(wildcards):
        if section == "base_model":
            device = config["base_model"]["device"]
        else:
            device = stage_section(config, section, wildcards.modality)["device"]
        return 1 if HAS_GPU and device != "cpu" else 0

    return get


def embedding_threads(wildcards):
    """Threads of a train_embedding job: one where it trains on the CPU, two beside a GPU. Its small steps use a
    second core poorly (2 threads: 17 % less time for 14 % more CPU time on two cores), so on a CPU-only machine
    one thread per job and more jobs side by side finish the pipeline sooner (docs/performance.md)."""
    return 2 if HAS_GPU and config["base_model"]["device"] != "cpu" else 1


def settings(section, *extra):
    """Parameters for Snakemake's params rerun trigger (the stage section for the modality)."""

    def get(wildcards):
        modality = config["modalities"][wildcards.modality]
        values = {
            section: stage_section(config, section, wildcards.modality),
            "modality": {k: v for k, v in modality.items() if k != "init_words"},
        }
        if "cls" in wildcards.keys():
            values["init"] = modality["init_words"].get(wildcards.cls)
        for key in extra:
            values[key] = config[key]
        return values

    return get


def source_inputs(wildcards):
    """The raw data a modality is prepared from: the phantom folder, or the user's source and labels."""
    source = config["modalities"][wildcards.modality]["source"]
    if wildcards.modality in PHANTOM_MODALITIES:
        return [f"{OUT['phantoms']}/{wildcards.modality}"]
    paths = [source["path"]] if "path" in source else []
    labels = source.get("labels", {}).get("csv")
    return paths + ([labels] if labels else [])


def embedding_folders(wildcards):
    """The embeddings of every class of the job's modality: one folder per class, a file per variant. One job
    trains all variants of a class because dvc.yaml cannot cross the `classes` mapping with the variants."""
    return expand(f"{OUT['embeddings']}/{wildcards.modality}/{{cls}}", cls=classes(wildcards.modality))


def condition_synthetic(wildcards):
    """The synthetic set a classifier condition trains on (its variant's), none for a real-only condition."""
    if config["classifier"]["conditions"][wildcards.condition]["synthetic"] == 0:
        return []
    return [f"{OUT['synthetic']}/{wildcards.modality}/{condition_variant(config, wildcards.condition)}"]


def parent_of(name, levels=1):
    """The folder ``levels`` up from the first file of input ``name`` (a params function)."""

    def get(wildcards, input):
        path = input[name][0] if not isinstance(input[name], str) else input[name]
        for _ in range(levels):
            path = os.path.dirname(path)
        return path

    return get


def record_in_dvc_lock():
    """After a successful run: record the outputs of the jobs that ran in dvc.lock (`medti workflow record`, as
    `dvc commit -f` of them would), so dvc.lock records them as after `dvc repro` and the README's sharing steps
    (git add dvc.lock, git commit, dvc push) work after either runner.

    Only the jobs that ran are committed: an output this run did not make may be stale for DVC (a partial run
    after a parameter change), and committing it would hide that. Skipped without DVC (no `.dvc` folder or no
    `dvc` command), under --touch, and when outputs live in remote storage (the Kubernetes profile: run
    `dvc commit` where the files are). A failed commit ends the run with an error naming the command to run
    again; the outputs and Snakemake's records of them stay. `snakemake --no-hooks` skips this step.
    """
    if (
        not (os.path.isdir(".dvc") and os.path.isfile("dvc.yaml"))
        or workflow.touch
        or workflow.storage_settings.default_storage_provider
    ):
        return
    beside = os.path.join(os.path.dirname(sys.executable), "dvc")
    if not (os.access(beside, os.X_OK) or shutil.which("dvc")):
        return
    jobs = [job for job in workflow.dag.finished_jobs if job.output]
    targets = sorted({str(path) for job in jobs for path in job.output})
    if not targets:
        return
    # `medti workflow record` does what `dvc commit --force` of the targets does, reading and writing dvc.lock
    # once instead of once per target (docs/performance.md)
    medti = os.path.join(os.path.dirname(sys.executable), "medti")
    medti = medti if os.access(medti, os.X_OK) else shutil.which("medti") or "medti"
    proc = subprocess.run([medti, "workflow", "record", *targets], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise WorkflowError(
            f"every job succeeded, but recording their outputs in dvc.lock failed:\n{detail}\n"
            "The outputs are kept. Once the cause is fixed, run:\n"
            f"  dvc commit --force {' '.join(shlex.quote(t) for t in targets)}"
        )
    logger.info(f"dvc.lock: recorded the outputs of {len(jobs)} job(s) (medti workflow record)")
