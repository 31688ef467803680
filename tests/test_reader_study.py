"""medti reader-study: blinded studies made from image sets, scored with exact statistics, and the page driven
in a real headless browser (Debian's Chromium through selenium and the system chromedriver)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from scipy.stats import beta, binomtest

from medti.cli import main
from medti.deid import read_input_paths
from medti.errors import ConfigError, InputError
from medti.reader_study import (
    cohen_kappa,
    fleiss_kappa,
    fleiss_kappa_ratings,
    kappa_with_interval,
    load_key,
    make_from_params,
    make_study,
    proportion,
    score_study,
)
from medti.reader_study.page import CSP

CLASSES = ("normal", "opacity")
PHI = "DOE^JANE 1970-01-01"  # a name in the source images' text chunks: never in the study


# -- image sets --------------------------------------------------------------------------------------------------

def _png(path: Path, rng: np.random.Generator, rgb: bool = False, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size, size, 3) if rgb else (size, size), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", PHI)
    info.add_text("Source", str(path))
    img = Image.fromarray(arr if rgb else np.stack([arr] * 3, axis=-1))  # grey stored as RGB, as medti prepare does
    img.save(path, pnginfo=info, dpi=(300, 300))


def _manifest(folder: Path, rows: list[dict]) -> Path:
    import pandas as pd

    from medti.manifest import COLUMNS

    df = pd.DataFrame([{**dict.fromkeys(COLUMNS, ""), **r} for r in rows])
    path = folder / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def _real_set(folder: Path, n_test: int, rng: np.random.Generator) -> Path:
    rows = []
    for label, c in enumerate(CLASSES):
        for split, n in (("test", n_test), ("train", 3)):
            for i in range(n):
                rel = f"images/{split}/{c}/subject{label}{split}{i:02d}.png"
                _png(folder / rel, rng)
                rows.append({"path": rel, "modality": "chest_xray", "class": c, "label": label,
                             "subject_id": f"s{label}{i}", "split": split, "synthetic": False})
    return _manifest(folder, rows)


def _synthetic_set(folder: Path, n: int, rng: np.random.Generator, name: str) -> Path:
    rows = []
    for label, c in enumerate(CLASSES):
        for i in range(n):
            rel = f"{c}/{name}-{c}-{i:05d}.png"
            _png(folder / rel, rng, rgb=True)
            rows.append({"path": rel, "modality": "chest_xray", "class": c, "label": label,
                         "subject_id": f"syn-{c}-{i}", "split": "train", "synthetic": True})
    return _manifest(folder, rows)


def _folder_set(folder: Path, n: int, rng: np.random.Generator, name: str) -> Path:
    for c in CLASSES:
        for i in range(n):
            _png(folder / c / f"{name}_{c}_{i}.png", rng, rgb=True)
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reader_sets")
    rng = np.random.default_rng(0)
    return {"root": root,
            "real": _real_set(root / "prepared", 8, rng),
            "synthetic": _synthetic_set(root / "synthetic" / "full", 8, rng, "full"),
            "few": _synthetic_set(root / "synthetic" / "few", 8, rng, "few"),
            "stylegan": _folder_set(root / "stylegan3", 6, rng, "sg3")}


@pytest.fixture(autouse=True)
def _outside_the_repository(tmp_path, monkeypatch):
    """Studies made without a project name the cwd's: keep their salt and lookup out of the repository."""
    monkeypatch.chdir(tmp_path)


def _make(sets, out: Path, **kw):
    args = dict(readers=["alice", "bob", "carol"], real=sets["real"], synthetic=sets["synthetic"],
                compare={"diffusion": sets["few"], "stylegan3": sets["stylegan"]}, cases_per_class=2, repeats=1,
                seed=11, root=sets["root"])
    args.update(kw)
    return make_study(out, **args)


