"""Ingestion (``medti prepare``): DICOM folders and series, volumes, image folders and MedMNIST files become
one de-identified dataset split by subject. See :mod:`medti.preprocess.pipeline` for the output layout.

Python API::

    from medti.preprocess import prepare_dataset, prepare_source

    prepare_dataset(params, "chest_xray", "data/prepared/chest_xray")        # as the pipeline does
    prepare_source({"type": "dicom", "path": "scans", "labels": {"csv": "labels.csv", "key": "path"}},
                   ["normal", "opacity"], "prepared/", settings={"size": 128})  # without a params.yaml

Imports stay light here (the CLI imports this package); the work lives in the submodules.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from medti.config import schema_default

if TYPE_CHECKING:
    from medti.preprocess.pipeline import PrepareResult


def prepare_dataset(params: dict, modality: str, out: str | os.PathLike | None = None, *,
                    workers: int | None = None, on_error: str | None = None, **settings) -> PrepareResult:
    """Prepare one modality of validated ``params`` (``medti.config.load_params``) into ``out``.

    ``workers``, ``on_error`` and any other ``prepare`` setting given here (size=128, say) win over
    params.yaml. Returns a PrepareResult (out, images, rejected, summary). Raises ConfigError/InputError
    (one line) for bad settings, unusable inputs, an empty result or a class too small for the split.
    """
    from medti.preprocess.pipeline import prepare_dataset as run

    return run(params, modality, out, overrides={"workers": workers, "on_error": on_error, **settings})


def standalone_params(source: dict, classes: list[str], *, modality: str = "data", settings: dict | None = None,
                      seed: int = schema_default("seed"), root: str | os.PathLike | None = None) -> dict:
    """A validated params dict holding one modality with ``source`` and ``classes`` (label order)."""
    from medti.config import project_root, validate

    params = {
        "seed": seed,
        "base_model": {"id": "tiny"},
        "tracking": {"enabled": False},
        "modalities": {modality: {"source": dict(source)}},
        "classes": {f"{modality}-{c}": {"modality": modality, "class": c} for c in classes},
        "prepare": dict(settings or {}),
    }
    validate(params, source="prepare settings", evaluation=False)  # the test split's size is the user's call
    params["_meta"]["root"] = str(root if root is not None else project_root())
    return params


def prepare_source(source: dict, classes: list[str], out: str | os.PathLike, *, modality: str = "data",
                   settings: dict | None = None, seed: int = schema_default("seed"), workers: int | None = None,
                   on_error: str | None = None, root: str | os.PathLike | None = None) -> PrepareResult:
    """Prepare a source given directly (a ``modalities.<m>.source`` mapping) without a params.yaml.

    ``settings`` are ``prepare`` settings (size, fit, split...); relative paths resolve against ``root``
    (default: the working directory or MEDTI_PROJECT_ROOT), where the de-identification salt also lives.
    Nothing is tracked unless MLFLOW_TRACKING_URI is set.
    """
    from medti.preprocess.pipeline import prepare_dataset as run

    params = standalone_params(source, classes, modality=modality, settings=settings, seed=seed, root=root)
    return run(params, modality, out, overrides={"workers": workers, "on_error": on_error}, track_run=False)
