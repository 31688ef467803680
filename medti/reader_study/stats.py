"""The statistics of a reader study: proportions with exact intervals and tests, and agreement.

- :func:`proportion`: a share ``k/n`` with its Clopper-Pearson (exact) interval and the exact two-sided binomial
  test against a chance rate (:func:`scipy.stats.binomtest`). The paper's 36 of 50 pairs preferred is
  ``proportion(36, 50, 0.5)``: p = 0.0026.
- :func:`cohen_kappa` (two readers) and :func:`fleiss_kappa` (any number, from a subjects x categories count
  table; :func:`fleiss_kappa_ratings` from a subjects x readers table of answers).
- :func:`kappa_with_interval`: Cohen's kappa for two readers, Fleiss' for three or more, with a percentile
  bootstrap interval over cases (cases drawn with replacement, every reader's answers to a case kept together;
  resamples where kappa is undefined, all answers in one category, are left out and counted).
- :func:`fisher_difference`: two shares compared by Fisher's exact test.

Everything here takes plain counts or arrays and imports scipy only where a test needs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# The interval method named in every result, so a reader of results.json need not guess.
CI_METHOD = "Clopper-Pearson exact"
KAPPA_CI_METHOD = "percentile bootstrap over cases"


def proportion(k: int, n: int, null: float | None = 0.5, confidence: float = 0.95) -> dict:
    """``{k, n, rate, ci_low, ci_high, null, p_value}``: the share ``k/n``, its exact (Clopper-Pearson) interval
    and the exact two-sided binomial test of ``rate == null`` (``null`` None: no test). ``n == 0``: the rate,
    interval and p-value are None."""
    k, n = int(k), int(n)
    if not 0 <= k <= n:
        raise ValueError(f"proportion: need 0 <= k <= n, got k={k}, n={n}")
    out = {"k": k, "n": n, "rate": None, "ci_low": None, "ci_high": None, "null": null, "p_value": None}
    if n == 0:
        return out
    from scipy.stats import binomtest

    test = binomtest(k, n, 0.5 if null is None else null, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=confidence, method="exact")
    out.update(rate=k / n, ci_low=float(ci.low), ci_high=float(ci.high))
    if null is not None:
        out["p_value"] = float(test.pvalue)
    return out


def fisher_difference(k1: int, n1: int, k2: int, n2: int) -> dict:
    """The difference of two shares ``k1/n1 - k2/n2`` and the two-sided p-value of Fisher's exact test."""
    if n1 == 0 or n2 == 0:
        return {"difference": None, "p_value": None}
    from scipy.stats import fisher_exact

    _, p = fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="two-sided")
    return {"difference": k1 / n1 - k2 / n2, "p_value": float(p)}


def _codes(columns: Sequence[Sequence], categories: Sequence | None) -> tuple[np.ndarray, list]:
    """Answers (one sequence per reader, aligned by case) as integer codes, and the category list."""
    if categories is None:
        categories = sorted({a for col in columns for a in col}, key=str)
    index = {c: i for i, c in enumerate(categories)}
    try:
        codes = np.array([[index[a] for a in col] for col in columns], dtype=int).T  # cases x readers
    except KeyError as exc:
        raise ValueError(f"answer {exc.args[0]!r} is not one of the categories {list(categories)}") from None
    return codes, list(categories)


def _cohen(codes: np.ndarray, k: int) -> float | None:
    a, b = codes[:, 0], codes[:, 1]
    n = len(a)
    if n == 0:
        return None
    po = float(np.mean(a == b))
    pe = float(np.dot(np.bincount(a, minlength=k), np.bincount(b, minlength=k))) / n**2
    return None if math.isclose(pe, 1.0) else (po - pe) / (1.0 - pe)


