"""Generation under interruptions and parallel runs: the staged resume state lives beside the output (so a
workflow manager deleting the incomplete output loses no drawn image), one writer per output, and a rerun with
other settings never mixes images. The last test kills a real Snakemake run mid-generate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import medti.generate.synthetic as synthetic
from medti.atomic import atomic_dir, output_lock
from medti.cli import main as medti_main
from medti.errors import InputError
from medti.generate.synthetic import ClassSpec, SetSpec, generate_set, staging_dir
from medti.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RES, STEPS = 32, 2


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from medti.models.loading import load_base_model

    return load_base_model(str(tiny_model_dir))


def _spec(**kw) -> SetSpec:
    classes = [ClassSpec("a", 0, ["a chest x-ray"]), ClassSpec("b", 1, ["a brain mri"])]
    return SetSpec(**(dict(modality="t", classes=classes, n_per_class=4, base_model="tiny", text_encoder_hash="x",
                           steps=STEPS, resolution=RES, seed=3) | kw))


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the n-th saved image runs (no cleanup code catches it)."""


def _kill_after(monkeypatch, n: int) -> None:
    save = synthetic.save_png
    done = []

    def save_then_die(*args, **kwargs):
        if len(done) == n:
            raise Killed
        save(*args, **kwargs)
        done.append(1)

    monkeypatch.setattr(synthetic, "save_png", save_then_die)


def _images(folder: Path) -> list[Path]:
    """The finished images (not the hidden temporaries of images being written)."""
    return sorted(p for p in folder.glob("*/*.png") if not p.name.startswith("."))


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in _images(folder)}


def test_a_killed_run_keeps_its_images_outside_the_output_and_the_rerun_draws_only_the_rest(model, tmp_path,
                                                                                            monkeypatch):
    clean = generate_set(model, _spec(), tmp_path / "clean", batch_size=2)
    out = tmp_path / "sets" / "t"
    _kill_after(monkeypatch, 3)
    with pytest.raises(Killed):
        generate_set(model, _spec(), out, batch_size=2)
    monkeypatch.undo()
    stage = staging_dir(out)
    assert stage == tmp_path / "sets" / ".medti-partial" / "t"
    assert not out.exists() and len(_pngs(stage)) == 3  # nothing in the declared output; the staged images kept
    assert (stage.parent / ".gitignore").read_text().endswith("*\n")
    again = generate_set(model, _spec(), out, batch_size=2)
    assert (again.generated, again.skipped) == (8 - 3, 3)
    assert _pngs(out) == _pngs(clean.out)  # the same set as one uninterrupted run
    assert read_manifest(out / "manifest.csv", absolute=False).equals(
        read_manifest(clean.out / "manifest.csv", absolute=False))
    assert json.loads((out / "generate.json").read_text())["stats"]["generated"] == 5
    assert sorted(p.name for p in (tmp_path / "sets").iterdir()) == ["t"]  # no staging folder, no lock left

    # a finished set with the same settings is taken over: more images per class draw only the new ones
    more = generate_set(model, _spec(n_per_class=5), out, batch_size=2)
    assert (more.generated, more.skipped) == (2, 8)
    # ... and fewer leave exactly what the manifest lists
    fewer = generate_set(model, _spec(n_per_class=2), out, batch_size=2)
    assert fewer.generated == 0 and len(_pngs(out)) == 4 == len(read_manifest(out / "manifest.csv"))


def test_a_rerun_with_other_settings_discards_the_staged_images_and_names_the_difference(model, tmp_path,
                                                                                        monkeypatch, caplog):
    out = tmp_path / "t"
    _kill_after(monkeypatch, 3)
    with pytest.raises(Killed):
        generate_set(model, _spec(steps=2), out, batch_size=2)
    monkeypatch.undo()
    with caplog.at_level("WARNING", logger="medti.generate.synthetic"):
        result = generate_set(model, _spec(steps=3), out, batch_size=2)
    assert result.generated == 8  # nothing drawn with 2 steps is kept
    warning = next(r.getMessage() for r in caplog.records if "discarding" in r.getMessage())
    assert "discarding 3 images staged" in warning and "(steps, sampler)" in warning
    assert set(read_manifest(out / "manifest.csv")["steps"]) == {3}
    assert _pngs(out) == _pngs(generate_set(model, _spec(steps=3), tmp_path / "ref", batch_size=2).out)
    # a finished set with other settings is replaced whole, never topped up
    with caplog.at_level("WARNING", logger="medti.generate.synthetic"):
        redo = generate_set(model, _spec(steps=3, guidance=2.0), out, batch_size=2)
    assert redo.generated == 8 and set(read_manifest(out / "manifest.csv")["guidance"]) == {2.0}
    assert any("replaced when this run finishes" in r.getMessage() and "guidance" in r.getMessage()
               for r in caplog.records)


def test_an_output_holding_other_files_is_refused_before_any_work(model, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="mine: holds notes.txt, which is not part of a medti synthetic set"):
        generate_set(model, _spec(), out, batch_size=2)
    assert (out / "notes.txt").read_text() == "keep me" and not staging_dir(out).exists()


HOLD = """\
import sys, time
from medti.atomic import output_lock
with output_lock(sys.argv[1], shared=len(sys.argv) > 2):
    print("held", flush=True)
    time.sleep(60)
"""


