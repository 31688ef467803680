"""medti evaluate on a small real experiment (toy images, trained classifiers, TI embeddings): the AUC table and
its statistics, ROC data for DVC, image quality in the classifier's feature space, the memorisation audit
(a planted copy is flagged), MLflow tracking, and bad input as one clear line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from classifier_support import (
    CLASSES,
    CONDITIONS,
    MODALITY,
    SEEDS,
    SWEEP_LESIONS,
    SWEEP_PER_WEIGHT,
    SWEEP_WEIGHTS,
    SWEEPS,
    build_toy_experiment,
    one_line_error,
    toy_params,
    write_interpolation,
)

from medti.cli import main
from medti.errors import ConfigError, InputError
from medti.evaluate import EvaluateSettings, evaluate, memorisation_audit, pixel_vectors, unit_rows
from medti.evaluate.statistics import auc

SETTINGS = EvaluateSettings(bootstrap=200, kid_subsets=10, top_k=4)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_model_dir):
    return build_toy_experiment(tmp_path_factory.getbasetemp() / "toy_experiment")


@pytest.fixture(scope="module")
def interpolation(tmp_path_factory):
    """A fake medti interpolate folder of the toy modality (classifier_support.write_interpolation)."""
    return write_interpolation(tmp_path_factory.mktemp("interpolate") / MODALITY)


@pytest.fixture(scope="module")
def evaluated(toy, interpolation, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / MODALITY
    evaluate(toy.classifiers, toy.real, out, synthetic_manifest=toy.synthetic, embeddings=toy.embeddings,
             modality=MODALITY, classes=list(CLASSES), conditions=list(CONDITIONS), seeds=list(SEEDS),
             settings=SETTINGS, interpolate=interpolation)
    return out


def test_writes_every_output(evaluated):
    for name in ("metrics.json", "evaluate.json", "roc.csv", "auc_table.csv", "auc_seeds.csv", "roc.png",
                 "confusion.png", "confusion.csv", "memorisation.csv", "memorisation_pairs.png",
                 "memorisation_similarity.png", "memorisation_features.png", "sweep_judgement.png"):
        assert (evaluated / name).is_file(), name
        assert (evaluated / name).stat().st_size > 0, name
    assert not list(evaluated.parent.glob(".*"))  # no temporaries left beside it


def test_auc_statistics_agree_with_the_runs(toy, evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    for condition in CONDITIONS:
        aucs = []
        for seed in SEEDS:
            pred = pd.read_csv(toy.classifiers / condition / f"seed{seed}" / "predictions.csv")
            aucs.append(auc(pred["label"], pred[[f"p_{c}" for c in CLASSES]].to_numpy()))
        m = metrics[condition]
        assert m["auc_mean"] == pytest.approx(np.mean(aucs)) and m["auc_std"] == pytest.approx(np.std(aucs, ddof=1))
        assert m["ci_low"] <= m["auc_mean"] <= m["ci_high"] and m["n_seeds"] == len(SEEDS)
    other = metrics["real_synthetic"]
    assert other["auc_diff_vs_real"] == pytest.approx(other["auc_mean"] - metrics["real"]["auc_mean"])
    assert 0 < other["p_value_vs_real"] <= 1 and 0 <= other["p_delong_vs_real"] <= 1
    assert "p_value_vs_real" not in metrics["real"]
    assert metrics["n_test"] == 24
    # The toy task is learnable: the real-only classifiers are good.
    assert metrics["real"]["auc_mean"] > 0.9
    seeds = pd.read_csv(evaluated / "auc_seeds.csv")
    assert len(seeds) == len(CONDITIONS) * len(SEEDS)


def test_roc_data_is_long_format_from_0_to_1(evaluated):
    roc = pd.read_csv(evaluated / "roc.csv")
    assert list(roc.columns) == ["condition", "seed", "fpr", "tpr"]
    assert set(roc["condition"]) == set(CONDITIONS) and set(roc["seed"]) == set(SEEDS)
    for _, curve in roc.groupby(["condition", "seed"]):
        assert curve["fpr"].iloc[0] == 0 and curve["tpr"].iloc[0] == 0
        assert curve["fpr"].iloc[-1] == 1 and curve["tpr"].iloc[-1] == 1
        assert curve["fpr"].is_monotonic_increasing and curve["tpr"].is_monotonic_increasing
    confusion = pd.read_csv(evaluated / "confusion.csv")
    assert confusion.groupby("condition")["count"].sum().to_dict() == {c: 24 * len(SEEDS) for c in CONDITIONS}


def test_quality_in_the_classifier_feature_space(toy, evaluated):
    details = json.loads((evaluated / "evaluate.json").read_text())
    assert details["feature_classifier"]["condition"] == "real" and details["feature_classifier"]["n_synthetic"] == 0
    q = details["quality"]["classifier"]
    # The paper's protocol: the reference is the embeddings' training images (ti_subset), and the synthetic set
    # and the yardstick (the real test set) are measured on as many images each (25 synthetic, 24 test).
    real = pd.read_csv(toy.real)
    n_ti = int(real[(real["split"] == "train")]["ti_subset"].astype(str).str.lower().eq("true").sum())
    assert q["reference"] == "ti" and q["n_reference"] == n_ti < int((real["split"] == "train").sum())
    syn, test = q["synthetic_vs_real_train"], q["real_test_vs_real_train"]
    assert syn["fd"] > 0 and syn["n_a"] == test["n_a"] == 24 and syn["n_b"] == test["n_b"] == n_ti
    assert syn["kid_subset_size"] <= min(syn["n_a"], syn["n_b"]) // 2 and syn["kid_std"] > 0
    assert set(q["per_class"]) == set(CLASSES) == set(q["per_class_real_test"])
    for c in CLASSES:
        assert q["per_class"][c]["n_a"] == q["per_class_real_test"][c]["n_a"] == 12
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        assert "torch-fidelity is not installed" in details["quality"]["inception"]["skipped"]
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["quality"]["classifier_fd"] == pytest.approx(q["synthetic_vs_real_train"]["fd"])
    # one synthetic manifest: one set, the main (the schema's only) variant, with its embeddings' facts
    assert details["variant_names"] == ["full"] and details["embeddings"]["lesion"]["file"] == "lesion.safetensors"
    assert metrics["variants"] == {"full": {**{k: metrics[k] for k in ("synthetic_agreement", "quality",
                                                                      "memorisation")},
                                            "images": 4, "steps": 4,
                                            "num_vectors": details["embeddings"]["lesion"]["num_vectors"]}}


def test_memorisation_flags_the_planted_copy_and_nothing_else(toy, evaluated):
    table = pd.read_csv(evaluated / "memorisation.csv")
    assert len(table) == 25  # every synthetic image
    flagged = table[table["near_copy"]]
    assert list(flagged["path"]) == [toy.planted]
    row = flagged.iloc[0]
    assert row["nearest_pixel"] == toy.planted_source and row["pixel_similarity"] == pytest.approx(1.0)
    assert row["nearest_feature"] == toy.planted_source and row["flagged"]
    assert row["embedding"] == f"<{MODALITY}-lesion>"
    assert table.loc[~table["near_copy"], "pixel_similarity"].max() < 0.95
    # The calibrated flag (level 0.05 against the real test images' own similarities) flags the copy only.
    assert list(table.loc[table["flagged"], "path"]) == [toy.planted]
    details = json.loads((evaluated / "evaluate.json").read_text())
    audit = details["memorisation"]
    assert audit["overall"]["near_copies"] == 1 and audit["overall"]["flagged"] == 1
    assert audit["level"] == 0.05 and 0 < audit["overall"]["expected_flags"] <= 0.05 * 25
    for c in CLASSES:  # 12 test images a class are too few for level 0.05: the pooled 24 are the null
        s = audit["per_class"][c]
        assert s["null"] == "pooled" and s["n_null"] == 24 and s["expected_share"] == pytest.approx(1 / 25)
        assert s["flag_threshold"] == pytest.approx(max(audit["per_class"][k]["real_test_pixel_similarity_max"]
                                                        for k in CLASSES))  # k = n: the largest of the 24
    metrics = json.loads((evaluated / "metrics.json").read_text())["memorisation"]
    assert metrics["level"] == 0.05 and metrics["flagged"] == 1 and "flag_threshold_lesion" in metrics
    assert audit["per_class"]["lesion"]["near_copies"] == 1 and audit["per_class"]["normal"]["near_copies"] == 0
    # Embedding files and their checksums are recorded.
    assert set(details["embeddings"]) == set(CLASSES)
    assert details["embeddings"]["lesion"]["token"] == f"<{MODALITY}-lesion>"


def _error_rates(folder, n: int = 200, seed: int = 123) -> tuple[float, float]:
    """A classifier's (missed lesions, normal images called lesion) on ``n`` fresh toy images per class."""
    from medti.classifier.networks import predict
    from medti.classifier.training import load_classifier
    from medti.imageset import to_tensor
    from medti.toydata import toy_image

    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n)
    images = np.stack([np.repeat(toy_image(label, rng, 32)[..., None], 3, axis=-1) for label in labels])
    net, _ = load_classifier(folder)
    predicted = predict(net, to_tensor(images)).numpy().argmax(axis=1)
    return float((predicted[labels == 1] != 1).mean()), float((predicted[labels == 0] == 1).mean())


