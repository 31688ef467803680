"""What a worker returns per input: image records (metadata only; pixels go straight to a PNG) or rejects.

Workers never return pixels or header values to the main process: an image is written as a staged PNG
under its de-identified id, and its record carries that id, the salted subject id, the class, the source
checksum and the input paths (relative to the input root) it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medti.deid import Deidentifier, redact_path
from medti.hashing import sha256_hex


class Rejected(Exception):
    """One input cannot be used; ``kind`` is a short category, the message a one-line reason.

    ``line`` is the labels CSV line the input matched; ``identifiers`` are identifying header values of the
    input (its PatientID, say), redacted from its path where the reject is listed: folders are often named
    after them.
    """

    def __init__(self, kind: str, reason: str, line: int | None = None, identifiers: tuple[str, ...] = ()):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.line = line
        self.identifiers = identifiers

    def rejects(self, paths) -> list[Reject]:
        """One Reject per input path, identifying header values redacted from the paths."""
        reason = redact_path(self.reason, self.identifiers)
        return [Reject(redact_path(p, self.identifiers), self.kind, reason, self.line) for p in paths]


@dataclass(frozen=True, slots=True)
class Reject:
    path: str            # relative to the input root (or the labels file, or '<file>#<split>/<index>')
    kind: str
    reason: str
    line: int | None = None  # the labels CSV line the input matched, if any (not written out)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    image_id: str
    subject_id: str
    cls: str
    source_checksum: str
    inputs: tuple[str, ...]  # as rejects.csv would list them (identifying header values redacted)
    staged: str          # file name under the staging folder
    line: int | None = None
    split: str | None = None  # an official split the source brings (MedMNIST), else None


@dataclass
class Result:
    records: list[ImageRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class Context:
    """Everything a worker needs to turn a source image into an output PNG."""

    classes: list[str]
    size: int
    fit: str
    channels: str
    normalise: str
    percentiles: tuple[float, float]
    window: object
    frames: str
    staging: Path
    deid: Deidentifier
    labeler: object

    def write(self, unit: np.ndarray, image_key: str, subject_key: str, cls: str, checksum: str,
              inputs: tuple[str, ...], line: int | None = None, split: str | None = None,
              identifiers: tuple[str, ...] = ()) -> ImageRecord:
        """Finish a [0, 1] image, write it as a staged PNG under its de-identified id, return its record
        (``identifiers``: the source's identifying header values, never to be shown in its input paths)."""
        from medti.preprocess.imaging import finish, save_png

        image_id = self.deid.image(image_key)
        staged = f"{image_id}.png"
        save_png(finish(unit, self.size, self.fit, self.channels), self.staging / staged)
        listed = tuple(redact_path(p, identifiers) for p in inputs)
        return ImageRecord(image_id, self.deid.subject(subject_key), cls, checksum, listed, staged, line, split)


def combined_checksum(checksums) -> str:
    """The checksum of a multi-file input: sha256 over its files' sorted sha256 hex digests."""
    return sha256_hex("\n".join(sorted(checksums)))
