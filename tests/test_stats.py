"""AUC statistics (medti.evaluate.statistics) and image-quality distances (medti.evaluate.quality) against known
values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from medti.errors import InputError
from medti.evaluate import quality
from medti.evaluate import statistics as stats


def binormal(n_per_class: int, separation: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores: negatives N(0, 1), positives N(separation, 1); true AUC = Phi(separation / sqrt 2)."""
    labels = np.repeat([0, 1], n_per_class)
    scores = rng.normal(0.0, 1.0, 2 * n_per_class) + separation * labels
    return labels, scores


def true_binormal_auc(separation: float) -> float:
    return 0.5 * math.erfc(-separation / 2.0)  # Phi(d / sqrt 2) = (1 + erf(d / 2)) / 2


# -- AUC and ROC ---------------------------------------------------------------------------------------------

def test_binary_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    assert stats.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    probs = np.stack([1 - scores, scores], axis=1)  # the n x 2 form uses column 1
    assert stats.auc(labels, probs) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_multiclass_auc_is_sklearns_one_vs_rest_macro_average():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 240)
    logits = rng.normal(0, 1, (240, 3)) + 1.2 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert stats.auc(labels, probs) == pytest.approx(expected, abs=1e-12)


def test_case_weights_count_cases_repeatedly():
    rng = np.random.default_rng(2)
    labels, scores = binormal(20, 1.0, rng)
    weights = rng.integers(0, 4, (3, 40)).astype(float)
    weights[:, [0, 39]] += 1  # every class keeps a case
    for w, got in zip(weights, stats.weighted_auc(labels, scores, weights)):
        idx = np.repeat(np.arange(40), w.astype(int))
        assert got == pytest.approx(roc_auc_score(labels[idx], scores[idx]), abs=1e-12)


def test_roc_curve_points_are_sklearns():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.normal(labels, 1.0), 1)
    fpr, tpr = stats.roc_curve(labels == 1, scores)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores))


def test_an_auc_needs_every_class_and_a_ci_needs_enough_cases():
    with pytest.raises(InputError, match=r"labels \[1\] have no images"):
        stats.auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match=r"too few test images for a confidence interval \(label 1: 2"):
        stats.require_ci_sample([0] * 10 + [1] * 2, 2, 5, "test split")
    stats.require_ci_sample([0] * 5 + [1] * 5, 2, 5, "test split")  # enough: no error


# -- DeLong --------------------------------------------------------------------------------------------------

def test_delong_variance_on_a_hand_computed_example():
    # Positives 0.8, 0.6, 0.4; negatives 0.5, 0.3, 0.1. Placement values: positives beat 3, 3 and 2 of the 3
    # negatives (V10 = 1, 1, 2/3); negatives are beaten by 2, 3, 3 of the positives (V01 = 2/3, 1, 1).
    # AUC = 8/9; var(V10) = var(V01) = 1/27 (ddof 1); var(AUC) = 1/27/3 + 1/27/3 = 2/81.
    positive = np.array([True, True, True, False, False, False])
    scores = np.array([0.8, 0.6, 0.4, 0.5, 0.3, 0.1])
    aucs, cov = stats.delong_covariance(positive, [scores])
    assert aucs[0] == pytest.approx(8 / 9)
    assert cov[0, 0] == pytest.approx(2 / 81)


def _delong_by_definition(positive, sets):
    """DeLong et al. (1988) straight from the pairwise kernel psi(x, y) = 1, 1/2, 0 (no ranks)."""
    x = [s[positive] for s in sets]
    y = [s[~positive] for s in sets]
    m, n = len(x[0]), len(y[0])
    psi = [(xi[:, None] > yi[None, :]) + 0.5 * (xi[:, None] == yi[None, :]) for xi, yi in zip(x, y)]
    v10 = np.array([p.mean(axis=1) for p in psi])
    v01 = np.array([p.mean(axis=0) for p in psi])
    aucs = np.array([p.mean() for p in psi])
    s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
    s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
    return aucs, s10 / m + s01 / n


def test_delong_covariance_of_correlated_scorers_matches_the_definition():
    rng = np.random.default_rng(4)
    labels, base = binormal(25, 1.0, rng)
    sets = [np.round(base + rng.normal(0, s, 50), 1) for s in (0.3, 0.8, 1.5)]  # ties included
    aucs, cov = stats.delong_covariance(labels == 1, sets)
    ref_aucs, ref_cov = _delong_by_definition(labels == 1, sets)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    # The test statistic for A - B is the contrast over that covariance.
    z, p = stats.delong_test(labels, [sets[0]], [sets[2]])
    expected_z = (ref_aucs[0] - ref_aucs[2]) / math.sqrt(ref_cov[0, 0] + ref_cov[2, 2] - 2 * ref_cov[0, 2])
    assert z == pytest.approx(expected_z)
    assert p == pytest.approx(math.erfc(abs(expected_z) / math.sqrt(2)))