def _hold(path: Path, shared: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)] + (["shared"] if shared else []),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_one_writer_per_output(tmp_path, capsys):
    out = tmp_path / "synthetic" / "chest_xray"
    holder = _hold(out)
    try:
        started = time.monotonic()
        rc = medti_main(["generate", "--base-model", "tiny", "--prompt", "a chest x-ray", "--n", "1",
                         "--steps", "1", "--resolution", str(RES), "--out", str(out)])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "medti: error:" in ln]
        assert rc == 2 and len(lines) == 1, err
        assert f"{out}: another medti process (pid {holder.pid}) is generating this synthetic set now" in lines[0]
        assert time.monotonic() - started < 30  # at once, not after waiting
        assert not out.exists() and not staging_dir(out).exists()
        # every stage that writes its folder through atomic_dir is locked the same way
        with pytest.raises(InputError, match="chest_xray: another medti process .* is writing this output now"):
            with atomic_dir(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with atomic_dir(out) as tmp:  # a killed holder's lock is free again (the kernel released it)
        (tmp / "x").write_text("x")
        with output_lock(out):  # re-entered by its own process
            pass
    assert (out / "x").is_file() and not (tmp_path / "synthetic" / ".chest_xray.lock").exists()


def test_interpolate_is_locked_and_its_figures_appear_together(tmp_path, capsys):
    out = tmp_path / "interp"
    argv = ["interpolate", "--base-model", "tiny", "--from", "a chest x-ray", "--to", "a brain mri", "--weights",
            "0,1", "--n", "1", "--steps", "1", "--resolution", str(RES), "--out", str(out)]
    holder = _hold(out)
    try:
        assert medti_main(argv) == 2
        assert "interp: another medti process" in capsys.readouterr().err and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert medti_main(argv) == 0 and (out / "interpolate.csv").is_file() and (out / "sweep.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interp"]  # no temporary, no lock left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert medti_main(argv[:-1] + [str(tmp_path / "mine")]) == 2
    assert "not an interpolation output" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").is_file()


def test_shards_share_their_set_and_exclude_a_whole_set_run(model, tmp_path):
    out = tmp_path / "s"
    sharer = _hold(out, shared=True)  # a shard of this set at work
    try:
        generate_set(model, _spec(shard=(2, 2)), out, batch_size=2)  # another shard runs beside it
        with pytest.raises(InputError, match="another medti process is generating this synthetic set now"):
            generate_set(model, _spec(), out, batch_size=2)
        with pytest.raises(InputError, match="another medti process is writing this synthetic set now"):
            synthetic.merge_shards(out)
    finally:
        sharer.kill()
        sharer.wait()
    shard = _hold(tmp_path / "s.shard-1-of-2")
    try:
        with pytest.raises(InputError, match="generating shard 1/2 of this set"):
            generate_set(model, _spec(shard=(1, 2)), out, batch_size=2)
    finally:
        shard.kill()
        shard.wait()


# -- through Snakemake ------------------------------------------------------------------------------------------
def _snakemake_project(tmp_path: Path, n_per_class: int) -> Path:
    from medti.config import class_token
    from medti.embeddings import Embedding, save_embedding

    project = tmp_path / "project"
    project.mkdir()
    for name in ("Snakefile", "params.yaml"):
        (project / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "workflow"), str(project / "workflow")], check=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["generate"].update(n_per_class=n_per_class, steps=8, batch_size=2, resolution=RES)
    params["base_model"]["id"] = "tiny"  # built offline in the test cache
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for i, cls in enumerate(("normal", "opacity")):
        vectors = torch.randn((2, 64), generator=torch.Generator().manual_seed(i))
        save_embedding(Embedding(class_token("chest_xray", cls), vectors),
                       project / "embeddings" / "chest_xray" / cls / "full.safetensors")  # the main variant
    return project


def _snakemake(project: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MEDTI_TRACKING": "0"}
    # --allowed-rules: the embeddings are given, not made (it takes several values: keep it last)
    return subprocess.Popen([str(BIN / "snakemake"), "data/synthetic/chest_xray/full", "--cores", "1", *args,
                             "--allowed-rules", "generate"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_snakemake_killed_mid_generate_then_rerun_incomplete_draws_only_the_missing_images(tmp_path):
    n_per_class = 20
    project = _snakemake_project(tmp_path, n_per_class)
    out = project / "data" / "synthetic" / "chest_xray" / "full"
    stage = staging_dir(out)
    proc = _snakemake(project)
    deadline = time.monotonic() + 240
    while len(_images(stage)) < 6:  # some images drawn, most not
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "generate drew no images in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: Snakemake and medti alike
    proc.wait()
    proc.stdout.close()
    staged = len(_images(stage))
    assert 6 <= staged < 2 * n_per_class and not (out / "manifest.csv").exists()

    unlock = _snakemake(project, "--unlock")  # a killed Snakemake leaves its own lock, as a user finds it
    assert unlock.wait() == 0, unlock.stdout.read()[-3000:]
    unlock.stdout.close()
    # The output never existed unfinished, so a plain rerun would do; --rerun-incomplete (which deletes an
    # incomplete output) is what a user told to use it runs, and it must not cost the drawn images either.
    rerun = _snakemake(project, "--rerun-incomplete")
    log = rerun.communicate()[0]
    assert rerun.returncode == 0, log[-3000:]
    stats = json.loads((out / "generate.json").read_text())["stats"]
    assert stats == {**stats, "images": 2 * n_per_class, "skipped": staged, "generated": 2 * n_per_class - staged}
    job_log = (project / "logs" / "generate" / "chest_xray" / "full.log").read_text()
    assert f"resuming: {staged} of {2 * n_per_class} images are already drawn" in job_log
    assert len(read_manifest(out / "manifest.csv")) == 2 * n_per_class == len(_images(out))
    assert not stage.parent.exists()
