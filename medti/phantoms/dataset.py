"""The phantom data sets: each kind's subjects written as DICOM files, plus ``labels.csv``.

Three kinds, two classes each (the first healthy, the second diseased), with realistic headers that carry
fake patient information, so de-identification is exercised end to end:

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
same files, byte for byte, whatever the number of workers.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.uid import RLELossless

from medti.atomic import atomic_dir
from medti.config import check_section, schema_default
from medti.errors import ConfigError
from medti.logs import progress
from medti.phantoms.dicom_headers import dicom_dataset, fake_patient, fake_study, save, set_pixels, uid
from medti.phantoms.images import (
    chest_anatomy,
    chest_image,
    histo_patch,
    prostate_anatomy,
    prostate_volume,
    random_opacity,
)
from medti.phantoms.kinds import DEFAULT_CLASSES, LABEL_KEYS
from medti.phantoms.looks import chest_look, histo_look, prostate_look

log = logging.getLogger("medti.phantoms")


@dataclass
class PhantomResult:
    """What :func:`generate_phantoms` wrote: the folder, DICOM files, labelled images (or studies), subjects."""

    out: Path
    files: int
    images: int
    subjects: int


# -- chest radiographs ----------------------------------------------------------------------------------------
def _chest_subject(out: Path, s: int, cls: str, sick: bool, rng, seed: int, size: int = 128) -> tuple[list, int]:
    """One subject's radiographs (one, or two with a follow-up)."""
    cr, dx = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"
    rows = []
    patient = fake_patient(rng, s)
    anatomy = chest_anatomy(rng)
    opacity = random_opacity(rng, anatomy) if sick else None
    for k in range(1 + (rng.random() < 0.35)):  # some subjects have a follow-up radiograph
        study = fake_study(rng, (seed, "chest", s, k), patient, "XR CHEST PA")
        is_cr = rng.random() < 0.5
        ds = dicom_dataset(cr if is_cr else dx, uid(seed, "chest", s, k, "image"), "CR" if is_cr else "DX",
                           patient, study)
        ds.SeriesInstanceUID = uid(seed, "chest", s, k, "series")
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
            opacity = {**opacity, "x": opacity["x"] + rng.uniform(-0.03, 0.03),
                       "y": opacity["y"] + rng.uniform(-0.03, 0.03)}
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
        set_pixels(ds, stored, "MONOCHROME1" if mono1 else "MONOCHROME2", bits_stored=12)
        rel = f"subject_{s + 1:04d}/image_{k + 1}.dcm"
        save(ds, out / rel)
        rows.append((rel, cls, chest_look(opacity)))
    return rows, len(rows)


# -- prostate MRI -----------------------------------------------------------------------------------------------
_MR_SERIES = (  # description, series number, grid (pixels, spacing mm, slices, slice spacing mm), scale
    ("T2W", 3, (64, 3.0, 8, 3.6), 3000.0, {"EchoTime": 104, "RepetitionTime": 4480, "SequenceName": "*tse2d1_17"}),
    ("ADC", 7, (40, 4.8, 6, 4.8), 1.0, {"EchoTime": 62, "RepetitionTime": 3300, "SequenceName": "*ep_b50_800"}),
    ("HBV", 8, (40, 4.8, 6, 4.8), 2000.0, {"EchoTime": 62, "RepetitionTime": 3300, "SequenceName": "*ep_b1400",
                                          "DiffusionBValue": 1400}),
)


def _prostate_subject(out: Path, s: int, cls: str, sick: bool, rng, seed: int) -> tuple[list, int]:
    """One man's studies (one, or two with a follow-up), three series of several slices each."""
    mr = "1.2.840.10008.5.1.4.1.1.4"
    rows, files = [], 0
    patient = fake_patient(rng, s, sex="M")
    for k in range(1 + (rng.random() < 0.25)):  # some men have a second (follow-up) study
        study = fake_study(rng, (seed, "prostate", s, k), patient, "MRI PROSTATE MULTIPARAMETRIC")
        anatomy = prostate_anatomy(rng, sick)
        frame_uid = uid(seed, "prostate", s, k, "frame")
        for index, (description, number, (n, spacing, slices, dz), scale, extra) in enumerate(_MR_SERIES):
            fov = n * spacing
            z = [(i - (slices - 1) / 2) * dz for i in range(slices)]
            origin = (-fov / 2 + spacing / 2, -fov / 2 + spacing / 2)
            grid = {"shape": (slices, n, n), "spacing": (spacing, spacing), "z": z, "origin": origin}
            stored = np.clip(prostate_volume(rng, anatomy, grid, index) * scale, 0, 4095).astype(np.uint16)
            # One dataset per series, its per-slice elements changed for each file (much faster to write).
            ds = dicom_dataset(mr, "", "MR", patient, study)
            ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uid(seed, "prostate", s, k, description), frame_uid
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
                sop_uid = uid(seed, "prostate", s, k, description, i)
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                ds.InstanceNumber = i + 1
                ds.ImagePositionPatient = [f"{origin[0]:.3f}", f"{origin[1]:.3f}", f"{z[i]:.3f}"]
                ds.SliceLocation = f"{z[i]:.3f}"
                set_pixels(ds, stored[i], "MONOCHROME2", bits_stored=12)
                save(ds, out / f"subject_{s + 1:04d}/study_{k + 1}/series_{index + 1}/slice_{order[i] + 1:02d}.dcm")
                files += 1
        rows.append((study["StudyInstanceUID"], cls, prostate_look(anatomy)))
    return rows, files


