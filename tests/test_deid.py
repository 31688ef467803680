"""De-identification: planted patient information never reaches anything the ingestion stage writes (images,
manifest, rejects, summary, figures, the log, stdout/stderr, the MLflow store), subject ids are salted hashes,
and the salt lives in an untracked local file."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml
from preprocess_support import copy_pydicom_files

from medti.cli import main
from medti.deid import (
    IDENTIFYING_KEYWORDS,
    Deidentifier,
    load_salt,
    read_input_paths,
    redact,
    redact_path,
    salt_path,
)
from medti.errors import ConfigError
from medti.phantoms import generate_phantoms

ROOT = Path(__file__).resolve().parents[1]


def planted_identity(k: int) -> dict[str, str]:
    """Distinctive fake PHI for subject ``k`` (long enough never to turn up in PNG or database bytes by chance)."""
    letters = "".join(chr(ord("A") + int(d)) for d in f"{k:03d}")
    return {
        "PatientName": f"Quixotica{letters}^Zebulonia",
        "PatientID": f"PHIPID{letters}7351",
        "OtherPatientIDs": f"MRNPHI{letters}9912",
        "PatientBirthDate": f"1923{k % 12 + 1:02d}17",
        "StudyDate": f"1961{k % 12 + 1:02d}29",
        "AccessionNumber": f"ACCPHI{letters}5821",
        "InstitutionName": f"Hospital of Planted Secrets {letters}",
        "ReferringPhysicianName": f"Drplantedson{letters}^Referra",
    }


def plant(folder: Path) -> None:
    """Replace the identity in every DICOM under ``folder``, keeping each patient's files together."""
    patients: dict[str, int] = {}
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        k = patients.setdefault(str(ds.PatientID), len(patients))
        for keyword, value in planted_identity(k).items():
            setattr(ds, keyword, value)
        ds.save_as(path)


def identifying_values(folder: Path) -> set[str]:
    """Every identifying header value (planted or generated, UIDs included) of the DICOMs under ``folder``."""
    values = set()
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        for keyword in IDENTIFYING_KEYWORDS:
            value = str(ds.get(keyword) or "")
            values.update(v for v in [value, *value.split("^")] if len(v) >= 6)
    return values


