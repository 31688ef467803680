"""AUC statistics for classifier experiments: AUC, ROC curves, bootstrap intervals and paired tests.

Scores are class probabilities, ``n x K`` (``K = 2`` for a binary task, whose AUC uses column 1), or a 1-D
array of positive-class scores. Multi-class AUC is the one-vs-rest macro average (the mean of the K
one-vs-rest AUCs). Ties count one half, as in the Mann-Whitney statistic.

Bootstrap resampling is stratified by class (each class resampled within itself, as pROC does by
default), so every resample has every class and an AUC. A resample is a vector of case weights, which lets
one resample be applied to many score sets at once: the same resampled test set for every seed and every
condition, which is what makes the bootstrap comparison paired.

DeLong's test (DeLong, DeLong & Clarke-Pearson 1988; the fast midrank form of Sun & Xu 2014) compares
correlated AUCs measured on the same cases. It covers any contrast of several AUCs, which is how the mean
AUC over seeds of one condition is compared with that of another. It is defined for binary AUCs; for
multi-class tasks the paired bootstrap is the comparison.

Both of those hold the trained networks fixed: they answer "how sure are we of these networks' AUCs, given
this test set", and ignore that another seed (other initial weights, batches, subsets drawn) gives another
network. Beside them, two comparisons that include the seed variance (what the paper's +- shows):

- the two-level bootstrap (:func:`two_level_means`): each resample draws a condition's seeds with
  replacement, then the test cases (the same case resample for every condition, so it stays paired over
  cases; seeds are drawn independently per condition, since seed k of one condition is not a partner of seed
  k of another); its interval of the mean AUC and of the difference, and a p-value as for the case-level one;
- Welch's t-test on the seeds' AUCs (:func:`seed_welch_test`): each seed one observation, the test set fixed.

With one seed a condition has no measurable seed variance: both are then left out (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medti.errors import InputError

_MAX_CELLS = 4_000_000  # bootstrap weights are computed in blocks of at most this many (resample x case) cells


def as_probabilities(scores) -> np.ndarray:
    """1-D positive-class scores -> ``n x 2``; an ``n x K`` array is returned as float."""
    s = np.asarray(scores, dtype=float)
    if s.ndim == 1:
        return np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must be 1-D or n x K with K >= 2, got shape {s.shape}")
    return s


def require_classes(labels, num_classes: int, where: str) -> None:
    """InputError unless every one of ``num_classes`` classes is present (an AUC needs them all)."""
    present = np.unique(np.asarray(labels))
    missing = sorted(set(range(num_classes)) - {int(x) for x in present})
    if missing:
        raise InputError(f"{where}: labels {missing} have no images (found only {sorted(int(x) for x in present)}); "
                         "an AUC needs images of every class")


def require_ci_sample(labels, num_classes: int, min_per_class: int, where: str) -> None:
    """InputError when a class has too few cases for a bootstrap interval to mean anything."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes)
    small = [(k, int(c)) for k, c in enumerate(counts) if c < min_per_class]
    if small:
        desc = ", ".join(f"label {k}: {c}" for k, c in small)
        raise InputError(f"{where}: too few test images for a confidence interval ({desc}; need at least "
                         f"{min_per_class} per class, evaluate.min_test_per_class)")


# -- AUC -----------------------------------------------------------------------------------------------------

