"""Bad input: every per-file problem is skipped with a one-line reason in rejects.csv (or fails the run with
on_error: fail), an empty result is an error, and configuration problems fail at once, before any work."""

from __future__ import annotations

import json
import logging

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from preprocess_support import copy_pydicom_files, manifest, pydicom_file, rejects, run_prepare, write_labels

from medti.cli import main
from medti.errors import ConfigError, InputError

GOOD = ["CT_small.dcm", "MR_small.dcm", "JPGExtended.dcm", "SC_rgb_rle.dcm", "examples_rgb_color.dcm",
        "examples_overlay.dcm"]
GOOD_CLASS = {"CT_small.dcm": "a", "MR_small.dcm": "a", "JPGExtended.dcm": "a",
              "SC_rgb_rle.dcm": "b", "examples_rgb_color.dcm": "b", "examples_overlay.dcm": "b"}


def bad_dicoms(folder):
    """One file per DICOM problem, named after the reject kind it must get."""
    ct = pydicom_file("CT_small.dcm").read_bytes()
    (folder / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(3000))
    (folder / "truncated_header.dcm").write_bytes(ct[:690])  # cut inside an element
    copy_pydicom_files(["MR_truncated.dcm", "rtplan.dcm"], folder)  # pixel data cut short; no pixel data
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    del ds.PixelData
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.save_as(folder / "pixels_removed.dcm")
    ds = pydicom.dcmread(pydicom_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K: no decoder installed
    ds.save_as(folder / "htj2k.dcm")
    ds = pydicom.dcmread(pydicom_file("SC_rgb_rle.dcm"))
    ds.decompress()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, "ARGB"
    ds.PixelData = np.zeros((ds.Rows, ds.Columns, 4), np.uint8).tobytes()
    ds.save_as(folder / "four_channels.dcm")
    (folder / "notes.txt").write_text("not an image")
    (folder / "meta.json").write_text(json.dumps({"a": 1}))
    copy_pydicom_files(["MR_small_RLE.dcm"], folder)          # a good image the labels CSV does not name
    copy_pydicom_files(["MR_small_bigendian.dcm"], folder)    # labelled with a class that does not exist
    return {"corrupt.dcm": "unreadable", "truncated_header.dcm": "unreadable", "MR_truncated.dcm": "unreadable",
            "rtplan.dcm": "no_pixels", "pixels_removed.dcm": "no_pixels", "htj2k.dcm": "unsupported_syntax",
            "four_channels.dcm": "bad_channels", "notes.txt": "not_dicom", "meta.json": "not_dicom",
            "MR_small_RLE.dcm": "no_label", "MR_small_bigendian.dcm": "unknown_label"}


@pytest.fixture
def messy(tmp_path):
    src = copy_pydicom_files(GOOD, tmp_path / "src")
    expected = bad_dicoms(src)
    rows = [(n, GOOD_CLASS[n]) for n in GOOD] + [(n, "a") for n in expected if n.endswith(".dcm")
                                                   and n not in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm")]
    rows += [("MR_small_bigendian.dcm", "tumour"), ("gone/missing.dcm", "b")]
    labels = write_labels(src / "labels.csv", "path", rows)
    expected[f"labels.csv#line{len(rows) + 1}"] = "label_without_image"  # the last row (after the header line)
    source = {"type": "dicom", "path": str(src), "labels": {"csv": str(labels), "key": "path"}, "subject_from": "file"}
    return source, expected


def test_every_bad_input_is_skipped_with_a_one_line_reason(tmp_path, messy, caplog):
    source, expected = messy
    with caplog.at_level(logging.INFO, logger="medti.prepare"):
        result = run_prepare(tmp_path, source, workers=2)
    out = tmp_path / "out"
    listed = rejects(out, tmp_path / "src")
    assert dict(zip(listed.path, listed.kind)) == expected
    assert all(len(i) == 16 for i in listed.input_id)  # rejects.csv names inputs by salted ids only
    assert not any(name.split("#")[0] in (out / "rejects.csv").read_text() for name in expected)
    assert all(reason and "\n" not in reason for reason in listed.reason)
    reasons = dict(zip(listed.path, listed.reason))
    assert "High-Throughput JPEG 2000" in reasons["htj2k.dcm"]
    assert reasons["rtplan.dcm"] == "no pixel data (a RT Plan Storage object)"
    assert reasons["four_channels.dcm"].startswith("4 samples per pixel")
    assert "the label is not a class" in reasons["MR_small_bigendian.dcm"]  # the raw value is not shown
    orphan = next(path for path, kind in expected.items() if kind == "label_without_image")
    assert reasons[orphan] == f"labels file line {orphan.split('#line')[1]}: no image has this path"
    assert len(manifest(out)) == len(GOOD) == result.images and result.rejected == len(expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected_by_kind"]["unreadable"] == 3 and summary["rejected_by_kind"]["not_dicom"] == 2
    assert f"{len(expected)} rejected (" in caplog.text and "unreadable 3" in caplog.text


def test_on_error_fail_stops_at_the_first_bad_file_and_writes_nothing(tmp_path, messy):
    source, expected = messy
    with pytest.raises(InputError) as err:
        run_prepare(tmp_path, source, on_error="fail")
    message = str(err.value)
    assert "\n" not in message and "(prepare.on_error is fail;" in message
    assert not any(name in message for name in expected) and str(tmp_path) not in message
    from medti.deid import read_input_paths

    (shown,) = err.value.input_paths  # the input's id, which the private lookup maps to its path
    assert shown in message and read_input_paths(tmp_path)[shown].startswith(str(tmp_path / "src"))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.glob(".out*")] in ([], [".out.resume"])  # at most the journal of a rerun


def test_nothing_usable_is_an_error_that_counts_the_rejects(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    copy_pydicom_files(["rtplan.dcm"], src)
    labels = write_labels(tmp_path / "labels.csv", "path", [("rtplan.dcm", "a")])
    with pytest.raises(InputError) as err:
        run_prepare(tmp_path, {"type": "dicom", "path": str(src), "labels": {"csv": str(labels), "key": "path"}})
    message = str(err.value)
    assert message.startswith("source.path: no usable images (2 inputs; rejected: not_dicom 1, no_pixels 1; "
                              "e.g. input ") and message.endswith(": not a DICOM file)")
    assert str(src) not in message and "a.txt" not in message
    assert not (tmp_path / "out").exists()


def test_a_class_with_no_usable_image_is_an_error(tmp_path):
    src = copy_pydicom_files(GOOD, tmp_path / "src")
    labels = write_labels(tmp_path / "labels.csv", "path", [(n, "a") for n in GOOD])
    with pytest.raises(InputError, match="no usable images of class 'b' \\(a 6, b 0\\)"):
        run_prepare(tmp_path, {"type": "dicom", "path": str(src), "labels": {"csv": str(labels), "key": "path"}})


def test_wrong_channel_counts_in_volumes_and_images(tmp_path):
    vols = tmp_path / "vols"
    vols.mkdir()
    for case in range(6):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 16, 16), case, np.float32)), str(vols / f"c{case}.mha"))
    vector = sitk.GetImageFromArray(np.zeros((4, 16, 16, 2), np.float32), isVector=True)
    sitk.WriteImage(vector, str(vols / "two_components.mha"))
    labels = write_labels(tmp_path / "labels.csv", "path",
                          [(f"c{c}.mha", "ab"[c % 2]) for c in range(6)] + [("two_components.mha", "a")])
    run_prepare(tmp_path, {"type": "volume", "path": str(vols), "labels": {"csv": str(labels), "key": "path"},
                           "subject_from": "case"}, size=8)
    listed = rejects(tmp_path / "out", vols).drop(columns="input_id")
    assert listed.to_dict("records") == [{"path": "two_components.mha", "kind": "bad_channels",
                                          "reason": "2 components per voxel; expected 1 (one sequence per file)"}]


