"""EcoVal (Tarun et al., KDD 2024, arXiv 2402.09288) in the testable formulation EcoVal-R of
shared/docs/ECOVAL_SPEC.md: value clusters of similar points with leave-cluster-out (LCO) and pair-removal
trainings, then hand each cluster's value to its members by a production-function share.

    U(S)   learner trained on the clusters S, scored on the validation set (log-likelihood / R^2 by default)
    a_i  = U(N) - U(N\\{i})                       lco_
    e_ij = U(N) - U(N\\{i,j}) - a_i - a_j         interactions_
    V_i  = a_i + lam * 1/2 sum_j e_ij             (Variant A; Variant B fits a Cobb-Douglas g = log A + sum b_i s_i)
    phi_k = Gamma_beta * V_c(k) * w_k,   w_k = s_k / sum_{l in C_c(k)} s_l,   s_k = max(g_k, eps)^gamma

with g_k the agreement of the models trained without k's cluster. All R (1 + p + |P|) subset models are trained as
one batched model for the built-in learners (lossval_fast.valuation.learners), or one by one for any
scikit-learn-style learner.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import itertools
import math
import numbers
import os
import sys
import time
import warnings
from fractions import Fraction

import numpy as np
import torch

from .. import ops
from ..ops.memory import default_memory_budget
from . import learners as _learners

__all__ = ["EcoVal", "NotFittedError", "EcoValWarning", "cluster_quotas"]

TASKS = ("auto", "classification", "regression")
BUILTIN_LEARNERS = ("logreg", "ridge", "mlp")
# The built-in "logreg" solver, the same on both paths so that batched = loop. L-BFGS: two GEMMs per iteration over
# all subset models instead of a per-model O(n d^2 C^2) Hessian, and its tolerance (1e-8) lands closer to the
# optimum than Newton's 1e-6 stop; "newton" (learners.LogReg / BatchedLogReg) is the alternative.
LOGREG_SOLVER = "lbfgs"
CLUSTER_VALUES = ("pairwise_shapley", "cobb_douglas")
INTRINSICS = ("lco_proba", "knn_agreement", "uniform")
EFFICIENCIES = (None, "global")
METRICS = ("log_likelihood", "accuracy", "expected_accuracy", "r2")
BACKENDS = ("auto", "batched", "loop")
LOG_FLOOR = 1e-12      # log-likelihood floor, mean_v log max(p, 1e-12)
CLIP = 1e-6            # Variant B: U <= 0 of a positive metric is clipped here before the log


class NotFittedError(ValueError, AttributeError):
    """value() before fit(); a ValueError and an AttributeError, like scikit-learn's."""


class EcoValWarning(UserWarning):
    """An adjustment EcoVal made on its own (p raised, clusters dropped, efficiency skipped, ...)."""


# ------------------------------------------------------------------------------------------------ input checks
def _numpy(value, name):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be array-like (numpy array, torch tensor or sequence), got "
                         f"{type(value).__name__}") from error


def _features(value, name, d=None) -> np.ndarray:
    X = _numpy(value, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (points x features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape}); expected at least one row")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name} must have {d} features like X, got shape {X.shape}")
    try:
        X = X.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}") from error
    bad = int(np.count_nonzero(~np.isfinite(X)))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or inf value(s); expected finite numbers")
    return X


def _targets(value, name, rows, xname) -> np.ndarray:
    y = _numpy(value, name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != rows:
        raise ValueError(f"{name} must have one entry per row of {xname}: expected shape ({rows},), got {y.shape}")
    if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains {int(np.count_nonzero(~np.isfinite(y)))} NaN or inf value(s); expected "
                         "finite numbers")
    return y


