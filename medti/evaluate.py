"""``medti evaluate``: one modality's classifier experiments, image quality and a memorisation audit.

Pipeline: ``--params params.yaml --modality M --classifiers results/classifier/M --real
data/prepared/M/manifest.csv --synthetic data/synthetic/M/manifest.csv --embeddings embeddings/M --out
results/evaluate/M``. The conditions and seeds are params.yaml's ``classifier.conditions`` and
``classifier.seeds``; standalone (no ``--params``) they are the ``<condition>/seed<N>`` folders found.

1. AUC. Every run's predictions on the held-out real test split (predictions.csv of ``medti
   train-classifier``) are checked against the real manifest's test split. Per condition: the seeds'
   AUCs, mean +- standard deviation, a bootstrap confidence interval of the mean AUC (test cases resampled
   within each class), and each condition against the reference (``evaluate.reference``): the difference
   of mean AUCs with its paired bootstrap interval and p-value, and DeLong's test (binary tasks).
2. Image quality: FID/KID-style distances between the synthetic and the real training images in the
   feature space of the trained real-only classifier (always; no download), with the real test images'
   distance as the yardstick; the Inception FID/KID too when torch-fidelity and its weights are there.
3. Memorisation audit: for every synthetic image its nearest real training image, by pixel correlation
   (grey, ``memorisation.size`` px) and by cosine similarity of the classifier's features; near-copies (a
   pixel correlation at or above ``memorisation.threshold``) are flagged, and so are those closer to a
   training image than any real test image of their class is: the real test images' nearest training
   images are the yardstick of how alike two different real images of this data set are.

Outputs (the folder appears whole or not at all):

- metrics.json (or ``--metrics FILE``): DVC metrics: per condition ``auc_mean, auc_std, ci_low, ci_high, n_seeds`` (and
  ``auc_diff_vs_<ref>, p_value_vs_<ref>`` (paired bootstrap), ``p_delong_vs_<ref>``), ``quality`` and
  ``memorisation`` summaries;
- roc.csv (or ``--roc FILE``): DVC plot data, long format ``condition, seed, fpr, tpr`` (one curve per run);
- evaluate.json: everything above in full, with the inputs' checksums (read by ``medti report``);
- auc_table.csv (one row per condition), auc_seeds.csv (one row per run);
- roc.png (mean ROC per condition, +- one standard deviation over seeds), confusion.png and confusion.csv
  (test predictions of all seeds of a condition added up);
- memorisation.csv (one row per synthetic image), memorisation_pairs.png (the closest pairs),
  memorisation_similarity.png and memorisation_features.png (the similarity distributions per class, pixels
  and features, with the real yardstick).

MLflow (one ``evaluate`` run per modality): the settings, every number of metrics.json, and the files above.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medti.cliutils import add_common, load_params_arg
from medti.errors import ConfigError, InputError

log = logging.getLogger(__name__)

SEED_FOLDER = re.compile(r"^seed(\d+)$")
ROC_GRID = np.linspace(0.0, 1.0, 101)


@dataclass
class EvaluateSettings:
    """params.yaml ``evaluate`` (the defaults are the schema's)."""

    bootstrap: int = 1000
    confidence: float = 0.95
    reference: str = "real"
    min_test_per_class: int = 5
    inception: str = "auto"       # auto | off
    max_images: int = 500         # per set, for FID/KID
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    threshold: float = 0.95       # pixel correlation of a near-copy
    memorisation_size: int = 32
    top_k: int = 8
    seed: int = 0

    @classmethod
    def from_section(cls, section: dict, seed: int = 0, **overrides) -> "EvaluateSettings":
        quality = section.get("quality") or {}
        memo = section.get("memorisation") or {}
        kw = {k: section[k] for k in ("bootstrap", "confidence", "reference", "min_test_per_class") if k in section}
        kw.update({k: quality[k] for k in ("inception", "max_images", "kid_subsets", "kid_subset_size") if k in quality})
        kw.update({"threshold": memo.get("threshold", cls.threshold), "memorisation_size": memo.get("size", cls.memorisation_size),
                   "top_k": memo.get("top_k", cls.top_k), "seed": seed})
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw).validate()

    def validate(self) -> "EvaluateSettings":
        if self.bootstrap < 100:
            raise ConfigError(f"evaluate.bootstrap: at least 100 resamples, got {self.bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"evaluate.confidence: must lie between 0 and 1, got {self.confidence}")
        if self.min_test_per_class < 2:
            raise ConfigError(f"evaluate.min_test_per_class: at least 2, got {self.min_test_per_class}")
        if self.inception not in ("auto", "off"):
            raise ConfigError(f"evaluate.quality.inception: 'auto' or 'off', got '{self.inception}'")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"evaluate.memorisation.threshold: must lie in [0, 1], got {self.threshold}")
        if self.memorisation_size < 8 or self.top_k < 1 or self.max_images < 2:
            raise ConfigError("evaluate: memorisation.size must be at least 8, memorisation.top_k and "
                              "quality.max_images at least 1 and 2")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ClassifierRun:
    """One trained classifier: its test-set class probabilities, in the real manifest's test order."""

    condition: str
    seed: int
    folder: Path
    metrics: dict
    probs: np.ndarray


