"""Volumes: reading (.mha, .nii.gz and other ITK formats; nibabel where SimpleITK refuses a file), several
sequences resampled onto the first one's grid and stacked as channels, slice selection, per-volume
normalisation. DICOM series (series.py) are assembled into the same SimpleITK images and share the
stacking and slice selection below.

Slice selection (``slice``): ``middle`` of the first sequence; ``mask_middle``, the middle of the slices an
organ mask covers; ``largest_lesion``, the slice where a lesion mask has the largest area. A case whose
lesion mask is empty (no lesion) takes the middle of the slices its gland mask covers (``gland_mask``, volume
sources: the paper's PI-CAI negatives), else the volume's middle slice: the images record why (a note that
summary.json counts and the log states once per run; no gland mask, or an empty one). Intensities are
normalised per sequence over the whole volume (``normalise``: minmax or percentile), as the paper did for
PI-CAI (T2W, ADC, high-b DWI).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medti.errors import ConfigError
from medti.hashing import file_sha256
from medti.preprocess.imaging import intensity_range, to_unit
from medti.preprocess.inputs import check_subject_from, list_files, subject_key
from medti.preprocess.records import Context, Rejected, Result, combined_checksum

VOLUME_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd", ".nhdr")
_DATA_COMPANIONS = (".raw", ".zraw", ".img")  # the pixel files of .mhd/.nhdr headers (and Analyze .hdr)
SLICE_METHODS = ("middle", "mask_middle", "largest_lesion")
# Why a lesion-free case took the volume's middle slice (largest_lesion): an ImageRecord's note.
NO_GLAND, EMPTY_GLAND = "no_gland_mask", "empty_gland_mask"
SLICE_FALLBACKS = (NO_GLAND, EMPTY_GLAND)


def _sitk():
    import SimpleITK as sitk

    return sitk


def volume_suffix(name: str) -> str | None:
    low = name.lower()
    return next((s for s in VOLUME_SUFFIXES if low.endswith(s)), None)


def read_volume(path: Path, ctx: Context | None = None) -> sitk.Image:  # noqa: F821 - imported where used
    """A 3D scalar SimpleITK image from a file (2D images become one slice); raises Rejected. With ``ctx``,
    a slice outside prepare.min_size/max_pixels is rejected from the header, before the voxels are read."""
    sitk = _sitk()
    if ctx is not None:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
            size = reader.GetSize()
        except RuntimeError:
            size = ()
        if len(size) >= 2:
            ctx.check_size(size[1], size[0])
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError:
        img = _read_with_nibabel(path)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise Rejected("bad_channels", f"{img.GetNumberOfComponentsPerPixel()} components per voxel; "
                                       f"expected 1 (one sequence per file)")
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    if img.GetDimension() != 3:
        raise Rejected("bad_shape", f"a {img.GetDimension()}D image; expected a 3D volume")
    return img


def _read_with_nibabel(path: Path):
    """NIfTI files SimpleITK rejects (non-orthonormal direction cosines, say), read with nibabel; the
    direction is the nearest rotation to the affine's (RAS converted to ITK's LPS)."""
    sitk = _sitk()
    try:
        import nibabel as nib

        nii = nib.load(str(path))
        data = np.asanyarray(nii.dataobj).astype(np.float32)
        affine = np.asarray(nii.affine, dtype=float)
    except Exception as exc:  # noqa: BLE001 - neither library can read it: a bad input file
        raise Rejected("unreadable", "cannot read the volume with SimpleITK or nibabel "
                                     f"({type(exc).__name__})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise Rejected("bad_shape", f"a {data.ndim}D image; expected a 3D volume")
    if data.ndim == 2:
        data = data[:, :, None]
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    spacing[spacing == 0] = 1.0
    u, _, vt = np.linalg.svd(linear / spacing)
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in flip @ affine[:3, 3]])
    img.SetDirection([float(v) for v in (flip @ (u @ vt)).reshape(-1)])
    return img


def volume_from_slices(slices: list[tuple], orientation, pixel_spacing, thickness: float | None = None):
    """A SimpleITK volume from 2D slices ``(position or None, instance number or None, array)``.

    Slices are sorted by their position along the slice normal (ImagePositionPatient projected on the
    cross product of ImageOrientationPatient's row and column directions), else by instance number.
    """
    sitk = _sitk()
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 1e-6:
        raise Rejected("bad_series", "ImageOrientationPatient is degenerate")
    normal /= np.linalg.norm(normal)
    shapes = {s[2].shape for s in slices}
    if len(shapes) != 1:
        raise Rejected("bad_series", f"slices differ in size ({len(shapes)} different shapes)")
    if all(s[0] is not None for s in slices):
        order = sorted(slices, key=lambda s: float(np.dot(s[0], normal)))
        along = np.array([np.dot(s[0], normal) for s in order])
        gaps = np.diff(along)
        if len(gaps) and gaps.min() < 1e-3:
            raise Rejected("bad_series", "two slices of the series lie at the same position")
        dz = float(np.median(gaps)) if len(gaps) else float(thickness or 1.0)
        origin = np.asarray(order[0][0], dtype=float)
    elif all(s[1] is not None for s in slices):
        order = sorted(slices, key=lambda s: s[1])
        dz, origin = float(thickness or 1.0), np.zeros(3)
    else:
        raise Rejected("bad_series", "slices have neither ImagePositionPatient nor InstanceNumber to order them")
    img = sitk.GetImageFromArray(np.stack([s[2] for s in order]).astype(np.float32))
    img.SetSpacing((float(pixel_spacing[1]), float(pixel_spacing[0]), dz))
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in np.stack([row, col, normal], axis=1).reshape(-1)])
    return img


def stack_channels(images: list, mask=None, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample every image (linear) and the mask (nearest) onto the first image's grid, oriented so that
    array rows and columns display as radiologists view them (LPS). Returns (C x Z x Y x X, Z x Y x X)."""
    ref, stack = _stack(images, names)
    return stack, None if mask is None else mask_on_grid(mask, ref)


def mask_on_grid(mask, ref) -> np.ndarray:
    """``mask`` resampled (nearest neighbour) onto the grid of ``ref``, as a boolean Z x Y x X array."""
    sitk = _sitk()
    return sitk.GetArrayFromImage(sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                0, mask.GetPixelID())) != 0