@pytest.fixture(scope="module")
def study(sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("reader_study") / "study"
    s = _make(sets, out)
    return s, load_key(s.key)


# -- the statistics, checked by hand and against scipy and scikit-learn -----------------------------------------

def test_the_papers_36_of_50_preference():
    p = proportion(36, 50, 0.5)
    assert round(p["p_value"], 4) == 0.0026
    assert p["p_value"] == pytest.approx(binomtest(36, 50, 0.5).pvalue, rel=1e-12)
    assert p["p_value"] == pytest.approx(0.0026021714567, rel=1e-9)
    assert p["rate"] == 0.72
    # Clopper-Pearson by hand: the beta quantiles
    assert p["ci_low"] == pytest.approx(beta.ppf(0.025, 36, 15), rel=1e-9)
    assert p["ci_high"] == pytest.approx(beta.ppf(0.975, 37, 14), rel=1e-9)
    assert (round(p["ci_low"], 3), round(p["ci_high"], 3)) == (0.575, 0.838)


def test_exact_intervals_at_the_edges_and_other_nulls():
    n = 12
    none, every = proportion(0, n), proportion(n, n)
    assert none["ci_low"] == 0 and none["ci_high"] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    assert every["ci_high"] == 1 and every["ci_low"] == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    assert every["p_value"] == pytest.approx(2 * 0.5**n)
    third = proportion(9, 15, 1 / 3, confidence=0.9)
    ref = binomtest(9, 15, 1 / 3)
    assert third["p_value"] == pytest.approx(ref.pvalue)
    assert (third["ci_low"], third["ci_high"]) == pytest.approx(tuple(ref.proportion_ci(0.9, "exact")))
    assert proportion(3, 7, None)["p_value"] is None
    assert proportion(0, 0)["rate"] is None


def test_cohen_kappa_by_hand_and_against_sklearn():
    # 50 cases: both yes 20, A yes B no 5, A no B yes 10, both no 15 -> po 0.7, pe 0.5 * 0.6 + 0.5 * 0.4 = 0.5
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    x = rng.choice(["normal", "opacity", "effusion"], size=80)
    y = np.where(rng.random(80) < 0.6, x, rng.choice(["normal", "opacity", "effusion"], size=80))
    assert cohen_kappa(list(x), list(y)) == pytest.approx(cohen_kappa_score(x, y), abs=1e-12)
    assert cohen_kappa(["a"] * 5, ["a"] * 5) is None  # chance agreement 1: undefined


def test_fleiss_kappa_on_the_textbook_example():
    # Fleiss (1971), as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories; P = 0.378, Pe = 0.213.
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-5)
    # the same from answers per reader, and the bootstrap wrapper agrees on the point
    ratings = [[j for j, c in enumerate(row) for _ in range(c)] for row in counts]  # subjects x 14
    per_reader = [list(col) for col in zip(*ratings)]
    assert fleiss_kappa_ratings(per_reader) == pytest.approx(0.20993, abs=1e-5)
    k = kappa_with_interval(per_reader, n_boot=500, seed=1)
    assert k["statistic"] == "fleiss" and k["kappa"] == pytest.approx(0.20993, abs=1e-5)
    assert k["ci_low"] < k["kappa"] < k["ci_high"] and k["n_cases"] == 10 and k["n_readers"] == 14
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 1], [2, 0], [3, 0]])  # subjects rated by different numbers of readers


def test_kappa_intervals_are_a_seeded_bootstrap_over_cases():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(5)
    a = list(rng.choice(["real", "synthetic"], size=60))
    b = [x if rng.random() < 0.75 else ("real" if x == "synthetic" else "synthetic") for x in a]
    k = kappa_with_interval([a, b], ["real", "synthetic"], n_boot=1000, seed=2)
    assert k["statistic"] == "cohen" and k["kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert k["ci_low"] < k["kappa"] < k["ci_high"] and k["ci_method"] == "percentile bootstrap over cases"
    assert k == kappa_with_interval([a, b], ["real", "synthetic"], n_boot=1000, seed=2)
    # by hand: the same resamples of cases, kappa of each, percentiles
    idx = np.random.default_rng(2).integers(0, 60, size=(1000, 60))
    boot = [cohen_kappa_score(np.array(a)[i], np.array(b)[i]) for i in idx]
    assert (k["ci_low"], k["ci_high"]) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    perfect = kappa_with_interval([a, a], ["real", "synthetic"], n_boot=200)
    assert perfect["kappa"] == 1.0 and (perfect["ci_low"], perfect["ci_high"]) == (1.0, 1.0)


# -- make --------------------------------------------------------------------------------------------------------

def _png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append(kind.decode("ascii"))
        pos += 12 + length
    return chunks


def test_make_blinds_the_images_and_keeps_the_key_apart(study, sets):
    s, key = study
    folder = s.folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "images", "study.html", "study.json"]
    assert s.key == folder.parent / "study-key" and not s.key.resolve().is_relative_to(folder.resolve())
    assert stat.S_IMODE(s.key.stat().st_mode) == 0o700
    assert stat.S_IMODE((s.key / "key.json").stat().st_mode) == 0o600
    # 2 classes x (2 real + 2 synthetic) per single-image task, 2 x 2 pairs, one repeat per task
    assert s.tasks == {"real-or-synthetic": 9, "which-class": 9, "which-better": 5}
    images = sorted((folder / "images").iterdir())
    assert len(images) == len(key["images"]) == 8 + 8 + 8
    lookup = read_input_paths(sets["root"])  # the private id -> path lookup, beside the salt
    originals = [Path(lookup[v["input"]]) for v in key["images"].values()]
    page = (folder / "study.html").read_text()
    public = (folder / "study.json").read_text()
    for img in images:
        assert re.fullmatch(r"[0-9a-f]{12}\.png", img.name)
        data = img.read_bytes()
        assert set(_png_chunks(data)) <= {"IHDR", "IDAT", "IEND"}, "metadata chunks left in a study image"
        assert PHI.encode() not in data
        # the pixels are the original's (the grey images stay grey: every image is re-encoded alike)
        src = Path(lookup[key["images"][img.stem]["input"]])
        assert hashlib.sha256(src.read_bytes()).hexdigest() == key["images"][img.stem]["file_sha256"]
        assert np.array_equal(np.asarray(Image.open(img).convert("RGB")), np.asarray(Image.open(src).convert("RGB")))
    assert {Image.open(i).mode for i in images} == {"RGB"}  # one pixel format: the mode tells nothing
    for text in (page, public):
        assert PHI not in text
        assert not [o for o in originals if o.stem in text or str(o) in text], "an original name reached the readers"
        assert not re.search(r"\b(truth|original|a_source|b_source)\b", text)
    # the page: every image once, as a data URI; no address of anything
    assert page.count("data:image/png;base64,") == len(images)
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|src=[\"'](?!data:)", page)
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP.replace(chr(39), "&#x27;")}">' in page
    for directive in ("default-src 'none'", "img-src data:", "style-src 'unsafe-inline'",
                      "script-src 'unsafe-inline'"):
        assert directive in CSP
    # what readers see: items with tasks and random image names; which-better names its class (both images')
    doc = json.loads(public)
    for item_id, item in doc["items"].items():
        assert set(item) <= {"task", "images", "class"} and re.fullmatch(r"q[0-9a-f]{10}", item_id)
        assert ("class" in item) == (item["task"] == "which-better")
    # one image per case: never shown in two cases
    used = [i for c in key["cases"].values() for i in c["images"]]
    assert len(used) == len(set(used)) == len(images)
    # the real images come from the test split only
    assert all(key["images"][i]["source"] != "real" or "/test/" in lookup[key["images"][i]["input"]] for i in used)


