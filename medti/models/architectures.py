"""Stable Diffusion architectures built from configs, with seeded random weights and no download.

``tiny`` is the random model for fast tests (64 px, runs on a laptop CPU); ``toy`` is its pre-trained sibling
(:mod:`medti.models.toy`, the embedded default); ``small`` is a mid-size model for
benchmarks; ``sd15`` and ``sd2`` are the full SD 1.5 and SD 2.0-base architectures (the configs of
runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-base), used by the GPU benchmarks.
Images drawn from randomly initialised weights carry no medical meaning.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class Architecture:
    name: str
    resolution: int
    text: dict
    unet: dict
    vae: dict
    vocab_size: int | None = None  # None: the learned vocabulary's own size
    scheduler: dict = field(default_factory=lambda: dict(SCHEDULER_CONFIG))


_SD_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
_SD_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
_SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=[128, 256, 512, 512], act_fn="silu", sample_size=512,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
)

_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  projection_dim=64, hidden_act="gelu", max_position_embeddings=77)
_TINY_UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=[32, 64], norm_num_groups=8, cross_attention_dim=64,
                  attention_head_dim=8,
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])

ARCHITECTURES: dict[str, Architecture] = {
    "tiny": Architecture(
        name="tiny",
        resolution=64,
        text=_TINY_TEXT,
        unet=_TINY_UNET,
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                 block_out_channels=[32, 64, 64], sample_size=64,
                 down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3),
    ),
    # tiny's text encoder and UNet with a lighter autoencoder; pre-trained on phantoms by medti.models.toy
    "toy": Architecture(
        name="toy",
        resolution=64,
        text=_TINY_TEXT,
        unet=_TINY_UNET,
        vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                 block_out_channels=[16, 32, 64], sample_size=64,
                 down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3),
    ),
    "small": Architecture(
        name="small",
        resolution=256,
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                  projection_dim=512, hidden_act="quick_gelu", max_position_embeddings=77),
        unet=dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=[128, 256, 512], cross_attention_dim=512, attention_head_dim=8,
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
        vae=dict(_SD_VAE, block_out_channels=[64, 128, 256, 256], sample_size=256),
        vocab_size=49408,
    ),
    "sd15": Architecture(
        name="sd15",
        resolution=512,
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77),
        unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
                  down_block_types=_SD_DOWN, up_block_types=_SD_UP),
        vae=dict(_SD_VAE),
        vocab_size=49408,
    ),
    "sd2": Architecture(
        name="sd2",
        resolution=512,
        text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                  projection_dim=512, hidden_act="gelu", max_position_embeddings=77),
        unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=1024,
                  attention_head_dim=[5, 10, 20, 20], use_linear_projection=True,
                  down_block_types=_SD_DOWN, up_block_types=_SD_UP),
        vae=dict(_SD_VAE, sample_size=768),
        vocab_size=49408,
    ),
}


def get_architecture(name: str) -> Architecture:
    from medti.errors import ModelError

    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture '{name}' (choose from {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def build_components(arch: Architecture | str, tokenizer_dir, seed: int = 0, prediction_type: str = "epsilon",
                     device: str | torch.device | None = None):
    """Build (tokenizer, text_encoder, vae, unet, scheduler) with seeded random weights, in memory.

    ``device``: where the weights are created and initialised (a GPU builds SD 2.0 in seconds rather than a
    minute); the same seed gives other weights on another device."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from medti.models.tokenizer import save_tokenizer

    arch = get_architecture(arch) if isinstance(arch, str) else arch
    save_tokenizer(tokenizer_dir, vocab_size=arch.vocab_size)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = tokenizer.get_vocab()
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], **arch.text,
    )
    dev = torch.device(device) if device is not None else None
    gpus = [torch.cuda.current_device() if dev.index is None else dev.index] if dev and dev.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus), dev or contextlib.nullcontext():
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_cfg)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**arch.vae)
        torch.manual_seed(seed + 2)
        unet = UNet2DConditionModel(**arch.unet)
    sched_cfg = {k: v for k, v in arch.scheduler.items() if not k.startswith("_")}
    sched_cfg["prediction_type"] = prediction_type
    scheduler = DDPMScheduler.from_config(sched_cfg)
    for m in (text_encoder, vae, unet):
        m.eval()
    return tokenizer, text_encoder, vae, unet, scheduler
