"""``medti phantoms``: the embedded default data set, seeded phantom images written as real DICOM.

Three modalities, two classes each (the modality's first class healthy, the second diseased), with
realistic headers that carry fake patient information, so de-identification is exercised end to end:

* ``chest_xray``: CR and DX radiographs, 12-bit, MONOCHROME1 and MONOCHROME2, some with a window or a
  VOI LUT in the header; disease = a focal opacity in a lung. ``labels.csv`` keyed by file path.
* ``prostate_mri``: axial multi-parametric MRI, three series per study (SeriesDescription T2W, ADC, HBV),
  the diffusion series on a coarser grid than T2W, files not in slice order; disease = a focal lesion in
  the peripheral zone, dark on T2W and ADC and bright on high-b DWI. ``labels.csv`` keyed by
  StudyInstanceUID.
* ``histopathology``: H&E patches (RGB or YBR_FULL, some RLE-compressed); disease = crowded, enlarged,
  pleomorphic, hyperchromatic nuclei. ``labels.csv`` keyed by SOPInstanceUID.

Some subjects have several images or studies, so a split that is not by subject would leak. File and
folder names are neutral (``subject_0007/image_2.dcm``) and carry no header value. The same seed gives the
same files, byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from medti.cliutils import add_common, load_params_arg, pick
from medti.errors import ConfigError

log = logging.getLogger("medti.phantoms")

DEFAULT_CLASSES = {
    "chest_xray": ["normal", "opacity"],
    "prostate_mri": ["no_cspca", "cspca"],
    "histopathology": ["benign", "atypical"],
}
LABEL_KEYS = {"chest_xray": "path", "prostate_mri": "StudyInstanceUID", "histopathology": "SOPInstanceUID"}


@dataclass
class PhantomResult:
    out: Path
    files: int
    images: int
    subjects: int


# -- fake identities and DICOM plumbing -----------------------------------------------------------------------
_FIRST = ["Alex", "Maria", "Jan", "Sofia", "Pieter", "Anna", "Luca", "Eva", "Tomas", "Ines", "Noor", "Daan",
          "Lotte", "Kees", "Fatima", "Henk", "Mila", "Ruben", "Sara", "Bram"]
_LAST = ["Jansen", "de Vries", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "de Boer", "Bos", "Vos",
         "Peters", "Hendriks", "Dekker", "Brouwer", "Kok", "Jacobs", "Vermeulen", "van Dijk", "Willems", "Maas"]
_HOSPITALS = ["St. Elsewhere General Hospital", "Westbrook University Medical Centre",
              "Riverside Community Hospital", "Northfield Cancer Institute"]


def _uid(*parts) -> str:
    """A deterministic UID under the 2.25 (UUID-derived) root."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"


def _date(rng, first_year: int, last_year: int) -> str:
    return f"{rng.integers(first_year, last_year + 1):04d}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"


def _person(rng) -> str:
    return f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(len(_FIRST))]}"


def _patient(rng, index: int, sex: str | None = None) -> dict:
    """Fake but realistic patient identity (the PHI that ingestion must never let through)."""
    return {
        "PatientName": _person(rng),
        "PatientID": f"PX{rng.integers(10**6, 10**7)}",
        "PatientBirthDate": _date(rng, 1940, 1985),
        "PatientSex": sex or ("F" if rng.random() < 0.5 else "M"),
        "OtherPatientIDs": f"MRN-{rng.integers(10**7, 10**8)}",
        "_index": index,
    }


def _study(rng, seed_parts: tuple, patient: dict, description: str) -> dict:
    return {
        "StudyInstanceUID": _uid(*seed_parts, "study"),
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


def _dataset(sop_class: str, sop_uid: str, modality: str, patient: dict, study: dict):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

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


def _pixels(ds, arr, photometric: str, bits_stored: int | None = None) -> None:
    import numpy as np

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


def _save(ds, path: Path) -> None:
    from pydicom import dcmwrite

    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def _smooth(img, sigma):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma)


