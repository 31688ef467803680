"""Do the synthetic images carry their class? Ask a classifier that never saw one.

Each real-only classifier (a condition trained on no synthetic image) labels every synthetic image; the
agreement of a class is the share of its synthetic images put in that class, averaged over the seeds. With
a base model that can draw the class and an embedding that found it, agreement is high; with noise, or with
synthetic labels swapped, it sits at or below chance. Unlike the synthetic-only AUC it needs no extra
training, and it points at the class that fails.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def real_only_runs(runs: dict) -> tuple[str, list] | tuple[None, list]:
    """The first condition whose every run trained on real images only, with its runs."""
    from medti.evaluate.runs import real_only

    for condition, rs in runs.items():
        if real_only(rs):
            return condition, rs
    return None, []


def synthetic_agreement(runs: dict, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict | None:
    """Per class (and overall), the share of synthetic images each real-only classifier labels as their class,
    averaged over its seeds; None without a real-only condition. ``images``: N x H x W x 3 uint8 at the
    classifiers' size; ``labels``: class indices."""
    from medti.classifier.networks import predict
    from medti.classifier.training import load_classifier
    from medti.imageset import to_tensor

    condition, rs = real_only_runs(runs)
    if condition is None or not len(images):
        return None
    labels = np.asarray(labels, dtype=int)
    per_seed = []
    x = to_tensor(images)
    for r in sorted(rs, key=lambda r: r.seed):
        net, _ = load_classifier(r.folder)
        predicted = predict(net, x).numpy().argmax(axis=1)
        per_seed.append({c: float((predicted[labels == i] == i).mean()) if (labels == i).any() else None
                         for i, c in enumerate(classes)} | {"overall": float((predicted == labels).mean())})
    out = {"classifier_condition": condition, "seeds": [r.seed for r in sorted(rs, key=lambda r: r.seed)],
           "per_seed": per_seed}
    for key in [*classes, "overall"]:
        values = [s[key] for s in per_seed if s[key] is not None]
        out[key] = float(np.mean(values)) if values else None
    log.info("synthetic agreement (share of each class's synthetic images the %s classifiers put in that class): %s",
             condition, ", ".join(f"{k} {out[k]:.2f}" for k in [*classes, "overall"] if out[k] is not None))
    return out