def test_delong_p_value_small_for_a_better_scorer_and_one_for_identical_ones():
    rng = np.random.default_rng(5)
    labels, good = binormal(60, 2.0, rng)
    weak = good * 0.2 + rng.normal(0, 1.0, 120)
    z, p = stats.delong_test(labels, [good], [weak])
    assert z > 0 and p < 1e-3
    assert stats.delong_test(labels, [good], [good]) == (0.0, 1.0)


# -- bootstrap -----------------------------------------------------------------------------------------------

def test_bootstrap_interval_covers_the_true_auc_about_95_percent_of_the_time():
    rng = np.random.default_rng(6)
    separation, trials = 1.0, 60
    truth = true_binormal_auc(separation)
    covered = 0
    widths = []
    for trial in range(trials):
        labels, scores = binormal(60, separation, rng)
        boot = stats.bootstrap_aucs(labels, {"a": [scores]}, n_boot=400, seed=trial)["a"][0]
        lo, hi = stats.percentile_interval(boot, 0.95)
        covered += lo <= truth <= hi
        widths.append(hi - lo)
    assert 0.85 <= covered / trials <= 1.0
    # The width is about 2 x 1.96 x the AUC's standard error (Hanley-McNeil: ~0.043 for 60 + 60 at AUC 0.76).
    assert 0.12 < np.mean(widths) < 0.22


def test_stratified_resamples_keep_every_class_size():
    labels = np.array([0] * 7 + [1] * 3)
    w = stats.stratified_weights(labels, 50, np.random.default_rng(0))
    assert np.all(w[:, labels == 0].sum(axis=1) == 7) and np.all(w[:, labels == 1].sum(axis=1) == 3)


def test_paired_comparison_separates_a_better_condition_from_an_identical_one():
    rng = np.random.default_rng(7)
    labels, base = binormal(50, 1.5, rng)
    good = [base + rng.normal(0, 0.3, 100) for _ in range(3)]           # three "seeds"
    weak = [base * 0.15 + rng.normal(0, 1.0, 100) for _ in range(3)]
    table = stats.summarise_conditions(labels, {"real": good, "worse": weak, "same": good}, "real",
                                       n_boot=500, confidence=0.95, seed=1)
    worse, same = table["worse"]["comparison"], table["same"]["comparison"]
    assert worse["difference"] < -0.1 and worse["ci_high"] < 0
    assert worse["p_bootstrap"] < 0.01 and worse["p_delong"] < 0.01
    assert same["difference"] == 0.0 and same["p_bootstrap"] == 1.0 and same["p_delong"] == 1.0
    real = table["real"]
    aucs = [roc_auc_score(labels, s) for s in good]
    assert real["aucs"] == pytest.approx(aucs)
    assert real["auc_mean"] == pytest.approx(np.mean(aucs)) and real["auc_std"] == pytest.approx(np.std(aucs, ddof=1))
    assert real["ci_low"] < real["auc_mean"] < real["ci_high"]
    assert "comparison" not in real


def test_the_reference_condition_must_exist():
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(InputError, match="evaluate.reference: condition 'real' has no classifier runs"):
        stats.summarise_conditions(labels, {"synthetic": [np.array([0.1, 0.2, 0.3, 0.4])]}, "real", 100, 0.95)


def test_multiclass_comparison_has_no_delong_but_a_bootstrap_p_value():
    rng = np.random.default_rng(8)
    labels = np.repeat([0, 1, 2], 20)
    good = np.eye(3)[labels] * 2 + rng.normal(0, 1, (60, 3))
    noise = rng.normal(0, 1, (60, 3))
    table = stats.summarise_conditions(labels, {"real": [good], "noise": [noise]}, "real", 300, 0.95)
    c = table["noise"]["comparison"]
    assert c["p_delong"] is None and c["z_delong"] is None
    assert c["p_bootstrap"] < 0.05


# -- image-quality distances ---------------------------------------------------------------------------------

