"""The orchestration layer, running few or no pipeline jobs: the Snakemake plan, its agreement with dvc.yaml, the
parameter checks, the lint, the rules' log files, the GPU resources of the rules and both cluster profiles, and
dvc.lock after a Snakemake run (tests/test_pipeline_e2e.py shares a Snakemake run's outputs through DVC)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from medti.workflow import Job, check, compare, dvc_jobs, snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# The rules whose jobs use a GPU (base_model.device or classifier.device), as README "Clusters" lists them.
GPU_RULES = {"train_embedding", "generate", "interpolate", "train_classifier"}
PROFILES = ("slurm", "kubernetes")


def snakemake(*args, cwd=ROOT, check=False, env=None):
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True, check=check,
                          env=env)


def planned(*args, cwd=ROOT, env=None) -> list[dict[str, str]]:
    """The jobs of a forced dry run: for each, its rule and the fields Snakemake prints (log, resources, ...)."""
    proc = snakemake("--dry-run", "--forceall", "--printshellcmds", "--cores", "1", *args, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs, job = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            job = {"rule": m.group(1)}
            jobs.append(job)
        elif job is not None and line.startswith("Shell command:"):
            job["shell"] = line.split(":", 1)[1].strip()
        elif job is not None and re.match(r"^    \w+: ", line):
            key, value = line.strip().split(": ", 1)
            job[key] = value
    return jobs


def resources(job: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job.get("resources", "").split(", ") if "=" in item)


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
    assert counts["train_embedding"] == len(params["classes"])  # a job per class trains its variants
    n_variants = len(params["train_embedding"]["variants"])
    assert n_variants == 2  # the default run shows the embedding-size ablation
    assert counts["generate"] == n_mod * n_variants and counts["interpolate"] == n_mod
    generate = sorted(j.command for j in jobs if j.name == "generate")
    assert any("--variant few --embeddings embeddings/chest_xray --out data/synthetic/chest_xray/few" in c
               for c in generate)
    # one job per condition trains all its seeds (the start-up paid once)
    assert counts["train_classifier"] == n_mod * len(params["classifier"]["conditions"])
    assert all("--seeds all" in j.command for j in jobs if j.name == "train_classifier")
    assert counts["evaluate"] == n_mod and counts["report"] == 1
    # every job calls the medti CLI with the one parameter file and writes a log
    for job in jobs:
        assert job.command.startswith("medti ") and "--params params.yaml" in job.command
        assert "--log logs/" in job.command


def test_snakefile_and_dvc_yaml_agree():
    assert check(ROOT) == []


def test_drift_between_the_two_is_reported(tmp_path):
    project = project_copy(tmp_path)
    dvc_yaml = (project / "dvc.yaml").read_text()
    drifted = dvc_yaml.replace("--condition ${item.condition}", "--condition ${item.condition} --fast")
    (project / "dvc.yaml").write_text(drifted)
    problems = check(project)
    assert problems and all("commands differ" in p for p in problems)
    assert any("train_classifier" in p for p in problems)
    # an output renamed on one side only is reported from both sides
    outs = "outs:\n      - ${generate.out}/${item.modality}/${item.variant}"
    (project / "dvc.yaml").write_text(dvc_yaml.replace(outs, outs + "-v2"))
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


def test_snakefmt_would_change_nothing():
    """scripts/lint.sh (run by CI) checks the same; `snakefmt Snakefile workflow/` fixes the format."""
    if not (BIN / "snakefmt").exists():
        pytest.skip("snakefmt is not installed (it comes with medti's dev extra)")
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_rules_and_both_cluster_profiles_claim_gpus_alike():
    """One list of GPU rules: those whose jobs declare the `gpu` resource; each profile gives exactly these one
    GPU each (SLURM: on its GPU partition; Kubernetes: an NVIDIA one), and no other rule any."""
    claimed = {job["rule"] for job in planned() if "gpu" in resources(job)}
    assert claimed == GPU_RULES
    for name in PROFILES:
        profile = yaml.safe_load((ROOT / "workflow" / "profiles" / name / "config.yaml").read_text())
        assert "gpu" not in (profile.get("default-resources") or {}), name
        given = {rule for rule, res in profile["set-resources"].items() if (res or {}).get("gpu")}
        assert given == claimed, f"profiles/{name}: GPUs for {sorted(given)}, the rules claim {sorted(claimed)}"
        for rule in given:
            res = profile["set-resources"][rule]
            assert res["gpu"] == 1, (name, rule)
            if name == "slurm":
                assert res["slurm_partition"] == "gpu", rule
            else:
                assert res["gpu_manufacturer"] == "nvidia", rule


def test_slurm_profile_dry_run_asks_for_gpus_for_gpu_jobs():
    jobs = planned("--profile", "workflow/profiles/slurm")
    seen = set()
    for job in jobs:
        res = resources(job)
        if job["rule"] in GPU_RULES:
            assert res.get("gpu") == "1" and res.get("slurm_partition") == "gpu", job
            seen.add(job["rule"])
        elif job["rule"] != "all":
            assert res.get("gpu", "0") == "0" and res.get("slurm_partition") == "cpu", job
    assert seen == GPU_RULES


def test_gpu_rules_claim_a_gpu_locally_only_where_one_is_and_their_device_is_not_cpu(tmp_path):
    project = project_copy(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["classifier"]["device"] = "cpu"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    with_gpu = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    claims = {job["rule"]: resources(job).get("gpu") for job in planned(cwd=project, env=with_gpu)}
    assert claims["train_embedding"] == claims["generate"] == claims["interpolate"] == "1"
    assert claims["train_classifier"] == "0"  # classifier.device: cpu
    without_gpu = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                         if not (Path(p) / "nvidia-smi").exists())}
    claims = {job["rule"]: resources(job).get("gpu") for job in planned(cwd=project, env=without_gpu)}
    assert {claims[rule] for rule in GPU_RULES} == {"0"}  # no GPU here: the jobs run side by side


def test_every_rule_sends_its_whole_stderr_to_its_log_file():
    for job in planned():
        if job["rule"] == "all":
            continue
        log = job["log"]
        assert job["shell"].endswith(f"--log {log} 2> {log}"), job


# Stands in for `medti` in the test below: it sets up medti's logging from --log as every medti command does,
# logs, triggers a library warning, and fails with an uncaught exception.
FAILING_MEDTI = """\
    import logging
    import sys
    import warnings

    from medti.logs import setup_logging

    setup_logging(sys.argv[sys.argv.index("--log") + 1])
    log = logging.getLogger("medti.phantoms")
    log.info("writing the phantoms")
    warnings.warn("a library warning on stderr", UserWarning)
    log.warning("the next step fails")
    raise RuntimeError("the phantom writer broke")