def _stack(images: list, names: list[str] | None):
    """(the first image oriented LPS, C x Z x Y x X array of every image resampled onto its grid)."""
    sitk = _sitk()
    names = names or [f"sequence {i + 1}" for i in range(len(images))]
    ref = sitk.DICOMOrient(images[0], "LPS")
    stack = [sitk.GetArrayFromImage(sitk.Cast(ref, sitk.sitkFloat32))]  # a copy: a view would outlive the cast image
    for name, img in zip(names[1:], images[1:]):
        moved = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), ref, sitk.Transform(),
                                                     sitk.sitkLinear, float("nan"), sitk.sitkFloat32))
        outside = np.isnan(moved)
        if outside.all():
            raise Rejected("bad_series", f"{name} does not overlap the {names[0]} grid")
        moved[outside] = np.nanmin(moved)
        stack.append(moved)
    return ref, np.stack(stack)


def _covered_middle(area: np.ndarray) -> int:
    covered = np.flatnonzero(area)
    return int((covered[0] + covered[-1]) // 2)


def pick_slice(depth: int, method: str, mask: np.ndarray | None,
               gland: np.ndarray | None = None) -> tuple[int, str]:
    """(the index of the slice to keep, a note): see the module docstring. The note is empty, or, for a
    lesion-free case under largest_lesion that took the volume's middle, NO_GLAND (no ``gland`` mask) or
    EMPTY_GLAND."""
    if method == "middle":
        return depth // 2, ""
    area = mask.reshape(depth, -1).sum(axis=1)
    if method == "mask_middle":
        if not area.any():
            raise Rejected("empty_mask", "the organ mask is empty, so there is no middle of it to take")
        return _covered_middle(area), ""
    if area.any():
        return int(np.argmax(area)), ""
    if gland is None:
        return depth // 2, NO_GLAND
    gland_area = gland.reshape(depth, -1).sum(axis=1)
    if not gland_area.any():
        return depth // 2, EMPTY_GLAND
    return _covered_middle(gland_area), ""


def select_slice(depth: int, method: str, mask: np.ndarray | None, gland: np.ndarray | None = None) -> int:
    """The index of the slice to keep (see the module docstring)."""
    return pick_slice(depth, method, mask, gland)[0]


def stacked_slice(images: list, mask, method: str, normalise: str, percentiles, names=None,
                  gland=None) -> tuple[np.ndarray, str]:
    """(the selected slice of the stacked sequences in [0, 1], HxW for one sequence, HxWx3 for three, each
    sequence normalised by its whole volume's range; the note of pick_slice). ``gland``: the gland mask image
    of largest_lesion, resampled like the lesion mask."""
    ref, stack = _stack(images, names)
    mask_arr = None if mask is None else mask_on_grid(mask, ref)
    gland_arr = None if gland is None else mask_on_grid(gland, ref)
    index, note = pick_slice(stack.shape[1], method, mask_arr, gland_arr)
    planes = [to_unit(vol[index], *intensity_range(vol, normalise, percentiles)) for vol in stack]
    return (planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)), note


