"""Generation from embeddings: synthetic training sets (``medti generate``, ``medti merge-shards``), healthy ->
diseased sweeps and combined pathologies (``medti interpolate``), and lesion inpainting (``medti inpaint``).

Python API (loaded on first use, so ``medti --help`` loads no torch)::

    from medti.generate import Runtime, generate_modality, generate_standalone, sample
    generate_modality(params, "chest_xray", "embeddings/chest_xray", "data/synthetic/chest_xray")
    generate_standalone("synth/", ["a chest x-ray showing <cxr-opacity>"], 100,
                        embeddings=["cxr-opacity.safetensors"], runtime=Runtime(base_model="tiny"))

Parts: ``jobs`` (pipeline and standalone jobs, settings), ``synthetic`` (seeded, resumable, sharded sets and
their manifest), ``sampling`` (batched classifier-free guidance with weighted prompts), ``schedulers``,
``prompts`` (weighted prompts and blends), ``embedding_install`` (embedding files into a loaded base model),
``interpolate`` and ``inpaint``.
"""

from medti.lazy import lazy_exports

__all__ = ["Runtime", "generate_modality", "generate_standalone", "inpaint_job", "install_embeddings",
           "interpolate_modality", "interpolate_standalone", "make_scheduler", "merge_shards", "sample"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "Runtime": "jobs", "generate_modality": "jobs", "generate_standalone": "jobs", "inpaint_job": "inpaint",
    "install_embeddings": "embedding_install", "interpolate_modality": "interpolate",
    "interpolate_standalone": "interpolate", "make_scheduler": "schedulers", "merge_shards": "synthetic",
    "sample": "sampling",
})