# -- chest radiographs ----------------------------------------------------------------------------------------
def chest_image(rng, anatomy: dict, opacity: dict | None, size: int):
    """A frontal chest radiograph as attenuation in [0, 1] (dense = bright): body, lungs, heart,
    mediastinum, spine, ribs, clavicles; ``opacity`` adds a focal density inside a lung."""
    import numpy as np

    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    x = x - anatomy["shift"]
    img = np.full((size, size), 0.04, np.float32)
    body = (x / anatomy["body_w"]) ** 2 + ((y - 0.1) / 1.15) ** 2 < 1
    img[body] = 0.5
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        cx, rx, ry = side * 0.36, anatomy["lung_w"] * (0.92 if side > 0 else 1.0), anatomy["lung_h"]
        ell = ((x - cx) / rx) ** 2 + ((y + 0.02) / ry) ** 2 < 1
        dome = y < 0.02 + ry * 0.72 - 0.22 * ((x - cx) / rx) ** 2
        lungs |= ell & dome
    img[lungs] = 0.16
    img[(np.abs(x) < 0.09 + 0.04 * (y > 0)) & (y > -0.95) & body] = 0.68
    heart = ((x - 0.13) / anatomy["heart_r"]) ** 2 + ((y - 0.3) / (anatomy["heart_r"] * 0.78)) ** 2 < 1
    img[heart & body] = 0.64
    img += 0.08 * ((np.abs(x) < 0.045) & body)
    ribs = np.zeros_like(img)
    for k in range(10):
        yk = -0.62 + k * 0.12
        ribs += np.exp(-(((y - (yk + 0.28 * np.abs(x) ** 1.6)) / 0.018) ** 2)) * (np.abs(x) > 0.06)
    img += 0.09 * np.clip(ribs, 0, 1) * body
    clav = np.exp(-(((y - (-0.66 + 0.14 * np.abs(x))) / 0.02) ** 2)) * ((np.abs(x) > 0.08) & (np.abs(x) < 0.62))
    img += 0.14 * clav * body
    if opacity is not None:
        r2 = (x - opacity["x"]) ** 2 + (y - opacity["y"]) ** 2
        blob = opacity["amp"] * np.exp(-r2 / (2 * opacity["sigma"] ** 2))
        img += blob * np.clip(_smooth(lungs.astype(np.float32), size / 40), 0, 1)
    img = _smooth(img, size / 110)
    img *= 1.0 + 0.06 * y
    img += rng.normal(0, 0.012, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def _chest_anatomy(rng) -> dict:
    return {"shift": rng.uniform(-0.04, 0.04), "body_w": rng.uniform(0.86, 0.97), "lung_w": rng.uniform(0.22, 0.27),
            "lung_h": rng.uniform(0.5, 0.6), "heart_r": rng.uniform(0.22, 0.3)}


def _opacity(rng, anatomy: dict) -> dict:
    side = -1 if rng.random() < 0.5 else 1
    return {"x": side * 0.36 + rng.uniform(-0.1, 0.1), "y": rng.uniform(-0.35, 0.25),
            "sigma": rng.uniform(0.07, 0.12), "amp": rng.uniform(0.28, 0.42)}


def _chest_subject(out: Path, s: int, cls: str, sick: bool, rng, seed: int, size: int = 128) -> tuple[list, int]:
    """One subject's radiographs (one, or two with a follow-up)."""
    import numpy as np
    from pydicom.dataset import Dataset

    cr, dx = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"
    rows = []
    patient = _patient(rng, s)
    anatomy = _chest_anatomy(rng)
    opacity = _opacity(rng, anatomy) if sick else None
    for k in range(1 + (rng.random() < 0.35)):  # some subjects have a follow-up radiograph
        study = _study(rng, (seed, "chest", s, k), patient, "XR CHEST PA")
        is_cr = rng.random() < 0.5
        ds = _dataset(cr if is_cr else dx, _uid(seed, "chest", s, k, "image"), "CR" if is_cr else "DX", patient, study)
        ds.SeriesInstanceUID = _uid(seed, "chest", s, k, "series")
        ds.SeriesNumber, ds.InstanceNumber = 1, 1
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA" if rng.random() < 0.8 else "AP"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PatientOrientation = ["L", "F"]
        spacing = f"{430 / size:.4f}"
        ds.ImagerPixelSpacing = [spacing, spacing]
        if not is_cr:
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.PixelIntensityRelationship = "LOG"
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        if opacity is not None and k:  # the follow-up shows the same opacity, slightly moved
            opacity = {**opacity, "x": opacity["x"] + rng.uniform(-0.03, 0.03), "y": opacity["y"] + rng.uniform(-0.03, 0.03)}
        img = chest_image(rng, anatomy, opacity, size)
        values = np.clip((img * rng.uniform(0.75, 0.95) + rng.uniform(0.0, 0.05)) * 4095, 0, 4095)
        mono1 = rng.random() < (0.6 if is_cr else 0.2)
        stored = (4095 - values if mono1 else values).astype(np.uint16)
        lo, hi = float(np.percentile(stored, 1)), float(np.percentile(stored, 99.5))
        header = rng.random()
        if header < 0.45:
            ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:.0f}", f"{(hi - lo) * 1.1:.0f}"
            ds.WindowCenterWidthExplanation = "NORMAL"
        elif header < 0.6 and not is_cr:
            item = Dataset()
            ramp = np.clip((np.arange(4096) - lo) / max(hi - lo, 1.0), 0, 1) ** 0.9
            item.LUTDescriptor = [4096, 0, 12]
            item.LUTExplanation = "DEFAULT"
            item.LUTData = (ramp * 4095).astype("<u2").tobytes()
            ds.VOILUTSequence = [item]
        _pixels(ds, stored, "MONOCHROME1" if mono1 else "MONOCHROME2", bits_stored=12)
        rel = f"subject_{s + 1:04d}/image_{k + 1}.dcm"
        _save(ds, out / rel)
        rows.append((rel, cls))
    return rows, len(rows)