def test_the_key_names_no_input_file_or_folder(tmp_path):
    """Export folders and files are often named after the patient: the key (copied to whoever scores) names each
    image by a salted input id and its file's checksum; the paths stay in the project's private lookup."""
    rng = np.random.default_rng(3)
    planted = ("DOE^JOHN", "MRN4711", "19570312")
    real = _folder_set(tmp_path / "hospital_export" / "DOE^JOHN_MRN4711_19570312", 5, rng, "MRN4711_19570312")
    synthetic = _folder_set(tmp_path / "synthetic", 5, rng, "syn")
    project = tmp_path / "project"
    s = make_study(tmp_path / "out" / "study", readers=["r1"], real=real, synthetic=synthetic, split=None,
                   cases_per_class=2, seed=1, root=project)
    written = [p for d in (s.folder, s.key) for p in d.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"key.json", "key.csv", "study.html", "study.json"}
    for p in written:
        data = p.read_bytes()
        assert not [v for v in planted if v.encode() in data], f"{p.name} names the patient"
        assert b"hospital_export" not in data and str(synthetic).encode() not in data, f"{p.name} names an input"
    key = load_key(s.key)
    lookup = read_input_paths(project)
    assert set(lookup) >= {v["input"] for v in key["images"].values()} | {v["input"] for v in key["sources"].values()}
    assert lookup[key["sources"]["real"]["input"]] == str(real.resolve())
    assert stat.S_IMODE((project / ".medti" / "input-paths.jsonl").stat().st_mode) == 0o600
    # the same project salt names the same file alike; another project's salt does not
    again = make_study(tmp_path / "out2" / "study", readers=["r1"], real=real, synthetic=synthetic, split=None,
                       cases_per_class=2, seed=1, root=project)
    other = make_study(tmp_path / "out3" / "study", readers=["r1"], real=real, synthetic=synthetic, split=None,
                       cases_per_class=2, seed=1, root=tmp_path / "elsewhere")
    ids = [sorted(v["input"] for v in load_key(x.key)["images"].values()) for x in (s, again, other)]
    assert ids[0] == ids[1] and not set(ids[0]) & set(ids[2])
    assert again.study_id == other.study_id == s.study_id  # the salt names inputs, it changes no study


def test_orders_are_per_reader_with_repeats_apart_and_pairs_swapped(study, sets):
    s, key = study
    orders = key["orders"]
    assert set(orders) == {"alice", "bob", "carol"}
    items = set(key["items"])
    seqs = {r: [o[0] for o in order] for r, order in orders.items()}
    assert all(sorted(seq) == sorted(items) for seq in seqs.values())
    assert len({tuple(seq) for seq in seqs.values()}) == 3, "readers share an order"
    for r, order in orders.items():
        tasks = [key["cases"][key["items"][i]["case"]]["task"] for i, _ in order]
        assert tasks == sorted(tasks, key=["real-or-synthetic", "which-class", "which-better"].index)
        by_case = {}
        for pos, (item, swap) in enumerate(order):
            by_case.setdefault(key["items"][item]["case"], []).append((pos, swap))
        repeats = {c: v for c, v in by_case.items() if len(v) == 2}
        assert len(repeats) == 3  # one per task
        for case, ((p1, s1), (p2, s2)) in repeats.items():
            assert abs(p1 - p2) >= 2, f"{r}: the repeat of {case} follows at once"
            if key["cases"][case]["task"] == "which-better":
                assert s1 != s2, "a repeated pair keeps its sides"
    # adding a reader leaves the others' orders alone; the same seed gives the same study
    again = make_study(s.folder.parent / "again", readers=["alice", "bob", "carol", "dave"],
                       real=sets["real"], synthetic=sets["synthetic"],
                       compare={"diffusion": sets["few"], "stylegan3": sets["stylegan"]}, cases_per_class=2, repeats=1,
                       seed=11, key=s.folder.parent / "again-key", root=sets["root"])
    key2 = load_key(again.key)
    assert key2["orders"]["alice"] == orders["alice"] and again.study_id != s.study_id


