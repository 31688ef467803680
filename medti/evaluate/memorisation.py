"""The memorisation audit: every synthetic image's nearest real training image, by pixel correlation and by
the classifier's features, with the real test images' nearest training images as the yardstick."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medti.config import class_token
from medti.figures import histograms, image_grid
from medti.logs import progress


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


def memorisation_audit(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame,
                       pixels: dict[str, np.ndarray], features: dict[str, np.ndarray], classes: list[str],
                       modality: str | None, threshold: float) -> tuple[pd.DataFrame, dict]:
    """Every synthetic image's nearest real training image (pixels and features); a table and a summary.

    ``pixels``/``features`` hold unit vectors for ``synthetic``, ``real_train`` and ``real_test`` (rows in the
    frames' order). The real test images' nearest training images are the yardstick.
    """
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
    # A data-driven flag beside the fixed threshold: closer to a training image than any real test image of
    # its class is to one (whole-image correlations of different patients can be high in some modalities).
    real_max = np.array([test_p_sim[test_labels == k].max() if (test_labels == k).any() else np.inf
                         for k in range(len(classes))])
    table["closer_than_real_test"] = p_sim > real_max[syn_labels]

    def summary(mask, test_mask) -> dict:
        if not mask.any():
            return {"n": 0, "near_copies": 0, "closer_than_real_test": 0}
        test = test_mask.any()
        return {"n": int(mask.sum()), "near_copies": int(table["near_copy"][mask].sum()),
                "closer_than_real_test": int(table["closer_than_real_test"][mask].sum()),
                "pixel_similarity_median": float(np.median(p_sim[mask])),
                "pixel_similarity_max": float(p_sim[mask].max()),
                "feature_similarity_median": float(np.median(f_sim[mask])),
                "feature_similarity_max": float(f_sim[mask].max()),
                "nearest_is_embedding_training_image": float(table["nearest_pixel_trained_embedding"][mask].mean()),
                "real_test_pixel_similarity_median": float(np.median(test_p_sim[test_mask])) if test else None,
                "real_test_pixel_similarity_max": float(test_p_sim[test_mask].max()) if test else None,
                "real_test_feature_similarity_median": float(np.median(test_f_sim[test_mask])) if test else None}

    result = {"threshold": threshold, "overall": summary(np.ones(len(table), bool), np.ones(len(test), bool)),
              "per_class": {c: summary(syn_labels == k, test_labels == k) for k, c in enumerate(classes)},
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
                          + ("\nNEAR-COPY" if row["near_copy"] else ""))
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
               suptitle=f"{title}: memorisation audit (a synthetic image no closer than real test images are "
                        "is no copy)")
    feature_panels = {f"{c}: classifier features (cosine)": {
        "synthetic -> nearest training": table["feature_similarity"][table["label"].to_numpy() == k],
        "real test -> nearest training": test_f[test_labels == k]} for k, c in enumerate(classes)}
    histograms(feature_panels, folder / "memorisation_features.png", xlabel="cosine similarity of classifier features",
               suptitle=f"{title}: nearest training image in the classifier's feature space")
