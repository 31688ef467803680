"""Every hash medti computes, in one place: file checksums, DVC-compatible folder checksums, short digests
of settings, salted (keyed) digests of identifiers.

A file's DVC checksum is the md5 of its bytes; a folder's is DVC 3's ``<md5>.dir``: the md5 of the JSON list
of ``{"md5", "relpath"}`` entries sorted by path. They equal what ``dvc.lock`` records for the same content,
so an MLflow run's tags name the exact data it used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def _file_digest(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (manifests, embeddings, journals)."""
    return _file_digest(path, "sha256")


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file's bytes (what DVC records)."""
    return _file_digest(path, "md5")


def sha256_hex(data: bytes | str) -> str:
    """The sha256 of bytes, or of a string's UTF-8 encoding."""
    return sha256_of([data])


def sha256_of(chunks: Iterable[bytes | str]) -> str:
    """The sha256 of the concatenation of ``chunks`` (strings as UTF-8), without building it in memory."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
    return h.hexdigest()


def json_digest(value: Any, length: int | None = None) -> str:
    """The sha256 of ``value`` as canonical JSON (sorted keys; ``str`` for what JSON cannot hold), optionally
    cut to ``length`` hex digits: the key of a set of settings."""
    digest = sha256_hex(json.dumps(value, sort_keys=True, default=str))
    return digest[:length] if length else digest


def keyed_digest(key: bytes, text: str) -> str:
    """HMAC-SHA256 of ``text`` under ``key``: ids that cannot be reversed or recomputed without the salt."""
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


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
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"