def test_the_same_seed_makes_the_same_study(sets, tmp_path):
    a = _make(sets, tmp_path / "a")
    b = _make(sets, tmp_path / "b")
    c = _make(sets, tmp_path / "c", seed=12)
    assert a.study_id == b.study_id != c.study_id
    assert (a.page.read_bytes() == b.page.read_bytes()) and a.page.read_bytes() != c.page.read_bytes()


def test_make_errors_are_one_clear_line(sets, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"not enough images: real \(test split\) 'normal': 8 images, the study "
                                          r"needs 10 \(real-or-synthetic 5 \+ which-class 5\)"):
        _make(sets, tmp_path / "s", cases_per_class=5, tasks=["real-or-synthetic", "which-class"])
    with pytest.raises(ConfigError, match="must lie outside the study folder"):
        _make(sets, tmp_path / "s", key=tmp_path / "s" / "key")
    with pytest.raises(ConfigError, match="not a usable reader name"):
        _make(sets, tmp_path / "s", readers=["alice", "../bob"])
    with pytest.raises(ConfigError, match="exactly two image sets"):
        _make(sets, tmp_path / "s", compare=[str(sets["few"])])
    with pytest.raises(ConfigError, match="unknown task 'which-one'"):
        _make(sets, tmp_path / "s", cases_per_class="which-one=3")
    assert not (tmp_path / "s").exists()
    first = _make(sets, tmp_path / "s")
    assert _make(sets, tmp_path / "s").study_id == first.study_id  # the same study again: fine
    with pytest.raises(ConfigError, match=f"holds the key of study {first.study_id}, which this one"):
        _make(sets, tmp_path / "s", seed=99)  # another study would replace the key its readers' answers need
    assert load_key(first.key)["study_id"] == first.study_id
    err = _one_line(capsys, ["reader-study", "make", "--real", str(sets["real"]), "--synthetic",
                             str(sets["synthetic"]), "--readers", "a", "--out", str(tmp_path / "s"),
                             "--cases-per-class", "9"])
    assert "not enough images" in err
    err = _one_line(capsys, ["reader-study", "make", "--readers", "a"])
    assert err == "medti: error: medti reader-study make: missing --out"


def _one_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medti: error: ") and "\n" not in err and "Traceback" not in err
    return err


# -- score: answers written by the test --------------------------------------------------------------------------

def _rule(reader: str, case: dict, key: dict, look: int = 1):
    """What each simulated reader answers: alice is always right and prefers the first set; bob calls every image
    synthetic but the real normal ones, names 'normal' for every synthetic image, and prefers the second set;
    carol answers by the case's number and changes her mind on every repeat."""
    t, c = case["task"], case["class"]
    if reader == "alice":
        return case["truth"] if t != "which-better" else case["a"]
    if reader == "bob":
        if t == "real-or-synthetic":
            return "real" if (case["truth"] == "real" and c == "normal") else "synthetic"
        if t == "which-class":
            return c if case["source"] == "real" else "normal"
        return case["b"]
    n = int(case["images"][0], 16) + look  # carol: arbitrary, and different at the second look
    opts = ["real", "synthetic"] if t == "real-or-synthetic" else list(key["classes"]) if t == "which-class" \
        else [case["a"], case["b"]]
    return opts[n % len(opts)]


def _write_answers(key: dict, reader: str, path: Path, drop: int = 0, rule: str | None = None) -> Path:
    """``reader``'s answers by ``rule`` (another reader's way of answering; default the reader's own)."""
    answers, seen = [], {}
    for item, _swap in key["orders"][reader]:
        case_id = key["items"][item]["case"]
        seen[case_id] = seen.get(case_id, 0) + 1
        answers.append({"item": item, "answer": _rule(rule or reader, key["cases"][case_id], key, seen[case_id]),
                        "ms": 900})
    doc = {"format": "medti-reader-study-answers", "version": 1, "study_id": key["study_id"], "reader": reader,
           "answers": answers[:len(answers) - drop]}
    path.write_text(json.dumps(doc))
    return path


