"""Batched classifier-free-guided sampling from a loaded base model.

Every image has its own seed and its own ``torch.Generator`` (for its starting noise and, with ancestral
schedulers, for its per-step noise), so image i comes out the same whatever else is in its batch: any image
can be regenerated alone, and a resumed run matches an uninterrupted one. "The same" is exact for equal
batch sizes; across batch sizes, kernels that pick their algorithm by batch shape (CPU convolutions) round
differently, by about 1e-6, which can move a few 8-bit pixels by one grey level.

Per denoising step one UNet call carries the whole batch: each image's unconditional (negative-prompt)
row and one row per sub-prompt. Sub-prompts are combined in noise-prediction space (composable
diffusion): ``eps = eps_u + sum_i w_i * guidance * (eps_i - eps_u)``; a plain prompt is the one-term case,
i.e. ordinary classifier-free guidance. Each distinct text is encoded once per call, and the VAE decodes
a batch at a time. Everything runs under ``torch.inference_mode`` on the modules where they are: fp16/bf16
weights on a GPU run in that precision (attention through PyTorch's SDPA, diffusers' default), while the
scheduler arithmetic stays in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from medti.errors import ConfigError
from medti.generate.prompts import Blend, WeightedPrompt, as_weighted, check_tokens, interpolate_vectors
from medti.generate.schedulers import STOCHASTIC, make_scheduler
from medti.models.token_embedding import expand_prompt, placeholder_tokens

log = logging.getLogger(__name__)

TEXT_BATCH = 64


def sample(model, prompts: Sequence[str | WeightedPrompt | Blend], seeds: Sequence[int], *,
           negative_prompt: str = "", steps: int = 20, guidance: float = 5.0, scheduler: str = "dpmsolver++",
           resolution: int | None = None, batch_size: int = 8, device=None, dtype=None,
           progress_desc: str | None = None) -> torch.Tensor:
    """Draw one image per (prompt, seed): a float tensor [N, 3, H, W] in [0, 1] on the CPU.

    ``prompts`` are text (A1111's ``"a:0.3 AND b:0.7"`` syntax allowed), WeightedPrompt or Blend objects;
    placeholder tokens must already be installed in ``model.text_encoder`` (``<t>`` expands to its
    sub-tokens here). ``device`` defaults to the UNet's; ``dtype`` (default: the UNet's) is the precision of
    the UNet and VAE (autocast when the weights are stored in another). ``resolution`` defaults to the
    model's. ``batch_size`` counts images per UNet call (the call carries the guidance rows as well).
    """
    run = Sampler(model, device=device, dtype=dtype)
    return run.sample(prompts, seeds, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                      scheduler=scheduler, resolution=resolution, batch_size=batch_size,
                      progress_desc=progress_desc)


@dataclass
class Conditioning:
    """Encoded text for a set of images: one table of encoder states and, per image, rows and weights."""

    table: torch.Tensor                              # [K, L, D]: row 0 is the negative prompt
    terms: list[list[tuple[int, float]]]             # per image: (table row, weight)


@dataclass
class Denoising:
    """Optional inputs that turn sampling into img2img or inpainting (see medti.generate.inpaint)."""

    init_latents: torch.Tensor | None = None         # [B, C, h, w] scaled latents of the start images
    strength: float = 1.0                            # 1: start from pure noise
    extra_channels: torch.Tensor | None = None       # [B, c, h, w] appended to the UNet input (9-channel UNets)
    keep_mask: torch.Tensor | None = None            # [B, 1, h, w]: 1 = regenerate, 0 = keep init_latents


class Sampler:
    """Sampling with one base model on one device; holds the text-encoding and decoding helpers."""

    def __init__(self, model, device=None, dtype=None, unet=None):
        self.model = model
        self.unet = unet if unet is not None else model.unet
        self.device = torch.device(device) if device is not None else _module_device(self.unet)
        for module in (model.text_encoder, model.vae, self.unet):
            if _module_device(module) != self.device:
                module.to(self.device)
        self.unet_dtype = _module_dtype(self.unet)
        self.dtype = dtype or self.unet_dtype
        self.vae_scale = float(model.vae.config.scaling_factor)
        self.vae_shift = float(getattr(model.vae.config, "shift_factor", None) or 0.0)
        self._warned_blends: set[tuple[str, str, str]] = set()  # one warning per sweep, not per weight

    # -- text ----------------------------------------------------------------------------------------------
    def check_prompts(self, texts: Sequence[str]) -> list[str]:
        """Unknown tokens and over-long prompts are errors; return the prompts with placeholders expanded."""
        tok = self.model.tokenizer
        known = placeholder_tokens(self.model.text_encoder)
        limit = int(tok.model_max_length)
        expanded = []
        for text in texts:
            check_tokens(text, tok, known)
            full = expand_prompt(text, known)
            n = len(tok(full, truncation=False).input_ids)
            if n > limit:
                raise ConfigError(
                    f"prompt '{text}' is {n - 2} tokens long with its placeholders expanded, but the text encoder "
                    f"takes {limit - 2}: shorten it, or combine tokens as sub-prompts ('A AND B')")
            expanded.append(full)
        return expanded

    def validate(self, prompts: Sequence[str | WeightedPrompt | Blend], negative_prompt: str = "",
                 scheduler: str = "dpmsolver++", resolution=None) -> None:
        """Check what a run needs before it does any work or writes anything: every prompt (its weights,
        tokens and length), the scheduler's name and the resolution."""
        texts = {negative_prompt}
        for p in prompts:
            texts.update(as_weighted(p).texts())
        self.check_prompts(sorted(texts))
        make_scheduler(scheduler, self.model.noise_scheduler.config)
        self.latent_shape(resolution)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """The text encoder's last hidden states [n, L, D] (in the UNet's dtype) for ``texts``."""
        tok, te = self.model.tokenizer, self.model.text_encoder
        expanded = self.check_prompts(texts)
        out = []
        for i in range(0, len(expanded), TEXT_BATCH):
            ids = tok(expanded[i:i + TEXT_BATCH], padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids.to(_module_device(te))
            out.append(te(ids)[0].to(device=self.device, dtype=self.unet_dtype))
        return torch.cat(out)

    def condition(self, prompts: Sequence[str | WeightedPrompt | Blend], negative_prompt: str = "") -> Conditioning:
        """Encode every distinct text and blend once and index them per image. Sub-prompts of weight 0
        add nothing to the guided prediction, so they get no UNet row."""
        weighted = [as_weighted(p) for p in prompts]
        texts: list[str] = [negative_prompt]
        blends: list[Blend] = []
        for wp in weighted:
            for cond, weight in wp.terms:
                if weight == 0:
                    self.check_prompts(cond.texts() if isinstance(cond, Blend) else [cond])  # still a valid prompt
                    continue
                if isinstance(cond, Blend):
                    blends.extend([cond] if cond not in blends else [])
                elif cond not in texts:
                    texts.append(cond)
        table = [self.encode_texts(texts)] + [self.encode_blend(b) for b in blends]
        row = {t: i for i, t in enumerate(texts)} | {b: len(texts) + i for i, b in enumerate(blends)}
        terms = [[(row[cond], weight) for cond, weight in wp.terms if weight != 0] for wp in weighted]
        return Conditioning(torch.cat(table), terms)

    @torch.inference_mode()
    def encode_blend(self, blend: Blend) -> torch.Tensor:
        """The text encoder's states [1, L, D] for ``blend``: its two prompts' token embeddings (the learned
        vectors of their placeholders included) interpolated position by position, then encoded once.
        Positions where both prompts have the same token keep it; ``t`` 0 and 1 give the two prompts."""
        from medti.models.token_embedding import install_extended_embedding

        tok, te = self.model.tokenizer, self.model.text_encoder
        expanded = self.check_prompts(blend.texts())
        encoded = tok(expanded, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt")
        ids = encoded.input_ids.to(_module_device(te))
        lengths = encoded.attention_mask.sum(dim=1).tolist()
        if lengths[0] != lengths[1] and (blend.a, blend.b, blend.mode) not in self._warned_blends:
            self._warned_blends.add((blend.a, blend.b, blend.mode))
            log.warning("%s blend of '%s' (%d tokens) and '%s' (%d tokens): positions are mixed one by one, so "
                        "past the first difference tokens mix with unrelated ones (the shorter prompt's end-of-text "
                        "too); prompts of equal length (embeddings with the same num_vectors) blend cleanly, and "
                        "'A:w AND B:w' has no such limit", blend.mode, blend.a, lengths[0], blend.b, lengths[1])
        layer = install_extended_embedding(te)
        vectors = layer(ids)
        mixed = interpolate_vectors(vectors[:1], vectors[1:], blend.t, blend.mode)
        handle = layer.register_forward_hook(lambda module, inputs, output: mixed.to(output.dtype))
        try:
            states = te(ids[:1])[0]  # the ids only place the pooled EOS token, which SD does not use
        finally:
            handle.remove()
        return states.to(device=self.device, dtype=self.unet_dtype)

    # -- latents -------------------------------------------------------------------------------------------
    def latent_shape(self, resolution: int | tuple[int, int] | None) -> tuple[int, int, int]:
        """(channels, h, w) of the latents for a square ``resolution`` or an (height, width) in pixels."""
        factor = self.model.vae_scale_factor
        size = resolution if isinstance(resolution, (tuple, list)) else (resolution or self.model.resolution,) * 2
        for res in size:
            if int(res) <= 0 or int(res) % factor:
                raise ConfigError(f"resolution {res}: must be a positive multiple of {factor} "
                                  f"(the VAE's downsampling factor) for base model '{self.model.model_id}'")
        return int(self.model.vae.config.latent_channels), int(size[0]) // factor, int(size[1]) // factor

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> scaled latents (the posterior mean: deterministic)."""
        vae = self.model.vae
        with self._autocast():
            dist = vae.encode((images * 2 - 1).to(self.device, _module_dtype(vae))).latent_dist
        return ((dist.mean.float() - self.vae_shift) * self.vae_scale)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> [B, 3, H, W] float in [0, 1] on the CPU."""
        vae = self.model.vae
        with self._autocast():
            x = vae.decode((latents / self.vae_scale + self.vae_shift).to(_module_dtype(vae))).sample
        return (x.float() / 2 + 0.5).clamp(0, 1).cpu()

    def _autocast(self):
        if self.dtype != self.unet_dtype and self.dtype in (torch.float16, torch.bfloat16):
            return torch.autocast(device_type=self.device.type, dtype=self.dtype)
        return torch.autocast(device_type=self.device.type, enabled=False)

    # -- sampling ------------------------------------------------------------------------------------------
    def sample(self, prompts, seeds, *, negative_prompt="", steps=20, guidance=5.0, scheduler="dpmsolver++",
               resolution=None, batch_size=8, progress_desc=None, denoising: Callable[[slice], Denoising] | None = None,
               on_batch: Callable[[slice, torch.Tensor], None] | None = None) -> torch.Tensor:
        """See :func:`sample`. ``denoising(batch_slice)`` supplies img2img/inpainting inputs per batch;
        ``on_batch(batch_slice, images)`` is called as each batch is decoded (to save it at once)."""
        from medti.logs import progress

        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if not prompts:
            raise ConfigError("no prompts: the number of images to draw is zero")
        if len(seeds) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per image")
        if steps < 1 or batch_size < 1:
            raise ConfigError(f"steps ({steps}) and batch size ({batch_size}) must be at least 1")
        make_scheduler(scheduler, self.model.noise_scheduler.config)  # an unknown name fails before any work
        shape = self.latent_shape(resolution)
        cond = self.condition(prompts, negative_prompt)
        out = []
        batches = [slice(i, min(i + batch_size, len(prompts))) for i in range(0, len(prompts), batch_size)]
        bar = progress(total=len(batches) * steps, desc=progress_desc) if progress_desc else None
        try:
            for sl in batches:
                extra = denoising(sl) if denoising is not None else Denoising()
                latents = self.denoise(cond.table, cond.terms[sl], seeds[sl], shape, steps=steps, guidance=guidance,
                                       scheduler=scheduler, denoising=extra, on_step=bar.update if bar else None)
                images = self.decode(latents)
                if on_batch is not None:
                    on_batch(sl, images)
                out.append(images)
        finally:
            if bar is not None:
                bar.close()
        return torch.cat(out)

    @torch.inference_mode()
    def denoise(self, table: torch.Tensor, terms: list[list[tuple[int, float]]], seeds: list[int], shape,
                *, steps: int, guidance: float, scheduler: str, denoising: Denoising | None = None,
                on_step: Callable[[int], object] | None = None) -> torch.Tensor:
        """Run the reverse process for one batch; return its final scaled latents (float32)."""
        d = denoising or Denoising()
        b = len(seeds)
        sched = make_scheduler(scheduler, self.model.noise_scheduler.config)
        sched.set_timesteps(steps, device=self.device)
        timesteps = sched.timesteps
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        noise = torch.cat([torch.randn((1, *shape), generator=g) for g in generators]).to(self.device)

        if d.init_latents is not None and d.strength < 1.0:
            t_start = steps - min(max(int(steps * d.strength), 1), steps)
            timesteps = timesteps[t_start * sched.order:]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(t_start * sched.order)
            latents = sched.add_noise(d.init_latents.to(self.device), noise, timesteps[:1].repeat(b))
        else:
            latents = noise * sched.init_noise_sigma

        # Rows of the UNet batch: b unconditional rows, then one per (image, sub-prompt).
        term_image = [i for i, ts in enumerate(terms) for _ in ts]
        rows = torch.tensor(list(range(b)) + term_image, device=self.device)
        hidden = table[torch.tensor([0] * b + [r for ts in terms for r, _ in ts], device=self.device)]
        term_image_t = torch.tensor(term_image, device=self.device, dtype=torch.long)
        term_w = torch.tensor([guidance * w for ts in terms for _, w in ts], device=self.device).view(-1, 1, 1, 1)
        extra = d.extra_channels.to(self.device, torch.float32)[rows] if d.extra_channels is not None else None
        step_kw = {"generator": generators} if scheduler in STOCHASTIC else {}

        for i, t in enumerate(timesteps):
            x = sched.scale_model_input(latents, t)[rows]
            if extra is not None:
                x = torch.cat([x, extra], dim=1)
            with self._autocast():
                eps = self.unet(x.to(self.unet_dtype), t, encoder_hidden_states=hidden).sample.float()
            eps_u = eps[:b]
            guided = eps_u.index_add(0, term_image_t, term_w * (eps[b:] - eps_u[term_image_t])) if term_image else eps_u
            latents = sched.step(guided, t, latents, **step_kw).prev_sample
            if d.keep_mask is not None and d.init_latents is not None:
                latents = self._blend(sched, latents, d, noise, timesteps, i)
            if on_step is not None:
                on_step(1)
        return latents

    @staticmethod
    def _blend(sched, latents, d: Denoising, noise, timesteps, i):
        """Latent blending (inpainting with a standard UNet): outside the mask, put back the start image
        noised to the level of the next step (the start image itself after the last step)."""
        init = d.init_latents.to(latents.device)
        if i < len(timesteps) - 1:
            init = sched.add_noise(init, noise, timesteps[i + 1:i + 2].repeat(latents.shape[0]))
        mask = d.keep_mask.to(latents.device, latents.dtype)
        return mask * latents + (1 - mask) * init


def _module_device(module) -> torch.device:
    return next(module.parameters()).device


def _module_dtype(module) -> torch.dtype:
    return next(module.parameters()).dtype
