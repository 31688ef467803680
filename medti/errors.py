"""Errors that reach users as one clear line.

Raise :class:`MedtiError` (or a subclass) for anything a user can fix: bad input, a bad setting, a missing
model. The CLI prints it as ``medti: error: <message>`` with no traceback and exits with status 2.
Messages name the file or setting and the reason, and never carry DICOM header values.
"""

from __future__ import annotations


class MedtiError(Exception):
    """A problem the user can fix, reported as a single line."""


class ConfigError(MedtiError):
    """A parameter in params.yaml or on the command line is invalid."""


class InputError(MedtiError):
    """An input file or folder cannot be used."""


class ModelError(MedtiError):
    """A base model or an embedding cannot be loaded or does not fit."""


class TrainingError(MedtiError):
    """Training cannot continue (a NaN loss, say); the last good checkpoint is kept."""


class ResourceError(MedtiError):
    """The machine cannot go on (no space left, an I/O error, a read-only output): not the input's fault; the
    run stops, keeps what it can resume from, and says so."""
