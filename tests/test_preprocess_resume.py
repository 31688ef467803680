"""A killed or failed `medti prepare` resumes: a rerun with the same settings processes only the inputs the first
run had not finished (or that changed, or failed unexpectedly), and writes the same dataset, byte for byte, as
a run that was never interrupted. Other settings start afresh; two runs never share one output's journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from preprocess_support import rejects, run_prepare

from medti.preprocess.dicom import DicomSource
from medti.preprocess.resume import resume_folder

CLASSES = ("normal", "opacity")
PROCESS = DicomSource.process


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from medti.phantoms import generate_phantoms

    return generate_phantoms("chest_xray", tmp_path_factory.mktemp("src") / "chest", classes=list(CLASSES),
                             subjects_per_class=8, seed=3, size=48).out


def source(folder: Path) -> dict:
    return {"type": "dicom", "path": str(folder), "labels": {"csv": str(folder / "labels.csv"), "key": "path",
                                                               "column": "label"}}


def dataset(out: Path) -> dict[str, bytes]:
    """Every file of a prepared dataset, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


class Interrupt(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


def count_calls(monkeypatch, stop_after: int | None = None) -> list[str]:
    calls: list[str] = []

    def counted(self, relpath, ctx):
        if stop_after is not None and len(calls) == stop_after:
            raise Interrupt
        calls.append(relpath)
        return PROCESS(self, relpath, ctx)

    monkeypatch.setattr(DicomSource, "process", counted)
    return calls


def test_an_interrupted_run_resumes_with_only_the_unfinished_inputs(tmp_path, phantoms, monkeypatch, caplog):
    reference = run_prepare(tmp_path, source(phantoms), CLASSES, out="reference", size=32).out
    n_inputs = len(list(phantoms.glob("**/*.dcm")))

    first = count_calls(monkeypatch, stop_after=7)
    with pytest.raises(Interrupt):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="resumed", size=32)
    assert first and not (tmp_path / "resumed").exists()
    assert len(list(resume_folder(tmp_path / "resumed").glob("staging-*/*.png"))) == 7

    # one input changes while the run is down: it is read again, the other six are not
    changed = phantoms / first[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    second = count_calls(monkeypatch)
    with caplog.at_level("INFO", logger="medti.prepare"):
        result = run_prepare(tmp_path, source(phantoms), CLASSES, out="resumed", size=32)
    assert len(second) == n_inputs - 6 and first[0] in second and not set(first[1:]) & set(second)
    assert "6 of" in caplog.text and "already done" in caplog.text
    assert dataset(result.out) == dataset(reference)
    assert not resume_folder(result.out).exists()


def test_other_settings_start_afresh(tmp_path, phantoms, monkeypatch):
    count_calls(monkeypatch, stop_after=5)
    with pytest.raises(Interrupt):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    calls = count_calls(monkeypatch)
    result = run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=24)  # another image size
    assert len(calls) == len(list(phantoms.glob("**/*.dcm")))
    assert {png_size(p) for p in (result.out / "images").rglob("*.png")} == {(24, 24)}


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def test_a_sigkilled_prepare_resumes_to_the_same_dataset(tmp_path, phantoms):
    """The real thing: a `prepare` process with two workers killed with SIGKILL mid-run (its inputs slowed down
    so that the kill lands in the middle), then the same call again."""
    reference = run_prepare(tmp_path, source(phantoms), CLASSES, out="reference", size=32).out
    child = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from medti.preprocess.dicom import DicomSource
process = DicomSource.process
def slow(self, relpath, ctx):
    time.sleep(0.15)
    return process(self, relpath, ctx)