"""


def test_a_failing_job_leaves_its_error_and_traceback_in_its_log_once(tmp_path):
    project = project_copy(tmp_path)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    medti = fake_bin / "medti"
    medti.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAILING_MEDTI))
    medti.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = snakemake("--cores", "1", "data/raw/phantoms/chest_xray", cwd=project, env=env)
    assert proc.returncode != 0
    log = (project / "logs" / "phantoms" / "chest_xray.log").read_text()
    lines = log.splitlines()
    for expected in ("INFO    medti.phantoms: writing the phantoms", "UserWarning: a library warning on stderr",
                     "WARNING medti.phantoms: the next step fails", "Traceback (most recent call last):",
                     "RuntimeError: the phantom writer broke"):
        assert sum(expected in line for line in lines) == 1, f"{expected!r} should be in the log once:\n{log}"
    assert lines[-1] == "RuntimeError: the phantom writer broke", log
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", lines[0]), log  # full timestamps, as --log writes


def test_snakemake_records_the_jobs_it_ran_in_dvc_lock_and_fails_loudly_when_it_cannot(tmp_path):
    project = project_copy(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["phantoms"]["subjects_per_class"] = 4  # the phantom DICOMs are the cheapest real job
    # ... and a split that 4 subjects per class allow (params are checked for the whole pipeline's sake)
    params["prepare"]["split"] = {"train": 1, "val": 1, "test": 2}
    params["evaluate"]["min_test_per_class"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MEDTI_TRACKING": "0"}
    proc = snakemake("--cores", "1", "data/raw/phantoms/chest_xray", cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dvc.lock: recorded the outputs of 1 job(s)" in proc.stderr
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"phantoms@chest_xray"}  # what ran, nothing else
    status = subprocess.run([str(BIN / "dvc"), "status", "phantoms@chest_xray"], cwd=project, capture_output=True,
                            text=True, check=True).stdout
    assert "up to date" in status, status
    # dvc.lock unreadable: the run fails, saying why and what to run; its output stays, and Snakemake has it
    (project / "dvc.lock").write_text("::: not a lock file\n")
    proc = snakemake("--cores", "1", "data/raw/phantoms/histopathology", cwd=project, env=env)
    assert proc.returncode != 0
    assert "recording their outputs in dvc.lock failed" in proc.stderr
    assert "dvc commit --force data/raw/phantoms/histopathology" in proc.stderr
    assert (project / "data" / "raw" / "phantoms" / "histopathology" / "labels.csv").is_file()
    proc = snakemake("-n", "--cores", "1", "data/raw/phantoms/histopathology", cwd=project, env=env)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_dvc_stages_are_parameterised_per_modality_and_class():
    names = {j.name for j in dvc_jobs(ROOT)}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert {f"train_embedding@{key}" for key in params["classes"]} <= names
    assert {f"prepare@{m}" for m in params["modalities"]} <= names


def test_record_writes_dvc_lock_for_the_given_outputs_only(tmp_path):
    """`medti workflow record` (Snakemake's onsuccess step): the stages writing the given outputs are committed
    and recorded in dvc.lock as `dvc commit --force` records them; other stages are left alone."""
    from medti.errors import MedtiError
    from medti.workflow import record_outputs

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "one": {"cmd": "echo 1 > one.txt", "outs": ["one.txt"]},
        "two": {"foreach": ["a", "b"], "do": {"cmd": "mkdir -p two/${item}", "outs": ["two/${item}"]}},
    }}))
    (tmp_path / "one.txt").write_text("1\n")
    for item in ("a", "b"):
        (tmp_path / "two" / item).mkdir(parents=True)
        (tmp_path / "two" / item / "x.txt").write_text(item)
    assert sorted(record_outputs(tmp_path, ["one.txt", "two/a/"])) == ["one", "two@a"]
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"one", "two@a"}  # two@b made no output this run: not recorded
    assert lock["one"]["outs"][0]["md5"] == "b026324c6904b2a9cb4b88d6d61c81d1"  # md5 of "1\n"
    status = subprocess.run([str(BIN / "dvc"), "status", "one", "two@a"], cwd=tmp_path, capture_output=True,
                            text=True, check=True).stdout
    assert "up to date" in status
    with pytest.raises(MedtiError, match="elsewhere.txt: no dvc.yaml stage writes this output"):
        record_outputs(tmp_path, ["elsewhere.txt"])


def test_record_records_parameters_as_dvc_commit_does(tmp_path, monkeypatch):
    """With parameter dependencies on two params files (which `medti workflow record` parses once each), dvc.lock
    holds exactly what `dvc commit --force` writes for the same outputs."""
    from medti.workflow import record_outputs

    def project(where):
        where.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=where, check=True)
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=where, check=True)
        (where / "params.yaml").write_text("seed: 7\nstage: {lr: 0.5, steps: 3}\n")
        (where / "other.yaml").write_text("seed: 99\nsize: 64\n")
        (where / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
            "one": {"cmd": "echo 1 > one.txt", "params": ["seed", "stage.lr"], "outs": ["one.txt"]},
            "two": {"foreach": ["a", "b"], "do": {
                "cmd": "mkdir -p two/${item}", "outs": ["two/${item}"],
                "params": ["stage", {"other.yaml": ["seed", "size"]}]}},
        }}))
        (where / "one.txt").write_text("1\n")
        for item in ("a", "b"):
            (where / "two" / item).mkdir(parents=True)
            (where / "two" / item / "x.txt").write_text(item)
        return where

    mine, theirs = project(tmp_path / "mine"), project(tmp_path / "theirs")
    outputs = ["one.txt", "two/a", "two/b"]
    monkeypatch.chdir(tmp_path)  # elsewhere: the outputs are relative to the root given
    assert sorted(record_outputs(mine, outputs)) == ["one", "two@a", "two@b"]
    subprocess.run([str(BIN / "dvc"), "commit", "--force", "-q", *outputs], cwd=theirs, check=True)
    recorded = yaml.safe_load((mine / "dvc.lock").read_text())
    assert recorded == yaml.safe_load((theirs / "dvc.lock").read_text())
    assert recorded["stages"]["one"]["params"] == {"params.yaml": {"seed": 7, "stage.lr": 0.5}}
    assert recorded["stages"]["two@b"]["params"] == {"params.yaml": {"stage": {"lr": 0.5, "steps": 3}},
                                                     "other.yaml": {"seed": 99, "size": 64}}
