"""The embedded default data set: seeded phantom DICOMs of three modalities with fake patient data, their
disease signals, and their ingestion (MONOCHROME1/2 mix, prostate sequences stacked as RGB)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from preprocess_support import image, manifest, rejects, run_prepare

from medti.errors import ConfigError
from medti.hashing import file_sha256
from medti.phantoms import DEFAULT_CLASSES, LABEL_KEYS, chest_image, generate_phantoms, histo_patch, prostate_volume

PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber", "StudyDate",
                "InstitutionName", "ReferringPhysicianName")


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return {m: generate_phantoms(m, root / m, subjects_per_class=6, seed=5) for m in DEFAULT_CLASSES}


def test_every_modality_is_real_dicom_with_fake_phi_and_neutral_names(phantoms):
    for modality, result in phantoms.items():
        files = sorted(result.out.rglob("*.dcm"))
        assert len(files) == result.files and result.subjects == 12
        labels = (result.out / "labels.csv").read_text().splitlines()
        assert labels[0] == f"{LABEL_KEYS[modality]},label" and len(labels) - 1 == result.images
        assert {row.rsplit(",", 1)[1] for row in labels[1:]} == set(DEFAULT_CLASSES[modality])
        for path in files[:: max(1, len(files) // 10)]:
            ds = pydicom.dcmread(path)  # no force: a proper Part 10 file
            assert ds.pixel_array.size > 0
            for keyword in PHI_KEYWORDS:
                value = str(ds.get(keyword) or "")
                assert value, f"{modality}: {keyword} missing"
                assert value not in path.relative_to(result.out).as_posix()


def test_the_same_seed_gives_the_same_bytes(tmp_path, phantoms):
    again = generate_phantoms("chest_xray", tmp_path / "again", subjects_per_class=6, seed=5, workers=2)
    assert checksums(again.out) == checksums(phantoms["chest_xray"].out)
    other = generate_phantoms("chest_xray", tmp_path / "other", subjects_per_class=6, seed=6)
    assert checksums(other.out) != checksums(again.out)


def test_radiographs_mix_monochrome1_and_2_and_cr_and_dx(phantoms):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in phantoms["chest_xray"].out.rglob("*.dcm")]
    assert {h.PhotometricInterpretation for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert {h.Modality for h in headers} == {"CR", "DX"}
    assert any("WindowCenter" in h for h in headers) and any("VOILUTSequence" in h for h in headers)


def test_histopathology_is_colour_in_rgb_and_ybr(phantoms):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in phantoms["histopathology"].out.rglob("*.dcm")]
    assert {h.PhotometricInterpretation for h in headers} == {"RGB", "YBR_FULL"}
    assert {h.SamplesPerPixel for h in headers} == {3}


def test_bad_generator_settings_fail_at_once(tmp_path):
    with pytest.raises(ConfigError, match="no phantom generator for kind 'ct'"):
        generate_phantoms("ct", tmp_path / "x")
    with pytest.raises(ConfigError, match="phantoms.subjects_per_class: 2 is less than the minimum of 4"):
        generate_phantoms("chest_xray", tmp_path / "x", subjects_per_class=2)
    assert not (tmp_path / "x").exists()


# -- the command ------------------------------------------------------------------------------------------------
def _project(folder: Path, edit=None) -> Path:
    """The checkout's params.yaml (changed by ``edit``) in ``folder``; its phantoms.out is relative to it."""
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    if edit:
        edit(params)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder / "params.yaml"


def _parse(argv: list[str]):
    from medti.cli import build_parser

    return build_parser().parse_args(argv)


