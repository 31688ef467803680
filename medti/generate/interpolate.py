"""Disease interpolation and combined pathologies: sweeps of weighted prompts drawn into labelled grids.

A sweep from prompt A (weight 0) to prompt B (weight 1) draws, for every weight w, ``n`` images with the
same ``n`` seeds (one per column), so one row differs from the next only by w:

- ``noise`` mode: ``"A:(1-w) AND B:w"``, combined in noise-prediction space (composable diffusion, as in
  the paper's AUTOMATIC1111 runs);
- ``linear`` / ``slerp``: embedding-space interpolation, the token embeddings of A and B (their learned
  vectors) mixed linearly or spherically (:class:`medti.generate.prompts.Blend`).

A combination draws each pathology alone and then all of them at once (``"A AND B ..."``), again with
shared seeds. Outputs in OUT: ``<figure>.png`` (the labelled grid), ``<figure>/<row>-s<column>.png`` (the
images) and ``interpolate.csv`` (one row per image: prompt, weight, seed, settings, embedding checksums).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medti.errors import ConfigError

if TYPE_CHECKING:
    from medti.generate.embedding_install import EmbeddingSource
    from medti.generate.jobs import Loaded, Runtime

log = logging.getLogger(__name__)

TABLE = "interpolate.csv"
MODES = ("noise", "linear", "slerp")


@dataclass(frozen=True)
class GridRow:
    """One row of a figure: its label, the conditioning every image of the row shares, its weight."""

    label: str
    prompt: object  # str | WeightedPrompt | Blend
    weight: float | None = None


def check_weights(weights: Iterable[float] | None) -> list[float]:
    weights = [float(w) for w in (weights or [])]
    if not weights:
        raise ConfigError("interpolation weights: give at least one (e.g. --weights 0,0.25,0.5,0.75,1)")
    bad = [w for w in weights if not math.isfinite(w) or not 0.0 <= w <= 1.0]
    if bad:
        raise ConfigError(f"interpolation weight {bad[0]:g}: weights must lie between 0 (start) and 1 (end)")
    return weights


def sweep_rows(start: str, end: str, weights: Iterable[float] | None, mode: str = "noise") -> list[GridRow]:
    """The rows of a sweep from ``start`` (weight 0) to ``end`` (weight 1)."""
    from medti.generate.prompts import AND, Blend, weighted

    if mode not in MODES:
        raise ConfigError(f"interpolation mode '{mode}': choose one of {', '.join(MODES)}")
    if mode != "noise" and (AND.search(start) or AND.search(end)):
        raise ConfigError(f"{mode} interpolation blends two plain prompts; '{start}' / '{end}' use 'AND' "
                          "(use --mode noise for weighted sub-prompts)")
    rows = []
    for w in check_weights(weights):
        prompt = weighted([(start, 1.0 - w), (end, w)]) if mode == "noise" else Blend(start, end, w, mode)
        rows.append(GridRow(f"w = {w:.2f}", prompt, w))
    return rows


def combine_rows(prompts: list[str], labels: list[str] | None = None) -> list[GridRow]:
    """Each pathology alone, then all of them together (sub-prompts keep their own ``:weight``)."""
    from medti.generate.prompts import parse_weighted_prompt

    if len(prompts) < 2:
        raise ConfigError(f"combining pathologies needs at least two prompts or classes, got {len(prompts)}")
    labels = list(labels or prompts)
    joined = " AND ".join(prompts)
    parse_weighted_prompt(joined)  # weights that do not parse fail here, naming the prompt
    return [GridRow(label, p) for label, p in zip(labels, prompts)] + [GridRow(" + ".join(labels), joined)]


@dataclass
class Figure:
    name: str
    title: str
    rows: list[GridRow]
    mode: str = "noise"  # how its rows mix prompts (combinations always weight noise predictions)


def draw_figures(loaded: Loaded, figures: list[Figure], out: str | os.PathLike, cfg: dict) -> Path:
    """Draw every figure (rows x ``cfg['n']`` seeds) into ``out``; write the grids and ``interpolate.csv``."""
    from medti.atomic import atomic_dir, sweep_stale_temporaries
    from medti.generate.sampling import Sampler
    from medti.generate.synthetic import derive_seed

    out = Path(out)
    n = int(cfg["n"])
    seeds = [derive_seed(int(cfg["seed"]), "interpolate", j) for j in range(n)]
    sampler = Sampler(loaded.model, device=loaded.device, dtype=loaded.dtype)
    prompts = [row.prompt for fig in figures for row in fig.rows]
    sampler.validate(prompts, cfg["negative_prompt"], cfg["scheduler"], cfg["resolution"])
    _check_output(out)
    sweep_stale_temporaries(out.parent, name=out.name)
    with atomic_dir(out) as tmp:  # locked; the figures appear together when all are drawn
        _draw(loaded, sampler, figures, tmp, cfg, seeds, out)
    return out / TABLE


def _check_output(out: Path) -> None:
    """``out`` is replaced whole: it may hold nothing but an earlier interpolation output."""
    from medti.errors import InputError

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / TABLE).is_file())):
        raise InputError(f"{out}: holds files that are not an interpolation output (no {TABLE}); the figures "
                         "replace the folder, so choose an empty or new folder")


def _draw(loaded: Loaded, sampler, figures: list[Figure], out: Path, cfg: dict, seeds: list[int], final: Path):
    import pandas as pd

    from medti.atomic import atomic_path
    from medti.figures import image_grid
    from medti.generate.synthetic import save_png

    n = len(seeds)
    records = []
    for fig in figures:
        images = sampler.sample([row.prompt for row in fig.rows for _ in seeds], seeds * len(fig.rows),
                                negative_prompt=cfg["negative_prompt"], steps=int(cfg["steps"]),
                                guidance=float(cfg["guidance"]), scheduler=cfg["scheduler"],
                                resolution=cfg["resolution"], batch_size=int(cfg["batch_size"]),
                                progress_desc=f"interpolate {fig.name}")
        for r, row in enumerate(fig.rows):
            for j, seed in enumerate(seeds):
                rel = f"{fig.name}/{r:02d}-{_slug(row.label)}-s{j}.png"
                save_png(images[r * n + j], out / rel)
                records.append({"figure": f"{fig.name}.png", "row": r, "label": row.label, "weight": row.weight,
                                "column": j, "seed": seed, "prompt": str(row.prompt), "mode": fig.mode, "path": rel,
                                "embedding_checksum": loaded.checksums(row.prompt),
                                "base_model": loaded.model.model_id, "steps": int(cfg["steps"]),
                                "guidance": float(cfg["guidance"]), "scheduler": cfg["scheduler"],
                                "negative_prompt": cfg["negative_prompt"]})
        image_grid(list(images), out / f"{fig.name}.png", ncols=n, row_labels=[row.label for row in fig.rows],
                   titles=[f"sample {j + 1}" for j in range(n)], suptitle=fig.title)
        log.info("%s: %d x %d images -> %s", fig.name, len(fig.rows), n, final / f"{fig.name}.png")
    with atomic_path(out / TABLE) as tmp:
        pd.DataFrame(records).to_csv(tmp, index=False, lineterminator="\n")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")[:40] or "row"


def _check_request(start, end, combine) -> None:
    if bool(start) != bool(end):
        raise ConfigError("a sweep needs both --from and --to")
    if combine and len(combine) < 2:
        raise ConfigError(f"combining pathologies needs at least two --combine, got {len(combine)}")


def _figures(loaded, start, end, combine, mode, weights, names: dict[str, str] | None = None) -> list[Figure]:
    """The sweep (start -> end) and the combination figures; ``names`` maps prompts to class names."""
    _check_request(start, end, combine)
    names = names or {}
    label = lambda p: names.get(p, p)  # noqa: E731
    figures = []
    if start:
        a, b = loaded.resolve(start), loaded.resolve(end)
        name = f"sweep-{_slug(label(a))}-to-{_slug(label(b))}" if names else "sweep"
        how = "composable diffusion" if mode == "noise" else f"{mode} embedding interpolation"
        figures.append(Figure(name, f"{label(a)} -> {label(b)} ({how}; w = weight of {label(b)})",
                              sweep_rows(a, b, weights, mode), mode))
    if combine:
        prompts = [loaded.resolve(c) for c in combine]
        labels = [label(p) for p in prompts]
        name = "combine-" + "+".join(_slug(x) for x in labels) if names else "combine"
        figures.append(Figure(name, "combined: " + " + ".join(labels), combine_rows(prompts, labels)))
    return figures


def interpolate_modality(params: dict, modality: str, embeddings_dir: str | os.PathLike, out: str | os.PathLike, *,
                         runtime: Runtime | None = None, start: str | None = None, end: str | None = None,
                         combine: Sequence[str] = (), **cli) -> Path:
    """Pipeline form: by default a sweep from the first class (healthy) to each other class, and, with
    several disease classes, all of them combined. ``start``/``end``/``combine`` may name classes."""
    from medti.generate.jobs import load_modality, settings

    cfg = settings(params, modality, "interpolate", **cli)
    check_weights(cfg["weights"])
    _check_request(start, end, combine)
    loaded = load_modality(params, modality, embeddings_dir, runtime)
    classes = list(loaded.class_prompts)
    names = {loaded.resolve(c): c for c in classes}
    if start or end or combine:
        figures = _figures(loaded, start, end, list(combine), cfg["mode"], cfg["weights"], names)
    else:
        figures = [f for c in classes[1:]
                   for f in _figures(loaded, classes[0], c, (), cfg["mode"], cfg["weights"], names)]
        if len(classes) > 2:
            figures += _figures(loaded, None, None, classes[1:], cfg["mode"], cfg["weights"], names)
    return _run(params, loaded, figures, out, cfg, modality, inputs={"embeddings": Path(embeddings_dir)})


def interpolate_standalone(out: str | os.PathLike, *, start: str | None = None, end: str | None = None,
                           combine: Sequence[str] = (), embeddings: Iterable[EmbeddingSource] = (),
                           params: dict | None = None, runtime: Runtime | None = None, **cli) -> Path:
    """Standalone form: a sweep ``start`` -> ``end`` and/or a combination of ``combine`` prompts."""
    from medti.generate.jobs import load_standalone, settings

    if not (start or end or combine):
        raise ConfigError("give --from PROMPT --to PROMPT (a sweep) and/or --combine PROMPT --combine PROMPT")
    cfg = settings(params, None, "interpolate", **cli)
    check_weights(cfg["weights"])
    _check_request(start, end, combine)
    loaded = load_standalone(embeddings, runtime, params)
    figures = _figures(loaded, start, end, list(combine), cfg["mode"], cfg["weights"])
    return _run(params, loaded, figures, out, cfg, "custom")


def _run(params, loaded, figures: list[Figure], out, cfg: dict, modality: str, inputs=None) -> Path:
    from medti.tracking import track

    with track(params, "interpolate", run_name=f"interpolate-{modality}", inputs=inputs,
               tags={"modality": modality, "base_model": loaded.model.model_id}) as t:
        t.log_params(dict(cfg) | {"figures": ",".join(f.name for f in figures)})
        table = draw_figures(loaded, figures, out, cfg)
        for fig in figures:
            t.log_artifact(Path(out) / f"{fig.name}.png")
    return table
