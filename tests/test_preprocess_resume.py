"""A killed `medti prepare` resumes: a rerun with the same settings processes only the inputs the killed run
had not finished, and writes the same dataset, byte for byte, as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medti.preprocess.dicom import DicomSource
from medti.preprocess.resume import resume_folder
from preprocess_support import run_prepare

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
    assert len(list((resume_folder(tmp_path / "resumed") / "staging").iterdir())) == 7

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
    """The real thing: a `prepare` process killed with SIGKILL mid-run (its inputs slowed down so that the kill
    lands in the middle), then the same call again."""
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
from preprocess_support import run_prepare
from pathlib import Path
run_prepare(Path({str(tmp_path)!r}), {source(phantoms)!r}, {CLASSES!r}, out="killed", size=32)
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
