"""What a classifier run writes beside its weights: predictions, history, confusion counts and figures
(curves.png: training loss and validation AUROC; roc.png: test ROC; confusion.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medti.atomic import atomic_path, save_figure, write_json, write_text
from medti.evaluate.statistics import auc, roc_curve
from medti.figures import _use_agg, confusion_matrices, curves


def curves_figure(history: list[dict], path: Path, title: str) -> None:
    """Training and validation loss, and the validation AUROC (the kept step marked), over the steps."""
    plt = _use_agg()
    steps = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.plot(steps, [h["train_loss"] for h in history], marker="o", label="training")
    a.plot(steps, [h["val_loss"] for h in history], marker="o", label="validation")
    a.set_xlabel("step")
    a.set_ylabel("cross-entropy")
    a.legend(fontsize=7)
    b.plot(steps, [h["val_auc"] for h in history], marker="o", color="C2")
    best = max(history, key=lambda h: (h["val_auc"], -h["val_loss"]))
    b.axvline(best["step"], color="grey", linestyle="--", linewidth=0.8)
    b.set_xlabel("step")
    b.set_ylabel("validation AUROC")
    b.set_ylim(0, 1.02)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def test_roc_figure(labels, probs, classes: list[str], path: Path, title: str) -> None:
    """One run's test ROC curve(s): the positive class for a binary task, one-vs-rest per class otherwise."""
    ks = [1] if len(classes) == 2 else range(len(classes))
    series = {}
    for k in ks:
        fpr, tpr = roc_curve(labels == k, probs[:, k])
        onevsrest = auc(labels == k, probs[:, k])
        series[f"{classes[k]} (AUC {onevsrest:.3f})"] = (fpr, tpr)
    curves(series, path, xlabel="false positive rate", ylabel="true positive rate", title=title, diagonal=True)


test_roc_figure.__test__ = False  # not a pytest test, whatever its name


def confusion(labels, probs, k: int) -> np.ndarray:
    """Counts: rows true class, columns predicted class (the most probable)."""
    out = np.zeros((k, k), dtype=int)
    np.add.at(out, (labels, probs.argmax(axis=1)), 1)
    return out


def write_outputs(folder: Path, state, spec, settings, data, history, metrics, probs, title,
                  run_key: str | None = None) -> None:
    """Every file of a run's folder (see :mod:`medti.classifier`); ``run_key``: what the run was trained from
    (settings, network, images, seed, device type), so that a job of several seeds can keep a finished one."""
    with atomic_path(folder / "model.pt") as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)  # to a file object: the archive is not named after the (random) temporary file
    write_json(folder / "model.json", {"network": spec.to_dict(), "settings": settings.to_dict(), "run_key": run_key})
    write_json(folder / "metrics.json", metrics)
    pred = pd.DataFrame({"id": data.test.ids, "label": data.test.labels,
                         "class": [data.classes[k] for k in data.test.labels]})
    for k, name in enumerate(data.classes):
        pred[f"p_{name}"] = probs[:, k]
    write_text(folder / "predictions.csv", pred.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    write_text(folder / "history.csv", pd.DataFrame(history).to_csv(index=False, float_format="%.6g",
                                                                   lineterminator="\n"))
    matrix = confusion(data.test.labels, probs, len(data.classes))
    write_text(folder / "confusion.csv", pd.DataFrame(matrix, index=data.classes, columns=data.classes)
               .to_csv(index_label="true\\predicted", lineterminator="\n"))
    curves_figure(history, folder / "curves.png", title)
    test_roc_figure(data.test.labels, probs, data.classes, folder / "roc.png", f"{title}: test ROC")
    confusion_matrices({f"{title}: test set": matrix}, data.classes, folder / "confusion.png")
