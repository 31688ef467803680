"""Make Snakemake trust files that DVC brought: ``dvc pull``/``dvc checkout`` give files new modification
times, which Snakemake would read as "inputs changed, rerun"; :func:`restore_mtimes` (``medti workflow
restore-mtimes``) re-orders the times of DVC outputs whose content DVC confirms (it matches dvc.lock), so
that Snakemake sees them up to date too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

import networkx as nx
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo


def restore_mtimes(root: str | os.PathLike = ".") -> list[str]:
    """Give DVC-tracked files that match dvc.lock modification times in pipeline order; return them.

    A stage's outputs that exist are re-timed when each has the content dvc.lock records and none of its
    dependencies that exist (files or parameters) differs from the lock. Missing files are fine: raw data a
    colleague did not pull (Snakemake does not rerun a job for an absent input) and uncached outputs such as
    report folders, which no remote holds. Upstream files
    get earlier times than downstream ones, so Snakemake's time-stamp comparison agrees with DVC's content
    hashes. Anything changed since the lock keeps its own, newer time and is rerun as it should be.
    """
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
                produced_here = _overlaps(str(dep.def_path), produced)
                if not isinstance(dep, ParamsDependency) and path.exists() and not produced_here:
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
