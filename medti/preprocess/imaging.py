"""Pixel operations shared by every source: windowing, normalisation, squaring, resizing, PNG output.

Arrays are float32 in the source's units until :func:`to_unit` maps them to [0, 1]; images are HxW (grey)
or HxWx3 (RGB or a stack of three sequences). Output files are 8-bit PNGs of ``size x size``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

_PERCENTILE_SAMPLE = 1 << 20  # estimate percentiles from at most ~1M values (exact for small images)


@dataclass(frozen=True)
class Window:
    """A VOI window (DICOM C.11.2.1.2): centre and width in the units after the modality LUT."""

    center: float
    width: float
    function: str = "LINEAR"  # LINEAR | LINEAR_EXACT | SIGMOID

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Map ``x`` to [0, 1] through this window."""
        c, w = float(self.center), float(self.width)
        if self.function == "SIGMOID":
            return (1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))).astype(np.float32)
        if self.function == "LINEAR_EXACT":
            return np.clip((x - c) / w + 0.5, 0.0, 1.0).astype(np.float32)
        if w <= 1:  # a LINEAR window of width 1 is a threshold at the centre
            return (x > c - 0.5).astype(np.float32)
        return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0).astype(np.float32)


def window_setting(value) -> Window | str:
    """params' ``window``: 'auto', 'none', or {center, width} -> 'auto' | 'none' | Window."""
    if isinstance(value, dict):
        return Window(float(value["center"]), float(value["width"]))
    return value or "auto"


def intensity_range(x: np.ndarray, method: str, percentiles=(0.5, 99.5)) -> tuple[float, float]:
    """The (low, high) that :func:`to_unit` maps to 0 and 1: min-max or percentiles of ``x``."""
    flat = x.reshape(-1)
    if flat.size == 0:
        return 0.0, 1.0
    if method == "minmax":
        return float(flat.min()), float(flat.max())
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: flat.size // _PERCENTILE_SAMPLE + 1]
    lo, hi = np.percentile(flat, [percentiles[0], percentiles[1]])
    return float(lo), float(hi)


def to_unit(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 1] (clipped); a constant image becomes all zeros."""
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return np.clip((x.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def normalise(x: np.ndarray, method: str, percentiles=(0.5, 99.5)) -> np.ndarray:
    """``x`` mapped to [0, 1] by its own min-max or percentile range."""
    lo, hi = intensity_range(x, method, percentiles)
    return to_unit(x, lo, hi)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an HxWx3 image (the grey of a colour source when ``channels: grey``)."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(rgb.dtype)


def square(img: np.ndarray, fit: str) -> np.ndarray:
    """Make an image square: ``crop`` its centre, ``pad`` it (black, centred), or leave it for ``resize``."""
    h, w = img.shape[:2]
    if h == w or fit == "resize":
        return img
    if fit == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return img[top:top + s, left:left + s]
    s = max(h, w)
    out = np.zeros((s, s) + img.shape[2:], dtype=img.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[top:top + h, left:left + w] = img
    return out


def finish(unit: np.ndarray, size: int, fit: str, channels: str) -> np.ndarray:
    """A [0, 1] image (HxW or HxWx3) -> the output array: uint8, ``size x size``, RGB or grey."""
    from PIL import Image

    img = to_uint8(unit)
    if channels == "grey" and img.ndim == 3:
        img = luminance(img)
    img = square(img, fit)
    if img.shape[0] != size or img.shape[1] != size:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
    if channels == "rgb" and img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img


def save_png(img: np.ndarray, path: str | os.PathLike) -> None:
    """Write an 8-bit PNG (no timestamp or other metadata, so identical pixels give identical bytes), whole or
    not at all: a worker killed mid-write leaves no truncated file for a resumed run to pick up."""
    from PIL import Image

    from medti.atomic import atomic_path

    with atomic_path(path, fsync=False) as tmp:
        Image.fromarray(img).save(tmp, format="PNG", compress_level=3)  # ~as small as 6 and faster
