"""DICOM ingestion on the real files shipped inside pydicom's wheel: LUTs and windows, MONOCHROME1,
multi-frame, colour (YBR -> RGB, palette), compressed syntaxes decoded by pylibjpeg, undecodable syntaxes,
labels by path, UID, PatientID or tag, and the subject-wise split of a real mixed folder."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from preprocess_support import (
    context,
    copy_pydicom_files,
    dicom_units,
    image,
    images_by_source,
    manifest,
    pydicom_file,
    rejects,
    run_prepare,
    write_labels,
)

from medti.errors import InputError
from medti.preprocess.records import Rejected


def stored(name: str, index: int | None = None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    return pixel_array(pydicom_file(name), index=index).astype(np.float64)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, the LINEAR VOI function, written out independently of medti."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def minmax(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


def relabelled(tmp_path, name: str, **changes):
    """A copy of a pydicom test file with some attributes (or its transfer syntax) changed."""
    ds = pydicom.dcmread(pydicom_file(name))
    for key, value in changes.items():
        if key == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, key, value)
    path = tmp_path / f"{'_'.join(changes)}_{name}"
    ds.save_as(path, enforce_file_format=True)
    return path


# -- grey levels: modality LUT, VOI window, MONOCHROME1 --------------------------------------------------------
def test_ct_goes_through_the_modality_lut_before_the_window(tmp_path):
    (unit,) = dicom_units(pydicom_file("CT_small.dcm"), context(tmp_path, window={"center": 40, "width": 400}))
    hu = stored("CT_small.dcm") * 1.0 - 1024.0  # RescaleSlope 1, RescaleIntercept -1024
    np.testing.assert_allclose(unit, linear_window(hu, 40, 400), atol=1e-5)
    assert not np.allclose(unit, linear_window(stored("CT_small.dcm"), 40, 400), atol=0.05)
    assert 0.05 < unit.mean() < 0.95  # a soft-tissue window shows structure, not a flat image


def test_mr_uses_the_files_window_unless_overridden(tmp_path):
    raw = stored("MR_small.dcm")
    (auto,) = dicom_units(pydicom_file("MR_small.dcm"), context(tmp_path))
    np.testing.assert_allclose(auto, linear_window(raw, 600, 1600), atol=1e-5)  # WindowCenter/Width of the file
    (override,) = dicom_units(pydicom_file("MR_small.dcm"), context(tmp_path, window={"center": 300, "width": 200}))
    np.testing.assert_allclose(override, linear_window(raw, 300, 200), atol=1e-5)
    (none,) = dicom_units(pydicom_file("MR_small.dcm"), context(tmp_path, window="none"))
    np.testing.assert_allclose(none, minmax(raw), atol=1e-5)


def test_monochrome1_is_inverted_so_dense_is_bright(tmp_path):
    mono1 = relabelled(tmp_path, "MR_small.dcm", PhotometricInterpretation="MONOCHROME1")
    (inverted,) = dicom_units(mono1, context(tmp_path))
    (normal,) = dicom_units(pydicom_file("MR_small.dcm"), context(tmp_path))
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


def test_a_voi_lut_sequence_is_applied(tmp_path):
    lut = np.clip(np.arange(4096) - 100, 0, 4095)[::-1].astype("<u2")  # a descending LUT: it must show
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = lut.tobytes()
    ds.VOILUTSequence = [item]
    path = tmp_path / "voilut.dcm"
    ds.save_as(path, enforce_file_format=True)
    (unit,) = dicom_units(path, context(tmp_path))
    raw = np.clip(stored("MR_small.dcm"), 0, 4095).astype(int)
    np.testing.assert_allclose(unit, lut[raw] / 4095.0, atol=1e-6)


# -- frames and colour ----------------------------------------------------------------------------------------
def test_multiframe_gives_the_middle_frame_or_all(tmp_path):
    middle = dicom_units(pydicom_file("rtdose.dcm"), context(tmp_path))  # 15 frames, no window
    assert len(middle) == 1
    np.testing.assert_allclose(middle[0], minmax(stored("rtdose.dcm", index=7)), atol=1e-5)
    every = dicom_units(pydicom_file("rtdose.dcm"), context(tmp_path, frames="all"))
    assert len(every) == 15
    for k in (0, 14):
        np.testing.assert_allclose(every[k], minmax(stored("rtdose.dcm", index=k)), atol=1e-5)


def test_colour_multiframe_and_ybr_become_rgb(tmp_path):
    reference = stored("SC_rgb_rle.dcm") / 255.0  # RGB colour bars; the 2-frame file holds them and their inverse
    first, second = dicom_units(pydicom_file("SC_rgb_rle_2frame.dcm"), context(tmp_path, frames="all"))
    np.testing.assert_allclose(first, reference, atol=1e-6)
    (middle,) = dicom_units(pydicom_file("SC_rgb_rle_2frame.dcm"), context(tmp_path))
    np.testing.assert_allclose(middle, 1.0 - reference, atol=1e-6)
    for ybr in ("SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm"):  # raw, and JPEG in YBR_FULL
        assert pydicom.dcmread(pydicom_file(ybr)).PhotometricInterpretation.startswith("YBR")
        (unit,) = dicom_units(pydicom_file(ybr), context(tmp_path))
        assert unit.shape == reference.shape
        assert np.abs(unit - reference).mean() < 4 / 255, ybr  # the YBR values themselves are ~90 levels off


def test_palette_colour_is_expanded_to_rgb(tmp_path):
    (unit,) = dicom_units(pydicom_file("examples_palette.dcm"), context(tmp_path))
    assert unit.shape == (350, 800, 3)
    assert np.abs(unit[..., 0] - unit[..., 2]).mean() > 0.01  # real colour, not grey


# -- compressed transfer syntaxes -----------------------------------------------------------------------------
@pytest.mark.parametrize("compressed,plain", [
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),   # JPEG-LS: only pylibjpeg(-libjpeg) decodes it here
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),          # JPEG lossless (process 14), RGB
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
])
def test_lossless_compressed_files_decode_to_the_same_pixels(tmp_path, compressed, plain):
    (a,) = dicom_units(pydicom_file(compressed), context(tmp_path))
    (b,) = dicom_units(pydicom_file(plain), context(tmp_path))
    np.testing.assert_array_equal(a, b)


def test_jpeg_ls_is_decoded_by_pylibjpeg():
    from pydicom.pixels import get_decoder

    ts = pydicom.dcmread(pydicom_file("MR_small_jpeg_ls_lossless.dcm")).file_meta.TransferSyntaxUID
    assert get_decoder(ts).available_plugins == ("pylibjpeg",)


def test_12_bit_lossy_jpeg_decodes(tmp_path):
    (unit,) = dicom_units(pydicom_file("JPGExtended.dcm"), context(tmp_path))
    assert unit.shape == (1024, 256) and unit.min() == 0 and unit.max() == 1


@pytest.mark.parametrize("syntax,fragment", [
    ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000"),   # no HTJ2K decoder installed
    ("1.2.840.10008.1.2.4.100", "MPEG2"),                       # pydicom has no decoder at all
])
def test_an_undecodable_syntax_is_rejected_naming_file_and_syntax(tmp_path, syntax, fragment):
    src = tmp_path / "src"
    src.mkdir()
    bad = relabelled(src, "MR_small_jp2klossless.dcm", TransferSyntaxUID=syntax)
    copy_pydicom_files(["CT_small.dcm"], src)
    with pytest.raises(Rejected) as err:
        dicom_units(bad, context(tmp_path))
    assert err.value.kind == "unsupported_syntax" and fragment in err.value.reason and syntax in err.value.reason
    labels = write_labels(tmp_path / "labels.csv", "path", [(bad.name, "a"), ("CT_small.dcm", "b")])
    source = {"type": "dicom", "path": str(src), "labels": {"csv": str(labels), "key": "path"}}
    with pytest.raises(InputError) as failed:
        run_prepare(tmp_path, source, on_error="fail")
    message = str(failed.value)
    (input_id,) = failed.value.input_paths  # named by its salted id; the path is for --show-paths only
    assert bad.name not in message and input_id in message and fragment in message and "\n" not in message
    assert failed.value.input_paths[input_id] == str(bad.resolve())
    assert not (tmp_path / "out").exists()  # nothing half-written


# -- a real mixed folder through the whole stage --------------------------------------------------------------
SUBJECT_CLASS = {  # PatientID of the pydicom files -> the class the test gives them
    "1CT1": "a", "4MR1": "a", "8NM1": "a", "id11111": "a",
    "ID1": "b", "11-05-25-142825": "b", "13US1": "b", "021234567": "b", "99000": "b",
}
GOOD = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
        "JPGExtended.dcm", "rtdose.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm",
        "examples_palette.dcm", "examples_rgb_color.dcm", "examples_overlay.dcm", "liver_1frame.dcm"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    src = copy_pydicom_files(GOOD + ["image_dfl.dcm", "rtplan.dcm", "MR_truncated.dcm"], tmp / "src")
    (src / "notes.txt").write_text("not an image\n")
    rows = [(name, SUBJECT_CLASS.get(str(pydicom.dcmread(src / name, stop_before_pixels=True).PatientID), "a"))
            for name in sorted(p.name for p in src.glob("*.dcm"))]
    labels = write_labels(tmp / "labels.csv", "path", rows)
    result = run_prepare(tmp, {"type": "dicom", "path": str(src), "labels": {"csv": str(labels), "key": "path"}},
                         workers=2, size=32, min_size=8)  # rtdose.dcm's frames are 10 x 10
    return tmp, src, result


def test_a_real_folder_is_ingested_with_every_problem_listed(mixed):
    tmp, src, result = mixed
    out = tmp / "out"
    table = manifest(out)
    assert len(table) == len(GOOD) == result.images
    assert table.subject_id.nunique() == len(SUBJECT_CLASS)
    kinds = dict(zip(rejects(out, src).path, rejects(out, src).kind))
    assert kinds == {"image_dfl.dcm": "no_subject",       # an empty PatientID: the subject is unknown
                     "rtplan.dcm": "no_pixels", "MR_truncated.dcm": "unreadable", "notes.txt": "not_dicom"}
    for row in table.to_dict("records"):
        img = image(out, row["path"])
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        assert row["path"].startswith(f"images/{row['split']}/{row['class']}/")


def test_the_four_encodings_of_one_patient_share_subject_and_split(mixed):
    tmp, src, _ = mixed
    table = manifest(tmp / "out")
    images = images_by_source(tmp / "out", src)
    mr = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"]
    for name in mr[1:]:
        np.testing.assert_array_equal(images[name][0], images["MR_small.dcm"][0])
    from medti.hashing import file_sha256

    rows = table[table.source_checksum.isin([file_sha256(src / n) for n in mr])]
    assert len(rows) == 4 and rows.subject_id.nunique() == 1 and rows.split.nunique() == 1
    assert set(table.groupby("subject_id").split.nunique()) == {1}  # no subject in two splits


@pytest.mark.parametrize("key", ["SOPInstanceUID", "StudyInstanceUID", "PatientID", "tag"])
def test_labels_by_uid_patient_id_or_tag(tmp_path, key):
    names = ["CT_small.dcm", "MR_small.dcm", "JPGExtended.dcm", "SC_rgb_rle.dcm", "examples_rgb_color.dcm",
             "examples_overlay.dcm"]
    src = copy_pydicom_files(names, tmp_path / "src")
    headers = {n: pydicom.dcmread(src / n, stop_before_pixels=True) for n in names}
    want = {n: SUBJECT_CLASS[str(h.PatientID)] for n, h in headers.items()}
    if key == "tag":  # the label in an attribute of each file (here: written into PatientComments)
        for n, _h in headers.items():
            ds = pydicom.dcmread(src / n)
            ds.PatientComments = {"a": "healthy", "b": "sick"}[want[n]]
            ds.save_as(src / n)
        labels = {"tag": "PatientComments", "map": {"healthy": "a", "sick": "b"}}
    else:
        rows = [(str(headers[n].get(key)), want[n]) for n in names]
        labels = {"csv": str(write_labels(tmp_path / "labels.csv", key, rows)), "key": key}
    run_prepare(tmp_path, {"type": "dicom", "path": str(src), "labels": labels, "subject_from": "file"})
    images = images_by_source(tmp_path / "out", src)
    table = manifest(tmp_path / "out")
    from medti.hashing import file_sha256

    got = {n: table[table.source_checksum == file_sha256(src / n)]["class"].tolist() for n in names}
    assert got == {n: [want[n]] for n in names}
    assert all(len(v) == 1 for v in images.values())
