"""Training images: reading them, augmented views, and the cache of VAE latent distributions.

Each image (or augmented view of it) goes through the VAE encoder exactly once. The cache keeps the
latent distribution (mean and standard deviation, already scaled by the VAE's scaling factor) on the
training device, and a training step draws its latents from it, so the hot loop never touches pixels,
files or the VAE. Augmentation therefore happens before encoding: ``Augment.views`` random views per image
are drawn once (seeded) and cached alongside the original.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from medti.errors import InputError
from medti.hashing import file_sha256, sha256_of
from medti.textual_inversion.settings import Augment

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MIN_IMAGES = 2


def list_image_folder(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively), in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder not found")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def manifest_images(manifest: str | Path, modality: str, class_name: str, images: int | None = None,
                    seed: int = 0) -> list[Path]:
    """The rows of a prepared manifest picked for this embedding: modality, class, train split, ti_subset.

    ``images`` (an embedding variant's size) takes that many of them, spread over subjects in a seeded order of
    the sources' checksums (no salted id): the same images on every clone, and a smaller variant's images are
    the first of a larger one's (nested, as the paper's 10 of its 100).
    """
    from medti.manifest import read_manifest
    from medti.preprocess.splitting import pick_subset

    df = read_manifest(manifest, absolute=True)
    if "ti_subset" not in df.columns:
        raise InputError(f"{manifest}: no ti_subset column (is it a synthetic manifest? use the prepared one)")
    subset = df["ti_subset"].astype(str).str.lower().isin(("true", "1"))
    rows = df[(df["modality"] == modality) & (df["class"] == class_name) & (df["split"] == "train") & subset]
    if images is None or images >= len(rows):
        return [Path(p) for p in sorted(rows["path"])]
    keys = {f"{r.source_checksum}/{r.path}": r.path for r in rows.itertuples()}
    subject_of = dict(zip(keys, rows["subject_id"].astype(str)))
    order: dict[str, str] = {}
    for key, subject in subject_of.items():
        order[subject] = min(order.get(subject, key), key)
    picked = pick_subset([(subject_of[k], k) for k in keys], images, seed, order=order)
    return [Path(p) for p in sorted(keys[k] for k in picked)]


def check_image_count(paths: list[Path], source: str) -> None:
    if len(paths) == 0:
        raise InputError(f"{source}: no training images: an embedding needs at least {MIN_IMAGES} "
                         "(a few dozen recommended; the paper used 100)")
    if len(paths) < MIN_IMAGES:
        raise InputError(f"{source}: only one training image: Textual Inversion on a single image learns that "
                         f"image, not a class; give at least {MIN_IMAGES} (a few dozen recommended)")


def images_checksum(paths: list[Path]) -> str:
    """sha256 over the images' contents, independent of their names and order."""
    return sha256_of(sorted(file_sha256(p) for p in paths))


def load_images(paths: list[Path], resolution: int) -> torch.Tensor:
    """Read images as uint8 RGB ``[N, 3, resolution, resolution]``.

    Images of another size are resized (non-square ones centre-cropped first), with one warning saying
    how many; grey images are replicated to three channels.
    """
    from PIL import Image, UnidentifiedImageError

    out = torch.empty((len(paths), 3, resolution, resolution), dtype=torch.uint8)
    sizes: Counter = Counter()
    cropped = 0
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im.load()
                img = _to_rgb(im)
        except FileNotFoundError:
            raise InputError(f"{p}: training image not found") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InputError(f"{p}: not a readable image ({str(exc).splitlines()[0][:120]})") from None
        w, h = img.size
        sizes[(w, h)] += 1
        if w != h:
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            cropped += 1
        if img.size != (resolution, resolution):
            resample = Image.Resampling.LANCZOS if img.size[0] > resolution else Image.Resampling.BICUBIC
            img = img.resize((resolution, resolution), resample=resample)
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        out[i] = pixels.view(resolution, resolution, 3).permute(2, 0, 1)
    resized = sum(n for (w, h), n in sizes.items() if (w, h) != (resolution, resolution))
    if resized:
        seen = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(4))
        log.warning("%d of %d training images are not %dx%d (sizes: %s): resized%s", resized, len(paths),
                    resolution, resolution, seen, f", {cropped} non-square ones centre-cropped" if cropped else "")
    return out


