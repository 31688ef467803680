"""What a worker returns per input: image records (metadata only; pixels go straight to a PNG) or rejects.

Workers never return pixels or header values to the main process: an image is written as a staged PNG
under its de-identified id, and its record carries its output id, the salted subject id, the class, the source
checksum and the input paths (relative to the input root) it came from. Input paths stay in memory: what is
written names inputs by salted input ids only (medti.deid.InputNames).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medti.deid import Deidentifier, redact_path
from medti.hashing import sha256_hex

# Errors of the machine, not of an input: a write that fails with one of these stops the run (never a reject).
RESOURCE_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EIO, errno.EROFS,
                                        errno.EFBIG, errno.ENOMEM) if e is not None)


class StagingWriteError(OSError):
    """A staged image could not be written (disk full, I/O error, read-only): raised through the worker pool
    to stop the run; an OSError subclass, so that it pickles as one."""


def is_resource_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


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
        """One Reject per input path, identifying header values redacted from the reason."""
        reason = redact_path(self.reason, self.identifiers)
        return [Reject(p, self.kind, reason, self.line) for p in paths]


@dataclass(frozen=True, slots=True)
class Reject:
    path: str            # relative to the input root (or the labels file, or '<file>#<split>/<index>'); in memory
                         # only: written as its salted input id
    kind: str
    reason: str
    line: int | None = None  # the labels CSV line the input matched, if any (not written out)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    image_id: str
    subject_id: str
    cls: str
    source_checksum: str
    inputs: tuple[str, ...]  # relative to the input root; in memory only (the journal holds their positions)
    staged: str          # file name under the staging folder
    line: int | None = None
    split: str | None = None  # an official split the source brings (MedMNIST), else None
    order: str = ""      # salt-free key (sha256 of the source checksum and the frame): orders splits and subsets
    note: str = ""       # how the image departs from its settings' intent, counted in summary.json (never a name):
                         # volumes.NO_GLAND / EMPTY_GLAND, a lesion-free case that took the volume's middle slice


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
    min_size: int = 1            # prepare.min_size: an image with a shorter side is rejected (too_small)
    max_pixels: int | None = None  # prepare.max_pixels: a larger image is rejected (too_large), before decoding
                                   # where the header tells its size

    def check_size(self, height: int, width: int, frames: int = 1) -> None:
        """Reject an image of ``height x width`` (per frame) outside prepare.min_size / max_pixels."""
        if self.max_pixels is not None and int(height) * int(width) > self.max_pixels:
            raise Rejected("too_large", f"{int(width)} x {int(height)} pixels, more than prepare.max_pixels "
                                        f"({self.max_pixels})")
        if min(int(height), int(width)) < self.min_size:
            raise Rejected("too_small", f"{int(width)} x {int(height)} pixels, a side shorter than "
                                        f"prepare.min_size ({self.min_size})")

    def write(self, unit: np.ndarray, image_key: str, subject_key: str, cls: str, checksum: str,
              inputs: tuple[str, ...], line: int | None = None, split: str | None = None,
              identifiers: tuple[str, ...] = (), part: str = "", note: str = "") -> ImageRecord:
        """Finish a [0, 1] image, write it as a staged PNG, return its record. ``part`` names the image within
        its input (a frame, a page); the output id derives from the checksum and ``part``, so that it does not
        depend on the salt. ``identifiers`` is kept for callers (reasons are redacted against them); ``note``
        goes on the record (ImageRecord.note)."""
        from medti.preprocess.imaging import finish, save_png

        self.check_size(*unit.shape[:2])
        order = sha256_hex(f"{checksum}\0{part}")
        staged = f"{self.deid.image(image_key)}.png"
        try:
            save_png(finish(unit, self.size, self.fit, self.channels), self.staging / staged)
        except OSError as exc:
            if is_resource_error(exc):
                raise StagingWriteError(exc.errno, exc.strerror, str(self.staging)) from None
            raise
        return ImageRecord(order[:16], self.deid.subject(subject_key), cls, checksum, tuple(inputs), staged, line,
                           split, order, note)


def combined_checksum(checksums) -> str:
    """The checksum of a multi-file input: sha256 over its files' sorted sha256 hex digests."""
    return sha256_hex("\n".join(sorted(checksums)))