def _weighted_binary_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUCs of one score vector under ``B x n`` case weights (a weight of 2 counts a case twice)."""
    pos = np.flatnonzero(positive)
    neg = np.flatnonzero(~positive)
    order = np.argsort(scores[neg], kind="stable")
    neg_sorted = scores[neg][order]
    wn = weights[:, neg[order]]
    cum = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(wn, axis=1)], axis=1)
    left = np.searchsorted(neg_sorted, scores[pos], side="left")
    right = np.searchsorted(neg_sorted, scores[pos], side="right")
    below = cum[:, left] + 0.5 * (cum[:, right] - cum[:, left])
    wp = weights[:, pos]
    num = np.sum(wp * below, axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def weighted_auc(labels, scores, weights) -> np.ndarray:
    """AUC (one-vs-rest macro average when K > 2) under each row of ``weights`` (``B x n``)."""
    labels = np.asarray(labels, dtype=int)
    probs = as_probabilities(scores)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    if probs.shape[1] == 2:
        return _weighted_binary_auc(labels == 1, probs[:, 1], weights)
    return np.mean([_weighted_binary_auc(labels == k, probs[:, k], weights) for k in range(probs.shape[1])], axis=0)


def auc(labels, scores) -> float:
    """The AUC of one score set; every class must be present."""
    labels = np.asarray(labels, dtype=int)
    probs = as_probabilities(scores)
    require_classes(labels, probs.shape[1], "auc")
    return float(weighted_auc(labels, probs, np.ones((1, len(labels))))[0])


# -- ROC curves ----------------------------------------------------------------------------------------------

def roc_curve(positive, scores) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / max(1, y.sum())]
    fpr = np.r_[0.0, fps / max(1, (~y).sum())]
    return fpr, tpr


def roc_on_grid(labels, scores, grid: np.ndarray) -> np.ndarray:
    """TPR at each FPR of ``grid`` (the macro average of one-vs-rest curves when K > 2)."""
    labels = np.asarray(labels, dtype=int)
    probs = as_probabilities(scores)
    ks = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    curves = []
    for k in ks:
        fpr, tpr = roc_curve(labels == k, probs[:, k])
        curves.append(np.interp(grid, fpr, tpr))
    out = np.mean(curves, axis=0)
    out[0] = 0.0 if grid[0] == 0 else out[0]
    return out


# -- bootstrap -----------------------------------------------------------------------------------------------

def stratified_weights(labels, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot x n`` case counts: each class resampled with replacement within itself."""
    labels = np.asarray(labels, dtype=int)
    w = np.zeros((n_boot, len(labels)))
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return w


