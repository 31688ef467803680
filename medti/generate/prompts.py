"""Prompts: AUTOMATIC1111's composable-diffusion syntax, embedding-space blends, and checks against the
loaded text encoder.

``"healthy:0.3 AND diseased:0.7"`` is two sub-prompts with weights; each is a separate conditional branch
of the UNet and their noise predictions are combined (composable diffusion, Liu et al. 2022, as the paper's
A1111 runs did). A sub-prompt without ``:weight`` has weight 1. In a prompt with ``AND``, a sub-prompt
ending in ``:word`` where the word is not a number is an error (a mistyped weight), not text; in a single
prompt only a trailing ``:number`` is read as a weight, so ordinary colons stay text.

A :class:`Blend` is the alternative to weighting noise predictions: embedding-space interpolation. The
token embeddings of two prompts (the learned vectors of their placeholders included) are interpolated
position by position, linearly or spherically, and the text encoder encodes the mix into one conditioning;
prompts that differ only in their class token (the same template) blend exactly the two embeddings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from medti.errors import ConfigError

AND = re.compile(r"\s+AND\s+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TRAILING = re.compile(r"^(?P<text>.*?)\s*:\s*(?P<weight>[^\s:]+)\s*$", re.S)
_DANGLING_AND = re.compile(r"^AND$|^AND\s|\sAND$")
PLACEHOLDER = re.compile(r"<[^<>|\s]+>")
BLEND_MODES = ("linear", "slerp")


@dataclass(frozen=True)
class Blend:
    """The conditioning ``enc((1 - t) * emb(a) + t * emb(b))`` (``linear``) or its spherical counterpart,
    with ``emb`` the token embeddings of a prompt and ``enc`` the rest of the text encoder."""

    a: str
    b: str
    t: float
    mode: str = "linear"

    def __post_init__(self):
        if self.mode not in BLEND_MODES:
            raise ConfigError(f"blend mode '{self.mode}': choose one of {', '.join(BLEND_MODES)}")
        if not math.isfinite(self.t):
            raise ConfigError(f"blend of '{self.a}' and '{self.b}': weight {self.t} is not a finite number")

    def texts(self) -> tuple[str, str]:
        return self.a, self.b

    def __str__(self) -> str:
        return f"{self.mode}({self.a!r}, {self.b!r}, {self.t:g})"


@dataclass(frozen=True)
class WeightedPrompt:
    """One image's conditioning: sub-prompts (or blends) with weights, combined in noise-prediction space."""

    terms: tuple[tuple[str | Blend, float], ...]

    def texts(self) -> list[str]:
        out: list[str] = []
        for cond, _ in self.terms:
            out.extend(cond.texts() if isinstance(cond, Blend) else (cond,))
        return out

    def __str__(self) -> str:
        return " AND ".join(str(c) if w == 1 else f"{c}:{w:g}" for c, w in self.terms)


def parse_weighted_prompt(prompt: str) -> WeightedPrompt:
    """Parse A1111's ``"a:0.3 AND b:0.7"``; raise ConfigError naming the prompt for a weight that does not parse."""
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt {prompt!r}: expected text")
    parts = AND.split(prompt.strip())
    composable = len(parts) > 1
    terms = []
    for part in parts:
        text, weight = part.strip(), 1.0
        if _DANGLING_AND.search(text):
            raise ConfigError(f"prompt '{prompt}': empty sub-prompt around 'AND'")
        if composable and text.endswith(":"):
            raise ConfigError(f"prompt '{prompt}': sub-prompt '{text}' ends in ':' without a weight "
                              "(expected e.g. 'healthy:0.3 AND diseased:0.7')")
        m = _TRAILING.match(text)
        if m:
            raw = m.group("weight")
            if _NUMBER.fullmatch(raw):
                text, weight = m.group("text").strip(), float(raw)
            elif composable or _NUMBER.match(raw):
                raise ConfigError(f"prompt '{prompt}': weight '{raw}' of sub-prompt '{m.group('text').strip()}' "
                                  "is not a number (expected e.g. 'healthy:0.3 AND diseased:0.7')")
        if composable and not text:
            raise ConfigError(f"prompt '{prompt}': empty sub-prompt around 'AND'")
        if not math.isfinite(weight):
            raise ConfigError(f"prompt '{prompt}': weight {weight} is not a finite number")
        terms.append((text, weight))
    return WeightedPrompt(tuple(terms))


def as_weighted(prompt: str | WeightedPrompt | Blend) -> WeightedPrompt:
    if isinstance(prompt, WeightedPrompt):
        return prompt
    if isinstance(prompt, Blend):
        return WeightedPrompt(((prompt, 1.0),))
    return parse_weighted_prompt(prompt)


def weighted(pairs) -> WeightedPrompt:
    """A WeightedPrompt from ``[(prompt, weight), ...]`` (prompts as text or Blend)."""
    return WeightedPrompt(tuple((c, float(w)) for c, w in pairs))


def check_tokens(prompt: str, tokenizer, known: dict[str, int]) -> None:
    """Every ``<...>`` in ``prompt`` must be a loaded placeholder (or a token of the vocabulary)."""
    vocab = None
    for token in PLACEHOLDER.findall(prompt):
        if token in known:
            continue
        vocab = vocab if vocab is not None else tokenizer.get_vocab()
        if token in vocab or f"{token}</w>" in vocab:
            continue
        loaded = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"prompt '{prompt}': unknown token '{token}': no embedding is loaded for it "
                          f"(loaded: {loaded})")


def interpolate_vectors(a, b, t: float, mode: str):
    """Row-wise linear or spherical interpolation between two tensors of the same shape [..., dim]."""
    import torch

    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    if mode == "linear":
        return torch.lerp(a, b, t)
    a32, b32 = a.float(), b.float()
    na, nb = a32.norm(dim=-1, keepdim=True), b32.norm(dim=-1, keepdim=True)
    ua, ub = a32 / na.clamp_min(1e-12), b32 / nb.clamp_min(1e-12)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    # Nearly parallel rows: fall back to the linear formula (the spherical one divides by ~0).
    near = sin.abs() < 1e-4
    wa = torch.where(near, torch.full_like(omega, 1 - t),
                     torch.sin((1 - t) * omega) / sin.where(~near, torch.ones_like(sin)))
    wb = torch.where(near, torch.full_like(omega, t), torch.sin(t * omega) / sin.where(~near, torch.ones_like(sin)))
    # Interpolate the direction on the sphere and the length linearly.
    direction = wa * ua + wb * ub
    length = torch.lerp(na, nb, t)
    return (direction * length).to(a.dtype)