@dataclass
class EvaluateResult:
    out: Path
    metrics: dict


# -- classifier runs -----------------------------------------------------------------------------------------

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
    import json

    out: dict[str, list[ClassifierRun]] = {}
    ids, labels = list(test["rel"]), test["label"].to_numpy(dtype=int)
    for condition, seed, folder in find_runs(Path(classifiers), conditions, seeds):
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        probs = read_predictions(folder, ids, labels, classes, real_manifest)
        out.setdefault(condition, []).append(ClassifierRun(condition, seed, folder, metrics, probs))
    return out


def feature_run(runs: dict[str, list[ClassifierRun]], reference: str) -> ClassifierRun:
    """The classifier whose features measure quality and similarity: a real-only one (no synthetic training
    images), the reference condition's if it is one; its lowest seed. Failing that, the reference's."""
    def real_only(rs):
        return all(r.metrics.get("n_synthetic", 1) == 0 and r.metrics.get("n_real", 0) > 0 for r in rs)

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
    from medti.stats import roc_curve, roc_on_grid

    parts = []
    for condition, rs in runs.items():
        for r in rs:
            if r.probs.shape[1] == 2:
                fpr, tpr = roc_curve(labels == 1, r.probs[:, 1])
            else:
                fpr, tpr = ROC_GRID, roc_on_grid(labels, r.probs, ROC_GRID)
            parts.append(pd.DataFrame({"condition": condition, "seed": r.seed, "fpr": fpr, "tpr": tpr}))
    return pd.concat(parts, ignore_index=True)


def roc_figure(labels: np.ndarray, runs: dict[str, list[ClassifierRun]], table: dict, path: Path, title: str) -> None:
    """Mean ROC curve of each condition over its seeds, with a band of +- one standard deviation."""
    from medti.atomic import save_figure
    from medti.figures import _use_agg
    from medti.stats import roc_on_grid

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
    ax.set_ylabel("true positive rate" + (" (one-vs-rest mean)" if runs and next(iter(runs.values()))[0].probs.shape[1] > 2 else ""))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def confusions(labels: np.ndarray, runs: dict[str, list[ClassifierRun]], k: int) -> dict[str, np.ndarray]:
    """Per condition, the confusion matrix of all its seeds' test predictions added up."""
    from medti.classifier import confusion

    return {condition: sum(confusion(labels, r.probs, k) for r in rs) for condition, rs in runs.items()}


# -- images: features, quality, memorisation ----------------------------------------------------------------

def classifier_features(net, images: np.ndarray) -> np.ndarray:
    """Penultimate-layer features of ``N x H x W x 3`` uint8 images."""
    from medti.cnn import predict
    from medti.imageset import to_tensor

    return predict(net, to_tensor(images), features=True)[1].numpy().astype(np.float64)


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, limit, replace=False))


