"""The settings of one Textual Inversion run, from params.yaml (pipeline) or the command line (standalone).

``TrainSettings.result_key()`` lists every setting that changes the trained vectors: a checkpoint is only
resumed by a run whose key (plus the base model and the images) matches, so a changed command starts over
instead of silently continuing someone else's run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from medti.config import check_section, schema_default, schema_section
from medti.errors import ConfigError

INIT_METHODS = tuple(schema_section("train_embedding")["properties"]["init"]["enum"])
LR_SCHEDULERS = tuple(schema_section("train_embedding")["properties"]["lr_scheduler"]["enum"])
DEFAULT_TEMPLATES = ("a photo of {}",)


def _default(key: str):
    return schema_default(f"train_embedding.{key}")


@dataclass
class Augment:
    """Image augmentation. Views are drawn once, before the VAE (each view is encoded once and cached)."""

    hflip: bool = schema_default("train_embedding.augment.hflip")  # off by default: anatomy is lateralised
    vflip: bool = schema_default("train_embedding.augment.vflip")
    rotate_degrees: float = schema_default("train_embedding.augment.rotate_degrees")
    scale: tuple[float, float] = tuple(schema_default("train_embedding.augment.scale"))
    brightness: float = schema_default("train_embedding.augment.brightness")
    views: int = schema_default("train_embedding.augment.views")  # views per image when some augmentation is on

    @property
    def active(self) -> bool:
        return bool(self.hflip or self.vflip or self.rotate_degrees or tuple(self.scale) != (1.0, 1.0)
                    or self.brightness)

    @property
    def num_views(self) -> int:
        return self.views if self.active else 1


@dataclass
class TrainSettings:
    token: str
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    init: str = _default("init")                    # word | zeros | random
    init_words: str | None = None                   # the word or phrase for init=word (classes.<key>.init)
    num_vectors: int = _default("num_vectors")
    resolution: int | None = _default("resolution")  # None: the base model's own resolution
    steps: int = _default("steps")
    batch_size: int = _default("batch_size")
    grad_accum: int = _default("grad_accum")
    lr: float = _default("lr")
    lr_scheduler: str = _default("lr_scheduler")
    warmup_steps: int = _default("warmup_steps")
    max_grad_norm: float | None = _default("max_grad_norm")
    min_snr_gamma: float | None = _default("min_snr_gamma")
    weight_decay: float = _default("weight_decay")
    augment: Augment = field(default_factory=Augment)
    seed: int = schema_default("seed")
    checkpoint_every: int = _default("checkpoint_every")        # 0: no checkpoints
    validation_every: int = _default("validation_every")        # 0: only the final grid
    validation_images: int = _default("validation_images")      # 0: no grids
    validation_steps: int = _default("validation_steps")
    validation_guidance: float = _default("validation_guidance")
    log_every: int = _default("log_every")                      # steps between fetching losses from the device
    gradient_checkpointing: bool = _default("gradient_checkpointing")
    compile: bool = _default("compile")
    compile_memory_budget: float = _default("compile_memory_budget")  # with compile: fraction of activations kept
    device: str = schema_default("base_model.device")
    precision: str = schema_default("base_model.precision")

    def validate(self, source: str = "train-embedding", names: dict[str, str] | None = None) -> TrainSettings:
        """Raise ConfigError naming the first bad setting (the CLI's values bypass the params schema)."""
        def bad(name, why):
            raise ConfigError(f"{source}: {name}: {why}")

        if not self.token or any(c.isspace() for c in self.token):
            bad("token", f"'{self.token}' must be one word without spaces, e.g. '<my-concept>'")
        if not self.templates:
            bad("templates", "at least one prompt template is needed")
        for t in self.templates:
            if t.count("{}") != 1:
                bad("templates", f"'{t}' must contain '{{}}' exactly once (where the token goes)")
        if self.init == "word" and not (self.init_words or "").strip():
            bad("init", "init=word needs a word or phrase to start from (--init WORD)")
        values = self.to_dict()
        values["augment"]["scale"] = list(values["augment"]["scale"])
        if not math.isfinite(self.lr):
            bad("lr", f"must be a finite number, got {self.lr}")
        check_section("train_embedding", values, source, names)  # the schema's bounds, as params.yaml's
        check_section("base_model", {"device": self.device, "precision": self.precision}, source, names)
        a = self.augment
        if not a.scale[0] <= a.scale[1]:
            bad("augment.scale", f"must be [low, high] with low <= high, got {list(a.scale)}")
        return self

    def result_key(self) -> dict:
        """The settings that determine the trained vectors (not logging, checkpointing or validation)."""
        skip = {"checkpoint_every", "validation_every", "validation_images", "validation_steps",
                "validation_guidance", "log_every", "device",
                "compile_memory_budget"}  # memory only: a run that ran out of memory resumes with a smaller one
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in skip}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_section(cls, section: dict, **values) -> TrainSettings:
        """Settings from a validated ``train_embedding`` section; ``values`` (token, templates...) on top."""
        names = {f.name for f in dataclasses.fields(cls)} - {"augment", "token", "templates", "init_words", "seed",
                                                               "device", "precision"}
        unknown = sorted(set(section) - names - {"augment", "out", "reports", "variants"})
        if unknown:
            raise ConfigError(f"params.yaml: train_embedding: unknown setting(s) {', '.join(unknown)}")
        kw = {k: section[k] for k in names if k in section}
        aug = dict(section.get("augment") or {})
        kw["augment"] = Augment(**{**aug, "scale": tuple(aug.get("scale", (1.0, 1.0)))})
        kw.update(values)
        return cls(**kw)

    @classmethod
    def from_params(cls, params: dict, modality: str, class_name: str, variant: str | None = None) -> TrainSettings:
        """Settings for one modality and class from validated params; an embedding ``variant``'s steps and
        vectors over the section's."""
        from medti.config import class_token, stage, variants
        from medti.config import modality as modality_of

        mod = modality_of(params, modality)
        if class_name not in mod["classes"]:
            raise ConfigError(f"params.yaml: classes: modality '{modality}' has no class '{class_name}' "
                              f"(has: {', '.join(mod['classes'])})")
        section = stage(params, "train_embedding", modality)
        section.pop("variants", None)
        if variant is not None:
            spec = variants(params).get(variant)
            if spec is None:
                raise ConfigError(f"train_embedding.variants: no variant '{variant}' (have: "
                                  f"{', '.join(variants(params))})")
            section.update({k: spec[k] for k in ("steps", "num_vectors") if spec[k] is not None})
        return cls.from_section(
            section,
            token=class_token(modality, class_name),
            templates=list(mod.get("templates") or DEFAULT_TEMPLATES),
            init_words=mod["init_words"].get(class_name) or class_name.replace("_", " "),
            seed=int(params.get("seed", 0)),
            device=params["base_model"]["device"], precision=params["base_model"]["precision"],
        ).validate(source="params.yaml train_embedding")