def _judged_share(folder, interpolation, figure: str, weight: float, target: int) -> float:
    """What one classifier makes of one weight of a sweep, straight from interpolate.csv and the images."""
    from medti.classifier.networks import predict
    from medti.classifier.training import load_classifier
    from medti.imageset import read_manifest_images, to_tensor

    table = pd.read_csv(interpolation / "interpolate.csv")
    rows = table[(table["figure"] == f"{figure}.png") & (table["weight"] == weight)]
    net, spec = load_classifier(folder)
    images = read_manifest_images([interpolation / p for p in rows["path"]], size=spec.size)
    return float((predict(net, to_tensor(images)).numpy().argmax(axis=1) == target).mean())


def test_the_real_only_classifiers_judge_the_sweeps(toy, interpolation, evaluated):
    """At weight w a share SWEEP_LESIONS[w] / SWEEP_PER_WEIGHT (about w) of the images are lesions: the share
    judged lesion rises with w, the share judged normal of the same images (the lesion-to-normal sweep) falls;
    the combination figure is left out."""
    details = json.loads((evaluated / "evaluate.json").read_text())
    sweeps = details["sweeps"]
    assert set(sweeps) == set(SWEEPS)
    up, down = sweeps["sweep-normal-to-lesion"], sweeps["sweep-lesion-to-normal"]
    assert (up["from"], up["to"], down["from"], down["to"]) == ("normal", "lesion", "lesion", "normal")
    for s in (up, down):
        assert s["weights"] == list(SWEEP_WEIGHTS) and s["n_per_weight"] == [SWEEP_PER_WEIGHT] * len(SWEEP_WEIGHTS)
        assert s["classifier_condition"] == "real" and s["seeds"] == list(SEEDS)
        assert np.mean(s["share_target_per_seed"], axis=0) == pytest.approx(s["share_target"])
    # each seed's share is what its classifier makes of that weight's images (the sweeps share one batch)
    for i, seed in enumerate(SEEDS):
        folder = toy.classifiers / "real" / f"seed{seed}"
        for figure, s, target in (("sweep-normal-to-lesion", up, 1), ("sweep-lesion-to-normal", down, 0)):
            for j in (0, 2, 4):
                w = SWEEP_WEIGHTS[j]
                assert s["share_target_per_seed"][i][j] == _judged_share(folder, interpolation, figure, w, target)
    # The construction, through the classifiers' errors. The fixture's real-only classifiers score 0.92-0.96 on
    # the 24 real test images but miss up to a third of fresh lesions (30 training steps), so the expected share
    # at w is f (1 - missed) + (1 - f) called, f the lesion fraction, averaged over the seeds, with each seed's
    # error rates measured on 200 fresh toy images per class; the tolerance is 3 binomial standard deviations of
    # SWEEP_PER_WEIGHT images plus 0.05 for the rates' own estimate.
    rates = [_error_rates(toy.classifiers / "real" / f"seed{seed}") for seed in SEEDS]
    for j, w in enumerate(SWEEP_WEIGHTS):
        f = SWEEP_LESIONS[w] / SWEEP_PER_WEIGHT
        assert f == pytest.approx(w, abs=0.5 / SWEEP_PER_WEIGHT)
        q = np.array([f * (1 - missed) + (1 - f) * called for missed, called in rates])  # P(judged lesion)
        sd = np.sqrt(np.mean([f * (1 - missed) * missed + (1 - f) * called * (1 - called)
                              for missed, called in rates]) / SWEEP_PER_WEIGHT)
        assert up["share_target"][j] == pytest.approx(q.mean(), abs=3 * sd + 0.05), (w, rates)
        assert down["share_target"][j] == pytest.approx(1 - q.mean(), abs=3 * sd + 0.05), (w, rates)
    assert up["share_target"][-1] - up["share_target"][0] > 0.4
    assert up["rises"] and up["spearman"] > 0.8
    assert not down["rises"] and down["spearman"] < -0.8
    metrics = json.loads((evaluated / "metrics.json").read_text())["sweeps"]
    assert metrics == {"normal_to_lesion": {"share_at_0": up["share_target"][0], "share_at_1": up["share_target"][-1],
                                            "spearman": up["spearman"]},
                       "lesion_to_normal": {"share_at_0": down["share_target"][0],
                                            "share_at_1": down["share_target"][-1], "spearman": down["spearman"]}}
    assert details["inputs"]["interpolate"] == str(interpolation)


