"""DICOM series assembled into multi-sequence volumes (multi-parametric MRI such as PI-CAI's T2W/ADC/HBV).

Files are grouped by ``series.group_by`` (a study: StudyInstanceUID by default); within a group each series
is assigned to the first channel whose pattern (a case-insensitive regular expression) is found in its
``series.match`` attribute (SeriesDescription by default). Slices are sorted by position, every sequence is
resampled onto the first one's grid, one slice is chosen and the sequences become the image's channels,
with the same code as volume files (volumes.py). An optional ``mask`` pattern names a mask series for
``slice: mask_middle`` or ``largest_lesion``. Every file that does not end up in an image is listed in
rejects.csv with the reason (no matching series, a duplicate series, a study missing a sequence...).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from medti.errors import ConfigError
from medti.hashing import sha256_hex
from medti.preprocess import dicom
from medti.preprocess.inputs import check_dicom_keyword, check_subject_from, list_files, subject_key
from medti.preprocess.records import Context, Reject, Rejected, Result, combined_checksum
from medti.preprocess.volumes import check_slice_settings, stacked_unit, volume_from_slices


def _compile(pattern: str, setting: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{setting}: '{pattern}' is not a valid regular expression ({exc})") from None


def _geometry(ds, frame: int | None):
    """(position, orientation, pixel spacing, thickness) of a slice, top level or functional groups."""
    def find(keyword, sequence):
        if frame is None or keyword in ds:
            return ds.get(keyword)
        item = dicom._functional_item(ds, frame, sequence)
        return item.get(keyword) if item is not None else None

    position = find("ImagePositionPatient", "PlanePositionSequence")
    orientation = find("ImageOrientationPatient", "PlaneOrientationSequence")
    spacing = find("PixelSpacing", "PixelMeasuresSequence")
    thickness = find("SliceThickness", "PixelMeasuresSequence")
    return (None if position is None else np.asarray([float(v) for v in position]),
            None if orientation is None else [float(v) for v in orientation],
            None if spacing is None else [float(v) for v in spacing],
            None if thickness in (None, "") else float(thickness))


def _reject(file: tuple, kind: str, reason: str, line: int | None = None) -> Reject:
    """The reject of a scanned file ``(relpath, match, number, identifying values)``."""
    return Rejected(kind, reason, line, file[3]).rejects([file[0]])[0]


class DicomSeriesSource:
    kind = "dicom-series"

    def __init__(self, cfg: dict, root: Path, exclude: set[Path]):
        series = cfg.get("series") or {}
        self.root = root
        self.exclude = exclude
        self.group_by = series.get("group_by") or "StudyInstanceUID"
        self.match = series.get("match") or "SeriesDescription"
        self.channel_names = list(series.get("channels") or [])
        if len(self.channel_names) not in (1, 3):
            raise ConfigError("source.series.channels: give 1 or 3 sequences (an image has 1 or 3 channels)")
        self.patterns = [_compile(p, "source.series.channels") for p in self.channel_names]
        self.mask = _compile(cfg["mask"], "source.mask") if cfg.get("mask") else None
        self.slice = cfg.get("slice") or "middle"
        self.subject_from = cfg.get("subject_from") or "PatientID"
        check_subject_from(self.subject_from, ("file", "folder"), dicom=True)
        check_dicom_keyword(self.group_by, "source.series.group_by")
        check_dicom_keyword(self.match, "source.series.match")
        self.label_keys = tuple(dict.fromkeys((self.group_by, "StudyInstanceUID", "PatientID")))
        check_slice_settings(cfg, self.mask is not None, "source")

    # -- planning: read every header once (in the worker pool), group studies, assign series --------------
    def scan(self, relpath: str, ctx: Context):
        """(relpath, group value, match value, series uid, series number, identifying values) of one file
        (pixels not read)."""
        ds = dicom.parse((self.root / relpath).read_bytes(), stop_before_pixels=True)
        group = str(ds.get(self.group_by, "") or "").strip()
        if not group:
            raise Rejected("no_group", f"{self.group_by} is absent or empty, so the file belongs to no study",
                           identifiers=dicom.identifying_values(ds))
        number = ds.get("SeriesNumber")
        return (relpath, group, str(ds.get(self.match, "") or ""), str(ds.get("SeriesInstanceUID", "") or relpath),
                int(number) if number not in (None, "") else 0, dicom.identifying_values(ds))

    def plan(self, run_parallel, labeler) -> tuple[list, list]:
        rejects: list[Reject] = []
        files = list_files(self.root, self.exclude, rejects)
        studies: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for out in run_parallel("scan", files, desc="reading headers"):
            if isinstance(out, Reject):
                rejects.append(out)
            else:
                relpath, group, match, series_uid, number, identifiers = out
                studies[group][series_uid].append((relpath, match, number, identifiers))
        items = []
        for group in sorted(studies, key=lambda g: min(f[0] for s in studies[g].values() for f in s)):
            item, study_rejects = self._assign(studies[group], labeler.line_of({self.group_by: group}))
            rejects.extend(study_rejects)
            if item is not None:
                items.append(item)
        return items, rejects

    def _assign(self, series: dict[str, list], line: int | None) -> tuple[tuple | None, list[Reject]]:
        rejects = []
        candidates: dict[int, list] = defaultdict(list)
        masks = []
        for _uid, files in series.items():
            description = files[0][1]
            channel = next((i for i, p in enumerate(self.patterns) if p.search(description)), None)
            if channel is not None:
                candidates[channel].append(files)
            elif self.mask is not None and self.mask.search(description):
                masks.append(files)
            else:
                wanted = ", ".join(self.channel_names)
                rejects += [_reject(f, "unmatched_series", f"its {self.match} matches none of the channels ({wanted})")
                            for f in files]
        chosen = []
        for i, name in enumerate(self.channel_names):
            # Where a study repeats a sequence, use the series with the most slices (then the later one).
            options = sorted(candidates[i], key=lambda fs: (len(fs), max(f[2] for f in fs)), reverse=True)
            for extra in options[1:]:
                rejects += [_reject(f, "duplicate_series",
                                    f"another series of the study also matches '{name}' and has more slices "
                                    f"or a later series number; that one is used") for f in extra]
            chosen.append(options[0] if options else None)
        mask_files = sorted(masks, key=len, reverse=True)[0] if masks else None
        if self.mask is not None and mask_files is None:
            missing = ["a mask series"]
        else:
            missing = [name for name, files in zip(self.channel_names, chosen) if files is None]
        if missing:
            used = [f for files in chosen if files for f in files] + (mask_files or [])
            rejects += [_reject(f, "missing_series", f"the study has no series for {', '.join(missing)}", line)
                        for f in used]
            return None, rejects
        item = (tuple(tuple(sorted(f[0] for f in files)) for files in chosen),
                tuple(sorted(f[0] for f in mask_files)) if mask_files else None)
        return item, rejects

    def inputs(self, item) -> list[str]:
        channels, mask = item
        return [p for files in channels for p in files] + list(mask or ())

    # -- processing: one study -> one image ------------------------------------------------------------------
    def _volume(self, files: tuple[str, ...], checksums: list[str]):
        """A SimpleITK volume of one series (modality values), from single-frame files or one multi-frame."""
        slices, geometry = [], None
        for relpath in files:
            data = (self.root / relpath).read_bytes()
            checksums.append(sha256_hex(data))
            ds = dicom.parse(data)
            dicom.check_pixels(ds)
            if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
                raise Rejected("bad_channels", "a colour image inside a series; expected grey slices")
            n = dicom.frame_count(ds)
            if n > 1 and len(files) > 1:
                raise Rejected("bad_series", "a multi-frame file inside a multi-file series")
            for f in range(n):
                arr = dicom.decode(ds, index=f if n > 1 else None)
                position, orientation, spacing, thickness = _geometry(ds, f if n > 1 else None)
                geometry = geometry or (orientation, spacing, thickness)
                number = ds.get("InstanceNumber") if n == 1 else f
                slices.append((position, int(number) if number not in (None, "") else None,
                               dicom.modality_values(arr, ds, f)))
        orientation, spacing, thickness = geometry
        return volume_from_slices(slices, orientation or [1, 0, 0, 0, 1, 0], spacing or [1.0, 1.0], thickness)

    def process(self, item, ctx: Context) -> Result:
        channels, mask = item
        inputs = tuple(self.inputs(item))
        first_file = channels[0][0]
        header = dicom.parse((self.root / first_file).read_bytes(), stop_before_pixels=True)
        identifiers = dicom.identifying_values(header)
        line = None
        try:
            keys = {k: header.get(k) for k in self.label_keys}
            tag = ctx.labeler.tag
            cls, line = ctx.labeler.resolve(keys, tag_value=header.get(tag) if tag else None)
            subject = subject_key(self.subject_from, first_file, header=header)
            checksums: list[str] = []
            images = [self._volume(files, checksums) for files in channels]
            mask_img = self._volume(mask, checksums) if mask else None
            unit = stacked_unit(images, mask_img, self.slice, ctx.normalise, ctx.percentiles, self.channel_names)
            key = f"series:{self.group_by}:{keys.get(self.group_by)}"
            return Result([ctx.write(unit, key, subject, cls, combined_checksum(checksums), inputs, line,
                                     identifiers=identifiers)])
        except Rejected as exc:
            raise Rejected(exc.kind, exc.reason, exc.line or line, identifiers) from None
