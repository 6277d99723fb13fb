"""Noise injection for noisy-point detection, with OpenDataVal's and LossVal's semantics and random streams.

Matched code:
  - OpenDataVal, opendataval/dataloader/noisify.py::mix_labels        -> label noise
  - OpenDataVal, opendataval/dataloader/noisify.py::add_gauss_noise   -> feature noise
  - LossVal (github.com/twibiral/LossVal), src/baseline/utils.py::mixed_noise_function -> mixed noise
    (OpenDataVal has no mixed noise; LossVal's benchmark added this one and it produced the published numbers).

Common rules (all three):
  - The number of noisy rows is k = round(rate * n) with Python's round (halves go to the even integer:
    round(2.5) == 2), not floor. The rows are rs.choice(n, k, replace=False).
  - rs = check_random_state(random_state) (sklearn's rules: None -> numpy's global RandomState, int -> a new
    RandomState(int), a RandomState/Generator -> used as is). With a RandomState the draws are OpenDataVal's, call
    for call: a seeded run reproduces OpenDataVal's noisy rows and values exactly.
  - Inputs are never modified; copies are returned. noisy_mask is a bool array (n,), True on the chosen rows.

Label noise (mix_labels): the label set is the DISTINCT values observed in y (np.unique), not a fixed class count.
Each chosen row gets a shift s uniform on {1, ..., U-1} (rs.choice(U - 1, k) + 1) and moves from its label's position
p in that set to position (p + s) mod U: the new label is uniform over the OTHER observed labels and never the old one.
OpenDataVal applies this to one-hot rows, whose np.unique(axis=0) order is the class order REVERSED (e_{C-1} < ... <
e_0 lexicographically); 1-D class labels here are placed in that same reversed order, so seeded runs give the same
new classes as OpenDataVal (for C = 2 the order is irrelevant). The same function is OpenDataVal's regression label
noise: the "classes" are then the distinct observed target values in ascending order, so a chosen row gets another
observed value, uniform over the distinct values (not weighted by how often each occurs), never its own.

Feature noise (add_gauss_noise): X is cast to float64 and each chosen row gets N(0, scale^2) added to every feature,
drawn as rs.normal(0, scale, size=(k, *feature_shape)) after the rows are chosen.

Mixed noise (LossVal's mixed_noise_function): k = round(rate * n) rows are chosen, then shuffled with rs.shuffle; the
first k // 2 get label noise and the remaining k - k // 2 get feature noise (an odd k gives the extra row to feature
noise). Draw order: choice, shuffle, normal (feature half), label shifts (label half); the label set is taken from
the labels before any change. The two halves are disjoint, and every noisy row carries exactly one kind of noise.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from .splits import Split, as_numpy, check_random_state, check_task

KINDS = ("label", "feature", "mixed")


def noisy_count(n: int, rate: float) -> int:
    """Number of noisy rows among n at `rate`: Python's round(n * rate), as OpenDataVal (halves to even)."""
    return round(n * rate)


