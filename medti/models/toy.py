"""The ``toy`` base model: a small Stable Diffusion pipeline pre-trained, offline, on phantom images.

The paper's premise is a base model that knows images in general but not the medical concept, which
Textual Inversion then finds. This is that world in miniature. The toy model is the ``toy`` architecture
(``tiny``'s CLIP-style text encoder and UNet, 64 px, 4-channel latents at 16 x 16, a lighter VAE) whose VAE is
trained as an autoencoder and whose UNet is trained to denoise phantom images of the three default modalities,
conditioned through the frozen, untrained text encoder on captions in a generic visual vocabulary
(:mod:`medti.phantoms.looks`:
"a bright round spot in the left upper field", "large dark purple dots packed close"). No caption holds
a class name, a label or a word of a class's ``init`` phrase: the model can draw a spot in a lung, but has
never heard of an "opacity".

The pre-training phantoms come from their own seed (:data:`PRETRAIN_SEED`), so no image the model was
trained on is an image of the default data set; they go through the real ``prepare`` so that they look as
prepared images do. ``scripts/build-toy-model.py`` builds it (seeded; figures in docs/performance.md); the
result is committed under ``medti/models/toy/`` (a few MB) and loaded by ``base_model.id: toy``.

The toy model's numbers are not medical results: it is for seeing and testing the method.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("medti.models.toy")

MODALITIES = ("chest_xray", "prostate_mri", "histopathology")
PRETRAIN_SEED = 424242  # the pre-training phantoms' seed; the default data set uses phantoms.seed (7)
TOY_VERSION = 1
TOY_FOLDER = Path(__file__).with_name("toy")


@dataclass(frozen=True)
class ToySettings:
    """How the toy model is built (recorded in its ``medti_model.json``)."""

    subjects_per_class: int = 150
    phantom_seed: int = PRETRAIN_SEED
    seed: int = 0
    resolution: int = 64
    vae_steps: int = 800
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 3000
    unet_batch_size: int = 32
    unet_lr: float = 1e-3
    unet_warmup: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    workers: int = 2


# -- pre-training data ------------------------------------------------------------------------------------------
def _default_sources() -> dict:
    """Each modality's ``source`` mapping from the default params.yaml (paths are replaced per build)."""
    import yaml

    from medti.config import project_root

    for root in (project_root(), Path(__file__).resolve().parents[2]):
        path = Path(root) / "params.yaml"
        if path.is_file():
            params = yaml.safe_load(path.read_text(encoding="utf-8"))
            return {m: params["modalities"][m]["source"] for m in MODALITIES}
    raise FileNotFoundError("params.yaml (the default modalities' sources) not found")


def pretraining_set(work: str | os.PathLike, settings: ToySettings = ToySettings()) -> list[tuple[str, str, Path]]:
    """Generate and prepare the pre-training phantoms into ``work``: (modality, look, png) for every image.

    Labels are looks, never classes (``generate_phantoms(label="look")``); every split is used.
    """
    from medti.phantoms import generate_phantoms
    from medti.phantoms.looks import looks
    from medti.preprocess import prepare_source

    work = Path(work)
    sources = _default_sources()
    items: list[tuple[str, str, Path]] = []
    for modality in MODALITIES:
        raw, prepared = work / "raw" / modality, work / "prepared" / modality
        if not (raw / "labels.csv").is_file():
            generate_phantoms(modality, raw, subjects_per_class=settings.subjects_per_class,
                              seed=settings.phantom_seed, label="look", workers=settings.workers)
        source = json.loads(json.dumps(sources[modality]))
        source["path"] = str(raw)
        source["labels"]["csv"] = str(raw / "labels.csv")
        present = sorted({row.split(",")[-1] for row in
                          (raw / "labels.csv").read_text(encoding="utf-8").splitlines()[1:]})
        classes = [k for k in looks(modality) if k in present]
        if not (prepared / "manifest.csv").is_file():
            prepare_source(source, classes, prepared, modality=modality, root=work,
                           settings={"size": settings.resolution, "split": {"train": 0.8, "val": 0.1, "test": 0.1},
                                     "ti_per_class": 1},
                           seed=settings.phantom_seed, workers=settings.workers)
        for png in sorted((prepared / "images").glob("*/*/*.png")):
            items.append((modality, png.parent.name, png))
    return items


def load_images(items, resolution: int) -> torch.Tensor:
    """The pngs of ``items`` as one float tensor (N, 3, r, r) in [-1, 1]."""
    from PIL import Image

    out = np.empty((len(items), 3, resolution, resolution), np.float32)
    for i, (_, _, png) in enumerate(items):
        with Image.open(png) as im:
            arr = np.asarray(im.convert("RGB"), np.float32) / 127.5 - 1.0
        out[i] = arr.transpose(2, 0, 1)
    return torch.from_numpy(out)


