"""Splits by subject, stratified by class, deterministic per seed; the embedding subset drawn from train only."""

from __future__ import annotations

from collections import Counter

import pytest
from preprocess_support import manifest, rejects, run_prepare

from medti.errors import ConfigError
from medti.phantoms import generate_phantoms
from medti.preprocess.splitting import assign_splits, pick_subset, subject_class

CLASSES = ["normal", "opacity"]


def subjects(n_per_class: int) -> dict[str, str]:
    return {f"s{c}{i:03d}": cls for c, cls in enumerate(CLASSES) for i in range(n_per_class)}


def per_class_and_split(assigned: dict, classes_of: dict) -> Counter:
    return Counter((classes_of[s], split) for s, split in assigned.items())


def test_fractions_are_taken_per_class():
    classes_of = subjects(40)
    assigned = assign_splits(classes_of, CLASSES, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=1)
    counts = per_class_and_split(assigned, classes_of)
    for cls in CLASSES:
        assert (counts[cls, "train"], counts[cls, "val"], counts[cls, "test"]) == (20, 10, 10)


def test_subject_counts_as_in_the_paper_leave_the_rest_out():
    classes_of = subjects(7)
    assigned = assign_splits(classes_of, CLASSES, {"train": 3, "val": 1, "test": 2}, seed=1)
    counts = per_class_and_split(assigned, classes_of)
    for cls in CLASSES:
        assert (counts[cls, "train"], counts[cls, "val"], counts[cls, "test"], counts[cls, None]) == (3, 1, 2, 1)


def test_the_seed_decides_and_only_the_seed():
    classes_of = subjects(30)
    split = {"train": 0.5, "val": 0.25, "test": 0.25}
    first = assign_splits(classes_of, CLASSES, split, seed=3)
    assert assign_splits(dict(reversed(list(classes_of.items()))), CLASSES, split, seed=3) == first
    assert assign_splits(classes_of, CLASSES, split, seed=4) != first


@pytest.mark.parametrize("fractions", [(0.1, 0.1, 0.1), (0.34, 0.33, 0.33), (0.8, 0.1, 0.1), (0.9, 0.0, 0.1)])
def test_every_requested_split_gets_a_subject_of_every_class(fractions):
    split = dict(zip(("train", "val", "test"), fractions))
    for n in range(3, 12):
        counts = per_class_and_split(assign_splits(subjects(n), CLASSES, split, seed=0), subjects(n))
        for cls in CLASSES:
            for s, fraction in split.items():
                assert (counts[cls, s] >= 1) == (fraction > 0), (n, split, cls, s)


@pytest.mark.parametrize("split,message", [
    ({"train": 5, "val": 2, "test": 2}, "class 'normal' has 4 subjects, but prepare.split asks for 5 + 2 + 2 = 9"),
    ({"train": 0.5, "val": 0.3, "test": 0.3}, "prepare.split: the fractions add up to 1.1, more than 1"),
    ({"train": 0.5, "val": 2, "test": 2}, "prepare.split: give fractions"),
])
def test_impossible_splits_fail_with_one_line(split, message):
    with pytest.raises(ConfigError) as err:
        assign_splits(subjects(4), CLASSES, split, seed=0)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_class_with_too_few_subjects_for_three_splits_is_named():
    classes_of = dict(subjects(5), **{"x": "opacity"})
    classes_of = {s: c for s, c in classes_of.items() if c == "normal" or s in ("x", "s1000")}
    with pytest.raises(ConfigError, match="class 'opacity' has 2 subjects, too few for a subject-wise split "
                                          "into train, val, test"):
        assign_splits(classes_of, CLASSES, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)


def test_a_subjects_class_is_its_majority_and_a_tie_goes_to_the_disease():
    assert subject_class(["normal", "normal", "opacity"], CLASSES) == "normal"
    assert subject_class(["normal", "opacity"], CLASSES) == "opacity"


def test_the_subset_spreads_over_subjects_and_is_seeded():
    images = [(f"s{s}", f"s{s}-img{k}") for s in range(10) for k in range(s % 3 + 1)]
    picked = pick_subset(images, 10, seed=5)
    assert len(picked) == len(set(picked)) == 10 and {i.split("-")[0] for i in picked} == {f"s{s}" for s in range(10)}
    assert pick_subset(images, 10, seed=5) == picked and pick_subset(images, 10, seed=6) != picked
    assert len(pick_subset(images, 100, seed=5)) == len(images)


# -- through the stage, on phantoms where some subjects have a follow-up image ------------------------------------
@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    return generate_phantoms("chest_xray", tmp_path_factory.mktemp("chest") / "raw", subjects_per_class=12, seed=2,
                             size=48).out


def prepared(tmp_path, src, out="out", **settings):
    source = {"type": "dicom", "path": str(src), "labels": {"csv": str(src / "labels.csv"), "key": "path"}}
    settings.setdefault("split", {"train": 0.5, "val": 0.25, "test": 0.25})
    run_prepare(tmp_path, source, classes=CLASSES, out=out, size=32, **settings)
    return manifest(tmp_path / out)


def test_no_subject_in_two_splits_and_the_subset_is_from_train(tmp_path, chest):
    table = prepared(tmp_path, chest, ti_per_class=4)
    assert table.groupby("subject_id").size().max() == 2  # follow-ups exist, so a by-image split could leak
    assert set(table.groupby("subject_id").split.nunique()) == {1}
    subjects_per = table.drop_duplicates("subject_id").groupby(["class", "split"]).size().to_dict()
    assert subjects_per == {(c, s): n for c in CLASSES for s, n in (("train", 6), ("val", 3), ("test", 3))}
    subset = table[table.ti_subset]
    assert set(subset.split) == {"train"} and subset["class"].value_counts().to_dict() == {"normal": 4, "opacity": 4}
    assert subset.subject_id.nunique() == 8  # one image per subject before a second of any


def test_the_same_seed_gives_the_same_dataset_and_another_seed_another(tmp_path, chest):
    first = prepared(tmp_path, chest, out="a", ti_per_class=3)
    prepared(tmp_path, chest, out="b", ti_per_class=3, workers=2)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    other = prepared(tmp_path, chest, out="c", ti_per_class=3, seed=99)
    assert len(other) == len(first)
    assert dict(zip(other.source_checksum, other.split)) != dict(zip(first.source_checksum, first.split))


def test_counts_per_class_leave_the_rest_listed_as_unused(tmp_path, chest):
    table = prepared(tmp_path, chest, split={"train": 5, "val": 2, "test": 2}, ti_per_class=2)
    per = table.drop_duplicates("subject_id").groupby(["class", "split"]).size().to_dict()
    assert per == {(c, s): n for c in CLASSES for s, n in (("train", 5), ("val", 2), ("test", 2))}
    unused = rejects(tmp_path / "out")
    assert set(unused.kind) == {"unused"} and len(unused) + len(table) == len(list(chest.rglob("*.dcm")))
    assert unused.reason.str.contains("prepare.split takes fewer subjects of class").all()


def test_a_class_too_small_for_the_split_fails_naming_it(tmp_path, chest):
    with pytest.raises(ConfigError) as err:
        prepared(tmp_path, chest, split={"train": 10, "val": 2, "test": 2})
    assert "class 'normal' has 12 subjects, but prepare.split asks for 10 + 2 + 2 = 14" in str(err.value)
    assert not (tmp_path / "out").exists()
