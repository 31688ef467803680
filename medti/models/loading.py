"""Loading a base model: ``toy`` (pre-trained on phantoms, shipped with medti), ``tiny`` (random, built
offline), ``random:<arch>``, a local diffusers folder or a hub id.

Only the five components Textual Inversion and sampling need are loaded (no safety checker or feature
extractor). ``tiny`` is built once per machine into medti's cache (``$MEDTI_CACHE``, default
``~/.cache/medti``) under a file lock, so parallel jobs share one copy.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medti.errors import ModelError
from medti.hashing import json_digest

log = logging.getLogger(__name__)

TINY_VERSION = 1
MARKER = "medti_model.json"
RANDOM_WARNING = (
    "base model '{}' has random weights: the images it draws carry no medical meaning "
    "(use a real checkpoint such as stabilityai/stable-diffusion-2-base for real data)"
)


@dataclass
class BaseModel:
    """The frozen components of a Stable Diffusion checkpoint, plus what medti needs to know about it."""

    model_id: str
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: object
    path: Path | None = None
    random_weights: bool = False
    info: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def resolution(self) -> int:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * factor

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def embedding_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def text_encoder_hash(self) -> str:
        """A short hash of the text encoder's architecture: embeddings are only valid for matching ones."""
        return text_encoder_config_hash(self.text_encoder.config)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> BaseModel:
        for m in (self.text_encoder, self.vae, self.unet):
            if m is None:  # the VAE (or its encoder) may have been released after caching latents
                continue
            m.to(device=device)
            # diffusers warns on every .to(dtype=...), so only cast what is in another dtype
            if dtype is not None and any(p.dtype != dtype for p in m.parameters()):
                m.to(dtype=dtype)
        return self


def text_encoder_config_hash(config: object) -> str:
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "hidden_act", "projection_dim")
    d = {k: getattr(config, k, None) for k in keys}
    return json_digest(d, 16)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' was asked for, but no CUDA GPU is available")
    return dev


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype for frozen weights: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def cache_dir() -> Path:
    return Path(os.environ.get("MEDTI_CACHE", Path.home() / ".cache" / "medti"))


def build_model_folder(folder: str | os.PathLike, arch: str = "tiny", seed: int = 0, prediction_type: str = "epsilon",
                       device: str | torch.device | None = None) -> Path:
    """Build a random-weight SD pipeline of ``arch`` and save it as a diffusers folder (atomically);
    ``device``: where to build it (see ``build_components``)."""
    from diffusers import StableDiffusionPipeline

    from medti.atomic import atomic_dir
    from medti.models.architectures import build_components

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        tok, te, vae, unet, sched = build_components(arch, tmp / "tokenizer", seed=seed,
                                                     prediction_type=prediction_type, device=device)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp, safe_serialization=True)
        marker = {"medti_arch": arch, "seed": seed, "random_weights": True, "version": TINY_VERSION}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    return folder


