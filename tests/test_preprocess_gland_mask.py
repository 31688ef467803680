"""PI-CAI negatives: with ``slice: largest_lesion`` a case whose lesion mask is empty takes the middle of the
slices its gland mask (``source.gland_mask``) covers; without a gland mask file, or with an empty one, the
volume's middle slice, which summary.json counts and one log line per run states (no names)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
from preprocess_support import image, manifest, rejects, run_prepare, write_labels

from medti.errors import ConfigError

DEPTH = 9
SHAPE = (DEPTH, 16, 16)


def write_volume(path, array_zyx, origin):
    img = sitk.GetImageFromArray(np.asarray(array_zyx, dtype=np.float32))
    img.SetSpacing((1.0, 1.0, 2.0))
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def mask_on(slices) -> np.ndarray:
    mask = np.zeros(SHAPE, np.float32)
    for z in slices:
        mask[z, 4:12, 4:12] = 1
    return mask


def taken_slice(out, row) -> int:
    grey = image(out, row["path"])[..., 0].astype(float)
    assert grey.std() == 0
    return int(round(grey.mean() / 255 * (DEPTH - 1)))


def make_cases(src, cases: dict):
    """``cases``: case -> (lesion slices, gland slices or None for no gland file). Slice k of every volume
    holds the value k, so the PNG's grey level tells which slice was taken."""
    coded = np.broadcast_to(np.arange(DEPTH, dtype=np.float32)[:, None, None], SHAPE).copy()
    for i, (case, (lesion, gland)) in enumerate(cases.items()):
        origin = (0.0, 0.0, 50.0 * i)  # distinct files, not copies
        write_volume(src / f"{case}_t2w.mha", coded, origin)
        write_volume(src / f"{case}_lesion.mha", mask_on(lesion), origin)
        if gland is not None:
            write_volume(src / f"{case}_gland.mha", mask_on(gland), origin)


def prepare(tmp_path, cases: dict, **source):
    src = tmp_path / "picai"
    make_cases(src, cases)
    labels = write_labels(tmp_path / "labels.csv", "case", [(c, "ab"[i % 2]) for i, c in enumerate(cases)])
    cfg = {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "case"},
           "sequences": ["*_t2w.mha"], "mask": "*_lesion.mha", "slice": "largest_lesion",
           "subject_from": "case", **source}
    run_prepare(tmp_path, cfg, size=16, normalise="minmax")
    return src


def slice_by_case(tmp_path, src) -> dict:
    """case -> slice taken, found by the checksum of the case's files (its image's source_checksum)."""
    from medti.hashing import file_sha256
    from medti.preprocess.records import combined_checksum

    table = manifest(tmp_path / "out")
    taken = {}
    for case in sorted({p.name.split("_")[0] for p in src.iterdir()}):
        files = sorted(p for p in src.iterdir() if p.name.startswith(f"{case}_"))
        checksum = combined_checksum(file_sha256(p) for p in files)
        row = table[table.source_checksum == checksum]
        assert len(row) == 1, case
        taken[case] = taken_slice(tmp_path / "out", row.iloc[0])
    return taken


CASES = {
    "c0": ([], [5, 6, 7]),        # no lesion: the middle of the gland (slices 5..7) -> 6
    "c1": ([2], [5, 6, 7]),       # a lesion on slice 2 -> 2, whatever the gland
    "c2": ([], None),             # no gland mask file: kept, the volume's middle -> 4
    "c3": ([], [1, 2, 3, 4, 5]),  # the gland covers 1..5 -> 3
    "c4": ([], []),               # an empty gland mask: the volume's middle -> 4
    "c5": ([7], [3]),             # a lesion on slice 7, the gland on 3 -> 7
}


