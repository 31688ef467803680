"""The command-line convention every ``medti`` command follows, in one place.

- Pipeline mode is ``--params P --modality M``: settings come from params.yaml (the modality's overrides
  merged in), checked by :func:`pipeline_mode`. Without both, a command runs standalone from its flags.
- The main output is ``--out``; one class is ``--class``, a list ``--classes``; a setting's flag is its
  params.yaml key with ``-`` for ``_`` (``--batch-size`` is ``batch_size``), the same in every command.
- A flag left out takes params.yaml's value in pipeline mode, else the schema's default
  (:func:`medti.config.schema_default`): the schema is the one source of defaults.
- ``--log FILE``, ``-v``/``-q`` on every command.

This module imports nothing heavy: ``medti --help`` and ``medti <command> --help`` load no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medti.errors import ConfigError


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--log``, ``-v``/``-q``."""
    parser.add_argument("--log", default=None, metavar="FILE", help="also write the log to FILE")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def add_pipeline(parser: argparse.ArgumentParser, modality: bool = True,
                 what: str = "the modality to run") -> argparse.ArgumentParser:
    """``--params`` and (with ``modality``) ``--modality``: the pipeline-mode pair."""
    group = parser.add_argument_group("pipeline mode (settings from params.yaml)")
    group.add_argument("--params", default=None, metavar="YAML", help="params.yaml to read settings from")
    if modality:
        group.add_argument("--modality", default=None, metavar="M", help=f"{what} (a key of params.yaml modalities)")
    return parser


def pipeline_mode(args: argparse.Namespace, command: str) -> tuple[dict, str] | None:
    """(validated params, modality) in pipeline mode, None standalone; one without the other is an error."""
    params_path, modality = getattr(args, "params", None), getattr(args, "modality", None)
    if params_path is None and modality is None:
        return None
    if params_path is None or modality is None:
        given, missing = ("--params", "--modality") if params_path else ("--modality", "--params")
        raise ConfigError(f"medti {command}: {given} needs {missing} (pipeline mode is --params P --modality M)")
    from medti.config import load_params
    from medti.config import modality as modality_of

    params = load_params(Path(params_path))
    modality_of(params, modality)
    return params, modality


def params_folder(params: dict, setting: str) -> Path:
    """The folder a params.yaml setting names (``"prepare.out"``), under the project root: pipeline mode's
    default for an input or output flag left out."""
    from medti.config import project_root, schema_default

    section, _, key = setting.rpartition(".")
    return project_root(params) / ((params.get(section) or {}).get(key) or schema_default(setting))


def load_params_arg(args: argparse.Namespace) -> dict | None:
    """The validated params of ``--params`` (commands whose pipeline mode spans all modalities), or None."""
    if not getattr(args, "params", None):
        return None
    from medti.config import load_params

    return load_params(Path(args.params))


def csv_list(value: str | None, cast=str) -> list | None:
    """``"a,b"`` -> ``["a", "b"]`` (empty items dropped); None stays None."""
    if value is None:
        return None
    return [cast(v.strip()) for v in value.split(",") if v.strip()]


def pick(cli_value, params_value, default=None):
    """A command-line value wins over params.yaml, which wins over the default."""
    if cli_value is not None:
        return cli_value
    if params_value is not None:
        return params_value
    return default
