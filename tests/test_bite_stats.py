"""Bootstrap p-values and percentile intervals against exact values (issue 19).

Planted bugs that halved the bootstrap p-value (one-sided instead of two-sided) or reported a 90 % interval as
95 % passed the statistics tests, which asked only for ``p < 0.01`` or ``0 < p <= 1`` and a coverage of
0.85-1.0 over 60 trials. Here:

- hand-worked values of :func:`bootstrap_p_value` and :func:`percentile_interval`;
- a case small enough to enumerate every stratified resample (3 negatives and 3 positives: 27 x 27 equally
  likely ordered resamples), whose exact bootstrap distribution of the paired AUC difference gives the exact
  two-sided p-value and the exact percentile interval that :func:`summarise_conditions` must reproduce;
- a coverage study whose exact coverage is known (a pivotal case, below), with enough trials that the
  binomial band around a 95 % interval's coverage excludes a 90 % interval's with overwhelming probability.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from medti.evaluate import statistics as stats

# -- hand-worked values ------------------------------------------------------------------------------------------


def test_bootstrap_p_value_is_two_sided_with_the_plus_one_correction():
    # 19 differences above 0 and one below: below = (1 + 1) / 21, above = (19 + 1) / 21; p = 2 x 2/21.
    d = np.r_[np.linspace(0.01, 0.19, 19), -0.05]
    assert stats.bootstrap_p_value(d) == pytest.approx(4 / 21, abs=1e-15)
    assert stats.bootstrap_p_value(-d) == pytest.approx(4 / 21, abs=1e-15)  # the sign of the effect does not matter
    # all 99 above 0: p = 2 x (0 + 1) / 100
    assert stats.bootstrap_p_value(np.linspace(0.1, 1.0, 99)) == pytest.approx(0.02, abs=1e-15)
    # a zero counts on both sides: 3 below, 2 zeros, 5 above -> below (5 + 1)/11, above (7 + 1)/11 -> 12/11 -> 1
    assert stats.bootstrap_p_value([-3, -2, -1, 0, 0, 1, 2, 3, 4, 5]) == 1.0
    # 7 below, 13 above (n = 20): 2 x 8/21
    assert stats.bootstrap_p_value(np.r_[-np.arange(1, 8), np.arange(1, 14)]) == pytest.approx(16 / 21, abs=1e-15)


def test_percentile_interval_cuts_half_the_rest_off_each_end():
    values = np.random.default_rng(0).permutation(np.arange(101.0))  # order must not matter
    # 101 values 0..100: the q-quantile (linear interpolation) is 100 q.
    assert stats.percentile_interval(values, 0.95) == pytest.approx((2.5, 97.5), abs=1e-12)
    assert stats.percentile_interval(values, 0.90) == pytest.approx((5.0, 95.0), abs=1e-12)
    assert stats.percentile_interval(values, 0.50) == pytest.approx((25.0, 75.0), abs=1e-12)
    assert stats.percentile_interval(np.arange(1001.0), 0.99) == pytest.approx((5.0, 995.0), abs=1e-12)


# -- an enumerable case ------------------------------------------------------------------------------------------

LABELS = np.array([0, 0, 0, 1, 1, 1])
SCORES_A = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.6])      # AUC 7/9
SCORES_REF = np.array([0.2, 0.5, 0.1, 0.45, 0.7, 0.9])    # AUC 8/9


def mann_whitney_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(positive score > negative score) + half the ties, over every pair: the AUC by its definition."""
    return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


@functools.cache
def exact_bootstrap() -> tuple[np.ndarray, np.ndarray]:
    """Every stratified resample (each class's 3 cases drawn with replacement: 27 x 27 equally likely ordered
    draws), the same resample for both score sets (paired): the AUC of A and the difference A - ref."""
    neg, pos = np.flatnonzero(LABELS == 0), np.flatnonzero(LABELS == 1)
    a, diff = [], []
    for n3 in itertools.product(neg, repeat=3):
        for p3 in itertools.product(pos, repeat=3):
            n3, p3 = np.array(n3), np.array(p3)
            auc_a = mann_whitney_auc(SCORES_A[n3], SCORES_A[p3])
            a.append(auc_a)
            diff.append(auc_a - mann_whitney_auc(SCORES_REF[n3], SCORES_REF[p3]))
    return np.round(a, 12), np.round(diff, 12)


def exact_quantile(values: np.ndarray, q: float, margin: float) -> float:
    """The q-quantile of the discrete distribution of equally likely ``values``; asserts that q lies at least
    ``margin`` inside a jump of the distribution function, so a large bootstrap sample's empirical quantile is
    that atom with overwhelming probability (the empirical distribution function's standard error is below
    0.004 for 20,000 resamples; the margins used are several times that)."""
    atoms, counts = np.unique(values, return_counts=True)
    cdf = np.cumsum(counts) / len(values)
    k = int(np.searchsorted(cdf, q))
    below = cdf[k - 1] if k else 0.0
    assert below + margin < q < cdf[k] - margin, (q, below, cdf[k])
    return float(atoms[k])


