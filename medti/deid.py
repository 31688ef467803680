"""De-identification: salted hashes for subject and image ids, and redaction of header values in messages.

A subject id is an HMAC-SHA256 of the source value (a PatientID, say) under a secret salt, so the same
patient gets the same id in every run on this project while nobody without the salt can test a guessed
PatientID against it. The salt is 32 random bytes in an untracked local file: ``<project root>/.medti/salt``
(git-ignored), or the file named by ``MEDTI_SALT_FILE``. It is created on first use; keep it with the
project to keep ids stable, and never commit it.

No input file or folder name (nor the source root) is written anywhere: hospitals name export folders after
patients, their ids and dates in too many ways to redact. Where rejects.csv (or an error message) must name an
input, it names it by a salted *input id* (:meth:`Deidentifier.input`); the private lookup from id to real
path lives beside the salt, in ``.medti/input-paths.jsonl`` (git-ignored like the salt, never pushed), and
``medti prepare --show-paths`` shows the real paths on the terminal (stderr) only.

Output image names are *not* salted: they are derived from the source file's checksum (which the manifest
holds anyway), so that the split, the embedding subset and the order in which training reads them are the
same in every clone whatever its salt; the salt changes only the subject ids and input ids that are written.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from medti.errors import ConfigError
from medti.hashing import keyed_digest

SALT_ENV = "MEDTI_SALT_FILE"
SALT_BYTES = 32
ID_HEX = 16  # 64-bit ids: collisions are negligible for any realistic number of subjects or images


def salt_path(root: str | os.PathLike | None = None) -> Path:
    """Where the salt lives: ``$MEDTI_SALT_FILE``, else ``<root>/.medti/salt`` (root: the project root)."""
    env = os.environ.get(SALT_ENV)
    if env:
        return Path(env).expanduser()
    if root is None:
        from medti.config import project_root

        root = project_root()
    return Path(root) / ".medti" / "salt"


def load_salt(root: str | os.PathLike | None = None) -> bytes:
    """The project's salt, created (mode 0600) with secure random bytes if it does not exist yet.

    Creation is race-free: concurrent jobs that both find no salt write candidates, and the first to link
    its candidate into place wins; the others read the winner's.
    """
    path = salt_path(root)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SALT_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass
        finally:
            candidate.unlink(missing_ok=True)
    salt = path.read_bytes()
    if len(salt) < 16:
        raise ConfigError(f"{path}: the de-identification salt is too short ({len(salt)} bytes); "
                          f"remove the file to have a new one made (subject ids will change)")
    return salt


class Deidentifier:
    """Salted ids for subjects and images. Picklable, so worker processes get the same salt."""

    def __init__(self, salt: bytes):
        self._salt = salt

    def _digest(self, kind: str, value: str) -> str:
        return keyed_digest(self._salt, safe_text(f"{kind}\0{value}"))[:ID_HEX]

    def subject(self, value: str) -> str:
        """The de-identified id of a subject (patient) named ``value`` in the source."""
        return self._digest("subject", value)

    def image(self, value: str) -> str:
        """The de-identified id of one image, ``value`` naming it in the source (staged file names)."""
        return self._digest("image", value)

    def input(self, root: str | os.PathLike, relpath: str) -> str:
        """The id naming an input file (``relpath`` under the source ``root``) wherever it must be named."""
        return self._digest("input", f"{os.fspath(root)}\0{relpath}")


def safe_text(text: str) -> str:
    """``text`` with undecodable bytes of a file name (surrogate escapes) spelled as ``\\xNN``, so that
    it can be hashed or written as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8_name(text: str) -> bool:
    """Whether a file name read from the file system is valid UTF-8 (no surrogate escapes)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# -- the private lookup from input id to path ----------------------------------------------------------------
LOOKUP_NAME = "input-paths.jsonl"


def lookup_path(root: str | os.PathLike | None = None) -> Path:
    """The private lookup file (input id -> real path): beside the salt, so untracked like it."""
    return salt_path(root).parent / LOOKUP_NAME


def record_input_paths(paths: dict[str, str], root: str | os.PathLike | None = None) -> Path | None:
    """Add ``{input id: real path}`` to the private lookup (mode 0600; concurrent writers take turns)."""
    from filelock import FileLock

    if not paths:
        return None
    path = lookup_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(path.name + ".lock")), timeout=120):
        known = set(read_input_paths(root))
        new = [json.dumps({"id": k, "path": v}) + "\n" for k, v in sorted(paths.items()) if k not in known]
        if new:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, "".join(new).encode("ascii"))  # json escapes non-ASCII and undecodable bytes
            finally:
                os.close(fd)
    return path


def read_input_paths(root: str | os.PathLike | None = None) -> dict[str, str]:
    """The private lookup: input id -> real path (undecodable bytes of a name as surrogate escapes)."""
    path = lookup_path(root)
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            out[entry["id"]] = entry["path"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    return out


class InputNames:
    """Names inputs by salted ids, remembering each id's real path for the private lookup (main process)."""

    def __init__(self, deid: Deidentifier, root: str | os.PathLike):
        self.deid = deid
        self.root = Path(root).resolve()
        self.paths: dict[str, str] = {}

    def id(self, relpath: str) -> str:
        """The id of ``relpath`` (relative to the source root, or absolute: a labels file)."""
        base, _, part = relpath.partition("#")
        full = Path(base) if Path(base).is_absolute() else self.root / base
        shown = os.fspath(full) + (f"#{part}" if part else "")
        key = self.deid.input(self.root, relpath)
        self.paths[key] = shown
        return key

    def save(self, project_root: str | os.PathLike | None = None) -> Path | None:
        return record_input_paths(self.paths, project_root)


REDACTED = "[redacted]"

# Attributes whose values identify a patient, a study or a site (after DICOM PS3.15 E.1-1): redacted from the
# input paths that rejects.csv lists, since export folders are often named after them.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientBirthDate",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "IssuerOfPatientID",
    "MedicalRecordLocator", "AdmissionID", "AccessionNumber", "StudyID", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "FrameOfReferenceUID", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "StationName", "DeviceSerialNumber", "ContainerIdentifier",
)
_WHOLE_WORD_BELOW = 5  # shorter values are redacted only as whole words, so "001" leaves "subject_0017" alone


def redact(text: str, values: Iterable[str], min_length: int = 3) -> str:
    """``text`` with every occurrence of any of ``values`` (header values, say) replaced by [redacted]."""
    for value in sorted({v for v in values if v and len(v) >= min_length}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def redact_path(text: str, values: Iterable[str]) -> str:
    """``text`` (a path, or a message naming one) with identifying ``values`` replaced by [redacted],
    ignoring case: anywhere for values of five characters or more, as whole words for shorter ones."""
    import re

    low = text.lower()
    found = {v.strip() for v in values if v and len(v.strip()) >= 2 and v.strip().lower() in low}
    for value in sorted(found, key=len, reverse=True):
        pattern = re.escape(value)
        if len(value) < _WHOLE_WORD_BELOW:
            pattern = rf"(?<![A-Za-z0-9]){pattern}(?![A-Za-z0-9])"
        text = re.sub(pattern, REDACTED, text, flags=re.IGNORECASE)
    return text