def _to_rgb(im):
    """8-bit RGB; 16-bit and float images (PIL modes I;16, I, F) are stretched from their own minimum and
    maximum to 0-255 first (a plain ``convert("RGB")`` clips them to white)."""
    from PIL import Image

    if im.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1"):
        return im.convert("RGB")
    import numpy as np

    a = np.asarray(im, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(a.round().astype(np.uint8)).convert("RGB")


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], as the VAE expects."""
    return images.float().div(127.5).sub(1.0)


class ViewMaker:
    """The original images plus ``augment.views - 1`` seeded random views of each.

    All random parameters are drawn up front, so a view does not depend on how images are batched.
    """

    def __init__(self, augment: Augment, num_images: int, seed: int):
        self.augment = augment
        self.num_views = augment.num_views
        g = torch.Generator().manual_seed(seed + 7919)
        self.params = torch.rand((self.num_views, num_images, 5), generator=g)

    def __call__(self, images: torch.Tensor, view: int, first: int) -> torch.Tensor:
        """View ``view`` of ``images`` (uint8, image indices ``first..``) as float in [-1, 1]."""
        x = to_unit_range(images)
        if view == 0:
            return x
        a, u = self.augment, self.params[view, first:first + x.shape[0]]
        fx = torch.where((u[:, 0] < 0.5) & a.hflip, -1.0, 1.0)
        fy = torch.where((u[:, 1] < 0.5) & a.vflip, -1.0, 1.0)
        angle = (u[:, 2] * 2 - 1) * math.radians(a.rotate_degrees)
        lo, hi = a.scale
        scale = lo + (hi - lo) * u[:, 3]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.zeros((x.shape[0], 2, 3))
        theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin * fy
        theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos * fy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if a.brightness:
            factor = 1 + (u[:, 4] * 2 - 1) * a.brightness
            x = ((x + 1) * factor.view(-1, 1, 1, 1) - 1).clamp_(-1, 1)
        return x


@dataclass
class LatentCache:
    """Scaled latent distributions of every training view: draw ``mean + std * noise`` per step."""

    mean: torch.Tensor  # [V, C, h, w] float32 on the training device
    std: torch.Tensor

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean, std = self.mean[index], self.std[index]
        return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)

    @property
    def nbytes(self) -> int:
        return self.mean.numel() * self.mean.element_size() * 2


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, views: ViewMaker, device: torch.device, dtype: torch.dtype,
                   batch_size: int = 8) -> LatentCache:
    """Encode every view of ``images`` (uint8) once; keep each latent distribution, scaled as the UNet sees
    latents. Rows are ordered view-major: row ``v * len(images) + i`` is view ``v`` of image ``i``."""
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    means, stds = [], []
    for v in range(views.num_views):
        for first in range(0, images.shape[0], batch_size):
            chunk = views(images[first:first + batch_size], v, first)
            dist = vae.encode(chunk.to(device=device, dtype=dtype)).latent_dist
            means.append((dist.mean.float() - shift) * scale)
            stds.append(dist.std.float() * scale)
    return LatentCache(torch.cat(means), torch.cat(stds))


def release_vae_encoder(model, keep_decoder: bool) -> None:
    """Drop the VAE encoder once latents are cached (the decoder stays only for validation grids)."""
    import gc

    if keep_decoder:
        model.vae.encoder = None
        if getattr(model.vae, "quant_conv", None) is not None:
            model.vae.quant_conv = None
    else:
        model.vae = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