def _expected(key: dict, reader: str) -> dict:
    """Counts by hand from the key and the rule: each case once (the reader's first look)."""
    first = {cid: _rule(reader, c, key) for cid, c in key["cases"].items()}
    out = {}
    ros = [(c, first[i]) for i, c in key["cases"].items() if c["task"] == "real-or-synthetic"]
    out["acc"] = (sum(a == c["truth"] for c, a in ros), len(ros))
    out["sens"] = (sum(a == "synthetic" for c, a in ros if c["truth"] == "synthetic"),
                   sum(c["truth"] == "synthetic" for c, _ in ros))
    wc = [(c, first[i]) for i, c in key["cases"].items() if c["task"] == "which-class"]
    out["wc_syn"] = (sum(a == c["truth"] for c, a in wc if c["source"] == "synthetic"),
                     sum(c["source"] == "synthetic" for c, _ in wc))
    wb = [(c, first[i]) for i, c in key["cases"].items() if c["task"] == "which-better"]
    out["pref_a"] = (sum(a == c["a"] for c, a in wb), len(wb))
    return out


def test_round_trip_scores_the_expected_statistics(study, tmp_path):
    s, key = study
    files = [_write_answers(key, r, tmp_path / f"answers-{r}.json") for r in ("alice", "bob", "carol")]
    out = tmp_path / "results"
    res = score_study(s.key, files, out, bootstrap=300)
    ros, wc, wb = (res["tasks"][t] for t in ("real-or-synthetic", "which-class", "which-better"))
    for reader in ("alice", "bob", "carol"):
        exp = _expected(key, reader)
        got = ros["readers"][reader]
        assert (got["accuracy"]["k"], got["accuracy"]["n"]) == exp["acc"]
        assert (got["sensitivity"]["k"], got["sensitivity"]["n"]) == exp["sens"]
        assert got["accuracy"]["p_value"] == pytest.approx(binomtest(*exp["acc"], 0.5).pvalue)
        syn = wc["readers"][reader]["synthetic"]["accuracy"]
        assert (syn["k"], syn["n"]) == exp["wc_syn"]
        assert syn["p_value"] == pytest.approx(binomtest(*exp["wc_syn"], 1 / 2).pvalue)
        pref = wb["readers"][reader]["preference_a"]
        assert (pref["k"], pref["n"]) == exp["pref_a"]
    # alice is always right; bob: the 2 real normal images right, the 2 real opacity ones wrong, the 4 synthetic right
    assert ros["readers"]["alice"]["accuracy"]["rate"] == 1.0
    assert (ros["readers"]["bob"]["accuracy"]["k"], ros["readers"]["bob"]["specificity"]["k"]) == (6, 2)
    assert wc["readers"]["bob"]["real"]["accuracy"]["rate"] == 1.0
    assert wb["readers"]["alice"]["preference_a"]["rate"] == 1.0 and wb["readers"]["bob"]["preference_a"]["k"] == 0
    # pooled: the sum of the readers' counts
    pooled = ros["pooled"]["accuracy"]
    assert (pooled["k"], pooled["n"]) == (8 + 6 + _expected(key, "carol")["acc"][0], 24)
    # agreement: three readers -> Fleiss, with every pair's Cohen (against scikit-learn)
    from sklearn.metrics import cohen_kappa_score

    ag = ros["agreement"]
    assert ag["statistic"] == "fleiss" and ag["n_cases"] == 8 and ag["n_readers"] == 3
    answers = {r: [_rule(r, key["cases"][c], key) for c in sorted(key["cases"])
                   if key["cases"][c]["task"] == "real-or-synthetic"] for r in ("alice", "bob", "carol")}
    assert ag["kappa"] == pytest.approx(fleiss_kappa_ratings(list(answers.values()), ["real", "synthetic"]))
    assert ag["pairs"]["alice|bob"]["kappa"] == pytest.approx(cohen_kappa_score(answers["alice"], answers["bob"]))
    # consistency: alice and bob answer a repeat as before, carol never does
    for t in ("real-or-synthetic", "which-class", "which-better"):
        cons = res["tasks"][t]["consistency"]["readers"]
        assert cons["alice"]["agreement"]["rate"] == 1.0 and cons["bob"]["agreement"]["rate"] == 1.0
        assert cons["carol"]["agreement"]["rate"] == 0.0 and cons["carol"]["agreement"]["n"] == 1
    # the files: summary with figures, metrics for DVC (numbers only), every reading
    assert sorted(p.name for p in out.iterdir()) == ["figures", "metrics.json", "responses.csv", "results.json",
                                                     "summary.html", "summary.md"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["agreement.png", "real_or_synthetic.png",
                                                                   "which_better.png", "which_class.png"]
    html = (out / "summary.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Fleiss" in html
    md = (out / "summary.md").read_text()
    assert "![" in md and "(figures/which_better.png)" in md and "diffusion" in md
    metrics = json.loads((out / "metrics.json").read_text())

    def numbers(d):
        for v in d.values():
            if isinstance(v, dict):
                yield from numbers(v)
            else:
                yield v

    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers(metrics))
    assert metrics["which_better"]["preference_a"] == pytest.approx(wb["pooled"]["preference_a"]["rate"])
    assert metrics["real_or_synthetic"]["kappa"] == pytest.approx(ag["kappa"])
    assert len((out / "responses.csv").read_text().splitlines()) == 1 + 3 * 23


def test_bad_answers_are_one_clear_line(study, tmp_path, capsys):
    s, key = study
    good = _write_answers(key, "alice", tmp_path / "alice.json")

    def fails(match, *files, **kw):
        with pytest.raises(InputError, match=match):
            score_study(s.key, list(files), **kw)

    other = _write_answers({**key, "study_id": "0123456789abcdef"}, "alice", tmp_path / "other.json")
    fails(r"answers for study '0123456789abcdef'.*not for this study " + key["study_id"], other)
    stranger = tmp_path / "zed.json"
    stranger.write_text(good.read_text().replace('"reader": "alice"', '"reader": "zed"'))
    fails(r"reader 'zed' is not one of this study's readers \(alice, bob, carol\)", stranger)
    doc = json.loads(good.read_text())
    doc["answers"].append(dict(doc["answers"][3]))
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(doc))
    fails(rf"answered item {doc['answers'][3]['item']} 2 times", twice)
    copy = tmp_path / "copy.json"
    shutil.copy(good, copy)
    fails(r"both hold reader alice's answers", good, copy)
    short = _write_answers(key, "bob", tmp_path / "bob.json", drop=2)
    fails(r"reader bob answered 21 of 23 images \(2 missing", short)
    res = score_study(s.key, [good, short], allow_incomplete=True, bootstrap=50)
    assert res["complete"]["bob"] == {"answered": 21, "items": 23, "file": "bob.json"}
    doc = json.loads(good.read_text())
    doc["answers"][0]["answer"] = "maybe"
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(doc))
    fails(r"answer 'maybe' is not one of", odd)
    fails(r"not a reader-study answers file", s.key / "key.json")
    # the command: one line, exit status 2
    err = _one_line(capsys, ["reader-study", "score", "--key", str(s.key), "--out", str(tmp_path / "r"), str(other)])
    assert "not for this study" in err
    err = _one_line(capsys, ["reader-study", "score", "--key", str(s.folder), "--out", str(tmp_path / "r"), str(good)])
    assert "no answer key (key.json) here" in err
    assert not (tmp_path / "r").exists()


