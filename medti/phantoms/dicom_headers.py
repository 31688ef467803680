"""The DICOM side of the phantoms: fake patients and studies (the PHI that ingestion must remove),
deterministic UIDs, and datasets with their pixel data, written as Part 10 files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from medti.hashing import sha256_hex

_FIRST = ["Alex", "Maria", "Jan", "Sofia", "Pieter", "Anna", "Luca", "Eva", "Tomas", "Ines", "Noor", "Daan",
          "Lotte", "Kees", "Fatima", "Henk", "Mila", "Ruben", "Sara", "Bram"]
_LAST = ["Jansen", "de Vries", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "de Boer", "Bos", "Vos",
         "Peters", "Hendriks", "Dekker", "Brouwer", "Kok", "Jacobs", "Vermeulen", "van Dijk", "Willems", "Maas"]
_HOSPITALS = ["St. Elsewhere General Hospital", "Westbrook University Medical Centre",
              "Riverside Community Hospital", "Northfield Cancer Institute"]


def uid(*parts) -> str:
    """A deterministic UID under the 2.25 (UUID-derived) root."""
    digest = sha256_hex("\0".join(str(p) for p in parts))
    return f"2.25.{int(digest[:32], 16)}"


def _date(rng, first_year: int, last_year: int) -> str:
    return f"{rng.integers(first_year, last_year + 1):04d}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"


def _person(rng) -> str:
    return f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(len(_FIRST))]}"


def fake_patient(rng, index: int, sex: str | None = None) -> dict:
    """Fake but realistic patient identity (the PHI that ingestion must never let through)."""
    return {
        "PatientName": _person(rng),
        "PatientID": f"PX{rng.integers(10**6, 10**7)}",
        "PatientBirthDate": _date(rng, 1940, 1985),
        "PatientSex": sex or ("F" if rng.random() < 0.5 else "M"),
        "OtherPatientIDs": f"MRN-{rng.integers(10**7, 10**8)}",
        "_index": index,
    }


def fake_study(rng, seed_parts: tuple, patient: dict, description: str) -> dict:
    return {
        "StudyInstanceUID": uid(*seed_parts, "study"),
        "StudyDate": _date(rng, 2014, 2023),
        "StudyTime": f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}",
        "AccessionNumber": f"ACC{rng.integers(10**7, 10**8)}",
        "StudyID": str(rng.integers(1000, 9999)),
        "StudyDescription": description,
        "InstitutionName": _HOSPITALS[rng.integers(len(_HOSPITALS))],
        "InstitutionAddress": f"{rng.integers(1, 400)} Harbour Road, Springfield",
        "ReferringPhysicianName": _person(rng),
        "PerformingPhysicianName": _person(rng),
        "OperatorsName": _person(rng),
        "StationName": f"STATION{rng.integers(1, 40):02d}",
        "_DeviceSerialNumber": f"SN{rng.integers(10**5, 10**6)}",
        "PatientAge": f"{max(18, int(rng.integers(2014, 2024)) - int(patient['PatientBirthDate'][:4])):03d}Y",
    }


def dicom_dataset(sop_class: str, sop_uid: str, modality: str, patient: dict, study: dict):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "2.25.181440893591357123456789012345678901"
    meta.ImplementationVersionName = "MEDTI_PHANTOM"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.Manufacturer = "medti phantom"
    ds.ManufacturerModelName = "Synthetic 1"
    ds.DeviceSerialNumber = study["_DeviceSerialNumber"]
    for key, value in {**patient, **study}.items():
        if not key.startswith("_"):
            setattr(ds, key, value)
    ds.SeriesDate = ds.ContentDate = study["StudyDate"]
    ds.SeriesTime = ds.ContentTime = study["StudyTime"]
    return ds


def set_pixels(ds, arr, photometric: str, bits_stored: int | None = None) -> None:
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.PhotometricInterpretation = photometric
    if arr.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
    else:
        ds.SamplesPerPixel = 1
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored or 16
        ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()


def save(ds, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