def stacked_unit(images: list, mask, method: str, normalise: str, percentiles, names=None) -> np.ndarray:
    """The selected slice of the stacked sequences in [0, 1] (see stacked_slice)."""
    return stacked_slice(images, mask, method, normalise, percentiles, names)[0]


def check_slice_settings(cfg: dict, has_mask: bool, setting: str, gland_ok: bool = False) -> None:
    """``gland_ok``: the source takes ``gland_mask`` (volume files; not DICOM series)."""
    method = cfg.get("slice") or "middle"
    if method != "middle" and not has_mask:
        raise ConfigError(f"{setting}.slice: '{method}' needs a mask ({setting}.mask)")
    if cfg.get("gland_mask") is not None:
        if not gland_ok:
            raise ConfigError(f"{setting}.gland_mask: only a volume source (type: volume) takes a gland mask")
        if method != "largest_lesion":
            raise ConfigError(f"{setting}.gland_mask: only used with {setting}.slice: largest_lesion (the "
                              f"middle of the gland for a case without a lesion), not slice: {method}")


def _pattern_regex(pattern: str) -> re.Pattern:
    if pattern.count("*") != 1:
        raise ConfigError(f"source.sequences/mask/gland_mask: '{pattern}' must hold exactly one * (the case id)")
    head, tail = pattern.split("*")
    return re.compile(re.escape(head) + r"(.+)" + re.escape(tail) + r"\Z")


