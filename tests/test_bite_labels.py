"""Synthetic rows reach the classifier with their own labels (issue 19).

A planted bug that reversed the synthetic labels on their way to training passed every classifier, evaluate
and report test: a real + synthetic classifier still cleared its AUC floor, and nothing looked at the
synthetic-only one. These tests look at both ends: the label of every row as ``load_experiment`` hands it
to training (checked row by row against the manifests, images included), and a synthetic-only classifier
trained on images that carry their class plainly (a bright square for ``lesion``, none for ``normal``),
tested on real images drawn the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medti.hashing import sha256_hex
from medti.manifest import write_manifest

MODALITY = "toy"
SIZE = 32  # the classifier's smallest size


def draw(label: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A dark noisy square image; class k > 0 adds a bright centred square whose side grows with k (so every
    class looks different and each class's look is plain to a small network)."""
    img = rng.normal(60.0, 12.0, (size, size))
    if label > 0:
        half = 3 + 2 * label
        c = size // 2 + int(rng.integers(-4, 5))
        img[c - half:c + half, c - half:c + half] = rng.normal(200.0, 12.0, (2 * half, 2 * half))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _save(img: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return sha256_hex(img.tobytes())


def write_sets(root: Path, classes: tuple[str, ...], per_split: dict[str, int], n_synthetic: int,
               seed: int = 0, real_carries_class: bool = True) -> tuple[Path, Path]:
    """A real (prepared) and a synthetic manifest in medti's form under ``root``; returns their paths.

    Real paths are ``real/<split>/<class>-<i>.png``, synthetic ones ``<class>/s-<i>.png``: no id is shared, so
    a row's id names its manifest row. ``real_carries_class=False`` draws the real *train* images all alike
    (class 0's look), so only the synthetic images can teach the class."""
    rng = np.random.default_rng(seed)
    real_rows, syn_rows = [], []
    for split, n in per_split.items():
        for label, cls in enumerate(classes):
            for i in range(n):
                rel = f"{split}/{cls}-{i:03d}.png"
                look = label if (real_carries_class or split != "train") else 0
                checksum = _save(draw(look, rng), root / "real" / rel)
                real_rows.append({"path": rel, "modality": MODALITY, "class": cls, "label": label,
                                  "subject_id": sha256_hex(f"{split}-{cls}-{i}")[:16], "split": split,
                                  "source_checksum": checksum, "synthetic": False, "ti_subset": False})
    for label, cls in enumerate(classes):
        for i in range(n_synthetic):
            rel = f"{cls}/s-{i:05d}.png"
            _save(draw(label, rng), root / "synthetic" / rel)
            syn_rows.append({"path": rel, "modality": MODALITY, "class": cls, "label": label, "subject_id": "",
                             "split": "train", "source_checksum": "", "synthetic": True,
                             "prompt": f"a toy image of <{MODALITY}-{cls}>", "negative_prompt": "", "seed": i,
                             "scheduler": "toy", "steps": 0, "guidance": 0.0, "embedding_checksum": f"toy-{label}",
                             "base_model": "toy"})
    real, synthetic = root / "real" / "manifest.csv", root / "synthetic" / "manifest.csv"
    write_manifest(pd.DataFrame(real_rows), real)
    write_manifest(pd.DataFrame(syn_rows), synthetic)
    return real, synthetic


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


@pytest.mark.parametrize("classes", [("normal", "lesion"), ("normal", "small", "large")])
@pytest.mark.parametrize("real_count,synthetic_count", [(None, None), (None, 6), (0, None)])
def test_every_row_is_handed_to_training_with_its_manifest_label(tmp_path, classes, real_count, synthetic_count):
    """Each training row's label, as ``load_experiment`` hands it over, is the label its own manifest row gives
    (synthetic and real alike), and its image is that row's file; val and test are the real splits as listed."""
    from medti.classifier import load_experiment

    real, synthetic = write_sets(tmp_path, classes, {"train": 4, "val": 3, "test": 3}, n_synthetic=5 if
                                 synthetic_count is None else 8)
    real_rows = pd.read_csv(real).set_index("path")
    syn_rows = pd.read_csv(synthetic).set_index("path")
    data = load_experiment(real, synthetic, real_count=real_count, synthetic_count=synthetic_count,
                           modality=MODALITY, size=SIZE, seed=3)
    assert data.classes == list(classes)

    train = data.train
    from_synthetic = [i for i in train.ids if i in syn_rows.index]
    from_real = [i for i in train.ids if i in real_rows.index]
    assert len(from_synthetic) + len(from_real) == len(train) == len(train.labels) == len(train.images)
    assert len(from_synthetic) == data.n_synthetic == (5 * len(classes) if synthetic_count is None else 6)
    assert len(from_real) == data.n_real == (0 if real_count == 0 else 4 * len(classes))
    for k, row_id in enumerate(train.ids):
        rows, folder = (syn_rows, synthetic.parent) if row_id in syn_rows.index else (real_rows, real.parent)
        assert int(train.labels[k]) == int(rows.loc[row_id, "label"]), (row_id, "synthetic" if rows is syn_rows
                                                                         else "real")
        assert classes[int(train.labels[k])] == rows.loc[row_id, "class"]
        assert np.array_equal(train.images[k].numpy(), _pixels(folder / row_id)), row_id
    # every class is represented among the synthetic rows (so a relabelling cannot hide in a missing class)
    assert {int(train.labels[train.ids.index(i)]) for i in from_synthetic} == set(range(len(classes)))

    for name in ("val", "test"):
        split = getattr(data, name)
        listed = real_rows[real_rows["split"] == name]
        assert sorted(split.ids) == sorted(listed.index)
        for k, row_id in enumerate(split.ids):
            assert int(split.labels[k]) == int(listed.loc[row_id, "label"])
            assert np.array_equal(split.images[k].numpy(), _pixels(real.parent / row_id))


def test_a_synthetic_only_classifier_learns_the_class_its_images_carry(tmp_path):
    """Trained on synthetic images alone, where a bright square marks ``lesion``, the classifier ranks the real
    test images almost perfectly (AUC > 0.9); with the synthetic labels reversed it would rank them backwards
    (AUC near 0). The real training images all look alike here, so only the synthetic ones teach the class."""
    from medti.classifier import ClassifierSettings, train_classifier

    real, synthetic = write_sets(tmp_path, ("normal", "lesion"), {"train": 4, "val": 8, "test": 12},
                                 n_synthetic=24, seed=1, real_carries_class=False)
    settings = ClassifierSettings(arch="resnet10", width=0.25, size=SIZE, steps=16, eval_every=8, batch_size=16,
                                  augment="none", device="cpu")
    result = train_classifier(real, tmp_path / "synthetic_only", settings=settings, synthetic_manifest=synthetic,
                              real_count=0, synthetic_count=None, seed=0, modality=MODALITY)
    m = result.metrics
    assert (m["n_real"], m["n_synthetic"], m["n_test"]) == (0, 48, 24)
    assert m["test_auc"] > 0.9, m
    assert m["test_accuracy"] > 0.75, m
