"""MLflow tracking shared by every stage: one experiment per pipeline, one run per job.

The default store is a SQLite file at the project root, addressed by an absolute URI so that jobs started
in any working directory share it; ``MLFLOW_TRACKING_URI`` overrides it (a team server), and
``tracking.enabled: false`` turns tracking off. SQLite allows one writer at a time, so parallel jobs
(a) wait on the lock instead of failing at once (a busy timeout in the URI), (b) create the database and
the experiment under a file lock, (c) send metrics in batches, and (d) retry a write that still meets
"database is locked". Nothing logged here may carry a DICOM header value: callers pass configuration,
counts, metrics and de-identified ids only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"
_BATCH = 200
# MLflow 3's experiment type: a model-training experiment, so the UI shows it as "Machine learning" (the runs
# table, charts, comparison) rather than as a GenAI app (traces, overview). Set on an experiment medti creates and
# on an existing one that has no kind yet; a kind someone chose is left alone.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(params: dict | None = None, root: str | os.PathLike | None = None) -> str | None:
    """The tracking URI for this project, or None when tracking is turned off."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if params is None and root is None:
        return None  # standalone use without MLFLOW_TRACKING_URI: nothing to track into
    cfg = (params or {}).get("tracking", {}) or {}
    if cfg.get("enabled", True) is False or os.environ.get("MEDTI_TRACKING") == "0":
        return None
    if cfg.get("uri"):
        return cfg["uri"]
    from medti.config import project_root

    base = Path(root) if root is not None else project_root(params)
    return f"sqlite:///{(base / DB_NAME).resolve()}"


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return None


def _with_busy_timeout(uri: str, seconds: int = 60) -> str:
    if uri.startswith("sqlite:") and "timeout=" not in uri:
        return uri + ("&" if "?" in uri else "?") + f"timeout={seconds}"
    return uri


def _is_locked(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def retry(fn, *args, attempts: int = 8, **kwargs):
    """Call ``fn``; on a SQLite lock error wait (with jitter) and try again."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MLflow wraps the driver error in several types
            if not _is_locked(exc) or i == attempts - 1:
                raise
            time.sleep(min(5.0, 0.2 * 2**i) * (0.5 + random.random()))
    return None  # pragma: no cover


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    """One MLflow run; a silent no-op when tracking is off. Use as a context manager."""

    def __init__(self, params: dict | None, stage: str, run_name: str | None = None,
                 tags: dict[str, Any] | None = None, experiment: str | None = None,
                 root: str | os.PathLike | None = None, inputs: dict[str, str | os.PathLike] | None = None):
        self.uri = tracking_uri(params, root=root)
        self.stage = stage
        self.run_name = run_name or stage
        self.experiment = experiment or ((params or {}).get("tracking", {}) or {}).get("experiment") or "medti"
        self.tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        self.tags["stage"] = stage
        self.root = Path(root) if root is not None else None
        self.inputs = {k: Path(v) for k, v in (inputs or {}).items() if v is not None}
        self._client = None
        self.run_id: str | None = None
        self._pending: list = []
        self._last_flush = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        from mlflow.tracking import MlflowClient

        uri = _with_busy_timeout(self.uri)
        db = _sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            from filelock import FileLock

            # Creating the schema (alembic migrations) and the experiment must not race.
            with FileLock(str(db) + ".lock", timeout=300):
                self._client = MlflowClient(tracking_uri=uri)
                exp_id = self._experiment_id(artifact_root=db.parent / ARTIFACTS)
        else:
            self._client = MlflowClient(tracking_uri=uri)
            exp_id = self._experiment_id(artifact_root=None)
        commit = git_commit(self.root)
        if commit:
            self.tags.setdefault("git_commit", commit)
        self.tags.update(input_tags(self.inputs))
        self.tags.setdefault("mlflow.runName", self.run_name)
        run = retry(self._client.create_run, exp_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        return self

    def _experiment_id(self, artifact_root: Path | None) -> str:
        exp = retry(self._client.get_experiment_by_name, self.experiment)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in exp.tags:
                retry(self._client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        return retry(self._client.create_experiment, self.experiment, artifact_location=location,
                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled or self.run_id is None:
            return
        try:
            self.flush()
        finally:
            status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
            retry(self._client.set_terminated, self.run_id, status=status)

    # -- logging -------------------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        flat = _flatten(params, prefix)
        items = [Param(k[:250], str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            retry(self._client.log_batch, self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        retry(self._client.log_batch, self.run_id, tags=items)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Queue metrics; they are written in batches (every 200 values or 10 s) and at the end."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if v is None:
                continue
            self._pending.append(Metric(k, float(v), ts, int(step or 0)))
        if len(self._pending) >= _BATCH or time.monotonic() - self._last_flush > 10:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._pending:
            return
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):
            retry(self._client.log_batch, self.run_id, metrics=pending[i:i + 1000])
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.enabled or not Path(path).exists():
            return
        if Path(path).is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, fig, name: str) -> None:
        if not self.enabled:
            return
        self._client.log_figure(self.run_id, fig, name)

    def log_dict(self, obj: dict, name: str) -> None:
        if not self.enabled:
            return
        self._client.log_dict(self.run_id, obj, name)


def input_tags(inputs: dict[str, Path]) -> dict[str, str]:
    """``input.<name>.md5`` tags holding the DVC checksum of each input that exists."""
    from medti.hashing import dvc_md5

    return {f"input.{name}.md5": dvc_md5(p) for name, p in inputs.items() if p.exists()}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def track(params: dict | None, stage: str, **kwargs) -> Iterator[Tracker]:
    """``with track(params, "train-embedding", tags={...}) as t: t.log_metrics(...)``."""
    with Tracker(params, stage, **kwargs) as tracker:
        yield tracker