def _params(root: Path) -> Path:
    path = root / "params.yaml"
    path.write_text(
        "seed: 5\nbase_model: {id: tiny}\ntracking: {enabled: true}\n"
        "modalities:\n  chest_xray:\n    source: {type: folder, path: data/raw/x}\n"
        "    templates: ['a chest x-ray showing {}']\n"
        "classes:\n  chest_xray-normal: {modality: chest_xray, class: normal}\n"
        "  chest_xray-opacity: {modality: chest_xray, class: opacity}\n"
        "train_embedding:\n  variants: {full: {}, few: {images: 5}}\n")
    return path


def test_pipeline_mode_from_a_run_and_mlflow(sets, tmp_path, tracking_env):
    """make --params/--modality takes the prepared test split and the main variant's synthetic set, --compare two
    variants; score in pipeline mode logs the main figures and metrics to MLflow."""
    from medti.config import load_params

    project = tmp_path / "project"
    shutil.copytree(sets["real"].parent, project / "data" / "prepared" / "chest_xray")
    shutil.copytree(sets["synthetic"].parent, project / "data" / "synthetic" / "chest_xray" / "full")
    shutil.copytree(sets["few"].parent, project / "data" / "synthetic" / "chest_xray" / "few")
    params = _params(project)
    study_dir = project / "reader-study" / "chest_xray"
    assert main(["reader-study", "make", "--params", str(params), "--modality", "chest_xray", "--readers", "r1,r2",
                 "--compare", "full,few", "--cases-per-class", "2", "-q", "--out", str(study_dir)]) == 0
    key = load_key(study_dir.parent / "chest_xray-key")
    assert key["seed"] == 5 and key["compare"] == ["full", "few"] and key["title"] == "Reader study: chest_xray"
    assert key["sources"]["real"]["split"] == "test"
    assert read_input_paths(project)[key["sources"]["synthetic"]["input"]].endswith(
        "synthetic/chest_xray/full/manifest.csv")
    again = make_from_params(load_params(params), "chest_xray", tmp_path / "again", readers=["r1", "r2"],
                             compare=["full", "few"], cases_per_class=2)
    assert again.study_id == key["study_id"]  # the command and the API make the same study
    files = [str(_write_answers(key, r, tmp_path / f"{r}.json", rule="alice")) for r in ("r1", "r2")]
    out = project / "results" / "reader_study" / "chest_xray"
    assert main(["reader-study", "score", "--params", str(params), "--modality", "chest_xray", "--key",
                 str(study_dir.parent / "chest_xray-key"), "--out", str(out), "--bootstrap", "100", "-q",
                 *files]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_env)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run = next(r for r in runs if r.data.tags.get("stage") == "reader-study")
    assert run.info.status == "FINISHED" and run.data.tags["study_id"] == key["study_id"]
    assert run.data.tags["modality"] == "chest_xray"
    assert run.data.metrics["reader_study.which_better.preference_a"] == 1.0
    assert run.data.metrics["reader_study.real_or_synthetic.kappa"] == 1.0
    figures = {f.path for f in client.list_artifacts(run.info.run_id, "reader_study/figures")}
    assert figures == {f"reader_study/figures/{n}" for n in ("agreement.png", "real_or_synthetic.png",
                                                              "which_better.png", "which_class.png")}
    assert {f.path for f in client.list_artifacts(run.info.run_id, "reader_study")} >= {
        "reader_study/summary.md", "reader_study/metrics.json"}


