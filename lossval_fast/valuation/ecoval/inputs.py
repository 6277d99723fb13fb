"""EcoVal's input checks: the constructor's options, the task rules of the learner and metric, and the data arrays
(``prepare``: labels coded, targets checked, features standardised as the built-in learners see them)."""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import warnings

import numpy as np
import torch

from .. import checks as _checks
from .. import learners as _learners
from ...base import NotFittedError, resolve_task  # noqa: F401 (EcoVal's error, re-exported)

TASKS = ("auto", "classification", "regression")
BUILTIN_LEARNERS = tuple(_learners.LEARNERS)
CLUSTER_VALUES = ("pairwise_shapley", "cobb_douglas")
INTRINSICS = ("lco_knn", "lco_proba", "knn_agreement", "uniform")
PROPAGATIONS = ("additive", "multiplicative")
EFFICIENCIES = (None, "global")
METRICS = ("log_likelihood", "accuracy", "expected_accuracy", "r2")
BACKENDS = ("auto", "batched", "loop")


class EcoValWarning(UserWarning):
    """An adjustment EcoVal made on its own (p raised, clusters dropped, efficiency skipped, ...)."""


# the array checks live in valuation/checks.py (shared with the reference Shapley values)
_numpy, _features, _targets = _checks.array, _checks.features, _checks.targets
CHUNK_ELEMENTS, _row_chunks = _checks.CHUNK_ELEMENTS, _checks.row_chunks


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ options
def check_params(est) -> None:
    """The constructor's options of an EcoVal, each with the error that names it."""
    if not _is_int(est.n_clusters):
        raise ValueError(f"n_clusters must be an int >= 2, got {est.n_clusters!r}")
    if est.n_clusters < 2:
        raise ValueError(f"n_clusters must be >= 2, got {est.n_clusters}")
    if est.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {est.task!r}")
    if not (est.pairs == "all" or _is_int(est.pairs)):
        raise ValueError(f"pairs must be 'all' or an int >= 0, got {est.pairs!r}")
    if _is_int(est.pairs) and est.pairs < 0:
        raise ValueError(f"pairs must be 'all' or an int >= 0, got {est.pairs}")
    if not _is_int(est.n_repeats) or est.n_repeats < 1:
        raise ValueError(f"n_repeats must be an int >= 1, got {est.n_repeats!r}")
    if not _is_real(est.lam) or est.lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {est.lam!r}")
    if est.cluster_value not in CLUSTER_VALUES:
        raise ValueError(f"cluster_value must be one of {CLUSTER_VALUES}, got {est.cluster_value!r}")
    if est.propagation not in PROPAGATIONS:
        raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {est.propagation!r}")
    if not (est.intrinsic is None or est.intrinsic in INTRINSICS):
        raise ValueError(f"intrinsic must be None or one of {INTRINSICS}, got {est.intrinsic!r}")
    if est.intrinsic == "lco_knn" and est.propagation == "multiplicative":
        raise ValueError("intrinsic='lco_knn' is for propagation='additive'; the multiplicative rule takes "
                         "'lco_proba', 'knn_agreement' or 'uniform'")
    if not _is_real(est.intrinsic_weight) or est.intrinsic_weight < 0:
        raise ValueError(f"intrinsic_weight must be a finite number >= 0, got {est.intrinsic_weight!r}")
    if not _is_real(est.relevance_weight) or est.relevance_weight < 0:
        raise ValueError(f"relevance_weight must be a finite number >= 0, got {est.relevance_weight!r}")
    if est.evidence_margin is not None and (not _is_real(est.evidence_margin) or est.evidence_margin < 0):
        raise ValueError(f"evidence_margin must be a finite number >= 0 (nats), got {est.evidence_margin!r}")
    if not isinstance(est.shrinkage, (bool, np.bool_)):
        raise ValueError(f"shrinkage must be True or False, got {est.shrinkage!r}")
    if not _is_int(est.knn_reference) or est.knn_reference < 2:
        raise ValueError(f"knn_reference must be an int >= 2 (training rows searched for neighbours), got "
                         f"{est.knn_reference!r}")
    if not _is_real(est.gamma) or est.gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {est.gamma!r}")
    if not _is_real(est.eps) or not 0 < est.eps < 1:
        raise ValueError(f"eps must be in the open interval (0, 1), got {est.eps!r}")
    if not _is_int(est.knn_k) or est.knn_k < 1:
        raise ValueError(f"knn_k must be an int >= 1, got {est.knn_k!r}")
    if est.efficiency not in EFFICIENCIES:
        raise ValueError(f"efficiency must be None or 'global', got {est.efficiency!r}")
    if not (est.metric is None or callable(est.metric) or est.metric in METRICS):
        raise ValueError(f"metric must be None, one of {METRICS} or a callable metric(y_true, proba_or_pred), "
                         f"got {est.metric!r}")
    if not _is_int(est.n_init) or est.n_init < 1:
        raise ValueError(f"n_init must be an int >= 1, got {est.n_init!r}")
    if est.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {est.backend!r}")
    if est.max_models_per_batch is not None and (not _is_int(est.max_models_per_batch)
                                                 or est.max_models_per_batch < 1):
        raise ValueError(f"max_models_per_batch must be None or an int >= 1, got {est.max_models_per_batch!r}")
    if not _is_int(est.n_jobs) or est.n_jobs == 0:
        raise ValueError(f"n_jobs must be a nonzero int (-1: all cores), got {est.n_jobs!r}")
    if not (est.random_state is None or (_is_int(est.random_state) and est.random_state >= 0)):
        raise ValueError(f"random_state must be None or an int >= 0, got {est.random_state!r}")
    if est.embed is not None and not callable(est.embed):
        raise ValueError(f"embed must be None or a callable X -> Z, got {type(est.embed).__name__}")
    if isinstance(est.learner, str):
        if est.learner not in BUILTIN_LEARNERS:
            raise ValueError(f"learner must be None, one of {BUILTIN_LEARNERS} or an object with fit and "
                             f"predict_proba/predict, got {est.learner!r}")
    elif est.learner is not None and not callable(getattr(est.learner, "fit", None)):
        raise TypeError(f"learner must have a fit method, got {type(est.learner).__name__} without one")


