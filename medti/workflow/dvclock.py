"""Record a Snakemake run's outputs in dvc.lock in one pass (``medti workflow record``).

``dvc commit --force OUT1 OUT2 ...`` does the same, but reads and rewrites dvc.lock once or twice per output:
ruamel's pure-Python YAML parser made that 1.8 s per output on two CPU cores (110 s for the default run's 61),
growing with the square of the number of jobs. Here dvc.yaml and dvc.lock are read once, each stage that
writes one of the outputs is saved and committed to the cache as ``dvc commit --force`` would, and dvc.lock is
written once. Uses DVC's stage API (``dvc>=3.50,<4``); where that API differs, it falls back to the command.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from medti.errors import MedtiError

log = logging.getLogger(__name__)


def _norm(path) -> str:
    return os.path.normpath(str(path))


def record_outputs(root: str | os.PathLike, outputs: Iterable[str | os.PathLike]) -> list[str]:
    """Commit the dvc.yaml stages that write ``outputs`` (paths relative to ``root``) and record them in
    dvc.lock; returns the stages' names. MedtiError when an output belongs to no stage or DVC fails."""
    wanted = {_norm(o) for o in outputs}
    if not wanted:
        return []
    try:
        from dvc.repo import Repo, lock_repo
    except ImportError:  # an older or newer DVC than the one this was written for
        return _with_command(root, sorted(wanted))
    # DVC resolves a stage's parameter files against the working directory: work from the root
    with contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo), _params_files_parsed_once():
        stages = [s for s in repo.index.stages if s.cmd and wanted & {_norm(o.def_path) for o in s.outs}]
        unknown = wanted - {_norm(o.def_path) for s in stages for o in s.outs}
        if unknown:
            raise MedtiError(f"{sorted(unknown)[0]}: no dvc.yaml stage writes this output")
        by_file: dict[str, list] = {}
        for stage in stages:
            by_file.setdefault(str(stage.dvcfile.path), []).append(stage)
        for group in by_file.values():
            for stage in group:
                stage.save()
                stage.commit()
            group[0].dvcfile.dump_stages(group, update_pipeline=False)
    return [s.name for s in stages]


@contextlib.contextmanager
def _params_files_parsed_once():
    """DVC parses params.yaml again for each parameter dependency of each stage it saves, and again for its run
    cache, with ruamel's pure-Python parser: 111 parses for the default run's 37 stages. The repository is
    locked meanwhile, so each file is parsed once here (each caller gets its own copy): the record took 3.8 s
    instead of 6.4 s on two CPU cores. Without DVC's loader where this expects it, DVC parses as before."""
    try:
        from dvc.dependency import param
    except ImportError:
        yield
        return
    original = getattr(param, "load_path", None)
    if original is None:
        yield
        return
    parsed: dict = {}

    def load_path(path, fs, **kwargs):
        key = (str(path), id(fs), tuple(sorted(kwargs.items())))
        if key not in parsed:
            parsed[key] = original(path, fs, **kwargs)
        return copy.deepcopy(parsed[key])

    param.load_path = load_path
    try:
        yield
    finally:
        param.load_path = original


def _with_command(root, outputs: list[str]) -> list[str]:
    beside = Path(sys.executable).with_name("dvc")
    dvc = str(beside) if os.access(beside, os.X_OK) else shutil.which("dvc")
    if dvc is None:
        raise MedtiError("dvc is not installed: cannot record the outputs in dvc.lock")
    proc = subprocess.run([dvc, "commit", "--force", *outputs], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MedtiError((proc.stderr or proc.stdout).strip().splitlines()[-1])
    return outputs
