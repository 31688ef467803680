"""The memorisation audit: every synthetic image's nearest real training image, by pixel correlation and by
the classifier's features, with the real test images' nearest training images as the yardstick.

Two flags per synthetic image:

- ``near_copy``: a pixel correlation with its nearest training image at or above the fixed
  ``evaluate.memorisation.threshold`` (0.95: a copy up to noise, windowing or brightness);
- ``flagged``: closer to a training image than the real images of its class usually are, calibrated against
  a null. The real test images are images the model never saw; their pixel correlations with their nearest
  training image are what "no copying" looks like. The threshold is the conformal upper quantile of those
  values at ``evaluate.memorisation.level`` (alpha): the ``k``-th smallest of the ``n`` values with
  ``k = ceil((1 - alpha)(n + 1))``, and an image is flagged when it lies above it. A synthetic image that is no
  more alike its nearest training image than an unseen real image is (exchangeable with the test images) is
  then flagged with probability ``(n + 1 - k) / (n + 1) <= alpha`` (recorded as ``expected_share``), so with no
  copying about that share of flags is expected by chance, whatever the set sizes. Per class, from the class's
  test images when it has enough for the level (``n + 1 >= 1 / alpha``), else from all test images
  (``null: pooled``); with too few in all, no image can be flagged at that level (the threshold is infinite
  and the summary says so).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medti.config import class_token, schema_default
from medti.figures import histograms, image_grid
from medti.logs import progress

log = logging.getLogger(__name__)


def unit_rows(x: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Rows minus ``centre`` (default: each row's own mean) scaled to unit length; a constant row stays 0."""
    x = np.asarray(x, dtype=np.float64)
    x = x - (x.mean(axis=1, keepdims=True) if centre is None else centre)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12)


