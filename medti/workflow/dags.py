"""The two DAG descriptions, job by job: the Snakefile and dvc.yaml describe the same jobs (same commands,
same outputs), and :func:`check` compares them (``medti workflow check``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dvc.repo import Repo

from medti.errors import MedtiError


@dataclass(frozen=True)
class Job:
    """One job of either DAG: its rule or stage name, its outputs and its shell command (whitespace folded)."""

    name: str
    outputs: frozenset[str]
    command: str


def _normalise(cmd: str) -> str:
    return re.sub(r"\s+", " ", cmd).strip()


_STDERR_TO_LOG = re.compile(r"--log (\S+) 2>>? ?(\S+)$")


def _without_stderr_to_log(command: str) -> str:
    """``... --log L 2> L`` -> ``... --log L``: the redirection of a rule's whole stderr into its own log file,
    which Snakemake does and DVC (no log files) does not, is no part of the medti command the two must agree on."""
    m = _STDERR_TO_LOG.search(command)
    if m and m.group(1) == m.group(2):
        return command[: m.end(1)]
    return command


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
            command = _without_stderr_to_log(_normalise(line.split(":", 1)[1]))
            if command != "None":  # target rules such as `all` run nothing
                jobs.append(Job(rule, outputs, command))
            rule = None
    return jobs


def dvc_jobs(root: str | os.PathLike = ".") -> list[Job]:
    """Every stage of dvc.yaml (foreach/matrix expanded), with its outputs and command."""
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
            problems.append(f"Snakemake rule {job.name} writes {sorted(job.outputs)}: "
                            "no dvc.yaml stage has these outputs")
        elif other.command != job.command:
            problems.append(f"{job.name} / {other.name}: commands differ:\n  snakemake: {job.command}\n"
                            f"  dvc:       {other.command}")
    for job in dvc:
        if job.outputs not in snake_outputs:
            problems.append(f"dvc.yaml stage {job.name} writes {sorted(job.outputs)}: "
                            "no Snakemake job has these outputs")
    return problems


def check(root: str | os.PathLike = ".") -> list[str]:
    """Differences between the Snakemake DAG and dvc.yaml of the project in ``root`` (empty when they agree)."""
    return compare(snakemake_jobs(root), dvc_jobs(root))
