"""The one command-line convention and the one source of defaults, checked on every command.

Walks every ``medti`` sub-command's real argparse parser (no command is run) and the settings classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections import defaultdict

import pytest

from medti.cli import build_parser, main
from medti.config import load_params, schema_default, section_defaults

# Flags whose dest is not the flag's name, each for a stated reason.
DEST_EXCEPTIONS = {
    "--class": "class_name",      # `class` is a Python keyword
    "--from": "from_",            # `from` is a Python keyword
    "--init": "init_words",       # the phrase (classes.<key>.init); train_embedding.init is --init-method
    "--template": "templates",    # repeatable: one template per flag
}
FORBIDDEN = {"--output": "--out", "--class-name": "--class", "--class-names": "--classes"}
# Commands whose pipeline mode spans every modality: --params without --modality.
ALL_MODALITIES = {"report"}


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every leaf command: 'generate', 'model build', 'bench train', ..."""
    found = {}

    def walk(parser, name):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and name:
            found[name] = parser
        for action in subs:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}".strip())

    walk(build_parser(), "")
    return found


COMMANDS = commands()


def options(parser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings
            if flag.startswith("--") and not flag.startswith("--no-") and flag not in ("--help", "--version")}


def test_every_stage_has_a_command():
    for name in ("phantoms", "prepare", "train-embedding", "generate", "interpolate", "inpaint", "merge-shards",
                 "train-classifier", "evaluate", "report", "embedding info", "embedding convert", "model build",
                 "model info", "bench train", "bench generate", "bench ingest", "workflow check",
                 "workflow restore-mtimes"):
        assert name in COMMANDS, f"medti {name} is missing"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flag_names_follow_the_convention(name):
    for flag, action in options(COMMANDS[name]).items():
        assert flag not in FORBIDDEN, f"medti {name}: {flag} should be {FORBIDDEN[flag]}"
        expected = DEST_EXCEPTIONS.get(flag, flag[2:].replace("-", "_"))
        assert action.dest == expected, f"medti {name}: {flag} stores into '{action.dest}', not '{expected}'"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_pipeline_mode_is_params_with_modality(name):
    flags = options(COMMANDS[name])
    if name in ALL_MODALITIES:
        assert "--params" in flags and "--modality" not in flags
    else:
        assert ("--params" in flags) == ("--modality" in flags), \
            f"medti {name}: pipeline mode is --params with --modality, never one alone"


def test_a_setting_has_one_flag_everywhere():
    """The same dest is spelt with the same flag, and takes the same kind of value, in every command."""
    spelt, kinds = defaultdict(set), defaultdict(set)
    for _name, parser in COMMANDS.items():
        for flag, action in options(parser).items():
            spelt[action.dest].add(flag)
            boolean = isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction))
            kinds[flag].add("bool" if boolean else getattr(action.type, "__name__", "str"))
    assert {d: f for d, f in spelt.items() if len(f) > 1} == {}
    # a flag is a switch in every command or in none
    assert {f: k for f, k in kinds.items() if "bool" in k and len(k) > 1} == {}


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import sys\nfrom medti.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY:', *sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'diffusers', 'transformers', 'mlflow', 'pandas', 'matplotlib', 'pydicom', 'scipy'}))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY:")][-1]
    return set(line.split()[1:])


def test_help_loads_nothing_heavy():
    """`medti --help` and every `medti <command> --help` stay fast: no torch, diffusers, MLflow, pandas..."""
    heavy = _modules_after(["--help"])
    assert not heavy, f"medti --help imports {heavy}"
    for name in sorted(COMMANDS):
        heavy = _modules_after([*name.split(), "--help"])
        assert not heavy, f"medti {name} --help imports {heavy}"


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if "--modality" in options(COMMANDS[n])))
def test_half_a_pipeline_mode_is_one_clear_error(name, capsys, tmp_path):
    argv = [*name.split(), "--modality", "chest_xray"]
    if name in ("inpaint",):
        argv += ["--image", str(tmp_path / "x.png"), "--circle", "1,1,1", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"medti: error: medti {name}: --modality needs --params"), err


# -- one source of defaults ------------------------------------------------------------------------------------

def _settings_classes():
    from medti.generate.jobs import Runtime
    from medti.textual_inversion.settings import Augment, TrainSettings

    yield TrainSettings, "train_embedding", {"seed": "seed", "device": "base_model.device",
                                             "precision": "base_model.precision"}
    yield Augment, "train_embedding.augment", {}
    yield Runtime, "base_model", {"base_model": None}
    try:
        from medti.classifier import ClassifierSettings
        from medti.evaluate import EvaluateSettings
    except ImportError:  # pragma: no cover - the stage packages always have them
        return
    yield ClassifierSettings, "classifier", {}
    yield EvaluateSettings, "evaluate", {}


@pytest.mark.parametrize("cls,section,elsewhere", list(_settings_classes()),
                         ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None)
def test_settings_classes_take_the_schema_defaults(cls, section, elsewhere):
    defaults = section_defaults(section)
    checked = 0
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(value):
            continue
        if f.name in elsewhere:
            if elsewhere[f.name]:
                assert value == schema_default(elsewhere[f.name]), f"{cls.__name__}.{f.name}"
                checked += 1
            continue
        if f.name in defaults:
            want = defaults[f.name]
            got = list(value) if isinstance(value, tuple) else value
            assert got == want, f"{cls.__name__}.{f.name} defaults to {value!r}, the schema to {want!r}"
            checked += 1
    assert checked >= 2, f"{cls.__name__}: no field matched the schema section {section}"


def test_train_embedding_standalone_and_pipeline_settings_agree(tmp_path):
    """The same values through params.yaml or through flags give identical TrainSettings."""
    from medti.textual_inversion.cli import build_settings

    params = load_params("params.yaml")
    parser = build_parser()
    pipeline = parser.parse_args(["train-embedding", "--params", "params.yaml", "--modality", "chest_xray",
                                  "--class", "opacity"])
    from_params = build_settings(pipeline, params)
    te = params["train_embedding"]
    mod = params["modalities"]["chest_xray"]
    flags = ["train-embedding", "--images", str(tmp_path), "--token", from_params.token, "--out", "x.safetensors",
             "--init", params["classes"]["chest_xray-opacity"]["init"], "--seed", str(params["seed"])]
    for t in mod["templates"]:
        flags += ["--template", t]
    for key in ("num_vectors", "steps", "batch_size", "grad_accum", "lr", "lr_scheduler", "warmup_steps",
                "max_grad_norm", "weight_decay", "checkpoint_every", "validation_every", "validation_images",
                "validation_steps", "validation_guidance", "log_every", "compile_memory_budget"):
        flags += [f"--{key.replace('_', '-')}", str(0 if te[key] is None else te[key])]  # 0: clipping off
    flags += ["--init-method", te["init"]]
    standalone = build_settings(parser.parse_args(flags), None)
    assert standalone == from_params