def test_sweeps_need_a_real_only_classifier_and_named_classes(toy, interpolation, tmp_path):
    """No real-only condition: nothing judged; a sweep between prompts that are no class: left out; a folder
    that is no interpolation output: one clear error."""
    from medti.classifier import read_rows
    from medti.evaluate import judge_sweeps
    from medti.evaluate.runs import load_runs

    real = read_rows(toy.real, MODALITY)
    runs = load_runs(toy.classifiers, real[real["split"] == "test"], list(CLASSES), toy.real)
    assert judge_sweeps({"real_synthetic": runs["real_synthetic"]}, interpolation, list(CLASSES)) == {}
    assert set(judge_sweeps({"real": runs["real"]}, interpolation, list(CLASSES))) == set(SWEEPS)
    assert judge_sweeps({"real": runs["real"]}, interpolation, ["healthy", "lesion"]) == {}
    with pytest.raises(InputError, match="interpolate.csv: not found"):
        judge_sweeps(runs, tmp_path, list(CLASSES))


def test_pixel_correlation_finds_near_copies():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (20, 16, 16, 3)).astype(np.uint8)
    copy = np.clip(train[7].astype(int) + rng.integers(-8, 9, train[7].shape), 0, 255).astype(np.uint8)  # noisy copy
    brighter = np.clip(train[3].astype(int) * 0.8 + 30, 0, 255).astype(np.uint8)  # windowing does not hide a copy
    fresh = rng.integers(0, 255, (2, 16, 16, 3)).astype(np.uint8)
    synthetic = np.concatenate([copy[None], brighter[None], fresh])
    frame = lambda n, prefix: pd.DataFrame({"rel": [f"{prefix}{i}" for i in range(n)], "label": [0] * n,  # noqa: E731
                                            "class": ["a"] * n, "modality": ["m"] * n, "ti_subset": [True] * n})
    pixels = {"synthetic": pixel_vectors(synthetic, 16), "real_train": pixel_vectors(train, 16),
              "real_test": pixel_vectors(fresh, 16)}
    features = {k: unit_rows(v.reshape(len(v), -1)) for k, v in pixels.items()}
    table, audit = memorisation_audit(frame(4, "s"), frame(20, "t"), frame(2, "u"), pixels, features, ["a"], "m", 0.95)
    assert list(table["near_copy"]) == [True, True, False, False]
    assert list(table["nearest_pixel"][:2]) == ["t7", "t3"]
    assert audit["overall"]["near_copies"] == 2
    # two real test images are too few for a calibrated flag at level 0.05: none, and the summary says so
    assert not table["flagged"].any() and audit["per_class"]["a"]["flag_threshold"] is None


