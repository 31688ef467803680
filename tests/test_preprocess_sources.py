"""Non-DICOM sources: volumes the test writes with SimpleITK (.mha, .nii.gz: slice selection, several
sequences resampled onto one grid and stacked as RGB), PNG/JPEG/TIFF folders (class subfolders or a labels
CSV), and the real MedMNIST files of the shared data folder (keeping their splits)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from preprocess_support import image, manifest, rejects, run_prepare, write_labels

from medti.errors import ConfigError


def write_volume(path, array_zyx, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(np.asarray(array_zyx, dtype=np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


# -- volumes: slice selection ---------------------------------------------------------------------------------
DEPTH = 12


def slice_coded_volume() -> np.ndarray:
    """Slice k holds the value k everywhere, so the output grey level tells which slice was taken."""
    return np.broadcast_to(np.arange(DEPTH, dtype=np.float32)[:, None, None], (DEPTH, 16, 16)).copy()


def taken_slice(out, row) -> int:
    grey = image(out, row["path"])[..., 0].astype(float)
    assert grey.std() == 0
    return int(round(grey.mean() / 255 * (DEPTH - 1)))


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz"])
@pytest.mark.parametrize("method,mask_slices,expected", [
    ("middle", None, DEPTH // 2),
    ("mask_middle", {7: 30, 8: 30, 9: 30, 10: 30, 11: 30}, 9),     # an organ covering slices 7..11
    ("largest_lesion", {3: 4, 8: 20, 9: 9}, 8),                   # the lesion is widest on slice 8
    ("largest_lesion", {}, DEPTH // 2),                           # no lesion: the middle slice
])
def test_volume_slice_selection(tmp_path, suffix, method, mask_slices, expected):
    src = tmp_path / "vols"
    rows = []
    for case in range(6):
        grid = {"spacing": (0.8, 0.8, 3.0), "origin": (0.0, 0.0, 10.0 * case)}  # distinct files, not copies
        write_volume(src / f"p{case}{suffix}", slice_coded_volume(), **grid)
        if mask_slices is not None:
            mask = np.zeros((DEPTH, 16, 16), np.float32)
            for z, area in mask_slices.items():
                mask[z].flat[:area] = 1
            write_volume(src / f"p{case}_mask{suffix}", mask, **grid)
        rows.append((f"p{case}", "ab"[case % 2]))
    labels = write_labels(tmp_path / "labels.csv", "case", rows)
    source = {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "case"},
              "slice": method, "subject_from": "case"}
    if mask_slices is not None:
        source["mask"] = f"*_mask{suffix}"
    run_prepare(tmp_path, source, size=16, normalise="minmax")
    table = manifest(tmp_path / "out")
    assert len(table) == 6 and table.subject_id.nunique() == 6
    assert [taken_slice(tmp_path / "out", r) for r in table.to_dict("records")] == [expected] * 6
    assert rejects(tmp_path / "out").empty  # the masks were used, not listed as stray files


def test_an_empty_organ_mask_is_a_listed_reject(tmp_path):
    src = tmp_path / "vols"
    for case in range(7):
        write_volume(src / f"p{case}.mha", slice_coded_volume(), origin=(0.0, 0.0, 10.0 * case))
        mask = np.zeros((DEPTH, 16, 16), np.float32)
        if case:
            mask[5] = 1
        write_volume(src / f"p{case}_organ.mha", mask, origin=(0.0, 0.0, 10.0 * case))
    labels = write_labels(tmp_path / "labels.csv", "case", [(f"p{c}", "ab"[c % 2]) for c in range(7)])
    run_prepare(tmp_path, {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "case"},
                           "slice": "mask_middle", "mask": "*_organ.mha", "subject_from": "case"}, size=16)
    table = rejects(tmp_path / "out", src)
    assert table.path.tolist() == ["p0.mha", "p0_organ.mha"]
    assert set(table.kind) == {"empty_mask"} and "organ mask is empty" in table.reason[0]


# -- volumes: several sequences on different grids, stacked as RGB --------------------------------------------
BOX = {"x": (20.0, 36.0), "y": (12.0, 28.0), "z": (10.0, 22.0)}  # mm: where every sequence shows the lesion


def box_volume(shape_zyx, spacing_xyz, origin_xyz, inside: float, outside: float) -> np.ndarray:
    """A volume that is ``inside`` within BOX (in physical space) and ``outside`` elsewhere."""
    z, y, x = (origin_xyz[2 - a] + spacing_xyz[2 - a] * np.arange(n) for a, n in enumerate(shape_zyx))
    inz, iny, inx = ((v >= BOX[k][0]) & (v < BOX[k][1]) for v, k in ((z, "z"), (y, "y"), (x, "x")))
    return np.where(inz[:, None, None] & iny[None, :, None] & inx[None, None, :], inside, outside)


SEQUENCES = {  # name: (shape z, y, x; spacing x, y, z; origin x, y, z; inside; outside)
    "t2w": ((16, 64, 64), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), 0.2, 1.0),    # the reference grid; lesion dark
    "adc": ((8, 32, 32), (2.0, 2.0, 4.0), (0.5, 0.5, 1.0), 0.1, 1.0),     # coarser; lesion dark
    "hbv": ((10, 40, 40), (1.6, 1.6, 3.2), (-0.7, 0.3, 0.6), 1.0, 0.05),  # another grid; lesion bright
}


def write_sequence(path, name: str, case: int) -> None:
    """One sequence of a case; cases differ by a constant (minmax-normalised away), so they are not copies."""
    shape, spacing, origin, inside, outside = SEQUENCES[name]
    write_volume(path, box_volume(shape, spacing, origin, inside, outside) + case * 1e-3, spacing, origin)


def test_three_sequences_are_resampled_to_one_grid_and_stacked(tmp_path):
    src = tmp_path / "cases"
    for case in range(6):
        for name in SEQUENCES:
            write_sequence(src / f"c{case}" / f"c{case}_{name}.mha", name, case)
    (src / "c0" / "notes.txt").write_text("scanner notes")
    labels = write_labels(tmp_path / "labels.csv", "case", [(f"c{c}", "ab"[c % 2]) for c in range(6)])
    run_prepare(tmp_path, {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "case"},
                           "sequences": ["*_t2w.mha", "*_adc.mha", "*_hbv.mha"]}, size=64, normalise="minmax")
    out = tmp_path / "out"
    table = manifest(out)
    assert len(table) == 6 and table.subject_id.nunique() == 6  # subject: the case's folder
    listed = rejects(out, src).drop(columns="input_id").to_dict("records")
    assert listed == [{"path": "c0/notes.txt", "kind": "unused_file",
                       "reason": "not a volume file and is no case's mask"}]
    rgb = image(out, table.path[0]).astype(float) / 255
    assert rgb.shape == (64, 64, 3)
    # The middle T2W slice (z = 16 mm) cuts the lesion; on every channel it lies at the same pixels.
    lesion = [rgb[..., 0] < 0.5, rgb[..., 1] < 0.5, rgb[..., 2] > 0.5]
    for channel, name in zip(lesion, SEQUENCES):
        rows, cols = np.nonzero(channel)
        assert abs(rows.mean() - 19.5) <= 1.5 and abs(cols.mean() - 27.5) <= 1.5, name
        assert 12 * 12 <= channel.sum() <= 20 * 20, name
    assert (lesion[0] & lesion[1] & lesion[2]).sum() >= 14 * 14


def test_a_case_missing_a_sequence_is_listed(tmp_path):
    src = tmp_path / "cases"
    for case in range(7):
        for name in SEQUENCES:
            if case == 0 and name == "hbv":
                continue
            write_sequence(src / f"c{case}_{name}.nii.gz", name, case)
    labels = write_labels(tmp_path / "labels.csv", "path", [(f"c{c}_t2w.nii.gz", "ab"[c % 2]) for c in range(7)])
    run_prepare(tmp_path, {"type": "volume", "path": str(src), "labels": {"csv": str(labels), "key": "path"},
                           "sequences": ["*_t2w.nii.gz", "*_adc.nii.gz", "*_hbv.nii.gz"], "subject_from": "case"},
                size=32)
    table = rejects(tmp_path / "out", src)
    assert table.path.tolist() == ["c0_adc.nii.gz", "c0_t2w.nii.gz"]
    assert set(table.kind) == {"missing_sequence"} and "*_hbv.nii.gz" in table.reason[0]
    assert len(manifest(tmp_path / "out")) == 6


def test_percentile_normalisation_ignores_a_hot_voxel(tmp_path):
    from medti.preprocess.volumes import stacked_unit

    vol = np.tile(np.linspace(0, 10, 32, dtype=np.float32), (5, 32, 1))
    vol[0, 0, 0] = 1000.0  # one hot voxel elsewhere in the volume
    img = sitk.GetImageFromArray(vol)
    by_minmax = stacked_unit([img], None, "middle", "minmax", (0.5, 99.5))
    by_percentile = stacked_unit([img], None, "middle", "percentile", (0.5, 99.5))
    assert by_minmax.max() < 0.02  # the whole slice crushed to black by one voxel
    assert by_percentile.max() == 1.0 and 0.4 < by_percentile.mean() < 0.6


# -- image folders --------------------------------------------------------------------------------------------
def test_class_subfolders_keep_grey_and_colour_and_list_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "images"
    grey = {}
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            g = rng.integers(0, 256, (24, 24), dtype=np.uint8)
            grey[f"{cls}/g{i}.png"] = g
            Image.fromarray(g).save(src / cls / f"g{i}.png")
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(src / cls / "c.jpg", quality=95)
    Image.fromarray((rng.integers(0, 4096, (24, 24)) * 16).astype(np.uint16)).save(src / "a" / "x.tif")
    Image.fromarray(rng.integers(0, 256, (24, 24, 2), dtype=np.uint8), mode="LA").save(src / "b" / "la.png")
    rgba = rng.integers(0, 256, (24, 24, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(src / "b" / "alpha.png")
    Image.fromarray(grey["a/g0.png"]).save(src / "loose.png")
    (src / "a" / "readme.md").write_text("# notes")
    run_prepare(tmp_path, {"type": "folder", "path": str(src)}, size=24, fit="pad")
    out = tmp_path / "out"
    table = manifest(out)
    assert len(table) == 6 + 2 + 1 and table["class"].value_counts().to_dict() == {"a": 5, "b": 4}
    kinds = dict(zip(rejects(out, src).path, rejects(out, src).kind))
    assert kinds == {"b/la.png": "bad_channels", "b/alpha.png": "bad_channels", "loose.png": "no_label",
                     "a/readme.md": "not_image"}
    outputs = {tuple(image(out, p)[..., 0].ravel()[:50]) for p in table.path}
    for g in grey.values():  # 8-bit grey is kept as it is (replicated to RGB)
        assert tuple(g.ravel()[:50]) in outputs
    colour = [image(out, p) for p in table.path if image(out, p).std(axis=2).mean() > 5]
    assert len(colour) == 2  # the two JPEGs stay colour


def test_a_labels_csv_names_images_and_both_kinds_of_orphans_are_listed(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    rows = []
    for i in range(7):
        Image.fromarray(np.full((16, 20), 40 * i, np.uint8)).save(src / f"img{i}.png")
        rows.append((f"img{i}.png", "ab"[i % 2]))
    rows[6] = ("img6.png", "1")  # a class index is a label too
    rows.append(("gone.png", "a"))  # a label without an image
    labels = write_labels(src / "labels.csv", "path", rows)
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(src / "unlabelled.png")
    run_prepare(tmp_path, {"type": "folder", "path": str(src), "labels": {"csv": str(labels), "key": "path"}},
                size=20, fit="crop")
    out = tmp_path / "out"
    table = manifest(out)
    assert len(table) == 7 and table["class"].value_counts().to_dict() == {"a": 3, "b": 4}
    assert image(out, table.path[0]).shape == (20, 20, 3)
    listed = rejects(out, src).set_index("path")
    assert listed.loc["unlabelled.png", "kind"] == "no_label"
    assert (listed.loc["labels.csv#line9", "kind"] == "label_without_image"
            and listed.loc["labels.csv#line9", "reason"] == "labels file line 9: no image has this path")
    assert "labels.csv" not in listed.index  # the labels file inside the folder is not an input


# -- MedMNIST -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,classes", [("breastmnist", ["normal", "malignant"]),
                                          ("pneumoniamnist", ["normal", "pneumonia"])])
def test_medmnist_keeps_its_official_splits(tmp_path, medmnist_dir, name, classes):
    with np.load(medmnist_dir / f"{name}_28.npz") as z:
        official = {s: np.bincount(z[f"{s}_labels"].ravel(), minlength=2) for s in ("train", "val", "test")}
    result = run_prepare(tmp_path, {"type": "medmnist", "path": str(medmnist_dir), "dataset": name},
                         classes=classes, size=28, workers=2)
    table = manifest(tmp_path / "out")
    listed = rejects(tmp_path / "out")
    assert set(listed.kind) <= {"duplicate"}  # identical arrays are kept once, and listed
    dropped = {s: listed.path.str.contains(f"#{s}/").sum() for s in official}
    for split, counts in official.items():
        got = table[table.split == split]["class"].value_counts()
        assert sum(got.get(c, 0) for c in classes) == counts.sum() - dropped[split]
        assert abs(got.get(classes[0], 0) - counts[0]) <= dropped[split]
    assert result.summary["splits_from"] == "source (official)"
    assert table.subject_id.nunique() == len(table)  # no patient ids in MedMNIST: one subject per image
    assert 0 < table.ti_subset.sum() <= 2 * 100 and set(table[table.ti_subset].split) == {"train"}
    first = image(tmp_path / "out", table.path[0])
    assert first.shape == (28, 28, 3)
    with np.load(medmnist_dir / f"{name}_28.npz") as z:  # pixels kept as they are (28 px, no resize)
        arrays = {a.tobytes() for s in ("train", "val", "test") for a in z[f"{s}_images"]}
    assert first[..., 0].tobytes() in arrays


def test_medmnist_class_names_map_and_leave_out_label_indices(tmp_path, medmnist_dir):
    with pytest.raises(ConfigError, match="class_names: 'tumour' is not a class"):
        run_prepare(tmp_path, {"type": "medmnist", "path": str(medmnist_dir / "breastmnist_28.npz"),
                               "class_names": ["tumour", "b"]})
    run_prepare(tmp_path, {"type": "medmnist", "path": str(medmnist_dir / "breastmnist_28.npz"),
                           "class_names": ["b", "a"]}, size=28)  # index 0 is class b (label 1 here)
    with np.load(medmnist_dir / "breastmnist_28.npz") as z:
        zeros = int((z["test_labels"] == 0).sum())
    table = manifest(tmp_path / "out")
    test_b = table[(table.split == "test") & (table["class"] == "b")]
    assert zeros - len(rejects(tmp_path / "out")) <= len(test_b) <= zeros and set(test_b.label) == {1}


def test_medmnist_format_with_three_labels_keeps_two(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 30), ("val", 9), ("test", 9)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)  # an RGB subset
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    np.savez(tmp_path / "tinymnist_64.npz", **arrays)
    run_prepare(tmp_path, {"type": "medmnist", "path": str(tmp_path), "dataset": "tinymnist", "image_size": 64,
                           "class_names": ["a", None, "b"]}, size=16)
    table = manifest(tmp_path / "out")
    assert table["class"].value_counts().to_dict() == {"a": 16, "b": 16}
    listed = rejects(tmp_path / "out")
    assert len(listed) == 16 and set(listed.kind) == {"unknown_label"}
    assert listed.reason[0] == "label 1 has no class in class_names"
    first = image(tmp_path / "out", table.path[0])
    assert first.std(axis=2).mean() > 10  # colour kept


def test_a_missing_medmnist_file_says_where_to_get_it(tmp_path):
    from medti.errors import InputError

    with pytest.raises(InputError) as err:
        run_prepare(tmp_path, {"type": "medmnist", "path": str(tmp_path), "dataset": "dermamnist", "image_size": 64})
    assert str(err.value).startswith(f"{tmp_path / 'dermamnist_64.npz'}: MedMNIST file not found (set source.download")
    import importlib.util

    if importlib.util.find_spec("medmnist") is None:  # with it installed, this would download
        with pytest.raises(ConfigError, match="the optional 'medmnist' package is not installed"):
            run_prepare(tmp_path, {"type": "medmnist", "path": str(tmp_path), "dataset": "dermamnist",
                                   "download": True})


def test_a_nifti_simpleitk_refuses_is_read_with_nibabel(tmp_path):
    import nibabel as nib

    from medti.preprocess.volumes import read_volume

    sheared = np.array([[1.0, 0.3, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])  # not orthonormal
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # x, y, z as NIfTI stores them
    nib.save(nib.Nifti1Image(data, sheared), tmp_path / "sheared.nii.gz")
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(tmp_path / "sheared.nii.gz"))
    img = read_volume(tmp_path / "sheared.nii.gz")
    assert img.GetSize() == (4, 5, 6) and img.GetSpacing()[2] == 2.0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), data.transpose(2, 1, 0))


@pytest.mark.parametrize("fit,expected", [
    ("pad", [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]),   # black bars above and below
    ("crop", [[1, 1, 1, 1]] * 4),                                      # the centre square
])
def test_a_wide_image_is_squared_by_padding_or_cropping(fit, expected):
    from medti.preprocess.imaging import finish

    wide = np.ones((2, 4), np.float32)
    out = finish(wide, 4, fit, "rgb")
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[..., 0] // 255, expected)
    assert finish(np.ones((2, 6), np.float32), 4, "resize", "grey").shape == (4, 4)


def test_hidden_bookkeeping_files_are_not_inputs(tmp_path):
    """Snakemake leaves .snakemake_timestamp in directory outputs (the phantom folders); Finder leaves .DS_Store."""
    from medti.preprocess.inputs import list_files

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(b"")
    (tmp_path / ".snakemake_timestamp").write_text("")
    (tmp_path / "a" / ".DS_Store").write_text("")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("")
    assert list_files(tmp_path) == ["a/x.dcm"]


def test_prepare_sweeps_its_own_leftovers_and_never_a_parallel_jobs_staging(tmp_path):
    """Under `snakemake --cores 4` two prepare jobs fill sibling outputs (data/prepared/<modality>) at once:
    each removes what a killed run of its own output left, never the staging folder the other is writing."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(src / cls / f"g{i}.png")
    parent = tmp_path / "prepared"
    parent.mkdir()
    sibling = parent / ".chest_xray.k2j4x9ab.tmp"  # the other job, mid-write
    (sibling / "images").mkdir(parents=True)
    (sibling / "images" / "0.png").write_bytes(b"in progress")
    own = parent / ".out.q8w7e6rt.tmp"  # left by a SIGKILLed earlier run of this output
    own.mkdir()
    run_prepare(tmp_path, {"type": "folder", "path": str(src)}, out="prepared/out", size=24)
    assert (sibling / "images" / "0.png").read_bytes() == b"in progress"
    assert not own.exists()
    assert len(manifest(parent / "out")) == 12
    assert sorted(p.name for p in parent.iterdir()) == [sibling.name, "out"]