def bootstrap_aucs(labels, score_sets: dict[str, list], n_boot: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per named group of score sets (e.g. a condition's seeds), ``n_seeds x n_boot`` bootstrap AUCs.

    Every group and every set in it is evaluated on the same resamples, so differences between groups are
    paired.
    """
    labels = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    block = max(1, _MAX_CELLS // max(1, len(labels)))
    out = {name: np.empty((len(sets), n_boot)) for name, sets in score_sets.items()}
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        w = stratified_weights(labels, stop - start, rng)
        for name, sets in score_sets.items():
            for i, s in enumerate(sets):
                out[name][i, start:stop] = weighted_auc(labels, s, w)
    return out


def two_level_means(boot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The two-level bootstrap of a condition's mean AUC: for each of the ``n_boot`` case resamples of
    ``boot`` (``n_seeds x n_boot`` AUCs from :func:`bootstrap_aucs`), ``n_seeds`` seeds drawn with
    replacement and their AUCs on that resample averaged. Returns ``n_boot`` means."""
    boot = np.asarray(boot, dtype=float)
    n_seeds, n_boot = boot.shape
    idx = rng.integers(0, n_seeds, size=(n_seeds, n_boot))
    return np.take_along_axis(boot, idx, axis=0).mean(axis=0)


def seed_welch_test(aucs_a, aucs_b) -> tuple[float | None, float | None]:
    """Welch's t and two-sided p for mean(aucs_a) - mean(aucs_b), each seed's AUC one observation (the
    seed-level test). (None, None) unless both conditions have at least two seeds."""
    a, b = np.asarray(aucs_a, dtype=float), np.asarray(aucs_b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None, None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb <= 1e-24:  # every seed of both conditions agrees: no spread to test against
        return None, (1.0 if abs(diff) < 1e-12 else 0.0)
    from scipy.stats import t as student_t

    t = diff / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if va else 0.0) + (vb ** 2 / (len(b) - 1) if vb else 0.0))
    return float(t), float(2.0 * student_t.sf(abs(t), dof))


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap differences (the share on the far side of 0).

    With the +1 correction, so it is never exactly 0; identical score sets give differences that are all 0
    and a p-value of 1.
    """
    d = np.asarray(differences, dtype=float)
    n = len(d)
    below = (np.sum(d <= 0) + 1) / (n + 1)
    above = (np.sum(d >= 0) + 1) / (n + 1)
    return float(min(1.0, 2.0 * min(below, above)))


# -- DeLong --------------------------------------------------------------------------------------------------

def _midrank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def delong_covariance(positive, score_sets) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``k`` binary score sets on the same cases and DeLong's ``k x k`` covariance of them."""
    positive = np.asarray(positive, dtype=bool)
    sets = np.atleast_2d(np.asarray(score_sets, dtype=float))
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise InputError(f"DeLong's test needs at least two cases of each class (have {m} positive, {n} negative)")
    v10 = np.empty((len(sets), m))
    v01 = np.empty((len(sets), n))
    aucs = np.empty(len(sets))
    for r, s in enumerate(sets):
        x, y = s[positive], s[~positive]
        tz = _midrank(np.concatenate([x, y]))
        tx, ty = _midrank(x), _midrank(y)
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


@dataclass
class Comparison:
    """Two conditions' mean AUCs on the same test cases compared. Case level (the networks fixed): the paired
    bootstrap interval and p, DeLong. With the seed variance: the two-level bootstrap (seeds, then cases)
    interval and p, and Welch's t-test on the seeds' AUCs (None with fewer than two seeds a side)."""

    difference: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    p_delong: float | None
    z_delong: float | None
    two_level_ci_low: float | None = None
    two_level_ci_high: float | None = None
    p_two_level: float | None = None
    p_seed_welch: float | None = None
    t_seed_welch: float | None = None

    def to_dict(self) -> dict:
        return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
                for k, v in self.__dict__.items()}


def delong_test(labels, sets_a, sets_b) -> tuple[float, float]:
    """DeLong's z and two-sided p for mean AUC(sets_a) - mean AUC(sets_b), all sets on the same cases."""
    labels = np.asarray(labels, dtype=int)
    a = [as_probabilities(s)[:, 1] for s in sets_a]
    b = [as_probabilities(s)[:, 1] for s in sets_b]
    aucs, cov = delong_covariance(labels == 1, a + b)
    contrast = np.r_[np.full(len(a), 1.0 / len(a)), np.full(len(b), -1.0 / len(b))]
    diff = float(contrast @ aucs)
    var = float(contrast @ cov @ contrast)
    if var <= 1e-15:
        return 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    z = diff / math.sqrt(var)
    return z, float(math.erfc(abs(z) / math.sqrt(2.0)))


def compare(labels, sets_a, sets_b, boot_a: np.ndarray, boot_b: np.ndarray, confidence: float,
            two_level_a: np.ndarray | None = None, two_level_b: np.ndarray | None = None) -> Comparison:
    """Condition A against B: the difference of mean AUCs, its paired bootstrap interval and p, and DeLong;
    with the seed variance, the two-level bootstrap's interval and p and Welch's test on the seed AUCs.

    ``boot_a``/``boot_b`` are the ``n_seeds x n_boot`` bootstrap AUCs from :func:`bootstrap_aucs` (same
    resamples); ``two_level_a``/``two_level_b`` the :func:`two_level_means` of them (None: left out).
    """
    labels = np.asarray(labels, dtype=int)
    aucs_a, aucs_b = [auc(labels, s) for s in sets_a], [auc(labels, s) for s in sets_b]
    point = float(np.mean(aucs_a) - np.mean(aucs_b))
    diffs = boot_a.mean(axis=0) - boot_b.mean(axis=0)
    lo, hi = percentile_interval(diffs, confidence)
    binary = as_probabilities(sets_a[0]).shape[1] == 2
    z, p = delong_test(labels, sets_a, sets_b) if binary else (None, None)
    out = Comparison(difference=point, ci_low=lo, ci_high=hi, p_bootstrap=bootstrap_p_value(diffs),
                     p_delong=p, z_delong=z)
    if len(aucs_a) > 1 and len(aucs_b) > 1:
        out.t_seed_welch, out.p_seed_welch = seed_welch_test(aucs_a, aucs_b)
        if two_level_a is not None and two_level_b is not None:
            two = np.asarray(two_level_a) - np.asarray(two_level_b)
            out.two_level_ci_low, out.two_level_ci_high = percentile_interval(two, confidence)
            out.p_two_level = bootstrap_p_value(two)
    return out