# -- prostate MRI -----------------------------------------------------------------------------------------------
# Tissue signal per sequence: T2-weighted (relative), ADC (10^-6 mm^2/s), high-b (b=1400) DWI (relative).
_TISSUE = {           # T2W   ADC   HBV
    "background":    (0.00, 0, 0.00),
    "fat":           (0.85, 250, 0.03),
    "muscle":        (0.25, 1400, 0.12),
    "marrow":        (0.60, 400, 0.05),
    "cortex":        (0.05, 150, 0.01),
    "pz":            (0.72, 1750, 0.20),
    "tz":            (0.42, 1250, 0.24),
    "rectum_wall":   (0.30, 1150, 0.22),
    "rectum_lumen":  (0.05, 200, 0.00),
    "bladder":       (0.95, 2900, 0.04),
    "nodule":        (0.30, 1050, 0.30),
    "lesion":        (0.22, 720, 0.85),
}


def prostate_volume(rng, anatomy: dict, grid: dict, sequence: int):
    """One sequence (0 T2W, 1 ADC, 2 HBV) sampled on ``grid`` (shape z, y, x; spacing and origin in mm)."""
    import numpy as np

    nz, ny, nx = grid["shape"]
    sx, sy = grid["spacing"]
    xs = grid["origin"][0] + sx * np.arange(nx)
    ys = grid["origin"][1] + sy * np.arange(ny)
    Z, Y, X = np.meshgrid(np.asarray(grid["z"], np.float32), ys.astype(np.float32), xs.astype(np.float32), indexing="ij")
    value = {name: v[sequence] for name, v in _TISSUE.items()}
    out = np.full(X.shape, value["background"], np.float32)

    def put(mask, name, weight=None):
        if weight is None:
            out[mask] = value[name]
        else:
            out[:] = out * (1 - weight) + value[name] * weight

    e = (X / anatomy["body_a"]) ** 2 + (Y / anatomy["body_b"]) ** 2
    put(e < 1, "fat")
    put(e < (1 - 14 / anatomy["body_b"]) ** 2, "muscle")
    for side in (-1, 1):
        d = np.hypot(X - side * 62, Y - 4)
        put(d < 16, "cortex")
        put(d < 12, "marrow")
    cx, cy, rx, ry, rz = anatomy["prostate"]
    p = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 + (Z / rz) ** 2
    bladder = np.hypot(np.hypot(X, Y + 30), Z - 24) < 22
    put(bladder, "bladder")
    put(p < 1, "pz")
    tz = ((X - cx) / (rx * 0.62)) ** 2 + ((Y - cy + ry * 0.25) / (ry * 0.6)) ** 2 + (Z / (rz * 0.8)) ** 2 < 1
    put(tz & (p < 1), "tz")
    rect = np.hypot(X - cx, Y - (cy + ry + 11))
    put(rect < 10, "rectum_wall")
    put(rect < 5.5, "rectum_lumen")
    for kind in ("nodule", "lesion"):
        spot = anatomy.get(kind)
        if spot is not None:
            lx, ly, lz, r = spot
            d2 = ((X - lx) ** 2 + (Y - ly) ** 2 + ((Z - lz) / 1.3) ** 2) / r**2
            put(None, kind, weight=np.exp(-d2**2) * (p < 1.1))
    sigma = (0.6, 0.7, 0.7)
    out = _smooth(out, sigma)
    if sequence == 0:  # the coil's sensitivity falls off away from the rectum
        out *= 0.75 + 0.45 * np.exp(-np.hypot(X - cx, Y - (cy + ry + 11)) / 45)
    noise = (0.025, 45.0, 0.03)[sequence]
    out = np.abs(out + rng.normal(0, noise, out.shape).astype(np.float32))
    return out