def _check_rate(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not math.isfinite(rate):
        raise ValueError(f"rate must be a finite real number in [0, 1], got {rate!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return float(rate)


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite real number >= 0, got {scale!r}")
    return float(scale)


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _labels(y, name="y") -> np.ndarray:
    y = as_numpy(y, name)
    if y.ndim not in (1, 2) or y.shape[0] == 0:
        raise ValueError(f"{name} must be 1-D (or 2-D one-hot/(n, 1)) with at least one row, got shape {y.shape}")
    return y


def _features(X, name="X") -> np.ndarray:
    X = as_numpy(X, name)
    if X.ndim < 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be (n_samples, *feature_shape) with at least one row, got shape {X.shape}")
    return np.array(X, dtype=np.float64)  # a copy, as OpenDataVal's np.array(x, dtype=np.float64)


def _label_space(y: np.ndarray, task: str, num_classes, name: str = "y"):
    """(labels, position of each row's label in `labels`), in the order OpenDataVal's np.unique(axis=0) gives."""
    if task == "regression":
        if num_classes is not None:
            raise ValueError("num_classes applies to classification only; use num_classes=None for regression")
        if y.ndim == 2 and y.shape[1] != 1:
            raise ValueError(f"regression {name} must be 1-D or (n, 1), got shape {y.shape}")
        flat = y.reshape(-1)
        values, position = np.unique(flat, return_inverse=True)  # ascending, as np.unique((n, 1), axis=0)
        return values.reshape((-1,) + y.shape[1:]), position.reshape(-1)
    if y.ndim == 2 and y.shape[1] > 1:
        if num_classes is not None:
            raise ValueError("num_classes is for 1-D class labels; one-hot labels carry their classes already")
        rows, position = np.unique(y, return_inverse=True, axis=0)  # exactly OpenDataVal's call
        return rows, position.reshape(-1)
    flat = y.reshape(-1)
    if num_classes is None:
        labels = np.unique(flat)[::-1]
    else:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not np.issubdtype(flat.dtype, np.number) or np.any(flat != np.round(flat)) \
                or flat.min() < 0 or flat.max() >= num_classes:
            raise ValueError(f"with num_classes={num_classes}, {name} must hold integer class codes in "
                             f"[0, {num_classes - 1}]")
        labels = np.arange(num_classes - 1, -1, -1).astype(flat.dtype)
    # Reversed class order = the order of the one-hot rows OpenDataVal uniquifies (see the module docstring).
    position = len(labels) - 1 - np.searchsorted(labels[::-1], flat)
    return labels.reshape((-1,) + y.shape[1:]), position


def _shift_labels(y: np.ndarray, rows: np.ndarray, rs, task: str, num_classes, name: str = "y") -> np.ndarray:
    """mix_labels' update of y[rows] in place (one rs.choice for the shifts); returns y."""
    labels, position = _label_space(y, task, num_classes, name)
    count = len(labels)
    if count < 2 and len(rows) > 0:
        raise ValueError(f"label noise needs at least 2 distinct values in {name} to move a label to another one, "
                         f"found {count}")
    y[rows] = labels[(position[rows] + _shifts(rs, count, len(rows))) % count]
    return y


def _shifts(rs, count: int, k: int) -> np.ndarray:
    """k shifts uniform on {1, ..., count-1}: mix_labels' rs.choice(count - 1, k) + 1."""
    if k == 0 and count < 2:
        return np.zeros(0, dtype=np.int64)  # nothing to draw; rs.choice(-1, 0) would raise
    return rs.choice(count - 1, k) + 1


def _mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def add_label_noise(y, rate: float, *, task: str = "classification", num_classes=None, random_state=None):
    """Move round(rate * n) randomly chosen labels to a different observed label (OpenDataVal's mix_labels).

    y: (n,) labels, (n, C) one-hot rows, or (n, 1) regression targets; numpy or torch. task: "classification" or
    "regression" (the mechanism is the same; see the module docstring). num_classes: None (default, OpenDataVal's
    behaviour: the label set is the labels observed in y) or C >= 2 for integer codes 0..C-1, making every class a
    possible new label even when absent from y (a difference from OpenDataVal; identical results when all C classes
    occur in y).
    Returns (y_noisy, noisy_mask): y_noisy a copy of y with its dtype and shape, noisy_mask bool (n,). Every masked
    label differs from the original one. Raises ValueError for a rate outside [0, 1] or when fewer than 2 distinct
    labels exist while k > 0.
    """
    check_task(task)
    rate = _check_rate(rate)
    y = np.array(_labels(y), copy=True)
    n = y.shape[0]
    rs = check_random_state(random_state)
    rows = rs.choice(n, noisy_count(n, rate), replace=False)
    _shift_labels(y, rows, rs, task, num_classes)
    return y, _mask(n, rows)


def add_feature_noise(X, rate: float, *, scale: float = 1.0, random_state=None):
    """Add N(0, scale^2) to every feature of round(rate * n) randomly chosen rows (OpenDataVal's add_gauss_noise).

    X: (n, *feature_shape), numpy or torch. Returns (X_noisy, noisy_mask): X_noisy a float64 copy, unchanged outside
    the mask; noisy_mask bool (n,).
    """
    rate = _check_rate(rate)
    scale = _check_scale(scale)
    X = _features(X)
    n = X.shape[0]
    rs = check_random_state(random_state)
    rows = rs.choice(n, noisy_count(n, rate), replace=False)
    X[rows] += rs.normal(0.0, scale, size=(len(rows), *X.shape[1:]))
    return X, _mask(n, rows)


def _mixed_rows(n: int, rate: float, rs):
    rows = rs.choice(n, noisy_count(n, rate), replace=False)
    rs.shuffle(rows)
    half = len(rows) // 2
    return rows, rows[:half], rows[half:]  # all, label part (k // 2), feature part (k - k // 2)


def add_mixed_noise(X, y, rate: float, *, task: str = "classification", num_classes=None, scale: float = 1.0,
                    random_state=None):
    """Half label noise, half feature noise on disjoint rows (LossVal's mixed_noise_function).

    k = round(rate * n) rows are chosen and shuffled; the first k // 2 get label noise (as add_label_noise), the
    other k - k // 2 get feature noise (as add_feature_noise): for odd k feature noise gets one row more.
    Returns (X_noisy float64 copy, y_noisy copy, noisy_mask bool (n,)) with noisy_mask the union of both halves.
    """
    check_task(task)
    rate = _check_rate(rate)
    scale = _check_scale(scale)
    X = _features(X)
    y = np.array(_labels(y), copy=True)
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"X and y must have the same number of rows, got {n} and {y.shape[0]}")
    rs = check_random_state(random_state)
    rows, label_rows, feature_rows = _mixed_rows(n, rate, rs)
    X[feature_rows] += rs.normal(0.0, scale, size=(len(feature_rows), *X.shape[1:]))
    _shift_labels(y, label_rows, rs, task, num_classes)
    return X, y, _mask(n, rows)


def inject_noise(X, y, kind: str = "label", rate: float = 0.1, *, task: str = "classification", num_classes=None,
                 scale: float = 1.0, random_state=None):
    """One entry for the three noise kinds: returns (X_noisy, y_noisy, noisy_mask).

    kind "label" -> add_label_noise(y, ...), X returned as an unchanged float64 copy; "feature" ->
    add_feature_noise(X, ...), y returned as an unchanged copy; "mixed" -> add_mixed_noise(X, y, ...). The random
    stream is used exactly as by the single function, so results equal calling it directly with the same seed.
    """
    _check_kind(kind)
    if kind == "mixed":
        return add_mixed_noise(X, y, rate, task=task, num_classes=num_classes, scale=scale,
                               random_state=random_state)
    X_arr = _features(X)
    y_arr = np.array(_labels(y), copy=True)
    if y_arr.shape[0] != X_arr.shape[0]:
        raise ValueError(f"X and y must have the same number of rows, got {X_arr.shape[0]} and {y_arr.shape[0]}")
    if kind == "label":
        y_noisy, mask = add_label_noise(y_arr, rate, task=task, num_classes=num_classes, random_state=random_state)
        return X_arr, y_noisy, mask
    check_task(task)
    X_noisy, mask = add_feature_noise(X_arr, rate, scale=scale, random_state=random_state)
    return X_noisy, y_arr, mask


def noisify_split(split: Split, kind: str = "label", rate: float = 0.1, *, scale: float = 1.0, random_state=None):
    """Noise on the train AND valid parts of a Split, with OpenDataVal's draw order (DataFetcher.noisify).

    The test part is left clean. Per kind, the calls on rs = check_random_state(random_state) are exactly:
      label   (mix_labels):      choice(train), choice(valid), shifts(train), shifts(valid)
      feature (add_gauss_noise): choice(train), choice(valid), normal(train), normal(valid)
      mixed   (LossVal):         choice(train), choice(valid), shuffle(train), shuffle(valid), normal(train half),
                                 normal(valid half), shifts(train half), shifts(valid half)
    with k = round(rate * n_part) per part, and each part's label set taken from that part's own labels (as
    OpenDataVal does). Passing the RandomState that made the split reproduces a seeded OpenDataVal run.
    Returns (noisy_split, noisy_train_mask, noisy_valid_mask); x_* become float64 copies.
    """
    if not isinstance(split, Split):
        raise TypeError(f"split must be a Split (from standardize_split), got {type(split).__name__}")
    _check_kind(kind)
    rate = _check_rate(rate)
    scale = _check_scale(scale)
    rs = check_random_state(random_state)
    x_tr, x_va = np.array(split.x_train, dtype=np.float64), np.array(split.x_valid, dtype=np.float64)
    y_tr, y_va = np.array(split.y_train, copy=True), np.array(split.y_valid, copy=True)
    n_tr, n_va = x_tr.shape[0], x_va.shape[0]

    if kind == "mixed":
        rows_tr = rs.choice(n_tr, noisy_count(n_tr, rate), replace=False)
        rows_va = rs.choice(n_va, noisy_count(n_va, rate), replace=False)
        rs.shuffle(rows_tr)
        rs.shuffle(rows_va)
        label_tr, feature_tr = rows_tr[:len(rows_tr) // 2], rows_tr[len(rows_tr) // 2:]
        label_va, feature_va = rows_va[:len(rows_va) // 2], rows_va[len(rows_va) // 2:]
    else:
        rows_tr = rs.choice(n_tr, noisy_count(n_tr, rate), replace=False)
        rows_va = rs.choice(n_va, noisy_count(n_va, rate), replace=False)
        label_tr, label_va = (rows_tr, rows_va) if kind == "label" else (rows_tr[:0], rows_va[:0])
        feature_tr, feature_va = (rows_tr, rows_va) if kind == "feature" else (rows_tr[:0], rows_va[:0])

    if kind in ("feature", "mixed"):
        noise_tr = rs.normal(0.0, scale, size=(len(feature_tr), *x_tr.shape[1:]))
        noise_va = rs.normal(0.0, scale, size=(len(feature_va), *x_va.shape[1:]))
        x_tr[feature_tr] += noise_tr
        x_va[feature_va] += noise_va
    if kind in ("label", "mixed"):
        # Both parts' label sets are read before either part changes, as in mix_labels.
        space_tr = _label_space(y_tr, split.task, None, "y_train")
        space_va = _label_space(y_va, split.task, None, "y_valid")
        for y, rows, (labels, position), name in ((y_tr, label_tr, space_tr, "y_train"),
                                                  (y_va, label_va, space_va, "y_valid")):
            if len(labels) < 2 and len(rows) > 0:
                raise ValueError(f"label noise needs at least 2 distinct values in {name}, found {len(labels)}")
        shift_tr = _shifts(rs, len(space_tr[0]), len(label_tr))
        shift_va = _shifts(rs, len(space_va[0]), len(label_va))
        y_tr[label_tr] = space_tr[0][(space_tr[1][label_tr] + shift_tr) % len(space_tr[0])]
        y_va[label_va] = space_va[0][(space_va[1][label_va] + shift_va) % len(space_va[0])]

    noisy = dataclasses.replace(split, x_train=x_tr, y_train=y_tr, x_valid=x_va, y_valid=y_va)
    return noisy, _mask(n_tr, rows_tr), _mask(n_va, rows_va)
