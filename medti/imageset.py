"""Reading the images a manifest lists into one uint8 array, for classifiers, image quality and audits.

The sets medti works with are small (hundreds to a few thousand images of 64-256 px), so they are read once
into memory: a training step then costs a tensor index instead of a PNG decode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medti.errors import InputError


def read_manifest_images(paths: Sequence[str | os.PathLike], size: int | None = None) -> np.ndarray:
    """Images as an ``N x size x size x 3`` uint8 array (grey replicated to RGB; resized when ``size``).

    Every image must have the same size when ``size`` is None. A missing or unreadable file is an
    InputError naming it.
    """
    from PIL import Image

    out: np.ndarray | None = None
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except FileNotFoundError:
            raise InputError(f"{path}: image listed in the manifest is missing") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read image: {exc}") from None
        if out is None:
            out = np.empty((len(paths),) + arr.shape, dtype=np.uint8)
        elif arr.shape != out.shape[1:]:
            raise InputError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} px, the others "
                             f"{out.shape[2]}x{out.shape[1]} (set a size to resize them)")
        out[i] = arr
    if out is None:
        return np.zeros((0, size or 0, size or 0, 3), dtype=np.uint8)
    return out


def to_tensor(images: np.ndarray):
    """``N x H x W x 3`` uint8 array -> ``N x 3 x H x W`` uint8 torch tensor (no copy of the pixels' type)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
