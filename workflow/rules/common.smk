# Helpers shared by the rules: validated parameters, the lists the DAG is built from, output paths.

import os
import shutil

from snakemake.exceptions import WorkflowError

from medti.config import stage as stage_section, validate as validate_params
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
SEEDS = list(config["classifier"]["seeds"])
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


# GPU jobs claim the `gpu` resource only where a GPU exists; on a CPU-only machine they run side by side.
# Jobs pick their device themselves (base_model.device); Snakemake does not set CUDA_VISIBLE_DEVICES.
GPU = 0 if config["base_model"]["device"] == "cpu" or shutil.which("nvidia-smi") is None else 1


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


def parent_of(name, levels=1):
    """The folder ``levels`` up from the first file of input ``name`` (a params function)."""

    def get(wildcards, input):
        path = input[name][0] if not isinstance(input[name], str) else input[name]
        for _ in range(levels):
            path = os.path.dirname(path)
        return path

    return get
