"""A modality's classifier runs (``<classifiers>/<condition>/seed<N>/`` of ``medti train-classifier``): found,
read and checked against the real test split; their ROC curves and confusion counts, per condition."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medti.atomic import save_figure
from medti.classifier.outputs import confusion
from medti.errors import InputError
from medti.evaluate.statistics import roc_curve, roc_on_grid
from medti.figures import _use_agg

log = logging.getLogger(__name__)

SEED_FOLDER = re.compile(r"^seed(\d+)$")
ROC_GRID = np.linspace(0.0, 1.0, 101)


@dataclass
class ClassifierRun:
    """One trained classifier: its test-set class probabilities, in the real manifest's test order."""

    condition: str
    seed: int
    folder: Path
    metrics: dict
    probs: np.ndarray


# -- finding and reading runs ---------------------------------------------------------------------------

def find_runs(classifiers: Path, conditions: list[str] | None = None,
              seeds: list[int] | None = None) -> list[tuple[str, int, Path]]:
    """(condition, seed, folder) of every run; the named ones must all exist, else those found on disk."""
    if not classifiers.is_dir():
        raise InputError(f"{classifiers}: classifier folder not found (run medti train-classifier first)")
    if conditions is None:
        conditions = sorted(p.name for p in classifiers.iterdir()
                            if p.is_dir() and not p.name.startswith(".") and any(
                                SEED_FOLDER.match(q.name) for q in p.iterdir() if q.is_dir()))
    runs = []
    for condition in conditions:
        folder = classifiers / condition
        found = seeds if seeds is not None else sorted(
            int(m.group(1)) for q in (folder.iterdir() if folder.is_dir() else []) if (m := SEED_FOLDER.match(q.name)))
        runs.extend((condition, int(s), folder / f"seed{s}") for s in found)
    if not runs:
        raise InputError(f"{classifiers}: no classifier runs (<condition>/seed<N> folders) found")
    for condition, seed, folder in runs:
        for name in ("metrics.json", "predictions.csv"):
            if not (folder / name).is_file():
                raise InputError(f"{folder}: classifier run of condition '{condition}', seed {seed} is missing or "
                                 f"incomplete (no {name}); train it with medti train-classifier")
    return runs


def read_predictions(folder: Path, test_ids: list[str], test_labels: np.ndarray, classes: list[str],
                     real_manifest) -> np.ndarray:
    """The run's class probabilities, rows in ``test_ids`` order; checks they are this test split's."""
    path = folder / "predictions.csv"
    df = pd.read_csv(path)
    columns = [f"p_{c}" for c in classes]
    missing = [c for c in ["id", "label"] + columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: no column(s) {', '.join(missing)}: the classifier was trained for other classes "
                         f"than {classes}")
    if len(df) != len(test_ids) or set(df["id"]) != set(test_ids):
        raise InputError(f"{path}: its {len(df)} test predictions are not the {len(test_ids)} images of the test "
                         f"split of {real_manifest}; retrain the classifiers on this data")
    df = df.set_index("id").loc[test_ids]
    if not np.array_equal(df["label"].to_numpy(dtype=int), test_labels):
        raise InputError(f"{path}: its test labels differ from those in {real_manifest}; retrain the classifiers")
    probs = df[columns].to_numpy(dtype=float)
    if not np.all(np.isfinite(probs)):
        raise InputError(f"{path}: holds probabilities that are not finite numbers")
    return probs


def load_runs(classifiers, test: pd.DataFrame, classes: list[str], real_manifest, conditions=None,
              seeds=None) -> dict[str, list[ClassifierRun]]:
    out: dict[str, list[ClassifierRun]] = {}
    ids, labels = list(test["rel"]), test["label"].to_numpy(dtype=int)
    for condition, seed, folder in find_runs(Path(classifiers), conditions, seeds):
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        probs = read_predictions(folder, ids, labels, classes, real_manifest)
        out.setdefault(condition, []).append(ClassifierRun(condition, seed, folder, metrics, probs))
    return out


def real_only(rs: list[ClassifierRun]) -> bool:
    """Every run of a condition trained on real images only (no synthetic training images)."""
    return bool(rs) and all(r.metrics.get("n_synthetic", 1) == 0 and r.metrics.get("n_real", 0) > 0 for r in rs)


def feature_run(runs: dict[str, list[ClassifierRun]], reference: str) -> ClassifierRun:
    """The classifier whose features measure quality and similarity: a real-only one (no synthetic training
    images), the reference condition's if it is one; its lowest seed. Failing that, the reference's."""
    order = [reference] + [c for c in runs if c != reference]
    for condition in order:
        if condition in runs and real_only(runs[condition]):
            return min(runs[condition], key=lambda r: r.seed)
    log.warning("no condition trains on real images only: image features come from the '%s' classifier, which "
                "saw synthetic images", reference)
    return min(runs[reference], key=lambda r: r.seed)


# -- ROC and confusion ---------------------------------------------------------------------------------------

def roc_table(labels: np.ndarray, runs: dict[str, list[ClassifierRun]]) -> pd.DataFrame:
    """Long format ``condition, seed, fpr, tpr``: each binary run's exact ROC curve; for K > 2 classes the
    one-vs-rest macro-average curve on a grid of 101 false positive rates."""
    parts = []
    for condition, rs in runs.items():
        for r in rs:
            if r.probs.shape[1] == 2:
                fpr, tpr = roc_curve(labels == 1, r.probs[:, 1])
            else:
                fpr, tpr = ROC_GRID, roc_on_grid(labels, r.probs, ROC_GRID)
            parts.append(pd.DataFrame({"condition": condition, "seed": r.seed, "fpr": fpr, "tpr": tpr}))
    return pd.concat(parts, ignore_index=True)


def conditions_roc_figure(labels: np.ndarray, runs: dict[str, list[ClassifierRun]], table: dict, path: Path,
                          title: str) -> None:
    """Mean ROC curve of each condition over its seeds, with a band of +- one standard deviation."""
    plt = _use_agg()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    for i, (condition, rs) in enumerate(runs.items()):
        tprs = np.array([roc_on_grid(labels, r.probs, ROC_GRID) for r in rs])
        mean, std = tprs.mean(axis=0), tprs.std(axis=0)
        row = table[condition]
        ax.plot(ROC_GRID, mean, color=f"C{i}", linewidth=1.6,
                label=f"{condition}: AUC {row['auc_mean']:.3f} ± {row['auc_std']:.3f} (n={len(rs)})")
        if len(rs) > 1:
            ax.fill_between(ROC_GRID, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=f"C{i}", alpha=0.15)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    multiclass = bool(runs) and next(iter(runs.values()))[0].probs.shape[1] > 2
    ax.set_ylabel("true positive rate" + (" (one-vs-rest mean)" if multiclass else ""))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def confusions(labels: np.ndarray, runs: dict[str, list[ClassifierRun]], k: int) -> dict[str, np.ndarray]:
    """Per condition, the confusion matrix of all its seeds' test predictions added up."""
    return {condition: sum(confusion(labels, r.probs, k) for r in rs) for condition, rs in runs.items()}


