"""Folders of PNG, JPEG or TIFF images, labelled by class subfolders (``<class>/.../x.png``) or a CSV.

8-bit images are taken as display-ready (their values are kept); 16-bit and float images (TIFF exports
of radiographs, say) are windowed or normalised like DICOM. Grey stays grey, RGB stays RGB (palette and
CMYK images are converted to RGB, RGBA whose alpha is fully opaque too); any other channel count is
rejected. Multi-page TIFFs give their middle page or every page (``frames``).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from medti.hashing import sha256_hex
from medti.preprocess.imaging import Window, normalise
from medti.preprocess.inputs import check_subject_from, list_files, subject_key
from medti.preprocess.records import Context, Rejected, Result

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _page_unit(page, ctx: Context) -> np.ndarray:
    """One PIL page -> a [0, 1] image (HxW or HxWx3)."""
    mode = page.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        page = page.convert("RGBA" if "transparency" in page.info or mode == "PA" else "RGB")
        mode = page.mode
    if mode == "1":
        page, mode = page.convert("L"), "L"
    arr = np.asarray(page)
    if mode == "RGBA":
        if arr[..., 3].min() < 255:
            raise Rejected("bad_channels", "4 channels (RGBA with transparency); expected 1 (grey) or 3 (RGB)")
        arr = arr[..., :3]
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    if channels not in (1, 3):
        raise Rejected("bad_channels", f"{channels} channels (mode {mode}); expected 1 (grey) or 3 (RGB)")
    if arr.ndim == 3 and channels == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    values = arr.astype(np.float32)
    if channels == 3:
        return normalise(values, "minmax")
    return (ctx.window.apply(values) if isinstance(ctx.window, Window)
            else normalise(values, ctx.normalise, ctx.percentiles))


class FolderSource:
    kind = "folder"
    label_keys = ("path",)

    def __init__(self, cfg: dict, root: Path, exclude: set[Path]):
        self.root = root
        self.exclude = exclude
        self.subject_from = cfg.get("subject_from") or "file"
        check_subject_from(self.subject_from, ("file", "folder"), dicom=False)
        self.channel_names: list[str] = []

    def plan(self, run_parallel, labeler) -> tuple[list, list]:
        from medti.preprocess.records import Reject

        items, rejects = [], []
        for rel in list_files(self.root, self.exclude, rejects):
            if rel.lower().endswith(IMAGE_SUFFIXES):
                items.append(rel)
            else:
                rejects.append(Reject(rel, "not_image", "not an image file (PNG, JPEG or TIFF expected)"))
        return items, rejects

    def process(self, relpath: str, ctx: Context) -> Result:
        from PIL import Image, UnidentifiedImageError

        parts = Path(relpath).parts
        folder_label = parts[0] if len(parts) > 1 else None
        cls, line = ctx.labeler.resolve({"path": relpath}, folder_label=folder_label)
        try:
            data = (self.root / relpath).read_bytes()
            subject = subject_key(self.subject_from, relpath)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img = Image.open(io.BytesIO(data))
                ctx.check_size(img.height, img.width)  # from the header, before decoding
                pages = getattr(img, "n_frames", 1)
                indices = [pages // 2] if ctx.frames == "middle" else list(range(pages))
                units = []
                for i in indices:
                    img.seek(i)
                    units.append(_page_unit(img, ctx))
            except Image.DecompressionBombError:
                raise Rejected("too_large", "more pixels than PIL will decode safely (a decompression bomb?)") from None
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise Rejected("unreadable", f"not a readable image ({type(exc).__name__})") from None
            checksum = sha256_hex(data)
            result = Result()
            for i, unit in zip(indices, units):
                key = relpath if len(indices) == 1 else f"{relpath}#page{i}"
                result.records.append(ctx.write(unit, f"folder:{key}", subject, cls, checksum, (relpath,), line,
                                                part="" if len(indices) == 1 else f"page{i}"))
            return result
        except Rejected as exc:
            raise Rejected(exc.kind, exc.reason, line) from None