def test_frechet_distance_matches_the_closed_form():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(9)
    a = rng.normal(0, 1, (400, 6)) @ rng.normal(0, 1, (6, 6))
    b = rng.normal(0.5, 1.5, (300, 6))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = a.mean(0) - b.mean(0)
    expected = mu @ mu + np.trace(sa + sb - 2 * np.real(sqrtm(sa @ sb)))
    assert quality.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kernel_distance_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(10)
    a, a2 = rng.normal(0, 1, (300, 8)), rng.normal(0, 1, (300, 8))
    b = rng.normal(1.0, 1, (300, 8))
    same, _ = quality.kernel_distance(a, a2, subsets=20, subset_size=100)
    different, std = quality.kernel_distance(a, b, subsets=20, subset_size=100)
    assert abs(same) < 0.05 < different
    assert std > 0


# -- seed-level statistics (the seed variance) ---------------------------------------------------------------

def seed_scores(labels: np.ndarray, separations, rng) -> list[np.ndarray]:
    """One score set per "seed": binormal scores with the seed's own separation (so its own AUC)."""
    return [rng.normal(0.0, 1.0, len(labels)) + d * labels for d in separations]


def test_seeds_that_disagree_widen_the_two_level_interval_but_not_the_case_level_one():
    rng = np.random.default_rng(11)
    labels = np.repeat([0, 1], 1000)
    wild = seed_scores(labels, [0.6, 2.6, 1.6], rng)        # AUCs ~0.66, ~0.97, ~0.87: mean ~0.83
    steady = seed_scores(labels, [1.2, 1.2, 1.2], rng)      # AUCs ~0.80 each
    table = stats.summarise_conditions(labels, {"real": steady, "wild": wild}, "real", n_boot=500,
                                       confidence=0.95, seed=2)
    w = table["wild"]
    case_width = w["ci_high"] - w["ci_low"]
    two_width = w["two_level_ci_high"] - w["two_level_ci_low"]
    assert case_width < 0.04                                 # 2,000 test cases: the networks' AUCs are well known
    assert two_width > 0.2 and two_width > 5 * case_width    # the seeds' spread dominates
    assert w["two_level_ci_low"] < w["auc_mean"] < w["two_level_ci_high"]
    s = table["real"]
    assert s["two_level_ci_high"] - s["two_level_ci_low"] < 2 * (s["ci_high"] - s["ci_low"])  # steady seeds: ~ the same
    # The comparison (+0.03): the case-level one calls it certain, the seed-level ones do not.
    c = w["comparison"]
    assert c["p_bootstrap"] < 0.01 and c["p_delong"] < 0.01
    assert c["p_two_level"] > 0.2 and c["p_seed_welch"] > 0.2
    assert c["two_level_ci_low"] < 0 < c["two_level_ci_high"] and not (c["ci_low"] < 0 < c["ci_high"])


def test_identical_seeds_give_exactly_the_case_level_interval():
    rng = np.random.default_rng(12)
    labels, scores = binormal(60, 1.0, rng)
    other = scores + rng.normal(0, 1.0, len(scores))
    table = stats.summarise_conditions(labels, {"real": [scores] * 3, "b": [other] * 4}, "real", n_boot=300,
                                       confidence=0.9, seed=5)
    for name in ("real", "b"):
        row = table[name]
        assert row["two_level_ci_low"] == row["ci_low"] and row["two_level_ci_high"] == row["ci_high"]
    c = table["b"]["comparison"]
    assert (c["two_level_ci_low"], c["two_level_ci_high"], c["p_two_level"]) == (c["ci_low"], c["ci_high"],
                                                                                 c["p_bootstrap"])
    assert c["p_seed_welch"] == 0.0 and c["t_seed_welch"] is None  # no spread at all, different means


def test_seed_statistics_leave_the_case_level_figures_as_they_were():
    """The seed draws come from a stream of their own: the case-level intervals and p-values are unchanged."""
    rng = np.random.default_rng(13)
    labels = np.repeat([0, 1], 50)
    sets = {"real": seed_scores(labels, [1.0, 1.3], rng), "b": seed_scores(labels, [0.8, 0.9], rng)}
    table = stats.summarise_conditions(labels, sets, "real", n_boot=400, confidence=0.95, seed=3)
    boot = stats.bootstrap_aucs(labels, sets, 400, 3)
    assert (table["b"]["ci_low"], table["b"]["ci_high"]) == stats.percentile_interval(boot["b"].mean(0), 0.95)
    diffs = boot["b"].mean(0) - boot["real"].mean(0)
    assert table["b"]["comparison"]["p_bootstrap"] == stats.bootstrap_p_value(diffs)


