"""Base models: the offline ``tiny`` SD architecture, full-size architectures for benchmarks, loading of
local or hub checkpoints, and the token embedding that splices learned vectors into a frozen text encoder.

The names below are loaded on first use, so ``import medti.models`` (and ``medti --help``) loads no torch.
"""

from medti.lazy import lazy_exports

__all__ = ["BaseModel", "ExtendedTokenEmbedding", "install_extended_embedding", "load_base_model", "resolve_device"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "BaseModel": "loading", "load_base_model": "loading", "resolve_device": "loading",
    "ExtendedTokenEmbedding": "token_embedding", "install_extended_embedding": "token_embedding",
})
