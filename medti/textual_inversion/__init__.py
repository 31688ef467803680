"""Textual Inversion: learn a few embedding vectors for a new token, with the base model frozen.

Python API (imported lazily, so ``medti --help`` stays fast)::

    from medti.textual_inversion import TrainSettings, train_embedding
    result = train_embedding("images/", TrainSettings(token="<disc>", init_words="round disc"),
                             base_model="tiny", output="disc.safetensors", report_dir="disc_report")
    result.embedding, result.stats

``train_from_params(params, modality, class_name, manifest, output, report_dir)`` is the pipeline form.
"""

from __future__ import annotations

_EXPORTS = {
    "TrainSettings": "medti.textual_inversion.settings",
    "Augment": "medti.textual_inversion.settings",
    "TrainResult": "medti.textual_inversion.job",
    "train_embedding": "medti.textual_inversion.job",
    "train_from_params": "medti.textual_inversion.job",
    "default_checkpoint_dir": "medti.textual_inversion.job",
    "EmbeddingTrainer": "medti.textual_inversion.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medti.textual_inversion' has no attribute {name!r}")
