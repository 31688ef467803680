"""DICOM files: parsing, pixel decoding, the modality and VOI LUTs, photometric interpretation, frames.

One input file gives one image (``frames: middle``) or one per frame (``frames: all``). Grey images go
through the modality LUT (rescale slope/intercept or a LUT sequence), then the VOI LUT sequence or the
window from the file (``window: auto``), an explicit window, or none (the image's own min-max/percentile
range); MONOCHROME1 is inverted so that dense tissue is always bright. Colour images (RGB, YBR_* decoded to
RGB by pydicom, palette colour) are scaled by their bit depth. Messages never carry header values: errors
from libraries are redacted against the file's own values.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from medti.deid import redact
from medti.hashing import sha256_hex
from medti.preprocess.imaging import Window, normalise
from medti.preprocess.inputs import check_subject_from, list_files, subject_key
from medti.preprocess.records import Context, Rejected, Result

LABEL_KEYS = ("path", "SOPInstanceUID", "StudyInstanceUID", "PatientID")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def quiet_pydicom() -> None:
    """pydicom's validation warnings quote element values (possible PHI): never let them reach a log."""
    import logging

    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def header_strings(ds) -> list[str]:
    """Every text-like value in a dataset (for redacting messages), pixel data excluded."""
    out = []
    try:
        for elem in ds.iterall():
            if elem.keyword in _PIXEL_KEYWORDS or elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"):
                continue
            out.extend(str(v) for v in _values(elem.value) if v is not None)
    except Exception:  # noqa: BLE001 - a dataset that cannot be walked simply offers fewer values
        pass
    return out


def identifying_values(ds) -> tuple[str, ...]:
    """The values of a dataset's identifying attributes (medti.deid.IDENTIFYING_KEYWORDS), as text."""
    out = []
    for tag in _identifying_tags():
        if tag not in ds:
            continue
        try:
            value = ds[tag].value
        except Exception:  # noqa: BLE001 - an unreadable value cannot be matched either
            continue
        if value is None or isinstance(value, (bytes, list)) and not value:
            continue
        for v in _values(value):
            text = str(v).strip()
            out += [text] + ([part for part in text.split("^") if part] if "^" in text else [])
    return tuple(dict.fromkeys(v for v in out if v))


@lru_cache(maxsize=1)
def _identifying_tags() -> tuple:
    from pydicom.datadict import tag_for_keyword

    from medti.deid import IDENTIFYING_KEYWORDS

    return tuple(tag_for_keyword(k) for k in IDENTIFYING_KEYWORDS)


def _values(value) -> list:
    from pydicom.multival import MultiValue

    return list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]


def _standard_name(uid) -> str | None:
    """The registry name of a standard UID (a SOP class, say): public vocabulary, not patient data."""
    from pydicom.uid import UID

    try:
        uid = UID(str(uid))
        return uid.name if uid.is_valid and uid.name != str(uid) else None
    except Exception:  # noqa: BLE001
        return None