def test_pipeline_mode_writes_the_modality_under_phantoms_out(tmp_path, monkeypatch, capsys):
    from medti.cli import main

    params = _project(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    assert main(["phantoms", "--params", str(params), "--modality", "histopathology", "--subjects-per-class", "4",
                 "--seed", "5"]) == 0
    out = tmp_path / "project" / "data" / "raw" / "phantoms" / "histopathology"
    assert capsys.readouterr().out.strip() == str(out)
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "SOPInstanceUID,label" and {r.rsplit(",", 1)[1] for r in rows[1:]} == {"benign", "atypical"}
    standalone = tmp_path / "standalone"  # the same settings standalone give the same files
    assert main(["phantoms", "--kind", "histopathology", "--out", str(standalone), "--subjects-per-class", "4",
                 "--seed", "5"]) == 0
    assert checksums(standalone) == checksums(out)


def test_a_modality_named_otherwise_draws_the_kind_it_names(tmp_path):
    from medti.phantoms.cli import run

    def add_cxr(params):
        params["modalities"]["cxr"] = {"source": {"type": "folder", "path": "cxr"}}
        params["classes"].update({"cxr-clear": {"modality": "cxr", "class": "clear"},
                                  "cxr-spot": {"modality": "cxr", "class": "spot"}})

    pipeline = ["phantoms", "--params", str(_project(tmp_path, add_cxr)), "--modality", "cxr"]
    with pytest.raises(ConfigError, match="modality 'cxr' is not a phantom kind"):
        run(_parse(pipeline))
    out = tmp_path / "cxr"
    assert run(_parse([*pipeline, "--kind", "chest_xray", "--out", str(out), "--subjects-per-class", "4"])) == 0
    labels = (out / "labels.csv").read_text().splitlines()  # the modality's classes, the kind's labels key
    assert labels[0] == "path,label" and {r.rsplit(",", 1)[1] for r in labels[1:]} == {"clear", "spot"}


@pytest.mark.parametrize("argv, message", [
    (["--kind", "chest_xray"], "standalone needs --kind and --out"),
    (["--out", "x"], "standalone needs --kind and --out"),
    (["--params", "params.yaml"], "--params needs --modality"),
    (["--kind", "chest_xray", "--out", "x", "--subjects-per-class", "3"], "--subjects-per-class: 3 is less than"),
    (["--kind", "chest_xray", "--out", "x", "--workers", "0"], "--workers must be at least 1"),
])
def test_bad_command_lines_name_the_flag(tmp_path, monkeypatch, argv, message):
    from medti.phantoms.cli import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(_parse(["phantoms", *argv]))
    assert not (tmp_path / "x").exists()


# -- the disease signals ----------------------------------------------------------------------------------------
def test_an_opacity_is_a_focal_density_in_a_lung():
    anatomy = {"shift": 0.0, "body_w": 0.9, "lung_w": 0.25, "lung_h": 0.55, "heart_r": 0.25}
    opacity = {"x": -0.36, "y": -0.1, "sigma": 0.09, "amp": 0.35}
    healthy = chest_image(np.random.default_rng(0), anatomy, None, 96)
    sick = chest_image(np.random.default_rng(0), anatomy, opacity, 96)
    diff = sick - healthy
    row, col = np.unravel_index(np.argmax(diff), diff.shape)
    assert diff.max() > 0.15
    assert abs(col - (1 - 0.36) / 2 * 95) < 6 and abs(row - (1 - 0.1) / 2 * 95) < 6  # where it was put
    assert np.abs(diff[:, 60:]).max() < 0.05  # the other lung is untouched


def test_a_prostate_lesion_is_bright_on_high_b_and_dark_on_adc():
    anatomy = {"body_a": 94.0, "body_b": 70.0, "prostate": (0.0, 4.0, 22.0, 16.0, 16.0)}
    lesion = dict(anatomy, lesion=(8.0, 13.0, 0.0, 7.0))
    grid = {"shape": (3, 41, 41), "spacing": (1.0, 1.0), "z": [-2.0, 0.0, 2.0], "origin": (-12.0, -7.0)}
    at = (1, 20, 20)  # voxel of the lesion centre (x = 8, y = 13, z = 0)
    for sequence, brighter in ((0, False), (1, False), (2, True)):  # T2W, ADC, HBV
        without = prostate_volume(np.random.default_rng(1), anatomy, grid, sequence)[at]
        with_lesion = prostate_volume(np.random.default_rng(1), lesion, grid, sequence)[at]
        assert (with_lesion > 1.5 * without) if brighter else (with_lesion < 0.8 * without), sequence


def test_atypical_patches_have_crowded_dark_nuclei():
    def nuclear_fraction(atypical):
        patches = [histo_patch(np.random.default_rng(k), atypical, (1.0, 1.0)) for k in range(4)]
        return np.mean([(p.astype(float).mean(axis=2) < 110).mean() for p in patches])

    assert nuclear_fraction(True) > 3 * nuclear_fraction(False)


# -- ingestion of the phantoms -----------------------------------------------------------------------------------
def test_monochrome1_and_2_radiographs_come_out_alike(tmp_path, phantoms):
    src = phantoms["chest_xray"].out
    run_prepare(tmp_path, {"type": "dicom", "path": str(src),
                           "labels": {"csv": str(src / "labels.csv"), "key": "path"}},
                classes=DEFAULT_CLASSES["chest_xray"], size=64, channels="grey", workers=2)
    out = tmp_path / "out"
    assert rejects(out).empty
    table = manifest(out)
    assert len(table) == phantoms["chest_xray"].images
    for rel in table.path:
        img = image(out, rel).astype(float)
        spine, lung = img[20:44, 30:34].mean(), img[24:40, 10:18].mean()
        assert spine > lung + 40, rel  # dense mediastinum bright, aerated lung dark, whatever the photometric


def test_prostate_sequences_are_stacked_into_rgb(tmp_path, phantoms):
    src = phantoms["prostate_mri"].out
    source = {"type": "dicom", "path": str(src), "series": {"channels": ["T2W", "ADC", "HBV"]},
              "labels": {"csv": str(src / "labels.csv"), "key": "StudyInstanceUID"}}
    run_prepare(tmp_path, source, classes=DEFAULT_CLASSES["prostate_mri"], size=64, workers=2)
    out = tmp_path / "out"
    assert rejects(out).empty
    table = manifest(out)
    assert len(table) == phantoms["prostate_mri"].images  # one image per study, from its 3 x n slices
    assert set(table.groupby("subject_id").split.nunique()) == {1}  # follow-up studies stay with the man
    rgb = np.stack([image(out, rel).astype(float) for rel in table.path])
    t2w, adc, hbv = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert np.corrcoef(t2w.ravel(), hbv.ravel())[0, 1] < 0.9  # distinct sequences, not grey copies
    # Fat (the body rim) is bright on T2W and dark on ADC and high-b: the channels are the named sequences.
    rim = np.zeros((64, 64), bool)
    rim[31:33, 2:6] = True
    assert t2w[:, rim].mean() > 150 and adc[:, rim].mean() < 90 and hbv[:, rim].mean() < 90
    assert (out / "channels.png").is_file() and (out / "samples.png").is_file()


def add_mask_series(study_root: Path, slices_with_mask: set[int]) -> None:
    """Give every study a mask series on its T2W grid, marked on the slices (by position) in the set."""
    for t2w_file in sorted(study_root.rglob("series_1/*.dcm")):
        ds = pydicom.dcmread(t2w_file)
        ds.SeriesDescription = "LESION MASK"
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(t2w_file.parent), "mask"])
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(t2w_file), "mask"])
        mask = np.zeros((ds.Rows, ds.Columns), np.uint16)
        if int(ds.InstanceNumber) - 1 in slices_with_mask:  # InstanceNumber follows slice position here
            mask[20:40, 20:40] = 1
        ds.PixelData = mask.tobytes()
        folder = t2w_file.parent.parent / "series_9"
        folder.mkdir(exist_ok=True)
        ds.save_as(folder / t2w_file.name)


