"""Embedding files: medti's own safetensors format, and diffusers, AUTOMATIC1111 and kohya files
(``medti embedding info|convert``). See :mod:`medti.embeddings.formats` for the layouts.

Python API (imported lazily, so ``medti --help`` stays fast)::

    from medti.embeddings import load_embedding, export_embedding
    emb = load_embedding("embeddings/chest_xray/opacity.safetensors")   # any supported format
    emb.token, emb.vectors, emb.metadata, emb.checksum()
    export_embedding(emb, "opacity.pt", "a1111")                        # for the AUTOMATIC1111 web UI

``save_embedding`` writes medti's format, ``convert_embedding`` reads one file and writes another,
``infer_format`` tells the format from a file name; ``FORMATS`` lists the formats.
"""

from medti.lazy import lazy_exports

__all__ = [
    "Embedding",
    "FORMATS",
    "convert_embedding",
    "export_embedding",
    "infer_format",
    "load_embedding",
    "save_embedding",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["Embedding", "FORMATS", "convert_embedding", "export_embedding", "infer_format", "load_embedding",
                     "save_embedding"], "formats"),
})
