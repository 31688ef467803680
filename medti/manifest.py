"""The dataset manifest: one row per image, the same form for real and synthetic data.

Paths are relative to the manifest's folder, so a prepared dataset can move or be pulled by DVC. Real rows
come from ``medti prepare``; synthetic rows from ``medti generate`` add the generation settings. Only
de-identified values appear here: ``subject_id`` is a salted hash, never a DICOM header value.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medti.atomic import atomic_path
from medti.errors import InputError
from medti.hashing import file_sha256

COLUMNS = ["path", "modality", "class", "label", "subject_id", "split", "source_checksum", "synthetic"]
REAL_COLUMNS = COLUMNS + ["ti_subset"]
SYNTHETIC_COLUMNS = COLUMNS + ["prompt", "negative_prompt", "seed", "scheduler", "steps", "guidance",
                               "embedding_checksum", "base_model"]
SPLITS = ("train", "val", "test")


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write atomically; ``.parquet`` or ``.csv`` by extension. Rows are sorted for stable checksums."""
    path = Path(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest is missing columns {missing}")
    df = df.sort_values(["split", "class", "path"], kind="stable").reset_index(drop=True)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, lineterminator="\n")


def read_manifest(path: str | os.PathLike, absolute: bool = True) -> pd.DataFrame:
    """Read a manifest; with ``absolute`` the ``path`` column is resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"subject_id": str})
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad input file
        raise InputError(f"{path}: cannot read manifest: {str(exc).splitlines()[0]}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: not a medti manifest (missing columns: {', '.join(missing)})")
    if absolute:
        root = path.parent.resolve()
        df["path"] = [str(root / p) for p in df["path"]]
    return df




def manifest_checksum(path: str | os.PathLike) -> str:
    """The sha256 of a manifest file: recorded in embedding metadata and reports."""
    return file_sha256(path)
