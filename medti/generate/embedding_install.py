"""Installing any number of embedding files into a loaded base model, checked against it.

Each embedding must fit the base model's text encoder: its width always, and, when its metadata records
one (medti's files do), the hash of the text encoder's config. A mismatch is a one-line ModelError naming
the file, not a shape error deep inside the UNet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medti.embeddings import Embedding, load_embedding
from medti.errors import ModelError
from medti.models.token_embedding import (
    TokenInVocabulary,
    add_placeholder,
    install_extended_embedding,
    placeholder_tokens,
)

if TYPE_CHECKING:
    from medti.models.loading import BaseModel

# What install_embeddings takes: a file (``PATH`` or ``TOKEN=PATH``), a (token, file) pair or an Embedding.
EmbeddingSource = str | os.PathLike | tuple[str | None, str | os.PathLike] | Embedding


@dataclass(frozen=True)
class InstalledEmbedding:
    token: str
    num_vectors: int
    checksum: str
    source: str  # the file it came from ("" for an in-memory embedding)


def parse_embedding_arg(value: str) -> tuple[str | None, Path]:
    """``PATH`` or ``TOKEN=PATH`` (the token overrides the file's own name)."""
    if "=" in value and not Path(value).exists():
        token, path = value.split("=", 1)
        return token.strip() or None, Path(path)
    return None, Path(value)


def check_fits(model: BaseModel, emb: Embedding, source: str) -> None:
    """Raise ModelError naming ``source`` when ``emb`` was made for another base model."""
    if emb.dim != model.embedding_dim:
        raise ModelError(f"{source}: embedding width {emb.dim} does not match base model '{model.model_id}' "
                         f"(text encoder width {model.embedding_dim}): it was trained for another base model")
    want = emb.metadata.get("text_encoder_hash")
    have = model.text_encoder_hash()
    if want and want != have:
        made_for = emb.metadata.get("base_model")
        made_for = f" ('{made_for}')" if made_for else ""
        raise ModelError(f"{source}: embedding was trained for another text encoder{made_for} (config hash {want}); "
                         f"base model '{model.model_id}' has {have}")


def installed_vectors(text_encoder: torch.nn.Module, token: str) -> torch.Tensor | None:
    """The vectors installed for ``token`` in ``text_encoder``, or None."""
    if token not in placeholder_tokens(text_encoder):
        return None
    layer = install_extended_embedding(text_encoder)
    offset = 0
    for name, ids in layer.token_ids.items():
        if name == token:
            return layer.extra_matrix()[offset:offset + len(ids)].detach().float().cpu()
        offset += len(ids)
    return None


def install_embeddings(model: BaseModel, sources: Iterable[EmbeddingSource]) -> list[InstalledEmbedding]:
    """Load and install embeddings (paths, ``(token, path)`` pairs or Embedding objects) into ``model``.

    Installing the same vectors under the same token again is a no-op; other vectors under a token that is
    already taken are an error, as are two files claiming one token.
    """
    out: list[InstalledEmbedding] = []
    seen: dict[str, str] = {}
    for src in sources:
        emb, path = _load(src)
        where = path or f"embedding '{emb.token}'"
        check_fits(model, emb, where)
        if emb.token in seen:
            raise ModelError(f"{where}: token '{emb.token}' is also given by {seen[emb.token]}: "
                             "rename one (TOKEN=PATH)")
        seen[emb.token] = where
        existing = installed_vectors(model.text_encoder, emb.token)
        if existing is None:
            try:
                add_placeholder(model.tokenizer, model.text_encoder, emb.token, emb.vectors)
            except TokenInVocabulary:
                raise ModelError(f"{where}: token '{emb.token}' is a word the base model already knows: "
                                 "give it another name with TOKEN=PATH "
                                 f"(e.g. '<{emb.token}>={path or 'FILE'}')") from None
        elif existing.shape != emb.vectors.shape or not torch.equal(existing, emb.vectors):
            raise ModelError(f"{where}: token '{emb.token}' is already loaded with other vectors")
        out.append(InstalledEmbedding(emb.token, emb.num_vectors, emb.checksum(), path))
    return out


def _load(src) -> tuple[Embedding, str]:
    """The embedding and the file it came from ("" when it was given in memory)."""
    if isinstance(src, Embedding):
        return src, ""
    if isinstance(src, tuple):
        token, path = src
        return load_embedding(path, token=token), str(path)
    if isinstance(src, (str, os.PathLike)):
        token, path = parse_embedding_arg(str(src))
        return load_embedding(path, token=token), str(path)
    raise TypeError(f"not an embedding source: {src!r}")