def _prostate_anatomy(rng, cancer: bool) -> dict:
    rx, ry, rz = rng.uniform(18, 25), rng.uniform(14, 18), rng.uniform(14, 18)
    cx, cy = rng.uniform(-3, 3), rng.uniform(0, 8)
    anatomy = {"body_a": rng.uniform(88, 100), "body_b": rng.uniform(64, 74), "prostate": (cx, cy, rx, ry, rz)}
    if cancer:  # a lesion in the peripheral zone (posterior), near the mid-gland
        side = -1 if rng.random() < 0.5 else 1
        anatomy["lesion"] = (cx + side * rng.uniform(5, 12), cy + ry * rng.uniform(0.45, 0.65),
                             rng.uniform(-2.5, 2.5), rng.uniform(5.5, 8.0))
    if rng.random() < 0.5:  # benign hyperplasia nodule in the transition zone, in either class
        anatomy["nodule"] = (cx + rng.uniform(-6, 6), cy - ry * 0.3, rng.uniform(-4, 4), rng.uniform(4, 6))
    return anatomy


_MR_SERIES = (  # description, series number, grid (pixels, spacing mm, slices, slice spacing mm), scale
    ("T2W", 3, (64, 3.0, 8, 3.6), 3000.0, {"EchoTime": 104, "RepetitionTime": 4480, "SequenceName": "*tse2d1_17"}),
    ("ADC", 7, (40, 4.8, 6, 4.8), 1.0, {"EchoTime": 62, "RepetitionTime": 3300, "SequenceName": "*ep_b50_800"}),
    ("HBV", 8, (40, 4.8, 6, 4.8), 2000.0, {"EchoTime": 62, "RepetitionTime": 3300, "SequenceName": "*ep_b1400",
                                          "DiffusionBValue": 1400}),
)


