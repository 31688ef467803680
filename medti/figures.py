"""Figures people would rather look at than read: image grids and curves, saved atomically."""

from __future__ import annotations

import os
from typing import Sequence

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
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches * ncols, cell_inches * nrows + (0.4 if suptitle else 0)),
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
    for name, (x, y) in series.items():
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if smooth and len(y) > smooth:
            ax.plot(x, y, alpha=0.25, linewidth=0.8)
            k = np.ones(smooth) / smooth
            ax.plot(x[smooth - 1:], np.convolve(y, k, mode="valid"), label=name, linewidth=1.5)
        else:
            ax.plot(x, y, label=name, linewidth=1.5)
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
