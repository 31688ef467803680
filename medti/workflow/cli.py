"""``medti workflow check``, ``restore-mtimes`` and ``record``: one action per sub-command of
``medti workflow`` (a new action adds its parser in :func:`add_parser` and a ``run_*`` function)."""

from __future__ import annotations

import argparse
import sys

from medti.cliutils import add_common
from medti.errors import MedtiError


def add_parser(sub) -> None:
    p = sub.add_parser("workflow", help="check that the Snakefile and dvc.yaml agree; fix times after dvc pull")
    wsub = p.add_subparsers(dest="workflow_command", metavar="<action>", required=True)
    c = add_common(wsub.add_parser("check", help="compare the Snakemake DAG with dvc.yaml (outputs and commands)"))
    c.add_argument("--root", default=".", help="project root (default: here)")
    c.set_defaults(func=run_check)
    r = add_common(wsub.add_parser(
        "restore-mtimes", help="after dvc pull/checkout: order file times so Snakemake sees pulled outputs as up to "
                               "date"))
    r.add_argument("--root", default=".", help="project root (default: here)")
    r.set_defaults(func=run_restore_mtimes)
    d = add_common(wsub.add_parser(
        "record", help="record outputs in dvc.lock as `dvc commit --force OUTPUT...` does, in one pass (Snakemake "
                       "runs it after a successful run)"))
    d.add_argument("--root", default=".", help="project root (default: here)")
    d.add_argument("outputs", nargs="+", metavar="OUTPUT", help="outputs of dvc.yaml stages, relative to the root")
    d.set_defaults(func=run_record)


def run_check(args: argparse.Namespace) -> int:
    from medti.workflow import check

    problems = check(args.root)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        raise MedtiError(f"the Snakefile and dvc.yaml disagree ({len(problems)} difference(s), listed above)")
    print("the Snakefile and dvc.yaml agree")
    return 0


def run_restore_mtimes(args: argparse.Namespace) -> int:
    from medti.workflow import restore_mtimes

    paths = restore_mtimes(args.root)
    print(f"{len(paths)} DVC output(s) matching dvc.lock re-timed in pipeline order")
    return 0


def run_record(args: argparse.Namespace) -> int:
    from medti.workflow import record_outputs

    stages = record_outputs(args.root, args.outputs)
    print(f"dvc.lock: recorded {len(stages)} stage(s)")
    return 0
