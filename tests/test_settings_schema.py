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


# -- params.yaml checks that must fail at validation (so `snakemake -n` fails at once), not when a stage runs ----
def _params(**changes) -> dict:
    """The default params.yaml with ``changes`` ({"section.key": value, ...}; None removes the key)."""
    import copy
    from pathlib import Path

    import yaml

    params = copy.deepcopy(yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text()))
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return params


def _error(params) -> str:
    from medti.config import validate

    with pytest.raises(ConfigError) as err:
        validate(params)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("setting,value", [("train_embedding.steps", 12.0), ("generate.n_per_class", 4.0),
                                           ("classifier.batch_size", 32.0), ("seed", 1234.0),
                                           ("phantoms.subjects_per_class", 40.0), ("classifier.seeds", [0, 1.0])])
def test_integer_settings_reject_floats(setting, value):
    """YAML's 12.0 is a float; jsonschema's "integer" accepts it, medti does not (a TypeError later)."""
    message = _error(_params(**{setting: value}))
    assert message.startswith(f"params.yaml: {setting}") and "is not of type 'integer'" in message, message


def test_integer_settings_reject_floats_from_every_entry_point():
    from medti.config import check_section

    with pytest.raises(ConfigError, match=r"--steps: 12.0 is not of type 'integer'"):
        check_section("train_embedding", {"steps": 12.0}, "medti train-embedding", {"steps": "--steps"})
    check_section("train_embedding", {"steps": 12, "lr": 1}, "medti train-embedding")  # an int is a number too


def test_a_modality_override_is_checked_against_its_section():
    from medti.config import validate

    def with_override(override):
        params = _params()
        params["modalities"]["chest_xray"]["overrides"] = override
        return params

    assert _error(with_override({"train_embedding": {"steps": 12.0}})) == (
        "params.yaml: modalities.chest_xray.overrides.train_embedding.steps: 12.0 is not of type 'integer'")
    assert "modalities.chest_xray.overrides.generate.scheduler: 'heun' is not one of" in _error(
        with_override({"generate": {"scheduler": "heun"}}))
    validate(with_override({"prepare": {"split": {"test": 0.3, "val": 0.2}}}))  # merged with the rest of the split


@pytest.mark.parametrize("split,message", [
    ({"train": 0.8, "val": 0.3, "test": 0.3}, "prepare.split: the fractions add up to 1.4, more than 1"),
    ({"train": 0.5, "val": 2, "test": 2}, "prepare.split: give fractions"),
    ({"train": 100.0, "val": 50.0, "test": 50.0}, "(train: 100.0 is neither)"),
])
def test_split_fractions_must_add_up_to_at_most_one_and_not_mix_with_counts(split, message):
    assert message in _error(_params(**{"prepare.split": split}))


def test_the_test_split_must_hold_min_test_per_class_subjects_where_that_is_known():
    # fractions of the phantom subjects: 40 x 0.1 = 4 test subjects per class, 5 needed
    message = _error(_params(**{"prepare.split": {"train": 0.5, "val": 0.4, "test": 0.1}}))
    assert message == ("params.yaml: prepare.split.test (0.1) of phantoms.subjects_per_class (40) gives 4 test "
                       "subjects per class of chest_xray, fewer than evaluate.min_test_per_class (5): evaluation "
                       "would fail after every classifier has trained; make the test split larger or lower that "
                       "setting")
    _ = _params(**{"prepare.split": {"train": 0.5, "val": 0.4, "test": 0.1}, "evaluate.min_test_per_class": 4})
    from medti.config import validate

    validate(_)  # 4 >= 4
    # subject counts: known directly, for any source
    message = _error(_params(**{"prepare.split": {"train": 20, "val": 10, "test": 3}}))
    assert "prepare.split.test is 3 subjects per class, fewer than evaluate.min_test_per_class (5)" in message
    # counts beyond the phantom subjects
    assert "asks for 45 subjects per class of chest_xray, but phantoms.subjects_per_class makes 40" in _error(
        _params(**{"prepare.split": {"train": 20, "val": 10, "test": 15}}))
    # a modality's own override of either setting is named
    params = _params()
    params["modalities"]["histopathology"]["overrides"] = {"evaluate": {"min_test_per_class": 11}}
    assert "histopathology, fewer than modalities.histopathology.overrides.evaluate.min_test_per_class (11)" in \
        _error(params)
    # fractions of a data set not read yet cannot be checked here: prepare checks them
    params = _params(**{"prepare.split": {"train": 0.5, "val": 0.4, "test": 0.1}, "phantoms.modalities": []})
    validate(params)


def test_split_counts_round_as_prepare_does():
    from medti.config import split_counts
    from medti.preprocess.splitting import _counts

    for n in range(3, 60):
        for split in ({"train": 0.5, "val": 0.25, "test": 0.25}, {"train": 0.6, "val": 0.0, "test": 0.4},
                      {"train": 0.7, "val": 0.15, "test": 0.15}, {"train": 0.33, "val": 0.33, "test": 0.33},
                      {"train": 0.5, "val": 0.1, "test": 0.1}):
            assert split_counts(n, split) == _counts(n, split, "fractions", "c", "m"), (n, split)


def test_the_default_params_pass():
    from medti.config import validate

    validate(_params())


@pytest.mark.parametrize("section,key,value,message", [
    ("train_embedding", "steps", 12.0, "params.yaml: train_embedding.steps: 12.0 is not of type 'integer'"),
    ("prepare", "split", {"train": 0.8, "val": 0.3, "test": 0.3}, "the fractions add up to 1.4, more than 1"),
    ("prepare", "split", {"train": 0.7, "val": 0.2, "test": 0.1}, "gives 4 test subjects per class of chest_xray"),
])
def test_snakemake_dry_run_fails_at_once(tmp_path, section, key, value, message):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(root / name, tmp_path / name)
    shutil.copytree(root / "workflow", tmp_path / "workflow")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stderr[-2000:]
