"""Options every stage command shares, and reading params.yaml for a command."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common(parser: argparse.ArgumentParser, params: bool = True) -> argparse.ArgumentParser:
    """``--params``, ``--log``, ``-v``/``-q``."""
    if params:
        parser.add_argument("--params", default=None, metavar="YAML",
                            help="params.yaml to read settings from (pipeline mode)")
    parser.add_argument("--log", default=None, metavar="FILE", help="also write the log to FILE")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def load_params_arg(args) -> dict | None:
    """The validated params of ``--params``, or None in standalone mode."""
    if not getattr(args, "params", None):
        return None
    from medti.config import load_params

    return load_params(Path(args.params))


def pick(cli_value, params_value, default=None):
    """A command-line value wins over params.yaml, which wins over the default."""
    if cli_value is not None:
        return cli_value
    if params_value is not None:
        return params_value
    return default