def _null_world(seed: int, n_train: int, n_test: int, n_synthetic: int, planted: int | None = None):
    """Random 16 px images: synthetic and real test images alike drawn fresh (no copying), and optionally
    training image ``planted`` copied into the synthetic set (last)."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 255, (n_train, 16, 16, 3)).astype(np.uint8)
    test = rng.integers(0, 255, (n_test, 16, 16, 3)).astype(np.uint8)
    syn = rng.integers(0, 255, (n_synthetic, 16, 16, 3)).astype(np.uint8)
    if planted is not None:
        syn = np.concatenate([syn, train[planted][None]])
    frame = lambda n, prefix: pd.DataFrame({"rel": [f"{prefix}{i}" for i in range(n)], "label": [0] * n,  # noqa: E731
                                            "class": ["a"] * n, "modality": ["m"] * n, "ti_subset": [True] * n})
    pixels = {"synthetic": pixel_vectors(syn, 16), "real_train": pixel_vectors(train, 16),
              "real_test": pixel_vectors(test, 16)}
    return frame(len(syn), "s"), frame(n_train, "t"), frame(n_test, "u"), pixels


def test_the_calibrated_flag_flags_a_planted_copy_and_nothing_else():
    syn, train, test, pixels = _null_world(seed=3, n_train=60, n_test=39, n_synthetic=12, planted=17)
    table, audit = memorisation_audit(syn, train, test, pixels, pixels, ["a"], "m", 0.95, level=0.05)
    assert list(table.loc[table["flagged"], "path"]) == ["s12"] and table.loc[12, "nearest_pixel"] == "t17"
    a = audit["per_class"]["a"]
    # 39 test images, level 0.05: the 38th smallest of their similarities; 2 / 40 flagged by chance
    assert a["null"] == "class" and a["n_null"] == 39 and a["expected_share"] == pytest.approx(0.05)
    assert a["flag_threshold"] == pytest.approx(np.sort(audit["real_test_pixel_similarity"])[37])
    assert audit["level"] == 0.05 and a["flagged"] == 1 and a["expected_flags"] == pytest.approx(13 * 0.05)
    assert (table["flag_threshold"] == a["flag_threshold"]).all()


def test_with_no_copying_the_share_of_flags_is_the_level():
    """Synthetic images drawn like the real test images: over many worlds, the flagged share is the level (the
    old rule, closer than every real test image of the class, flagged about n_synthetic / (n_test + 1))."""
    from medti.evaluate.memorisation import calibrated_threshold

    rng = np.random.default_rng(4)
    for level, n_test in ((0.05, 99), (0.1, 29)):
        shares = []
        for _ in range(400):
            null, synthetic = rng.normal(0.3, 0.05, n_test), rng.normal(0.3, 0.05, 200)
            shares.append(np.mean(synthetic > calibrated_threshold(null, level)["threshold"]))
        assert np.mean(shares) == pytest.approx(level, abs=0.006)
    # in the audit itself: many synthetic images, no copy
    syn, train, test, pixels = _null_world(seed=5, n_train=80, n_test=99, n_synthetic=400)
    table, audit = memorisation_audit(syn, train, test, pixels, pixels, ["a"], "m", 0.95, level=0.05)
    assert not table["near_copy"].any()
    assert 0.02 <= table["flagged"].mean() <= 0.09 and audit["per_class"]["a"]["expected_share"] == 0.05


def test_tracks_metrics_and_figures_in_mlflow(toy, tmp_path, tracking_env):
    from mlflow.tracking import MlflowClient

    evaluate(toy.classifiers, toy.real, tmp_path / "ev", synthetic_manifest=toy.synthetic, modality=MODALITY,
             settings=SETTINGS, params={"tracking": {"enabled": True}})
    client = MlflowClient(tracking_env)
    runs = client.search_runs([client.get_experiment_by_name("medti").experiment_id])
    run = next(r for r in runs if r.data.tags.get("stage") == "evaluate")
    assert run.data.tags["modality"] == MODALITY and "input.real.md5" in run.data.tags
    assert run.data.metrics["real.auc_mean"] == pytest.approx(
        json.loads((tmp_path / "ev" / "metrics.json").read_text())["real"]["auc_mean"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"roc.png", "confusion.png", "metrics.json", "memorisation_pairs.png"} <= artifacts


def _pipeline_params(toy, tmp_path, **sections):
    """The toy params.yaml in ``tmp_path``, its data paths pointing into the shared toy experiment."""
    import yaml

    path = toy_params(tmp_path)
    params = yaml.safe_load(path.read_text())
    root = toy.root
    params["prepare"] = {"out": str(root / "data" / "prepared")}
    params["generate"] = {"out": str(root / "data" / "synthetic")}
    params["train_embedding"] = {"out": str(root / "embeddings")}
    params["classifier"]["out"] = str(root / "results" / "classifier")
    for name, section in sections.items():
        params.setdefault(name, {}).update(section)
    path.write_text(yaml.safe_dump(params, sort_keys=False))  # the classes' order is the labels'
    return path


def test_cli_pipeline_form(toy, tmp_path):
    """--params --modality: runs, settings, inputs and outputs from params.yaml (evaluate.out = results/evaluate)."""
    params = _pipeline_params(toy, tmp_path)
    rc = main(["evaluate", "--params", str(params), "--modality", MODALITY, "-q"])
    assert rc == 0
    evaluated = tmp_path / "results" / "evaluate"
    details = json.loads((evaluated / MODALITY / "evaluate.json").read_text())
    assert details["settings"]["bootstrap"] == 200 and details["settings"]["seed"] == 3  # from params.yaml
    assert list(details["conditions"]) == list(CONDITIONS)
    assert details["inputs"]["real_manifest"] == str(toy.real) and set(details["embeddings"]) == set(CLASSES)
    # metrics.json and roc.csv beside the folder, where DVC declares them
    assert (evaluated / f"{MODALITY}.metrics.json").is_file() and (evaluated / f"{MODALITY}.roc.csv").is_file()
    assert not (evaluated / MODALITY / "metrics.json").exists()
    # no --interpolate: no sweeps judged, even where params.yaml's interpolate.out might hold some
    assert details["sweeps"] == {} and details["inputs"]["interpolate"] is None
    assert "sweeps" not in json.loads((evaluated / f"{MODALITY}.metrics.json").read_text())
    assert not (evaluated / MODALITY / "sweep_judgement.png").exists()


def _captured(monkeypatch, argv: list[str]) -> dict:
    """What ``medti evaluate argv`` hands to evaluate() (nothing is evaluated)."""
    import medti.evaluate.experiment as experiment

    seen = {}

    def capture(classifiers, real_manifest, out, **kw):
        seen.update(kw, classifiers=str(classifiers), real_manifest=str(real_manifest), out=str(out))

    monkeypatch.setattr(experiment, "evaluate", capture)
    assert main(argv) == 0
    return seen


def test_standalone_and_pipeline_forms_give_the_same_settings(toy, tmp_path, monkeypatch):
    values = {"reference": "real_synthetic", "bootstrap": 321, "confidence": 0.9, "min_test_per_class": 3,
              "quality": {"inception": "off", "max_images": 40, "kid_subsets": 7, "kid_subset_size": 20,
                          "reference": "train"},
              "memorisation": {"threshold": 0.8, "size": 24, "top_k": 3, "level": 0.1}}
    params = _pipeline_params(toy, tmp_path, evaluate=values)
    pipeline = _captured(monkeypatch, ["evaluate", "--params", str(params), "--modality", MODALITY,
                                       "--conditions", "real,real_synthetic", "--seeds", "0,1", "--interpolate", "i"])
    flags = ["--reference", "real_synthetic", "--bootstrap", "321", "--confidence", "0.9", "--min-test-per-class", "3",
             "--inception", "off", "--max-images", "40", "--kid-subsets", "7", "--kid-subset-size", "20",
             "--threshold", "0.8", "--memorisation-size", "24", "--top-k", "3", "--seed", "3",
             "--quality-reference", "train", "--memorisation-level", "0.1"]
    standalone = _captured(monkeypatch, ["evaluate", "--classifiers", "c", "--real", "r.csv", "--out", "o",
                                         "--conditions", "real,real_synthetic", "--seeds", "0,1", "--interpolate", "i",
                                         *flags])
    assert pipeline["settings"] == standalone["settings"]
    assert pipeline["settings"].memorisation_size == 24 and pipeline["settings"].seed == 3
    assert pipeline["settings"].quality_reference == "train" and pipeline["settings"].memorisation_level == 0.1
    assert pipeline["conditions"] == standalone["conditions"] == ["real", "real_synthetic"]
    assert pipeline["seeds"] == standalone["seeds"] == [0, 1]
    assert pipeline["interpolate"] == standalone["interpolate"] == "i"
    # the pipeline's paths are params.yaml's; a flag wins over params.yaml
    assert pipeline["classifiers"] == str(toy.classifiers) and pipeline["real_manifest"] == str(toy.real)
    assert str(pipeline["metrics_file"]) == str(tmp_path / "results" / "evaluate" / f"{MODALITY}.metrics.json")
    again = _captured(monkeypatch, ["evaluate", "--params", str(params), "--modality", MODALITY, "--bootstrap", "500",
                                    "--out", str(tmp_path / "x")])
    assert again["settings"].bootstrap == 500 and again["settings"].top_k == 3 and again["out"] == str(tmp_path / "x")
    assert again["conditions"] == list(CONDITIONS) and again["seeds"] == list(SEEDS)  # params.yaml's runs
    assert again["interpolate"] is None  # only where given, in either mode


def test_bad_input_is_one_clear_line(toy, tmp_path, capsys):
    base = ["evaluate", "--classifiers", str(toy.classifiers), "--bootstrap", "200", "--inception", "off"]
    manifest = pd.read_csv(toy.real)

    def variant(name, df):
        path = toy.real.parent / name  # beside the original: its image paths stay valid
        df.to_csv(path, index=False)
        return str(path)

    # A split with one class: the AUC is undefined.
    one_class = variant("one_class.csv", manifest[~((manifest["split"] == "test") & (manifest["label"] == 0))])
    err = one_line_error(capsys, base + ["--real", one_class, "--out", str(tmp_path / "a")])
    assert "one_class.csv: test split" in err and "labels [0] have no images" in err
    # A test split too small for a confidence interval.
    test = manifest[manifest["split"] == "test"]
    small = variant("small.csv", pd.concat([manifest[manifest["split"] != "test"], test.groupby("label").head(3)]))
    err = one_line_error(capsys, base + ["--real", small, "--out", str(tmp_path / "b")])
    assert "too few test images for a confidence interval" in err and "evaluate.min_test_per_class" in err
    # Synthetic labels that differ from the real ones.
    syn = pd.read_csv(toy.synthetic)
    syn.loc[syn["label"] == 1, "label"] = 2
    relabelled = toy.synthetic.parent / "relabelled.csv"
    syn.to_csv(relabelled, index=False)
    err = one_line_error(capsys, base + ["--real", str(toy.real), "--synthetic", str(relabelled), "--out",
                                          str(tmp_path / "c")])
    assert "relabelled.csv" in err and "differs from the real data's" in err
    # Predictions that are not of this test split (the classifiers were trained on other data).
    swapped = np.where(manifest["split"] == "val", "test", np.where(manifest["split"] == "test", "val",
                                                                    manifest["split"]))
    moved = variant("moved.csv", manifest.assign(split=swapped))
    err = one_line_error(capsys, base + ["--real", moved, "--out", str(tmp_path / "d")])
    assert "predictions.csv" in err and "retrain the classifiers" in err
    # A run the pipeline expects is missing; a reference condition with no runs.
    err = one_line_error(capsys, base + ["--real", str(toy.real), "--seeds", "0,7", "--out", str(tmp_path / "e")])
    assert "seed7" in err and "seed 7 is missing" in err
    err = one_line_error(capsys, base + ["--real", str(toy.real), "--reference", "synthetic", "--out",
                                          str(tmp_path / "f")])
    assert "evaluate.reference: condition 'synthetic' has no classifier runs" in err
    # Flags outside the schema's bounds, by their name; a standalone run without its inputs.
    err = one_line_error(capsys, base + ["--real", str(toy.real), "--memorisation-size", "4", "--out", "x"])
    assert "--memorisation-size: 4 is less than the minimum of 8" in err
    err = one_line_error(capsys, base + ["--real", str(toy.real), "--inception", "on", "--out", "x"])
    assert "--inception" in err and "'on'" in err
    err = one_line_error(capsys, ["evaluate", "--real", str(toy.real)])
    assert "standalone needs --classifiers, --out" in err
    # An embedding that did not draw the synthetic images.
    with pytest.raises(InputError, match="were not drawn with this embedding"):
        evaluate(toy.classifiers, toy.real, tmp_path / "g", synthetic_manifest=relabelled.with_name("manifest.csv"),
                 embeddings=_swapped_embeddings(toy, tmp_path), modality=MODALITY, settings=SETTINGS)
    with pytest.raises(ConfigError, match="evaluate.confidence"):
        EvaluateSettings(confidence=1.5).validate()
    assert not any((tmp_path / n).exists() for n in "abcdefg")


def _swapped_embeddings(toy, tmp_path):
    """The toy embeddings with the two classes' files exchanged."""
    import shutil

    folder = tmp_path / "swapped"
    folder.mkdir()
    shutil.copy(toy.embeddings / "normal.safetensors", folder / "lesion.safetensors")
    shutil.copy(toy.embeddings / "lesion.safetensors", folder / "normal.safetensors")
    return folder


