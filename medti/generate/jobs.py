"""Generation jobs: the pipeline's per-modality synthetic set and the standalone form, with tracking, and
the loading that ``medti generate``, ``interpolate`` and ``inpaint`` share.

Pipeline: the classes of a modality from params.yaml, their embeddings ``<embeddings>/<class>.safetensors``
installed under the class tokens (``<modality-class>``), and the modality's prompt templates cycled over
each class's images. Standalone: a base model, any embedding files, and one prompt per class.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medti.config import check_section, schema_default, section_defaults
from medti.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from medti.generate.embedding_install import EmbeddingSource
    from medti.generate.prompts import Blend, WeightedPrompt
    from medti.generate.synthetic import SetResult
    from medti.models.loading import BaseModel

log = logging.getLogger(__name__)

SAMPLING_KEYS = ("steps", "guidance", "scheduler", "negative_prompt", "batch_size", "seed", "resolution")


@dataclass
class Runtime:
    """Where a job runs: the base-model spec, device and precision."""

    base_model: str = schema_default("base_model.id")
    device: str = schema_default("base_model.device")
    precision: str = schema_default("base_model.precision")
    local_files_only: bool = schema_default("base_model.local_files_only")
    revision: str | None = schema_default("base_model.revision")

    @classmethod
    def from_params(cls, params: dict | None, base_model: str | None = None, device: str | None = None,
                    precision: str | None = None) -> Runtime:
        cfg = {**section_defaults("base_model"), "id": cls.base_model, **((params or {}).get("base_model") or {})}
        return cls(base_model=base_model or cfg["id"], device=device or cfg["device"],
                   precision=precision or cfg["precision"], local_files_only=cfg["local_files_only"],
                   revision=cfg["revision"])

    def load(self) -> tuple[BaseModel, torch.device, torch.dtype]:
        """(BaseModel on its device in its compute dtype, device, dtype)."""
        from medti.models.loading import load_base_model, resolve_device, resolve_dtype

        device = resolve_device(self.device)
        dtype = resolve_dtype(self.precision, device)
        model = load_base_model(self.base_model, device=device, dtype=dtype, local_files_only=self.local_files_only,
                                revision=self.revision)
        model.to(device, dtype)
        return model, device, dtype


def settings(params: dict | None, modality: str | None, section: str = "generate", **cli) -> dict:
    """The settings of ``section``: command line over params.yaml (with the modality's overrides) over the
    schema's defaults. Sampling settings a section lacks come from ``generate``; ``seed`` falls back to
    the project's ``seed``. Counts and steps are checked here, before any model is loaded."""
    from medti.config import stage

    own = section_defaults(section)
    keys = set(SAMPLING_KEYS) | (set(own) - {"out"})
    cfg = {k: v for k, v in (section_defaults("generate") | own).items() if k in keys}
    if params is not None:
        for part in dict.fromkeys(["generate", section]):
            cfg.update({k: v for k, v in stage(params, part, modality).items() if k in keys})
        if cfg.get("seed") is None:
            cfg["seed"] = params.get("seed", 0)
    cfg.update({k: v for k, v in cli.items() if v is not None})
    if cfg.get("seed") is None:
        cfg["seed"] = 0
    flags = {key: "--" + key.replace("_", "-") for key in cfg} | {"n_per_class": "--n"}
    for part in dict.fromkeys(["generate", section]):
        check_section(part, {k: v for k, v in cfg.items() if part == section or k in SAMPLING_KEYS},
                      f"medti {section.replace('_', '-')}", flags)
    return cfg


def uses_token(prompt: str, token: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(token) + r"(?![\w])", prompt) is not None


@dataclass
class Loaded:
    """A base model on its device with embeddings installed; in pipeline mode also the classes' prompts."""

    model: object
    device: object
    dtype: object
    installed: list = field(default_factory=list)                   # InstalledEmbedding
    class_prompts: dict[str, list[str]] = field(default_factory=dict)  # class -> templates with its token

    def checksums(self, prompt: str | WeightedPrompt | Blend) -> str:
        """The checksums of the installed embeddings ``prompt`` (text, WeightedPrompt or Blend) names."""
        text = str(prompt)
        return ";".join(e.checksum for e in self.installed if uses_token(text, e.token))

    def resolve(self, prompt_or_class: str) -> str:
        """A class name (pipeline mode) -> its first prompt; anything else is a prompt already."""
        prompts = self.class_prompts.get(prompt_or_class)
        return prompts[0] if prompts else prompt_or_class


def modality_embeddings(params: dict, modality: str, embeddings_dir: str | os.PathLike,
                        variant: str | None = None) -> dict[str, Path]:
    """Per class of ``modality``, its embedding file in ``embeddings_dir``: ``<class>/<variant>.safetensors``
    (the pipeline's layout; no ``variant``: the main one), or, with no variant named and none of those there,
    a flat folder's ``<class>.safetensors`` (embeddings a colleague shared)."""
    from medti.config import embedding_file, main_variant
    from medti.config import modality as modality_cfg

    classes = modality_cfg(params, modality)["classes"]
    paths = {c: embedding_file(embeddings_dir, c, variant or main_variant(params)) for c in classes}
    if variant is None and not any(p.exists() for p in paths.values()):
        flat = {c: embedding_file(embeddings_dir, c) for c in classes}
        if any(p.exists() for p in flat.values()):
            return flat
    return paths


def load_modality(params: dict, modality: str, embeddings_dir: str | os.PathLike,
                  runtime: Runtime | None = None, variant: str | None = None) -> Loaded:
    """The base model with every class embedding of ``modality`` (:func:`modality_embeddings`) installed."""
    from medti.config import class_token
    from medti.config import modality as modality_cfg
    from medti.generate.embedding_install import install_embeddings

    mod = modality_cfg(params, modality)
    templates = mod.get("templates") or ["{}"]
    runtime = runtime or Runtime.from_params(params)
    model, device, dtype = runtime.load()
    tokens = [class_token(modality, c) for c in mod["classes"]]
    files = modality_embeddings(params, modality, embeddings_dir, variant)
    installed = install_embeddings(model, [(t, files[c]) for t, c in zip(tokens, mod["classes"])])
    prompts = {c: [t.format(tok) for t in templates] for c, tok in zip(mod["classes"], tokens)}
    return Loaded(model, device, dtype, installed, prompts)


def load_standalone(embeddings: Iterable[EmbeddingSource] = (), runtime: Runtime | None = None,
                    params: dict | None = None) -> Loaded:
    """The base model with any embedding files (``PATH`` or ``TOKEN=PATH``) installed."""
    from medti.generate.embedding_install import install_embeddings

    runtime = runtime or Runtime.from_params(params)
    model, device, dtype = runtime.load()
    return Loaded(model, device, dtype, install_embeddings(model, list(embeddings)))


def generate_modality(params: dict, modality: str, embeddings_dir: str | os.PathLike, out: str | os.PathLike, *,
                      shard: str | None = None, runtime: Runtime | None = None, variant: str | None = None,
                      **cli) -> SetResult:
    """The pipeline job: ``n_per_class`` images of every class of ``modality`` with one embedding variant's
    embeddings (None: the main one)."""
    from medti.config import main_variant, stage
    from medti.generate.synthetic import ClassSpec, parse_shard

    cfg = settings(params, modality, **cli)
    shard_kn = parse_shard(shard)
    loaded = load_modality(params, modality, embeddings_dir, runtime, variant)
    drawn = contrast_prompts(loaded.class_prompts, float(cfg.get("contrast") or 0))
    classes = [ClassSpec(c, i, drawn[c], loaded.checksums(prompts[0]))
               for i, (c, prompts) in enumerate(loaded.class_prompts.items())]
    spec = _set_spec(loaded, modality, classes, cfg, shard_kn,
                     channels=stage(params, "prepare", modality).get("channels", "rgb"))
    spec.variant = variant or main_variant(params)
    return _run(params, loaded, spec, out, cfg, inputs={"embeddings": Path(embeddings_dir)})


def contrast_prompts(class_prompts: dict[str, list[str]], contrast: float) -> dict[str, list[str]]:
    """Each class's prompts drawn away from the modality's other classes: composable diffusion's negation (Liu et
    al. 2022, "NOT"), in A1111's syntax. The class's prompt weighs ``1 + contrast``, every other class's in the same
    template ``-contrast / (K - 1)``, so the guidance is the plain one plus ``contrast`` times the difference between
    the class and the others: what tells the classes apart is drawn more strongly, what they share (the modality)
    stays. Without a second class, or at 0 (the paper), the plain prompts."""
    if contrast <= 0 or len(class_prompts) < 2:
        return {c: list(p) for c, p in class_prompts.items()}
    others = len(class_prompts) - 1
    out = {}
    for c, prompts in class_prompts.items():
        out[c] = [" AND ".join([f"{prompt}:{1 + contrast:g}"]
                               + [f"{class_prompts[o][j % len(class_prompts[o])]}:{-contrast / others:g}"
                                  for o in class_prompts if o != c])
                  for j, prompt in enumerate(prompts)]
    return out


def generate_standalone(out: str | os.PathLike, prompts: list[str], n: int | None, *,
                        embeddings: Iterable[EmbeddingSource] = (), class_names: Sequence[str] | None = None,
                        modality: str = "custom", shard: str | None = None, params: dict | None = None,
                        runtime: Runtime | None = None, **cli) -> SetResult:
    """``n`` images per prompt (one class per prompt) with any embeddings installed."""
    from medti.generate.synthetic import ClassSpec, parse_shard

    if not prompts:
        raise ConfigError("no --prompt given")
    class_names = list(class_names or [f"prompt{i}" for i in range(len(prompts))])
    if len(class_names) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts but {len(class_names)} class names: "
                          "give one --class-name per --prompt")
    if cli.get("contrast"):
        raise ConfigError("--contrast is for pipeline mode (the classes of a modality); standalone, weigh the "
                          "other class in the prompt: 'A:1.5 AND B:-0.5'")
    cfg = settings(params, None, n_per_class=n, **cli)
    cfg.pop("contrast", None)   # a project's contrast needs its classes: pipeline mode only
    shard_kn = parse_shard(shard)
    classes = [ClassSpec(name, i, [prompt]) for i, (name, prompt) in enumerate(zip(class_names, prompts))]
    loaded = load_standalone(embeddings, runtime, params)
    for c in classes:
        c.embedding_checksum = loaded.checksums(c.prompts[0])
    spec = _set_spec(loaded, modality, classes, cfg, shard_kn)
    return _run(params, loaded, spec, out, cfg)


