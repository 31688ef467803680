"""DVC-compatible checksums of inputs, recorded as MLflow tags so a run names the exact data it used.

A file's checksum is the md5 of its bytes; a folder's is DVC 3's ``<md5>.dir``: the md5 of the JSON list of
``{"md5", "relpath"}`` entries sorted by path. They equal what ``dvc.lock`` records for the same content.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def dvc_md5(path: str | os.PathLike) -> str:
    """The md5 DVC records for ``path`` (a file, or a folder as ``<md5>.dir``)."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise FileNotFoundError(path)
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in (".dvc", ".git")]
        for name in files:
            full = Path(root) / name
            entries.append({"md5": file_md5(full), "relpath": full.relative_to(path).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    digest = hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()
    return digest + ".dir"