def _is_regression_target(y: np.ndarray) -> bool:
    """task='auto': a float y with a non-integer value means regression."""
    return y.dtype.kind == "f" and not np.array_equal(y, np.round(y))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def cluster_quotas(p: int, counts) -> list[int]:
    """Per-class cluster counts p_c (ECOVAL_SPEC §2.1) for p >= 2 * #classes: p_c = max(2, floor(p n_c / n + 1/2)),
    then decrement the largest p_c > 2 (ties: larger n_c, then smaller label) while the sum exceeds p, and
    increment the largest n_c / p_c (ties: smaller label) while it falls short."""
    counts = [int(c) for c in counts]
    n = sum(counts)
    quotas = [max(2, (2 * p * c + n) // (2 * n)) for c in counts]   # floor(p c / n + 1/2) in integers
    while sum(quotas) > p:
        c = max((k for k in range(len(counts)) if quotas[k] > 2), key=lambda k: (quotas[k], counts[k], -k))
        quotas[c] -= 1
    while sum(quotas) < p:
        c = max(range(len(counts)), key=lambda k: (Fraction(counts[k], quotas[k]), -k))
        quotas[c] += 1
    return quotas


def _mean_rows(table: np.ndarray) -> np.ndarray:
    """Mean over the first axis, summed in order (the same bits for in-sample and out-of-sample uses)."""
    total = table[0].copy()
    for row in table[1:]:
        total = total + row
    return total / table.shape[0]


def _scores(g: np.ndarray, eps: float, gamma: float, negative) -> np.ndarray:
    """s = max(g, eps)^gamma, or max(1 - g, eps)^gamma where the cluster value is negative (math.pow per point,
    so that a point scores the same bits in fit and in value)."""
    negative = np.broadcast_to(np.asarray(negative, dtype=bool), g.shape)
    return np.array([math.pow(max(1.0 - v, eps), gamma) if neg else math.pow(max(v, eps), gamma)
                     for v, neg in zip(g.tolist(), negative.tolist())], dtype=np.float64)


def _seed(*words) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes() if a.dtype.kind != "O" else repr(a.tolist()).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ utilities
class _Utility:
    """U on the validation set from class probabilities (m, C) or predictions (m,)."""

    def __init__(self, metric, classification, y_val, y_val_code=None):
        self.metric, self.classification = metric, classification
        self.y_val, self.code = y_val, y_val_code
        if classification:
            self.known = y_val_code >= 0
            self.index = np.where(self.known, y_val_code, 0)
        else:
            ss = float(np.sum((y_val - y_val.mean()) ** 2))
            self.ss_tot = ss

    def true_proba(self, proba: np.ndarray) -> np.ndarray:
        return np.where(self.known, proba[np.arange(len(self.index)), self.index], 0.0)

    def __call__(self, out: np.ndarray) -> float:
        out = np.asarray(out, dtype=np.float64)
        if callable(self.metric):
            return float(self.metric(self.y_val, out))
        if self.metric == "r2":
            return 1.0 - float(np.sum((self.y_val - out) ** 2)) / self.ss_tot
        if self.metric == "accuracy":
            return float(np.mean(self.known & (out.argmax(1) == self.index)))
        p = self.true_proba(out)
        if self.metric == "expected_accuracy":
            return float(np.mean(p))
        return float(np.mean(np.log(np.maximum(p, LOG_FLOOR))))

    def batch(self, out: torch.Tensor) -> np.ndarray:
        """(T, m, C) probabilities or (T, m) predictions -> (T,)."""
        if callable(self.metric):
            return np.array([self(o) for o in out.double().cpu().numpy()])
        out = out.double()
        if self.metric == "r2":
            y = torch.as_tensor(self.y_val, dtype=torch.float64, device=out.device)
            return (1.0 - ((y - out) ** 2).sum(1) / self.ss_tot).cpu().numpy()
        known = torch.as_tensor(self.known, device=out.device)
        index = torch.as_tensor(self.index, device=out.device)
        if self.metric == "accuracy":
            return ((out.argmax(2) == index) & known).double().mean(1).cpu().numpy()
        p = torch.where(known, out.gather(2, index[None, :, None].expand(out.shape[0], -1, 1))[..., 0], 0.0)
        if self.metric == "expected_accuracy":
            return p.mean(1).cpu().numpy()
        return torch.log(p.clamp(min=LOG_FLOOR)).mean(1).cpu().numpy()


# ------------------------------------------------------------------------------------------------ estimator
class EcoVal:
    """EcoVal-R data valuation (shared/docs/ECOVAL_SPEC.md), scikit-learn style.

    Parameters
    ----------
    n_clusters : p, the number of clusters (>= 2 * #classes when stratified; raised with a warning otherwise).
    learner : None (built-in "logreg" for classification, "ridge" for regression), "logreg", "ridge", "mlp", or any
        object with ``fit`` and ``predict_proba`` (regression: ``predict``), cloned per subset (loop path).
        Built-in learners see X standardised with D's mean and std (and, in regression, y standardised alike);
        objects see X and y as given. "logreg" is solved by L-BFGS to ||grad||_inf <= 1e-8 on both paths
        (module constant LOGREG_SOLVER; "newton" stops at 1e-6).
    task : "auto" (a float y with a non-integer value means regression), "classification" or "regression".
    stratify_by_label : label-pure clusters with per-class quotas (classification).
    embed : None (cluster standardised X) or a callable X -> Z (n, d_z) for the clustering and the kNN space.
    pairs : "all", an int m (m partners per cluster, drawn without replacement, deduplicated) or 0.
    n_repeats : R; repeat r uses seed_r for every subset model (common random numbers).
    lam : weight of the pair interactions (0 gives LCO).
    cluster_value : "pairwise_shapley" (Variant A) or "cobb_douglas" (Variant B, classification).
    intrinsic : "lco_proba", "knn_agreement" (classification) or "uniform"; regression uses the LCO residuals.
    gamma, eps : scores s = max(g, eps)^gamma.   knn_k : neighbours for "knn_agreement".
    efficiency : None or "global" (Variant A: rescale so that sum of cluster values = U(N) - u0).
    metric : None (log-likelihood / R^2), "accuracy", "expected_accuracy", "log_likelihood", "r2", or a callable
        metric(y_true, proba_or_pred) -> float (y_true as given; proba columns in the order of classes_).
    keep_models : keep the R*p LCO models for value() (else refit once per cluster value() needs).
    n_init : k-means restarts (lowest inertia kept).
    backend : "auto" (batched for built-in learners, loop for objects), "batched" or "loop" (built-in learners
        then run their single-model versions one subset at a time).
    device : None (CUDA if available) or a device for the batched trainers; clustering runs on the CPU.
    max_models_per_batch : models trained at once (default: from the memory budget). Results do not depend on it.
    n_jobs : parallel fits on the loop path (threads; -1: one per core).
    checkpoint : path; finished utilities (and the LCO models) are saved there atomically, so a killed fit resumes
        without retraining them. A fit with another configuration or data set refuses the file.
    random_state : int or None (seeds k-means, pair sampling and the repeats).
    verbose : progress bar over subset trainings (only on a terminal).

    Attributes (after fit)
    ----------------------
    values_, cluster_labels_, centroids_, lco_, extrinsic_, interactions_, cluster_values_, beta_star_,
    intrinsic_, weights_, utility_full_, u0_, gamma_beta_star_, n_trainings_ (fits run by this call), classes_,
    backend_ (path and device); also n_clusters_, pairs_ (|P|, 2), subsets_ (S, p) removal masks, utilities_
    (R, S), agreement_ (n,) g, converged_ (all built-in fits reached their tolerance), random_state_, task_,
    metric_, timings_ (seconds: clustering, trainings, values).
    """

    _checkpoint_interval = 2.0   # seconds between checkpoint writes on the loop path (always on exit, too)
    _ranks = None  # set by lossval_fast.distributed.fit: this rank's share of the trainings, and their merge

    def __init__(self, n_clusters=20, learner=None, *, task="auto", stratify_by_label=True, embed=None, pairs="all",
                 n_repeats=1, lam=1.0, cluster_value="pairwise_shapley", intrinsic="lco_proba", gamma=1.0, eps=1e-3,
                 knn_k=10, efficiency=None, metric=None, keep_models=True, n_init=10, backend="auto", device=None,
                 max_models_per_batch=None, n_jobs=1, checkpoint=None, random_state=0, verbose=True):
        self.n_clusters = n_clusters
        self.learner = learner
        self.task = task
        self.stratify_by_label = stratify_by_label
        self.embed = embed
        self.pairs = pairs
        self.n_repeats = n_repeats
        self.lam = lam
        self.cluster_value = cluster_value
        self.intrinsic = intrinsic
        self.gamma = gamma
        self.eps = eps
        self.knn_k = knn_k
        self.efficiency = efficiency
        self.metric = metric
        self.keep_models = keep_models
        self.n_init = n_init
        self.backend = backend
        self.device = device
        self.max_models_per_batch = max_models_per_batch
        self.n_jobs = n_jobs
        self.checkpoint = checkpoint
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------ validation
    def _check_params(self):
        if not _is_int(self.n_clusters):
            raise ValueError(f"n_clusters must be an int >= 2, got {self.n_clusters!r}")
        if self.n_clusters < 2:
            raise ValueError(f"n_clusters must be >= 2, got {self.n_clusters}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not (self.pairs == "all" or _is_int(self.pairs)):
            raise ValueError(f"pairs must be 'all' or an int >= 0, got {self.pairs!r}")
        if _is_int(self.pairs) and self.pairs < 0:
            raise ValueError(f"pairs must be 'all' or an int >= 0, got {self.pairs}")
        if not _is_int(self.n_repeats) or self.n_repeats < 1:
            raise ValueError(f"n_repeats must be an int >= 1, got {self.n_repeats!r}")
        if not _is_real(self.lam) or self.lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam!r}")
        if self.cluster_value not in CLUSTER_VALUES:
            raise ValueError(f"cluster_value must be one of {CLUSTER_VALUES}, got {self.cluster_value!r}")
        if self.intrinsic not in INTRINSICS:
            raise ValueError(f"intrinsic must be one of {INTRINSICS}, got {self.intrinsic!r}")
        if not _is_real(self.gamma) or self.gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma!r}")
        if not _is_real(self.eps) or not 0 < self.eps < 1:
            raise ValueError(f"eps must be in the open interval (0, 1), got {self.eps!r}")
        if not _is_int(self.knn_k) or self.knn_k < 1:
            raise ValueError(f"knn_k must be an int >= 1, got {self.knn_k!r}")
        if self.efficiency not in EFFICIENCIES:
            raise ValueError(f"efficiency must be None or 'global', got {self.efficiency!r}")
        if not (self.metric is None or callable(self.metric) or self.metric in METRICS):
            raise ValueError(f"metric must be None, one of {METRICS} or a callable metric(y_true, proba_or_pred), "
                             f"got {self.metric!r}")
        if not _is_int(self.n_init) or self.n_init < 1:
            raise ValueError(f"n_init must be an int >= 1, got {self.n_init!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.max_models_per_batch is not None and (not _is_int(self.max_models_per_batch)
                                                      or self.max_models_per_batch < 1):
            raise ValueError(f"max_models_per_batch must be None or an int >= 1, got {self.max_models_per_batch!r}")
        if not _is_int(self.n_jobs) or self.n_jobs == 0:
            raise ValueError(f"n_jobs must be a nonzero int (-1: all cores), got {self.n_jobs!r}")
        if not (self.random_state is None or (_is_int(self.random_state) and self.random_state >= 0)):
            raise ValueError(f"random_state must be None or an int >= 0, got {self.random_state!r}")
        if self.embed is not None and not callable(self.embed):
            raise ValueError(f"embed must be None or a callable X -> Z, got {type(self.embed).__name__}")
        if isinstance(self.learner, str):
            if self.learner not in BUILTIN_LEARNERS:
                raise ValueError(f"learner must be None, one of {BUILTIN_LEARNERS} or an object with fit and "
                                 f"predict_proba/predict, got {self.learner!r}")
        elif self.learner is not None and not callable(getattr(self.learner, "fit", None)):
            raise TypeError(f"learner must have a fit method, got {type(self.learner).__name__} without one")

    def _check_task_params(self, classification: bool):
        if classification:
            if self.metric == "r2":
                raise ValueError("metric='r2' is for regression; classification takes 'log_likelihood', "
                                 "'accuracy', 'expected_accuracy' or a callable")
        else:
            if self.cluster_value == "cobb_douglas":
                raise ValueError("cluster_value='cobb_douglas' (Variant B) is for classification; regression takes "
                                 "cluster_value='pairwise_shapley'")
            if self.intrinsic == "knn_agreement":
                raise ValueError("intrinsic='knn_agreement' is for classification; regression takes 'lco_proba' "
                                 "(LCO residuals) or 'uniform'")
            if self.metric in ("log_likelihood", "accuracy", "expected_accuracy"):
                raise ValueError(f"metric={self.metric!r} is for classification; regression takes 'r2' or a "
                                 "callable")
        learner = self.learner
        if isinstance(learner, str) or learner is None:
            kind = learner or ("logreg" if classification else "ridge")
            if kind == "logreg" and not classification:
                raise ValueError("learner='logreg' is for classification; regression takes 'ridge' or 'mlp'")
            if kind == "ridge" and classification:
                raise ValueError("learner='ridge' is for regression; classification takes 'logreg' or 'mlp'")
            return kind
        method = "predict_proba" if classification else "predict"
        if not callable(getattr(learner, method, None)):
            raise TypeError(f"learner must have a {method} method for "
                            f"{'classification' if classification else 'regression'}, got "
                            f"{type(learner).__name__} without one")
        if self.backend == "batched":
            raise ValueError("backend='batched' needs a built-in learner ('logreg', 'ridge', 'mlp'); a learner "
                             f"object ({type(learner).__name__}) runs on backend='loop'")
        return None

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, X, y, X_val, y_val, cluster_labels=None) -> "EcoVal":
        """Value the training points. X (n, d), y (n,) labels or float targets, X_val (m, d), y_val (m,);
        cluster_labels (n,) fixes the clusters (ids of any kind; numbered in sorted order)."""
        self._check_params()
        X = _features(X, "X")
        n, d = X.shape
        y = _targets(y, "y", n, "X")
        if _numpy(X_val, "X_val").ndim == 2 and _numpy(X_val, "X_val").shape[0] == 0:
            raise ValueError("X_val is empty: the validation set must hold at least one row")
        X_val = _features(X_val, "X_val", d)
        y_val = _targets(y_val, "y_val", X_val.shape[0], "X_val")
        if self.task == "auto":
            classification = not _is_regression_target(y)
        else:
            classification = self.task == "classification"
        kind = self._check_task_params(classification)
        self.task_ = "classification" if classification else "regression"
        self.metric_ = self.metric if self.metric is not None else ("log_likelihood" if classification else "r2")
        self.random_state_ = (self.random_state if self.random_state is not None
                              else int(np.random.SeedSequence().entropy % (2**63)))

        if classification:
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(f"y holds only one class ({self.classes_[0]!r}); EcoVal needs at least 2 classes")
            y_code = np.searchsorted(self.classes_, y)
            known = np.isin(y_val, self.classes_)
            if not known.all():
                absent = np.unique(y_val[~known])
                warnings.warn(f"y_val holds label(s) {absent.tolist()} absent from y: no model can predict them "
                              "(probability 0 for every subset)", EcoValWarning, stacklevel=2)
            y_val_code = np.where(known, np.searchsorted(self.classes_, y_val).clip(0, len(self.classes_) - 1), -1)
            C = len(self.classes_)
        else:
            self.classes_ = None
            try:
                y, y_val = y.astype(np.float64), y_val.astype(np.float64)
            except (TypeError, ValueError) as error:
                raise ValueError(f"regression targets must be numeric, got dtypes {y.dtype} and {y_val.dtype}") \
                    from error
            if not (np.all(np.isfinite(y)) and np.all(np.isfinite(y_val))):
                raise ValueError("y and y_val must be finite for regression")
            y_code = y_val_code = None
            C = 1
            if self.metric_ == "r2" and float(np.sum((y_val - y_val.mean()) ** 2)) == 0.0:
                raise ValueError("y_val is constant: R^2 is undefined; pass a callable metric")
        self._utility = _Utility(self.metric_, classification, y_val, y_val_code)

        # standardised features (what the built-in learners see and, without embed, the clustering space)
        self._mu = X.mean(0)
        std = X.std(0)
        self._sigma = np.where(std > 0, std, 1.0)
        Xs = (X - self._mu) / self._sigma
        if classification:
            self._y_mu, self._y_sigma = 0.0, 1.0
        else:
            self._y_mu = float(y.mean())
            sd = float(y.std())
            self._y_sigma = sd if sd > 0 else 1.0
        Z = self._embed(X, Xs, "X")
        if not classification:
            Z = np.concatenate([Z, ((y - self._y_mu) / self._y_sigma)[:, None]], 1)

        # clusters
        began = time.perf_counter()
        if cluster_labels is not None:
            labels, centroids = self._fixed_clusters(cluster_labels, Z, n)
        else:
            if self.n_clusters > n:
                raise ValueError(f"n_clusters must be <= the number of training points ({n}), got {self.n_clusters}")
            labels, centroids = self._kmeans(Z, y_code if classification else None, C, n)
        p = centroids.shape[0]
        self.cluster_labels_, self.centroids_, self.n_clusters_ = labels, centroids, p
        self.timings_ = {"clustering": time.perf_counter() - began}
        members = [np.flatnonzero(labels == i) for i in range(p)]
        if classification:
            self._cluster_classes = np.zeros((p, C), dtype=bool)
            self._cluster_classes[labels, y_code] = True
        self._stratified = bool(classification and self.stratify_by_label)

        # subsets: full, LCO, pairs (the same P in every repeat)
        pair_list = self._pair_list(p)
        self.pairs_ = np.array(pair_list, dtype=np.int64).reshape(-1, 2)
        S = 1 + p + len(pair_list)
        removed = np.zeros((S, p), dtype=bool)
        removed[1 + np.arange(p), np.arange(p)] = True
        for q, (i, j) in enumerate(pair_list):
            removed[1 + p + q, [i, j]] = True
        self.subsets_ = removed
        if classification:
            kept_classes = (~removed).astype(np.int64) @ self._cluster_classes.astype(np.int64)
            skip = (kept_classes > 0).sum(1) < 2
        else:
            skip = np.array([not (~r).any() for r in removed])
        R = self.n_repeats
        self._seeds = [_seed(self.random_state_, 2, r) for r in range(R)]

        # u0: the constant predictor of the training class frequencies (regression: 0, or the metric of the mean)
        if classification:
            self._freq = np.bincount(y_code, minlength=C) / n
            self.u0_ = self._utility(np.tile(self._freq, (X_val.shape[0], 1)))
        else:
            self._freq = None
            self.u0_ = 0.0 if self.metric_ == "r2" else self._utility(np.full(X_val.shape[0], y.mean()))

        # training data for the learners (kept for value() and refits)
        self._kind = kind
        self._path = "batched" if kind is not None and self.backend != "loop" else "loop"
        self._X, self._Xs, self._y, self._y_code = X, Xs, y, y_code
        self._X_val, self._Xs_val = X_val, (X_val - self._mu) / self._sigma
        self._Z, self._members, self._C = Z, members, C
        self._device = self._resolve_device()
        self._trainer = None

        began = time.perf_counter()
        state = self._load_checkpoint(R, S, n, p)
        if self._ranks is not None:  # every rank has read the same files before any writes its own
            self._ranks.barrier()
        self.n_trainings_ = 0
        self.converged_ = True
        try:
            if self._path == "batched":
                self._train_batched(state, removed, skip)
            else:
                self._train_loop(state, removed, skip)
        finally:
            self._save_checkpoint(state, force=True)
        if self._ranks is not None:  # every rank's trainings, on every rank (collective)
            state = self._ranks.merge(self, state)
        self.timings_["trainings"] = time.perf_counter() - began
        began = time.perf_counter()
        self.utilities_ = np.where(skip[None, :], self.u0_, state["U"])
        self._lco_models = state["models"] if self.keep_models else {}
        self._lco_cache = {}
        heldout = state["heldout"]
        for r in range(R):  # LCO subsets that were not fitted (fewer than 2 classes): the constant predictor
            for i in range(p):
                if skip[1 + i]:
                    heldout[r, members[i]] = self._constant_heldout(members[i])
        self._heldout = heldout
        if self._path == "batched":
            self.backend_ = f"batched {kind} on {self._device}"
        else:
            name = kind if kind is not None else type(self.learner).__name__
            self.backend_ = f"loop {name} on {self._device if kind is not None else 'cpu'} (n_jobs={self.n_jobs})"

        self._cluster_values(removed, pair_list, p)
        self._propagate(labels, members, y_code, y)
        self.timings_["values"] = time.perf_counter() - began
        return self

    # ------------------------------------------------------------------------------------------ clustering
    def _embed(self, X, Xs, name):
        if self.embed is None:
            return Xs
        Z = _numpy(self.embed(X), f"embed({name})")
        if Z.ndim != 2 or Z.shape[0] != X.shape[0]:
            raise ValueError(f"embed({name}) must return a 2-D array with one row per row of {name} "
                             f"({X.shape[0]}), got shape {Z.shape}")
        Z = Z.astype(np.float64)
        if not np.all(np.isfinite(Z)):
            raise ValueError(f"embed({name}) returned NaN or inf values")
        return Z

    def _fixed_clusters(self, cluster_labels, Z, n):
        raw = _numpy(cluster_labels, "cluster_labels")
        if raw.ndim != 1 or raw.shape[0] != n:
            raise ValueError(f"cluster_labels must have one entry per row of X: expected shape ({n},), got "
                             f"{raw.shape}")
        if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
            raise ValueError("cluster_labels contains NaN or inf")
        ids, labels = np.unique(raw, return_inverse=True)
        if len(ids) < 2:
            raise ValueError(f"cluster_labels must name at least 2 clusters, got {len(ids)}")
        labels = labels.astype(np.int64)
        centroids = np.stack([Z[labels == i].mean(0) for i in range(len(ids))])
        return labels, centroids

    def _kmeans(self, Z, y_code, C, n):
        p = self.n_clusters
        if y_code is not None and self.stratify_by_label:
            if p < 2 * C:
                warnings.warn(f"n_clusters={p} is below 2 per class for {C} classes; raised to p={2 * C}",
                              EcoValWarning, stacklevel=3)
                p = 2 * C
            counts = np.bincount(y_code, minlength=C)
            quotas = cluster_quotas(p, counts)
            short = [(self.classes_.tolist()[c], int(counts[c]), quotas[c]) for c in range(C) if counts[c] < quotas[c]]
            if short:
                label, have, need = short[0]
                raise ValueError(f"class {label!r} has {have} training point(s), fewer than its quota of {need} "
                                 f"clusters (n_clusters={p}); lower n_clusters")
            groups = y_code
        else:
            quotas, groups = [p], np.zeros(n, dtype=np.int64)
        centroids, centroid_groups = self._run_kmeans(Z, groups, quotas)
        labels = self._assign(Z, groups, centroids, centroid_groups)
        sizes = np.bincount(labels, minlength=len(centroids))
        if (sizes == 0).any():
            empty = np.flatnonzero(sizes == 0)
            warnings.warn(f"{len(empty)} cluster(s) {empty.tolist()} received no point in the final assignment and "
                          f"were dropped ({len(centroids) - len(empty)} clusters remain)", EcoValWarning,
                          stacklevel=3)
            keep = sizes > 0
            renumber = np.cumsum(keep) - 1
            labels = renumber[labels]
            centroids = centroids[keep]
        return labels.astype(np.int64), centroids

    def _run_kmeans(self, Z, groups, quotas):
        """Centroids (k, d_z) numbered group by group, and each centroid's group: one call of the k-means op with
        the groups (stratified) and n_init restarts, lowest inertia kept."""
        seed = _seed(self.random_state_, 0)
        x = torch.as_tensor(Z, dtype=torch.float64)
        g = torch.as_tensor(groups, dtype=torch.int64)
        k = quotas if len(quotas) > 1 else quotas[0]
        result = ops.kmeans(x, k, init="k-means++", n_init=self.n_init, random_state=seed,
                            groups=g if len(quotas) > 1 else None)
        centroids = result.centroids.detach().cpu().to(torch.float64).numpy()
        if len(quotas) > 1:
            centroid_groups = result.centroid_groups.detach().cpu().numpy().astype(np.int64)
        else:
            centroid_groups = np.zeros(len(centroids), dtype=np.int64)
        return centroids, centroid_groups

    @staticmethod
    def _assign(Z, groups, centroids, centroid_groups):
        """Nearest centroid within the point's group, ties to the lower index (the op's rule)."""
        labels = np.empty(len(Z), dtype=np.int64)
        x = torch.as_tensor(Z, dtype=torch.float64)
        c = torch.as_tensor(centroids, dtype=torch.float64)
        for gid in np.unique(groups):
            rows = np.flatnonzero(groups == gid)
            cands = np.flatnonzero(centroid_groups == gid)
            found = ops.nearest(x[rows], c[cands]).index.numpy()
            labels[rows] = cands[found]
        return labels

    def _pair_list(self, p):
        if self.pairs == "all" or (self.pairs >= p - 1 and self.pairs > 0):
            return list(itertools.combinations(range(p), 2))
        if self.pairs == 0:
            return []
        rng = np.random.default_rng(np.random.SeedSequence([self.random_state_, 1]))
        chosen = set()
        for i in range(p):
            others = np.array([j for j in range(p) if j != i])
            for j in rng.choice(others, size=self.pairs, replace=False):
                chosen.add((min(i, int(j)), max(i, int(j))))
        return sorted(chosen)

    # ------------------------------------------------------------------------------------------ trainings
    def _resolve_device(self) -> torch.device:
        if self.device is None or self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _make_trainer(self):
        if self._trainer is not None:
            return self._trainer
        dev = self._device
        X = torch.as_tensor(self._Xs, dtype=torch.float64, device=dev)
        cl = torch.as_tensor(self.cluster_labels_, device=dev)
        classification = self.task_ == "classification"
        if classification:
            y = torch.as_tensor(self._y_code, device=dev)
        else:
            y = torch.as_tensor((self._y - self._y_mu) / self._y_sigma, dtype=torch.float64, device=dev)
        if self._kind == "logreg":
            trainer = _learners.BatchedLogReg(X, y, cl, self._C, solver=LOGREG_SOLVER)
        elif self._kind == "ridge":
            trainer = _learners.BatchedRidge(X, y, cl, self.n_clusters_)
        else:
            trainer = _learners.BatchedMLP(X, y, cl, self._C if classification else 1,
                                           classification=classification)
        self._trainer = trainer
        return trainer

    def _chunk_size(self, trainer) -> int:
        if self.max_models_per_batch is not None:
            return int(self.max_models_per_batch)
        n, d = self._Xs.shape
        per_model = type(trainer).bytes_per_model(n, d, max(self._C, 2), self._X_val.shape[0])
        return max(1, int(default_memory_budget(self._device) // 2 // max(per_model, 1)))

    def _to_output_scale(self, out):
        """Built-in regression models predict standardised targets."""
        if self.task_ == "classification":
            return out
        return self._y_mu + self._y_sigma * out

    def _heldout_of(self, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per-point held-out quantity: p(y_k | x_k) (classification) or the prediction (regression)."""
        if self.task_ == "classification":
            return out[np.arange(len(rows)), self._y_code[rows]]
        return out

    def _constant_heldout(self, rows):
        if self.task_ == "classification":
            return self._freq[self._y_code[rows]]
        return np.full(len(rows), float(self._y.mean()))

    def _progress(self, total):
        if not (self.verbose and total and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm
        return tqdm(total=total, desc="EcoVal", unit="fit")

    def _train_batched(self, state, removed, skip):
        trainer = self._make_trainer()
        R, S = state["U"].shape
        p = self.n_clusters_
        tasks = self._my_tasks([(r, j) for r in range(R) for j in range(S) if not skip[j] and not state["done"][r, j]])
        chunk = self._chunk_size(trainer)
        Xv = torch.as_tensor(self._Xs_val, dtype=torch.float64, device=self._device)
        bar = self._progress(len(tasks))
        try:
            for start in range(0, len(tasks), chunk):
                part = tasks[start:start + chunk]
                rem = torch.as_tensor(removed[[j for _, j in part]], device=self._device)
                params = trainer.fit(rem, [self._seeds[r] for r, _ in part])
                if not bool(params["converged"].all()):
                    self.converged_ = False
                out = trainer.predict(params, Xv)
                if self.task_ == "regression":
                    out = self._to_output_scale(out)
                U = self._utility.batch(out)
                for t, (r, j) in enumerate(part):
                    if 1 <= j <= p:
                        i = j - 1
                        one = {k: v.detach().cpu() for k, v in trainer.select(params, [t]).items()}
                        rows = self._members[i]
                        pred = _learners.exact_predict(one, 0, self._Xs[rows], self.task_ == "classification")
                        state["heldout"][r, rows] = self._heldout_of(self._to_output_scale(pred), rows)
                        if self.keep_models:
                            state["models"][(r, i)] = one
                    state["U"][r, j] = U[t]
                    state["done"][r, j] = True
                self.n_trainings_ += len(part)
                self._save_checkpoint(state, force=True)
                if bar is not None:
                    bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()
        if not self.converged_:
            warnings.warn("some built-in subset fits stopped before reaching their tolerance (see converged_)",
                          RuntimeWarning, stacklevel=3)

    # loop path -------------------------------------------------------------------------------------------
    def _new_learner(self, r):
        """A fresh learner for repeat r: a built-in single model, or a clone of the given object with
        random_state=seed_r when it takes one."""
        seed = self._seeds[r]
        if self._kind == "logreg":
            return _learners.LogReg(n_classes=self._C, device=self._device, solver=LOGREG_SOLVER)
        if self._kind == "ridge":
            return _learners.Ridge(device=self._device)
        if self._kind == "mlp":
            return _learners.MLP(task=self.task_, n_classes=self._C if self.task_ == "classification" else None,
                                 random_state=seed, device=self._device)
        learner = self.learner
        try:
            from sklearn.base import clone
            model = clone(learner) if hasattr(learner, "get_params") else copy.deepcopy(learner)
        except ImportError:
            model = copy.deepcopy(learner)
        params = model.get_params() if hasattr(model, "get_params") else {}
        if "random_state" in params:
            model.set_params(random_state=seed)
        elif hasattr(model, "random_state") and not hasattr(model, "get_params"):
            model.random_state = seed
        return model

    def _builtin_params(self, model) -> dict:
        """A fitted single built-in model in the batched trainers' parameter layout (for exact predictions)."""
        if self._kind == "logreg":
            W = np.vstack([model.coef_, model.intercept_[None, :]])
            return {"W": torch.as_tensor(W, dtype=torch.float64)[None]}
        if self._kind == "ridge":
            theta = np.append(model.coef_, model.intercept_)
            return {"theta": torch.as_tensor(theta, dtype=torch.float64)[None]}
        W1, b1, W2, b2 = (t.detach().cpu()[None] for t in model.parameters_())
        return {"W1": W1, "b1": b1, "W2": W2, "b2": b2}

    def _fit_one(self, r, keep_rows):
        """Train one subset model on the loop path -> (model, validation output)."""
        model = self._new_learner(r)
        classification = self.task_ == "classification"
        if self._kind is not None:
            if self._kind == "mlp":
                target = self._y_code if classification else (self._y - self._y_mu) / self._y_sigma
                model.fit(self._Xs, target, rows=keep_rows)
            else:
                target = self._y_code[keep_rows] if classification else \
                    (self._y[keep_rows] - self._y_mu) / self._y_sigma
                model.fit(self._Xs[keep_rows], target)
            params = self._builtin_params(model)
            out = _learners.exact_predict(params, 0, self._Xs_val, classification) if self._kind == "ridge" else (
                model.predict_proba(self._Xs_val) if classification else model.predict(self._Xs_val))
            return params, self._to_output_scale(np.asarray(out, dtype=np.float64))
        model.fit(self._X[keep_rows], self._y[keep_rows])
        return model, self._learner_output(model, self._X_val)

    def _learner_output(self, model, X):
        if self.task_ == "regression":
            return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)
        proba = np.asarray(model.predict_proba(X), dtype=np.float64)
        seen = getattr(model, "classes_", None)
        out = np.zeros((X.shape[0], self._C), dtype=np.float64)
        if seen is None:
            if proba.shape[1] != self._C:
                raise ValueError(f"learner.predict_proba returned {proba.shape[1]} columns and the learner has no "
                                 f"classes_ to map them to the {self._C} classes")
            return proba
        seen = np.asarray(seen)
        cols = np.searchsorted(self.classes_, seen).clip(0, self._C - 1)
        ok = self.classes_[cols] == seen
        out[:, cols[ok]] = proba[:, ok]
        return out

    def _predict_model(self, model, X_raw, Xs_rows):
        """Output of a stored LCO model on rows (raw X for objects, standardised for built-ins)."""
        classification = self.task_ == "classification"
        if model is None:
            m = len(Xs_rows)
            if classification:
                return np.tile(self._freq, (m, 1))
            return np.full(m, float(self._y.mean()))
        if self._kind is not None:
            return self._to_output_scale(_learners.exact_predict(model, 0, Xs_rows, classification))
        return self._learner_output(model, X_raw)

    def _train_loop(self, state, removed, skip):
        R, S = state["U"].shape
        p = self.n_clusters_
        tasks = self._my_tasks([(r, j) for r in range(R) for j in range(S) if not skip[j] and not state["done"][r, j]])
        bar = self._progress(len(tasks))

        def run(task):
            r, j = task
            keep = np.flatnonzero(~removed[j][self.cluster_labels_])
            model, out = self._fit_one(r, keep)
            U = self._utility(out)
            held = None
            if 1 <= j <= p:
                rows = self._members[j - 1]
                held = self._heldout_of(self._predict_model(model, self._X[rows], self._Xs[rows]), rows)
            return task, U, held, model

        def record(result):
            (r, j), U, held, model = result
            if held is not None:
                state["heldout"][r, self._members[j - 1]] = held
                if self.keep_models:
                    state["models"][(r, j - 1)] = model
            state["U"][r, j] = U
            state["done"][r, j] = True
            self.n_trainings_ += 1
            if bar is not None:
                bar.update(1)
            self._save_checkpoint(state)

        try:
            if self.n_jobs == 1:
                for task in tasks:
                    record(run(task))
            else:
                # threads: the fits spend their time in numpy/BLAS/torch, which release the GIL, and nothing
                # (data, estimator) has to be pickled; results are recorded in task order
                from concurrent.futures import ThreadPoolExecutor
                workers = (os.cpu_count() or 1) if self.n_jobs < 0 else self.n_jobs
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for result in pool.map(run, tasks):
                        record(result)
        finally:
            if bar is not None:
                bar.close()

    def _my_tasks(self, tasks):
        """This rank's share of the remaining (repeat, subset) trainings: every world-th (all in one process)."""
        if self._ranks is None:
            return tasks
        return tasks[self._ranks.rank::self._ranks.world]

    def merge_state(self, state, other):
        """Add to `state` the trainings `other` (a state of the same fit: another rank's, another checkpoint
        file's) has done and `state` has not: utilities, LCO held-out outputs and models."""
        new = other["done"] & ~state["done"]
        state["U"][new] = other["U"][new]
        p = self.n_clusters_
        for r, j in zip(*np.nonzero(new)):
            if 1 <= j <= p:
                rows = self._members[j - 1]
                state["heldout"][r, rows] = other["heldout_rows"][(r, j - 1)] if "heldout_rows" in other else \
                    other["heldout"][r, rows]
                if (r, j - 1) in other["models"]:
                    state["models"][(r, j - 1)] = other["models"][(r, j - 1)]
        state["done"] |= new
        return state

    # ------------------------------------------------------------------------------------------ checkpoint
    def _checkpoint_path(self):
        """The checkpoint file of this process: `checkpoint`, or `checkpoint.rank<r>` for rank r > 0 of a
        distributed fit (each rank saves the trainings it finished; rank 0 saves the merged state at the end)."""
        path = os.fspath(self.checkpoint)
        if self._ranks is None or self._ranks.rank == 0:
            return path
        return f"{path}.rank{self._ranks.rank}"

    def _fingerprint(self, R, S, n, p):
        learner = self.learner
        if not (isinstance(learner, str) or learner is None):
            # class and plain parameters only: reprs of nested objects carry memory addresses
            plain = {}
            if hasattr(learner, "get_params"):
                plain = {k: v for k, v in learner.get_params(deep=False).items()
                         if v is None or isinstance(v, (bool, numbers.Number, str))}
            learner = f"{type(learner).__module__}.{type(learner).__qualname__}{sorted(plain.items())}"
        metric = getattr(self.metric_, "__qualname__", repr(self.metric_)) if callable(self.metric_) else self.metric_
        return {"n": n, "p": p, "R": R, "S": S, "learner": str(learner), "path": self._path, "metric": metric,
                "task": self.task_, "seeds": list(self._seeds), "keep_models": bool(self.keep_models),
                "data": _digest(self._X, np.asarray(self._y), self._X_val, np.asarray(self._utility.y_val)),
                "clusters": _digest(self.cluster_labels_), "subsets": _digest(self.subsets_)}

    def _load_checkpoint(self, R, S, n, p):
        state = {"U": np.full((R, S), np.nan), "done": np.zeros((R, S), dtype=bool),
                 "heldout": np.zeros((R, n)), "models": {}}
        self._fingerprint_ = None
        self._last_save = time.monotonic()
        if self.checkpoint is None:
            return state
        self._fingerprint_ = self._fingerprint(R, S, n, p)
        state["fingerprint"] = self._fingerprint_
        path = os.fspath(self.checkpoint)
        # the main file and the files of the ranks of an interrupted distributed fit: every training any finished
        paths = [path] + sorted(glob.glob(glob.escape(path) + ".rank[0-9]*"))
        for name in paths:
            if not os.path.exists(name) or name.endswith(".tmp"):
                continue
            saved = torch.load(name, map_location="cpu", weights_only=False)
            if not isinstance(saved, dict) or saved.get("fingerprint") != self._fingerprint_:
                raise ValueError(f"checkpoint {name!r} belongs to a different configuration or data set; delete it "
                                 "or pass another path")
            state = self.merge_state(state, saved)
        return state

    def _save_checkpoint(self, state, force=False):
        if self.checkpoint is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self._checkpoint_interval:
            return
        path = self._checkpoint_path()
        tmp = path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a crash mid-save never leaves a truncated checkpoint
        self._last_save = now

    # ------------------------------------------------------------------------------------------ values
    def _cluster_values(self, removed, pair_list, p):
        U = _mean_rows(self.utilities_)
        UN = float(U[0])
        a = UN - U[1:1 + p]
        e = np.full((p, p), np.nan)
        np.fill_diagonal(e, 0.0)
        partners = [[] for _ in range(p)]
        for q, (i, j) in enumerate(pair_list):
            e[i, j] = e[j, i] = UN - U[1 + p + q] - a[i] - a[j]
            partners[i].append(j)
            partners[j].append(i)
        x = np.array([0.5 * (p - 1) * float(np.mean([e[i, j] for j in partners[i]])) if partners[i] else 0.0
                      for i in range(p)])
        self.utility_full_ = UN
        self.lco_ = a
        self.interactions_ = e
        target = UN - self.u0_
        if self.cluster_value == "pairwise_shapley":
            extrinsic = self.lam * x
            V = a + extrinsic
            gamma = 1.0
            if self.efficiency == "global":
                total = math.fsum(V.tolist())
                if abs(total) > 1e-12 and np.sign(total) == np.sign(target) and target != 0:
                    gamma = target / total
                else:
                    warnings.warn(f"efficiency='global' skipped: the cluster values sum to {total:.3g} and "
                                  f"U(N) - u0 = {target:.3g} (need the same sign and |sum| > 1e-12); Gamma_beta = 1",
                                  EcoValWarning, stacklevel=3)
            self.cluster_values_ = V if gamma == 1.0 else gamma * V
            self.extrinsic_ = extrinsic
            with np.errstate(divide="ignore", invalid="ignore"):
                self.beta_star_ = np.where(np.abs(a) > 1e-12, V / np.where(np.abs(a) > 1e-12, a, 1.0), np.nan)
        else:
            if self.metric_ == "log_likelihood":
                g = U.copy()
            else:
                if (U <= 0).any():
                    warnings.warn(f"{int((U <= 0).sum())} utilities <= 0 clipped to {CLIP} before the log "
                                  "(cluster_value='cobb_douglas' with a positive metric)", EcoValWarning,
                                  stacklevel=3)
                g = np.log(np.maximum(U, CLIP))
            design = np.concatenate([np.ones((len(U), 1)), (~removed).astype(np.float64)], 1)
            coef = np.linalg.lstsq(design, g, rcond=None)[0]
            beta = coef[1:]
            total = math.fsum(beta.tolist())
            if total > 0:
                gamma = 1.0 / total
            else:
                warnings.warn(f"cluster_value='cobb_douglas': the elasticities sum to {total:.3g} <= 0; "
                              "Gamma_beta = 1 (no constant-returns correction)", EcoValWarning, stacklevel=3)
                gamma = 1.0
            self.cluster_values_ = gamma * (beta * target)
            self.extrinsic_ = self.cluster_values_ - a
            self.beta_star_ = beta
        self.gamma_beta_star_ = float(gamma)

    def _agreement_in_sample(self, y_code, y):
        n = len(self.cluster_labels_)
        if self.intrinsic == "uniform":
            return np.ones(n)
        if self.intrinsic == "knn_agreement":
            return self._knn(self._Z, y_code, exclude_self=True)
        held = _mean_rows(self._heldout)
        if self.task_ == "classification":
            return held
        resid = y - held
        self._sigma2 = np.array([math.fsum((resid[rows] ** 2).tolist()) / len(rows) for rows in self._members])
        self._var_y = float(np.var(y))
        return self._residual_agreement(resid, self.cluster_labels_)

    def _residual_agreement(self, resid, clusters):
        out = np.ones(len(resid))
        for k, (r, c) in enumerate(zip(resid.tolist(), clusters.tolist())):
            s2 = self._sigma2[c]
            if s2 > 1e-12 * self._var_y:
                out[k] = math.exp(-r * r / (2.0 * s2))
        return out

    def _knn(self, Zq, codes, exclude_self):
        Zt = torch.as_tensor(self._Z, dtype=torch.float64)
        q = torch.as_tensor(Zq, dtype=torch.float64)
        yt = torch.as_tensor(self._y_code)
        n = Zt.shape[0]
        K = min(self.knn_k, n - 1 if exclude_self else n)
        if K < 1:
            return np.ones(len(Zq))
        out = np.empty(len(Zq))
        block = max(1, (1 << 22) // max(n, 1))
        tn = (Zt * Zt).sum(1)
        for start in range(0, len(Zq), block):
            xb = q[start:start + block]
            d2 = (xb * xb).sum(1)[:, None] + tn[None, :] - 2.0 * xb @ Zt.T
            if exclude_self:
                rows = torch.arange(start, start + xb.shape[0])
                d2[torch.arange(xb.shape[0]), rows] = float("inf")
            idx = torch.topk(d2, K, dim=1, largest=False, sorted=True).indices
            same = (yt[idx] == torch.as_tensor(codes[start:start + xb.shape[0]])[:, None]).double().mean(1)
            out[start:start + xb.shape[0]] = same.numpy()
        return out

    def _propagate(self, labels, members, y_code, y):
        g = self._agreement_in_sample(y_code, y)
        self.intrinsic_ = _scores(g, self.eps, self.gamma, False)
        negative = self.cluster_values_ < 0
        scores = _scores(g, self.eps, self.gamma, negative[labels])
        self._score_sum = np.array([math.fsum(scores[rows].tolist()) for rows in members])
        self.agreement_ = g
        self.weights_ = scores / self._score_sum[labels]
        self.values_ = (self.cluster_values_[labels] * scores) / self._score_sum[labels]

    # ------------------------------------------------------------------------------------------ out of sample
    def value(self, X_new, y_new) -> np.ndarray:
        """Values of new points without retraining (ECOVAL_SPEC §2.5): nearest centroid of the point's class,
        agreement from the stored LCO models, share of that cluster's value. A copy of training point k gets
        values_[k]."""
        if not hasattr(self, "values_"):
            raise NotFittedError("this EcoVal instance is not fitted yet; call fit(X, y, X_val, y_val) before "
                                 "value()")
        d = self._X.shape[1]
        X_new = _features(X_new, "X_new", d)
        m = X_new.shape[0]
        y_new = _targets(y_new, "y_new", m, "X_new")
        classification = self.task_ == "classification"
        if classification:
            known = np.isin(y_new, self.classes_)
            if not known.all():
                raise ValueError(f"y_new holds label(s) {np.unique(y_new[~known]).tolist()} not seen in y; "
                                 f"expected labels among {self.classes_.tolist()}")
            codes = np.searchsorted(self.classes_, y_new)
        else:
            try:
                y_new = y_new.astype(np.float64)
            except (TypeError, ValueError) as error:
                raise ValueError(f"y_new must be numeric for regression, got dtype {y_new.dtype}") from error
            codes = None
        Xs_new = (X_new - self._mu) / self._sigma
        Z = self._embed(X_new, Xs_new, "X_new")
        if not classification:
            Z = np.concatenate([Z, ((y_new - self._y_mu) / self._y_sigma)[:, None]], 1)
        if Z.shape[1] != self.centroids_.shape[1]:
            raise ValueError(f"embed(X_new) has {Z.shape[1]} columns, the training embedding had "
                             f"{self.centroids_.shape[1]}")
        clusters = self._nearest_cluster(Z, codes)

        if self.intrinsic == "uniform":
            g = np.ones(m)
        elif self.intrinsic == "knn_agreement":
            g = self._knn(Z, codes, exclude_self=False)
        else:
            held = np.zeros((self.n_repeats, m))
            for i in np.unique(clusters):
                rows = np.flatnonzero(clusters == i)
                for r in range(self.n_repeats):
                    out = self._predict_model(self._lco_model(r, int(i)), X_new[rows], Xs_new[rows])
                    held[r, rows] = out[np.arange(len(rows)), codes[rows]] if classification else out
            g = _mean_rows(held)
            if not classification:
                g = self._residual_agreement(y_new - g, clusters)
        negative = self.cluster_values_[clusters] < 0
        s = _scores(g, self.eps, self.gamma, negative)
        return (self.cluster_values_[clusters] * s) / self._score_sum[clusters]

    def _nearest_cluster(self, Z, codes):
        c = torch.as_tensor(self.centroids_, dtype=torch.float64)
        x = torch.as_tensor(Z, dtype=torch.float64)
        if not self._stratified:
            return ops.nearest(x, c).index.numpy().astype(np.int64)
        out = np.empty(len(Z), dtype=np.int64)
        for code in np.unique(codes):
            rows = np.flatnonzero(codes == code)
            cands = np.flatnonzero(self._cluster_classes[:, code])
            out[rows] = cands[ops.nearest(x[rows], c[cands]).index.numpy()]
        return out

    def _lco_model(self, r, i):
        """f_{-i} of repeat r: stored, cached, or refit once (keep_models=False)."""
        if (r, i) in self._lco_models:
            return self._lco_models[(r, i)]
        if (r, i) in self._lco_cache:
            return self._lco_cache[(r, i)]
        removed = self.subsets_[1 + i]
        if self.task_ == "classification":
            kept = self._cluster_classes[~removed].any(0)
            if kept.sum() < 2:
                for rr in range(self.n_repeats):
                    self._lco_cache[(rr, i)] = None
                return None
        if self._path == "batched":
            trainer = self._make_trainer()
            rem = torch.as_tensor(np.repeat(removed[None], self.n_repeats, 0), device=self._device)
            params = trainer.fit(rem, self._seeds)
            for rr in range(self.n_repeats):
                self._lco_cache[(rr, i)] = {k: v.detach().cpu()
                                            for k, v in trainer.select(params, [rr]).items()}
        else:
            keep = np.flatnonzero(~removed[self.cluster_labels_])
            for rr in range(self.n_repeats):
                self._lco_cache[(rr, i)] = self._fit_one(rr, keep)[0]
        return self._lco_cache[(r, i)]
