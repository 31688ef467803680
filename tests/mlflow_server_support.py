"""A real MLflow tracking server for tests, started the documented way (scripts/mlflow-server.sh).

``with mlflow_server(workdir) as uri:`` starts ``mlflow server`` on a free localhost port with a SQLite backend
store (``workdir/mlflow-server.db``, written by the server process only) and the artifact destination
``workdir/artifacts`` (clients upload over HTTP: ``--serve-artifacts``), waits for its /health endpoint, yields
``http://127.0.0.1:<port>`` and stops the server's whole process group afterwards, also when the body fails.
Skips the test (one line) when the server cannot be started in time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mlflow-server.sh"
START_TIMEOUT = float(os.environ.get("MEDTI_TEST_MLFLOW_START_TIMEOUT", "90"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    return lines[-1][:200] if lines else "no output"


@contextlib.contextmanager
def mlflow_server(workdir: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a real MLflow tracking server under ``workdir``; yield its http URI; stop it afterwards.

    ``options`` go to ``mlflow server`` after the script's own (``--app-name basic-auth``), ``env`` adds to the
    server's environment."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not SCRIPT.is_file():
        pytest.skip(f"{SCRIPT} is missing")
    mlflow_cmd = Path(sys.executable).with_name("mlflow")
    server_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server_env.update(env or {})
    server_env.update(MLFLOW_SERVER_DIR=str(workdir), MLFLOW_SERVER_HOST="127.0.0.1")
    if mlflow_cmd.exists():
        server_env["MLFLOW"] = str(mlflow_cmd)
    log = workdir / "server.log"
    deadline = time.monotonic() + START_TIMEOUT
    for _attempt in range(3):  # a free port can be taken by someone else between picking and binding it
        port = _free_port()
        server_env["MLFLOW_SERVER_PORT"] = str(port)
        uri = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            proc = subprocess.Popen(["bash", str(SCRIPT), *options], cwd=workdir, env=server_env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while time.monotonic() < deadline and proc.poll() is None and not _healthy(uri):
                time.sleep(0.3)
            if proc.poll() is None and _healthy(uri):
                break
        except BaseException:
            _stop(proc)
            raise
        _stop(proc)
        if time.monotonic() >= deadline:
            break
    else:
        pytest.skip(f"mlflow server did not start: {_last_line(log)}")
    if proc.poll() is not None or not _healthy(uri):
        _stop(proc)
        pytest.skip(f"mlflow server did not answer within {START_TIMEOUT:.0f} s: {_last_line(log)}")
    try:
        yield uri
    finally:
        _stop(proc)