DicomSource.process = slow
from preprocess_support import rejects, run_prepare
from pathlib import Path
run_prepare(Path({str(tmp_path)!r}), {source(phantoms)!r}, {CLASSES!r}, out="killed", size=32, workers=2)
"""
    journal = resume_folder(tmp_path / "killed") / "journal.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) > 1 + 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the child ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(journal.read_text().splitlines()) - 1
    assert 5 < done < len(list(phantoms.glob("**/*.dcm")))
    assert not (tmp_path / "killed").exists()

    result = run_prepare(tmp_path, source(phantoms), CLASSES, out="killed", size=32)
    assert dataset(result.out) == dataset(reference)
    assert not resume_folder(result.out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".killed.")]  # no temporaries left


def test_the_journal_holds_no_header_value_or_source_path(tmp_path, phantoms, monkeypatch):
    import pydicom

    count_calls(monkeypatch, stop_after=4)
    with pytest.raises(Interrupt):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    text = (resume_folder(tmp_path / "out") / "journal.jsonl").read_text()
    header, *entries = [json.loads(line) for line in text.splitlines()]
    assert len(entries) == 4 and set(header) == {"medti_prepare_journal", "fingerprint"}
    for path in sorted(phantoms.glob("**/*.dcm"))[:20]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber"):
            value = str(ds.get(keyword, "") or "")
            assert len(value) < 6 or value not in text, keyword
    assert str(phantoms) not in text  # input paths are relative to the source, as in rejects.csv


def failing(monkeypatch, calls: list[str], errors: dict[str, BaseException], stop_after: int | None = None):
    """DicomSource.process that records its calls and raises ``errors[relpath]`` for the inputs named there."""

    def process(self, relpath, ctx):
        if stop_after is not None and len(calls) == stop_after:
            raise Interrupt
        calls.append(relpath)
        if relpath in errors:
            raise errors[relpath]
        return PROCESS(self, relpath, ctx)

    monkeypatch.setattr(DicomSource, "process", process)


def test_a_fail_fast_stop_keeps_its_progress_for_the_rerun(tmp_path, phantoms, monkeypatch):
    """`on_error: fail` stops at a bad input; once it is fixed, the rerun reads it and what was not done yet."""
    from medti.errors import InputError
    from medti.preprocess.records import Rejected

    names = sorted(p.relative_to(phantoms).as_posix() for p in phantoms.glob("**/*.dcm"))
    bad, calls = names[5], []
    failing(monkeypatch, calls, {bad: Rejected("not_dicom", "not a DICOM file")})
    with pytest.raises(InputError, match="on_error is fail"):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32, on_error="fail")
    assert calls == names[:6] and resume_folder(tmp_path / "out").is_dir() and not (tmp_path / "out").exists()

    rerun = count_calls(monkeypatch)  # the file is replaced by a good one
    os.utime(phantoms / bad, ns=((phantoms / bad).stat().st_atime_ns, (phantoms / bad).stat().st_mtime_ns + 10**9))
    run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32, on_error="fail")
    assert sorted(rerun) == names[5:]


def test_an_unexpected_error_is_retried_and_a_reject_is_replayed(tmp_path, phantoms, monkeypatch):
    """An input that failed with an unexpected error (a flaky share) is read again by the rerun; one rejected
    for a reason of its own is not: its reject is replayed."""
    from medti.preprocess.records import Rejected

    names = sorted(p.relative_to(phantoms).as_posix() for p in phantoms.glob("**/*.dcm"))
    flaky, bad = names[2], names[5]
    errors = {flaky: OSError("the share went away"), bad: Rejected("not_dicom", "not a DICOM file")}
    failing(monkeypatch, [], errors, stop_after=12)
    with pytest.raises(Interrupt):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    calls = []
    failing(monkeypatch, calls, {bad: AssertionError("a replayed input is not read again")})
    result = run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    assert sorted(calls) == sorted([flaky, *names[12:]])
    listed = rejects(result.out, phantoms)
    assert listed.drop(columns="input_id").to_dict("records") == [
        {"path": bad, "kind": "not_dicom", "reason": "not a DICOM file"}]  # replayed from the journal


def test_a_cut_off_journal_line_is_dropped_and_the_run_goes_on(tmp_path, phantoms, monkeypatch):
    count_calls(monkeypatch, stop_after=6)
    with pytest.raises(Interrupt):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    journal = resume_folder(tmp_path / "out") / "journal.jsonl"
    with open(journal, "a") as fh:
        fh.write('{"key": "a line cut by the kill", "stam')
    count_calls(monkeypatch, stop_after=3)  # interrupted again: its entries follow the dropped fragment
    with pytest.raises(Interrupt):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 6 + 3 and all(json.loads(line) for line in lines)
    calls = count_calls(monkeypatch)
    run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    assert len(calls) == len(list(phantoms.glob("**/*.dcm"))) - 9


def test_two_runs_never_write_one_output_at_once(tmp_path):
    from medti.errors import InputError
    from medti.preprocess.resume import PrepareJournal

    first = PrepareJournal(tmp_path / "out", {"a": 1}, b"s" * 16)
    first.open()
    with pytest.raises(InputError, match="another medti prepare is writing this output now"):
        PrepareJournal(tmp_path / "out", {"a": 1}, b"s" * 16).open()
    first.remove()
    assert not resume_folder(tmp_path / "out").exists()


def test_a_second_prepare_of_one_output_stops_before_touching_the_first_ones_files(tmp_path, phantoms):
    from medti.errors import InputError
    from medti.preprocess.resume import PrepareJournal

    running = PrepareJournal(tmp_path / "out", {"the": "first run"}, b"s" * 16)
    running.open()
    writing = tmp_path / ".out.k2j4x9ab.tmp"  # the first run's output, mid-write
    writing.mkdir()
    with pytest.raises(InputError, match="another medti prepare is writing this output now"):
        run_prepare(tmp_path, source(phantoms), CLASSES, out="out", size=32)
    assert writing.is_dir() and running.staging.is_dir()
    running.remove()