def resolve_intrinsic(est) -> str:
    """intrinsic=None: 'lco_knn' (additive propagation) or 'lco_proba' (multiplicative)."""
    if est.intrinsic is not None:
        return est.intrinsic
    return "lco_knn" if est.propagation == "additive" else "lco_proba"


def classification_evidence_margin(n_classes: int) -> float:
    """The default margin in nats, (1/4) log2 C: 0.25 for two classes, 0.83 for ten (docs/ecoval.md §4.1, §7.2).
    It grows with C because so does the evidence a clean label meets: a ten-class linear expert spreads its
    probability over more rivals, and the clean points next to a boundary meet more of them."""
    return 0.25 * math.log2(n_classes)


def resolve_evidence_margin(est, classification: bool, n_classes: int) -> float:
    """evidence_margin=None: (1/4) log2 C nats in classification, 0 in regression (where a margin only lost
    detection)."""
    if est.evidence_margin is not None:
        return float(est.evidence_margin)
    return classification_evidence_margin(n_classes) if classification else 0.0


def _or(names) -> str:
    return " or ".join(repr(name) for name in names)


def check_task_params(est, classification: bool):
    """The options that depend on the task; -> the built-in learner's registry entry, or None for an object."""
    if classification:
        if est.metric == "r2":
            raise ValueError("metric='r2' is for regression; classification takes 'log_likelihood', "
                             "'accuracy', 'expected_accuracy' or a callable")
    else:
        if est.cluster_value == "cobb_douglas":
            raise ValueError("cluster_value='cobb_douglas' (Variant B) is for classification; regression takes "
                             "cluster_value='pairwise_shapley'")
        if est.intrinsic == "knn_agreement" and est.propagation == "multiplicative":
            raise ValueError("intrinsic='knn_agreement' with propagation='multiplicative' is for classification; "
                             "regression takes 'lco_proba' (LCO residuals) or 'uniform'")
        if est.metric in ("log_likelihood", "accuracy", "expected_accuracy"):
            raise ValueError(f"metric={est.metric!r} is for classification; regression takes 'r2' or a "
                             "callable")
    task = "classification" if classification else "regression"
    learner = est.learner
    if isinstance(learner, str) or learner is None:
        entry = _learners.LEARNERS[learner or _learners.DEFAULT_LEARNERS[task]]
        if task not in entry.tasks:
            other = "regression" if classification else "classification"
            fits = [name for name, e in _learners.LEARNERS.items() if task in e.tasks]
            raise ValueError(f"learner={entry.name!r} is for {other}; {task} takes {_or(fits)}")
        return entry
    method = "predict_proba" if classification else "predict"
    if not callable(getattr(learner, method, None)):
        raise TypeError(f"learner must have a {method} method for {task}, got {type(learner).__name__} without one")
    if est.backend == "batched":
        raise ValueError(f"backend='batched' needs a built-in learner ({', '.join(map(repr, BUILTIN_LEARNERS))}); "
                         f"a learner object ({type(learner).__name__}) runs on backend='loop'")
    return None


# ------------------------------------------------------------------------------------------------ data
def _column_sums(X, mu=None) -> np.ndarray:
    """sum_k X[k] (or sum_k (X[k] - mu)^2) in float64, row after row in order: numpy's own order for a C-ordered
    float64 array's sum over axis 0, so the moments equal X.astype(float64).mean(0) / .std(0) bit for bit, without
    a float64 copy of X."""
    total = None
    for lo, hi in _row_chunks(*X.shape):
        part = X[lo:hi].astype(np.float64)
        if mu is not None:
            part -= mu
            part *= part
        if total is not None:
            part = np.concatenate([total[None], part])
        total = np.add.reduce(part, axis=0)
    return total


