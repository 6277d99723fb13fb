"""Exact KNN-Shapley (Jia et al., "Efficient Task-Specific Data Valuation for Nearest Neighbor Algorithms", VLDB 2019,
arXiv 1908.08619, Theorem 1), vectorised in torch.

Matched code: OpenDataVal, opendataval/dataval/knnshap/knnshap.py::KNNShapley (default k_neighbors=10; LossVal's
baselines, src/baseline/utils.py::instantiate_evaluators, ran it with k = |validation set| = 100).

Utility (per validation point (x, y), then averaged over the validation set):
    U(S) = (1/K) * sum_{j <= min(K, |S|)} 1[y_{a_j(S)} == y],   U(empty) = 0,
with a_j(S) the j-th nearest point of S to x by Euclidean distance (features flattened), equal distances ordered
by training index (OpenDataVal's stable argsort). Its Shapley values, with a_1..a_N all N training points sorted
that way, are
    s_{a_N} = 1[y_{a_N} == y] * min(K, N) / (K N)
    s_{a_i} = s_{a_{i+1}} + (1[y_{a_i} == y] - 1[y_{a_{i+1}} == y]) * min(K, i) / (K i),   i = N-1, ..., 1.
Jia et al. and OpenDataVal start from 1[y_{a_N} == y] / N, which equals the line above when N >= K and is not the
Shapley value when N < K (the farthest point then always counts, 1/K); the form above is exact for every N, so
efficiency (sum of values = U(all) - U(empty)) holds for every N.

Regression is not supported: OpenDataVal's KNNShapley compares labels by exact equality
(`match`: (y == y_valid).all(dim=1)), which for continuous targets is almost never true, so every value is ~0
(LossVal's published regression rows for KNNShapley have F1 = 0.0 throughout). A ValueError says so.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from ..base import Estimator
from .splits import as_numpy, check_task

# Default chunk: about 2^22 (validation x training) entries per working array, ~32 MiB each in float64.
_CHUNK_ELEMENTS = 1 << 22


def _flat_features(X, name: str) -> np.ndarray:
    X = as_numpy(X, name)
    if X.ndim < 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be (n_samples, *feature_shape) with at least one row, got shape {X.shape}")
    X = np.asarray(X, dtype=np.float64).reshape(X.shape[0], -1)
    bad = int(np.count_nonzero(~np.isfinite(X)))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or inf entries")
    return X


def _label_rows(y, n: int, name: str) -> np.ndarray:
    y = as_numpy(y, name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"{name} must be ({n},) labels (or ({n}, C) one-hot rows), got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name} holds non-integer floats: KNN-Shapley needs class labels (regression targets "
                             f"are not supported, see KNNShapley's docstring)")
    return y


class KNNShapley(Estimator):
    """Exact KNN-Shapley values of the training points for a K-nearest-neighbour classifier (Jia et al. 2019).

    Parameters
    ----------
    k : int, default 10
        Number of neighbours K (OpenDataVal's default; LossVal's baseline used k = validation size).
    task : "classification" (default) or "regression"; regression raises ValueError (see the module docstring).
    chunk_size : int or None
        Validation points processed together; memory is O(chunk_size x n_train). None: about 2^22 / n_train.
    device : torch device or None (CPU). Computation is in float64.

    After fit: values_ (n_train,) float64, the Shapley value of each training point for the utility averaged over
    the validation set (their sum equals U(all) = mean over validation points of (1/K) * number of the min(K, N)
    nearest training points whose label matches); n_train_, n_valid_.
    """

    def __init__(self, k: int = 10, *, task: str = "classification", chunk_size=None, device=None):
        self.k = k
        self.task = task
        self.chunk_size = chunk_size
        self.device = device

    def fit(self, X, y, X_val, y_val) -> "KNNShapley":
        """Compute values_ for training data (X, y) against validation data (X_val, y_val); returns self.

        X: (n, *feature_shape), X_val: (m, *feature_shape) (flattened to vectors), numpy or torch. y, y_val: class
        labels of any type comparable by equality, 1-D (or (n, C) one-hot rows, matched row-wise).
        """
        check_task(self.task)
        if self.task == "regression":
            raise ValueError("KNNShapley supports classification only: OpenDataVal's KNN-Shapley matches labels by "
                             "exact equality, which gives ~0 values for continuous targets")
        k = self.k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        chunk = self.chunk_size
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1):
            raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk!r}")
        X = _flat_features(X, "X")
        X_val = _flat_features(X_val, "X_val")
        if X.shape[1] != X_val.shape[1]:
            raise ValueError(f"X and X_val must have the same number of features, got {X.shape[1]} and "
                             f"{X_val.shape[1]}")
        n, m = X.shape[0], X_val.shape[0]
        y = _label_rows(y, n, "y")
        y_val = _label_rows(y_val, m, "y_val")
        if y.ndim != y_val.ndim or (y.ndim == 2 and y.shape[1] != y_val.shape[1]):
            raise ValueError(f"y and y_val must have the same label layout, got shapes {y.shape} and {y_val.shape}")
        # One integer code per distinct label (row), so matching is an integer comparison.
        _, codes = np.unique(np.concatenate([y, y_val]), return_inverse=True, axis=0 if y.ndim == 2 else None)
        codes = codes.reshape(-1)

        device = torch.device(self.device) if self.device is not None else torch.device("cpu")
        xt = torch.as_tensor(X, device=device)
        xv = torch.as_tensor(X_val, device=device)
        ct = torch.as_tensor(codes[:n], device=device)
        cv = torch.as_tensor(codes[n:], device=device)
        chunk = chunk if chunk is not None else max(1, _CHUNK_ELEMENTS // n)

        j = torch.arange(1, n, dtype=torch.float64, device=device)
        step = torch.clamp(j, max=k) / (k * j)  # min(K, i) / (K i) for i = 1..N-1
        last = min(k, n) / (k * n)
        total = torch.zeros(n, dtype=torch.float64, device=device)
        for start in range(0, m, chunk):
            xv_c, cv_c = xv[start:start + chunk], cv[start:start + chunk]
            # Direct differences (no |x|^2 + |y|^2 - 2xy expansion) so rounding cannot reorder neighbours.
            dist = torch.cdist(xv_c, xt, compute_mode="donot_use_mm_for_euclid_dist")
            order = torch.argsort(dist, dim=1, stable=True)
            match = (ct[order] == cv_c[:, None]).to(torch.float64)
            # s_i = s_N + sum_{l >= i} (match_l - match_{l+1}) * step_l: a reversed cumulative sum, which adds in the
            # same order as the recursion.
            tail = torch.cat([(match[:, :-1] - match[:, 1:]) * step, match[:, -1:] * last], dim=1)
            s = tail.flip(1).cumsum(1).flip(1)
            total += torch.zeros_like(s).scatter_(1, order, s).sum(0)
        self.values_ = (total / m).cpu().numpy()
        self.n_train_, self.n_valid_ = n, m
        return self
