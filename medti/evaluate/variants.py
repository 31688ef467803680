"""Embedding variants in an evaluation (``train_embedding.variants``, the embedding-size ablation): the synthetic
sets, one per variant; the variant each classifier condition drew its synthetic images from; and which
conditions are compared across variants.

On disk a variant's synthetic set is ``<generate.out>/<modality>/<variant>/manifest.csv`` and its embeddings
``<train_embedding.out>/<modality>/<class>/<variant>.safetensors``. A single manifest (or a folder holding one
directly: the older layout, or a standalone set) is one set, taken as the main variant; a flat folder of
``<class>.safetensors`` serves every variant.

Which variant a condition used: params.yaml's ``classifier.conditions.<c>.variant`` in pipeline mode (the first
variant where it names none), none for a condition with no synthetic images; standalone, the ``variant`` its
runs' metrics.json record, else the main variant. A condition on another variant than the main one is compared
with the condition that takes the same amounts of real and synthetic images on the main variant (params.yaml's
``real``/``synthetic``; standalone, the counts its runs recorded).
"""

from __future__ import annotations

import logging
from pathlib import Path

from medti.config import condition_variant, embedding_file, main_variant, stage
from medti.config import variants as params_variants
from medti.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MAIN = main_variant({})  # the schema's one variant, when nothing names another


def synthetic_sets(path, expected: list[str] | None = None) -> dict[str, Path]:
    """Variant -> its synthetic manifest, the main variant first. ``path``: a manifest, a folder holding
    manifest.csv (either: one set, the main variant), or a folder of ``<variant>/manifest.csv``. ``expected``:
    the variants params.yaml names, main first (pipeline: each must be there); None: the subfolders found (the
    main one is the schema's default name where present, else the first by name)."""
    path = Path(path)
    main = expected[0] if expected else DEFAULT_MAIN
    if path.is_file():
        return {main: path}
    if (path / "manifest.csv").is_file():
        return {main: path / "manifest.csv"}
    if not path.is_dir():
        raise InputError(f"{path}: no synthetic set (a manifest.csv, or a folder of <variant>/manifest.csv); run "
                         "medti generate")
    found = {p.name: p / "manifest.csv" for p in sorted(path.iterdir()) if (p / "manifest.csv").is_file()}
    if expected:
        missing = [v for v in expected if v not in found]
        if missing:
            raise InputError(f"{path}: no synthetic set of variant(s) {', '.join(missing)} "
                             f"(<variant>/manifest.csv); run medti generate for them")
        extra = sorted(set(found) - set(expected))
        if extra:
            log.info("%s: synthetic set(s) %s are no variant of params.yaml: not evaluated", path, ", ".join(extra))
        return {v: found[v] for v in expected}
    if not found:
        raise InputError(f"{path}: no synthetic set (neither manifest.csv nor <variant>/manifest.csv); run medti "
                         "generate")
    return {v: found[v] for v in sorted(found, key=lambda v: v != main)}


def embedding_path(folder, class_name: str, variant: str | None) -> Path:
    """A class's embedding for ``variant``: ``<folder>/<class>/<variant>.safetensors`` where the folder has one
    folder per class (the pipeline's layout), else the flat ``<folder>/<class>.safetensors``."""
    folder = Path(folder)
    per_variant = variant is not None and (folder / class_name).is_dir()
    return embedding_file(folder, class_name, variant if per_variant else None)


def _conditions(params: dict | None) -> dict:
    return ((params or {}).get("classifier") or {}).get("conditions") or {}


def condition_variants(runs: dict, params: dict | None, main: str) -> dict[str, str | None]:
    """Per condition, the variant its synthetic images came from (None: it trained on none)."""
    specs = _conditions(params)
    out = {}
    for c, rs in runs.items():
        spec = specs.get(c)
        if spec is not None:
            out[c] = None if spec.get("synthetic") == 0 else condition_variant(params, c)
        elif all(r.metrics.get("n_synthetic") == 0 for r in rs):
            out[c] = None
        else:
            recorded = {r.metrics.get("variant") for r in rs} - {None}
            out[c] = recorded.pop() if len(recorded) == 1 else main
    return out


def _amounts(rs: list, spec: dict | None, set_size: int | None) -> tuple:
    """A condition's real and synthetic amounts: params.yaml's, else the counts its runs recorded (the whole of
    its variant's synthetic set, ``set_size`` images, as "all", so the sets' sizes may differ)."""
    if spec is not None:
        return "params", str(spec.get("real")), str(spec.get("synthetic"))
    synthetic = {r.metrics.get("n_synthetic") for r in rs}
    return "runs", frozenset(r.metrics.get("n_real") for r in rs), frozenset(
        "all" if set_size and n == set_size else n for n in synthetic)


def cross_variant_pairs(runs: dict, params: dict | None, variant_of: dict[str, str | None], main: str,
                        set_sizes: dict[str, int] | None = None) -> dict[str, str]:
    """Condition on another variant than ``main`` -> the condition with the same amounts on ``main``.
    ``set_sizes``: images per variant's synthetic set (standalone: a run that took all of it took "all")."""
    specs = _conditions(params)
    amounts = {c: _amounts(rs, specs.get(c), (set_sizes or {}).get(variant_of[c])) for c, rs in runs.items()}
    out = {}
    for c, v in variant_of.items():
        if v is None or v == main:
            continue
        match = next((o for o, ov in variant_of.items() if ov == main and amounts[o] == amounts[c]), None)
        if match is None:
            log.info("condition %s (variant %s): no condition takes the same amounts on the main variant %s; it is "
                     "compared with the reference only", c, v, main)
        else:
            out[c] = match
    return out


def variant_facts(name: str, embeddings: dict[str, dict] | None, params: dict | None,
                  modality: str | None) -> dict:
    """A variant's images per embedding, steps and vectors: from its embeddings' metadata (the smallest over the
    classes where they differ), else from params.yaml's variant (pipeline), else None."""
    out = {}
    for key in ("images", "steps", "num_vectors"):
        values = [e.get(key) for e in (embeddings or {}).values() if e.get(key) is not None]
        out[key] = min(values) if values else None
    known = params is not None and (modality is None or modality in (params.get("modalities") or {}))
    spec = params_variants(params).get(name) if known else None
    if spec is not None:
        fallback = {"images": spec["images"] or stage(params, "prepare", modality).get("ti_per_class"),
                    "steps": spec["steps"] or stage(params, "train_embedding", modality).get("steps"),
                    "num_vectors": spec["num_vectors"] or stage(params, "train_embedding", modality).get("num_vectors")}
        out = {k: v if v is not None else fallback[k] for k, v in out.items()}
    return out