def image_quality(real_train: np.ndarray, real_train_labels, real_test: np.ndarray, synthetic: np.ndarray,
                  synthetic_labels, classes: list[str], features: dict[str, np.ndarray],
                  settings: EvaluateSettings) -> dict:
    """FD/KID in the classifier's feature space (``features``: real_train, real_test, synthetic) and, when
    available, Inception's. At most ``max_images`` images of each set (a seeded random subset)."""
    import torch

    from medti.quality import FeaturesUnavailable, inception_features, quality_report

    rng = np.random.default_rng(settings.seed)
    pick = {"real_train": _subsample(len(real_train), settings.max_images, rng),
            "real_test": _subsample(len(real_test), settings.max_images, rng),
            "synthetic": _subsample(len(synthetic), settings.max_images, rng)}
    real_labels = np.asarray(real_train_labels)[pick["real_train"]]
    syn_labels = np.asarray(synthetic_labels)[pick["synthetic"]]
    kid = dict(subsets=settings.kid_subsets, subset_size=settings.kid_subset_size, seed=settings.seed)
    out = {"classifier": quality_report(features["real_train"][pick["real_train"]], features["real_test"][pick["real_test"]],
                                        features["synthetic"][pick["synthetic"]], real_labels, syn_labels, classes, **kid)}
    if settings.inception == "off":
        out["inception"] = {"skipped": "Inception FID/KID skipped: evaluate.quality.inception is off"}
    else:
        try:
            images = {name: torch.from_numpy(np.ascontiguousarray(arr[pick[name]].transpose(0, 3, 1, 2)))
                      for name, arr in (("real_train", real_train), ("real_test", real_test), ("synthetic", synthetic))}
            inc = {name: inception_features(x) for name, x in images.items()}
            out["inception"] = quality_report(inc["real_train"], inc["real_test"], inc["synthetic"], real_labels,
                                              syn_labels, classes, **kid)
        except FeaturesUnavailable as exc:
            out["inception"] = {"skipped": str(exc)}
            log.warning("%s", exc)
    return out


