"""The settings of one Textual Inversion run, from params.yaml (pipeline) or the command line (standalone).

``TrainSettings.result_key()`` lists every setting that changes the trained vectors: a checkpoint is only
resumed by a run whose key (plus the base model and the images) matches, so a changed command starts over
instead of silently continuing someone else's run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from medti.errors import ConfigError

INIT_METHODS = ("word", "zeros", "random")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MAX_LR = 3.4e38  # float32: larger values overflow in the optimiser
DEFAULT_TEMPLATES = ("a photo of {}",)


@dataclass
class Augment:
    """Image augmentation. Views are drawn once, before the VAE (each view is encoded once and cached)."""

    hflip: bool = False        # off by default: anatomy is lateralised
    vflip: bool = False
    rotate_degrees: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    views: int = 8             # augmented views per image (only when some augmentation is on)

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
    init: str = "word"                  # word | zeros | random
    init_words: str | None = None       # the word or phrase for init=word
    num_vectors: int = 8
    resolution: int | None = None       # None: the base model's own resolution
    steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5.0e-3
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 20
    max_grad_norm: float | None = 1.0
    min_snr_gamma: float | None = None
    weight_decay: float = 0.0
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    checkpoint_every: int = 50          # 0: no checkpoints
    validation_every: int = 0           # 0: only the final grid
    validation_images: int = 4          # 0: no grids
    validation_steps: int = 20
    validation_guidance: float = 5.0
    log_every: int = 10                 # losses are fetched from the device every this many steps
    gradient_checkpointing: bool = False
    compile: bool = False
    compile_memory_budget: float = 1.0  # with compile: fraction of activations kept, the rest recomputed
    device: str = "auto"
    precision: str = "auto"

    def validate(self, source: str = "train-embedding") -> "TrainSettings":
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
        if self.init not in INIT_METHODS:
            bad("init", f"'{self.init}' is not one of {', '.join(INIT_METHODS)}")
        if self.init == "word" and not (self.init_words or "").strip():
            bad("init", "init=word needs a word or phrase to start from (--init WORD)")
        for name in ("num_vectors", "steps", "batch_size", "grad_accum", "validation_steps", "log_every"):
            if int(getattr(self, name)) < 1:
                bad(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "validation_every", "validation_images"):
            if int(getattr(self, name)) < 0:
                bad(name, f"must be 0 or more, got {getattr(self, name)}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            bad("resolution", f"must be a multiple of 8 and at least 8, got {self.resolution}")
        if not 0 < self.lr <= MAX_LR:  # also NaN and inf
            bad("lr", f"must be positive and at most {MAX_LR:g} (float32; TI typically uses 5e-3), got {self.lr}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            bad("lr_scheduler", f"'{self.lr_scheduler}' is not one of {', '.join(LR_SCHEDULERS)}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            bad("max_grad_norm", "must be positive (or null for no clipping)")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            bad("min_snr_gamma", "must be positive (or null for no weighting)")
        if self.weight_decay < 0:
            bad("weight_decay", "must be 0 or more")
        a = self.augment
        if not (0 < a.scale[0] <= a.scale[1]):
            bad("augment.scale", f"must be [low, high] with 0 < low <= high, got {list(a.scale)}")
        if not 0 <= a.rotate_degrees <= 180:
            bad("augment.rotate_degrees", "must be between 0 and 180")
        if not 0 <= a.brightness <= 1:
            bad("augment.brightness", "must be between 0 and 1")
        if a.views < 1:
            bad("augment.views", "must be at least 1")
        if not 0 < self.compile_memory_budget <= 1:
            bad("compile_memory_budget", f"must be in (0, 1], got {self.compile_memory_budget}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            bad("precision", f"'{self.precision}' is not one of auto, fp32, fp16, bf16")
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
    def from_section(cls, section: dict, **values) -> "TrainSettings":
        """Settings from a validated ``train_embedding`` section; ``values`` (token, templates...) on top."""
        names = {f.name for f in dataclasses.fields(cls)} - {"augment", "token", "templates", "init_words", "seed",
                                                               "device", "precision"}
        unknown = sorted(set(section) - names - {"augment", "out", "reports"})
        if unknown:
            raise ConfigError(f"params.yaml: train_embedding: unknown setting(s) {', '.join(unknown)}")
        kw = {k: section[k] for k in names if k in section}
        aug = dict(section.get("augment") or {})
        kw["augment"] = Augment(**{**aug, "scale": tuple(aug.get("scale", (1.0, 1.0)))})
        kw.update(values)
        return cls(**kw)

    @classmethod
    def from_params(cls, params: dict, modality: str, class_name: str) -> "TrainSettings":
        """Settings for one modality and class from validated params."""
        from medti.config import class_token, modality as modality_of, stage

        mod = modality_of(params, modality)
        if class_name not in mod["classes"]:
            raise ConfigError(f"params.yaml: classes: modality '{modality}' has no class '{class_name}' "
                              f"(has: {', '.join(mod['classes'])})")
        return cls.from_section(
            stage(params, "train_embedding", modality),
            token=class_token(modality, class_name),
            templates=list(mod.get("templates") or DEFAULT_TEMPLATES),
            init_words=mod["init_words"].get(class_name) or class_name.replace("_", " "),
            seed=int(params.get("seed", 0)),
            device=params["base_model"]["device"], precision=params["base_model"]["precision"],
        ).validate(source="params.yaml train_embedding")
