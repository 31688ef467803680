"""How an evaluation is done: params.yaml ``evaluate`` (and the project ``seed``), with the schema's defaults
and bounds. The nested sections are flat here: ``quality.max_images`` is ``max_images``,
``quality.reference`` is ``quality_reference``, ``memorisation.size`` is ``memorisation_size``,
``memorisation.level`` is ``memorisation_level``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medti.config import check_section, schema_default

# field -> (params.yaml section, key there)
SCHEMA_KEYS = {
    "bootstrap": ("evaluate", "bootstrap"),
    "confidence": ("evaluate", "confidence"),
    "reference": ("evaluate", "reference"),
    "min_test_per_class": ("evaluate", "min_test_per_class"),
    "inception": ("evaluate.quality", "inception"),
    "max_images": ("evaluate.quality", "max_images"),
    "kid_subsets": ("evaluate.quality", "kid_subsets"),
    "kid_subset_size": ("evaluate.quality", "kid_subset_size"),
    "quality_reference": ("evaluate.quality", "reference"),
    "threshold": ("evaluate.memorisation", "threshold"),
    "memorisation_size": ("evaluate.memorisation", "size"),
    "memorisation_level": ("evaluate.memorisation", "level"),
    "top_k": ("evaluate.memorisation", "top_k"),
    "seed": ("", "seed"),
}


def _default(field: str):
    section, key = SCHEMA_KEYS[field]
    return schema_default(f"{section}.{key}" if section else key)  # "": a top-level setting (the project seed)


@dataclass
class EvaluateSettings:
    """params.yaml ``evaluate`` (the defaults and bounds are the schema's); ``seed`` is the project seed."""

    bootstrap: int = _default("bootstrap")
    confidence: float = _default("confidence")
    reference: str = _default("reference")
    min_test_per_class: int = _default("min_test_per_class")
    inception: str = _default("inception")            # auto | off
    max_images: int = _default("max_images")          # per set, for FID/KID
    kid_subsets: int = _default("kid_subsets")
    kid_subset_size: int = _default("kid_subset_size")  # at most half the smaller set is used
    quality_reference: str = _default("quality_reference")  # ti (the embeddings' training images) | train
    threshold: float = _default("threshold")          # pixel correlation of a near-copy
    memorisation_size: int = _default("memorisation_size")
    memorisation_level: float = _default("memorisation_level")  # expected share of flags with no copying
    top_k: int = _default("top_k")
    seed: int = _default("seed")

    @classmethod
    def from_section(cls, section: dict, seed: int | None = None, **overrides) -> EvaluateSettings:
        """Settings from a params.yaml ``evaluate`` section (nested ``quality`` and ``memorisation``), the
        project ``seed``, and ``overrides`` (field names; None: not given) on top; checked against the schema."""
        kw = {}
        for name, (where, key) in SCHEMA_KEYS.items():
            if where == "evaluate":
                part = section
            elif where:  # evaluate.quality, evaluate.memorisation
                part = section.get(where.rpartition(".")[2]) or {}
            else:  # the project seed: the ``seed`` argument
                continue
            if key in part:
                kw[name] = part[key]
        if seed is not None:
            kw["seed"] = seed
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw).validate()

    def validate(self, source: str = "evaluate settings", names: dict[str, str] | None = None) -> EvaluateSettings:
        """ConfigError naming the first setting outside the schema's bounds (``names``: field -> e.g. its flag;
        without, its params.yaml key such as ``evaluate.memorisation.size``)."""
        check_values(self.to_dict(), source, names)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_values(values: dict, source: str, names: dict[str, str] | None = None) -> None:
    """Check settings given by field name (any subset) against the schema, section by section."""
    by_section: dict[str, dict] = {}
    for name, value in values.items():
        if name in SCHEMA_KEYS:
            where, key = SCHEMA_KEYS[name]
            by_section.setdefault(where, {})[key] = (name, value)
    for where, items in by_section.items():
        if not where:  # the project seed: any integer
            continue
        flags = {key: (names or {}).get(name) for key, (name, _) in items.items()}
        check_section(where, {key: v for key, (_, v) in items.items()}, source,
                      names={k: f for k, f in flags.items() if f})
