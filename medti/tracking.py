"""MLflow tracking shared by every stage: one experiment per pipeline, one run per job.

The default store is a SQLite file at the project root, addressed by an absolute URI so that jobs started
in any working directory share it; ``MLFLOW_TRACKING_URI`` overrides it (a team server), and
``tracking.enabled: false`` turns tracking off. SQLite allows one writer at a time, so parallel jobs
(a) wait on the lock instead of failing at once (a busy timeout in the URI), (b) create the database and
the experiment under a file lock, (c) send metrics in batches, and (d) retry a write that still meets
"database is locked". Nothing logged here may carry a DICOM header value: callers pass configuration,
counts, metrics and de-identified ids only.

On a cluster the jobs log over HTTP to a tracking server (``scripts/mlflow-server.sh``; docs/tracking-server.md):
``MLFLOW_TRACKING_URI=http://host:port`` (or params.yaml ``tracking.uri``). A job first checks that the server
answers (for up to ``MEDTI_TRACKING_WAIT`` seconds, default 10) and otherwise stops with one line naming the URI
and the setting it came from; later requests use MLflow's own retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_TIMEOUT``, ...). Experiments medti creates on a server keep their artifacts where the
server says (``--artifacts-destination``): jobs upload them over HTTP. The SQLite file store, used from inside a
SLURM or Kubernetes job, logs a warning: many nodes writing one SQLite file on a shared filesystem is unsafe.
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

from medti.errors import MedtiError

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"
_BATCH = 200
# MLflow 3's experiment type: a model-training experiment, so the UI shows it as "Machine learning" (the runs
# table, charts, comparison) rather than as a GenAI app (traces, overview). Set on an experiment medti creates and
# on an existing one that has no kind yet; a kind someone chose is left alone.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class TrackingError(MedtiError):
    """The tracking store or server cannot be used (one line: the URI, the setting it came from, why)."""


def tracking_uri(params: dict | None = None, root: str | os.PathLike | None = None) -> str | None:
    """The tracking URI for this project, or None when tracking is turned off."""
    return tracking_setting(params, root)[0]


def tracking_setting(params: dict | None = None, root: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """The tracking URI (None: tracking off) and the setting it came from, for messages."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    if params is None and root is None:
        return None, "no MLFLOW_TRACKING_URI"  # standalone use without it: nothing to track into
    cfg = (params or {}).get("tracking", {}) or {}
    if cfg.get("enabled", True) is False or os.environ.get("MEDTI_TRACKING") == "0":
        return None, "tracking.enabled: false" if cfg.get("enabled", True) is False else "MEDTI_TRACKING=0"
    if cfg.get("uri"):
        return cfg["uri"], "params.yaml tracking.uri"
    from medti.config import project_root

    base = Path(root) if root is not None else project_root(params)
    return f"sqlite:///{(base / DB_NAME).resolve()}", "the default store (no MLFLOW_TRACKING_URI, tracking.uri unset)"