def parse(data: bytes, stop_before_pixels: bool = False):
    """A pydicom Dataset from file bytes; raises Rejected for non-DICOM or unreadable files."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            ds = _parse_without_preamble(data, stop_before_pixels)
        except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt or truncated file
            raise Rejected("unreadable", f"corrupt or truncated DICOM: the header cannot be parsed "
                                         f"({type(exc).__name__})") from None
        _check_complete(ds)  # elements are converted when first read (reading_validation_mode is IGNORE)
    _ensure_transfer_syntax(ds)
    return ds


def _check_complete(ds) -> None:
    """pydicom stops quietly at the end of the data: a last element shorter than its declared length means
    the file was cut off (or is garbage after a valid preamble, whose first 'element' claims a random length)."""
    last = None
    for last in ds.elements():  # noqa: B007 - kept after the loop; raw elements: nothing is converted here
        pass
    length, value = getattr(last, "length", None), getattr(last, "value", None)
    if isinstance(value, (bytes, bytearray)) and length not in (None, 0xFFFFFFFF) and len(value) < length:
        raise Rejected("unreadable", f"corrupt or truncated DICOM: the file ends inside element {last.tag} "
                                     f"({len(value)} of its {length} bytes)")


def _parse_without_preamble(data: bytes, stop_before_pixels: bool):
    """Old files without the 128-byte preamble: accepted only if they parse as an image dataset."""
    from pydicom import dcmread

    try:
        ds = dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
        looks_like_image = "Rows" in ds and "Columns" in ds and int(ds.Rows) > 0 and int(ds.Columns) > 0
    except Exception:  # noqa: BLE001
        looks_like_image = False
    if not looks_like_image:
        raise Rejected("not_dicom", "not a DICOM file")
    return ds


def _ensure_transfer_syntax(ds) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def check_pixels(ds) -> None:
    """Reject a dataset without pixel data, with other than 1 or 3 samples per pixel, or whose transfer syntax
    no installed decoder handles."""
    from pydicom.pixels import get_decoder

    if not any(k in ds for k in _PIXEL_KEYWORDS):
        kind = _standard_name(ds.get("SOPClassUID"))
        raise Rejected("no_pixels", f"no pixel data ({'a ' + kind + ' object' if kind else 'not an image'})")
    samples = ds.get("SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise Rejected("bad_channels", f"{samples} samples per pixel; expected 1 (grey) or 3 (colour)")
    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_transfer_syntax:
        raise Rejected("unsupported_syntax", f"unknown transfer syntax {ts}")
    if ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise Rejected("unsupported_syntax", f"transfer syntax {ts.name} ({ts}): pydicom has no decoder "
                                                 f"for it") from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise Rejected("unsupported_syntax", f"transfer syntax {ts.name} ({ts}): no decoder installed "
                                                 f"(needs {needs})")


def frame_count(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def decode(ds, index: int | None = None) -> np.ndarray:
    """The pixels of one frame (or the whole single-frame image), YBR converted to RGB."""
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(ds, index=index)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; all mean "this file's pixels fail"
        ts = ds.file_meta.TransferSyntaxUID
        detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                        header_strings(ds))
        raise Rejected("decode_error", f"cannot decode the {ts.name} pixel data: {detail[:300]}") from None


def _functional_item(ds, frame: int, sequence: str):
    """An item of a functional group (enhanced multi-frame objects): per-frame first, then shared."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > idx and sequence in seq[idx] and len(seq[idx][sequence]):
            return seq[idx][sequence][0]
    return None


def modality_values(arr: np.ndarray, ds, frame: int = 0) -> np.ndarray:
    """Stored values -> modality values (HU for CT, say) through the modality LUT, as float32."""
    from pydicom.pixels import apply_modality_lut

    if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    item = _functional_item(ds, frame, "PixelValueTransformationSequence")
    values = arr.astype(np.float32)
    if item is not None:
        values = values * float(item.get("RescaleSlope", 1) or 1) + float(item.get("RescaleIntercept", 0) or 0)
    return values


def _first(value) -> float:
    return float(_values(value)[0])


