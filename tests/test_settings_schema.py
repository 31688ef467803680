"""ClassifierSettings and EvaluateSettings: every default is the params schema's, and their bounds are its too."""

from __future__ import annotations

import dataclasses

import pytest

from medti.config import schema_default, section_defaults
from medti.errors import ConfigError


def _fields(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_classifier_settings_defaults_are_the_schema_defaults():
    from medti.classifier import ClassifierSettings

    defaults = section_defaults("classifier")
    fields = _fields(ClassifierSettings)
    assert fields == {name: defaults[name] for name in fields}  # a KeyError: a field the schema does not know


def test_evaluate_settings_defaults_are_the_schema_defaults():
    from medti.evaluate.settings import SCHEMA_KEYS, EvaluateSettings

    fields = _fields(EvaluateSettings)
    assert set(fields) == set(SCHEMA_KEYS)
    for name, (section, key) in SCHEMA_KEYS.items():
        want = schema_default(f"{section}.{key}" if section else key)
        assert fields[name] == want, f"EvaluateSettings.{name} defaults to {fields[name]!r}, the schema to {want!r}"
    # ... and every evaluate setting of the schema (but the output folder) has its field
    leaves = set()
    for key, value in section_defaults("evaluate").items():
        leaves |= {(f"evaluate.{key}", sub) for sub in value} if isinstance(value, dict) else {("evaluate", key)}
    assert leaves - {("evaluate", "out")} == {v for v in SCHEMA_KEYS.values() if v[0]}


@pytest.mark.parametrize("kw,where", [({"steps": 0}, "classifier.steps"), ({"arch": "vgg"}, "classifier.arch"),
                                      ({"size": 16}, "classifier.size"), ({"checkpoint_every": -1}, "checkpoint_every"),
                                      ({"device": "gpu"}, "classifier.device")])
def test_classifier_bounds_are_the_schema_bounds(kw, where):
    from medti.classifier import ClassifierSettings

    with pytest.raises(ConfigError, match=where):
        ClassifierSettings(**kw).validate()


@pytest.mark.parametrize("kw,where", [({"bootstrap": 99}, "evaluate.bootstrap"),
                                      ({"confidence": 1.0}, "evaluate.confidence"),
                                      ({"inception": "on"}, "evaluate.quality.inception"),
                                      ({"kid_subsets": 0}, "evaluate.quality.kid_subsets"),
                                      ({"threshold": 1.5}, "evaluate.memorisation.threshold"),
                                      ({"memorisation_size": 4}, "evaluate.memorisation.size"),
                                      ({"top_k": 0}, "evaluate.memorisation.top_k")])
def test_evaluate_bounds_are_the_schema_bounds(kw, where):
    from medti.evaluate import EvaluateSettings

    with pytest.raises(ConfigError, match=where):
        EvaluateSettings(**kw).validate()


def test_evaluate_settings_read_the_nested_sections():
    from medti.evaluate import EvaluateSettings

    s = EvaluateSettings.from_section({"bootstrap": 200, "quality": {"max_images": 9, "inception": "off"},
                                       "memorisation": {"size": 16, "top_k": 2}}, seed=5, threshold=0.5)
    assert (s.bootstrap, s.max_images, s.inception, s.memorisation_size, s.top_k, s.seed, s.threshold) == \
        (200, 9, "off", 16, 2, 5, 0.5)