@pytest.fixture
def project(tmp_path):
    """A project folder with params.yaml and PHI-laden DICOM inputs, the inputs kept apart in ``inputs/``."""
    inputs = tmp_path / "inputs"
    chest = generate_phantoms("chest_xray", inputs / "chest", subjects_per_class=4, seed=11, size=48).out
    prostate = generate_phantoms("prostate_mri", inputs / "prostate", subjects_per_class=4, seed=11).out
    plant(chest)
    plant(prostate)
    # Inputs that are rejected, carrying the same kind of identity: no pixel data, an undecodable syntax, and an
    # image without a label inside a folder named after its PatientID (as many exports name them).
    odd = copy_pydicom_files(["rtplan.dcm", "MR_small_jp2klossless.dcm", "CT_small.dcm"], chest / "odd")
    (odd / "CT_small.dcm").rename(odd / "unlabelled.dcm")
    for k, path in enumerate(sorted(odd.iterdir()), start=90):
        ds = pydicom.dcmread(path)
        for keyword, value in planted_identity(k).items():
            setattr(ds, keyword, value)
        if path.name.startswith("MR_small"):
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"
        ds.save_as(path)
    named = chest / planted_identity(92)["PatientID"]
    named.mkdir()
    (odd / "unlabelled.dcm").rename(named / "unlabelled.dcm")
    with open(chest / "labels.csv", "a", encoding="utf-8") as fh:
        fh.write("odd/rtplan.dcm,normal\nodd/MR_small_jp2klossless.dcm,opacity\n")
    with open(prostate / "labels.csv", "a", encoding="utf-8") as fh:
        fh.write("2.25.1234567890123456789,cspca\n")  # a study that is not there
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["modalities"] = {
        "chest_xray": {"source": {"type": "dicom", "path": str(chest),
                                  "labels": {"csv": str(chest / "labels.csv"), "key": "path"}}},
        "prostate_mri": {"source": {"type": "dicom", "path": str(prostate),
                                    "labels": {"csv": str(prostate / "labels.csv"), "key": "StudyInstanceUID"},
                                    "series": {"channels": ["T2W", "ADC", "HBV"]}}},
    }
    params["classes"] = {k: v for k, v in params["classes"].items() if v["modality"] in params["modalities"]}
    params["phantoms"]["modalities"] = []
    params["prepare"].update(size=32, ti_per_class=2, workers=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project, inputs


def written_files(tmp_path: Path, inputs: Path) -> list[Path]:
    """Every file written, but the inputs and the private, git-ignored .medti/ (salt, id -> path lookup)."""
    return [p for p in tmp_path.rglob("*") if p.is_file() and inputs not in p.parents and ".medti" not in p.parts]


def test_no_planted_value_reaches_any_output(tmp_path, project, tracking_env, capfd, monkeypatch):
    project, inputs = project
    monkeypatch.chdir(project)
    secrets = identifying_values(inputs)
    assert {"Zebulonia", "PHIPIDAAA7351", "ACCPHIAAB5821"} <= secrets  # the plants are there to be found
    for modality in ("chest_xray", "prostate_mri"):
        rc = main(["prepare", "--params", str(project / "params.yaml"), "--modality", modality,
                   "--log", str(project / "logs" / f"prepare_{modality}.log")])
        assert rc == 0
    stdio = "".join(capfd.readouterr())
    chest_rejects = pd.read_csv(project / "data" / "prepared" / "chest_xray" / "rejects.csv", dtype=str)
    assert set(chest_rejects.kind) == {"no_pixels", "unsupported_syntax", "no_label"}
    lookup = read_input_paths(project)  # the private lookup beside the salt names the folder (for the user only)
    named = [lookup[i] for i in chest_rejects.input_id]
    assert any(p.endswith(f"{planted_identity(92)['PatientID']}/unlabelled.dcm") for p in named)
    assert (tmp_path / "mlflow.db").is_file() and list((tmp_path / "mlartifacts").rglob("summary.json"))
    files = written_files(tmp_path, inputs)
    assert len(files) > 25  # images, manifests, rejects, summaries, figures, logs, salt, the MLflow store
    leaks = [(value, "stdout/stderr") for value in secrets if value.lower() in stdio.lower()]
    for path in files:
        data = path.read_bytes().lower()
        name = path.relative_to(tmp_path).as_posix().lower()
        leaks += [(value, path.name) for value in secrets if value.lower().encode() in data or value.lower() in name]
        for k in range(4):  # nor an unsalted hash of a PatientID
            pid = planted_identity(k)["PatientID"]
            assert hashlib.sha256(f"PatientID:{pid}".encode()).hexdigest()[:16].encode() not in data
    assert not leaks, f"header values found in outputs: {leaks[:5]}"


def test_subject_ids_are_salted_hashes_with_the_salt_in_an_untracked_file(tmp_path, project, monkeypatch):
    project, inputs = project
    monkeypatch.chdir(project)
    monkeypatch.setenv("MEDTI_TRACKING", "0")
    assert main(["prepare", "--params", "params.yaml", "--modality", "chest_xray", "--out", "first"]) == 0
    salt_file = project / ".medti" / "salt"
    salt = salt_file.read_bytes()
    assert len(salt) == 32 and (salt_file.stat().st_mode & 0o777) == 0o600
    table = pd.read_csv(project / "first" / "manifest.csv", dtype={"subject_id": str})
    expected = {hmac.new(salt, f"subject\0PatientID:{planted_identity(k)['PatientID']}".encode(),
                         hashlib.sha256).hexdigest()[:16] for k in range(8)}
    assert set(table.subject_id) == expected
    # the same salt gives the same ids; another salt, other ids
    assert main(["prepare", "--params", "params.yaml", "--modality", "chest_xray", "--out", "again"]) == 0
    again = pd.read_csv(project / "again" / "manifest.csv", dtype={"subject_id": str})
    assert again.subject_id.tolist() == table.subject_id.tolist()
    monkeypatch.setenv("MEDTI_SALT_FILE", str(tmp_path / "other_salt"))
    assert main(["prepare", "--params", "params.yaml", "--modality", "chest_xray", "--out", "other"]) == 0
    other = pd.read_csv(project / "other" / "manifest.csv", dtype={"subject_id": str})
    assert not set(other.subject_id) & set(table.subject_id)
    assert len(other) == len(table) and (tmp_path / "other_salt").is_file()
    # in this repository the salt's place is git-ignored, so it is never committed
    for private in (".medti/salt", ".medti/input-paths.jsonl"):
        ignored = subprocess.run(["git", "check-ignore", "-q", private], cwd=ROOT)
        assert ignored.returncode == 0, private


def test_a_salt_too_short_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTI_SALT_FILE", str(tmp_path / "salt"))
    (tmp_path / "salt").write_bytes(b"short")
    with pytest.raises(ConfigError, match="salt is too short"):
        load_salt()
    monkeypatch.delenv("MEDTI_SALT_FILE")
    assert salt_path(tmp_path) == tmp_path / ".medti" / "salt"
    assert load_salt(tmp_path) == load_salt(tmp_path)  # made once, then read


def test_ids_depend_on_the_salt_and_the_kind():
    a, b = Deidentifier(b"a" * 32), Deidentifier(b"b" * 32)
    assert a.subject("PatientID:123") == a.subject("PatientID:123") != b.subject("PatientID:123")
    assert a.subject("x") != a.image("x") and len(a.subject("x")) == 16


def test_redaction_of_messages_and_paths():
    assert redact("no Smith^John here: Smith^John", ["Smith^John", "x"]) == "no [redacted] here: [redacted]"
    values = ["PX1234567", "Smith", "001"]
    assert redact_path("px1234567/scan_Smith.dcm", values) == "[redacted]/scan_[redacted].dcm"
    assert redact_path("subject_0017/001/a.dcm", values) == "subject_0017/[redacted]/a.dcm"  # short: whole words