# -- a table of conditions -----------------------------------------------------------------------------------

def summarise_conditions(labels, score_sets: dict[str, list], reference: str, n_boot: int, confidence: float,
                         seed: int = 0, pairs: dict[str, str] | None = None) -> dict[str, dict]:
    """Per condition (a list of score sets, one per seed, all on the same test cases): the seeds' AUCs, their
    mean and standard deviation, a bootstrap interval of the mean AUC and, for every condition but
    ``reference``, the paired comparison with it (:class:`Comparison`, under ``"comparison"``).

    The interval ``ci_low``-``ci_high`` reflects the test set's sampling (cases resampled, stratified by class);
    the standard deviation reflects the seeds (initial weights, batches, the subsets drawn);
    ``two_level_ci_low``-``two_level_ci_high`` both (seeds, then cases, resampled: :func:`two_level_means`; None
    with one seed). The case resamples, and so every case-level figure, do not depend on the seed draws.

    ``pairs`` (condition -> another condition): further comparisons beside the one with ``reference``, e.g. a
    condition on a smaller embedding variant against the one with the same amounts on the main variant; each
    on the same case resamples and seed draws as every other figure, under ``"comparisons"`` (``{other:
    Comparison dict}``). Without it the table is as it always was.
    """
    labels = np.asarray(labels, dtype=int)
    if reference not in score_sets:
        raise InputError(f"evaluate.reference: condition '{reference}' has no classifier runs "
                         f"(have: {', '.join(score_sets)})")
    unknown = sorted({c for pair in (pairs or {}).items() for c in pair} - set(score_sets))
    if unknown:
        raise InputError(f"comparison of condition(s) {', '.join(unknown)}: no classifier runs "
                         f"(have: {', '.join(score_sets)})")
    boot = bootstrap_aucs(labels, score_sets, n_boot, seed)
    seed_rng = np.random.default_rng([seed, 1])  # a stream of its own: the case resamples stay as they were
    two_level = {name: two_level_means(b, seed_rng) if len(b) > 1 else None for name, b in boot.items()}
    out = {}
    for name, sets in score_sets.items():
        aucs = [auc(labels, s) for s in sets]
        lo, hi = percentile_interval(boot[name].mean(axis=0), confidence)
        two_lo, two_hi = (percentile_interval(two_level[name], confidence) if two_level[name] is not None
                          else (None, None))
        entry = {"aucs": aucs, "auc_mean": float(np.mean(aucs)),
                 "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
                 "ci_low": lo, "ci_high": hi, "two_level_ci_low": two_lo, "two_level_ci_high": two_hi,
                 "n_seeds": len(aucs)}
        if name != reference:
            entry["comparison"] = compare(labels, sets, score_sets[reference], boot[name], boot[reference],
                                          confidence, two_level[name], two_level[reference]).to_dict()
        out[name] = entry
    for name, other in (pairs or {}).items():
        out[name].setdefault("comparisons", {})[other] = compare(
            labels, score_sets[name], score_sets[other], boot[name], boot[other], confidence, two_level[name],
            two_level[other]).to_dict()
    return out
