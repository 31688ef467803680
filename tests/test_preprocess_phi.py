"""PHI-safe paths and the edges of ingestion (issue 15): no input file or folder name, whatever a hospital named
it after (patients, MRNs, dates in any format), reaches a file `medti prepare` writes, its log, the MLflow store
or a message; `--show-paths` shows real paths on the terminal only. File names that are not UTF-8, and images
too small or too large, are rejected one by one. A clone with another salt splits the same way."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from PIL import Image
from preprocess_support import manifest, pydicom_file, rejects, run_prepare

from medti.cli import main
from medti.deid import read_input_paths

ROOT = Path(__file__).resolve().parents[1]

# Folder names of the kind real exports use: names, birth dates and MRNs in many formats, and TCIA's study dates.
PATIENT_FOLDERS = ["JANE_DOE_1980-01-01", "Smith John 01.01.1980", "roe-richard/MRN-55501234", "anna.moe/01-01-1980",
                   "07-07-2011", "Quincy^Adams 1975_02_03", "MRN 77712345/Studies", "Doe, Zelda (19990909)"]
# What must never be found (case-insensitive) in anything written: each name, date and MRN, and each name part.
SECRETS = ["JANE_DOE_1980-01-01", "JANE_DOE", "Smith John", "Smith", "01.01.1980", "roe-richard", "richard",
           "MRN-55501234", "55501234", "anna.moe", "01-01-1980", "1980-01-01", "07-07-2011", "Quincy", "Adams",
           "1975_02_03", "77712345", "Zelda", "19990909", "Ghostly", "19420101"]


@pytest.fixture
def named_project(tmp_path):
    """A project whose DICOM inputs live in folders (and files) named after patients, each folder also holding
    one unreadable file, with a labels row naming a patient's file that is not there."""
    from medti.phantoms import generate_phantoms

    chest = generate_phantoms("chest_xray", tmp_path / "phantoms", subjects_per_class=4, seed=11, size=48).out
    src = tmp_path / "inputs" / "Smith John 01.01.1980 export"  # the root itself is named after a patient
    rows = []
    with open(chest / "labels.csv", newline="") as fh:
        for k, row in enumerate(csv.DictReader(fh)):
            folder = PATIENT_FOLDERS[k]
            name = f"{folder.split('/')[0].replace(' ', '_')}_scan.dcm"
            (src / folder).mkdir(parents=True)
            shutil.copy(chest / row["path"], src / folder / name)
            (src / folder / f"{name[:-4]}_corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
            rows.append((f"{folder}/{name}", row["label"]))
    rows.append(("Ghostly Person 19420101/scan.dcm", "opacity"))  # a labels row without an image
    labels = src / "labels.csv"
    with open(labels, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([("path", "label"), *rows])
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["modalities"] = {"chest_xray": {"source": {"type": "dicom", "path": str(src),
                                                      "labels": {"csv": str(labels), "key": "path"}}}}
    params["classes"] = {k: v for k, v in params["classes"].items() if v["modality"] == "chest_xray"}
    params["phantoms"]["modalities"] = []
    params["prepare"].update(size=32, ti_per_class=2, workers=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project, tmp_path / "inputs"


def leaks_in(data: bytes) -> list[str]:
    low = data.lower()
    return [s for s in SECRETS if s.lower().encode() in low]


def scan(tmp_path: Path, inputs: Path, stdio: str) -> list[tuple[str, str]]:
    """Every secret found in a file written under ``tmp_path`` (but the inputs, the private .medti/ and the
    params.yaml the test wrote), in the names of those files, or in ``stdio``."""
    found = [(s, "stdout/stderr") for s in leaks_in(stdio.encode("utf-8", "replace"))]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and inputs not in p.parents and ".medti" not in p.parts
             and p.name != "params.yaml"]  # the user's own settings name the source root
    assert len(files) > 5
    for p in files:
        found += [(s, str(p.relative_to(tmp_path))) for s in leaks_in(p.read_bytes())]
        found += [(s, "file name") for s in leaks_in(str(p.relative_to(tmp_path)).encode())]
    return found


@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_no_name_date_or_mrn_of_a_folder_reaches_anything_written(tmp_path, named_project, tracking_env, capfd,
                                                                  monkeypatch, on_error):
    project, inputs = named_project
    monkeypatch.chdir(project)
    log = project / "logs" / "prepare.log"
    rc = main(["prepare", "--params", "params.yaml", "--modality", "chest_xray", "--log", str(log), "-v",
               "--on-error", on_error])
    stdio = "".join(capfd.readouterr())
    if on_error == "skip":
        assert rc == 0
        out = project / "data" / "prepared" / "chest_xray"
        listed = rejects(out)
        assert sorted(listed.kind) == ["label_without_image"] + ["unreadable"] * 8
        assert len(manifest(out)) == 8
        # the private lookup beside the salt gives each id's real path, for the user
        lookup = read_input_paths(project)
        assert {Path(lookup[i]).name for i in listed.input_id} >= {"JANE_DOE_1980-01-01_scan_corrupt.dcm"}
        assert (project / ".medti" / "input-paths.jsonl").stat().st_mode & 0o777 == 0o600
        assert list((tmp_path / "mlartifacts").rglob("summary.json"))
    else:
        assert rc == 2
        error = [line for line in stdio.splitlines() if line.startswith("medti: error:")]
        assert len(error) == 1 and re.search(r"source input [0-9a-f]{16}: ", error[0])
    assert log.is_file() and (tmp_path / "mlflow.db").is_file()
    leaks = scan(tmp_path, inputs, stdio)
    assert not leaks, f"input names found in outputs: {leaks[:8]}"


def test_show_paths_prints_real_paths_on_the_terminal_only(tmp_path, named_project, capfd, monkeypatch):
    from medti.preprocess import cli

    project, inputs = named_project
    monkeypatch.chdir(project)
    monkeypatch.setenv("MEDTI_TRACKING", "0")
    log = project / "prepare.log"
    # stderr is a file under capfd (as under Snakemake's `2> {log}`): refused, nothing run
    rc = main(["prepare", "--params", "params.yaml", "--modality", "chest_xray", "--show-paths"])
    assert rc == 2 and "--show-paths: stderr goes to a file here" in capfd.readouterr().err
    assert not (project / "data").exists()
    monkeypatch.setattr(cli, "_stderr_is_a_file", lambda log_file: False)  # as on a terminal
    rc = main(["prepare", "--params", "params.yaml", "--modality", "chest_xray", "--show-paths", "--log", str(log)])
    err = capfd.readouterr().err
    assert rc == 0
    shown = [line for line in err.splitlines() if line.startswith("medti prepare: input ")]
    assert len(shown) == 9 and any("JANE_DOE_1980-01-01/JANE_DOE_1980-01-01_scan_corrupt.dcm" in s for s in shown)
    assert not leaks_in(log.read_bytes())  # the --log file never gets them
    assert not scan(tmp_path, inputs, "")


def test_labels_file_messages_name_no_path_or_value(tmp_path):
    from medti.errors import ConfigError, InputError

    src = tmp_path / "JANE_DOE_1980-01-01"
    src.mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), src / "Smith_John.dcm")
    for labels_text, error in (("path,label\nSmith_John.dcm,a\nSmith_John.dcm,b\n", InputError),
                               ("file,label\nSmith_John.dcm,a\n", ConfigError)):
        (src / "labels Smith John.csv").write_text(labels_text)
        with pytest.raises(error) as err:
            run_prepare(tmp_path, {"type": "dicom", "path": str(src),
                                   "labels": {"csv": str(src / "labels Smith John.csv"), "key": "path"}})
        assert not leaks_in(str(err.value).encode()), str(err.value)
        assert str(err.value).startswith("source.labels.csv: ")
    with pytest.raises(ConfigError) as err:
        run_prepare(tmp_path, {"type": "dicom", "path": str(src),
                               "labels": {"csv": str(tmp_path / "Adams Quincy.csv"), "key": "path"}})
    assert "Adams" not in str(err.value) and "source.labels.csv" in str(err.value)