# -- configuration problems: at once, before any input is read ----------------------------------------------------
@pytest.mark.parametrize("change,error,fragment", [
    ({"labels": {"csv": "nowhere.csv", "key": "path"}}, ConfigError, "source.labels.csv: the labels file is not there"),
    ({"labels": {"csv": "labels.csv", "key": "StudyInstanceUID"}}, ConfigError,
     "source.labels.csv: the labels file has no column 'StudyInstanceUID'"),
    ({"labels": {"csv": "labels.csv", "key": "case"}}, ConfigError, "'case' cannot name an image of this source"),
    ({"labels": {"csv": "labels.csv"}}, ConfigError, "source.labels.key: required with labels.csv"),
    ({"labels": None}, ConfigError, "a DICOM source needs labels.csv (with key) or labels.tag"),
    ({"labels": {"tag": "Diagnosis"}}, ConfigError, "labels.tag: 'Diagnosis' is not a DICOM attribute keyword"),
    ({"labels": {"csv": "labels.csv", "key": "path", "map": {"x": "c"}}}, ConfigError,
     "'x' maps to 'c', which is not a class"),
    ({"subject_from": "Patient"}, ConfigError, "source.subject_from: 'Patient' is not one of file, folder"),
    ({"subject_from": "re:(unclosed"}, ConfigError, "source.subject_from: not a valid regular expression"),
    ({"path": "absent"}, InputError, "source.path: the source folder is not there"),
    ({"series": {"channels": ["T2W", "ADC"]}}, ConfigError, "source.series.channels: give 1 or 3 sequences"),
    ({"series": {"channels": ["T2W"], "group_by": "Study"}}, ConfigError, "source.series.group_by: 'Study' is not"),
    ({"series": {"channels": ["T2W"]}, "slice": "largest_lesion"}, ConfigError,
     "source.slice: 'largest_lesion' needs a mask"),
    ({"window": {"center": 40}}, ConfigError, "window"),
    ({"frames": "first"}, ConfigError, "frames"),
])
def test_configuration_problems_fail_at_once(tmp_path, monkeypatch, change, error, fragment):
    copy_pydicom_files(GOOD, tmp_path / "src")
    write_labels(tmp_path / "labels.csv", "path", [(n, GOOD_CLASS[n]) for n in GOOD])
    source = {"type": "dicom", "path": "src", "labels": {"csv": "labels.csv", "key": "path"}}
    source.update(change)
    source = {k: v for k, v in source.items() if v is not None}
    refuse_to_read_inputs(monkeypatch)
    with pytest.raises(error) as err:
        run_prepare(tmp_path, source)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def refuse_to_read_inputs(monkeypatch):
    """Make starting the work on the inputs fail the test: configuration must be checked before it."""
    from medti.preprocess import pipeline

    monkeypatch.setattr(pipeline.Runner, "__enter__", lambda self: pytest.fail("inputs read before the check"))


