"""Small image sets with a known answer, for benchmarks and tests.

- ``toy_image`` / ``write_real_set`` / ``write_synthetic_set``: class 0 images are smooth noise; every other
  class adds a bright blob (class k: k blobs), so a classifier that learns anything reaches a high AUC,
  while the same images with shuffled labels leave it at chance. Written as PNGs with a real (prepared) or
  a synthetic manifest in medti's manifest form.
- ``draw_shapes``: a bright filled disc or a bright ring on a dark background, the two concepts of the
  Textual Inversion concept-recovery fixture (scripts/build_concept_fixture.py) and its test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medti.hashing import sha256_hex
from medti.manifest import write_manifest


def toy_image(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One ``size x size`` uint8 grey image: low-frequency noise, plus ``label`` bright blobs."""
    coarse = rng.normal(0.0, 1.0, (size // 8 + 2, size // 8 + 2))
    # Bilinear upsampling of coarse noise gives smooth, tissue-like texture without scipy.
    xs = np.linspace(0, coarse.shape[0] - 1.001, size)
    i, f = np.floor(xs).astype(int), xs - np.floor(xs)
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    img = rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]
    img = 0.35 + 0.08 * img + rng.normal(0.0, 0.03, (size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(label)):
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        r = rng.uniform(0.06, 0.1) * size
        img += 0.45 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


SHAPES = ("disc", "ring")


def draw_shapes(kind: str, n: int, seed: int, size: int = 32) -> np.ndarray:
    """``n`` grey images (uint8 ``[n, size, size]``) of a bright filled disc or a bright ring on a dark,
    slightly noisy background, with random position, size and brightness (the ring's hole is larger than
    the largest disc, so the centre tells them apart)."""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r} (choose from {', '.join(SHAPES)})")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) + 0.5
    s = size / 32.0
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        cx, cy = rng.uniform(13, 19, 2) * s
        r = np.hypot(xx - cx, yy - cy)
        if kind == "disc":
            mask = np.clip(rng.uniform(5.0, 7.5) * s - r + 0.5, 0, 1)
        else:
            outer, width = rng.uniform(9.0, 11.5) * s, rng.uniform(2.0, 3.0) * s
            mask = np.clip(outer - r + 0.5, 0, 1) * np.clip(r - (outer - width) + 0.5, 0, 1)
        bright, dark = rng.uniform(200, 245), rng.uniform(10, 35)
        img = dark + (bright - dark) * mask + rng.normal(0, 4, (size, size))
        out[i] = np.clip(img, 0, 255).round().astype(np.uint8)
    return out


def _save(img: np.ndarray, path: Path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return sha256_hex(img.tobytes())


def write_real_set(root, per_split: dict[str, int] | None = None, classes=("normal", "lesion"), modality: str = "toy",
                   size: int = 64, seed: int = 0, shuffle_labels: bool = False) -> Path:
    """``per_split[split]`` images per class and split under ``root``; returns the manifest path.

    ``shuffle_labels`` permutes the train and val labels (the test labels stay true): nothing to learn.
    """
    root = Path(root)
    per_split = per_split or {"train": 24, "val": 12, "test": 12}
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in per_split.items():
        labels = np.repeat(np.arange(len(classes)), n)
        shown = rng.permutation(labels) if shuffle_labels and split != "test" else labels
        for i, (true, label) in enumerate(zip(labels, shown)):
            rel = f"images/{split}/{i:04d}.png"
            checksum = _save(toy_image(true, rng, size), root / rel)
            rows.append({"path": rel, "modality": modality, "class": classes[label], "label": int(label),
                         "subject_id": sha256_hex(f"{seed}-{split}-{i}")[:16],
                         "split": split, "source_checksum": checksum, "synthetic": False,
                         "ti_subset": split == "train" and i % n < n // 2})
    path = root / "manifest.csv"
    write_manifest(pd.DataFrame(rows), path)
    return path


def write_synthetic_set(root, n_per_class: int = 24, classes=("normal", "lesion"), modality: str = "toy",
                        size: int = 64, seed: int = 100, copies: list[tuple[Path, int]] | None = None) -> Path:
    """A synthetic set in ``medti generate``'s manifest form; ``copies`` (path, label) are planted as is."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []

    def add(img: np.ndarray, label: int, i: int) -> None:
        rel = f"{classes[label]}/{i:05d}.png"
        _save(img, root / rel)
        rows.append({"path": rel, "modality": modality, "class": classes[label], "label": label,
                     "subject_id": "", "split": "train", "source_checksum": "", "synthetic": True,
                     "prompt": f"a toy image of <{modality}-{classes[label]}>", "negative_prompt": "", "seed": i,
                     "scheduler": "toy", "steps": 0, "guidance": 0.0, "embedding_checksum": f"toy-{label}",
                     "base_model": "toy"})

    for label in range(len(classes)):
        for i in range(n_per_class):
            add(toy_image(label, rng, size), label, i)
    for j, (path, label) in enumerate(copies or []):
        with Image.open(path) as im:
            add(np.asarray(im.convert("L")), int(label), n_per_class + j)
    manifest = root / "manifest.csv"
    write_manifest(pd.DataFrame(rows), manifest)
    return manifest