def tiny_model_path(arch: str = "tiny", seed: int = 0) -> Path:
    """The cached folder of a random ``arch`` model, built on first use under a lock."""
    from filelock import FileLock

    folder = cache_dir() / "models" / f"{arch}-seed{seed}-v{TINY_VERSION}"
    if (folder / MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # the full-size architectures are built on a GPU where there is one (seconds rather than a minute; their
    # random weights then differ from a CPU build's, which matters to no one: they only serve benchmarks)
    device = "cuda" if arch in ("sd15", "sd2") and torch.cuda.is_available() else None
    with FileLock(str(folder) + ".lock", timeout=600):
        if not (folder / MARKER).is_file():
            log.info("building the random '%s' base model into %s (offline, once)", arch, folder)
            build_model_folder(folder, arch=arch, seed=seed, device=device)
    return folder


def _is_diffusers_folder(p: Path) -> bool:
    return p.is_dir() and (p / "model_index.json").is_file()


def resolve_model_spec(spec: str) -> tuple[str, Path | None]:
    """Map a base-model spec to (model_id, local folder or None for a hub id)."""
    if spec == "toy":
        from medti.models.toy import TOY_FOLDER

        if not (TOY_FOLDER / MARKER).is_file():
            raise ModelError(f"base model 'toy': {TOY_FOLDER} is missing (a broken install? rebuild it with "
                             "`python scripts/build-toy-model.py`)")
        return spec, TOY_FOLDER
    if spec == "tiny" or spec.startswith("random:"):
        arch = "tiny" if spec == "tiny" else spec.split(":", 1)[1]
        return spec, tiny_model_path(arch)
    p = Path(spec).expanduser()
    if p.exists():
        if not _is_diffusers_folder(p):
            raise ModelError(f"base model '{spec}': folder has no model_index.json (not a diffusers pipeline folder)")
        return spec, p.resolve()
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise ModelError(f"base model '{spec}': no such folder")
    return spec, None


def load_base_model(spec: str = "tiny", device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    local_files_only: bool = True, revision: str | None = None,
                    components: tuple[str, ...] = ("tokenizer", "text_encoder", "vae", "unet",
                                                   "scheduler")) -> BaseModel:
    """Load the frozen components of a Stable Diffusion 1.x/2.x checkpoint.

    ``spec`` is ``toy``, ``tiny``, ``random:<arch>`` (tiny, small, sd15, sd2), a local diffusers folder, or a hub id
    (read from the Hugging Face cache when ``local_files_only``). Weights are frozen and in eval mode, all
    in ``dtype`` (None: float32, whatever the files store; transformers would otherwise keep a stored fp16
    text encoder while diffusers widens the UNet and VAE).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    dtype = dtype or torch.float32
    model_id, folder = resolve_model_spec(spec)
    source = str(folder) if folder is not None else spec
    kw = dict(local_files_only=local_files_only if folder is None else True)
    if revision and folder is None:
        kw["revision"] = revision
    loaded = {}
    try:
        if "tokenizer" in components:
            loaded["tokenizer"] = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
        if "text_encoder" in components:
            loaded["text_encoder"] = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **kw)
        if "vae" in components:
            loaded["vae"] = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kw)
        if "unet" in components:
            loaded["unet"] = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kw)
        if "scheduler" in components:
            loaded["scheduler"] = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    except (OSError, ValueError) as exc:
        if folder is None:
            how = ("it is not in the local Hugging Face cache and local_files_only is set; fetch it on a "
                   f"machine with network (`hf download {spec}`) or set base_model.local_files_only: false"
                   if local_files_only else "it could not be downloaded (no network, or no such model id)")
            raise ModelError(f"base model '{spec}': {how}") from None
        raise ModelError(f"base model '{spec}': cannot load from {folder}: {str(exc).splitlines()[0]}") from None

    info = {}
    if folder is not None and (folder / MARKER).is_file():
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    random_weights = bool(info.get("random_weights", False))
    _freeze(loaded, device)
    if random_weights:
        log.warning(RANDOM_WARNING.format(model_id))
    return BaseModel(
        model_id=model_id, tokenizer=loaded.get("tokenizer"), text_encoder=loaded.get("text_encoder"),
        vae=loaded.get("vae"), unet=loaded.get("unet"), noise_scheduler=loaded.get("scheduler"),
        path=folder, random_weights=random_weights, info=info,
    )


def _freeze(modules: dict, device) -> None:
    for name in ("text_encoder", "vae", "unet"):
        m = modules.get(name)
        if m is not None:
            m.requires_grad_(False)
            m.eval()
            m.to(device=torch.device(device))


def build_random_model(arch: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       seed: int = 0, prediction_type: str = "epsilon") -> BaseModel:
    """A random-weight ``arch`` model (tiny, small, sd15, sd2) built in memory from its configs, frozen like
    ``load_base_model``'s, without writing the (for SD 1.5/2.0, multi-GB) weights to the cache."""
    import tempfile

    from medti.models.architectures import build_components

    with tempfile.TemporaryDirectory(prefix="medti-tokenizer-") as tmp:
        tok, te, vae, unet, sched = build_components(arch, Path(tmp), seed=seed, prediction_type=prediction_type,
                                                     device=device)
    modules = {"text_encoder": te, "vae": vae, "unet": unet}
    if dtype is not None and dtype != torch.float32:
        for m in modules.values():
            m.to(dtype=dtype)
    _freeze(modules, device)
    return BaseModel(model_id=f"random:{arch}", tokenizer=tok, text_encoder=te, vae=vae, unet=unet,
                     noise_scheduler=sched, random_weights=True,
                     info={"medti_arch": arch, "seed": seed, "random_weights": True})