# -- names that are not UTF-8 -----------------------------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_one_reject_not_an_abort(tmp_path):
    src = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(src / cls / f"g{i}.png")
    bad_file = os.fsencode(src / "a") + b"/M\xfcller_\xe9.png"  # Latin-1 bytes, as another system wrote them
    bad_dir = os.fsencode(src / "b") + b"/Z\xf6e"
    os.mkdir(bad_dir)
    for path in (bad_file, bad_dir + b"/x.png"):
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(os.fsdecode(path))
    result = run_prepare(tmp_path, {"type": "folder", "path": str(src)}, size=24, workers=2)
    listed = rejects(result.out)
    assert sorted(listed.kind) == ["bad_name", "bad_name"] and len(manifest(result.out)) == 6
    assert {os.fsencode(read_input_paths(tmp_path)[i]) for i in listed.input_id} == {bad_file, bad_dir + b"/x.png"}


# -- image size limits -------------------------------------------------------------------------------------------
def test_tiny_and_huge_images_are_listed_by_configurable_limits(tmp_path, monkeypatch):
    from medti.preprocess import folders

    src = tmp_path / "images"
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(src / cls / f"g{i}.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(src / "a" / "one_pixel.png")
    Image.fromarray(np.zeros((8, 40), np.uint8)).save(src / "a" / "strip.png")
    Image.fromarray(np.zeros((60, 60), np.uint8)).save(src / "b" / "large.png")
    decoded = []
    page_unit = folders._page_unit
    monkeypatch.setattr(folders, "_page_unit", lambda page, ctx: decoded.append(page.size) or page_unit(page, ctx))
    result = run_prepare(tmp_path, {"type": "folder", "path": str(src)}, size=24, max_pixels=50 * 50)
    listed = rejects(result.out, src).set_index("path")
    assert listed.kind.to_dict() == {"a/one_pixel.png": "too_small", "a/strip.png": "too_small",
                                     "b/large.png": "too_large"}
    assert listed.reason["a/one_pixel.png"] == "1 x 1 pixels, a side shorter than prepare.min_size (16)"
    assert "more than prepare.max_pixels (2500)" in listed.reason["b/large.png"]
    assert (60, 60) not in decoded and (1, 1) not in decoded  # refused from the header, before decoding
    assert result.summary["settings"]["min_size"] == 16
    # the limits are settings: lower min_size and the strip is an image
    again = run_prepare(tmp_path, {"type": "folder", "path": str(src)}, out="again", size=24, min_size=8)
    assert sorted(rejects(again.out).kind) == ["too_small"]


def test_a_dicom_whose_header_says_it_is_huge_is_not_decoded(tmp_path, monkeypatch):
    from preprocess_support import context, dicom_units

    from medti.preprocess import dicom
    from medti.preprocess.records import Rejected

    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 20000  # 400 MP: what the header says (the pixel data would not even fit)
    ds.save_as(tmp_path / "huge.dcm")
    monkeypatch.setattr(dicom, "decode", lambda *a, **k: pytest.fail("decoded a too large image"))
    ctx = context(tmp_path)
    ctx.max_pixels = 100_000_000
    with pytest.raises(Rejected) as err:
        dicom_units(tmp_path / "huge.dcm", ctx)
    assert err.value.kind == "too_large" and "20000 x 20000 pixels" in err.value.reason


# -- the same split in every clone ---------------------------------------------------------------------------------
def test_two_salts_give_the_same_split_subset_and_image_names(tmp_path, monkeypatch):
    from medti.phantoms import generate_phantoms

    chest = generate_phantoms("chest_xray", tmp_path / "src", subjects_per_class=10, seed=5, size=32).out
    source = {"type": "dicom", "path": str(chest), "labels": {"csv": str(chest / "labels.csv"), "key": "path"}}
    tables = []
    for clone in ("clone_a", "clone_b"):
        monkeypatch.setenv("MEDTI_SALT_FILE", str(tmp_path / clone / ".medti" / "salt"))
        result = run_prepare(tmp_path, source, classes=("normal", "opacity"), out=f"{clone}/out", size=32,
                             ti_per_class=3, seed=7)
        tables.append(manifest(result.out))
    a, b = tables
    assert (tmp_path / "clone_a/.medti/salt").read_bytes() != (tmp_path / "clone_b/.medti/salt").read_bytes()
    membership = [dict(zip(t.source_checksum, zip(t.split, t.ti_subset))) for t in tables]
    assert membership[0] == membership[1] and a.ti_subset.sum() == 6
    assert a.path.tolist() == b.path.tolist()  # image names (and so the order training reads them) match
    assert not set(a.subject_id) & set(b.subject_id)  # the salt changes the written subject ids only
    assert pd.Series(a.subject_id).nunique() == 20


def test_two_clones_with_new_salts_train_byte_identical_embeddings(tmp_path, monkeypatch):
    """Issue 15: the same params and inputs in two clones (each with its own new salt) give the same embedding
    file, byte for byte, so dvc.lock records the same hash."""
    from medti.config import load_params
    from medti.phantoms import generate_phantoms
    from medti.textual_inversion import train_from_params

    root = Path(__file__).resolve().parents[1]
    chest = generate_phantoms("chest_xray", tmp_path / "src", subjects_per_class=6, seed=5, size=32).out
    source = {"type": "dicom", "path": str(chest), "labels": {"csv": str(chest / "labels.csv"), "key": "path"}}
    files = []
    for clone in ("clone_a", "clone_b"):
        monkeypatch.setenv("MEDTI_SALT_FILE", str(tmp_path / clone / ".medti" / "salt"))
        from medti.preprocess import prepare_source

        result = prepare_source(source, ["normal", "opacity"], tmp_path / clone / "prepared", modality="chest_xray",
                                settings={"size": 32, "ti_per_class": 3}, seed=7, root=tmp_path / clone)
        params = load_params(root / "params.yaml")
        params["base_model"]["id"] = "tiny"
        params["train_embedding"].update(steps=3, resolution=32, validation_images=0, batch_size=2)
        out = tmp_path / clone / "opacity.safetensors"
        train_from_params(params, "chest_xray", "opacity", Path(result.out) / "manifest.csv", out,
                          tmp_path / clone / "report", checkpoint_dir=tmp_path / clone / "ckpt")
        files.append(out.read_bytes())
    assert (tmp_path / "clone_a/.medti/salt").read_bytes() != (tmp_path / "clone_b/.medti/salt").read_bytes()
    assert files[0] == files[1]