def test_the_exact_bootstrap_of_a_small_case():
    """The enumeration itself, checked by hand at its ends: the full sample's AUCs, and the all-tied resamples."""
    a, diff = exact_bootstrap()
    assert len(a) == 729
    assert roc_auc_score(LABELS, SCORES_A) == pytest.approx(7 / 9) and roc_auc_score(LABELS, SCORES_REF) == \
        pytest.approx(8 / 9)
    identity = np.arange(3)
    assert mann_whitney_auc(SCORES_A[identity], SCORES_A[identity + 3]) == pytest.approx(7 / 9)
    # three copies of one negative and one positive: AUC 1 (or 0) for both sets alike, or one of each
    assert a.min() == 0.0 and a.max() == 1.0 and diff.min() == -1.0 and diff.max() == 1.0
    # P(d <= 0) = 566/729 and P(d >= 0) = 325/729, so the exact two-sided p is 650/729 = 0.892 (one-sided: 0.446)
    assert int(np.sum(diff <= 0)) == 566 and int(np.sum(diff >= 0)) == 325


N_BOOT = 20_000


@pytest.fixture(scope="module")
def table():
    return {confidence: stats.summarise_conditions(LABELS, {"ref": [SCORES_REF], "a": [SCORES_A]}, "ref",
                                                   n_boot=N_BOOT, confidence=confidence, seed=4)
            for confidence in (0.95, 0.90)}


def test_paired_bootstrap_p_value_is_the_exact_two_sided_one(table):
    _, diff = exact_bootstrap()
    below, above = np.mean(diff <= 0), np.mean(diff >= 0)
    exact = min(1.0, 2 * min(below, above))                        # 650/729 = 0.892
    # The estimate's standard error: 2 sqrt(q (1 - q) / N) with q = 325/729: 0.007. Five of them: 0.035; the
    # one-sided value (0.446) is 64 standard errors away.
    se = 2 * np.sqrt(min(below, above) * (1 - min(below, above)) / N_BOOT)
    for confidence in (0.95, 0.90):
        c = table[confidence]["a"]["comparison"]
        assert c["difference"] == pytest.approx(7 / 9 - 8 / 9)
        assert abs(c["p_bootstrap"] - exact) < 5 * se, (c["p_bootstrap"], exact)
        assert abs(c["p_bootstrap"] - exact / 2) > 30 * se


def test_percentile_intervals_are_the_exact_bootstrap_quantiles(table):
    a, diff = exact_bootstrap()
    margin = 0.008  # two standard errors of an empirical distribution function at 20,000 resamples, at least
    for confidence in (0.95, 0.90):
        alpha = (1 - confidence) / 2
        lo, hi = exact_quantile(diff, alpha, margin), exact_quantile(diff, 1 - alpha, margin)
        c = table[confidence]["a"]["comparison"]
        assert (c["ci_low"], c["ci_high"]) == pytest.approx((lo, hi), abs=1e-9), confidence
        row = table[confidence]["a"]
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            (exact_quantile(a, alpha, margin), exact_quantile(a, 1 - alpha, margin)), abs=1e-9)
    # The two confidences give different upper ends here (4/9 and 3/9), so one cannot pass for the other.
    assert table[0.95]["a"]["comparison"]["ci_high"] == pytest.approx(4 / 9)
    assert table[0.90]["a"]["comparison"]["ci_high"] == pytest.approx(3 / 9)
    assert table[0.95]["a"]["comparison"]["ci_low"] == pytest.approx(-6 / 9)


# -- coverage ----------------------------------------------------------------------------------------------------

def test_a_95_percent_interval_covers_95_percent_and_a_90_percent_one_would_fail():
    """A pivotal case with an exactly known coverage. One observation X ~ N(mu, 1); its parametric bootstrap
    draws B = 1001 values X + Z*_b, Z* ~ N(0, 1), and the 95 % percentile interval is their 2.5 % and 97.5 %
    quantiles: with B - 1 = 1000 those are exactly the 26th and 976th order statistics. The interval covers mu
    iff -Z*_(976) <= X - mu <= -Z*_(26), whose probability is E[U_(976) - U_(26)] = 950 / 1002 = 0.9481 for
    uniform order statistics (a 90 % interval: 900 / 1002 = 0.8982).

    The accepted band is the central part of Binomial(T, 950/1002) holding all but 1e-9 of it, computed below;
    a 90 % interval reported as 95 % lands inside it with probability below 1e-9 (asserted too). T = 20,000
    trials of 1001 draws take well under a second, vectorised."""
    trials, b = 20_000, 1001
    p95, p90 = 950 / 1002, 900 / 1002
    lo_count, hi_count = binom.ppf(0.5e-9, trials, p95), binom.isf(0.5e-9, trials, p95)
    band = (lo_count / trials, hi_count / trials)                      # about 0.939-0.957
    assert binom.sf(lo_count - 1, trials, p90) < 1e-9                  # a 90 % interval's coverage: outside

    rng = np.random.default_rng(19)
    mu = 3.0
    x = mu + rng.normal(size=trials)
    covered = 0
    for start in range(0, trials, 2000):
        draws = x[start:start + 2000, None] + rng.normal(size=(min(2000, trials - start), b))
        for i, values in enumerate(draws):
            lo, hi = stats.percentile_interval(values, 0.95)
            covered += lo <= mu <= hi
            if start == 0 and i == 0:  # the quantiles are the order statistics named above
                s = np.sort(values)
                assert (lo, hi) == pytest.approx((s[25], s[975]), abs=1e-12)
    coverage = covered / trials
    assert band[0] <= coverage <= band[1], (coverage, band)
