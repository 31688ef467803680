"""The ingestion benchmark's inputs are valid, distinct DICOMs, and the benchmark itself runs end to end."""

from __future__ import annotations

import re

import pydicom
import pytest
from preprocess_support import manifest, run_prepare

from medti.bench.ingest import CLASSES, bench_ingest, write_bench_dicoms
from medti.cli import main
from medti.errors import ConfigError


def test_the_fast_writer_makes_valid_distinct_dicoms_that_ingest(tmp_path):
    folder = tmp_path / "dicom"
    write_bench_dicoms(folder, 30, 16, per_subject=3)
    files = sorted(folder.rglob("*.dcm"))
    assert len(files) == 30
    headers = [pydicom.dcmread(f) for f in files]  # no force: proper Part 10 files
    assert len({h.SOPInstanceUID for h in headers}) == 30 and all(h.SOPInstanceUID.is_valid for h in headers)
    assert len({h.PatientID for h in headers}) == 10
    assert {h.pixel_array.shape for h in headers} == {(16, 16)}
    assert len({h.PixelData for h in headers}) == 30
    run_prepare(tmp_path, {"type": "dicom", "path": str(folder),
                           "labels": {"csv": str(folder / "labels.csv"), "key": "path"}}, classes=CLASSES, size=16)
    table = manifest(tmp_path / "out")
    assert len(table) == 30 and table.subject_id.nunique() == 10


@pytest.mark.slow
def test_the_benchmark_prints_its_figures(tmp_path, capsys):
    assert main(["bench", "ingest", "--files", "60", "--dicom-size", "16", "--size", "16", "--workers", "2",
                 "--dir", str(tmp_path),
                 "--json", str(tmp_path / "figures.json")]) == 0
    printed = capsys.readouterr().out
    assert "files/s" in printed and "peak memory" in printed and "60 images, 0 rejected" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["figures.json"]  # the data is removed afterwards


@pytest.mark.parametrize("settings, message", [({"size": 4}, "--size: 4 is less than the minimum of 8"),
                                               ({"files": 10}, "--files must be at least 6 x --per-subject")])
def test_bad_settings_fail_before_anything_is_written(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        bench_ingest(folder=tmp_path, **settings)
    assert not any(tmp_path.iterdir())
