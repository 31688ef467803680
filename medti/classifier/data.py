"""The images a classifier experiment uses: which real and synthetic rows, checked, read into memory.

A condition (params.yaml ``classifier.conditions``) says how many real training images and how many
synthetic images to train on: ``all`` or a count. A count draws a class-stratified random subset (seeded
by the run's seed, so the draw is part of what varies between seeds). Validation (model selection) and
testing always use the real ``val`` and ``test`` splits, whatever the condition.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medti.errors import ConfigError, InputError
from medti.evaluate.statistics import require_classes
from medti.imageset import read_manifest_images, to_tensor
from medti.manifest import read_manifest

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split in memory: uint8 images ``N x 3 x H x W``, integer labels and an id per image."""

    images: object   # torch.Tensor (kept untyped so this module imports without torch)
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ExperimentData:
    classes: list[str]
    train: Split
    val: Split
    test: Split
    n_real: int
    n_synthetic: int


def parse_count(value, setting: str) -> int | None:
    """``all`` -> None (every row); a non-negative integer -> itself."""
    if value is None or value == "all":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{setting}: '{value}' is neither 'all' nor a count") from None
    if n < 0:
        raise ConfigError(f"{setting}: must be 'all' or a count of 0 or more, got {n}")
    return n


def condition_counts(params: dict, condition: str) -> tuple[int | None, int | None]:
    """(real, synthetic) counts of a condition in params.yaml (None: all)."""
    conditions = (params.get("classifier") or {}).get("conditions") or {}
    if condition not in conditions:
        raise ConfigError(f"params.yaml: classifier.conditions: no condition '{condition}' "
                          f"(have: {', '.join(conditions) or 'none'})")
    c = conditions[condition]
    where = f"params.yaml: classifier.conditions.{condition}"
    return parse_count(c["real"], f"{where}.real"), parse_count(c["synthetic"], f"{where}.synthetic")


def task_classes(df: pd.DataFrame, source: str, classes: list[str] | None = None) -> list[str]:
    """The class names in label order; checks every row's class and label agree with them.

    ``classes`` (params.yaml's order) wins when given; otherwise the manifest's own class/label pairs.
    """
    pairs = df[["class", "label"]].drop_duplicates()
    if classes is None:
        by_label = pairs.groupby("label")["class"].unique()
        bad = [(int(k), list(v)) for k, v in by_label.items() if len(v) > 1]
        if bad:
            raise InputError(f"{source}: label {bad[0][0]} names several classes {bad[0][1]}")
        labels = sorted(int(k) for k in by_label.index)
        if labels != list(range(len(labels))):
            raise InputError(f"{source}: labels must be 0..K-1, found {labels}")
        classes = [str(by_label[k][0]) for k in labels]
    for cls, label in pairs.itertuples(index=False):
        if not (0 <= int(label) < len(classes)) or classes[int(label)] != cls:
            raise InputError(f"{source}: class '{cls}' has label {label}, but the classes in label order are "
                             f"{classes}")
    if len(classes) < 2:
        raise InputError(f"{source}: a classifier needs at least two classes, found {classes}")
    return list(classes)


def check_same_labels(real: pd.DataFrame, synthetic: pd.DataFrame, real_source: str, synthetic_source: str) -> None:
    """InputError when the synthetic set's classes differ from the real data's (names or label numbers)."""
    r = sorted({(str(c), int(k)) for c, k in real[["class", "label"]].itertuples(index=False)}, key=lambda t: t[1])
    s = sorted({(str(c), int(k)) for c, k in synthetic[["class", "label"]].itertuples(index=False)}, key=lambda t: t[1])
    if r != s:
        raise InputError(f"{synthetic_source}: its label set {_fmt(s)} differs from the real data's {_fmt(r)} "
                         f"({real_source}); generate every class with the same class names")


def _fmt(pairs) -> str:
    return "{" + ", ".join(f"{k}: {c}" for c, k in pairs) + "}"


