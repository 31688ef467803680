"""Splicing learned vectors into a frozen CLIP text encoder.

transformers 5's CLIPTextModel takes no ``inputs_embeds``, and resizing the whole vocabulary matrix to
train a few rows wastes memory and optimiser state (diffusers' example does this, then restores the
other rows each step). Instead, as the AUTOMATIC1111 web UI does, the token-embedding layer is wrapped:
ids of placeholder tokens look up rows of small extra parameters, every other id the frozen matrix. Only
the extra vectors can receive gradients, and the lookup has no data-dependent branch (no host sync).

Placeholder tokens follow diffusers' multi-vector convention: ``<t>`` with N vectors is the N tokens
``<t> <t>_1 ... <t>_{N-1}`` added to the tokenizer, and prompts name just ``<t>``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from medti.errors import ModelError


class TokenInVocabulary(ModelError):
    """A placeholder that is already a token or a whole word of the tokenizer's vocabulary."""

    def __init__(self, token: str):
        super().__init__(f"token '{token}' is already in the tokenizer's vocabulary: choose another placeholder")
        self.token = token


def vector_tokens(token: str, n: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, n)]


class ExtendedTokenEmbedding(nn.Module):
    """A frozen ``nn.Embedding`` plus blocks of extra vectors addressed by their own token ids."""

    def __init__(self, base: nn.Embedding):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.vectors = nn.ParameterDict()
        self.token_ids: dict[str, list[int]] = {}
        self.register_buffer("lut", torch.full((base.num_embeddings,), -1, dtype=torch.long), persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # what transformers reads for dtype/device
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def add(self, token: str, ids: list[int], vectors: torch.Tensor, trainable: bool = False) -> nn.Parameter:
        if vectors.ndim != 2 or vectors.shape[1] != self.embedding_dim:
            raise ModelError(
                f"embedding '{token}' has vectors of width {tuple(vectors.shape)[-1]}, "
                f"but this text encoder's width is {self.embedding_dim}: it was trained for another base model"
            )
        key = _key(token)
        param = nn.Parameter(vectors.detach().to(device=self.base.weight.device, dtype=torch.float32).clone(),
                             requires_grad=trainable)
        self.vectors[key] = param
        self.token_ids[token] = list(ids)
        self._rebuild_lut()
        return param

    def _rebuild_lut(self) -> None:
        max_id = max([self.base.num_embeddings - 1] + [i for ids in self.token_ids.values() for i in ids])
        lut = torch.full((max_id + 1,), -1, dtype=torch.long, device=self.base.weight.device)
        offset = 0
        for _token, ids in self.token_ids.items():
            lut[torch.tensor(ids, device=lut.device)] = torch.arange(offset, offset + len(ids), device=lut.device)
            offset += len(ids)
        self.lut = lut

    def extra_matrix(self) -> torch.Tensor:
        return torch.cat([self.vectors[_key(t)] for t in self.token_ids], dim=0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.token_ids:
            return self.base(input_ids)
        row = self.lut[input_ids]
        is_extra = row >= 0
        base_ids = torch.where(is_extra, torch.zeros_like(input_ids), input_ids)
        out = self.base(base_ids)
        extra = self.extra_matrix().to(out.dtype)[row.clamp(min=0)]
        return torch.where(is_extra.unsqueeze(-1), extra, out)


def _key(token: str) -> str:
    # ParameterDict keys may not contain '.'.
    return re.sub(r"[^0-9A-Za-z_]", lambda m: f"x{ord(m.group()):02x}", token)


def _embeddings(text_encoder: nn.Module) -> nn.Module:
    # transformers 5 flattened CLIPTextModel (no .text_model); 4.x nests it.
    return getattr(text_encoder, "text_model", text_encoder).embeddings


def install_extended_embedding(text_encoder: nn.Module) -> ExtendedTokenEmbedding:
    """Wrap the text encoder's token embedding once; return the wrapper."""
    emb = _embeddings(text_encoder)
    if isinstance(emb.token_embedding, ExtendedTokenEmbedding):
        return emb.token_embedding
    emb.token_embedding = ExtendedTokenEmbedding(emb.token_embedding)
    return emb.token_embedding


def add_placeholder(tokenizer, text_encoder, token: str, vectors: torch.Tensor,
                    trainable: bool = False) -> nn.Parameter:
    """Add ``token`` (with ``len(vectors)`` sub-tokens) to the tokenizer and its vectors to the encoder."""
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    names = vector_tokens(token, vectors.shape[0])
    vocab = tokenizer.get_vocab()
    # A placeholder must be new: neither an added token nor a whole word of the vocabulary ("chest</w>").
    clash = [t for t in names if t in vocab or f"{t}</w>" in vocab]
    if clash:
        raise TokenInVocabulary(clash[0])
    if len(tokenizer.tokenize(token)) > 1 and not re.fullmatch(r"\S+", token):
        raise ModelError(f"placeholder token '{token}' must be one word without spaces")
    added = tokenizer.add_tokens(names, special_tokens=False)
    if added != len(names):
        raise ModelError(f"could not add all sub-tokens of '{token}' to the tokenizer")
    ids = tokenizer.convert_tokens_to_ids(names)
    layer = install_extended_embedding(text_encoder)
    return layer.add(token, ids, vectors, trainable=trainable)


def expand_prompt(prompt: str, tokens: dict[str, int]) -> str:
    """Replace each multi-vector placeholder by its sub-tokens (``<t>`` -> ``<t> <t>_1 ...``)."""
    for token, n in sorted(tokens.items(), key=lambda kv: -len(kv[0])):
        if n > 1:
            prompt = re.sub(re.escape(token) + r"(?!_\d)", " ".join(vector_tokens(token, n)), prompt)
    return prompt


def placeholder_tokens(text_encoder) -> dict[str, int]:
    """The placeholder tokens installed in ``text_encoder`` with their vector counts."""
    emb = _embeddings(text_encoder).token_embedding
    if not isinstance(emb, ExtendedTokenEmbedding):
        return {}
    return {t: len(ids) for t, ids in emb.token_ids.items()}
