"""Inpainting: repaint a masked region of an image (real or synthetic) with a disease prompt.

The mask is a file (white, or at least 50 % grey, = repaint) or a circle or box in pixel coordinates; its
edge is blurred by ``mask_blur`` pixels (the paper: 8). Two ways to repaint:

- an inpainting checkpoint (a UNet with 2 x 4 + 1 input channels, e.g. stable-diffusion-2-inpainting),
  given by ``--inpainting-model`` or as the base model itself: the UNet sees the mask and the
  masked image (the region to repaint blanked to mid-grey, 0 in [-1, 1], as diffusers and A1111 do);
- a standard checkpoint by latent blending: after every step the latents outside the mask are replaced by
  the start image's, noised to that step's level.

Either way the denoising starts from the image noised to ``strength`` (the paper: 0.9; 1 = pure noise),
and the result is composited over the original with the blurred mask, so pixels outside it are the
original's exactly. Outputs: ``inpainted-K.png``, ``mask.png`` (the blurred mask), ``before_after.png``
and ``inpaint.json`` (settings, seeds, checksums; no input path, which may name a patient).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medti.errors import ConfigError, InputError, ModelError
from medti.hashing import file_sha256

if TYPE_CHECKING:
    import torch

    from medti.generate.embedding_install import EmbeddingSource
    from medti.generate.jobs import Runtime
    from medti.models.loading import BaseModel

log = logging.getLogger(__name__)

RECORD = "inpaint.json"
FIGURE = "before_after.png"
MASK = "mask.png"


@dataclass(frozen=True)
class MaskSpec:
    """Where to repaint: ``kind`` file (``value`` a path), circle (cx, cy, r) or box (x0, y0, x1, y1)."""

    kind: str
    value: object

    def describe(self) -> str:
        if self.kind == "file":
            return f"file sha256 {file_sha256(Path(self.value))[:16]}"
        return f"{self.kind} {','.join(f'{v:g}' for v in self.value)}"


def mask_spec(mask: str | None = None, circle: str | None = None, box: str | None = None) -> MaskSpec:
    """Exactly one of a mask file, ``"CX,CY,R"`` or ``"X0,Y0,X1,Y1"`` (pixels)."""
    given = [(k, v) for k, v in (("file", mask), ("circle", circle), ("box", box)) if v not in (None, "")]
    if len(given) != 1:
        raise ConfigError("give exactly one of --mask FILE, --circle CX,CY,R or --box X0,Y0,X1,Y1")
    kind, value = given[0]
    if kind == "file":
        return MaskSpec(kind, str(value))
    want = 3 if kind == "circle" else 4
    try:
        numbers = tuple(float(v) for v in re.split(r"[,\s]+", str(value).strip()) if v)
    except ValueError:
        numbers = ()
    if len(numbers) != want:
        form = "CX,CY,R" if kind == "circle" else "X0,Y0,X1,Y1"
        raise ConfigError(f"--{kind} '{value}': expected {want} numbers {form} (pixels)")
    if kind == "circle" and numbers[2] <= 0:
        raise ConfigError(f"--circle '{value}': the radius must be positive")
    if kind == "box" and (numbers[2] <= numbers[0] or numbers[3] <= numbers[1]):
        raise ConfigError(f"--box '{value}': expected x0 < x1 and y0 < y1")
    return MaskSpec(kind, numbers)


def make_mask(spec: MaskSpec, size: tuple[int, int]) -> np.ndarray:
    """The hard mask (float32 H x W, 1 = repaint) for an image of ``size`` (width, height)."""
    from PIL import Image

    width, height = size
    if spec.kind == "file":
        path = Path(spec.value)
        try:
            with Image.open(path) as im:
                grey = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the mask image ({str(exc).splitlines()[0]})") from None
        if grey.shape != (height, width):
            raise InputError(f"{path}: the mask is {grey.shape[1]}x{grey.shape[0]} pixels but the image is "
                             f"{width}x{height}: they must be the same size")
        hard = (grey >= 0.5).astype(np.float32)
    else:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
        if spec.kind == "circle":
            cx, cy, r = spec.value
            hard = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.float32)
        else:
            x0, y0, x1, y1 = spec.value
            hard = ((xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)).astype(np.float32)
    if not hard.any():
        raise InputError(f"mask ({spec.describe()}): nothing to repaint inside the {width}x{height} image")
    return hard


def blur_mask(hard: np.ndarray, radius: float) -> np.ndarray:
    """The mask with a Gaussian-blurred edge (as the A1111 web UI's mask blur), float32 in [0, 1]; pixels
    far enough from the mask stay exactly 0."""
    from PIL import Image, ImageFilter

    if radius < 0:
        raise ConfigError(f"mask blur {radius}: must be 0 or more pixels")
    img = Image.fromarray((hard * 255).round().astype(np.uint8), "L")
    if radius > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(img, dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike) -> tuple[torch.Tensor, bool]:
    """(RGB float tensor [3, H, W] in [0, 1], True when the file is greyscale)."""
    import torch
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            grey = im.mode in ("L", "I", "I;16", "F", "LA", "1")
            rgb = im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the image ({str(exc).splitlines()[0]})") from None
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), grey


def resize(image: torch.Tensor, hard: np.ndarray, resolution: int) -> tuple[torch.Tensor, np.ndarray]:
    """The image (bicubic, antialiased) and its hard mask (nearest) as squares of ``resolution`` pixels."""
    import torch
    import torch.nn.functional as F

    size = (int(resolution), int(resolution))
    image = F.interpolate(image[None], size=size, mode="bicubic", antialias=True)[0].clamp(0, 1)
    mask = F.interpolate(torch.from_numpy(hard)[None, None], size=size, mode="nearest")[0, 0]
    return image, mask.numpy()


def check_strength(strength: float) -> None:
    if not 0.0 < float(strength) <= 1.0:
        raise ConfigError(f"--strength (inpaint.strength) {strength}: must be more than 0 and at most 1")


def inpaint(model: BaseModel, image: torch.Tensor, mask: np.ndarray | torch.Tensor, prompts: Sequence[str],
            seeds: Sequence[int], *, strength: float = 0.9, negative_prompt: str = "", steps: int = 20,
            guidance: float = 5.0, scheduler: str = "dpmsolver++", batch_size: int = 8,
            unet: torch.nn.Module | None = None, device: str | torch.device | None = None,
            dtype: torch.dtype | None = None, progress_desc: str | None = None) -> torch.Tensor:
    """Repaint ``image`` ([3, H, W] in [0, 1]) where ``mask`` (H x W in [0, 1], blurred) is set: one result
    per (prompt, seed), [N, 3, H, W] in [0, 1], composited over the original with ``mask``.

    ``unet`` (default: the model's) decides the method: one with 2 x latent + 1 input channels is an
    inpainting UNet; a standard one repaints by latent blending.
    """
    import torch
    import torch.nn.functional as F

    from medti.generate.sampling import Denoising, Sampler

    check_strength(strength)
    sampler = Sampler(model, device=device, dtype=dtype, unet=unet)
    height, width = image.shape[-2:]
    channels, h, w = sampler.latent_shape((height, width))
    in_channels = int(sampler.unet.config.in_channels)
    if in_channels not in (channels, 2 * channels + 1):
        raise ModelError(f"UNet with {in_channels} input channels: neither a standard ({channels}) nor an "
                         f"inpainting ({2 * channels + 1}) UNet")
    sampler.validate(prompts, negative_prompt, scheduler, (height, width))
    img = image.unsqueeze(0).float()
    soft = torch.as_tensor(mask, dtype=torch.float32).view(1, 1, height, width)
    init = sampler.encode_images(img)
    if in_channels == 2 * channels + 1:
        hard = (soft >= 0.5).float()
        masked = sampler.encode_images(masked_image(img, hard))
        extra, keep = torch.cat([F.interpolate(hard, size=(h, w)), masked], dim=1), None
    else:
        extra, keep = None, F.interpolate(soft, size=(h, w), mode="area")

    def denoising(sl: slice) -> Denoising:
        b = sl.stop - sl.start
        return Denoising(init_latents=init.expand(b, -1, -1, -1), strength=float(strength),
                         extra_channels=None if extra is None else extra.expand(b, -1, -1, -1),
                         keep_mask=None if keep is None else keep.expand(b, -1, -1, -1))

    drawn = sampler.sample(prompts, seeds, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                           scheduler=scheduler, resolution=(height, width), batch_size=batch_size,
                           progress_desc=progress_desc, denoising=denoising)
    return soft * drawn + (1 - soft) * img


def masked_image(image: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """The masked-image input of an inpainting UNet: ``image`` ([B, 3, H, W] in [0, 1]) with the region to
    repaint (``hard`` = 1) blanked to mid-grey, i.e. 0 in the VAE's [-1, 1] space, as diffusers'
    inpainting pipeline and the A1111 web UI blank it (the checkpoints were trained on such inputs)."""
    return image * (1 - hard) + 0.5 * hard


def load_inpainting_unet(spec: str, model: BaseModel, device: str | torch.device, dtype: torch.dtype | None,
                         local_files_only: bool = True) -> torch.nn.Module:
    """The UNet of an inpainting checkpoint, checked against the base model's text encoder."""
    from medti.models.loading import load_base_model

    loaded = load_base_model(spec, device=device, dtype=dtype, local_files_only=local_files_only,
                             components=("unet",))
    unet = loaded.unet
    latent = int(model.vae.config.latent_channels)
    if int(unet.config.in_channels) != 2 * latent + 1:
        raise ModelError(f"--inpainting-model '{spec}': its UNet takes {unet.config.in_channels} input channels, "
                         f"not {2 * latent + 1}: not an inpainting checkpoint")
    if int(unet.config.cross_attention_dim) != model.embedding_dim:
        raise ModelError(f"--inpainting-model '{spec}': its UNet expects text states of width "
                         f"{unet.config.cross_attention_dim}, base model '{model.model_id}' "
                         f"gives {model.embedding_dim}")
    return unet


def inpaint_job(image: str | os.PathLike, spec: MaskSpec, out: str | os.PathLike, *, params: dict | None = None,
                runtime: Runtime | None = None, prompt: str | None = None,
                embeddings: Iterable[EmbeddingSource] = (), pipeline: tuple[str, str, str | None] | None = None,
                inpainting_model: str | None = None, strength: float | None = None, mask_blur: float | None = None,
                n: int | None = None, **cli) -> Path:
    """Repaint ``image`` where ``spec`` says, ``n`` times (different seeds), into ``out``.

    Standalone: ``prompt`` with any ``embeddings``. Pipeline: ``pipeline`` = (modality, embeddings folder,
    class); the class's first prompt template with its token is painted (default: the last class).
    """
    import torch

    from medti.atomic import output_lock, write_json
    from medti.generate.jobs import Runtime, load_modality, load_standalone, settings
    from medti.generate.synthetic import derive_seed, save_png
    from medti.tracking import track

    modality = pipeline[0] if pipeline else None
    cfg = settings(params, modality, "inpaint", n=n if n is not None else 1, strength=strength,
                   mask_blur=mask_blur, **cli)
    check_strength(cfg["strength"])
    pixels, grey = load_image(image)
    hard = make_mask(spec, (int(pixels.shape[2]), int(pixels.shape[1])))  # coordinates: the original's pixels
    if cfg["resolution"]:
        pixels, hard = resize(pixels, hard, cfg["resolution"])
    size = (int(pixels.shape[2]), int(pixels.shape[1]))
    soft = blur_mask(hard, float(cfg["mask_blur"]))
    runtime = runtime or Runtime.from_params(params)
    if pipeline:
        loaded = load_modality(params, pipeline[0], pipeline[1], runtime)
        if pipeline[2] is not None and pipeline[2] not in loaded.class_prompts:
            raise ConfigError(f"--class {pipeline[2]}: not a class of {pipeline[0]} "
                              f"(have: {', '.join(loaded.class_prompts)})")
        prompt = loaded.resolve(pipeline[2] or list(loaded.class_prompts)[-1])
    else:
        if not prompt:
            raise ConfigError("give --prompt (standalone) or --params/--modality/--embeddings/--class (pipeline)")
        loaded = load_standalone(embeddings, runtime, params)
    model = loaded.model
    unet = None
    if inpainting_model:
        unet = load_inpainting_unet(inpainting_model, model, loaded.device, loaded.dtype, runtime.local_files_only)
    nine = int((unet or model.unet).config.in_channels) == 2 * int(model.vae.config.latent_channels) + 1
    method = "inpainting checkpoint" if nine else "latent blending"
    seeds = [derive_seed(int(cfg["seed"]), "inpaint", k) for k in range(int(cfg["n"]))]
    out = Path(out)
    log.info("inpainting a %dx%d image (%s, blur %g px) with '%s' by %s, strength %g, %d result(s)",
             size[0], size[1], spec.describe(), float(cfg["mask_blur"]), prompt, method, float(cfg["strength"]),
             len(seeds))
    with output_lock(out, what="inpainting into this folder"), \
            track(params, "inpaint", run_name=f"inpaint-{modality or 'custom'}",
                  tags={"modality": modality or "custom", "base_model": model.model_id, "method": method}) as t:
        t.log_params(dict(cfg) | {"method": method, "inpainting_model": inpainting_model or ""})
        results = inpaint(model, pixels, soft, [prompt] * len(seeds), seeds, strength=float(cfg["strength"]),
                          negative_prompt=cfg["negative_prompt"], steps=int(cfg["steps"]),
                          guidance=float(cfg["guidance"]), scheduler=cfg["scheduler"],
                          batch_size=int(cfg["batch_size"]), unet=unet, device=loaded.device, dtype=loaded.dtype,
                          progress_desc="inpaint")
        if grey:  # a grey image stays grey (the luma of the result; grey pixels keep their value)
            luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            results = (results * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
        channels = "grey" if grey else "rgb"
        names = [f"inpainted-{k}.png" for k in range(len(seeds))]
        for name, result in zip(names, results):
            save_png(result, out / name, channels)
        save_png(_as_image(soft), out / MASK, "grey")
        before_after(pixels, soft, results, out / FIGURE, prompt)
        write_json(out / RECORD, {
            "prompt": prompt, "negative_prompt": cfg["negative_prompt"], "seeds": seeds, "outputs": names,
            "strength": float(cfg["strength"]), "mask_blur": float(cfg["mask_blur"]), "mask": spec.describe(),
            "method": method, "inpainting_model": inpainting_model, "base_model": model.model_id,
            "steps": int(cfg["steps"]), "guidance": float(cfg["guidance"]), "scheduler": cfg["scheduler"],
            "embedding_checksum": loaded.checksums(prompt), "image_sha256": file_sha256(Path(image)),
            "size": list(size)})
        t.log_artifact(out / FIGURE)
    return out / FIGURE


def _as_image(mask: np.ndarray):
    import torch

    return torch.from_numpy(mask).unsqueeze(0).expand(3, -1, -1)


def before_after(image: torch.Tensor, mask: np.ndarray, results: torch.Tensor, path: str | os.PathLike,
                 prompt: str) -> None:
    """The figure: the original, the mask over it (red), and each result."""
    import torch

    from medti.figures import image_grid

    overlay = image.clone()
    m = torch.from_numpy(mask)
    overlay[0] = overlay[0] * (1 - 0.6 * m) + 0.6 * m
    overlay[1:] = overlay[1:] * (1 - 0.6 * m)
    cells = [image, overlay] + list(results)
    titles = ["before", "mask"] + [f"after {k + 1}" for k in range(len(results))]
    image_grid(cells, path, ncols=len(cells), titles=titles, suptitle=_short(prompt))


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