@pytest.mark.parametrize("setting,value,fragment", [
    ("size", 4, "prepare.size: 4 is less than the minimum of 8"),
    ("split", {"train": 0.5, "val": 0.5, "test": 0.5}, "the fractions add up to 1.5"),
    ("ti_per_class", 0, "prepare.ti_per_class"),
])
def test_bad_prepare_settings_fail_naming_the_setting(tmp_path, monkeypatch, setting, value, fragment):
    src = copy_pydicom_files(GOOD, tmp_path / "src")
    labels = write_labels(tmp_path / "labels.csv", "path", [(n, GOOD_CLASS[n]) for n in GOOD])
    refuse_to_read_inputs(monkeypatch)
    with pytest.raises(ConfigError) as err:
        run_prepare(tmp_path, {"type": "dicom", "path": str(src), "labels": {"csv": str(labels), "key": "path"}},
                    **{setting: value})
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_the_command_line_prints_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "folder"
    (src / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(src / "a" / "x.png")
    rc = main(["prepare", "--source-type", "folder", "--input", str(src), "--classes", "a,b", "--out",
               str(tmp_path / "out"), "--split", "1,1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["medti: error: --split: give train,val,test (three numbers), not '1,1'"]
    rc = main(["prepare", "--source-type", "folder", "--input", str(src), "--classes", "a,b", "--out",
               str(tmp_path / "out"), "--on-error", "fail"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("medti: error: ") and "no usable images of class 'b'" in err[-1]
    assert not (tmp_path / "out").exists()