class VolumeSource:
    """Volume files grouped into cases: one file per sequence (``sequences`` patterns, e.g. ``*_t2w.mha``,
    ``*_adc.mha``, ``*_hbv.mha``, the ``*`` being the case id), an optional mask and, with largest_lesion, an
    optional gland mask (a case without its gland mask file is kept: a lesion-free one takes the volume's
    middle slice). A pattern without a folder is looked for beside the first sequence's file, one with a
    folder relative to the source root. Without ``sequences`` every volume file is a one-sequence case.
    An item is ``(case, sequence paths, mask path or None, gland mask path or None)``."""

    kind = "volume"
    label_keys = ("path", "case")

    def __init__(self, cfg: dict, root: Path, exclude: set[Path]):
        self.root = root
        self.exclude = exclude
        self.patterns = list(cfg.get("sequences") or [])
        self.mask = cfg.get("mask")
        self.gland_mask = cfg.get("gland_mask")
        self.slice = cfg.get("slice") or "middle"
        self.subject_from = cfg.get("subject_from") or "folder"
        check_subject_from(self.subject_from, ("file", "folder", "case"), dicom=False)
        check_slice_settings(cfg, bool(self.mask), "source", gland_ok=True)
        for p in self.patterns + [m for m in (self.mask, self.gland_mask) if m]:
            _pattern_regex(p)
        self.channel_names = [p.replace("*", "").strip("_.-/") or p for p in self.patterns]

    def _resolve(self, pattern: str, case: str, first: str) -> str:
        rel = pattern.replace("*", case)
        return rel if "/" in pattern else (Path(first).parent / rel).as_posix()

    def plan(self, run_parallel, labeler) -> tuple[list, list]:
        from medti.preprocess.records import Reject

        rejects: list = []
        files = list_files(self.root, self.exclude, rejects)
        present = set(files)
        used: set[str] = set()
        items = []
        if self.patterns:
            first = _pattern_regex(self.patterns[0])
            matches = [(rel, first.match(rel if "/" in self.patterns[0] else Path(rel).name)) for rel in files]
            for rel, m in matches:
                if not m:
                    continue
                case = m.group(1)
                paths = [rel] + [self._resolve(p, case, rel) for p in self.patterns[1:]]
                mask = self._resolve(self.mask, case, rel) if self.mask else None
                gland = self._gland(case, rel, present)
                missing = [p for p, path in zip(self.patterns, paths) if path not in present]
                if mask is not None and mask not in present:
                    missing.append(self.mask)
                used.update(p for p in paths + [mask, gland] if p in present)
                if missing:
                    line = labeler.line_of({"path": rel, "case": case})
                    for path in paths + [mask, gland]:
                        if path in present:
                            rejects.append(Reject(path, "missing_sequence",
                                                  f"case has no file for {', '.join(missing)}", line))
                    continue
                items.append((case, tuple(paths), mask, gland))
        else:
            mask_files = set()
            for pattern in (m for m in (self.mask, self.gland_mask) if m):
                regex = _pattern_regex(pattern)
                mask_files |= {rel for rel in files if regex.match(rel if "/" in pattern else Path(rel).name)}
            for rel in files:
                suffix = volume_suffix(rel)
                if suffix is None or rel in mask_files:
                    continue
                case = Path(rel).name[: -len(suffix)]
                mask = self._resolve(self.mask, case, rel) if self.mask else None
                gland = self._gland(case, rel, present)
                used.update(p for p in (rel, gland) if p)
                if mask is not None and mask not in present:
                    line = labeler.line_of({"path": rel, "case": case})
                    rejects += [Reject(p, "missing_sequence", f"case has no mask file {self.mask}", line)
                                for p in (rel, gland) if p]
                    continue
                used.add(mask)
                items.append((case, (rel,), mask, gland))
        companions = {Path(rel).with_suffix(ext).as_posix() for rel in used if rel
                      for ext in _DATA_COMPANIONS}
        for rel in files:
            if rel not in used and rel not in companions:
                what = "not a volume file" if volume_suffix(rel) is None else "matches none of source.sequences"
                rejects.append(Reject(rel, "unused_file", f"{what} and is no case's mask"))
        return items, rejects

    def _gland(self, case: str, first: str, present: set[str]) -> str | None:
        """The case's gland mask file, or None (none configured, or the case has no such file: kept, and a
        lesion-free case takes the volume's middle slice, as summary.json and the log say)."""
        if not self.gland_mask:
            return None
        path = self._resolve(self.gland_mask, case, first)
        return path if path in present else None

    def stamped_files(self, item) -> list[str]:
        """The item's inputs and the pixel files beside .mhd/.nhdr/.hdr headers: a resumed run re-reads the
        case when any of them changed."""
        inputs = self.inputs(item)
        return inputs + [Path(rel).with_suffix(ext).as_posix() for rel in inputs for ext in _DATA_COMPANIONS
                         if (self.root / Path(rel).with_suffix(ext)).is_file()]

    def inputs(self, item) -> list[str]:
        _, paths, mask, gland = item
        return list(paths) + [p for p in (mask, gland) if p]

    def process(self, item, ctx: Context) -> Result:
        case, paths, mask, gland = item
        cls, line = ctx.labeler.resolve({"path": paths[0], "case": case})
        inputs = tuple(self.inputs(item))
        try:
            subject = subject_key(self.subject_from, paths[0], case=case)
            images = [read_volume(self.root / p, ctx) for p in paths]
            mask_img = read_volume(self.root / mask, ctx) if mask else None
            gland_img = read_volume(self.root / gland, ctx) if gland else None
            unit, note = stacked_slice(images, mask_img, self.slice, ctx.normalise, ctx.percentiles,
                                       self.channel_names or None, gland=gland_img)
            checksum = combined_checksum(file_sha256(self.root / p) for p in inputs)
            return Result([ctx.write(unit, f"volume:{paths[0]}", subject, cls, checksum, inputs, line,
                                     note=note)])
        except Rejected as exc:
            raise Rejected(exc.kind, exc.reason, line) from None
