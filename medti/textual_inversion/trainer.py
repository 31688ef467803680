"""The Textual Inversion training loop: only the placeholder's vectors learn; UNet, VAE, text encoder frozen.

Speed comes from doing as little as possible per step:
- latents come from the cache (``data.LatentCache``): the VAE encoder ran once and has left memory;
- the text encoder encodes each prompt template once per step (not once per image) and the batch picks
  rows; only the few new vectors carry optimiser state (never the vocabulary matrix);
- which image, view and template each step uses is drawn up front, and the noise and timesteps come from
  the run's own generator on the device, so nothing in a step waits for the host: no ``.item()``; losses
  stay on the device and are fetched every ``log_every`` steps (where a NaN is also caught);
- on a GPU the frozen weights are bf16 (fp16 with a gradient scaler where bf16 is missing) under autocast
  while the trainable vectors stay fp32; SDPA attention is diffusers' default; gradient checkpointing and
  ``torch.compile`` are options;
- the frozen UNet's convolutions and GEGLUs keep no activation that only a weight gradient would need
  (``models.lean_backward``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import torch

from medti.checkpoint import capture_rng, restore_rng
from medti.errors import ConfigError, TrainingError
from medti.textual_inversion.data import LatentCache, ViewMaker, encode_latents, release_vae_encoder
from medti.textual_inversion.settings import TrainSettings
from medti.textual_inversion.text import check_context_room, initial_vectors, prompt_ids

log = logging.getLogger(__name__)


class NonFiniteLoss(TrainingError):
    def __init__(self, step: int, value: float):
        super().__init__(f"the loss became {value} at step {step}")
        self.step = step


def check_resolution(model, resolution: int) -> None:
    """The latent must survive the UNet's down-sampling: resolution a multiple of VAE factor x 2^(levels-1)."""
    multiple = model.vae_scale_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)
    if resolution % multiple:
        raise ConfigError(f"resolution: {resolution} px does not suit base model '{model.model_id}': "
                          f"use a multiple of {multiple} (its native size is {model.resolution})")


