"""Textual Inversion: learn a few embedding vectors for a new token, with the base model frozen.

Python API (imported lazily, so ``medti --help`` stays fast)::

    from medti.textual_inversion import TrainSettings, train_embedding
    result = train_embedding("images/", TrainSettings(token="<disc>", init_words="round disc"),
                             base_model="tiny", output="disc.safetensors", report_dir="disc_report")
    result.embedding, result.stats

``train_from_params(params, modality, class_name, manifest, output, report_dir)`` is the pipeline form.
"""

from medti.lazy import lazy_exports

__all__ = ["Augment", "EmbeddingTrainer", "TrainResult", "TrainSettings", "default_checkpoint_dir", "train_embedding",
           "train_from_params"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "TrainSettings": "settings", "Augment": "settings", "TrainResult": "job", "train_embedding": "job",
    "train_from_params": "job", "default_checkpoint_dir": "job", "EmbeddingTrainer": "trainer",
})