def cohen_kappa(a: Sequence, b: Sequence, categories: Sequence | None = None) -> float | None:
    """Cohen's kappa of two readers' answers to the same cases (None when undefined: both answered every case
    with one and the same category, so chance agreement is 1)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} and {len(b)} answers; the two readers must answer the same cases")
    codes, cats = _codes([a, b], categories)
    return _cohen(codes.reshape(-1, 2), len(cats))


def fleiss_kappa(counts) -> float | None:
    """Fleiss' kappa (1971) from a subjects x categories table: ``counts[i, j]`` readers put subject i in
    category j; every subject rated by the same number (>= 2) of readers. None when undefined (one category)."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError("fleiss_kappa: need a non-empty subjects x categories table")
    m = counts.sum(axis=1)
    if not np.allclose(m, m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa: every subject needs the same number (>= 2) of ratings")
    return _fleiss_from(counts, float(m[0]))


def _fleiss_from(counts: np.ndarray, m: float) -> float | None:
    n_subjects = counts.shape[0]
    p_i = ((counts**2).sum(axis=1) - m) / (m * (m - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / (n_subjects * m)
    p_e = float((p_j**2).sum())
    return None if math.isclose(p_e, 1.0) else float((p_bar - p_e) / (1.0 - p_e))


def fleiss_kappa_ratings(ratings: Sequence[Sequence], categories: Sequence | None = None) -> float | None:
    """Fleiss' kappa from answers given as one sequence per reader, aligned by case."""
    codes, cats = _codes(ratings, categories)
    counts = np.stack([np.bincount(row, minlength=len(cats)) for row in codes])
    return fleiss_kappa(counts)


def kappa_with_interval(ratings: Sequence[Sequence], categories: Sequence | None = None, confidence: float = 0.95,
                        n_boot: int = 2000, seed: int = 0) -> dict:
    """Agreement of readers answering the same cases (one answer sequence per reader, aligned by case): Cohen's
    kappa for two readers, Fleiss' for more, with a percentile bootstrap interval over cases.

    ``{statistic, kappa, ci_low, ci_high, ci_method, n_cases, n_readers, observed_agreement, n_boot,
    undefined_resamples}``; kappa None when undefined, the interval None when fewer than 2 cases or when no
    resample gives a kappa."""
    if len(ratings) < 2:
        raise ValueError("kappa_with_interval: agreement needs at least two readers")
    codes, cats = _codes(ratings, categories)
    n, r = codes.reshape(-1, len(ratings)).shape
    k = len(cats)
    statistic = "cohen" if r == 2 else "fleiss"
    out = {"statistic": statistic, "kappa": None, "ci_low": None, "ci_high": None, "ci_method": KAPPA_CI_METHOD,
           "confidence": confidence, "n_cases": int(n), "n_readers": int(r), "observed_agreement": None,
           "n_boot": int(n_boot), "undefined_resamples": 0}
    if n == 0:
        return out
    onehot = np.eye(k, dtype=float)[codes]          # cases x readers x categories
    counts = onehot.sum(axis=1)                     # cases x categories
    # the share of agreeing reader pairs per case: Fleiss' P_i, which for two readers is 1 when they agree
    p_i = ((counts**2).sum(axis=1) - r) / (r * (r - 1))
    out["observed_agreement"] = float(p_i.mean())
    out["kappa"] = _cohen(codes, k) if r == 2 else _fleiss_from(counts, float(r))
    if n < 2 or n_boot <= 0:
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    p_bar = p_i[idx].mean(axis=1)
    if r == 2:
        pa = onehot[:, 0, :][idx].mean(axis=1)      # n_boot x categories
        pb = onehot[:, 1, :][idx].mean(axis=1)
        p_e = (pa * pb).sum(axis=1)
    else:
        p_j = counts[idx].sum(axis=1) / (n * r)
        p_e = (p_j**2).sum(axis=1)
    defined = ~np.isclose(p_e, 1.0)
    boot = (p_bar[defined] - p_e[defined]) / (1.0 - p_e[defined])
    out["undefined_resamples"] = int((~defined).sum())
    if len(boot):
        alpha = (1.0 - confidence) / 2
        lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
        out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def consistency(first: Sequence, second: Sequence, categories: Sequence | None = None,
                confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """A reader's consistency over repeated cases: the share of repeats answered as the first time (with its
    exact interval; no test) and Cohen's kappa between the two presentations (bootstrap interval)."""
    same = sum(a == b for a, b in zip(first, second))
    out = {"agreement": proportion(same, len(first), null=None, confidence=confidence)}
    out["kappa"] = kappa_with_interval([list(first), list(second)], categories, confidence, n_boot, seed)
    return out
