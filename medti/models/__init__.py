"""Base models: the offline ``tiny`` SD architecture, full-size architectures for benchmarks, loading of
local or hub checkpoints, and the token embedding that splices learned vectors into a frozen text encoder.
"""

from medti.models.loading import BaseModel, load_base_model, resolve_device
from medti.models.token_embedding import ExtendedTokenEmbedding, install_extended_embedding

__all__ = [
    "BaseModel",
    "ExtendedTokenEmbedding",
    "install_extended_embedding",
    "load_base_model",
    "resolve_device",
]