def test_multiclass_experiment(tmp_path):
    """Three classes: one-vs-rest AUCs, the paired bootstrap (DeLong is binary only), ROC on a grid."""
    from classifier_support import fast_settings

    from medti.classifier import train_classifier
    from medti.toydata import write_real_set, write_synthetic_set

    classes = ("none", "one", "two")
    real = write_real_set(tmp_path / "real", classes=classes, size=32, seed=1,
                          per_split={"train": 12, "val": 6, "test": 6})
    synthetic = write_synthetic_set(tmp_path / "synthetic", classes=classes, n_per_class=6, size=32)
    for condition, (real_count, synthetic_count) in {"real": (None, 0), "synthetic": (0, None)}.items():
        train_classifier(real, tmp_path / "clf" / condition / "seed0", settings=fast_settings(steps=20),
                         synthetic_manifest=synthetic, real_count=real_count, synthetic_count=synthetic_count)
    evaluate(tmp_path / "clf", real, tmp_path / "ev", synthetic_manifest=synthetic, settings=SETTINGS)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "p_delong_vs_real" not in metrics["synthetic"] and 0 < metrics["synthetic"]["p_value_vs_real"] <= 1
    roc = pd.read_csv(tmp_path / "ev" / "roc.csv")
    assert roc.groupby(["condition", "seed"]).size().tolist() == [101, 101]
    confusion = pd.read_csv(tmp_path / "ev" / "confusion.csv")
    assert len(confusion) == 2 * 9 and confusion["count"].sum() == 2 * 18
    assert set(json.loads((tmp_path / "ev" / "evaluate.json").read_text())["memorisation"]["per_class"]) == set(classes)


