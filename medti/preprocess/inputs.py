"""Finding input files under a source folder and naming the subject each input belongs to."""

from __future__ import annotations

import os
import re
from pathlib import Path

from medti.errors import ConfigError
from medti.preprocess.records import Rejected


def list_files(root: Path, exclude: set[Path] = frozenset(), rejects: list | None = None) -> list[str]:
    """Every file under ``root`` (recursive, sorted), as posix paths relative to ``root``.

    Hidden files and folders (``.snakemake_timestamp``, ``.DS_Store``, ``.git``) are bookkeeping, not inputs.
    A file whose path is not valid UTF-8 (a name from another system's encoding) cannot be matched to a labels
    file nor read by every library: it is left out and, given ``rejects``, listed there (kind ``bad_name``).
    """
    from medti.deid import is_utf8_name
    from medti.preprocess.records import Reject

    excluded = {p.resolve() for p in exclude}
    excluded_names = {p.name for p in exclude} | {p.name for p in excluded}
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = Path(folder) / name
            if name in excluded_names and full.resolve() in excluded:  # resolve (slow) only where it may matter
                continue
            rel = full.relative_to(root).as_posix()
            if not is_utf8_name(rel):
                if rejects is not None:
                    rejects.append(Reject(rel, "bad_name", "the file or folder name is not valid UTF-8; rename it"))
                continue
            out.append(rel)
    return out


def is_dicom_keyword(value: str) -> bool:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(value) is not None


def check_dicom_keyword(value: str, setting: str) -> None:
    if not is_dicom_keyword(value):
        raise ConfigError(f"{setting}: '{value}' is not a DICOM attribute keyword (e.g. PatientID)")


def check_subject_from(value: str, plain: tuple[str, ...], dicom: bool, setting: str = "source.subject_from") -> None:
    """A ``subject_from`` setting is one of ``plain``, ``re:<regex>`` or (DICOM sources) a keyword."""
    if value in plain:
        return
    if value.startswith("re:"):
        try:
            re.compile(value[3:])
        except re.error as exc:
            raise ConfigError(f"{setting}: not a valid regular expression ({exc})") from None
        return
    if dicom and is_dicom_keyword(value):
        return
    options = ", ".join(plain) + ", re:<regex>" + (" or a DICOM keyword (PatientID, say)" if dicom else "")
    raise ConfigError(f"{setting}: '{value}' is not one of {options}")


def subject_key(spec: str, relpath: str, header=None, case: str | None = None) -> str:
    """The raw (not yet hashed) subject of an input.

    ``file``: every input is its own subject; ``folder``: the folder holding it; ``case``: a volume case;
    ``re:<regex>``: the first group (or the match) of a regular expression searched in the relative path;
    anything else is a DICOM keyword read from ``header`` (PatientID by default for DICOM).
    """
    if spec == "file":
        return f"file:{relpath}"
    if spec == "folder":
        return f"folder:{Path(relpath).parent.as_posix()}"
    if spec == "case" and case is not None:
        return f"case:{case}"
    if spec.startswith("re:"):
        m = re.search(spec[3:], relpath)
        if not m:
            raise Rejected("no_subject", f"the path does not match subject_from {spec}")
        return f"re:{m.group(1) if m.groups() else m.group(0)}"
    value = str(header.get(spec, "") or "").strip()
    if not value:
        raise Rejected("no_subject", f"{spec} is absent or empty, so the subject is unknown "
                                     f"(set source.subject_from, e.g. to file)")
    return f"{spec}:{value}"
