"""What a training run leaves for people: metrics.csv, the loss curve, validation grids and summary.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RANDOM_NOTE = "random base model: these images carry no medical meaning"
METRIC_COLUMNS = ("step", "loss", "lr", "images_per_s", "steps_per_s", "elapsed_s")


def write_metrics_csv(rows: list[dict], path: Path) -> None:
    from medti.atomic import write_text

    lines = [",".join(METRIC_COLUMNS)]
    for r in rows:
        lines.append(",".join(str(r["step"]) if c == "step" else f"{r[c]:.6g}" for c in METRIC_COLUMNS))
    write_text(path, "\n".join(lines) + "\n")


def loss_figure(rows: list[dict], path: Path, title: str) -> None:
    from medti.figures import curves

    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    curves({"loss": (steps, losses)}, path, xlabel="step", ylabel="diffusion loss", title=title,
           smooth=max(2, len(rows) // 20) if len(rows) >= 10 else 0)


def validation_grid(real, samples, path: Path, prompt: str, step: int, random_weights: bool) -> None:
    """Training images on the first row, samples drawn with the current vectors below."""
    from medti.figures import image_grid

    n = len(samples)
    real = list(real[:n])
    images = real + [None] * (n - len(real)) + list(samples)
    images = [im if im is not None else np.zeros((8, 8, 3), np.uint8) for im in images]
    title = f"'{prompt}' at step {step}" + (f"\n({RANDOM_NOTE})" if random_weights else "")
    image_grid(images, path, ncols=n, row_labels=["training", f"step {step}"], suptitle=title)


def loss_summary(rows: list[dict]) -> dict:
    """Mean loss over the first and the last tenth of the run (single steps are too noisy to compare)."""
    if not rows:
        return {}
    losses = np.array([r["loss"] for r in rows], dtype=float)
    k = max(1, len(losses) // 10)
    return {"loss_first": float(losses[:k].mean()), "loss_last": float(losses[-k:].mean()),
            "loss_min": float(losses.min())}
