"""Labels: from a CSV keyed by file path or a DICOM identifier, from a DICOM attribute, or from folder names.

A raw label is a class name, a key of ``labels.map`` (raw value -> class name), or a class index (0, 1, ...).
No value of the labels file nor of a DICOM header (a path key, a UID, a label) and no path of the labels file
appears in a message: exports name files and folders after patients, and labels files hold those names.
Messages name the setting, the key's kind and the CSV line instead.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from medti.errors import ConfigError, InputError
from medti.preprocess.records import Rejected

# Keys whose values are user-chosen names (safe to show in messages); the others are header values.
PLAIN_KEYS = ("path", "case")


def normalise_path_key(value: str) -> str:
    value = value.strip().replace("\\", "/")
    while value.startswith("./"):
        value = value[2:]
    return value


class Labeler:
    """Resolves the class of an image from its keys; picklable (worker processes get a copy)."""

    def __init__(self, spec: dict | None, classes: list[str], root: Path, setting: str, allowed_keys: tuple[str, ...]):
        spec = spec or {}
        self.classes = list(classes)
        self.map = {str(k): v for k, v in (spec.get("map") or {}).items()}
        for raw, cls in self.map.items():
            if cls not in self.classes:
                raise ConfigError(f"{setting}.map: '{raw}' maps to '{cls}', which is not a class "
                                  f"({', '.join(self.classes)})")
        self.tag = spec.get("tag")
        self.key = spec.get("key")
        self.column = spec.get("column") or "label"
        self.setting = f"{setting}.csv"
        self.csv_path: Path | None = None
        self.csv_name = ""
        self.table: dict[str, tuple[int, str]] = {}
        if spec.get("csv") and self.tag:
            raise ConfigError(f"{setting}: give either csv (with key) or tag, not both")
        if spec.get("csv"):
            if not self.key:
                raise ConfigError(f"{setting}.key: required with labels.csv (one of: {', '.join(allowed_keys)})")
            if self.key not in allowed_keys:
                raise ConfigError(f"{setting}.key: '{self.key}' cannot name an image of this source "
                                  f"(use one of: {', '.join(allowed_keys)})")
            path = Path(spec["csv"])
            self.csv_path = path if path.is_absolute() else (root / path)
            self.csv_name = self.csv_path.name
            self._load()

    @property
    def from_csv(self) -> bool:
        return self.csv_path is not None

    def _load(self) -> None:
        path = self.csv_path
        if not path.is_file():
            raise ConfigError(f"{self.setting}: the labels file is not there (check the path it gives)")
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                fields = reader.fieldnames or []
                for col in (self.key, self.column):
                    if col not in fields:
                        raise ConfigError(f"{self.setting}: the labels file has no column '{col}' "
                                          f"({len(fields)} columns; set labels.key/labels.column to two of them)")
                for line, row in enumerate(reader, start=2):
                    key = (row.get(self.key) or "").strip()
                    if not key:
                        continue
                    if self.key == "path":
                        key = normalise_path_key(key)
                    label = (row.get(self.column) or "").strip()
                    seen = self.table.get(key)
                    if seen and seen[1] != label:
                        raise InputError(f"{self.setting}: lines {seen[0]} and {line} of the labels file give the "
                                         f"same {self.key} different labels")
                    if not seen:
                        self.table[key] = (line, label)
        except UnicodeDecodeError:
            raise InputError(f"{self.setting}: the labels file is not UTF-8 text") from None
        except csv.Error:
            raise InputError(f"{self.setting}: the labels file is not a readable CSV file") from None

    def class_of(self, raw: str, where: str, plain: bool = False) -> str:
        """Map a raw label to a class name; the raw value is never shown in a message (``plain`` is kept for
        callers)."""
        raw = str(raw).strip()
        if raw in self.map:
            return self.map[raw]
        if raw in self.classes:
            return raw
        if raw.isdigit() and int(raw) < len(self.classes):
            return self.classes[int(raw)]
        if not raw:
            raise Rejected("no_label", f"{where}: the label is empty")
        raise Rejected("unknown_label", f"{where}: the label is not a class ({', '.join(self.classes)}), "
                                        f"a class index or a key of labels.map")

    def resolve(self, keys: dict[str, str | None], tag_value: str | None = None,
                folder_label: str | None = None) -> tuple[str, int | None]:
        """(class name, CSV line or None) for an image with identifiers ``keys``; raises Rejected."""
        if self.from_csv:
            value = keys.get(self.key)
            if value is None or str(value).strip() == "":
                raise Rejected("no_label", f"the image has no {self.key} to look up in the labels file")
            hit = self._row(value)
            if hit is None:
                raise Rejected("no_label", f"no row in the labels file for this image's {self.key}")
            line, raw = hit
            try:
                return self.class_of(raw, f"labels file line {line}"), line
            except Rejected as exc:
                raise Rejected(exc.kind, exc.reason, line) from None
        if self.tag:
            if tag_value is None or str(tag_value).strip() == "":
                raise Rejected("no_label", f"the label attribute {self.tag} is absent or empty")
            return self.class_of(str(tag_value), f"attribute {self.tag}"), None
        if folder_label is not None:
            return self.class_of(folder_label, "its top folder (the class folder)"), None
        raise Rejected("no_label", "the image is in no class folder (put it under <class>/ or give labels.csv)")

    def _row(self, value) -> tuple[int, str] | None:
        value = str(value).strip()
        return self.table.get(normalise_path_key(value) if self.key == "path" else value)

    def line_of(self, keys: dict[str, str | None]) -> int | None:
        """The CSV line of an image with identifiers ``keys``, or None (for inputs rejected before reading,
        so that their row is not also reported as a label without an image)."""
        value = keys.get(self.key) if self.from_csv else None
        hit = self._row(value) if value is not None and str(value).strip() else None
        return hit[0] if hit else None

    def unmatched_rows(self, used_lines: set[int]) -> list[tuple[int, str]]:
        """CSV rows no image matched: (line, '') (keys are never shown: a path key names a patient's folder)."""
        out = []
        for _key, (line, _) in self.table.items():
            if line not in used_lines:
                out.append((line, ""))
        return sorted(out)

    def csv_display_path(self, root: Path) -> str:
        """The labels file as rejects.csv names it: relative to the input root when inside it."""
        try:
            return self.csv_path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return os.fspath(self.csv_path)
