"""``medti workflow``: keep the two DAG descriptions in step, and make Snakemake trust pulled DVC files.

The Snakefile and dvc.yaml describe the same jobs (same commands, same outputs): ``medti workflow check``
compares them job by job. Files that ``dvc pull``/``dvc checkout`` bring get new modification times, which
Snakemake would read as "inputs changed, rerun"; ``medti workflow restore-mtimes`` re-orders the times of
DVC outputs whose content DVC confirms (it matches dvc.lock) so that Snakemake sees them up to date too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medti.errors import MedtiError


@dataclass(frozen=True)
class Job:
    name: str
    outputs: frozenset[str]
    command: str


def _normalise(cmd: str) -> str:
    return re.sub(r"\s+", " ", cmd).strip()


def snakemake_jobs(root: str | os.PathLike = ".", snakemake: str | None = None) -> list[Job]:
    """Every job of the Snakemake DAG (forced, dry run), with its outputs and shell command."""
    exe = snakemake or str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([exe, "--dry-run", "--forceall", "--printshellcmds", "--cores", "1"],
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MedtiError(f"snakemake --dry-run failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
    jobs, rule, outputs = [], None, None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line.strip())
        if m:
            rule, outputs = m.group(1), frozenset()
        elif rule and line.strip().startswith("output:"):
            outputs = frozenset(p.strip() for p in line.split(":", 1)[1].split(","))
        elif rule and line.startswith("Shell command:"):
            command = _normalise(line.split(":", 1)[1])
            if command != "None":  # target rules such as `all` run nothing
                jobs.append(Job(rule, outputs, command))
            rule = None
    return jobs


def dvc_jobs(root: str | os.PathLike = ".") -> list[Job]:
    """Every stage of dvc.yaml (foreach/matrix expanded), with its outputs and command."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [Job(s.addressing, frozenset(str(o.def_path) for o in s.outs), _normalise(s.cmd))
                for s in repo.index.stages if s.cmd]


def compare(snake: list[Job], dvc: list[Job]) -> list[str]:
    """Differences between the two DAGs (empty when they agree), one line each."""
    problems = []
    by_outputs = {j.outputs: j for j in dvc}
    snake_outputs = set()
    for job in snake:
        snake_outputs.add(job.outputs)
        other = by_outputs.get(job.outputs)
        if other is None:
            problems.append(f"Snakemake rule {job.name} writes {sorted(job.outputs)}: no dvc.yaml stage has these outputs")
        elif other.command != job.command:
            problems.append(f"{job.name} / {other.name}: commands differ:\n  snakemake: {job.command}\n  dvc:       {other.command}")
    for job in dvc:
        if job.outputs not in snake_outputs:
            problems.append(f"dvc.yaml stage {job.name} writes {sorted(job.outputs)}: no Snakemake job has these outputs")
    return problems


def check(root: str | os.PathLike = ".") -> list[str]:
    return compare(snakemake_jobs(root), dvc_jobs(root))


def restore_mtimes(root: str | os.PathLike = ".") -> list[str]:
    """Give DVC-tracked files that match dvc.lock modification times in pipeline order; return them.

    A stage's outputs that exist are re-timed when each has the content dvc.lock records and none of its
    dependencies that exist (files or parameters) differs from the lock. Missing files are fine: raw data a
    colleague did not pull (Snakemake does not rerun a job for an absent input) and uncached outputs such as
    report folders, which no remote holds. Upstream files
    get earlier times than downstream ones, so Snakemake's time-stamp comparison agrees with DVC's content
    hashes. Anything changed since the lock keeps its own, newer time and is rerun as it should be.
    """
    import networkx as nx
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    touched: list[str] = []
    base = time.time() - 3600.0
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = list(reversed(list(nx.topological_sort(graph))))
        produced = {str(o.def_path) for s in order for o in s.outs}
        for rank, stage in enumerate(order, start=1):
            outs = [o for o in stage.outs if Path(root, o.def_path).exists()]  # uncached reports are not pulled
            if not outs or any(o.status() for o in outs):
                continue
            if any(_dependency_changed(d, root) for d in stage.deps):
                continue
            for dep in stage.deps:  # data the pipeline does not produce (e.g. `dvc add`ed raw data) goes first
                path = Path(root, str(dep.def_path))
                if not isinstance(dep, ParamsDependency) and path.exists() and not _overlaps(str(dep.def_path), produced):
                    _touch_tree(path, base)
            for out in outs:
                _touch_tree(Path(root, out.def_path), base + rank)
                touched.append(str(out.def_path))
    return touched


def _overlaps(path: str, produced: set[str]) -> bool:
    """Whether ``path`` is a pipeline output, lies inside one, or holds one (a folder of embeddings, say)."""
    p = PurePosixPath(path)
    return any(p == q or q in p.parents or p in q.parents for q in map(PurePosixPath, produced))


def _dependency_changed(dep, root) -> bool:
    from dvc.dependency.param import ParamsDependency

    if not isinstance(dep, ParamsDependency) and not Path(root, str(dep.def_path)).exists():
        return False
    return bool(dep.status())


def _touch_tree(path: Path, stamp: float) -> None:
    if path.is_dir():
        for dirpath, _, files in os.walk(path):
            for name in files:
                os.utime(Path(dirpath) / name, (stamp, stamp))
            os.utime(dirpath, (stamp, stamp))
    os.utime(path, (stamp, stamp))


def add_parser(sub) -> None:
    from medti.cliutils import add_common

    p = sub.add_parser("workflow", help="check that the Snakefile and dvc.yaml agree; fix times after dvc pull")
    wsub = p.add_subparsers(dest="workflow_command", metavar="<action>", required=True)
    c = add_common(wsub.add_parser("check", help="compare the Snakemake DAG with dvc.yaml (outputs and commands)"),
                   params=False)
    c.add_argument("--root", default=".", help="project root (default: here)")
    c.set_defaults(func=_check)
    r = add_common(wsub.add_parser("restore-mtimes",
                                   help="after dvc pull/checkout: order file times so Snakemake sees pulled outputs as up to date"),
                   params=False)
    r.add_argument("--root", default=".")
    r.set_defaults(func=_restore)


def _check(args) -> int:
    problems = check(args.root)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        raise MedtiError(f"the Snakefile and dvc.yaml disagree ({len(problems)} difference(s), listed above)")
    print("the Snakefile and dvc.yaml agree")
    return 0


def _restore(args) -> int:
    paths = restore_mtimes(args.root)
    print(f"{len(paths)} DVC output(s) matching dvc.lock re-timed in pipeline order")
    return 0
