"""MLflow tracking on a cluster: a real tracking server (scripts/mlflow-server.sh, started by the fixture) that
parallel jobs log to over HTTP. Every run, metric value and artifact arrives (counted exactly); nothing is written
to a local SQLite file; a server that is not there stops a job at once with one line; the SQLite file store used
from inside a SLURM job warns."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from classifier_support import toy_params
from mlflow_server_support import mlflow_server

from medti.toydata import write_real_set
from medti.tracking import Tracker, TrackingError

ROOT = Path(__file__).resolve().parents[1]
MEDTI = str(Path(sys.executable).with_name("medti"))
CLASSIFIER_ARTIFACTS = ("roc.png", "confusion.png", "confusion.csv", "curves.png", "metrics.json", "history.csv")

# A job that logs many small batches, a parameter and two artifacts (a file and a dict) to the server.
WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from medti.tracking import Tracker
    i, steps, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    params = {"tracking": {"experiment": "workers"}}
    with Tracker(params, "train-embedding", run_name=f"job{i}", tags={"seed": i}) as t:
        t.log_params({"train_embedding": {"lr": 0.01 * (i + 1)}})
        for step in range(steps):
            t.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.01}, step=step)
            if step % 25 == 0:
                t.flush()  # many small requests from many processes at once
        note = out / f"note{i}.txt"
        note.write_text(f"job {i}\\n" * 100)
        t.log_artifact(note, "notes")
        t.log_dict({"job": i, "steps": steps}, "summary.json")
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(workdir) as uri:
        yield uri, workdir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MEDTI_TRACKING"}
    env.update(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1", SLURM_JOB_ID="4242")  # as inside a SLURM job
    return env


def test_parallel_jobs_log_every_run_metric_and_artifact_to_the_server(server, tmp_path, request):
    """Four `medti train-classifier` jobs (the pipeline form Snakemake runs) and four tracker workers at once,
    all over HTTP; then every run, every metric value and every artifact is on the server."""
    from mlflow.tracking import MlflowClient

    uri, workdir = server
    project = tmp_path / "project"
    project.mkdir()
    params_path = toy_params(project)
    params = yaml.safe_load(params_path.read_text())
    params["tracking"] = {"enabled": True, "experiment": "cluster"}  # the project default: tracking on
    params["classifier"].update(steps=20, eval_every=5)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    write_real_set(project / "data" / "prepared" / "toy", per_split={"train": 12, "val": 8, "test": 8}, size=32,
                   seed=0)
    seeds, workers, steps = (0, 1, 2, 3), 4, 200
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = _job_env(uri)
    started = time.perf_counter()
    commands = [[MEDTI, "train-classifier", "--params", str(params_path), "--modality", "toy", "--condition", "real",
                 "--seed", str(s), "-q"] for s in seeds]
    commands += [[sys.executable, str(script), str(i), str(steps), str(tmp_path)] for i in range(workers)]
    procs = [subprocess.Popen(c, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    outputs = [p.communicate(timeout=300) for p in procs]
    seconds = time.perf_counter() - started
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "SQLite" not in err  # a server is in use: no warning about the file store

    client = MlflowClient(uri)
    # the classifier runs: one per seed, every history row of every metric, and the artifacts themselves
    exp = client.get_experiment_by_name("cluster")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # stored by the server, uploaded over HTTP
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"toy/real/seed{s}" for s in seeds]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == "train-classifier"
        out = project / "results" / "classifier" / "toy" / "real" / f"seed{run.data.params['seed']}"
        history = pd.read_csv(out / "history.csv")
        assert len(history) == 4  # steps 5, 10, 15, 20
        for metric in ("train_loss", "val_loss", "val_auc"):
            logged = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in logged) == list(history["step"]), metric
            # history.csv holds 6 significant digits
            assert sorted(m.value for m in logged) == pytest.approx(sorted(history[metric]), rel=1e-5), metric
        assert run.data.metrics["test_auc"] == pytest.approx(json.loads((out / "metrics.json").read_text())["test_auc"])
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == set(CLASSIFIER_ARTIFACTS)
        stored = workdir / "artifacts" / exp.experiment_id / run.info.run_id / "artifacts"
        for name in CLASSIFIER_ARTIFACTS:
            assert (stored / name).read_bytes() == (out / name).read_bytes(), name
    # the workers: one run each, every one of the 200 steps of both metrics, both artifacts
    exp = client.get_experiment_by_name("workers")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"job{i}" for i in range(workers)]
    for run in runs:
        i = int(run.data.tags["seed"])
        assert run.info.status == "FINISHED"
        for metric in ("loss", "lr"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == list(range(steps))
        stored = workdir / "artifacts" / exp.experiment_id / run.info.run_id / "artifacts"
        assert (stored / "notes" / f"note{i}.txt").read_text() == f"job {i}\n" * 100
        assert json.loads((stored / "summary.json").read_text()) == {"job": i, "steps": steps}

    # nothing went to a local store: no SQLite file, file store or artifact folder anywhere in the project (the
    # jobs' working directory and params.yaml's root) or next to it
    found = [p for pattern in ("*.db", "*.db.lock", "mlruns", "mlartifacts") for p in tmp_path.rglob(pattern)]
    assert found == [], found
    assert [p.name for p in workdir.glob("*.db")] == ["mlflow-server.db"]  # the server's own, on its disk
    log = (workdir / "server.log").read_text()
    assert f"export MLFLOW_TRACKING_URI={uri}" in log  # what the script tells a user to export
    request.config.medti_timings.append(f"tracking server: 4 train-classifier jobs + 4 tracker workers logging at "
                                        f"once over HTTP: {seconds:.1f} s")


def test_the_server_answers_jobs_that_address_it_by_this_host_name_only(server):
    """Jobs on other nodes call the server by its host name: the script lets that Host header in (MLflow's own
    default accepts only localhost and private IPs), and still refuses others (DNS rebinding)."""
    import requests

    uri, _ = server
    port = uri.rsplit(":", 1)[1]
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, headers={"Host": f"{socket.gethostname()}:{port}"}, timeout=30).status_code == 200
    assert requests.get(search, headers={"Host": f"mlflow.attacker.example:{port}"}, timeout=30).status_code == 403


def test_a_dead_server_stops_the_job_at_once_with_one_line_naming_the_uri_and_its_setting(monkeypatch, tmp_path):
    dead = f"http://user:secret@127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MEDTI_TRACKING_WAIT", "3")
    started = time.perf_counter()
    with pytest.raises(TrackingError) as caught:
        with Tracker({}, "train-embedding"):
            pass
    waited = time.perf_counter() - started
    message = str(caught.value)
    assert "\n" not in message
    assert "MLFLOW_TRACKING_URI" in message and "connection refused" in message
    assert dead.replace("secret", "***") in message and "secret" not in message  # no password in logs
    assert "scripts/mlflow-server.sh" in message
    assert 2.5 <= waited < 10  # it waits MEDTI_TRACKING_WAIT for a restarting server, not MLflow's minutes

    # the command line: exit status 2, one line, the setting named (params.yaml here), before any training
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MEDTI_TRACKING", raising=False)
    monkeypatch.setenv("MEDTI_TRACKING_WAIT", "1")
    params_path = toy_params(tmp_path)
    params = yaml.safe_load(params_path.read_text())
    params["tracking"] = {"enabled": True, "uri": dead.replace("user:secret@", "")}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    write_real_set(tmp_path / "data" / "prepared" / "toy", per_split={"train": 4, "val": 4, "test": 4}, size=32)
    proc = subprocess.run([MEDTI, "train-classifier", "--params", str(params_path), "--modality", "toy",
                           "--condition", "real", "-q"], cwd=tmp_path, env=os.environ, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medti: error: MLflow tracking server http://127.0.0.1:"), lines
    assert "(from params.yaml tracking.uri)" in lines[0]
    assert not (tmp_path / "results").exists()


def test_the_sqlite_file_store_inside_a_slurm_job_warns_and_points_to_the_server_docs(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDTI_TRACKING", raising=False)
    params = {"tracking": {"enabled": True}, "_meta": {"root": str(tmp_path)}}
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with caplog.at_level(logging.WARNING, logger="medti.tracking"):
        with Tracker(params, "generate"):
            pass
    assert not caplog.records  # one machine: the SQLite default is right
    assert (tmp_path / "mlflow.db").exists()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with caplog.at_level(logging.WARNING, logger="medti.tracking"):
        with Tracker(params, "generate") as t:
            t.log_metrics({"x": 1.0}, step=0)
    [record] = caplog.records
    text = record.getMessage()
    assert "SLURM job 4242" in text and str(tmp_path / "mlflow.db") in text
    assert "MLFLOW_TRACKING_URI" in text and "docs/tracking-server.md" in text
    assert "the default store" in text  # which setting chose the file


def test_a_server_with_logins_gets_the_jobs_credentials_or_a_one_line_error(tmp_path, monkeypatch):
    """MLflow's basic-auth app (`scripts/mlflow-server.sh --app-name basic-auth`): a job without a login, or with
    a wrong one, stops with one line naming the variables; with MLFLOW_TRACKING_USERNAME/PASSWORD it logs."""
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.skip("MLflow's basic-auth app needs Flask-WTF (pip install 'mlflow[auth]')")
    from mlflow.tracking import MlflowClient

    password = "admin-" + os.urandom(8).hex()
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
    with mlflow_server(tmp_path / "server", "--app-name", "basic-auth", env=env) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        for user, secret, said in ((None, None, "needs a login"), ("admin", "wrong-password", "did not accept")):
            if user:
                monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
                monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
            with pytest.raises(TrackingError) as caught:
                with Tracker({}, "generate"):
                    pass
            message = str(caught.value)
            assert said in message and "MLFLOW_TRACKING_USERNAME" in message and uri in message, message
            assert "wrong-password" not in message
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        with Tracker({}, "generate") as t:
            t.log_metrics({"x": 1.0}, step=0)
        assert MlflowClient(uri).get_run(t.run_id).data.metrics == {"x": 1.0}