def unit_rows(x: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Rows minus ``centre`` (default: each row's own mean) scaled to unit length; a constant row stays 0."""
    x = np.asarray(x, dtype=np.float64)
    x = x - (x.mean(axis=1, keepdims=True) if centre is None else centre)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12)


def pixel_vectors(images: np.ndarray, size: int) -> np.ndarray:
    """Grey ``size x size`` pixels of each ``N x H x W x 3`` uint8 image, as unit vectors around their mean,
    so a dot product is the pixel (Pearson) correlation."""
    import torch
    import torch.nn.functional as F

    grey = torch.from_numpy(images.astype(np.float32).mean(axis=3))[:, None]
    if grey.shape[-1] != size:
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return unit_rows(grey.flatten(1).numpy())


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each unit row of ``queries``, the index of the most similar unit row of ``references`` and the
    similarity (dot product)."""
    from medti.logs import progress

    idx = np.empty(len(queries), dtype=int)
    sim = np.empty(len(queries))
    for start in progress(range(0, len(queries), chunk), desc="nearest neighbours", total=-(-len(queries) // chunk)):
        s = queries[start:start + chunk] @ references.T
        idx[start:start + chunk] = s.argmax(axis=1)
        sim[start:start + chunk] = s[np.arange(len(s)), idx[start:start + chunk]]
    return idx, sim


def memorisation_audit(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame,
                       pixels: dict[str, np.ndarray], features: dict[str, np.ndarray], classes: list[str],
                       modality: str | None, threshold: float) -> tuple[pd.DataFrame, dict]:
    """Every synthetic image's nearest real training image (pixels and features); a table and a summary.

    ``pixels``/``features`` hold unit vectors for ``synthetic``, ``real_train`` and ``real_test`` (rows in the
    frames' order). The real test images' nearest training images are the yardstick.
    """
    from medti.config import class_token

    p_idx, p_sim = nearest(pixels["synthetic"], pixels["real_train"])
    f_idx, f_sim = nearest(features["synthetic"], features["real_train"])
    _, test_p_sim = nearest(pixels["real_test"], pixels["real_train"])
    _, test_f_sim = nearest(features["real_test"], features["real_train"])
    ti = train["ti_subset"].astype(str).str.lower().eq("true").to_numpy() if "ti_subset" in train else np.zeros(len(train), bool)
    train_labels = train["label"].to_numpy(dtype=int)
    syn_labels = synthetic["label"].to_numpy(dtype=int)
    table = pd.DataFrame({
        "path": synthetic["rel"].to_numpy(), "class": synthetic["class"].to_numpy(), "label": syn_labels,
        "embedding": [class_token(modality or str(synthetic["modality"].iloc[0]), c) for c in synthetic["class"]],
        "pixel_similarity": p_sim, "nearest_pixel": train["rel"].to_numpy()[p_idx],
        "nearest_pixel_class": train["class"].to_numpy()[p_idx],
        # the embedding of class c was trained on class c's ti_subset images
        "nearest_pixel_trained_embedding": ti[p_idx] & (train_labels[p_idx] == syn_labels),
        "feature_similarity": f_sim, "nearest_feature": train["rel"].to_numpy()[f_idx],
        "nearest_feature_class": train["class"].to_numpy()[f_idx],
        "near_copy": p_sim >= threshold,
    })
    test_labels = test["label"].to_numpy(dtype=int)
    # A data-driven flag beside the fixed threshold: closer to a training image than any real test image of
    # its class is to one (whole-image correlations of different patients can be high in some modalities).
    real_max = np.array([test_p_sim[test_labels == k].max() if (test_labels == k).any() else np.inf
                         for k in range(len(classes))])
    table["closer_than_real_test"] = p_sim > real_max[syn_labels]

    def summary(mask, test_mask) -> dict:
        if not mask.any():
            return {"n": 0, "near_copies": 0, "closer_than_real_test": 0}
        return {"n": int(mask.sum()), "near_copies": int(table["near_copy"][mask].sum()),
                "closer_than_real_test": int(table["closer_than_real_test"][mask].sum()),
                "pixel_similarity_median": float(np.median(p_sim[mask])), "pixel_similarity_max": float(p_sim[mask].max()),
                "feature_similarity_median": float(np.median(f_sim[mask])),
                "feature_similarity_max": float(f_sim[mask].max()),
                "nearest_is_embedding_training_image": float(table["nearest_pixel_trained_embedding"][mask].mean()),
                "real_test_pixel_similarity_median": float(np.median(test_p_sim[test_mask])) if test_mask.any() else None,
                "real_test_pixel_similarity_max": float(test_p_sim[test_mask].max()) if test_mask.any() else None,
                "real_test_feature_similarity_median": float(np.median(test_f_sim[test_mask])) if test_mask.any() else None}

    result = {"threshold": threshold, "overall": summary(np.ones(len(table), bool), np.ones(len(test), bool)),
              "per_class": {c: summary(syn_labels == k, test_labels == k) for k, c in enumerate(classes)},
              "real_test_pixel_similarity": test_p_sim.tolist(), "real_test_feature_similarity": test_f_sim.tolist(),
              "real_test_labels": test_labels.tolist()}
    return table, result


def memorisation_figures(table: pd.DataFrame, audit: dict, images: dict[str, np.ndarray], train: pd.DataFrame,
                         classes: list[str], top_k: int, folder: Path, title: str) -> None:
    """memorisation_pairs.png (the ``top_k`` closest pairs) and memorisation_similarity.png (distributions)."""
    from medti.figures import histograms, image_grid

    order = np.argsort(-table["pixel_similarity"].to_numpy(), kind="stable")[:top_k]
    train_pos = {rel: i for i, rel in enumerate(train["rel"])}
    top, bottom, top_titles, bottom_titles = [], [], [], []
    for i in order:
        row = table.iloc[i]
        top.append(images["synthetic"][i])
        bottom.append(images["real_train"][train_pos[row["nearest_pixel"]]])
        top_titles.append(f"{row['class']}  r={row['pixel_similarity']:.3f}" + ("\nNEAR-COPY" if row["near_copy"] else ""))
        bottom_titles.append(f"{row['nearest_pixel_class']}"
                             + (" (a TI training image)" if row["nearest_pixel_trained_embedding"] else ""))
    n = len(order)
    flagged = int(table["near_copy"].sum())
    image_grid(top + bottom, folder / "memorisation_pairs.png", ncols=n, titles=top_titles + bottom_titles,
               row_labels=["synthetic", "nearest training"],
               suptitle=f"{title}: the {n} synthetic images closest to a real training image (pixel correlation r); "
                        f"{flagged} of {len(table)} at or above {audit['threshold']:.2f}")
    test_labels = np.asarray(audit["real_test_labels"])
    test_p, test_f = np.asarray(audit["real_test_pixel_similarity"]), np.asarray(audit["real_test_feature_similarity"])
    panels = {}
    for k, c in enumerate(classes):
        mask = table["label"].to_numpy() == k
        panels[f"{c}: pixel correlation"] = {"synthetic -> nearest training": table["pixel_similarity"][mask],
                                             "real test -> nearest training": test_p[test_labels == k]}
    histograms(panels, folder / "memorisation_similarity.png", xlabel="similarity to the nearest real training image",
               vline=audit["threshold"], vline_label="near-copy threshold",
               suptitle=f"{title}: memorisation audit (a synthetic image no closer than real test images are is no copy)")
    feature_panels = {f"{c}: classifier features (cosine)": {
        "synthetic -> nearest training": table["feature_similarity"][table["label"].to_numpy() == k],
        "real test -> nearest training": test_f[test_labels == k]} for k, c in enumerate(classes)}
    histograms(feature_panels, folder / "memorisation_features.png", xlabel="cosine similarity of classifier features",
               suptitle=f"{title}: nearest training image in the classifier's feature space")


# -- embeddings ----------------------------------------------------------------------------------------------

def embedding_files(folder, classes: list[str], synthetic: pd.DataFrame | None) -> dict[str, dict]:
    """Per class, its embedding file's checksums; checks the synthetic images were drawn with it."""
    from medti.checksums import file_md5
    from medti.embeddings import load_embedding

    folder = Path(folder)
    out = {}
    for c in classes:
        path = folder / f"{c}.safetensors"
        if not path.is_file():
            raise InputError(f"{path}: the embedding of class '{c}' is missing")
        emb = load_embedding(path)
        out[c] = {"file": path.name, "md5": file_md5(path), "checksum": emb.checksum(), "token": emb.token,
                  "num_vectors": emb.num_vectors, "base_model": emb.metadata.get("base_model")}
        if synthetic is not None and "embedding_checksum" in synthetic:
            used = set(synthetic.loc[synthetic["class"] == c, "embedding_checksum"].astype(str))
            if used and used != {out[c]["checksum"]}:
                raise InputError(f"{path}: the synthetic images of class '{c}' were not drawn with this embedding "
                                 "(embedding_checksum differs); generate them again")
    return out


# -- API -----------------------------------------------------------------------------------------------------

def _condition_metrics(table: dict, reference: str) -> dict:
    """The flat per-condition block of metrics.json (DVC shows it as a table)."""
    out = {}
    for condition, row in table.items():
        entry = {k: row[k] for k in ("auc_mean", "auc_std", "ci_low", "ci_high", "n_seeds")}
        if "comparison" in row:
            c = row["comparison"]
            entry.update({f"auc_diff_vs_{reference}": c["difference"], f"p_value_vs_{reference}": c["p_bootstrap"]})
            if c["p_delong"] is not None:
                entry[f"p_delong_vs_{reference}"] = c["p_delong"]
        out[condition] = entry
    return out


def _quality_metrics(quality: dict | None) -> dict:
    if not quality:
        return {}
    out = {}
    for space, q in quality.items():
        if "synthetic_vs_real_train" in q:
            out.update({f"{space}_fd": q["synthetic_vs_real_train"]["fd"], f"{space}_kid": q["synthetic_vs_real_train"]["kid"],
                        f"{space}_fd_real_test": q["real_test_vs_real_train"]["fd"],
                        f"{space}_kid_real_test": q["real_test_vs_real_train"]["kid"]})
    return out


def _json_safe(obj):
    """NaN and infinities -> None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def evaluate(classifiers, real_manifest, out, *, synthetic_manifest=None, embeddings=None, modality: str | None = None,
             classes: list[str] | None = None, conditions: list[str] | None = None, seeds: list[int] | None = None,
             settings: EvaluateSettings | None = None, params: dict | None = None,
             metrics_file=None, roc_file=None) -> EvaluateResult:
    """Evaluate one modality's classifier runs and synthetic set; write the folder ``out`` (see the module
    docstring). ``conditions``/``seeds``: the runs to expect (None: the folders found). ``metrics_file`` and
    ``roc_file`` put metrics.json and roc.csv elsewhere than ``out`` (DVC declares them as metrics and plots,
    which may not lie inside another output)."""
    from medti.atomic import atomic_dir, sweep_stale_temporaries, write_json, write_text
    from medti.checksums import dvc_md5
    from medti.classifier import load_classifier
    from medti.classifier_data import check_same_labels, read_rows, task_classes
    from medti.figures import confusion_matrices
    from medti.imageset import load_images
    from medti.manifest import file_sha256
    from medti.stats import require_ci_sample, require_classes, summarise_conditions
    from medti.tracking import track

    settings = (settings or EvaluateSettings()).validate()
    real_manifest, out = Path(real_manifest), Path(out)
    sweep_stale_temporaries(out.parent, name=out.name)
    real = read_rows(real_manifest, modality)
    classes = task_classes(real, str(real_manifest), classes)
    k = len(classes)
    splits = {s: real[real["split"] == s] for s in ("train", "val", "test")}
    for name, rows in splits.items():
        require_classes(rows["label"], k, f"{real_manifest}: {name} split ({len(rows)} images)")
    test = splits["test"]
    require_ci_sample(test["label"], k, settings.min_test_per_class, f"{real_manifest}: test split")
    synthetic = None
    if synthetic_manifest is not None:
        synthetic_manifest = Path(synthetic_manifest)
        synthetic = read_rows(synthetic_manifest, modality)
        check_same_labels(real, synthetic, str(real_manifest), str(synthetic_manifest))
    emb_info = embedding_files(embeddings, classes, synthetic) if embeddings is not None else {}

    runs = load_runs(classifiers, test, classes, real_manifest, conditions, seeds)
    labels = test["label"].to_numpy(dtype=int)
    reference = settings.reference
    if reference not in runs:
        raise ConfigError(f"evaluate.reference: condition '{reference}' has no classifier runs in {classifiers} "
                          f"(have: {', '.join(runs)})")
    runs = {reference: runs[reference], **{c: r for c, r in runs.items() if c != reference}}
    few = [c for c, rs in runs.items() if len(rs) < 3]
    if few:
        log.warning("condition(s) %s have fewer than 3 seeds: their standard deviations mean little", ", ".join(few))
    table = summarise_conditions(labels, {c: [r.probs for r in rs] for c, rs in runs.items()}, reference,
                                 settings.bootstrap, settings.confidence, settings.seed)
    for condition, rs in runs.items():
        table[condition]["seeds"] = [r.seed for r in rs]
        table[condition]["n_real"] = [r.metrics.get("n_real") for r in rs]
        table[condition]["n_synthetic"] = [r.metrics.get("n_synthetic") for r in rs]
    title = modality or real_manifest.parent.name

    quality = memo_table = audit = None
    feature_info = None
    if synthetic is not None and len(synthetic):
        fr = feature_run(runs, reference)
        net, spec = load_classifier(fr.folder)
        feature_info = {"condition": fr.condition, "seed": fr.seed, "folder": str(fr.folder), "arch": spec.arch,
                        "n_synthetic": fr.metrics.get("n_synthetic")}
        log.info("image features from the %s classifier (seed %d)", fr.condition, fr.seed)
        frames = {"real_train": splits["train"], "real_test": test, "synthetic": synthetic}
        images = {name: load_images(list(df["path"]), size=spec.size) for name, df in frames.items()}
        raw = {name: classifier_features(net, imgs) for name, imgs in images.items()}
        quality = image_quality(images["real_train"], frames["real_train"]["label"].to_numpy(), images["real_test"],
                                images["synthetic"], synthetic["label"].to_numpy(), classes, raw, settings)
        centre = raw["real_train"].mean(axis=0)
        features = {name: unit_rows(f, centre) for name, f in raw.items()}
        pixels = {name: pixel_vectors(imgs, settings.memorisation_size) for name, imgs in images.items()}
        memo_table, audit = memorisation_audit(synthetic, splits["train"], test, pixels, features, classes, modality,
                                               settings.threshold)
        if audit["overall"]["near_copies"]:
            log.warning("%d of %d synthetic images are near-copies of a real training image (pixel correlation >= %.2f)",
                        audit["overall"]["near_copies"], len(synthetic), settings.threshold)
    else:
        log.info("no synthetic images: image quality and the memorisation audit are skipped")

    metrics = {**_condition_metrics(table, reference), "n_test": int(len(test))}
    if quality is not None:
        metrics["quality"] = _quality_metrics(quality)
        metrics["memorisation"] = {k2: v for k2, v in audit["overall"].items() if v is not None}
    base_models = sorted(set(synthetic["base_model"].astype(str))) if synthetic is not None and "base_model" in synthetic else []
    details = {
        "modality": modality, "classes": classes, "reference": reference, "settings": settings.to_dict(),
        "n_test": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "conditions": table, "quality": quality, "feature_classifier": feature_info,
        "memorisation": {k2: v for k2, v in audit.items() if not k2.startswith("real_test_")} if audit else None,
        "embeddings": emb_info, "synthetic_base_models": base_models,
        "inputs": {"real_manifest": str(real_manifest), "real_manifest_sha256": file_sha256(real_manifest),
                   "synthetic_manifest": str(synthetic_manifest) if synthetic_manifest else None,
                   "synthetic_manifest_sha256": file_sha256(synthetic_manifest) if synthetic_manifest else None,
                   "classifiers": str(classifiers), "embeddings": str(embeddings) if embeddings else None,
                   "embeddings_md5": dvc_md5(embeddings) if embeddings else None},
    }
    rocs = roc_table(labels, runs)
    matrices = confusions(labels, runs, k)
    seeds_rows = pd.DataFrame([{"condition": r.condition, "seed": r.seed, "test_auc": table[r.condition]["aucs"][i],
                                "best_val_auc": r.metrics.get("best_val_auc"), "best_step": r.metrics.get("best_step"),
                                "n_real": r.metrics.get("n_real"), "n_synthetic": r.metrics.get("n_synthetic")}
                               for rs in runs.values() for i, r in enumerate(rs)])
    auc_rows = pd.DataFrame([{"condition": c, "n_seeds": row["n_seeds"], "auc_mean": row["auc_mean"],
                              "auc_std": row["auc_std"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                              **{f"{key}_vs_{reference}": (row.get("comparison") or {}).get(key)
                                 for key in ("difference", "ci_low", "ci_high", "p_bootstrap", "p_delong")}}
                             for c, row in table.items()])

    def csv(df: pd.DataFrame) -> str:
        return df.to_csv(index=False, float_format="%.6g", lineterminator="\n")

    tags = {"modality": modality}
    inputs = {"real": real_manifest, "synthetic": synthetic_manifest, "embeddings": embeddings}
    with track(params, "evaluate", run_name=f"evaluate {title}", tags=tags, inputs=inputs) as tracker:
        tracker.log_params({"evaluate": settings.to_dict(), "modality": modality, "classes": ",".join(classes),
                            "conditions": ",".join(runs), "n_test": len(test)})
        with atomic_dir(out) as tmp:
            write_json(tmp / "metrics.json", _json_safe(metrics))
            write_json(tmp / "evaluate.json", _json_safe(details))
            write_text(tmp / "roc.csv", csv(rocs))
            write_text(tmp / "auc_table.csv", csv(auc_rows))
            write_text(tmp / "auc_seeds.csv", csv(seeds_rows))
            write_text(tmp / "confusion.csv", csv(pd.DataFrame(
                [{"condition": c, "true": classes[i], "predicted": classes[j], "count": int(m[i, j])}
                 for c, m in matrices.items() for i in range(k) for j in range(k)])))
            roc_figure(labels, runs, table, tmp / "roc.png", f"{title}: test ROC (mean ± sd over seeds)")
            confusion_matrices({f"{c} ({len(runs[c])} seeds)": m for c, m in matrices.items()}, classes,
                               tmp / "confusion.png", suptitle=f"{title}: test predictions, all seeds added up")
            if memo_table is not None:
                write_text(tmp / "memorisation.csv", csv(memo_table))
                memorisation_figures(memo_table, audit, images, splits["train"], classes, settings.top_k,
                                     tmp, title)
            for name, target in (("metrics.json", metrics_file), ("roc.csv", roc_file)):
                if target is not None:  # moved out last, so a failure before this point leaves neither
                    Path(target).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / name, target)
        tracker.log_metrics(_flat_metrics(metrics))
        for name in sorted(p.name for p in out.iterdir()):
            tracker.log_artifact(out / name)
    for condition, row in table.items():
        c = row.get("comparison")
        log.info("%s %s: AUC %.3f ± %.3f (%d seeds; %.0f%% CI %.3f-%.3f)%s", title, condition, row["auc_mean"],
                 row["auc_std"], row["n_seeds"], 100 * settings.confidence, row["ci_low"], row["ci_high"],
                 f"; vs {reference}: {c['difference']:+.3f}, p = {c['p_bootstrap']:.3g}" if c else "")
    return EvaluateResult(out=out, metrics=metrics)


def _flat_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and value is not None:
            out[f"{prefix}{key}"] = float(value)
    return out


def evaluate_from_params(params: dict, modality: str, classifiers, real_manifest, synthetic_manifest, embeddings, out,
                         metrics_file=None, roc_file=None, **overrides) -> EvaluateResult:
    """The pipeline form: the runs are params.yaml's conditions x seeds; settings from ``evaluate``."""
    from medti.config import modality as modality_of, stage

    classes = modality_of(params, modality)["classes"]
    section = stage(params, "evaluate", modality)
    settings = EvaluateSettings.from_section(section, seed=int(params.get("seed", 0)), **overrides)
    clf = params.get("classifier") or {}
    return evaluate(classifiers, real_manifest, out, synthetic_manifest=synthetic_manifest, embeddings=embeddings,
                    modality=modality, classes=classes, conditions=list(clf.get("conditions") or {}) or None,
                    seeds=[int(s) for s in clf.get("seeds") or []] or None, settings=settings, params=params,
                    metrics_file=metrics_file, roc_file=roc_file)


# -- CLI -----------------------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="AUC statistics of the classifier runs, image quality, memorisation audit",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--classifiers", required=True, metavar="DIR",
                    help="the modality's classifier runs: DIR/<condition>/seed<N>/ (medti train-classifier)")
    io.add_argument("--real", required=True, metavar="MANIFEST", help="the prepared (real) manifest")
    io.add_argument("--synthetic", metavar="MANIFEST", help="the synthetic manifest (quality and memorisation)")
    io.add_argument("--embeddings", metavar="DIR", help="the modality's embeddings, <class>.safetensors (checksums)")
    io.add_argument("--out", required=True, metavar="DIR", help="output folder")
    io.add_argument("--metrics", metavar="FILE", help="write metrics.json here instead of into --out")
    io.add_argument("--roc", metavar="FILE", help="write roc.csv (ROC plot data) here instead of into --out")
    io.add_argument("--modality", help="the modality (its classes come from params.yaml)")
    s = p.add_argument_group("settings (default: params.yaml evaluate, else the schema's defaults)")
    s.add_argument("--conditions", help="comma-separated conditions to expect (default: params.yaml's, else found)")
    s.add_argument("--seeds", help="comma-separated seeds to expect (default: params.yaml's, else found)")
    s.add_argument("--reference", help="the condition the others are compared with")
    s.add_argument("--bootstrap", type=int, help="bootstrap resamples")
    s.add_argument("--confidence", type=float, help="confidence level of the intervals")
    s.add_argument("--inception", choices=("auto", "off"), help="Inception FID/KID when available (auto) or never")
    s.add_argument("--threshold", type=float, help="pixel correlation that flags a near-copy")
    p.set_defaults(func=run)


