"""Noisy-point detection metrics: exact 1-D 2-means F1, the ranking AUC and the noisy-point discovery curve.

Matched code: OpenDataVal (github.com/opendataval/opendataval)
  - opendataval/experiment/util.py::oned_twonn_clustering, ::f1_score
  - opendataval/experiment/exper_methods.py::noisy_detection ("kmeans_f1"), ::discover_corrupted_sample

Random values score F1 ~= r / (r + 0.5) at noise rate r (the 2-means split of uniform values falls near the median,
so about half the points are predicted noisy): 0.091, 0.167, 0.231, 0.286 at 5/10/15/20 %, whose mean 0.19 is the
"random values score about 0.19" of the LossVal paper (docs/algorithms.md §4) (LossVal's RandomEvaluator rows average 0.193 over the 4 rates
and 0.167 at 10 %).
"""
from __future__ import annotations

import numbers
from fractions import Fraction
from itertools import accumulate

import numpy as np

from .splits import as_numpy

# Float scores within this many units of n * eps * (sum |v - mean|)^2 of the best split are re-ranked in exact
# rational arithmetic; the float error of a prefix-sum score is a few such units, so the exact winner is kept.
_BAND_UNITS = 16.0


def _values(values) -> np.ndarray:
    v = as_numpy(values, "values")
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D (or (n, 1)), got shape {v.shape}")
    if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool) or np.iscomplexobj(v):
        raise ValueError(f"values must be real numbers, got dtype {v.dtype}")
    v = v.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(v)))
    if bad:
        raise ValueError(f"values contains {bad} NaN or inf entries")
    return v


def _bool_mask(mask, n: int, name: str) -> np.ndarray:
    m = as_numpy(mask, name)
    if m.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like values, got {m.shape}")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or not np.all((m == 0) | (m == 1)):
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {m.dtype}")
        m = m.astype(bool)
    return m


def _exact_ints(sorted_values: np.ndarray) -> list[int]:
    """The values as Python ints, all scaled by one common power of two (exact: a float64 is M * 2^e, |M| < 2^53)."""
    mantissa, exponent = np.frexp(sorted_values)
    m = (mantissa * 2.0 ** 53).astype(np.int64)
    e = exponent.astype(np.int64) - 53
    nonzero = m != 0
    base = int(e[nonzero].min()) if nonzero.any() else 0
    shift = np.where(nonzero, e - base, 0)
    return [int(mi) << int(si) for mi, si in zip(m.tolist(), shift.tolist())]


def two_means_split(values) -> np.ndarray:
    """The lower cluster of the exact 1-D 2-means clustering of `values`, as a bool mask (n,).

    Exact semantics: sort the values (stable argsort); for each split i in 1..n-1 the lower cluster is the i smallest
    values and the cost is the total within-cluster SSE. Only splits between two DIFFERENT values are allowed, so
    equal values always share a cluster; the chosen split minimises the SSE exactly (float prefix sums shortlist the
    candidates in O(n), and the shortlist is ranked in exact rational arithmetic). Ties in SSE go to the smallest
    split, i.e. the smallest lower cluster (OpenDataVal's min() keeps the first minimum too). If all values are
    equal there is no allowed split and the lower cluster is empty.

    Relation to OpenDataVal's oned_twonn_clustering, which also tries splits inside runs of equal values: along a
    run the SSE is concave in the number of copies sent down, so such a split is optimal only when it ties with the
    run's lower end, which comes first; hence both choose the same split in exact arithmetic, except when all values
    are equal (OpenDataVal then flags the single lowest-index point, this returns an empty cluster) and in float
    near-ties, which OpenDataVal resolves by its rounding and this by exact arithmetic.
    Raises ValueError for fewer than 2 values or NaN/inf.
    """
    v = _values(values)
    n = v.shape[0]
    if n < 2:
        raise ValueError(f"2-means needs at least 2 values, got {n}")
    order = np.argsort(v, kind="stable")
    s = v[order]
    lower = np.zeros(n, dtype=bool)
    allowed = s[1:] > s[:-1]  # allowed[i-1]: split i separates s[i-1] < s[i]
    if not allowed.any():
        return lower

    # Maximising sum_c n_c * mean_c^2 = S_i^2 / i + (T - S_i)^2 / (n - i) minimises the SSE (SSE = sum v^2 - that),
    # and is shift-invariant up to a constant, so centre first to keep the float scores accurate.
    c = s - s.mean()
    prefix = np.cumsum(c)
    total = prefix[-1]
    S = prefix[:-1]
    i = np.arange(1, n, dtype=np.float64)
    score = np.where(allowed, S * S / i + (total - S) ** 2 / (n - i), -np.inf)
    best = score.max()
    band = _BAND_UNITS * n * np.finfo(np.float64).eps * float(np.abs(c).sum()) ** 2
    shortlist = np.flatnonzero(score >= best - band) + 1  # split indices, ascending
    if len(shortlist) == 1:
        split = int(shortlist[0])
    else:
        ints = _exact_ints(s)
        sums = list(accumulate(ints))
        T = sums[-1]
        split, best_exact = 0, None
        for k in shortlist.tolist():
            Sk = sums[k - 1]
            exact = Fraction(Sk * Sk * (n - k) + (T - Sk) ** 2 * k, k * (n - k))
            if best_exact is None or exact > best_exact:  # strict: ties keep the smaller split
                split, best_exact = k, exact
    lower[order[:split]] = True
    return lower