# -- the page in a real browser --------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                                else None)


def _browser_or_skip():
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e .[dev])")
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("Chromium and its chromedriver are not installed (scripts/install-system-packages.sh: Debian's "
                    "chromium and chromium-driver)")


def _chrome(profile: Path, downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                f"--user-data-dir={profile}"):  # one profile for both sessions: localStorage must survive
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False,
                                           "download.directory_upgrade": True})
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def _requests(driver) -> list[tuple[str, str]]:
    """(url, document) of every request the browser's pages made since the last call."""
    out = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            out.append((msg["params"]["request"]["url"], msg["params"].get("documentURL", "")))
    return out


def _check_offline(requests: list[tuple[str, str]], page_url: str) -> None:
    assert requests, "the performance log recorded nothing"
    assert not [u for u, _ in requests if re.match(r"(https?|wss?|ftp)://", u)], "a network request was made"
    ours = [u for u, doc in requests if doc == page_url]
    assert page_url in ours
    assert all(u == page_url or u.startswith("data:") for u in ours), ours


def _press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _state(driver) -> tuple[str, str]:
    return tuple(driver.execute_script("return [document.body.dataset.screen, document.body.dataset.item || '']"))


def _key_for(driver, key: dict, folder: Path, reader: str, item: str, look: int) -> tuple[str, object]:
    """The key to press for the rule's answer to ``item`` (which-better: the side the wanted image is on, checked
    against the images the page shows)."""
    from selenium.webdriver.common.keys import Keys

    case = key["cases"][key["items"][item]["case"]]
    wanted = _rule(reader, case, key, look)
    if case["task"] == "real-or-synthetic":
        return {"real": "r", "synthetic": "s"}[wanted], wanted
    if case["task"] == "which-class":
        return str(key["classes"].index(wanted) + 1), wanted
    swap = dict(map(tuple, key["orders"][reader]))[item]
    left = case["images"][1] if swap else case["images"][0]
    right = case["images"][0] if swap else case["images"][1]
    shown = driver.execute_script("return Array.from(document.querySelectorAll('#stage img')).map(i => i.src)")
    assert shown == ["data:image/png;base64," + base64.b64encode((folder / "images" / f"{i}.png").read_bytes()).decode()
                     for i in (left, right)]
    return (Keys.ARROW_LEFT if wanted == left else Keys.ARROW_RIGHT), wanted


def _answer(driver, key, folder, reader, n, looks, log):
    for _ in range(n):
        screen, item = _state(driver)
        assert screen == "study"
        case_id = key["items"][item]["case"]
        looks[case_id] = looks.get(case_id, 0) + 1
        k, wanted = _key_for(driver, key, folder, reader, item, looks[case_id])
        log[item] = wanted
        _press(driver, k)
        deadline = time.monotonic() + 5
        while _state(driver) == (screen, item) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _state(driver) != (screen, item), f"the page did not take the key {k!r} on item {item}"