def test_inception_sees_the_images_at_their_prepared_size(tmp_path, monkeypatch):
    """Inception FID/KID read the images at the size they were prepared (48 px) and generated (40 px) at, not
    at the classifier's; only the rows the distances use, against the TI subset."""
    import torch

    from medti.classifier import read_rows
    from medti.evaluate import quality
    from medti.toydata import write_real_set, write_synthetic_set

    real = read_rows(write_real_set(tmp_path / "real", per_split={"train": 10, "val": 2, "test": 6}, size=48), None)
    synthetic = read_rows(write_synthetic_set(tmp_path / "syn", n_per_class=20, size=40), None)
    frames = {"real_train": real[real["split"] == "train"], "real_test": real[real["split"] == "test"],
              "synthetic": synthetic}
    seen = []

    def fake_net(images):
        seen.append(tuple(images.shape[1:]))
        x = images.float()
        return (torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, 0].mean((1, 2)), x[:, :, :8].mean((1, 2, 3))],
                            1),)

    monkeypatch.setattr(quality, "inception_network", lambda: fake_net)
    rng = np.random.default_rng(0)
    features = {name: rng.normal(0, 1, (len(df), 6)) for name, df in frames.items()}
    out = quality.image_quality(frames, features, ["normal", "lesion"], EvaluateSettings(kid_subsets=5))
    assert set(seen) == {(3, 48, 48), (3, 40, 40)}
    inc = out["inception"]
    n_ti = int(frames["real_train"]["ti_subset"].astype(str).str.lower().eq("true").sum())
    assert inc["image_size"] == "prepared" and inc["reference"] == "ti" and inc["n_reference"] == n_ti
    assert inc["synthetic_vs_real_train"]["n_a"] == inc["real_test_vs_real_train"]["n_a"] == 12  # the test set's
    assert np.isfinite(inc["synthetic_vs_real_train"]["fd"])
    train_ref = quality.image_quality(frames, features, ["normal", "lesion"],
                                      EvaluateSettings(kid_subsets=5, inception="off", quality_reference="train"))
    assert train_ref["classifier"]["n_reference"] == 20 and train_ref["classifier"]["reference"] == "train"