def _prostate_subject(out: Path, s: int, cls: str, sick: bool, rng, seed: int) -> tuple[list, int]:
    """One man's studies (one, or two with a follow-up), three series of several slices each."""
    import numpy as np

    mr = "1.2.840.10008.5.1.4.1.1.4"
    rows, files = [], 0
    patient = _patient(rng, s, sex="M")
    for k in range(1 + (rng.random() < 0.25)):  # some men have a second (follow-up) study
        study = _study(rng, (seed, "prostate", s, k), patient, "MRI PROSTATE MULTIPARAMETRIC")
        anatomy = _prostate_anatomy(rng, sick)
        frame_uid = _uid(seed, "prostate", s, k, "frame")
        for index, (description, number, (n, spacing, slices, dz), scale, extra) in enumerate(_MR_SERIES):
            fov = n * spacing
            z = [(i - (slices - 1) / 2) * dz for i in range(slices)]
            origin = (-fov / 2 + spacing / 2, -fov / 2 + spacing / 2)
            grid = {"shape": (slices, n, n), "spacing": (spacing, spacing), "z": z, "origin": origin}
            stored = np.clip(prostate_volume(rng, anatomy, grid, index) * scale, 0, 4095).astype(np.uint16)
            # One dataset per series, its per-slice elements changed for each file (much faster to write).
            ds = _dataset(mr, "", "MR", patient, study)
            ds.SeriesInstanceUID, ds.FrameOfReferenceUID = _uid(seed, "prostate", s, k, description), frame_uid
            ds.SeriesDescription = description
            ds.ProtocolName = f"prostate_{description.lower()}"
            ds.SeriesNumber = number
            ds.BodyPartExamined = "PROSTATE"
            ds.ImageType = ["DERIVED", "PRIMARY", "ADC"] if description == "ADC" else ["ORIGINAL", "PRIMARY"]
            ds.MagneticFieldStrength = 3
            ds.ScanningSequence, ds.SequenceVariant = ("SE", "SK") if index == 0 else ("EP", "SK")
            for key, value in extra.items():
                setattr(ds, key, value)
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
            ds.SliceThickness = ds.SpacingBetweenSlices = f"{dz:.2f}"
            lo, hi = float(stored.min()), float(np.percentile(stored, 99.5))
            ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:.0f}", f"{max(hi - lo, 1):.0f}"
            order = rng.permutation(slices)  # file names do not follow slice position
            for i in range(slices):
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, "prostate", s, k, description, i)
                ds.InstanceNumber = i + 1
                ds.ImagePositionPatient = [f"{origin[0]:.3f}", f"{origin[1]:.3f}", f"{z[i]:.3f}"]
                ds.SliceLocation = f"{z[i]:.3f}"
                _pixels(ds, stored[i], "MONOCHROME2", bits_stored=12)
                _save(ds, out / f"subject_{s + 1:04d}/study_{k + 1}/series_{index + 1}/slice_{order[i] + 1:02d}.dcm")
                files += 1
        rows.append((study["StudyInstanceUID"], cls))
    return rows, files


# -- histopathology -------------------------------------------------------------------------------------------
_HEMATOXYLIN = (0.65, 0.70, 0.29)   # optical density per RGB channel (Ruifrok & Johnston)
_EOSIN = (0.07, 0.99, 0.11)


def _nucleus(h, rng, cy, cx, ry, rx, angle, density, jagged):
    import numpy as np

    size = h.shape[0]
    r = int(np.ceil(max(ry, rx))) + 2
    y0, y1, x0, x1 = max(0, int(cy) - r), min(size, int(cy) + r + 1), max(0, int(cx) - r), min(size, int(cx) + r + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    theta = np.arctan2(v, u)
    wobble = 1 + jagged * (np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.5 * np.sin(5 * theta + rng.uniform(0, 6.3)))
    d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2) / wobble
    body = np.clip((1.15 - d) / 0.3, 0, 1)
    texture = 1 + 0.25 * rng.standard_normal(body.shape).astype(np.float32)  # chromatin
    h[y0:y1, x0:x1] = np.maximum(h[y0:y1, x0:x1], density * body * texture)


