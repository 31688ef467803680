"""Does the disease come in with the weight? The real-only classifiers judge the interpolation sweeps.

``medti interpolate`` draws, per sweep from class A (weight 0) to class B (weight 1), the same seeds at every
weight (``<interpolate.out>/<modality>/interpolate.csv``; a sweep's figure is ``sweep-<A>-to-<B>``, the class
names as the figure names spell them). Every seed of the real-only classifier condition (the reference if it
trains on real images only, else the first condition that does; :func:`~medti.evaluate.agreement.real_only_runs`)
labels every image of the sweep (the most probable class); per weight, the share put in class B, averaged over
the seeds. If the sweep interpolates the disease, that share rises with the weight: ``rises`` says the share at
the highest weight exceeds the one at the lowest and Spearman's rho between weight and share is positive.
Combination figures (``combine-...``), and sweeps whose ends name no class of the modality, are left out.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from medti.errors import InputError

log = logging.getLogger(__name__)

FIGURE = "sweep_judgement.png"
SWEEP = re.compile(r"^sweep-(?P<start>[^-]+)-to-(?P<end>[^-]+)$")  # the names medti interpolate gives sweeps


def read_sweeps(folder, classes: list[str]) -> dict[str, dict]:
    """Figure -> ``{from, to, target, rows}`` of every sweep in an interpolation folder between two of
    ``classes`` (``target``: the index of its ``to`` class; ``rows``: its images, absolute paths)."""
    from medti.generate.interpolate import TABLE, _slug  # _slug: how medti interpolate spells a class in a name

    folder = Path(folder)
    table = folder / TABLE
    if not table.is_file():
        raise InputError(f"{table}: not found; --interpolate takes the folder medti interpolate wrote for this "
                         "modality (<interpolate.out>/<modality>)")
    df = pd.read_csv(table)
    missing = [c for c in ("figure", "weight", "path") if c not in df.columns]
    if missing:
        raise InputError(f"{table}: no column(s) {', '.join(missing)}: not medti interpolate's table")
    by_slug = {_slug(c): c for c in classes}
    out = {}
    for figure, rows in df.groupby(df["figure"].astype(str).str.removesuffix(".png"), sort=True):
        m = SWEEP.match(figure)
        if m is None:
            continue  # a combination of pathologies, or an unnamed standalone sweep
        start, end = by_slug.get(m["start"]), by_slug.get(m["end"])
        if start is None or end is None:
            log.info("%s: %s does not sweep between two classes of %s: not judged", table, figure, classes)
            continue
        rows = rows.dropna(subset=["weight"]).assign(path=lambda r: [str(folder / p) for p in r["path"]])
        if len(rows):
            out[figure] = {"from": start, "to": end, "target": classes.index(end), "rows": rows}
    return out


def _spearman(x, y) -> float:
    """Spearman's rho; NaN where undefined (fewer than two weights, a constant share)."""
    from scipy.stats import spearmanr

    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant input: NaN, said by the value
        return float(spearmanr(x, y).statistic)


def judge_sweeps(runs: dict, folder, classes: list[str]) -> dict[str, dict]:
    """Per sweep (:func:`read_sweeps`): the weights, the share of each weight's images the real-only classifiers
    put in the sweep's ``to`` class (mean over seeds, and per seed), Spearman's rho of share against weight,
    ``rises``, images per weight and the classifier condition. Empty without a sweep or a real-only condition."""
    from medti.classifier.networks import predict
    from medti.classifier.training import load_classifier
    from medti.evaluate.agreement import real_only_runs
    from medti.imageset import read_manifest_images, to_tensor

    sweeps = read_sweeps(folder, classes)
    if not sweeps:
        log.info("%s: no healthy-to-diseased sweep to judge", folder)
        return {}
    condition, rs = real_only_runs(runs)
    if condition is None:
        log.info("no condition trains on real images only: the interpolation sweeps are not judged")
        return {}
    rs = sorted(rs, key=lambda r: r.seed)
    images: dict[int, np.ndarray] = {}  # per classifier input size, every sweep image in order
    paths = [p for s in sweeps.values() for p in s["rows"]["path"]]
    predicted = []  # per seed, the class of every image
    for r in rs:
        net, spec = load_classifier(r.folder)
        if spec.size not in images:
            images[spec.size] = read_manifest_images(paths, size=spec.size)
        predicted.append(predict(net, to_tensor(images[spec.size])).numpy().argmax(axis=1))
    out, start = {}, 0
    for figure, s in sweeps.items():
        rows = s["rows"]
        weight = rows["weight"].to_numpy(dtype=float)
        weights = np.unique(weight)
        hit = [p[start:start + len(rows)] == s["target"] for p in predicted]
        start += len(rows)
        per_seed = np.array([[h[weight == w].mean() for w in weights] for h in hit])
        share = per_seed.mean(axis=0)
        rho = _spearman(weights, share)
        out[figure] = {"from": s["from"], "to": s["to"], "weights": weights.tolist(), "share_target": share.tolist(),
                       "share_target_per_seed": per_seed.tolist(), "spearman": rho,
                       "rises": bool(share[-1] > share[0] and rho > 0),
                       "n_per_weight": [int((weight == w).sum()) for w in weights],
                       "classifier_condition": condition, "seeds": [r.seed for r in rs]}
        log.info("%s: share judged %s by the %s classifiers: %s (Spearman %.2f: %s)", figure, s["to"], condition,
                 ", ".join(f"w={w:.2f} {x:.2f}" for w, x in zip(weights, share)), rho,
                 "rises" if out[figure]["rises"] else "does not rise")
    return out


def sweep_metrics(sweeps: dict[str, dict]) -> dict:
    """metrics.json's ``sweeps``: per sweep (``<from>_to_<to>``) the share at the lowest and highest weight (0 and
    1 in the default sweeps) and Spearman's rho."""
    def key(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)

    return {f"{key(s['from'])}_to_{key(s['to'])}": {"share_at_0": s["share_target"][0],
                                                    "share_at_1": s["share_target"][-1], "spearman": s["spearman"]}
            for s in sweeps.values()}


def sweep_figure(sweeps: dict[str, dict], path, title: str) -> None:
    """Share judged the target class against the weight, one line per sweep (the mean over seeds), the seeds'
    range shaded."""
    from medti.atomic import save_figure
    from medti.figures import _use_agg

    plt = _use_agg()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for i, s in enumerate(sweeps.values()):
        per_seed = np.asarray(s["share_target_per_seed"], dtype=float)
        ax.plot(s["weights"], s["share_target"], marker="o", color=f"C{i % 10}", linewidth=1.6,
                label=f"{s['from']} → {s['to']}: judged {s['to']} (ρ = {s['spearman']:.2f})")
        if len(per_seed) > 1:
            ax.fill_between(s["weights"], per_seed.min(axis=0), per_seed.max(axis=0), color=f"C{i % 10}", alpha=0.15)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("weight of the target class's prompt")
    ax.set_ylabel("share judged the target class")
    first = next(iter(sweeps.values()))
    ax.set_title(f"{title}: judged by the real-only '{first['classifier_condition']}' classifiers "
                 f"({len(first['seeds'])} seeds; shaded: their range)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
