"""The Kubernetes profile: it hands jobs the tracking server's URI (as the SLURM profile's jobs get it), refuses to
start without one, and its dry run (no cluster, no kubeconfig, no S3) plans every job with its resources."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import GPU_RULES, planned, resources

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "kubernetes"
PLUGINS = ("snakemake_executor_plugin_kubernetes", "snakemake_storage_plugin_s3")


def _needs_plugins() -> None:
    missing = [name for name in PLUGINS if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(m.replace('_', '-') for m in missing)} not installed (pip install it to dry-run the "
                    "Kubernetes profile)")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline_env(**extra: str) -> dict[str, str]:
    """No cluster and no S3: a kubeconfig that does not exist, S3 at a local port nothing listens on, placeholder
    credentials; the envvars the profile names are set (as a user exports them before submitting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBE"))}
    env.update(KUBECONFIG=str(ROOT / "nonexistent-kubeconfig"), AWS_ENDPOINT_URL=f"http://127.0.0.1:{_dead_port()}",
               AWS_ACCESS_KEY_ID="placeholder", AWS_SECRET_ACCESS_KEY="placeholder",
               MLFLOW_TRACKING_URI="http://mlflow.medti.svc:5000", **extra)
    return env


def test_the_profile_hands_jobs_the_tracking_server_and_needs_no_s3_to_plan():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "kubernetes"
    assert "MLFLOW_TRACKING_URI" in profile["envvars"]  # each pod gets the server's URI; no SQLite file over S3
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(profile["envvars"])
    # a fixed ephemeral-storage size: Snakemake's default would ask S3 for every input's size while planning
    assert isinstance(profile["default-resources"]["disk_mb"], int)
    for rule in GPU_RULES - {"train_classifier"}:  # the jobs that load the base model
        assert profile["set-resources"][rule]["disk_mb"] >= profile["default-resources"]["disk_mb"], rule


def test_dry_run_plans_every_job_with_one_nvidia_gpu_for_the_gpu_rules():
    _needs_plugins()
    jobs = planned("--profile", "workflow/profiles/kubernetes", env=_offline_env())
    local = planned()
    assert sorted(j["rule"] for j in jobs) == sorted(j["rule"] for j in local)  # the same plan as on one machine
    seen = set()
    for job in jobs:
        res = resources(job)
        if job["rule"] == "all":
            continue
        assert res.get("disk_mb") in ("20000", "40000"), job  # the profile's, not one computed from S3
        if job["rule"] in GPU_RULES:
            assert res.get("gpu") == "1" and res.get("gpu_manufacturer") == "nvidia", job
            seen.add(job["rule"])
        else:
            assert res.get("gpu", "0") == "0", job
    assert seen == GPU_RULES


def test_without_a_tracking_server_uri_snakemake_refuses_to_start():
    _needs_plugins()
    env = _offline_env()
    del env["MLFLOW_TRACKING_URI"]
    proc = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--dry-run", "--cores", "1",
                           "--profile", "workflow/profiles/kubernetes"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "MLFLOW_TRACKING_URI" in said and "undefined" in said, said[-2000:]
