"""The ``medti`` command: one sub-command per stage.

Each stage package registers its sub-commands in its ``cli.py`` (``add_parser(subparsers)``); those modules hold
only argparse and import nothing heavy, so ``medti --help`` and ``medti <command> --help`` load no torch. The
convention every command follows is written down in :mod:`medti.cliutils`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from medti import __version__
from medti.errors import MedtiError

# Modules that register sub-commands, in the order the help lists them (the pipeline's order).
COMMAND_MODULES = (
    "medti.phantoms.cli",
    "medti.preprocess.cli",
    "medti.models.cli",
    "medti.textual_inversion.cli",
    "medti.embeddings.cli",
    "medti.generate.cli",
    "medti.classifier.cli",
    "medti.evaluate.cli",
    "medti.report.cli",
    "medti.reader_study.cli",
    "medti.bench.cli",
    "medti.workflow.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medti",
        description="Medical diffusion on a budget: Textual Inversion embeddings per modality and class, "
                    "synthetic training sets, and classifier experiments.",
    )
    parser.add_argument("--version", action="version", version=f"medti {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: Snakemake runs several medti jobs side by side, and
    # spinning threads of one job starve the others (a 1 s job took a minute on a loaded 2-core machine).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from medti.logs import setup_logging

    setup_logging(getattr(args, "log", None), verbose=getattr(args, "verbose", 0), quiet=getattr(args, "quiet", False))
    try:
        rc = args.func(args)
    except MedtiError as exc:
        logging.getLogger("medti").debug("error detail", exc_info=True)
        print(f"medti: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medti: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
