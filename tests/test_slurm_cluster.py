"""The default pipeline, reduced, on a live one-node SLURM cluster through workflow/profiles/slurm (issue 16).

A fixture starts munge, MariaDB, slurmdbd, slurmctld and slurmd from Debian's packages in a private folder
(tests/slurm_support.py: free ports, its own munge socket and key, SlurmUser=root, partitions `cpu` and `gpu` as
the profile names them, no GPUs) and stops them afterwards, also when a test fails. One copy of the project with
reduced sizes (one modality, 20 TI steps, one seed) runs `snakemake --profile workflow/profiles/slurm`; while
the opacity class's embedding job runs, past its first checkpoint, the test `scancel`s it. Then:

- every Snakemake job went through sbatch: sacct (slurmdbd accounting in MariaDB) lists one allocation per job
  of the plan, the cancelled one twice, in the partition and account the profile gives;
- the cancelled job was retried (the profile's `retries: 1`) and resumed from its checkpoint;
- the embeddings are byte-identical to a local `snakemake --cores 2` run of the same parameters and seed (run
  side by side with the cluster run, in a clone), and the report's numbers (summary.json, the AUC table, the
  evaluation's metrics.json) are equal;
- DVC as a team sets it up on a cluster: a shared cache folder (`dvc cache dir`, `cache.shared group`) and a team
  remote; `dvc push` after the run; a fresh clone elsewhere pulls the embeddings from the remote, a clone on the
  cluster links them from the shared cache (`cache.type symlink`), both with the same bytes;
- with the tracking server of tests/mlflow_server_support.py as MLFLOW_TRACKING_URI, every job's run arrived
  there over HTTP and no mlflow.db was written in the project.

What the test changes in the profile, and why: Snakemake's command line replaces a profile's default-resources and
set-resources whole, so the test restates both from the profile file with only what the test node cannot give
changed (``slurm_support.profile_args``). The plugin's first status check waits 40 s by default; the test asks
for 2 s (`--slurm-init-seconds-before-status-checks`) to keep its run short. The scheduler's overhead per job
(queue, job start-up, status polling) and both wall times are printed in the timings summary; docs/performance.md
records them ("SLURM: scheduler overhead").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import slurm_support
import yaml
from test_pipeline_e2e import copy_checkout, git, keep_one_modality, planned_jobs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

BIN = Path(sys.executable).parent
PROFILE = "workflow/profiles/slurm"
MODALITY = "chest_xray"
KILLED_CLASS = "opacity"  # its embedding job is cancelled mid-run
STATUS_CHECK_S = 2  # the plugin's first status check after a submission (its default: 40 s)
CORES = "2"


def reduce_params(project: Path) -> None:
    """The default, smaller: one modality, one embedding variant, few images and steps, one classifier seed, the
    conditions real and synthetic; a checkpoint every 5 of 20 TI steps, so the cancelled job has one to resume
    from."""
    keep_one_modality(project, MODALITY)
    params_file = project / "params.yaml"
    p = yaml.safe_load(params_file.read_text())
    p["phantoms"]["subjects_per_class"] = 24
    p["prepare"]["ti_per_class"] = 8
    p["train_embedding"].update(steps=20, checkpoint_every=5, validation_images=2, validation_steps=5,
                                variants={"full": {}})
    p["generate"].update(n_per_class=8, steps=8)
    p["interpolate"].update(weights=[0.0, 0.5, 1.0], n=2)
    p["classifier"].update(seeds=[0], steps=20, eval_every=10)
    p["classifier"]["conditions"] = {k: v for k, v in p["classifier"]["conditions"].items()
                                     if k in ("real", "synthetic")}
    p["evaluate"]["bootstrap"] = 200
    p["report"]["samples_per_class"] = 2
    params_file.write_text(yaml.safe_dump(p, sort_keys=False))


def env_for(extra: dict | None = None, drop=("MEDTI_TRACKING", "MLFLOW_TRACKING_URI")) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.update(extra or {})
    return env


def run(args, cwd, env=None, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env or env_for(), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embedding_files(project: Path) -> dict[str, Path]:
    return {str(p.relative_to(project)): p for p in sorted((project / "embeddings").rglob("*.safetensors"))}


def auc_table(report_md: str) -> list[str]:
    """The report's "Test AUC" table rows (its numbers; the report's header carries the time it was made)."""
    section = report_md.split("## Test AUC", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


# --- the scheduler's overhead per job, from sacct and Snakemake's log ---------------------------------------

def _stamp(text: str) -> datetime:
    return datetime.strptime(text.strip(), "%a %b %d %H:%M:%S %Y")


def timeline(log: str, jobs: list[dict], project: Path) -> list[dict]:
    """Per SLURM job of the run: seconds queued (submit -> start), spent in the job around the rule's command
    (start -> end, less the command's own time from its benchmark file: the job's Snakemake and srun), and until
    Snakemake noticed the end (end -> its "Finished jobid" line: the plugin's status polling)."""
    benchmark, slurm_of, finished, now = {}, {}, {}, None
    block = None
    for line in log.splitlines():
        if re.match(r"^\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\]$", line.strip()):
            now = _stamp(line.strip()[1:-1])
        elif m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            block = {"rule": m.group(1)}
        elif block is not None and (m := re.match(r"^\s+jobid: (\d+)$", line)):
            block["jobid"] = m.group(1)
        elif block is not None and (m := re.match(r"^\s+benchmark: (\S+)$", line)):
            benchmark[block.get("jobid")] = m.group(1)
        elif m := re.match(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", line.strip()):
            slurm_of.setdefault(m.group(1), []).append(m.group(2))
        elif (m := re.match(r"^Finished jobid: (\d+)", line.strip())) and now is not None:
            finished[m.group(1)] = now
    rows = []
    by_id = {j["JobIDRaw"]: j for j in jobs}
    for jobid, slurm_ids in slurm_of.items():
        for slurm_id in slurm_ids:
            job = by_id.get(slurm_id)
            if job is None or job["State"] != "COMPLETED" or jobid not in finished:
                continue
            submit, start, end = (datetime.fromisoformat(job[k]) for k in ("Submit", "Start", "End"))
            bench = project / benchmark.get(jobid, "-")
            own = float(bench.read_text().splitlines()[1].split("\t")[0]) if bench.is_file() else None
            rows.append({"rule": job["Comment"], "queued": (start - submit).total_seconds(),
                         "in_job": None if own is None else (end - start).total_seconds() - own,
                         "noticed": (finished[jobid] - end).total_seconds(),
                         "total": (finished[jobid] - submit).total_seconds() - (own or 0)})
    return rows


def summarise(rows: list[dict]) -> str:
    def stat(key):
        values = [r[key] for r in rows if r[key] is not None]
        return f"mean {sum(values) / len(values):.1f} s, max {max(values):.0f} s" if values else "n/a"

    return (f"{len(rows)} jobs: queued {stat('queued')}; job start-up around the command {stat('in_job')}; "
            f"end -> noticed {stat('noticed')}; all overhead {stat('total')}")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a run started in its own session: SIGTERM to its group, SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)


# --- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    reason = slurm_support.unavailable()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="medti-slurm-"))
    try:
        try:
            started = slurm_support.start(root)
        except (slurm_support.ClusterError, OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"the local SLURM cluster did not come up: {str(exc).splitlines()[0][:300]}")
        yield started
    finally:
        slurm_support.stop(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """The MLflow tracking server of tests/mlflow_server_support.py, or the reason there is none."""
    try:
        from mlflow_server_support import mlflow_server
    except ImportError as exc:
        yield None, f"tests/mlflow_server_support.py is not usable: {exc}"
        return
    try:
        with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
            yield uri, None
    except pytest.skip.Exception as exc:
        yield None, str(exc)


@pytest.fixture(scope="module")
def runs(cluster, tracking_server, tmp_path_factory, pytestconfig):
    """The same reduced project run locally and on the cluster (with one job cancelled mid-run)."""
    base = tmp_path_factory.mktemp("slurm-run")
    project = copy_checkout(base / "cluster")
    reduce_params(project)
    git("commit", "-qam", f"reduced default ({MODALITY})", cwd=project)
    dry = run([BIN / "snakemake", "-n", "--cores", CORES], project)
    plan = planned_jobs(dry.stdout + dry.stderr)

    # DVC as a team sets it up on a cluster (docs/cluster.md), committed so every clone shares it
    local = base / "local"
    run(["git", "clone", "-q", str(project), str(local)], base)  # the local reference: before the team settings
    shared_cache, remote = base / "shared-dvc-cache", base / "team-dvc-remote"
    run([BIN / "dvc", "cache", "dir", str(shared_cache)], project)
    run([BIN / "dvc", "config", "cache.shared", "group"], project)
    run([BIN / "dvc", "remote", "add", "-d", "team", str(remote)], project)
    git("commit", "-qam", "DVC: the team's shared cache and remote", cwd=project)

    uri, no_server = tracking_server
    checkpoints = project / ".medti" / "checkpoints" / MODALITY / KILLED_CLASS
    target = f"rule_train_embedding_wildcards_{MODALITY}_{KILLED_CLASS}"
    log_path, local_log = base / "snakemake-slurm.log", base / "snakemake-local.log"
    command = [BIN / "snakemake", "--profile", PROFILE,
               *slurm_support.profile_args(project / PROFILE / "config.yaml"),
               "--slurm-init-seconds-before-status-checks", str(STATUS_CHECK_S),
               "--seconds-between-status-checks", str(STATUS_CHECK_S)]
    cancelled, ended = None, {}
    # The local reference runs side by side with the cluster run (the cluster run mostly waits on the scheduler),
    # which keeps the test short; docs/performance.md has both timed one after the other.
    start = time.monotonic()
    with open(log_path, "w") as log, open(local_log, "w") as llog, contextlib.ExitStack() as stack:
        procs = {
            "slurm": subprocess.Popen(
                [str(c) for c in command], cwd=project, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                env=cluster.env(env_for({"MLFLOW_TRACKING_URI": uri} if uri else {"MEDTI_TRACKING": "0"}))),
            "local": subprocess.Popen(
                [str(BIN / "snakemake"), "--cores", CORES], cwd=local, stdout=llog, stderr=subprocess.STDOUT,
                start_new_session=True, env=env_for({"MEDTI_TRACKING": "0"})),
        }
        for proc in procs.values():  # stopped if the test fails or is interrupted (the cluster's teardown
            stack.callback(stop_group, proc)  # cancels their jobs)
        deadline = time.monotonic() + 1200
        while len(ended) < len(procs):
            if time.monotonic() > deadline:
                raise AssertionError(f"the runs took over 20 minutes; their logs: {log_path}, {local_log}")
            if cancelled is None and any(checkpoints.rglob("state.pt")):
                running = [j for j in cluster.queue() if j["State"] == "RUNNING" and j["Comment"] == target]
                if running:
                    cluster.run("scancel", running[0]["JobID"])
                    cancelled = running[0]["JobID"]
            for name, proc in procs.items():
                if name not in ended and proc.poll() is not None:
                    ended[name] = time.monotonic() - start
            time.sleep(0.3)
    assert procs["local"].returncode == 0, f"the local run failed:\n{local_log.read_text()[-6000:]}"
    log_text = log_path.read_text()
    assert procs["slurm"].returncode == 0, f"snakemake --profile {PROFILE} failed:\n{log_text[-6000:]}"
    run_id = re.search(r"SLURM run ID: (\S+)", log_text).group(1)
    jobs = [j for j in cluster.jobs() if j["JobName"] == run_id]
    overhead = timeline(log_text, jobs, project)
    pytestconfig.medti_timings += [
        f"reduced default ({MODALITY}, {sum(plan.values()) - 1} jobs) through snakemake --cores {CORES}: "
        f"{ended['local']:.0f} s (side by side with the next)",
        f"the same through the local SLURM cluster (--profile {PROFILE}, one job cancelled and retried, "
        f"status checks from {STATUS_CHECK_S} s): {ended['slurm']:.0f} s",
        f"SLURM overhead per job: {summarise(overhead)}",
    ]
    return SimpleNamespace(project=project, local=local, plan=plan, jobs=jobs, cancelled=cancelled,
                           log=log_text, cluster=cluster, shared_cache=shared_cache, remote=remote,
                           tracking_uri=uri, no_server=no_server, base=base)


# --- tests ------------------------------------------------------------------------------------------------

def rule_of(comment: str, rules) -> str:
    """The rule of a job from the comment the plugin gives it (rule_<name>[_wildcards_<values>])."""
    m = re.match(rf"^rule_({'|'.join(sorted(rules, key=len, reverse=True))})(?:_wildcards_.*)?$", comment)
    assert m, comment
    return m.group(1)


def test_every_job_went_through_sbatch_one_per_snakemake_job(runs):
    profile = yaml.safe_load((runs.project / PROFILE / "config.yaml").read_text())
    gpu_rules = {rule for rule, res in profile["set-resources"].items() if (res or {}).get("gpu")}
    submitted = [j for j in runs.jobs]
    counts: dict[str, int] = {}
    for job in submitted:
        rule = rule_of(job["Comment"], runs.plan)
        counts[rule] = counts.get(rule, 0) + 1
        # the profile's partitions and the test cluster's account, as slurmdbd recorded them
        assert job["Partition"] == ("gpu" if rule in gpu_rules else "cpu"), job
        assert job["Account"] == slurm_support.ACCOUNT, job
    expected = {rule: n for rule, n in runs.plan.items() if rule != "all"}  # `all` has no command: not submitted
    expected["train_embedding"] += 1  # the cancelled job and its retry
    assert counts == expected, (counts, expected)
    states = sorted(j["State"] for j in submitted)
    assert states.count("COMPLETED") == len(submitted) - 1 and any(s.startswith("CANCELLED") for s in states), states
    assert runs.log.count("has been submitted with SLURM jobid") == len(submitted)


def test_the_cancelled_job_was_retried_and_resumed_from_its_checkpoint(runs):
    assert runs.cancelled, "the embedding job finished before it could be cancelled past a checkpoint"
    target = f"rule_train_embedding_wildcards_{MODALITY}_{KILLED_CLASS}"
    attempts = sorted((j for j in runs.jobs if j["Comment"] == target), key=lambda j: int(j["JobIDRaw"]))
    assert [j["JobIDRaw"] for j in attempts][0] == runs.cancelled
    assert attempts[0]["State"].startswith("CANCELLED") and attempts[1]["State"] == "COMPLETED", attempts
    log = (runs.project / "logs" / "train_embedding" / MODALITY / f"{KILLED_CLASS}.log").read_text()
    assert re.search(r"resuming from the checkpoint at step \d+", log), log[-2000:]
    assert not list((runs.project / ".medti" / "checkpoints").rglob("state.pt"))  # removed once finished


def test_the_cluster_run_ends_with_the_local_runs_embeddings_and_report(runs):
    import torch
    from safetensors.torch import load_file

    cluster_files, local_files = embedding_files(runs.project), embedding_files(runs.local)
    assert sorted(cluster_files) == sorted(local_files) and len(cluster_files) == 2, sorted(cluster_files)
    for name, path in cluster_files.items():
        ours, theirs = load_file(str(path)), load_file(str(local_files[name]))
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{name}: {key} differs from the local run's"
    report, local_report = runs.project / "results" / "report", runs.local / "results" / "report"
    assert json.loads((report / "summary.json").read_text()) == json.loads((local_report / "summary.json").read_text())
    assert auc_table((report / "report.md").read_text()) == auc_table((local_report / "report.md").read_text())
    metrics = f"results/evaluate/{MODALITY}.metrics.json"
    assert json.loads((runs.project / metrics).read_text()) == json.loads((runs.local / metrics).read_text())


def test_dvc_shared_cache_team_remote_and_fresh_clones(runs):
    project = runs.project
    assert "Data and pipelines are up to date" in run([BIN / "dvc", "status"], project).stdout
    # the run's outputs went into the shared cache, group-writable with set-group-id folders (cache.shared group)
    objects = [p for p in (runs.shared_cache / "files").rglob("*") if p.is_file()]
    assert objects and not (project / ".dvc" / "cache").exists()
    folder_mode = (runs.shared_cache / "files" / "md5").stat().st_mode
    assert folder_mode & 0o2070 == 0o2070, oct(folder_mode)
    git("add", "dvc.lock", cwd=project)
    git("commit", "-qm", "embeddings from the cluster run", cwd=project)
    run([BIN / "dvc", "push"], project)
    wanted = {name: sha256(path) for name, path in embedding_files(project).items()}

    # a colleague elsewhere: a fresh clone with a cache of its own pulls the embeddings from the team remote
    offsite = runs.base / "clone-offsite"
    run(["git", "clone", "-q", str(project), str(offsite)], runs.base)
    run([BIN / "dvc", "cache", "dir", "--local", str(offsite / ".dvc" / "cache")], offsite)
    run([BIN / "dvc", "pull", "train_embedding"], offsite)
    got = embedding_files(offsite)
    assert {name: sha256(path) for name, path in got.items()} == wanted
    assert not any(path.is_symlink() for path in got.values())

    # on the cluster: a fresh clone links them from the shared cache (nothing to download)
    onsite = runs.base / "clone-onsite"
    run(["git", "clone", "-q", str(project), str(onsite)], runs.base)
    run([BIN / "dvc", "config", "--local", "cache.type", "symlink"], onsite)
    run([BIN / "dvc", "pull", "train_embedding"], onsite)
    got = embedding_files(onsite)
    assert {name: sha256(path) for name, path in got.items()} == wanted
    for path in got.values():
        assert path.is_symlink() and path.resolve().is_relative_to(runs.shared_cache.resolve()), path


def test_every_job_logged_to_the_tracking_server_and_no_sqlite_file_was_written(runs):
    if runs.tracking_uri is None:
        pytest.skip(f"no MLflow tracking server: {runs.no_server}")
    from mlflow.tracking import MlflowClient

    assert not (runs.project / "mlflow.db").exists() and not (runs.project / "mlruns").exists()
    client = MlflowClient(runs.tracking_uri)
    exp = client.get_experiment_by_name("medti")
    assert exp is not None
    by_stage: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        by_stage.setdefault(r.data.tags.get("stage"), []).append(r)
    finished = {stage: sum(r.info.status == "FINISHED" for r in rs) for stage, rs in by_stage.items()}
    assert finished.get("train-embedding") == runs.plan["train_embedding"], finished
    assert finished.get("train-classifier") == runs.plan["train_classifier"], finished
    embedding_run = next(r for r in by_stage["train-embedding"] if r.info.status == "FINISHED")
    assert client.get_metric_history(embedding_run.info.run_id, "loss")


def test_without_root_or_the_packages_the_cluster_says_why_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = slurm_support.unavailable()
    assert reason and "\n" not in reason and "not root" in reason
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM client commands (the daemons' /usr/sbin is searched too)
    reason = slurm_support.unavailable()
    assert reason and "\n" not in reason and "sbatch" in reason and "install-system-packages.sh" in reason
