"""MedMNIST ``.npz`` files (any 2D subset and size), keeping their official train/val/test splits.

``source.path`` is a ``.npz`` file, or a folder holding ``<dataset>_<size>.npz`` (or the official
``<dataset>.npz`` / ``<dataset>_<size>.npz`` names; ``file`` names it directly). Only with
``download: true`` and the optional ``medmnist`` package installed (it needs torchvision, so medti does not
depend on it) is a missing file downloaded into that folder. A label index maps to a class through
``class_names`` (one entry per index, null to leave an index out), by default the modality's classes in
order. MedMNIST has no patient ids, so every image is its own subject; its checksum is the sha256 of the
image's array bytes.
"""

from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from medti.errors import ConfigError, InputError
from medti.hashing import sha256_hex
from medti.manifest import SPLITS
from medti.preprocess.records import Context, Reject, Result

CHUNK = 256
DATA_URL = "https://zenodo.org/records/10519652"


def candidate_names(dataset: str, size: int) -> list[str]:
    return [f"{dataset}_{size}.npz"] + ([f"{dataset}.npz"] if size == 28 else [])


def _npz_shapes(path: Path) -> dict[str, tuple]:
    """Array shapes in an .npz without loading the arrays (reads each .npy header only)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    major, _ = np.lib.format.read_magic(fh)
                    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read_header(fh)
                shapes[info.filename[:-4]] = shape
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    return shapes


def _download(folder: Path, dataset: str, size: int) -> None:
    try:
        import medmnist
    except ImportError:
        raise ConfigError(f"source.download: the optional 'medmnist' package is not installed (pip install "
                          f"medmnist), so {folder / candidate_names(dataset, size)[0]} cannot be downloaded; "
                          f"or put the file there yourself (from {DATA_URL})") from None
    info = medmnist.INFO.get(dataset)
    if info is None:
        raise ConfigError(f"source.dataset: '{dataset}' is not a MedMNIST subset ({', '.join(sorted(medmnist.INFO))})")
    folder.mkdir(parents=True, exist_ok=True)
    getattr(medmnist, info["python_class"])(split="test", download=True, root=str(folder), size=size)


def resolve_file(cfg: dict, path: Path) -> Path:
    """The .npz file a ``medmnist`` source reads (downloading it first where asked and possible)."""
    if path.suffix == ".npz" and not path.is_dir():
        if path.is_file():
            return path
        raise InputError(f"{path}: MedMNIST file not found")
    dataset, size = cfg.get("dataset"), int(cfg.get("image_size") or 28)
    if cfg.get("file"):
        names = [cfg["file"]]
    elif dataset:
        names = candidate_names(dataset, size)
    else:
        raise ConfigError("source: a medmnist source needs path to an .npz file, or file, or dataset (+ image_size)")
    for name in names:
        if (path / name).is_file():
            return path / name
    if cfg.get("download") and dataset:
        _download(path, dataset, size)
        for name in names:
            if (path / name).is_file():
                return path / name
    hint = ("set source.download: true with the medmnist package installed, or " if dataset else "") + \
           f"download it from {DATA_URL} into {path}"
    raise InputError(f"{path / names[0]}: MedMNIST file not found ({hint})")


@lru_cache(maxsize=2)
def _split_arrays(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's images and labels, loaded once per worker process (an .npz member is one compressed
    array, so it cannot be read in parts)."""
    with np.load(path) as z:
        return z[f"{split}_images"], np.asarray(z[f"{split}_labels"]).reshape(-1)


class MedmnistSource:
    kind = "medmnist"
    label_keys: tuple[str, ...] = ()
    channel_names: list[str] = []

    def __init__(self, cfg: dict, path: Path, classes: list[str]):
        self.file = resolve_file(cfg, path)
        self.root = self.file.parent
        names = cfg.get("class_names") or list(classes)
        for name in names:
            if name is not None and name not in classes:
                raise ConfigError(f"source.class_names: '{name}' is not a class of this modality "
                                  f"({', '.join(classes)})")
        self.class_names = names
        shapes = _npz_shapes(self.file)
        self.sizes = {}
        for split in SPLITS:
            img, lab = shapes.get(f"{split}_images"), shapes.get(f"{split}_labels")
            if img is None or lab is None:
                raise InputError(f"{self.file}: no {split}_images/{split}_labels arrays (not a MedMNIST file)")
            if len(img) == 4 and img[-1] not in (1, 3):
                raise ConfigError(f"{self.file}: images of shape {img[1:]} look like a 3D subset; only 2D subsets "
                                  f"(grey or RGB) are supported")
            if len(img) not in (3, 4):
                raise InputError(f"{self.file}: {split}_images has shape {img}; expected N x H x W (x 3)")
            if len(lab) == 2 and lab[1] != 1:
                raise ConfigError(f"{self.file}: {lab[1]} labels per image (a multi-label subset); pick a "
                                  f"single-label subset")
            if img[0] != lab[0]:
                raise InputError(f"{self.file}: {split} has {img[0]} images but {lab[0]} labels")
            self.sizes[split] = img[0]

    def plan(self, run_parallel, labeler) -> tuple[list, list]:
        items = [(split, start, min(start + CHUNK, n)) for split, n in self.sizes.items()
                 for start in range(0, n, CHUNK)]
        return items, []

    def inputs(self, item) -> list[str]:
        split, start, stop = item
        return [f"{self.file.name}#{split}/{i}" for i in range(start, stop)]

    def process(self, item, ctx: Context) -> Result:
        split, start, stop = item
        images, labels = _split_arrays(str(self.file), split)
        result = Result()
        for i in range(start, stop):
            name = f"{self.file.name}#{split}/{i}"
            label = int(labels[i])
            cls = self.class_names[label] if 0 <= label < len(self.class_names) else None
            if cls is None:
                result.rejects.append(Reject(name, "unknown_label", f"label {label} has no class in class_names"))
                continue
            img = images[i]
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            unit = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else max(float(img.max()), 1.0))
            key = f"medmnist:{self.file.name}:{split}:{i}"
            result.records.append(ctx.write(unit, key, key, cls, sha256_hex(np.ascontiguousarray(img).tobytes()),
                                            (name,), split=split))
        return result
