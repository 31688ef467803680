"""Build tests/fixtures/concept_model: a tiny Stable Diffusion that knows two synthetic concepts.

The concept-recovery test (tests/test_textual_inversion_concept.py) needs a base model that has learned
something a Textual Inversion embedding can find: a random model has nothing to find. This script trains
one from fixed seeds in about five minutes on one core of a 2-core CPU (600 VAE + 1,500 UNet steps), and
writes it as a diffusers pipeline folder (fp16 weights, about 1.9 MB) that `medti.models.load_base_model`
and diffusers both read:

1. two concepts on a dark 32x32 background: a bright filled **disc** and a bright **ring** (random
   size, position and brightness; `medti.toydata.draw_shapes`, which the test uses too);
2. a small VAE (factor 4: 8x8x4 latents) trained to reconstruct both (the `tiny` model's VAE is random;
   a trained one makes samples judgeable in pixel space and the validation grids readable);
3. a UNet trained as a denoiser on their latents, conditioned through the project's CLIP-style text
   encoder (frozen, random, seeded) on "a photo of disc" / "a photo of ring", with 10% empty prompts
   so classifier-free guidance works.

The words `disc` and `ring` are single tokens of medti's tokenizer; the test initialises a fresh
placeholder from `ring` and must move it to `disc` by training only its vectors.

Run from the repository root:  OMP_NUM_THREADS=1 python scripts/build_concept_fixture.py [--out DIR] [--seed N]
(one thread: on a shared 2-core CPU, two OpenMP threads spin-wait and run several times slower).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medti.toydata import SHAPES as CONCEPTS
from medti.toydata import draw_shapes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "concept_model"
RESOLUTION = 32
TEMPLATE = "a photo of {}"
VAE_STEPS, UNET_STEPS, BATCH = 600, 1500, 32


def _architecture():
    from medti.models.architectures import ARCHITECTURES, Architecture

    tiny = ARCHITECTURES["tiny"]
    return Architecture(
        name="concept",
        resolution=RESOLUTION,
        text=dict(tiny.text),
        unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 48],
                  norm_num_groups=8, cross_attention_dim=tiny.text["hidden_size"], attention_head_dim=8,
                  down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                 block_out_channels=[16, 32, 32], sample_size=RESOLUTION,
                 down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3),
    )


def _batch(step: int, seed: int, n: int = BATCH):
    """A deterministic batch, half discs and half rings: images in [-1, 1] ``[n, 3, 32, 32]`` and labels
    (0 disc, 1 ring)."""
    half = n // 2
    imgs = np.concatenate([draw_shapes("disc", half, seed * 1_000_003 + 2 * step),
                           draw_shapes("ring", n - half, seed * 1_000_003 + 2 * step + 1)])
    x = torch.from_numpy(imgs).float().div(127.5).sub(1.0)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), (torch.arange(n) >= half).long()


def train_vae(vae, seed: int, log) -> float:
    """Reconstruction + a light KL term; returns the latent scaling factor (1 / std of the latents)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=VAE_STEPS, pct_start=0.1)
    vae.train()
    for step in range(VAE_STEPS):
        x, _ = _batch(step, seed)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == VAE_STEPS - 1:
            log(f"vae step {step:4d}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        x, _ = _batch(10**6, seed, n=256)
        std = vae.encode(x).latent_dist.mean.std().item()
    return 1.0 / std


def train_unet(unet, vae, text_encoder, tokenizer, scheduler, scale: float, seed: int, log) -> None:
    prompts = [TEMPLATE.format(c) for c in CONCEPTS] + [""]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids)[0]                      # [3, 77, dim]: disc, ring, empty
    ac = scheduler.alphas_cumprod.float()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=UNET_STEPS, pct_start=0.05)
    unet.train()
    ema = None
    for step in range(UNET_STEPS):
        x, lab = _batch(step + 10**5, seed)
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
            lat = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * scale
        drop = torch.rand(lab.shape, generator=g) < 0.1
        cond = hidden[torch.where(drop, torch.full_like(lab, 2), lab)]
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (lat.shape[0],), generator=g)
        a, b = ac[t].sqrt().view(-1, 1, 1, 1), (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
        pred = unet(a * lat + b * noise, t, cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == UNET_STEPS - 1:
            log(f"unet step {step:4d}: loss {ema:.4f}")
    unet.eval()


def build(out: Path, seed: int = 0) -> Path:
    from diffusers import StableDiffusionPipeline

    from medti.atomic import atomic_dir
    from medti.models.architectures import build_components

    torch.manual_seed(seed)
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)  # noqa: E731
    with atomic_dir(out) as tmp:
        tok, te, vae, unet, sched = build_components(_architecture(), tmp / "tokenizer", seed=seed)
        for word in CONCEPTS:
            assert len(tok.tokenize(word)) == 1, f"'{word}' must be one token of medti's tokenizer"
        scale = train_vae(vae, seed, log)
        vae.register_to_config(scaling_factor=scale)
        log(f"latent scaling factor {scale:.4f}")
        train_unet(unet, vae, te, tok, sched, scale, seed, log)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.to(torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True)
        marker = {"medti_arch": "concept", "seed": seed, "random_weights": False, "resolution": RESOLUTION,
                  "concepts": {c: TEMPLATE.format(c) for c in CONCEPTS},
                  "built_by": "scripts/build_concept_fixture.py", "vae_steps": VAE_STEPS, "unet_steps": UNET_STEPS}
        (tmp / "medti_model.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"wrote {out} ({size / 2**20:.2f} MB)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build(args.out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