def f1_score(predicted, actual) -> float:
    """F1 = 2 tp / (2 tp + fp + fn) of two bool masks of one length (0/1 arrays accepted).

    Returns 0.0 when either mask has no True entry (no positive predicted, or nothing to find); OpenDataVal's
    f1_score agrees except that it divides by zero when both are empty.
    """
    p = as_numpy(predicted, "predicted")
    if p.ndim != 1:
        raise ValueError(f"predicted must be 1-D, got shape {p.shape}")
    p = _bool_mask(p, p.shape[0], "predicted")
    a = _bool_mask(actual, p.shape[0], "actual")
    if not p.any() or not a.any():
        return 0.0
    tp = int(np.count_nonzero(p & a))
    fp = int(np.count_nonzero(p & ~a))
    fn = int(np.count_nonzero(~p & a))
    return 2.0 * tp / (2 * tp + fp + fn)


def noisy_detection_f1(values, noisy_mask) -> float:
    """F1 of "the lower 2-means cluster of `values` is noisy" against noisy_mask (OpenDataVal's kmeans_f1).

    values: (n,) data values, higher = more valuable (numpy or torch). noisy_mask: bool (n,), True on the rows that
    received noise. The prediction is two_means_split(values) (see there for the exact clustering and ties); the
    score is f1_score(prediction, noisy_mask): 0.0 when no point is predicted noisy (all values equal) or when
    noisy_mask is all False.
    """
    v = _values(values)
    mask = _bool_mask(noisy_mask, v.shape[0], "noisy_mask")
    return f1_score(two_means_split(v), mask)


def noisy_detection_auc(values, noisy_mask) -> float:
    """Area under the ROC curve of "low value = noisy": the probability that a noisy point's value is below a clean
    point's, ties counted half (the Mann-Whitney statistic on average ranks). 0.5 for random values, 1.0 for a
    perfect ranking. Raises ValueError when noisy_mask marks no point or every point."""
    v = _values(values)
    mask = _bool_mask(noisy_mask, v.shape[0], "noisy_mask")
    n_pos = int(mask.sum())
    n_neg = v.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"noisy_mask must mark some but not all points to define an AUC, got {n_pos} of "
                         f"{v.shape[0]}")
    order = np.argsort(-v, kind="stable")                  # descending values: rank 1 = the highest value
    ranks = np.empty(v.shape[0], dtype=np.float64)
    sorted_v = -v[order]
    # average ranks over ties
    starts = np.flatnonzero(np.concatenate(([True], sorted_v[1:] != sorted_v[:-1])))
    ends = np.concatenate((starts[1:], [v.shape[0]]))
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[mask].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def discovery_curve(values, noisy_mask, steps=20) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the noisy points found among the lowest-valued points, on a grid of inspected fractions.

    steps: an int m -> the grid q_j = j / m, j = 0..m; or an array of fractions q in [0, 1]. For each q the
    round_half_up(q * n) lowest-valued points are inspected (ascending stable argsort: equal values in index order,
    as OpenDataVal's discover_corrupted_sample) and found(q) = |inspected & noisy| / |noisy|.
    Returns (q, found), both float64. With n = 1000 and steps=20 the values equal OpenDataVal's "corrupt_found"
    (its default percentile 0.05 inspects 50 more points per step); OpenDataVal labels that axis i / (n // 50 + 1),
    not the inspected fraction, which is what q is here. Raises ValueError when noisy_mask has no True entry.
    """
    v = _values(values)
    n = v.shape[0]
    mask = _bool_mask(noisy_mask, n, "noisy_mask")
    n_noisy = int(mask.sum())
    if n_noisy == 0:
        raise ValueError("noisy_mask marks no point: the discovery curve is undefined")
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        j = np.arange(steps + 1, dtype=np.int64)
        q = j / steps
        counts = (2 * j * n + steps) // (2 * steps)  # exact round-half-up of j * n / steps
    else:
        q = as_numpy(steps, "steps").astype(np.float64).reshape(-1)
        if q.size == 0 or not np.all(np.isfinite(q)) or q.min() < 0 or q.max() > 1:
            raise ValueError("steps must be an int >= 1 or a non-empty array of fractions in [0, 1]")
        counts = np.floor(q * n + 0.5).astype(np.int64)
    order = np.argsort(v, kind="stable")
    found_so_far = np.concatenate(([0], np.cumsum(mask[order])))
    return q, found_so_far[counts] / n_noisy