def histo_patch(rng, atypical: bool, stain: tuple[float, float], size: int = 96):
    """An H&E patch (uint8 RGB) by Beer-Lambert from hematoxylin and eosin densities."""
    import numpy as np

    noise = _smooth(rng.standard_normal((size, size)).astype(np.float32), (0.8, 3.0))
    e = 0.42 + 0.35 * noise
    h = np.full((size, size), 0.04, np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if not atypical:  # glands: a lumen lined by a ring of small, regular, evenly spaced nuclei
        for _ in range(rng.integers(1, 3)):
            gy, gx, gr = rng.uniform(15, size - 15), rng.uniform(15, size - 15), rng.uniform(9, 15)
            dist = np.hypot(yy - gy, xx - gx)
            e = np.where(dist < gr + 4, 0.55, e)
            e = np.where(dist < gr, 0.03, e)
            for a in np.linspace(0, 2 * np.pi, int(2 * np.pi * (gr + 2) / 5), endpoint=False):
                _nucleus(h, rng, gy + (gr + 2) * np.sin(a), gx + (gr + 2) * np.cos(a), 1.7, 2.2, a, 0.9, 0.02)
        for _ in range(rng.integers(10, 18)):  # sparse stromal nuclei: small, spindle-shaped
            _nucleus(h, rng, rng.uniform(0, size), rng.uniform(0, size), 1.2, rng.uniform(2.5, 3.5),
                     rng.uniform(0, np.pi), 0.85, 0.03)
    else:  # crowded, enlarged, pleomorphic, hyperchromatic nuclei with nucleoli; glands lost
        if rng.random() < 0.4:
            gy, gx = rng.uniform(20, size - 20, 2)
            e = np.where(np.hypot(yy - gy, xx - gx) < rng.uniform(3, 6), 0.05, e)
        for _ in range(rng.integers(55, 85)):
            r = rng.uniform(2.8, 5.2)
            cy, cx = rng.uniform(0, size, 2)
            _nucleus(h, rng, cy, cx, r * rng.uniform(0.6, 1.0), r, rng.uniform(0, np.pi),
                     rng.uniform(1.2, 1.7), rng.uniform(0.05, 0.14))
            if rng.random() < 0.6:
                _nucleus(h, rng, cy + rng.uniform(-1, 1), cx + rng.uniform(-1, 1), 0.7, 0.7, 0, 2.4, 0)
    h = _smooth(h, 0.5) * stain[0]
    e = np.clip(e, 0, None) * stain[1]
    od = h[..., None] * np.asarray(_HEMATOXYLIN, np.float32) + e[..., None] * np.asarray(_EOSIN, np.float32)
    rgb = 255 * np.exp(-od * 1.1) + rng.normal(0, 2.5, od.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _histopathology_subject(out: Path, s: int, cls: str, sick: bool, rng, seed: int) -> tuple[list, int]:
    """One slide's patches (1-3), stored as RGB or YBR_FULL, some RLE-compressed."""
    from pydicom.pixels import convert_color_space
    from pydicom.uid import RLELossless

    vl_micro = "1.2.840.10008.5.1.4.1.1.77.1.2"
    rows = []
    patient = _patient(rng, s)
    study = _study(rng, (seed, "histo", s), patient, "PROSTATE CORE BIOPSY H&E")
    stain = (rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.2))  # each slide stains a little differently
    ybr, rle = rng.random() < 0.4, rng.random() < 0.15
    for k in range(int(rng.integers(1, 4))):
        sop_uid = _uid(seed, "histo", s, k)
        ds = _dataset(vl_micro, sop_uid, "GM", patient, study)
        ds.SeriesInstanceUID = _uid(seed, "histo", s, "series")
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.SeriesDescription = "H&E 20x patches"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.ContainerIdentifier = f"S{study['StudyDate'][2:4]}-{rng.integers(1000, 9999)}-A{k + 1}"
        ds.PixelSpacing = ["0.0005", "0.0005"]
        ds.LossyImageCompression = "00"
        rgb = histo_patch(rng, sick, stain)
        if ybr:
            _pixels(ds, convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")
        else:
            _pixels(ds, rgb, "RGB")
        if rle:
            ds.compress(RLELossless, generate_instance_uid=False)
        _save(ds, out / f"subject_{s + 1:04d}/patch_{k + 1}.dcm")
        rows.append((sop_uid, cls))
    return rows, len(rows)


GENERATORS = {"chest_xray": _chest_subject, "prostate_mri": _prostate_subject, "histopathology": _histopathology_subject}


def _subject(task) -> tuple[list, int]:
    """Generate one subject; its random stream depends on (seed, modality, subject) only, so the output is
    the same whatever the number of workers."""
    import numpy as np

    modality, out, s, cls, sick, seed, kwargs = task
    rng = np.random.default_rng([seed, list(GENERATORS).index(modality), s])
    return GENERATORS[modality](Path(out), s, cls, bool(sick), rng, seed, **kwargs)


def generate_phantoms(modality: str, out: str | os.PathLike, *, classes: list[str] | None = None,
                      subjects_per_class: int = 40, seed: int = 7, size: int | None = None,
                      workers: int = 1) -> PhantomResult:
    """Write the phantom DICOMs of ``modality`` and ``labels.csv`` into ``out`` (atomically).

    ``classes``: the modality's two classes (healthy first); ``size`` changes the chest radiographs' size
    (the benchmark uses small ones); ``workers`` processes share the subjects. Returns the folder and counts.
    """
    import multiprocessing as mp

    import numpy as np

    from medti.atomic import atomic_dir
    from medti.logs import progress

    if modality not in GENERATORS:
        raise ConfigError(f"phantoms: no phantom generator for modality '{modality}' (have: {', '.join(GENERATORS)})")
    classes = list(classes or DEFAULT_CLASSES[modality])
    if len(classes) != 2:
        raise ConfigError(f"phantoms: {modality} phantoms have two classes (healthy, diseased); got {classes}")
    if subjects_per_class < 4:
        raise ConfigError("phantoms.subjects_per_class: at least 4 (so that every split gets subjects)")
    out = Path(out)
    kwargs = {"size": size} if size and modality == "chest_xray" else {}
    sick = np.random.default_rng([seed, 0]).permutation([0] * subjects_per_class + [1] * subjects_per_class)
    rows, files = [], 0
    with atomic_dir(out) as tmp:
        tasks = [(modality, str(tmp), s, classes[d], d, seed, kwargs) for s, d in enumerate(sick)]
        if workers > 1:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                results = list(progress(pool.imap(_subject, tasks, chunksize=4), total=len(tasks), desc=modality))
        else:
            results = [_subject(t) for t in progress(tasks, desc=modality)]
        for subject_rows, n in results:
            rows += subject_rows
            files += n
        with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow([LABEL_KEYS[modality], "label"])
            writer.writerows(rows)
    log.info("phantoms %s: %d DICOM files, %d labelled images/studies of %d subjects -> %s",
             modality, files, len(rows), 2 * subjects_per_class, out)
    return PhantomResult(out, files, len(rows), 2 * subjects_per_class)


# -- CLI -------------------------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser("phantoms", help="generate the embedded default data set: labelled phantom DICOMs",
                       description="Write seeded phantom images of one modality as DICOM with fake patient data, "
                                   "plus labels.csv. Modalities: " + ", ".join(GENERATORS) + ".")
    add_common(p)
    p.add_argument("--modality", required=True, help=f"one of: {', '.join(GENERATORS)}")
    p.add_argument("--out", help="output folder (default: phantoms.out/<modality>)")
    p.add_argument("--subjects-per-class", type=int, help="subjects per class (default: phantoms.subjects_per_class)")
    p.add_argument("--seed", type=int, help="seed (default: phantoms.seed)")
    p.add_argument("--classes", help="the two class names, healthy first (default: the modality's classes)")
    p.add_argument("--workers", type=int, help="worker processes (default: phantoms.workers)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medti.config import project_root

    params = load_params_arg(args)
    settings = (params or {}).get("phantoms") or {}
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if params is not None and classes is None:
        from medti.config import modality

        classes = modality(params, args.modality)["classes"]
    out = args.out or Path(project_root(params)) / settings.get("out", "data/raw/phantoms") / args.modality
    result = generate_phantoms(args.modality, out, classes=classes,
                               subjects_per_class=pick(args.subjects_per_class, settings.get("subjects_per_class"), 40),
                               seed=pick(args.seed, settings.get("seed"), 7),
                               workers=pick(args.workers, settings.get("workers"), 1))
    print(result.out)
    return 0