def test_the_page_in_a_real_browser(study, tmp_path, request):
    """Answer every image by keyboard as bob, close the browser halfway and reopen the page (resume from
    localStorage), export, and score the exported file; the page loads nothing but itself."""
    _browser_or_skip()
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    s, key = study
    reader, profile, downloads = "bob", tmp_path / "profile", tmp_path / "downloads"
    downloads.mkdir()
    url = s.page.resolve().as_uri()
    order = [o[0] for o in key["orders"][reader]]
    looks, wanted = {}, {}
    started = time.monotonic()
    driver = _chrome(profile, downloads)
    try:
        _requests(driver)  # drop the start page's
        driver.get(url)
        meta = driver.find_element("css selector", 'meta[http-equiv="Content-Security-Policy"]')
        assert meta.get_attribute("content") == CSP
        assert _state(driver)[0] == "start" and driver.title == key["title"]
        Select(driver.find_element("id", "reader")).select_by_value(reader)
        _press(driver, Keys.ENTER)
        assert _state(driver) == ("study", order[0])
        assert driver.find_element("id", "progress").text == f"Image 1 of {len(order)} · 0 answered"
        _answer(driver, key, s.folder, reader, 3, looks, wanted)
        # Backspace goes back; answering again changes the answer and moves on
        _press(driver, Keys.BACKSPACE)
        assert _state(driver) == ("study", order[2])
        assert "Answered" in driver.find_element("id", "answered").text
        looks[key["items"][order[2]]["case"]] -= 1
        _answer(driver, key, s.folder, reader, 1, looks, wanted)
        _answer(driver, key, s.folder, reader, 7, looks, wanted)
        assert _state(driver) == ("study", order[10])
        stored = driver.execute_script("return Object.keys(localStorage)")
        assert f"medti-reader-study:{s.study_id}:reader:{reader}" in stored
        _check_offline(_requests(driver), url)
    finally:
        driver.quit()  # the tab closes with 10 of 23 answered

    driver = _chrome(profile, downloads)
    try:
        _requests(driver)
        driver.get(url)
        assert Select(driver.find_element("id", "reader")).first_selected_option.text == reader  # remembered
        assert f"{reader}: 10 of {len(order)} answered" in driver.find_element("id", "resume-line").text
        _press(driver, Keys.ENTER)
        assert _state(driver) == ("study", order[10])  # resumed where the first session stopped
        assert driver.find_element("id", "progress").text == f"Image 11 of {len(order)} · 10 answered"
        _answer(driver, key, s.folder, reader, len(order) - 10, looks, wanted)
        assert _state(driver)[0] == "done"
        _press(driver, "e")
        name = f"answers-{reader}-{s.study_id[:8]}.json"
        deadline = time.monotonic() + 20
        while not (downloads / name).is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (downloads / name).is_file(), f"no download: {sorted(os.listdir(downloads))}"
        text = driver.find_element("id", "export-text").get_attribute("value")
        _check_offline(_requests(driver), url)
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        # the policy is in force: a request the page might try is refused before it leaves the browser
        blocked = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            let violated = null;
            document.addEventListener('securitypolicyviolation', e => { violated = e.effectiveDirective; });
            fetch('https://example.org/x').then(() => done(['fetched', violated]))
              .catch(() => setTimeout(() => done(['refused', violated]), 100));""")
        assert blocked == ["refused", "connect-src"]
    finally:
        driver.quit()
    elapsed = time.monotonic() - started

    exported = json.loads((downloads / name).read_text())
    assert json.loads(text) == {**exported, "exported": json.loads(text)["exported"]}
    assert exported["reader"] == reader and exported["study_id"] == s.study_id and exported["complete"]
    assert [a["item"] for a in exported["answers"]] == order
    by_item = {a["item"]: a for a in exported["answers"]}
    assert all(by_item[i]["answer"] == wanted[i] for i in order)
    assert by_item[order[2]]["changes"] == 1 and all(a["ms"] >= 0 for a in exported["answers"])
    sides = [a for a in exported["answers"] if "side" in a]
    assert len(sides) == 5 and {a["side"] for a in sides} <= {"left", "right"}
    for a in sides:  # the side recorded is where the chosen image was shown
        case = key["cases"][key["items"][a["item"]]["case"]]
        swap = dict(map(tuple, key["orders"][reader]))[a["item"]]
        assert a["answer"] == (case["images"][swap] if a["side"] == "left" else case["images"][1 - swap])

    res = score_study(s.key, [downloads / name], tmp_path / "scored", bootstrap=100)
    exp = _expected(key, reader)
    got = res["tasks"]["real-or-synthetic"]["readers"][reader]
    assert (got["accuracy"]["k"], got["accuracy"]["n"]) == exp["acc"] == (6, 8)
    assert (got["sensitivity"]["k"], got["sensitivity"]["n"]) == exp["sens"] == (4, 4)
    assert got["specificity"]["k"] == 2 and got["accuracy"]["p_value"] == pytest.approx(binomtest(6, 8).pvalue)
    syn = res["tasks"]["which-class"]["readers"][reader]["synthetic"]["accuracy"]
    assert (syn["k"], syn["n"]) == exp["wc_syn"] == (2, 4)
    pref = res["tasks"]["which-better"]["readers"][reader]
    assert (pref["preference_a"]["k"], pref["preference_a"]["n"]) == (0, 4)
    assert pref["preference_a"]["p_value"] == pytest.approx(0.125)
    assert pref["left"]["n"] == 4
    assert all(c["agreement"]["rate"] == 1.0 for t in res["tasks"].values()
               for c in t["consistency"]["readers"].values())
    request.config.medti_timings.append(f"reader-study page: {len(order)} images answered in Chromium over two "
                                        f"sessions, exported: {elapsed:.1f} s")