class EmbeddingTrainer:
    """Trains one placeholder token's vectors on a set of images with a frozen base model.

    ``images`` are uint8 ``[N, 3, R, R]``. Construction adds the placeholder to ``model`` (trainable
    vectors), encodes the images once and releases the VAE encoder; ``train_step`` runs one optimiser step.
    """

    def __init__(self, model, settings: TrainSettings, images: torch.Tensor, device: torch.device,
                 dtype: torch.dtype, init_vectors: torch.Tensor | None = None):
        from medti.models.token_embedding import add_placeholder

        self.model, self.settings, self.device, self.dtype = model, settings, device, dtype
        s = settings
        self.resolution = int(images.shape[-1])
        check_resolution(model, self.resolution)
        check_context_room(model.tokenizer, s.templates, s.num_vectors)
        if init_vectors is None:
            init_vectors = initial_vectors(model.tokenizer, model.text_encoder, s.init, s.num_vectors,
                                           s.init_words, seed=s.seed)
        self.vectors = add_placeholder(model.tokenizer, model.text_encoder, s.token, init_vectors, trainable=True)
        self.prompt_ids = prompt_ids(model.tokenizer, model.text_encoder, s.templates, s.token).to(device)

        self.num_images = int(images.shape[0])
        views = ViewMaker(s.augment, self.num_images, s.seed)
        # the training batch bounds the encoding batch too, so encoding never peaks above training
        self.latents: LatentCache = encode_latents(model.vae, images, views, device, dtype, batch_size=s.batch_size)
        self.num_views = views.num_views
        release_vae_encoder(model, keep_decoder=s.validation_images > 0)

        self._draw_schedule()
        self._noise_tables()
        self._build_optimiser()
        self._set_up_modules()
        self.generator = torch.Generator(device=device).manual_seed(s.seed)
        self.step = 0
        self.metrics: list[dict] = []
        self.elapsed_s = 0.0
        self._losses = torch.zeros(s.log_every + 1, device=device)
        self._pending_lrs: list[float] = []
        self._pending_from = 0
        self._clock = time.perf_counter()

    # -- set-up --------------------------------------------------------------------------------------------
    def _draw_schedule(self) -> None:
        """Which view of which image, and which template, every sample of every step uses (drawn up front:
        each image once per epoch, in a seeded order; the view and template uniformly)."""
        s = self.settings
        g = torch.Generator().manual_seed(s.seed)
        total = s.steps * s.grad_accum * s.batch_size
        epochs = math.ceil(total / self.num_images)
        image = torch.cat([torch.randperm(self.num_images, generator=g) for _ in range(epochs)])[:total]
        view = torch.randint(self.num_views, (total,), generator=g)
        template = torch.randint(len(s.templates), (total,), generator=g)
        shape = (s.steps, s.grad_accum, s.batch_size)
        self.rows = (view * self.num_images + image).view(shape).to(self.device)
        self.templates_used = template.view(shape).to(self.device)

    def _noise_tables(self) -> None:
        sched = self.model.noise_scheduler
        ac = sched.alphas_cumprod.to(torch.float64)
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.sqrt_ac = ac.sqrt().float().to(self.device)
        self.sqrt_1m_ac = (1 - ac).sqrt().float().to(self.device)
        self.v_prediction = sched.config.prediction_type == "v_prediction"
        if sched.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"base model '{self.model.model_id}': prediction type "
                              f"'{sched.config.prediction_type}' is not supported (epsilon or v_prediction)")
        gamma = self.settings.min_snr_gamma
        if gamma:
            snr = ac / (1 - ac)
            weight = snr.clamp(max=gamma) / (snr + 1 if self.v_prediction else snr)
            self.snr_weight = weight.float().to(self.device)
        else:
            self.snr_weight = None

    def _build_optimiser(self) -> None:
        from diffusers.optimization import get_scheduler

        s = self.settings
        self.optimizer = torch.optim.AdamW([self.vectors], lr=s.lr, weight_decay=s.weight_decay,
                                           fused=self.device.type == "cuda")
        warmup = 0 if s.lr_scheduler == "constant" else s.warmup_steps
        self.lr_scheduler = get_scheduler(s.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=warmup,
                                          num_training_steps=s.steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self.dtype if self.device.type == "cuda" and self.dtype != torch.float32 else None

    def _set_up_modules(self) -> None:
        from medti.models.lean_backward import make_backward_lean

        s, m = self.settings, self.model
        self.text_encoder = m.text_encoder
        self.unet = m.unet
        make_backward_lean(m.unet)  # same gradients, about a quarter fewer activations kept for the backward pass
        if s.gradient_checkpointing:
            m.unet.enable_gradient_checkpointing()
            cfg = m.text_encoder.config
            dropout = getattr(cfg, "dropout", 0.0) or getattr(cfg, "attention_dropout", 0.0)  # 5.x has no `dropout`
            # transformers checkpoints only in train mode; CLIP's dropout is 0, so train mode changes nothing else
            if hasattr(m.text_encoder, "gradient_checkpointing_enable") and not dropout:
                m.text_encoder.gradient_checkpointing_enable()
                m.text_encoder.train()
        if s.compile:
            import torch._functorch.config as functorch_config

            # read when the joint graph is partitioned (the first step): activations beyond the budget are
            # recomputed in the backward pass, cheapest first (process-wide; one trainer per job)
            functorch_config.activation_memory_budget = float(s.compile_memory_budget)
            self.unet = torch.compile(m.unet)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    # -- training ------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)

    def _micro_step(self, step: int, micro: int) -> torch.Tensor:
        rows, templates = self.rows[step, micro], self.templates_used[step, micro]
        latents = self.latents.sample(rows, self.generator)
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device)
        t = torch.randint(0, self.num_train_timesteps, (latents.shape[0],), generator=self.generator,
                          device=self.device)
        a, b = self.sqrt_ac[t].view(-1, 1, 1, 1), self.sqrt_1m_ac[t].view(-1, 1, 1, 1)
        noisy = a * latents + b * noise
        target = a * noise - b * latents if self.v_prediction else noise
        with self._autocast():
            if self.prompt_ids.shape[0] <= latents.shape[0]:
                hidden = self.text_encoder(self.prompt_ids)[0][templates]  # each template once
            else:
                hidden = self.text_encoder(self.prompt_ids[templates])[0]
            pred = self.unet(noisy.to(self.dtype), t, hidden.to(self.dtype)).sample
        err = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        if self.snr_weight is not None:
            err = err * self.snr_weight[t]
        loss = err.mean()
        scaled = loss / self.settings.grad_accum
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def train_step(self) -> None:
        """One optimiser step (``grad_accum`` micro-batches); never waits for the device."""
        s = self.settings
        if self.step >= s.steps:
            raise TrainingError(f"training already finished ({s.steps} steps)")
        loss = sum(self._micro_step(self.step, k) for k in range(s.grad_accum)) / s.grad_accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if s.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([self.vectors], s.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._pending_lrs.append(float(self.lr_scheduler.get_last_lr()[0]))
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._losses[len(self._pending_lrs) - 1] = loss
        self.step += 1
        if len(self._pending_lrs) >= s.log_every:
            self.flush()

    def flush(self) -> list[dict]:
        """Fetch the losses since the last flush (one device sync) into ``metrics``; stop on a NaN."""
        n = len(self._pending_lrs)
        if n == 0:
            return []
        losses = self._losses[:n].tolist()
        now = time.perf_counter()
        dt = max(now - self._clock, 1e-9)
        self.elapsed_s += dt
        images_per_s = n * self.settings.batch_size * self.settings.grad_accum / dt
        rows = []
        for i, (loss, lr) in enumerate(zip(losses, self._pending_lrs)):
            step = self._pending_from + i + 1
            if not math.isfinite(loss):
                raise NonFiniteLoss(step, loss)
            rows.append({"step": step, "loss": loss, "lr": lr, "images_per_s": images_per_s,
                         "steps_per_s": n / dt, "elapsed_s": self.elapsed_s})
        self.metrics.extend(rows)
        self._pending_lrs = []
        self._pending_from = self.step
        self._clock = time.perf_counter()
        return rows

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this step left off (flushes the metrics first)."""
        self.flush()
        if not bool(torch.isfinite(self.vectors).all()):
            raise NonFiniteLoss(self.step, float("nan"))
        return {
            "step": self.step,
            "vectors": self.vectors.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng(self.generator),
            "metrics": list(self.metrics),
            "elapsed_s": self.elapsed_s,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.vectors.copy_(state["vectors"].to(self.vectors.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], self.generator)
        self.step = self._pending_from = int(state["step"])
        self.metrics = list(state["metrics"])
        self.elapsed_s = float(state["elapsed_s"])
        self._clock = time.perf_counter()

    # -- results -------------------------------------------------------------------------------------------
    def learned_vectors(self) -> torch.Tensor:
        vectors = self.vectors.detach().float().cpu().clone()
        if not bool(torch.isfinite(vectors).all()):
            raise NonFiniteLoss(self.step, float("nan"))
        return vectors

    @torch.no_grad()
    def samples(self, n: int, seed: int, steps: int, guidance: float) -> torch.Tensor:
        """``n`` images of the first template with the current vectors, from the loaded modules."""
        from medti.generate.sampling import sample

        prompt = self.settings.templates[0].format(self.settings.token)
        return sample(self.model, [prompt] * n, [seed + i for i in range(n)], steps=steps, guidance=guidance,
                      resolution=self.resolution, batch_size=n, device=self.device, dtype=self.dtype)