# -- embedding variants --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def variants_evaluated(toy, tmp_path_factory):
    """The two-variant experiment evaluated by the pipeline's command line (every path params.yaml's)."""
    from classifier_support import build_variant_experiment

    exp = build_variant_experiment(tmp_path_factory.getbasetemp() / "variant_experiment", toy)
    assert main(["evaluate", "--params", str(exp.params), "--modality", MODALITY, "-q"]) == 0
    evaluated = exp.root / "results" / "evaluate"
    return exp, evaluated / MODALITY, json.loads((evaluated / f"{MODALITY}.metrics.json").read_text())


def test_every_variant_gets_its_own_synthetic_metrics(variants_evaluated):
    from classifier_support import FEW_MISLABELLED, FEW_PER_CLASS, VARIANTS

    exp, out, metrics = variants_evaluated
    details = json.loads((out / "evaluate.json").read_text())
    full, few = metrics["variants"]["full"], metrics["variants"]["few"]
    assert list(metrics["variants"]) == details["variant_names"] == list(VARIANTS)  # the main variant first
    assert details["main_variant"] == "full"
    # each variant's audit is of its own set: the full set holds the planted copy, the few set is smaller and has none
    assert full["memorisation"]["n"] == 25 and full["memorisation"]["near_copies"] == 1
    assert few["memorisation"]["n"] == 2 * FEW_PER_CLASS and few["memorisation"]["near_copies"] == 0
    assert len(pd.read_csv(out / "variants" / "few" / "memorisation.csv")) == 2 * FEW_PER_CLASS
    assert len(pd.read_csv(out / "memorisation.csv")) == 25 and not (out / "variants" / "full").exists()
    # the few set carries its class worse: at most about (8 - 3) / 8 of it is put in its class
    assert few["synthetic_agreement"]["overall"] <= (FEW_PER_CLASS - FEW_MISLABELLED) / FEW_PER_CLASS + 0.1
    assert few["synthetic_agreement"]["overall"] < full["synthetic_agreement"]["overall"] - 0.2
    assert few["quality"]["classifier_n"] == 2 * FEW_PER_CLASS and full["quality"]["classifier_n"] == 24
    assert few["quality"]["classifier_fd"] != full["quality"]["classifier_fd"]
    # images per embedding, steps and vectors from the embeddings' metadata
    assert (full["images"], few["images"]) == (4, VARIANTS["few"]["images"])
    assert full["steps"] == few["steps"] == 4 and full["num_vectors"] == few["num_vectors"] > 0
    # the top-level keys are the main variant's, as before variants
    for key in ("synthetic_agreement", "quality", "memorisation"):
        assert metrics[key] == full[key]
        assert details[key] == details["variants"]["full"][key]
    # each variant's embeddings checked against its own set
    assert details["variants"]["few"]["embeddings"]["lesion"]["file"] == "lesion/few.safetensors"
    assert details["embeddings"]["lesion"]["file"] == "lesion/full.safetensors"
    assert details["variants"]["few"]["synthetic_manifest"] == str(exp.synthetic / "few" / "manifest.csv")