def _set_spec(loaded: Loaded, modality: str, classes, cfg: dict, shard: tuple[int, int], channels: str = "rgb"):
    from medti.generate.schedulers import describe_sampler
    from medti.generate.synthetic import SetSpec

    sampler = describe_sampler(cfg["scheduler"], loaded.model.noise_scheduler.config, int(cfg["steps"]))
    return SetSpec(modality=modality, classes=classes, n_per_class=int(cfg["n_per_class"]),
                   base_model=loaded.model.model_id, text_encoder_hash=loaded.model.text_encoder_hash(),
                   seed=int(cfg["seed"]), steps=int(cfg["steps"]), guidance=float(cfg["guidance"]),
                   scheduler=cfg["scheduler"], negative_prompt=cfg["negative_prompt"], resolution=cfg["resolution"],
                   channels=channels, shard=shard, sampler=sampler)


def _run(params, loaded: Loaded, spec, out, cfg, inputs=None):
    from medti.generate.synthetic import GRID, generate_set
    from medti.tracking import track

    model = loaded.model
    k, n = spec.shard
    log.info("generating %d images per class for %s (%s) with %s: %d steps, guidance %g, %s, batch %d, on %s (%s)%s",
             spec.n_per_class, ", ".join(c.name for c in spec.classes), spec.modality, model.model_id, spec.steps,
             spec.guidance, spec.scheduler, cfg["batch_size"], loaded.device, str(loaded.dtype).replace("torch.", ""),
             f", shard {k}/{n}" if n > 1 else "")
    run_name = f"generate-{spec.modality}" + (f"-shard{k}of{n}" if n > 1 else "")
    with track(params, "generate", run_name=run_name, inputs=inputs,
               tags={"modality": spec.modality, "base_model": model.model_id, "shard": f"{k}/{n}"}) as t:
        t.log_params(dict(cfg) | {"classes": ",".join(c.name for c in spec.classes),
                                  "fingerprint": spec.fingerprint()})
        result = generate_set(model, spec, out, batch_size=int(cfg["batch_size"]), device=loaded.device,
                              dtype=loaded.dtype)
        t.log_metrics({k_: v for k_, v in result.stats.items() if isinstance(v, (int, float))})
        if n == 1:
            t.log_artifact(Path(out) / GRID)
    log.info("%d images (%d new, %d already there) in %s; %.1f s%s", result.generated + result.skipped,
             result.generated, result.skipped, out, result.seconds,
             f" ({result.stats['images_per_s']:.2f} images/s)" if result.stats.get("images_per_s") else "")
    return result