def test_one_seed_has_no_seed_level_statistics():
    rng = np.random.default_rng(14)
    labels, scores = binormal(30, 1.0, rng)
    table = stats.summarise_conditions(labels, {"real": [scores], "b": [scores * 0.5 + rng.normal(0, 1, 60)]},
                                       "real", n_boot=200, confidence=0.95)
    assert table["real"]["two_level_ci_low"] is None and table["real"]["two_level_ci_high"] is None
    c = table["b"]["comparison"]
    assert c["p_two_level"] is None and c["p_seed_welch"] is None and c["two_level_ci_low"] is None
    assert c["p_bootstrap"] is not None


def test_seed_welch_test_is_scipys_welch_test():
    from scipy.stats import ttest_ind

    a, b = [0.81, 0.85, 0.79, 0.88, 0.84], [0.70, 0.78, 0.74]
    t, p = stats.seed_welch_test(a, b)
    ref = ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert stats.seed_welch_test([0.8], [0.7, 0.9]) == (None, None)


def test_two_level_means_resample_the_seeds():
    rng = np.random.default_rng(0)
    boot = np.array([[0.6] * 2000, [0.9] * 2000])  # two seeds, every case resample alike
    means = stats.two_level_means(boot, rng)
    assert set(np.round(means, 6)) == {0.6, 0.75, 0.9}  # both seeds drawn twice, or one of each
    assert np.mean(np.isclose(means, 0.75)) == pytest.approx(0.5, abs=0.05)


# -- image quality at the paper's protocol -------------------------------------------------------------------

def test_kid_subsets_never_exceed_the_sets_and_vary():
    rng = np.random.default_rng(15)
    a, b = rng.normal(0, 1, (40, 8)), rng.normal(0.3, 1, (60, 8))
    assert quality.kid_subset_size(1000, 40, 60) == 20      # half the smaller set, not 1,000
    assert quality.kid_subset_size(10, 40, 60) == 10        # asked for less: as asked
    assert quality.kid_subset_size(1000, 3, 3) == 2
    _, std = quality.kernel_distance(a, b, subsets=30, subset_size=1000)
    assert std > 1e-3                                        # the subsets differ, so their KIDs spread
    d = quality.distances(a, b, subsets=5, subset_size=1000)
    assert d["kid_subset_size"] == 20 and (d["n_a"], d["n_b"]) == (40, 60)


def test_the_fd_yardstick_compares_as_many_images_as_the_synthetic_set():
    rng = np.random.default_rng(16)
    labels = {"real_train": np.repeat([0, 1], 50), "real_test": np.repeat([0, 1], [30, 10]),
              "synthetic": np.repeat([0, 1], 200)}
    reference = np.zeros(100, bool)
    reference[[*range(0, 20), *range(50, 70)]] = True       # the TI subset: 20 per class
    picks = quality.quality_picks(labels, reference, ["a", "b"], max_images=500, seed=0)
    assert len(picks["synthetic"]) == len(picks["real_test"]) == 40 and len(picks["reference"]) == 40
    assert reference[picks["reference"]].all()
    for k, name in enumerate(["a", "b"]):
        p = picks["per_class"][name]
        assert len(p["synthetic"]) == len(p["real_test"]) == [30, 10][k]
        assert (labels["synthetic"][p["synthetic"]] == k).all() and (labels["real_test"][p["real_test"]] == k).all()
        assert len(p["reference"]) == 20 and (labels["real_train"][p["reference"]] == k).all()
    # Same sets, same distribution: the FDs of equal-sized samples are alike; of unequal ones they are not.
    feats = {"reference": rng.normal(0, 1, (100, 4)), "real_test": rng.normal(0, 1, (40, 4)),
             "synthetic": rng.normal(0, 1, (400, 4))}
    report = quality.quality_report(feats, picks, ["a", "b"], subsets=10, subset_size=1000)
    syn, test = report["synthetic_vs_real_train"], report["real_test_vs_real_train"]
    assert syn["n_a"] == test["n_a"] == 40 and syn["n_b"] == test["n_b"] == 40
    assert set(report["per_class_real_test"]) == {"a", "b"}


def test_the_reference_is_the_embeddings_training_images_or_the_train_split():
    import pandas as pd

    train = pd.DataFrame({"label": [0, 0, 0, 1, 1, 1], "ti_subset": ["True", "False", "true", "False", "True", "0"]})
    assert list(quality.reference_mask(train, "ti", ["a", "b"], "m.csv")) == [True, False, True, False, True, False]
    assert quality.reference_mask(train, "train", ["a", "b"], "m.csv").all()
    with pytest.raises(InputError, match="m.csv: evaluate.quality.reference is ti, but no training image of class"
                                         "\\(es\\) b is marked ti_subset"):
        quality.reference_mask(train.assign(ti_subset=["True"] * 3 + ["False"] * 3), "ti", ["a", "b"], "m.csv")