@dataclasses.dataclass
class Data:
    """The checked data of one fit. X as given when float32 or float64 (else a float64 copy): EcoVal keeps no
    float64 copy of it; standardized() computes the built-in learners' features (X - mu) / sigma (rows or all)
    from it, bit for bit the same every time. Classification: classes (sorted), y_code (n,) codes (int8 below 128
    classes), y_val_code (m,) codes (-1: a label absent from y), C classes. Regression: y, y_val float64, C = 1, and the learners see the
    targets (y - y_mu) / y_sigma."""

    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    classification: bool
    classes: np.ndarray | None = None
    y_code: np.ndarray | None = None
    y_val_code: np.ndarray | None = None
    C: int = 1
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    y_mu: float = 0.0
    y_sigma: float = 1.0
    Xs_val: np.ndarray | None = None

    @property
    def task(self) -> str:
        return "classification" if self.classification else "regression"

    def standardize(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mu) / self.sigma

    def raw(self, rows=None) -> np.ndarray:
        """X (or its rows) in float64, what learner objects and embed see."""
        return np.asarray(self.X if rows is None else self.X[rows], dtype=np.float64)

    def standardized(self, rows=None, dtype=np.float64, extra=None) -> np.ndarray:
        """(X - mu) / sigma of the rows (None: all), computed in row chunks (no temporary of the result's size),
        cast to dtype; extra (n,): one more column (all rows only)."""
        d = self.X.shape[1]
        if rows is not None:
            rows = np.asarray(rows)
            rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        m = self.X.shape[0] if rows is None else len(rows)
        out = np.empty((m, d + (extra is not None)), dtype=dtype)
        for lo, hi in _row_chunks(m, d):
            block = self.X[lo:hi] if rows is None else self.X[rows[lo:hi]]
            if out.dtype == np.float64:   # in place: (block - mu) / sigma in float64, no chunk-sized temporaries
                part = out[lo:hi, :d]
                np.subtract(block, self.mu, out=part)   # a float32 block is cast to float64 first: the same bits
                np.divide(part, self.sigma, out=part)
            else:
                out[lo:hi, :d] = self.standardize(block.astype(np.float64))
        if extra is not None:
            out[:, d] = extra
        return out

    def targets(self) -> np.ndarray:
        """What the built-in learners fit: class codes, or standardised targets."""
        return self.y_code if self.classification else (self.y - self.y_mu) / self.y_sigma


def load_path(a):
    """A path of a .npy file loaded whole (EcoVal holds its data in memory; no pickled objects), anything else as
    given."""
    if isinstance(a, (str, os.PathLike)):
        return np.load(a, allow_pickle=False)
    return a


def check_data(X, y, X_val, y_val, task) -> Data:
    """Shapes, dtypes and finiteness of the four arrays, and the task ("auto": the package's rule,
    lossval_fast.base.infer_task)."""
    X = _features(X, "X", keep_float=True)
    n, d = X.shape
    y = _targets(y, "y", n, "X")
    if _numpy(X_val, "X_val").ndim == 2 and _numpy(X_val, "X_val").shape[0] == 0:
        raise ValueError("X_val is empty: the validation set must hold at least one row")
    X_val = _features(X_val, "X_val", d)
    y_val = _targets(y_val, "y_val", X_val.shape[0], "X_val")
    classification = resolve_task(task, y) == "classification"
    return Data(X, y, X_val, y_val, classification)


def prepare(data: Data, metric) -> Data:
    """Labels coded (classification) or targets checked (regression), and the standardisation."""
    y, y_val = data.y, data.y_val
    if data.classification:
        data.classes = np.unique(y)
        if len(data.classes) < 2:
            raise ValueError(f"y holds only one class ({data.classes[0]!r}); EcoVal needs at least 2 classes")
        # the codes in the smallest integer type that holds them (1 byte a point for < 128 classes, not 8)
        data.y_code = np.searchsorted(data.classes, y).astype(np.min_scalar_type(-len(data.classes)))
        known = np.isin(y_val, data.classes)
        if not known.all():
            absent = np.unique(y_val[~known])
            warnings.warn(f"y_val holds label(s) {absent.tolist()} absent from y: no model can predict them "
                          "(probability 0 for every subset)", EcoValWarning, stacklevel=3)
        data.y_val_code = np.where(known, np.searchsorted(data.classes, y_val).clip(0, len(data.classes) - 1), -1)
        data.C = len(data.classes)
    else:
        y, y_val = _checks.regression_targets(y, y_val)
        data.y, data.y_val = y, y_val
        if metric == "r2" and float(np.sum((y_val - y_val.mean()) ** 2)) == 0.0:
            raise ValueError("y_val is constant: R^2 is undefined; pass a callable metric")
    n = data.X.shape[0]
    data.mu = _column_sums(data.X) / n
    std = np.sqrt(_column_sums(data.X, data.mu) / n)
    data.sigma = np.where(std > 0, std, 1.0)
    if not data.classification:
        data.y_mu = float(y.mean())
        sd = float(y.std())
        data.y_sigma = sd if sd > 0 else 1.0
    data.Xs_val = data.standardize(data.X_val)
    return data
