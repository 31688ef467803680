"""Generation jobs: the pipeline's per-modality synthetic set and the standalone form, with tracking.

Pipeline: the classes of a modality from params.yaml, their embeddings ``<embeddings>/<class>.safetensors``
installed under the class tokens (``<modality-class>``), and the modality's prompt templates cycled over
each class's images. Standalone: a base model, any embedding files, and one prompt per class.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from medti.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULTS = {"n_per_class": 40, "steps": 20, "guidance": 5.0, "scheduler": "dpmsolver++", "negative_prompt": "",
            "batch_size": 16, "seed": None, "resolution": None}


@dataclass
class Runtime:
    """Where a job runs: the base-model spec, device and precision."""

    base_model: str = "tiny"
    device: str = "auto"
    precision: str = "auto"
    local_files_only: bool = True
    revision: str | None = None

    @classmethod
    def from_params(cls, params: dict | None, base_model=None, device=None, precision=None) -> "Runtime":
        cfg = (params or {}).get("base_model", {}) or {}
        return cls(base_model=base_model or cfg.get("id", "tiny"), device=device or cfg.get("device", "auto"),
                   precision=precision or cfg.get("precision", "auto"),
                   local_files_only=cfg.get("local_files_only", True), revision=cfg.get("revision"))

    def load(self):
        """(BaseModel on its device in its compute dtype, device, dtype)."""
        from medti.models.loading import load_base_model, resolve_device, resolve_dtype

        device = resolve_device(self.device)
        dtype = resolve_dtype(self.precision, device)
        model = load_base_model(self.base_model, device=device, dtype=dtype, local_files_only=self.local_files_only,
                                revision=self.revision)
        model.to(device, dtype)
        return model, device, dtype


def settings(params: dict | None, modality: str | None, **cli) -> dict:
    """The generation settings: command line over params.yaml ``generate`` (with the modality's overrides)
    over the defaults. ``seed`` falls back to the project's ``seed``."""
    from medti.config import stage

    cfg = dict(DEFAULTS)
    if params is not None:
        cfg.update({k: v for k, v in stage(params, "generate", modality).items() if k in DEFAULTS})
        if cfg["seed"] is None:
            cfg["seed"] = params.get("seed", 0)
    cfg.update({k: v for k, v in cli.items() if v is not None})
    if cfg["seed"] is None:
        cfg["seed"] = 0
    return cfg


def uses_token(prompt: str, token: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(token) + r"(?![\w])", prompt) is not None


def generate_modality(params: dict, modality: str, embeddings_dir, out, *, shard: str | None = None,
                      runtime: Runtime | None = None, **cli):
    """The pipeline job: ``n_per_class`` images of every class of ``modality``."""
    from medti.config import class_token, modality as modality_cfg, stage
    from medti.generate.loading import install_embeddings
    from medti.generate.synthetic import ClassSpec, SetSpec, parse_shard

    mod = modality_cfg(params, modality)
    cfg = settings(params, modality, **cli)
    templates = mod.get("templates") or ["{}"]
    runtime = runtime or Runtime.from_params(params)
    embeddings_dir = Path(embeddings_dir)
    model, device, dtype = runtime.load()
    tokens = [class_token(modality, c) for c in mod["classes"]]
    installed = install_embeddings(model, [(t, embeddings_dir / f"{c}.safetensors")
                                           for t, c in zip(tokens, mod["classes"])])
    classes = [ClassSpec(c, i, [t.format(tok) for t in templates], emb.checksum)
               for i, (c, tok, emb) in enumerate(zip(mod["classes"], tokens, installed))]
    spec = SetSpec(modality=modality, classes=classes, n_per_class=int(cfg["n_per_class"]),
                   base_model=model.model_id, text_encoder_hash=model.text_encoder_hash(), seed=int(cfg["seed"]),
                   steps=int(cfg["steps"]), guidance=float(cfg["guidance"]), scheduler=cfg["scheduler"],
                   negative_prompt=cfg["negative_prompt"], resolution=cfg["resolution"],
                   channels=stage(params, "prepare", modality).get("channels", "rgb"), shard=parse_shard(shard))
    return _run(params, model, spec, out, cfg, device, dtype, inputs={"embeddings": embeddings_dir})


def generate_standalone(out, prompts: list[str], n: int, *, embeddings=(), class_names=None,
                        modality: str = "custom", shard: str | None = None, params: dict | None = None,
                        runtime: Runtime | None = None, **cli):
    """``n`` images per prompt (one class per prompt) with any embeddings installed."""
    from medti.generate.loading import install_embeddings
    from medti.generate.synthetic import ClassSpec, SetSpec, parse_shard

    if not prompts:
        raise ConfigError("no --prompt given")
    class_names = list(class_names or [f"prompt{i}" for i in range(len(prompts))])
    if len(class_names) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts but {len(class_names)} class names: give one --class-name per --prompt")
    cfg = settings(params, None, n_per_class=n, **cli)
    runtime = runtime or Runtime.from_params(params)
    model, device, dtype = runtime.load()
    installed = install_embeddings(model, list(embeddings))
    classes = []
    for i, (name, prompt) in enumerate(zip(class_names, prompts)):
        used = ";".join(e.checksum for e in installed if uses_token(prompt, e.token))
        classes.append(ClassSpec(name, i, [prompt], used))
    spec = SetSpec(modality=modality, classes=classes, n_per_class=int(cfg["n_per_class"]), base_model=model.model_id,
                   text_encoder_hash=model.text_encoder_hash(), seed=int(cfg["seed"]), steps=int(cfg["steps"]),
                   guidance=float(cfg["guidance"]), scheduler=cfg["scheduler"], negative_prompt=cfg["negative_prompt"],
                   resolution=cfg["resolution"], shard=parse_shard(shard))
    return _run(params, model, spec, out, cfg, device, dtype)


def _run(params, model, spec, out, cfg, device, dtype, inputs=None):
    from medti.generate.synthetic import GRID, generate_set
    from medti.tracking import track

    k, n = spec.shard
    log.info("generating %d images per class for %s (%s) with %s: %d steps, guidance %g, %s, batch %d, on %s (%s)%s",
             spec.n_per_class, ", ".join(c.name for c in spec.classes), spec.modality, model.model_id, spec.steps,
             spec.guidance, spec.scheduler, cfg["batch_size"], device, str(dtype).replace("torch.", ""),
             f", shard {k}/{n}" if n > 1 else "")
    run_name = f"generate-{spec.modality}" + (f"-shard{k}of{n}" if n > 1 else "")
    with track(params, "generate", run_name=run_name, inputs=inputs,
               tags={"modality": spec.modality, "base_model": model.model_id, "shard": f"{k}/{n}"}) as t:
        t.log_params({k_: v for k_, v in cfg.items()} | {"classes": ",".join(c.name for c in spec.classes),
                                                          "fingerprint": spec.fingerprint()})
        result = generate_set(model, spec, out, batch_size=int(cfg["batch_size"]), device=device, dtype=dtype)
        t.log_metrics({k_: v for k_, v in result.stats.items() if isinstance(v, (int, float))})
        if n == 1:
            t.log_artifact(Path(out) / GRID)
    log.info("%d images (%d new, %d already there) in %s; %.1f s%s", result.generated + result.skipped,
             result.generated, result.skipped, out, result.seconds,
             f" ({result.stats['images_per_s']:.2f} images/s)" if result.stats.get("images_per_s") else "")
    return result
