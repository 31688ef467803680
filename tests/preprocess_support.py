"""Helpers shared by the ingestion tests (test_preprocess_*.py, test_deid.py): running the stage on a source
folder, reading what it wrote, and building the worker context for pixel-level checks."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from medti.preprocess import prepare_source

# A split every test class of two or three subjects can fill (one subject per split at least).
THIRDS = {"train": 0.34, "val": 0.33, "test": 0.33}


def pydicom_file(name: str) -> Path:
    """A DICOM file shipped inside pydicom's wheel (never downloaded)."""
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    assert path.is_file(), f"{name} is not shipped with this pydicom"
    return path


def copy_pydicom_files(names, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(pydicom_file(name), folder / name)
    return folder


def write_labels(path: Path, key: str, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([key, "label"])
        writer.writerows(rows)
    return path


def run_prepare(tmp_path: Path, source: dict, classes=("a", "b"), out: str = "out", workers: int = 1,
                on_error: str | None = None, seed: int = 0, **settings):
    """``prepare_source`` with the de-identification salt kept under ``tmp_path`` (never the repository)."""
    settings.setdefault("split", THIRDS)
    return prepare_source(source, list(classes), tmp_path / out, settings=settings, workers=workers,
                          on_error=on_error, seed=seed, root=tmp_path)


def manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", dtype={"subject_id": str})


def rejects(out: Path, src: Path | None = None) -> pd.DataFrame:
    """rejects.csv (input_id, kind, reason) with a ``path`` column added from the private lookup beside the salt
    (found above ``out``): relative to ``src`` where given and inside it, else absolute."""
    from medti.deid import LOOKUP_NAME

    table = pd.read_csv(out / "rejects.csv", keep_default_na=False, dtype={"input_id": str})
    lookup = next((p / ".medti" / LOOKUP_NAME for p in Path(out).resolve().parents
                   if (p / ".medti" / LOOKUP_NAME).is_file()), None)
    paths = {}
    if lookup is not None:
        for line in lookup.read_text(encoding="ascii").splitlines():
            entry = json.loads(line)
            paths[entry["id"]] = entry["path"]

    def shown(input_id: str) -> str:
        path = paths.get(input_id, f"?{input_id}")
        if src is not None:
            root = str(Path(src).resolve()) + "/"
            return path[len(root):] if path.startswith(root) else path
        return path

    table["path"] = pd.Series([shown(i) for i in table.input_id], index=table.index, dtype=object)
    return table


def image(out: Path, rel: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(out / rel))


def images_by_source(out: Path, folder: Path) -> dict[str, list[np.ndarray]]:
    """Output images keyed by the name of the source file they came from (matched by source checksum)."""
    from medti.hashing import file_sha256

    by_checksum: dict[str, list[str]] = {}
    for row in manifest(out).itertuples():
        by_checksum.setdefault(row.source_checksum, []).append(row.path)
    return {p.name: [image(out, rel) for rel in sorted(by_checksum.get(file_sha256(p), []))]
            for p in folder.iterdir() if p.is_file()}


def context(tmp_path: Path, window="auto", normalise: str = "minmax", frames: str = "middle", size: int = 64,
            channels: str = "rgb"):
    """The worker context the pipeline builds, for calling the pixel functions directly."""
    from medti.deid import Deidentifier
    from medti.preprocess.imaging import window_setting
    from medti.preprocess.records import Context

    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return Context(classes=["a", "b"], size=size, fit="pad", channels=channels, normalise=normalise,
                   percentiles=(0.5, 99.5), window=window_setting(window), frames=frames, staging=staging,
                   deid=Deidentifier(b"0" * 32), labeler=None)


def dicom_units(path: Path, ctx) -> list[np.ndarray]:
    """The [0, 1] images the DICOM reader makes of one file."""
    from medti.preprocess import dicom

    return [unit for _, unit in dicom.frame_units(dicom.parse(Path(path).read_bytes()), ctx)]