def test_a_mask_series_picks_the_slice(tmp_path):
    src = generate_phantoms("prostate_mri", tmp_path / "raw", subjects_per_class=4, seed=9).out
    labels = {"csv": str(src / "labels.csv"), "key": "StudyInstanceUID"}
    source = {"type": "dicom", "path": str(src), "series": {"channels": ["T2W", "ADC", "HBV"]}, "labels": labels}

    def images(out, **settings):
        run_prepare(tmp_path, dict(source, **settings), classes=DEFAULT_CLASSES["prostate_mri"], out=out, size=64)
        assert rejects(tmp_path / out).empty
        # image names follow the source files' checksums, which a new mask series changes: compare contents
        return sorted(image(tmp_path / out, rel).tobytes() for rel in manifest(tmp_path / out).path)

    middle = images("middle")  # 8 T2W slices: index 4
    add_mask_series(src, {4})
    assert images("lesion4", mask="MASK", slice="largest_lesion") == middle
    add_mask_series(src, {1})
    lesion1 = images("lesion1", mask="MASK", slice="largest_lesion")
    assert len(lesion1) == len(middle) and not set(lesion1) & set(middle)
    add_mask_series(src, {0, 1, 2})  # an organ over slices 0..2: its middle is slice 1
    assert images("organ", mask="MASK", slice="mask_middle") == lesion1
