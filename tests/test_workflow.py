"""The orchestration layer without running jobs: the Snakemake plan, its agreement with dvc.yaml, the
parameter checks, the lint, and the SLURM profile."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medti.workflow import Job, check, compare, dvc_jobs, snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(*args, cwd=ROOT, check=False):
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True, check=check)


def project_copy(tmp_path: Path) -> Path:
    """The workflow files of this checkout in a fresh folder (git + DVC initialised)."""
    dst = tmp_path / "project"
    dst.mkdir()
    for name in ("Snakefile", "dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "workflow", dst / "workflow")
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=dst, check=True)
    return dst


def test_dry_run_plans_every_stage_per_modality_class_condition_and_seed():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    jobs = snakemake_jobs(ROOT)
    counts = {}
    for job in jobs:
        counts[job.name] = counts.get(job.name, 0) + 1
    n_mod = len(params["modalities"])
    assert counts["phantoms"] == len(params["phantoms"]["modalities"])
    assert counts["prepare"] == n_mod
    assert counts["train_embedding"] == len(params["classes"])
    assert counts["generate"] == n_mod and counts["interpolate"] == n_mod
    assert counts["train_classifier"] == n_mod * len(params["classifier"]["conditions"]) * len(params["classifier"]["seeds"])
    assert counts["evaluate"] == n_mod and counts["report"] == 1
    # every job calls the medti CLI with the one parameter file and writes a log
    for job in jobs:
        assert job.command.startswith("medti ") and "--params params.yaml" in job.command and "--log logs/" in job.command


def test_snakefile_and_dvc_yaml_agree():
    assert check(ROOT) == []


def test_drift_between_the_two_is_reported(tmp_path):
    project = project_copy(tmp_path)
    dvc_yaml = (project / "dvc.yaml").read_text()
    (project / "dvc.yaml").write_text(dvc_yaml.replace("--condition ${item.condition}", "--condition ${item.condition} --fast"))
    problems = check(project)
    assert problems and all("commands differ" in p for p in problems)
    assert any("train_classifier" in p for p in problems)
    # an output renamed on one side only is reported from both sides
    (project / "dvc.yaml").write_text(dvc_yaml.replace("outs:\n        - ${generate.out}/${key}", "outs:\n        - ${generate.out}/${key}-v2"))
    problems = check(project)
    assert any("no dvc.yaml stage has these outputs" in p for p in problems)
    assert any("no Snakemake job has these outputs" in p for p in problems)


def test_compare_matches_jobs_by_outputs():
    a = [Job("x", frozenset({"o1"}), "medti a"), Job("y", frozenset({"o2", "o3"}), "medti b")]
    assert compare(a, [Job("s@1", frozenset({"o3", "o2"}), "medti b"), Job("s@0", frozenset({"o1"}), "medti a")]) == []
    assert compare(a, a[:1])[0].startswith("Snakemake rule y")


def test_a_bad_parameter_stops_snakemake_with_one_clear_line(tmp_path):
    project = project_copy(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["generate"]["steps"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = snakemake("-n", cwd=project)
    assert proc.returncode != 0
    assert "params.yaml: generate.steps: 0 is less than the minimum of 1" in proc.stderr + proc.stdout


def test_config_overrides_are_refused_because_dvc_would_not_see_them():
    proc = snakemake("-n", "--config", "seed=3")
    assert proc.returncode != 0
    assert "edit params.yaml instead of passing --config" in proc.stderr + proc.stdout


def test_lint_reports_nothing():
    proc = snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_slurm_profile_dry_run_asks_for_gpus_for_gpu_jobs():
    proc = snakemake("--profile", "workflow/profiles/slurm", "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    blocks = re.split(r"\n(?=\[)", out)
    gpu_rules = {"train_embedding", "generate", "train_classifier"}
    seen = set()
    for block in blocks:
        m = re.search(r"rule (\w+):", block)
        res = re.search(r"resources: (.*)", block)
        if m and res and m.group(1) in gpu_rules:
            assert "gpu=1" in res.group(1) and "slurm_partition=gpu" in res.group(1)
            seen.add(m.group(1))
    assert seen == gpu_rules


def test_dvc_stages_are_parameterised_per_modality_and_class():
    names = {j.name for j in dvc_jobs(ROOT)}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert {f"train_embedding@{key}" for key in params["classes"]} <= names
    assert {f"prepare@{m}" for m in params["modalities"]} <= names