def _csv_list(value: str | None, cast=str):
    return [cast(v.strip()) for v in value.split(",") if v.strip()] if value else None


def run(args) -> int:
    from medti.config import stage

    params = load_params_arg(args)
    overrides = dict(reference=args.reference, bootstrap=args.bootstrap, confidence=args.confidence,
                     inception=args.inception, threshold=args.threshold)
    try:
        seeds = _csv_list(args.seeds, int)
    except ValueError:
        raise ConfigError(f"--seeds: '{args.seeds}' is not a comma-separated list of integers") from None
    conditions = _csv_list(args.conditions)
    if params is not None and args.modality and conditions is None and seeds is None:
        evaluate_from_params(params, args.modality, args.classifiers, args.real, args.synthetic, args.embeddings,
                             args.out, metrics_file=args.metrics, roc_file=args.roc, **overrides)
        return 0
    section = stage(params, "evaluate", args.modality) if params else {}
    settings = EvaluateSettings.from_section(section, seed=int(params.get("seed", 0)) if params else 0, **overrides)
    classes = params["modalities"][args.modality]["classes"] if params and args.modality else None
    evaluate(args.classifiers, args.real, args.out, synthetic_manifest=args.synthetic, embeddings=args.embeddings,
             modality=args.modality, classes=classes, conditions=conditions, seeds=seeds, settings=settings,
             params=params, metrics_file=args.metrics, roc_file=args.roc)
    return 0
