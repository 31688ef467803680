"""De-identification: salted hashes for subject and image ids, and redaction of header values in messages.

A subject id is an HMAC-SHA256 of the source value (a PatientID, say) under a secret salt, so the same
patient gets the same id in every run on this project while nobody without the salt can test a guessed
PatientID against it. The salt is 32 random bytes in an untracked local file: ``<project root>/.medti/salt``
(git-ignored), or the file named by ``MEDTI_SALT_FILE``. It is created on first use; keep it with the
project to keep ids stable, and never commit it.

Output file names are salted ids too. Where rejects.csv must name an input so that its owner can find it,
the path is relative to the input root, with the file's identifying header values (IDENTIFYING_KEYWORDS)
redacted; a file whose header cannot be read at all is listed by its path as it is.
"""

from __future__ import annotations

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
        return keyed_digest(self._salt, f"{kind}\0{value}")[:ID_HEX]

    def subject(self, value: str) -> str:
        """The de-identified id of a subject (patient) named ``value`` in the source."""
        return self._digest("subject", value)

    def image(self, value: str) -> str:
        """The de-identified id (and output file name) of one image, ``value`` naming it in the source."""
        return self._digest("image", value)


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