def stratified_subset(df: pd.DataFrame, count: int | None, rng: np.random.Generator, setting: str) -> pd.DataFrame:
    """``count`` rows drawn without replacement, each class in proportion to its share (None: all rows)."""
    if count is None or count == len(df):
        return df
    if count == 0:
        return df.iloc[:0]
    if count > len(df):
        raise ConfigError(f"{setting}: asks for {count} images, only {len(df)} are available")
    sizes = df["label"].value_counts().sort_index()
    exact = sizes / sizes.sum() * count
    take = np.floor(exact).astype(int)
    for label in (exact - take).sort_values(ascending=False).index[: count - int(take.sum())]:
        take[label] += 1
    parts = []
    for label, n in take.items():
        rows = df[df["label"] == label]
        parts.append(rows.iloc[np.sort(rng.choice(len(rows), size=int(n), replace=False))])
    return pd.concat(parts) if parts else df.iloc[:0]


def read_rows(path: str | os.PathLike, modality: str | None) -> pd.DataFrame:
    """A manifest's rows (of one modality), ``path`` absolute and ``rel`` as written in the manifest."""
    path = Path(path)
    df = read_manifest(path, absolute=False)
    if modality is not None:
        df = df[df["modality"] == modality]
        if df.empty:
            raise InputError(f"{path}: no rows for modality '{modality}'")
    root = path.parent.resolve()
    return df.assign(rel=df["path"], path=[str(root / p) for p in df["path"]])


def _split(df: pd.DataFrame, ids: list[str], size: int) -> Split:
    return Split(images=to_tensor(read_manifest_images(list(df["path"]), size=size)),
                 labels=np.array(df["label"], dtype=np.int64), ids=ids)


def load_experiment(real_manifest: str | os.PathLike, synthetic_manifest: str | os.PathLike | None = None, *,
                    real_count: int | None = None, synthetic_count: int | None = 0, modality: str | None = None,
                    classes: list[str] | None = None, size: int = 64, seed: int = 0,
                    setting: str = "condition") -> ExperimentData:
    """Check and read the images of one experiment. ``setting`` names the condition in error messages."""
    real_manifest = Path(real_manifest)
    real = read_rows(real_manifest, modality)
    classes = task_classes(real, str(real_manifest), classes)
    unknown = sorted(set(real["split"]) - {"train", "val", "test"})
    if unknown:
        raise InputError(f"{real_manifest}: unknown split(s) {unknown} (expected train, val, test)")
    rng = np.random.default_rng(seed)
    real_train = stratified_subset(real[real["split"] == "train"], real_count, rng, f"{setting}.real")
    parts = [real_train]
    n_synthetic = 0
    if synthetic_count is None or synthetic_count > 0:
        if synthetic_manifest is None:
            raise ConfigError(f"{setting}.synthetic: the condition uses synthetic images, but no synthetic "
                              "manifest was given (--synthetic)")
        synthetic_manifest = Path(synthetic_manifest)
        syn = read_rows(synthetic_manifest, modality)
        check_same_labels(real, syn, str(real_manifest), str(synthetic_manifest))
        syn = stratified_subset(syn, synthetic_count, rng, f"{setting}.synthetic")
        n_synthetic = len(syn)
        parts.append(syn)
    train = pd.concat(parts)
    if train.empty:
        raise ConfigError(f"{setting}: no training images (both the real and the synthetic count are 0)")
    k = len(classes)
    require_classes(train["label"], k, f"{setting}: training set")
    val = real[real["split"] == "val"]
    test = real[real["split"] == "test"]
    require_classes(val["label"], k, f"{real_manifest}: val split (model selection)")
    require_classes(test["label"], k, f"{real_manifest}: test split")
    log.info("training on %d real + %d synthetic images; %d validation, %d test images; classes %s",
             len(real_train), n_synthetic, len(val), len(test), classes)
    return ExperimentData(
        classes=classes,
        train=_split(train, list(train["rel"]), size),
        val=_split(val, list(val["rel"]), size),
        test=_split(test, list(test["rel"]), size),
        n_real=len(real_train), n_synthetic=n_synthetic,
    )