def pixel_vectors(images: np.ndarray, size: int) -> np.ndarray:
    """Grey ``size x size`` pixels of each ``N x H x W x 3`` uint8 image, as unit vectors around their mean,
    so a dot product is the pixel (Pearson) correlation."""
    grey = torch.from_numpy(images.astype(np.float32).mean(axis=3))[:, None]
    if grey.shape[-1] != size:
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return unit_rows(grey.flatten(1).numpy())


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each unit row of ``queries``, the index of the most similar unit row of ``references`` and the
    similarity (dot product)."""
    idx = np.empty(len(queries), dtype=int)
    sim = np.empty(len(queries))
    for start in progress(range(0, len(queries), chunk), desc="nearest neighbours", total=-(-len(queries) // chunk)):
        s = queries[start:start + chunk] @ references.T
        idx[start:start + chunk] = s.argmax(axis=1)
        sim[start:start + chunk] = s[np.arange(len(s)), idx[start:start + chunk]]
    return idx, sim


def calibrated_threshold(null: np.ndarray, level: float) -> dict:
    """The conformal upper-quantile threshold of ``null`` (similarities of images that are no copies) at
    ``level``: the ``k``-th smallest value, ``k = ceil((1 - level)(n + 1))``; a value above it has probability
    ``expected_share = (n + 1 - k) / (n + 1) <= level`` under the null. Infinite when ``n + 1 < 1 / level``."""
    null = np.sort(np.asarray(null, dtype=float))
    n = len(null)
    k = math.ceil(round((1.0 - level) * (n + 1), 9))  # round: 0.95 * 20 is 19.000000000000004 in floats
    if n == 0 or k > n:
        return {"threshold": math.inf, "n_null": n, "k": None, "expected_share": 0.0}
    return {"threshold": float(null[k - 1]), "n_null": n, "k": k, "expected_share": (n + 1 - k) / (n + 1)}


def memorisation_audit(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame,
                       pixels: dict[str, np.ndarray], features: dict[str, np.ndarray], classes: list[str],
                       modality: str | None, threshold: float, level: float | None = None
                       ) -> tuple[pd.DataFrame, dict]:
    """Every synthetic image's nearest real training image (pixels and features); a table and a summary.

    ``pixels``/``features`` hold unit vectors for ``synthetic``, ``real_train`` and ``real_test`` (rows in the
    frames' order). ``threshold``: the fixed near-copy correlation; ``level``: the calibrated flag's level (the
    module docstring; None: the schema's default). The real test images' nearest training images are the null.
    """
    if level is None:
        level = schema_default("evaluate.memorisation.level")
    p_idx, p_sim = nearest(pixels["synthetic"], pixels["real_train"])
    f_idx, f_sim = nearest(features["synthetic"], features["real_train"])
    _, test_p_sim = nearest(pixels["real_test"], pixels["real_train"])
    _, test_f_sim = nearest(features["real_test"], features["real_train"])
    ti = (train["ti_subset"].astype(str).str.lower().eq("true").to_numpy() if "ti_subset" in train
          else np.zeros(len(train), bool))
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
    # The calibrated flag: above the level's upper quantile of the real test images' own similarities (the null).
    pooled = calibrated_threshold(test_p_sim, level)
    nulls = {}
    for k, c in enumerate(classes):
        own = calibrated_threshold(test_p_sim[test_labels == k], level)
        nulls[c] = {**own, "null": "class"} if math.isfinite(own["threshold"]) else {**pooled, "null": "pooled"}
        if not math.isfinite(nulls[c]["threshold"]):
            log.warning("memorisation: %d real test images are too few for a flag at level %g (it needs at least "
                        "%d): no synthetic image of class %s can be flagged", len(test_p_sim), level,
                        math.ceil(1.0 / level) - 1, c)
    flag_at = np.array([nulls[c]["threshold"] for c in classes])[syn_labels]
    share_at = np.array([nulls[c]["expected_share"] for c in classes])[syn_labels]
    table["flag_threshold"] = flag_at
    table["flagged"] = p_sim > flag_at

    def summary(mask, test_mask, null=None) -> dict:
        about = {} if null is None else {"flag_threshold": null["threshold"] if math.isfinite(null["threshold"])
                                         else None, "null": null["null"], "n_null": null["n_null"],
                                         "expected_share": null["expected_share"]}
        if not mask.any():
            return {"n": 0, "near_copies": 0, "flagged": 0, **about}
        test = test_mask.any()
        return {"n": int(mask.sum()), "near_copies": int(table["near_copy"][mask].sum()),
                "flagged": int(table["flagged"][mask].sum()), **about,
                "expected_flags": float(share_at[mask].sum()),  # by chance, with no copying
                "pixel_similarity_median": float(np.median(p_sim[mask])),
                "pixel_similarity_max": float(p_sim[mask].max()),
                "feature_similarity_median": float(np.median(f_sim[mask])),
                "feature_similarity_max": float(f_sim[mask].max()),
                "nearest_is_embedding_training_image": float(table["nearest_pixel_trained_embedding"][mask].mean()),
                "real_test_pixel_similarity_median": float(np.median(test_p_sim[test_mask])) if test else None,
                "real_test_pixel_similarity_max": float(test_p_sim[test_mask].max()) if test else None,
                "real_test_feature_similarity_median": float(np.median(test_f_sim[test_mask])) if test else None}

    result = {"threshold": threshold, "level": level,
              "overall": summary(np.ones(len(table), bool), np.ones(len(test), bool)),
              "per_class": {c: summary(syn_labels == k, test_labels == k, nulls[c]) for k, c in enumerate(classes)},
              "real_test_pixel_similarity": test_p_sim.tolist(), "real_test_feature_similarity": test_f_sim.tolist(),
              "real_test_labels": test_labels.tolist()}
    return table, result


def memorisation_figures(table: pd.DataFrame, audit: dict, images: dict[str, np.ndarray], train: pd.DataFrame,
                         classes: list[str], top_k: int, folder: Path, title: str) -> None:
    """memorisation_pairs.png (the ``top_k`` closest pairs) and memorisation_similarity.png (distributions)."""
    order = np.argsort(-table["pixel_similarity"].to_numpy(), kind="stable")[:top_k]
    train_pos = {rel: i for i, rel in enumerate(train["rel"])}
    top, bottom, top_titles, bottom_titles = [], [], [], []
    for i in order:
        row = table.iloc[i]
        top.append(images["synthetic"][i])
        bottom.append(images["real_train"][train_pos[row["nearest_pixel"]]])
        top_titles.append(f"{row['class']}  r={row['pixel_similarity']:.3f}"
                          + ("\nNEAR-COPY" if row["near_copy"] else "\nFLAGGED" if row["flagged"] else ""))
        bottom_titles.append(f"{row['nearest_pixel_class']}"
                             + (" (a TI training image)" if row["nearest_pixel_trained_embedding"] else ""))
    n = len(order)
    flagged = int(table["near_copy"].sum())
    image_grid(top + bottom, folder / "memorisation_pairs.png", ncols=n, titles=top_titles + bottom_titles,
               row_labels=["synthetic", "nearest training"],
               suptitle=f"{title}: the {n} synthetic images closest to a real training image (pixel correlation r); "
                        f"{flagged} of {len(table)} at or above {audit['threshold']:.2f}, "
                        f"{int(table['flagged'].sum())} flagged at level {audit['level']:g}")
    test_labels = np.asarray(audit["real_test_labels"])
    test_p, test_f = np.asarray(audit["real_test_pixel_similarity"]), np.asarray(audit["real_test_feature_similarity"])
    panels = {}
    for k, c in enumerate(classes):
        mask = table["label"].to_numpy() == k
        panels[f"{c}: pixel correlation"] = {"synthetic -> nearest training": table["pixel_similarity"][mask],
                                             "real test -> nearest training": test_p[test_labels == k]}
    histograms(panels, folder / "memorisation_similarity.png", xlabel="similarity to the nearest real training image",
               vline=audit["threshold"], vline_label="near-copy threshold",
               suptitle=f"{title}: memorisation audit (a synthetic image no closer than real test images are "
                        "is no copy)")
    feature_panels = {f"{c}: classifier features (cosine)": {
        "synthetic -> nearest training": table["feature_similarity"][table["label"].to_numpy() == k],
        "real test -> nearest training": test_f[test_labels == k]} for k, c in enumerate(classes)}
    histograms(feature_panels, folder / "memorisation_features.png", xlabel="cosine similarity of classifier features",
               suptitle=f"{title}: nearest training image in the classifier's feature space")