# -- training ---------------------------------------------------------------------------------------------------
def _lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_autoencoder(vae, images: torch.Tensor, settings: ToySettings, *, progress_every: int = 100) -> list[float]:
    """Train ``vae`` (an AutoencoderKL) to reconstruct ``images``: L1 + MSE + a tiny KL term. Returns losses."""
    gen = torch.Generator().manual_seed(settings.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    vae.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(settings.vae_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, settings.vae_lr, 50, settings.vae_steps)
        idx = torch.randint(0, len(images), (settings.vae_batch_size,), generator=gen)
        x = images[idx]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + settings.vae_kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % progress_every == 0:
            log.info("vae step %d/%d loss %.4f (%.1f s)", step + 1, settings.vae_steps,
                     float(np.mean(losses[-progress_every:])), time.perf_counter() - t0)
    vae.eval()
    return losses


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Posterior means of every image (unscaled latents)."""
    return torch.cat([vae.encode(images[i:i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


@torch.no_grad()
def caption_states(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """The frozen text encoder's last hidden states for ``captions`` (what the UNet is conditioned on)."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def train_unet(unet, latents: torch.Tensor, caption_index: torch.Tensor, states: torch.Tensor, scheduler,
               settings: ToySettings, *, progress_every: int = 100, snapshot=None,
               snapshot_every: int = 0) -> tuple[dict, list[float]]:
    """Train ``unet`` to predict the noise added to ``latents`` (already scaled), conditioned on
    ``states[caption_index[i, v]]`` for a random phrasing ``v`` of image i (the empty caption with
    probability ``caption_dropout``, the last row of ``states``). Returns the EMA weights and the losses."""
    gen = torch.Generator().manual_seed(settings.seed + 22)
    opt = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=1e-4)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    alphas = scheduler.alphas_cumprod.float()
    empty = len(states) - 1
    unet.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(settings.unet_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, settings.unet_lr, settings.unet_warmup, settings.unet_steps)
        b = settings.unet_batch_size
        idx = torch.randint(0, len(latents), (b,), generator=gen)
        variant = torch.randint(0, caption_index.shape[1], (b,), generator=gen)
        cond = caption_index[idx, variant]
        cond = torch.where(torch.rand(b, generator=gen) < settings.caption_dropout, empty, cond)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, len(alphas), (b,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, states[cond]).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        losses.append(loss.item())
        if (step + 1) % progress_every == 0:
            log.info("unet step %d/%d loss %.4f (%.1f s)", step + 1, settings.unet_steps,
                     float(np.mean(losses[-progress_every:])), time.perf_counter() - t0)
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0:
            snapshot(step + 1, ema)
    unet.eval()
    return ema, losses


def build_toy_model(out: str | os.PathLike = TOY_FOLDER, settings: ToySettings = ToySettings(), *,
                    work: str | os.PathLike | None = None) -> Path:
    """Build the toy base model into ``out`` (a diffusers folder, written atomically). ``work`` keeps the
    pre-training phantoms and the trained autoencoder, so a second call resumes after the autoencoder."""
    from diffusers import StableDiffusionPipeline

    from medti.atomic import atomic_dir
    from medti.models.architectures import build_components
    from medti.models.loading import MARKER
    from medti.phantoms.looks import caption, looks

    torch.manual_seed(settings.seed)
    torch.set_flush_denormal(True)  # tiny activations late in training otherwise slow a CPU down many times
    started = time.perf_counter()
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="medti-toy-"))
    work.mkdir(parents=True, exist_ok=True)
    items = pretraining_set(work, settings)
    images = load_images(items, settings.resolution)
    log.info("pre-training set: %d images (%s)", len(images),
             ", ".join(f"{m} {sum(1 for i in items if i[0] == m)}" for m in MODALITIES))
    timings = {"data_s": round(time.perf_counter() - started, 1)}

    with tempfile.TemporaryDirectory(prefix="medti-toy-tok-") as tok_dir:
        tokenizer, text_encoder, vae, unet, scheduler = build_components("toy", Path(tok_dir), seed=settings.seed)
        vae_file = work / "vae.pt"
        t = time.perf_counter()
        if vae_file.is_file():
            vae.load_state_dict(torch.load(vae_file, weights_only=True))
            vae_losses = json.loads((work / "vae_losses.json").read_text())
        else:
            vae_losses = train_autoencoder(vae, images, settings)
            torch.save(vae.state_dict(), vae_file)
            (work / "vae_losses.json").write_text(json.dumps(vae_losses))
        timings["vae_s"] = round(time.perf_counter() - t, 1)
        vae.eval()
        raw = encode_all(vae, images)
        scale = float(1.0 / raw.std())
        vae.register_to_config(scaling_factor=scale)
        latents = raw * scale

        table = [(m, k) for m in MODALITIES for k in looks(m)]
        variants = 3
        texts = [caption(m, k, v) for m, k in table for v in range(variants)] + [""]
        states = caption_states(tokenizer, text_encoder, texts)
        row = {mk: i for i, mk in enumerate(table)}
        caption_index = torch.tensor([[row[(m, k)] * variants + v for v in range(variants)] for m, k, _ in items])
        t = time.perf_counter()
        ema, unet_losses = train_unet(unet, latents, caption_index, states, scheduler, settings)
        timings["unet_s"] = round(time.perf_counter() - t, 1)
        unet.load_state_dict(ema)
        for m in (text_encoder, vae, unet):
            m.requires_grad_(False).eval()

        out = Path(out)
        with atomic_dir(out) as tmp:
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
            pipe.save_pretrained(tmp, safe_serialization=True)
            timings["total_s"] = round(time.perf_counter() - started, 1)
            marker = {
                "medti_arch": "toy", "random_weights": False, "version": TOY_VERSION,
                "pretrained_on": "phantom images of chest_xray, prostate_mri and histopathology, captioned by "
                                 "look (medti.phantoms.looks), never by class",
                "images": len(images), "settings": asdict(settings), "timings": timings,
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "final_losses": {"vae": float(np.mean(vae_losses[-100:])),
                                 "unet": float(np.mean(unet_losses[-100:]))},
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            (tmp / "losses.json").write_text(json.dumps({"vae": vae_losses[::10], "unet": unet_losses[::10]}))
    log.info("toy model -> %s in %.0f s", out, time.perf_counter() - started)
    return out
