"""MLflow tracking against a real SQLite store: parallel jobs, tags, input checksums, the experiment's kind,
turning it off."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medti.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker, tracking_uri

WORKER = textwrap.dedent("""
    import sys
    from medti.tracking import Tracker
    i, steps = int(sys.argv[1]), int(sys.argv[2])
    params = {"tracking": {"experiment": "parallel"}}
    with Tracker(params, "train-embedding", run_name=f"job{i}", tags={"modality": "m", "seed": i}) as t:
        t.log_params({"train_embedding": {"lr": 0.01 * (i + 1)}})
        for step in range(steps):
            t.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.01}, step=step)
            if step % 50 == 0:
                t.flush()  # many small writes from many processes: the worst case for SQLite locking
""")


def test_parallel_jobs_neither_lose_metrics_nor_fail_on_a_locked_database(tracking_env, tmp_path):
    from mlflow.tracking import MlflowClient

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    jobs, steps = 6, 300
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(steps)], stderr=subprocess.PIPE, text=True)
             for i in range(jobs)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errors)
    client = MlflowClient(tracking_env)
    exp = client.get_experiment_by_name("parallel")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"job{i}" for i in range(jobs)]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["stage"] == "train-embedding"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(steps))


def test_default_store_is_an_absolute_sqlite_uri_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDTI_TRACKING", raising=False)
    params = {"tracking": {"enabled": True, "uri": None}, "_meta": {"root": str(tmp_path)}}
    assert tracking_uri(params) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org")
    assert tracking_uri(params) == "http://mlflow.example.org"  # a team server wins
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri({"tracking": {"enabled": False}, "_meta": {"root": str(tmp_path)}}) is None
    assert tracking_uri(None) is None  # standalone use without a URI tracks nothing


def test_tracking_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Tracker(None, "generate") as t:
        t.log_metrics({"x": 1.0}, step=0)
        t.log_params({"a": 1})
    assert not t.enabled
    assert list(tmp_path.iterdir()) == []


def test_failed_job_is_recorded_as_failed(tracking_env):
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError):
        with Tracker({}, "generate", run_name="boom") as t:
            t.log_metrics({"x": 1.0}, step=0)
            raise RuntimeError("job failed")
    run = MlflowClient(tracking_env).get_run(t.run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["x"] == 1.0  # metrics queued before the failure are not lost


def test_input_checksums_are_the_ones_dvc_records(tracking_env, tmp_path):
    """Runs are tagged with DVC's own checksums of their inputs (a file and a folder)."""
    import yaml
    from mlflow.tracking import MlflowClient

    repo = tmp_path / "repo"
    (repo / "data" / "sub").mkdir(parents=True)
    (repo / "data" / "a.txt").write_text("alpha\n")
    (repo / "data" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (repo / "manifest.csv").write_text("path,label\nx.png,1\n")
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "add", "-q", "data", "manifest.csv"], cwd=repo, check=True)
    recorded = {name: yaml.safe_load((repo / f"{name}.dvc").read_text())["outs"][0]["md5"]
                for name in ("data", "manifest.csv")}
    with Tracker({}, "prepare", inputs={"data": repo / "data", "manifest": repo / "manifest.csv"}) as t:
        pass
    tags = MlflowClient(tracking_env).get_run(t.run_id).data.tags
    assert tags["input.data.md5"] == recorded["data"]
    assert tags["input.manifest.md5"] == recorded["manifest.csv"]


def test_the_experiment_is_a_model_training_experiment(tracking_env):
    """MLflow 3 opens an experiment by its kind: a model-training one on the runs table, a GenAI one on traces."""
    from mlflow.tracking import MlflowClient

    assert (EXPERIMENT_KIND_TAG, EXPERIMENT_KIND) == ("mlflow.experimentKind", "custom_model_development")
    client = MlflowClient(tracking_env)
    with Tracker({"tracking": {"experiment": "new"}}, "generate"):
        pass
    assert client.get_experiment_by_name("new").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # an experiment made before (by an older medti, or by hand) without a kind gets it; a kind chosen is kept
    older = client.create_experiment("older")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("older", "chosen"):
        with Tracker({"tracking": {"experiment": name}}, "generate") as t:
            pass
        assert client.get_run(t.run_id).info.experiment_id == (older if name == "older" else chosen)
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_installed_mlflow_ui_knows_the_experiment_kind_and_the_link_parameters():
    """The kind and the README's link (`#/experiments/<id>/runs?workflowType=machine_learning&compareRunsMode=
    CHART`) are the UI's own words: a new MLflow that renamed them fails here rather than in a user's browser."""
    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    if not js.is_dir():
        pytest.skip("this MLflow has no UI build (mlflow-skinny)")
    bundle = "\n".join(p.read_text(errors="replace") for p in js.glob("*.js"))
    for word in (EXPERIMENT_KIND_TAG, f'"{EXPERIMENT_KIND}"', '"machine_learning"', '"workflowType"',
                 '"compareRunsMode"', '"CHART"', 'Runs="runs"'):
        assert word in bundle, word