# -- histopathology -------------------------------------------------------------------------------------------
def _histopathology_subject(out: Path, s: int, cls: str, sick: bool, rng, seed: int) -> tuple[list, int]:
    """One slide's patches (1-3), stored as RGB or YBR_FULL, some RLE-compressed."""
    vl_micro = "1.2.840.10008.5.1.4.1.1.77.1.2"
    rows = []
    patient = fake_patient(rng, s)
    study = fake_study(rng, (seed, "histo", s), patient, "PROSTATE CORE BIOPSY H&E")
    stain = (rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.2))  # each slide stains a little differently
    ybr, rle = rng.random() < 0.4, rng.random() < 0.15
    for k in range(int(rng.integers(1, 4))):
        sop_uid = uid(seed, "histo", s, k)
        look: dict = {}
        ds = dicom_dataset(vl_micro, sop_uid, "GM", patient, study)
        ds.SeriesInstanceUID = uid(seed, "histo", s, "series")
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.SeriesDescription = "H&E 20x patches"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.ContainerIdentifier = f"S{study['StudyDate'][2:4]}-{rng.integers(1000, 9999)}-A{k + 1}"
        ds.PixelSpacing = ["0.0005", "0.0005"]
        ds.LossyImageCompression = "00"
        rgb = histo_patch(rng, sick, stain, look=look)
        if ybr:
            set_pixels(ds, convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")
        else:
            set_pixels(ds, rgb, "RGB")
        if rle:
            ds.compress(RLELossless, generate_instance_uid=False)
        save(ds, out / f"subject_{s + 1:04d}/patch_{k + 1}.dcm")
        rows.append((sop_uid, cls, histo_look(look)))
    return rows, len(rows)


# -- the data set -----------------------------------------------------------------------------------------------
GENERATORS = {"chest_xray": _chest_subject, "prostate_mri": _prostate_subject,
              "histopathology": _histopathology_subject}


def _subject(task) -> tuple[list, int]:
    """Generate one subject; its random stream depends on (seed, modality, subject) only, so the output is
    the same whatever the number of workers."""
    modality, out, s, cls, sick, seed, kwargs = task
    rng = np.random.default_rng([seed, list(GENERATORS).index(modality), s])
    return GENERATORS[modality](Path(out), s, cls, bool(sick), rng, seed, **kwargs)


def generate_phantoms(modality: str, out: str | os.PathLike, *, classes: list[str] | None = None,
                      subjects_per_class: int = schema_default("phantoms.subjects_per_class"),
                      seed: int = schema_default("phantoms.seed"), size: int | None = None,
                      workers: int = 1, label: str = "class") -> PhantomResult:
    """Write the phantom DICOMs of ``modality`` and ``labels.csv`` into ``out`` (atomically).

    ``classes``: the modality's two classes (healthy first); ``size`` changes the chest radiographs' size
    (the benchmark uses small ones); ``workers`` processes share the subjects. ``label="look"`` labels each
    image by what it shows in the generator's own visual terms (:mod:`medti.phantoms.looks`, e.g.
    ``spot_left_upper``) instead of its class: the toy base model is pre-trained on such labels, never on
    classes. The pixels do not depend on ``label``. Returns the folder and counts.
    """
    if label not in ("class", "look"):
        raise ConfigError(f"phantoms: label must be 'class' or 'look', not '{label}'")
    if modality not in GENERATORS:
        raise ConfigError(f"phantoms: no phantom generator for kind '{modality}' (have: {', '.join(GENERATORS)})")
    classes = list(classes or DEFAULT_CLASSES[modality])
    if len(classes) != 2:
        raise ConfigError(f"phantoms: {modality} phantoms have two classes (healthy, diseased); got {classes}")
    # at least 4 subjects per class (the schema's bound), so that every split gets subjects
    check_section("phantoms", {"subjects_per_class": subjects_per_class, "seed": seed}, "phantoms")
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
            rows += [(key, cls if label == "class" else look) for key, cls, look in subject_rows]
            files += n
        with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow([LABEL_KEYS[modality], "label"])
            writer.writerows(rows)
    log.info("phantoms %s: %d DICOM files, %d labelled images/studies of %d subjects -> %s",
             modality, files, len(rows), 2 * subjects_per_class, out)
    return PhantomResult(out, files, len(rows), 2 * subjects_per_class)