def redact(uri: str) -> str:
    """``uri`` without a password (``http://user:secret@host`` -> ``http://user:***@host``), for messages."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return uri
    userinfo, host = rest.split("/", 1)[0].rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    tail = rest[len(userinfo) + 1 + len(host):]
    return f"{scheme}://{user}{':***' if ':' in userinfo else ''}@{host}{tail}"


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, source: str, wait: float | None = None) -> None:
    """Raise :class:`TrackingError` (one line: the URI, the setting it came from, the reason) unless the tracking
    server at ``uri`` answers within ``wait`` seconds (default ``MEDTI_TRACKING_WAIT``, else 10).

    Any HTTP answer counts (a proxy asking for credentials too: MLflow reports that itself) except a gateway's
    502/503/504, which means the server behind it is down. TLS settings are MLflow's
    (``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``)."""
    import requests

    if wait is None:
        try:
            wait = float(os.environ.get("MEDTI_TRACKING_WAIT", "10"))
        except ValueError:
            raise TrackingError(f"MEDTI_TRACKING_WAIT={os.environ['MEDTI_TRACKING_WAIT']!r}: not a number of "
                                "seconds") from None
    verify: bool | str = True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    deadline = time.monotonic() + max(0.0, wait)
    pause = 0.5
    while True:
        try:
            answer = requests.get(uri.rstrip("/") + "/health", timeout=(min(5.0, max(1.0, wait)), 10), verify=verify)
            if answer.status_code not in (502, 503, 504):
                return
            reason = f"it answered HTTP {answer.status_code} (the server behind the proxy is down?)"
        except requests.exceptions.SSLError as exc:
            raise TrackingError(f"MLflow tracking server {redact(uri)} (from {source}): TLS failed "
                                f"({type(exc).__name__}); see MLFLOW_TRACKING_SERVER_CERT_PATH in "
                                "docs/tracking-server.md") from None
        except requests.exceptions.RequestException as exc:
            reason = _reason(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TrackingError(f"MLflow tracking server {redact(uri)} (from {source}) cannot be reached after "
                                f"{wait:g} s: {reason}; start it (scripts/mlflow-server.sh) or fix the URI "
                                "(docs/tracking-server.md)")
        time.sleep(min(pause, left))
        pause = min(pause * 2, 4.0)


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    for words, reason in ((("connection refused", "errno 111"), "connection refused (nothing listens on that port)"),
                          (("name or service not known", "nodename nor servname", "failed to resolve",
                            "name resolution"), "the host name does not resolve"),
                          (("timed out", "timeout"), "no answer (timed out)"),
                          (("no route to host", "network is unreachable"), "no route to the host")):
        if any(w in text for w in words):
            return reason
    return type(exc).__name__


_warned: set[str] = set()


def _warn_sqlite_in_cluster_job(db: Path, source: str) -> None:
    """The SQLite file store from inside a scheduler's job: many nodes writing one file on a shared filesystem,
    which SQLite's locking does not survive. Warned once per process."""
    where = (f"SLURM job {os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else
             "a Kubernetes pod" if os.environ.get("KUBERNETES_SERVICE_HOST") else None)
    if where is None or str(db) in _warned:
        return
    _warned.add(str(db))
    log.warning("tracking into the SQLite file %s (%s) from %s: SQLite is unsafe when jobs on several nodes "
                "write one file on a shared filesystem; run a tracking server and export "
                "MLFLOW_TRACKING_URI=http://host:port before submitting (docs/tracking-server.md)", db, source, where)


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
        self.uri, self.uri_source = tracking_setting(params, root=root)
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
            _warn_sqlite_in_cluster_job(db, self.uri_source)
        else:
            if _is_http(self.uri):
                check_server(self.uri, self.uri_source)
            self._client = MlflowClient(tracking_uri=uri)
            try:
                exp_id = self._experiment_id(artifact_root=None)
            except Exception as exc:  # noqa: BLE001 - MlflowException, without importing mlflow.exceptions early
                code = getattr(exc, "error_code", None)
                if code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                    raise
                given = any(os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_TOKEN"))
                what = (f"denies this login access to experiment {self.experiment!r}" if code == "PERMISSION_DENIED"
                        else "did not accept the login" if given else "needs a login")
                raise TrackingError(f"MLflow tracking server {redact(self.uri)} (from {self.uri_source}) {what}: "
                                    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                                    "MLFLOW_TRACKING_TOKEN) for the jobs (docs/tracking-server.md)") from None
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
            if _is_http(self.uri) and exp.artifact_location.startswith(("file:", "/")):
                log.warning("experiment %r keeps its artifacts in %s, a folder on each job's machine, not on the "
                            "tracking server %s: use a new experiment name (params.yaml tracking.experiment) so "
                            "that the server stores them (docs/tracking-server.md)", self.experiment,
                            exp.artifact_location, redact(self.uri))
            if EXPERIMENT_KIND_TAG not in exp.tags:
                retry(self._client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            return retry(self._client.create_experiment, self.experiment, artifact_location=location,
                         tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:
            # On a server there is no file lock: parallel jobs may both find no experiment and both create it;
            # the second one's "already exists" means use the first one's.
            exp = retry(self._client.get_experiment_by_name, self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

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