def file_window(ds, frame: int = 0) -> Window | None:
    """The first window centre/width the file gives (top level or the frame's functional group)."""
    source = (ds if ("WindowCenter" in ds and "WindowWidth" in ds)
              else _functional_item(ds, frame, "FrameVOILUTSequence"))
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    try:
        center = _first(source.WindowCenter)
        width = _first(source.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if width <= 0:
        return None
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return Window(center, width, function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR")


def grey_unit(values: np.ndarray, ds, window, method: str, percentiles, frame: int = 0) -> np.ndarray:
    """Modality values -> [0, 1]: the VOI LUT or window (``auto``: the file's), else the image's range."""
    from pydicom.pixels import apply_voi

    if window == "auto" and "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        indices = np.rint(values).astype(np.int64)  # a LUT is indexed by whole modality values
        return np.clip(np.asarray(apply_voi(indices, ds, index=0), dtype=np.float32) / (2.0**bits - 1), 0, 1)
    win = file_window(ds, frame) if window == "auto" else (window if isinstance(window, Window) else None)
    unit = win.apply(values) if win is not None else normalise(values, method, percentiles)
    return unit


def to_unit(arr: np.ndarray, ds, ctx: Context, frame: int = 0) -> np.ndarray:
    """Decoded pixels -> a [0, 1] image, HxW (grey) or HxWx3 (colour), following the photometric."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)  # 1 or 3 (check_pixels)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return np.clip(rgb.astype(np.float32) / (2.0 ** (16 if bits > 8 else 8) - 1), 0, 1)
    if samples == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise Rejected("bad_channels", f"colour image decoded with shape {arr.shape}; expected rows x columns x 3")
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
        return np.clip(arr.astype(np.float32) / (2.0**bits - 1), 0, 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Rejected("bad_channels", f"photometric interpretation {photometric} with 1 sample per pixel "
                                       f"is not supported")
    if arr.ndim != 2:
        raise Rejected("bad_channels", f"grey image decoded with shape {arr.shape}; expected rows x columns")
    unit = grey_unit(modality_values(arr, ds, frame), ds, ctx.window, ctx.normalise, ctx.percentiles, frame)
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def frame_units(ds, ctx: Context):
    """Yield ``(frame index or None, [0, 1] image)`` for the frames to keep: the middle one or all
    (``ctx.frames``); None for a single-frame file. Raises Rejected for files without usable pixels."""
    check_pixels(ds)
    rows, columns = ds.get("Rows"), ds.get("Columns")
    try:
        ctx.check_size(int(rows), int(columns))  # before decoding: a 10000 x 10000 image costs gigabytes
    except (TypeError, ValueError):
        pass  # no usable size in the header: checked after decoding (Context.write)
    n = frame_count(ds)
    if n == 1:
        yield None, to_unit(decode(ds), ds, ctx)
        return
    for f in ([n // 2] if ctx.frames == "middle" else range(n)):
        yield f, to_unit(decode(ds, index=f), ds, ctx, frame=f)


class DicomSource:
    """A folder of DICOM files (recursive), one image per file or frame."""

    kind = "dicom"
    label_keys = LABEL_KEYS

    def __init__(self, cfg: dict, root: Path, exclude: set[Path]):
        self.root = root
        self.exclude = exclude
        self.subject_from = cfg.get("subject_from") or "PatientID"
        check_subject_from(self.subject_from, ("file", "folder"), dicom=True)
        self.channel_names: list[str] = []

    def plan(self, run_parallel, labeler) -> tuple[list, list]:
        rejects: list = []
        return list_files(self.root, self.exclude, rejects), rejects

    def process(self, relpath: str, ctx: Context) -> Result:
        data = (self.root / relpath).read_bytes()
        checksum = sha256_hex(data)
        ds = parse(data)
        line = None
        try:
            keys = {"path": relpath, "SOPInstanceUID": ds.get("SOPInstanceUID"),
                    "StudyInstanceUID": ds.get("StudyInstanceUID"), "PatientID": ds.get("PatientID")}
            tag = ctx.labeler.tag
            cls, line = ctx.labeler.resolve(keys, tag_value=ds.get(tag) if tag else None)
            subject = subject_key(self.subject_from, relpath, header=ds)
            result = Result()
            for frame, unit in frame_units(ds, ctx):
                key = relpath if frame is None else f"{relpath}#frame{frame}"
                result.records.append(ctx.write(unit, f"dicom:{key}", subject, cls, checksum, (relpath,), line,
                                                identifiers=identifying_values(ds),
                                                part="" if frame is None else f"frame{frame}"))
            return result
        except Rejected as exc:
            raise Rejected(exc.kind, exc.reason, exc.line or line, identifying_values(ds)) from None