def test_lesion_free_cases_take_the_middle_of_the_gland(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medti.prepare"):
        src = prepare(tmp_path, CASES, gland_mask="*_gland.mha")
    assert slice_by_case(tmp_path, src) == {"c0": 6, "c1": 2, "c2": 4, "c3": 3, "c4": 4, "c5": 7}
    assert rejects(tmp_path / "out").empty  # the missing gland file rejects nothing; the gland files are used
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["volume_middle_slices"] == {"no_gland_mask": 1, "empty_gland_mask": 1}
    said = [r for r in caplog.records if "volume's middle slice" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    message = said[0].getMessage()
    assert "2 lesion-free cases" in message and "no gland mask file 1, an empty one 1" in message
    assert not any(c in r.getMessage() for r in caplog.records for c in [*CASES, str(src)])


def test_without_gland_mask_lesion_free_cases_take_the_volume_middle_and_it_is_said(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medti.prepare"):
        src = prepare(tmp_path, {c: (lesion, None) for c, (lesion, _) in CASES.items()})
    assert slice_by_case(tmp_path, src) == {"c0": 4, "c1": 2, "c2": 4, "c3": 4, "c4": 4, "c5": 7}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["volume_middle_slices"] == {"no_gland_mask": 4, "empty_gland_mask": 0}
    said = [r for r in caplog.records if "volume's middle slice" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO and "source.gland_mask" in said[0].getMessage()


def test_a_gland_mask_on_another_grid_is_resampled_like_the_lesion_mask(tmp_path):
    """A gland mask at half the slice spacing, offset: its slices map onto the first sequence's grid."""
    src = tmp_path / "picai"
    cases = {f"c{i}": ([3] if i == 2 else [], None) for i in range(6)}
    make_cases(src, cases)
    for i, case in enumerate(cases):
        fine = np.zeros((2 * DEPTH, 16, 16), np.float32)
        fine[10:15, 4:12, 4:12] = 1  # z = 10..14 mm above the origin: the coarse slices 5, 6, 7 (2 mm each)
        img = sitk.GetImageFromArray(fine)
        img.SetSpacing((1.0, 1.0, 1.0))
        img.SetOrigin((0.0, 0.0, 50.0 * i))
        sitk.WriteImage(img, str(src / f"{case}_gland.nii.gz"))
    labels = write_labels(tmp_path / "labels.csv", "case", [(c, "ab"[i % 2]) for i, c in enumerate(cases)])
    run_prepare(tmp_path, {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "case"},
                           "sequences": ["*_t2w.mha"], "mask": "*_lesion.mha", "gland_mask": "*_gland.nii.gz",
                           "slice": "largest_lesion", "subject_from": "case"}, size=16, normalise="minmax")
    taken = sorted(taken_slice(tmp_path / "out", r) for r in manifest(tmp_path / "out").to_dict("records"))
    assert taken == [3, 6, 6, 6, 6, 6]


def test_gland_masks_without_sequences_are_not_cases(tmp_path):
    """One-file cases (no ``sequences``): the gland files are masks, not volumes to prepare."""
    src = tmp_path / "vols"
    coded = np.broadcast_to(np.arange(DEPTH, dtype=np.float32)[:, None, None], SHAPE).copy()
    for i in range(6):
        write_volume(src / f"p{i}.mha", coded, (0.0, 0.0, 50.0 * i))
        write_volume(src / f"p{i}_lesion.mha", mask_on([]), (0.0, 0.0, 50.0 * i))
        if i:
            write_volume(src / f"p{i}_gland.mha", mask_on([6, 7, 8]), (0.0, 0.0, 50.0 * i))
    labels = write_labels(tmp_path / "labels.csv", "case", [(f"p{i}", "ab"[i % 2]) for i in range(6)])
    run_prepare(tmp_path, {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "case"},
                           "mask": "*_lesion.mha", "gland_mask": "*_gland.mha", "slice": "largest_lesion",
                           "subject_from": "case"}, size=16, normalise="minmax")
    table = manifest(tmp_path / "out")
    assert len(table) == 6 and rejects(tmp_path / "out").empty
    assert sorted(taken_slice(tmp_path / "out", r) for r in table.to_dict("records")) == [4, 7, 7, 7, 7, 7]


@pytest.mark.parametrize("source,message", [
    ({"slice": "middle"}, "source.gland_mask: only used with source.slice: largest_lesion"),
    ({"slice": "mask_middle"}, "not slice: mask_middle"),
    ({"gland_mask": "*gland*.mha"}, "must hold exactly one *"),
])
def test_gland_mask_settings_are_checked(tmp_path, source, message):
    src = tmp_path / "picai"
    make_cases(src, {"c0": ([], [5]), "c1": ([], [5])})
    labels = write_labels(tmp_path / "labels.csv", "case", [("c0", "a"), ("c1", "b")])
    cfg = {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "case"},
           "sequences": ["*_t2w.mha"], "mask": "*_lesion.mha", "gland_mask": "*_gland.mha",
           "slice": "largest_lesion", **source}
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")) as caught:
        run_prepare(tmp_path, cfg, size=16)
    assert "\n" not in str(caught.value)


def test_a_dicom_series_source_refuses_gland_mask(tmp_path):
    from medti.preprocess.series import DicomSeriesSource

    cfg = {"type": "dicom", "path": str(tmp_path), "series": {"channels": ["t2"]}, "mask": "lesion",
           "gland_mask": "*_gland.mha", "slice": "largest_lesion"}
    with pytest.raises(ConfigError, match="source.gland_mask: only a volume source"):
        DicomSeriesSource(cfg, tmp_path, set())


def test_a_case_missing_a_sequence_lists_its_gland_mask_with_it(tmp_path):
    src = tmp_path / "picai"
    cases = {f"c{i}": ([], [5, 6, 7]) for i in range(7)}
    make_cases(src, cases)
    (src / "c6_lesion.mha").unlink()
    labels = write_labels(tmp_path / "labels.csv", "case", [(c, "ab"[i % 2]) for i, c in enumerate(cases)])
    run_prepare(tmp_path, {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "case"},
                           "sequences": ["*_t2w.mha"], "mask": "*_lesion.mha", "gland_mask": "*_gland.mha",
                           "slice": "largest_lesion", "subject_from": "case"}, size=16, normalise="minmax")
    table = rejects(tmp_path / "out", src)
    assert sorted(table.path) == ["c6_gland.mha", "c6_t2w.mha"] and set(table.kind) == {"missing_sequence"}
    assert len(manifest(tmp_path / "out")) == 6


def test_the_note_survives_a_resumed_run(tmp_path):
    """The journal keeps each record's note, so that a resumed run counts the replayed fallbacks too."""
    from medti.preprocess.records import ImageRecord
    from medti.preprocess.resume import PrepareJournal

    record = ImageRecord("id", "subject", "a", "sum", ("x.mha",), "id.png", note="no_gland_mask")
    journal = PrepareJournal(tmp_path / "out", {"k": 1}, b"salt")
    journal.open()
    (journal.staging / "id.png").write_bytes(b"")
    journal.add("key", "stamp", [record], [], ["x.mha"])
    journal.keep()
    again = PrepareJournal(tmp_path / "out", {"k": 1}, b"salt")
    again.open()
    records, _ = again.replay("key", "stamp", ["x.mha"])
    again.remove()
    assert records == [record]