def test_each_variant_is_checked_against_its_own_embeddings(variants_evaluated, tmp_path):
    import shutil

    exp, _, _ = variants_evaluated
    swapped = tmp_path / "embeddings"
    shutil.copytree(exp.embeddings, swapped)
    shutil.copy(swapped / "lesion" / "full.safetensors", swapped / "lesion" / "few.safetensors")
    with pytest.raises(InputError, match=r"class 'lesion' \(variant few\) were not drawn with this embedding"):
        evaluate(exp.classifiers, exp.real, tmp_path / "ev", synthetic_manifest=exp.synthetic, embeddings=swapped,
                 modality=MODALITY, settings=SETTINGS, variants=["full", "few"])
    with pytest.raises(InputError, match="no synthetic set of variant.s. other"):
        evaluate(exp.classifiers, exp.real, tmp_path / "ev", synthetic_manifest=exp.synthetic, modality=MODALITY,
                 settings=SETTINGS, variants=["full", "other"])
    assert not (tmp_path / "ev").exists()


def test_standalone_finds_the_variants_and_each_conditions_variant(variants_evaluated, tmp_path):
    """Without params.yaml: the <variant>/ folders found (the schema's main variant first), each condition's
    variant as its runs recorded it, and a run that took the whole of its variant's set took "all" of it."""
    exp, _, metrics = variants_evaluated
    result = evaluate(exp.classifiers, exp.real, tmp_path / "ev", synthetic_manifest=exp.synthetic,
                      embeddings=exp.embeddings, modality=MODALITY, settings=SETTINGS)
    details = json.loads((tmp_path / "ev" / "evaluate.json").read_text())
    assert details["variant_names"] == ["full", "few"] and list(result.metrics["variants"]) == ["full", "few"]
    assert {c: r["variant"] for c, r in details["conditions"].items()} == {
        "real": None, "real_synthetic": "full", "synthetic": "full", "synthetic_few": "few"}
    assert details["cross_variant_comparisons"] == {"synthetic_few": "synthetic"}
    assert result.metrics["variants"]["few"]["memorisation"] == metrics["variants"]["few"]["memorisation"]


def test_conditions_record_their_variant_and_compare_across_variants(variants_evaluated):
    from medti.classifier import read_rows
    from medti.evaluate.runs import load_runs
    from medti.evaluate.statistics import bootstrap_aucs, compare, summarise_conditions

    exp, out, metrics = variants_evaluated
    details = json.loads((out / "evaluate.json").read_text())
    expected = {"real": None, "real_synthetic": "full", "synthetic": "full", "synthetic_few": "few"}
    assert {c: r["variant"] for c, r in details["conditions"].items()} == expected
    table = pd.read_csv(out / "auc_table.csv").set_index("condition")
    assert {c: v if isinstance(v, str) else None for c, v in table["variant"].items()} == expected
    assert details["cross_variant_comparisons"] == {"synthetic_few": "synthetic"}
    assert table.loc["synthetic_few", "main_variant_condition"] == "synthetic"
    assert table["main_variant_condition"].drop("synthetic_few").isna().all()
    # the extra comparison is compare() on the same case resamples as every other figure ...
    real = read_rows(exp.real, MODALITY)
    test = real[real["split"] == "test"]
    runs = load_runs(exp.classifiers, test, list(CLASSES), exp.real, list(expected), list(SEEDS))
    labels, sets = test["label"].to_numpy(dtype=int), {c: [r.probs for r in rs] for c, rs in runs.items()}
    s = details["settings"]
    boot = bootstrap_aucs(labels, sets, s["bootstrap"], s["seed"])
    direct = compare(labels, sets["synthetic_few"], sets["synthetic"], boot["synthetic_few"], boot["synthetic"],
                     s["confidence"])
    few = metrics["synthetic_few"]
    assert few["p_value_vs_synthetic"] == pytest.approx(direct.p_bootstrap)
    assert few["auc_diff_vs_synthetic"] == pytest.approx(few["auc_mean"] - metrics["synthetic"]["auc_mean"])
    assert table.loc["synthetic_few", "p_bootstrap_vs_main_variant"] == pytest.approx(direct.p_bootstrap, abs=1e-5)
    # ... and with the seed variance, what the table gives with 'synthetic' as the reference (same seed draws)
    as_reference = summarise_conditions(labels, sets, "synthetic", s["bootstrap"], s["confidence"], s["seed"])
    comparison = as_reference["synthetic_few"]["comparison"]
    assert details["conditions"]["synthetic_few"]["comparisons"]["synthetic"] == pytest.approx(comparison)
    assert few["p_two_level_vs_synthetic"] == pytest.approx(comparison["p_two_level"])
    # beside the comparison with the reference, which stays
    assert "p_value_vs_real" in few and "p_value_vs_synthetic" not in metrics["synthetic"]
