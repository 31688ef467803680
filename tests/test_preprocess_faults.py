"""Resource faults in `medti prepare` (issue 15): a write that fails (no space, I/O error, read-only output) is
the machine's fault, never an input's: the run stops with one line naming the folder and the cause, keeps the
staged images and the journal, says truthfully how many inputs it kept, exits non-zero, and the rerun resumes."""

from __future__ import annotations

import errno
import logging
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from preprocess_support import run_prepare

from medti.cli import main
from medti.errors import ResourceError
from medti.preprocess.dicom import DicomSource
from medti.preprocess.resume import resume_folder

CLASSES = ("normal", "opacity")
PROCESS = DicomSource.process


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from medti.phantoms import generate_phantoms

    return generate_phantoms("chest_xray", tmp_path_factory.mktemp("src") / "chest", classes=list(CLASSES),
                             subjects_per_class=10, seed=4, size=48).out


def source(folder: Path) -> dict:
    return {"type": "dicom", "path": str(folder), "labels": {"csv": str(folder / "labels.csv"), "key": "path"}}


def dataset(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def count_calls(monkeypatch) -> list[str]:
    calls: list[str] = []

    def counted(self, relpath, ctx):
        calls.append(relpath)
        return PROCESS(self, relpath, ctx)

    monkeypatch.setattr(DicomSource, "process", counted)
    return calls


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS])
def test_a_staged_image_that_cannot_be_written_stops_the_run_and_is_no_reject(tmp_path, phantoms, monkeypatch,
                                                                              caplog, code):
    from medti.preprocess import imaging

    reference = run_prepare(tmp_path, source(phantoms), CLASSES, out="reference", size=32).out
    save_png, written = imaging.save_png, []

    def failing(img, path):
        if len(written) == 7:
            raise OSError(code, "simulated")
        written.append(path)
        save_png(img, path)

    monkeypatch.setattr(imaging, "save_png", failing)
    with caplog.at_level(logging.INFO, logger="medti.prepare"), pytest.raises(ResourceError) as err:
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}: cannot write the output of prepare: simulated "
                                                      f"({errno.errorcode[code]}); 7 inputs done so far are kept")
    assert "Nothing was rejected for it" in message
    assert "7 inputs done so far are kept" in caplog.text  # the log says what is on disk, no more
    assert not (tmp_path / "out").exists()
    journal = resume_folder(tmp_path / "out") / "journal.jsonl"
    assert len(journal.read_text().splitlines()) == 1 + 7
    monkeypatch.setattr(imaging, "save_png", save_png)
    calls = count_calls(monkeypatch)
    result = run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    assert len(calls) == len(list(phantoms.glob("**/*.dcm"))) - 7  # the rerun resumed
    assert dataset(result.out) == dataset(reference)


def test_a_full_disk_while_finishing_keeps_every_staged_image_for_the_rerun(tmp_path, phantoms, monkeypatch):
    from medti.preprocess import pipeline

    reference = run_prepare(tmp_path, source(phantoms), CLASSES, out="reference", size=32).out

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import medti.manifest

    monkeypatch.setattr(medti.manifest, "write_manifest", full)
    n = len(list(phantoms.glob("**/*.dcm")))
    with pytest.raises(ResourceError, match=f"{n} inputs done so far are kept"):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    monkeypatch.undo()
    calls = count_calls(monkeypatch)
    result = run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    assert calls == [] and dataset(result.out) == dataset(reference)  # nothing read again
    assert pipeline  # imported for its side effects only


def test_the_journal_failing_to_write_is_a_resource_error_too(tmp_path, phantoms, monkeypatch):
    from medti.preprocess import resume

    add = resume.PrepareJournal.add
    count = []

    def failing(self, *args):
        if len(count) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        count.append(1)
        add(self, *args)

    monkeypatch.setattr(resume.PrepareJournal, "add", failing)
    with pytest.raises(ResourceError, match=r"\(ENOSPC\); 5 inputs done so far are kept"):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)


# -- the real thing: a small tmpfs ----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    tag = f"medti-test-{uuid.uuid4().hex[:8]}"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", tag, str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_tmpfs_stops_prepare_and_the_rerun_resumes_once_there_is_space(tmp_path, phantoms, small_disk,
                                                                             monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDTI_TRACKING", "0")
    monkeypatch.setenv("MEDTI_SALT_FILE", str(tmp_path / ".medti" / "salt"))
    args = ["prepare", "--source-type", "dicom", "--input", str(phantoms), "--labels", str(phantoms / "labels.csv"),
            "--label-key", "path", "--classes", ",".join(CLASSES), "--size", "64", "--workers", "2"]
    reference = tmp_path / "reference"
    assert main([*args, "--out", str(reference)]) == 0
    capfd.readouterr()
    out = small_disk / "prepared"
    rc = main([*args, "--out", str(out)])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("medti: error:")]
    assert rc == 2 and len(errors) == 1, err[-2000:]
    match = re.search(r"cannot write the output of prepare: (.*?) \((ENOSPC)\); (\d+) inputs done so far are kept",
                      errors[0])
    assert match and errors[0].startswith(f"medti: error: {small_disk}: "), errors[0]
    kept = int(match.group(3))
    total = len(list(phantoms.glob("**/*.dcm")))
    assert 0 < kept < total and "Traceback" not in err
    journal = resume_folder(out) / "journal.jsonl"
    assert len(journal.read_text().splitlines()) - 1 >= kept
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)  # space again
    calls = count_calls(monkeypatch)
    assert main([*args, "--out", str(out), "--workers", "1"]) == 0
    assert len(calls) <= total - kept  # only what was not kept is read again
    assert dataset(out).keys() == dataset(reference).keys()
    assert dataset(out)["manifest.csv"] == dataset(reference)["manifest.csv"]
