"""The phantom kinds: each one's two classes (healthy first) and the key its ``labels.csv`` is keyed by.

Imports nothing, so the command line can list the kinds without loading numpy or pydicom.
"""

from __future__ import annotations

DEFAULT_CLASSES = {
    "chest_xray": ["normal", "opacity"],
    "prostate_mri": ["no_cspca", "cspca"],
    "histopathology": ["benign", "atypical"],
}
LABEL_KEYS = {"chest_xray": "path", "prostate_mri": "StudyInstanceUID", "histopathology": "SOPInstanceUID"}
KINDS = tuple(DEFAULT_CLASSES)
