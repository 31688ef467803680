"""How a classifier is trained: params.yaml ``classifier``, with the schema's defaults and bounds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medti.config import check_section, schema_default


@dataclass
class ClassifierSettings:
    """How a classifier is trained (params.yaml ``classifier``; the defaults and bounds are the schema's)."""

    arch: str = schema_default("classifier.arch")
    width: float = schema_default("classifier.width")            # channel width multiplier (1.0: the standard network)
    pretrained: bool | str = schema_default("classifier.pretrained")  # false | imagenet (true) | a weights file
    size: int = schema_default("classifier.size")                # images are resized to size x size
    steps: int = schema_default("classifier.steps")
    lr: float = schema_default("classifier.lr")
    batch_size: int = schema_default("classifier.batch_size")
    eval_every: int = schema_default("classifier.eval_every")
    checkpoint_every: int = schema_default("classifier.checkpoint_every")  # 0: no checkpoints
    augment: bool | str = schema_default("classifier.augment")  # none (false) | mild (true) | paper
    device: str = schema_default("classifier.device")

    @classmethod
    def from_section(cls, section: dict, **overrides) -> ClassifierSettings:
        """Settings from a params.yaml ``classifier`` section (other keys ignored), ``overrides`` (None: not
        given) on top; checked against the schema."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in section.items() if k in names}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw).validate()

    def validate(self, source: str = "classifier settings", names: dict[str, str] | None = None) -> ClassifierSettings:
        """ConfigError naming the first setting outside the schema's bounds (``names``: e.g. its flag)."""
        check_section("classifier", self.to_dict(), source, names)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
