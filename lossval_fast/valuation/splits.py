"""OpenDataVal-style train/valid/test splits, plus the small input helpers the evaluation modules share.

Matched code: OpenDataVal (github.com/opendataval/opendataval)
  - opendataval/dataloader/datasets/datasets.py::load_openml   (z-scoring of X, and of y for regression; label coding)
  - opendataval/dataloader/fetcher.py::DataFetcher.split_dataset_by_count   (one permutation, sliced train|valid|test)
  - sklearn.utils.check_random_state, which DataFetcher uses for its random stream
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Optional

import numpy as np

TASKS = ("classification", "regression")

# OpenDataVal's load_openml divides by (std + 1e-8), so constant columns map to 0 instead of NaN.
ZSCORE_EPS = 1e-8


def as_numpy(value, name: str) -> np.ndarray:
    """`value` as a numpy array (torch tensors are detached and moved to the CPU; nothing is copied otherwise)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be array-like (numpy array, torch tensor or sequence), got "
                        f"{type(value).__name__}") from error


def check_random_state(random_state) -> np.random.RandomState | np.random.Generator:
    """The random stream to draw from, with sklearn.utils.check_random_state's rules (which OpenDataVal uses).

    None -> numpy's global RandomState (numpy.random.mtrand._rand); an int -> a new RandomState(int); a RandomState
    or a numpy Generator -> itself, so a caller can thread one stream through the split and the noise exactly as
    OpenDataVal's DataFetcher does. Only RandomState streams reproduce OpenDataVal's draws bit for bit.
    """
    if random_state is None:
        return np.random.mtrand._rand
    if isinstance(random_state, (np.random.RandomState, np.random.Generator)):
        return random_state
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return np.random.RandomState(int(random_state))
    raise ValueError(f"random_state must be None, an int, a numpy RandomState or Generator, got {random_state!r}")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True, eq=False)  # arrays have no single truth value for ==
class Split:
    """One train/valid/test split.

    x_*: float64 arrays (n_*, *feature_shape). y_*: int64 class codes 0..C-1 (classification) or float64 targets
    (regression). *_indices: the rows of the input data each part came from. classes: for classification the
    original label of each code (`classes[y]` recovers the input labels), None for regression.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_indices: np.ndarray
    valid_indices: np.ndarray
    test_indices: np.ndarray
    task: str
    classes: Optional[np.ndarray] = None


def zscore(values: np.ndarray) -> np.ndarray:
    """(v - mean) / (std + 1e-8) per column over axis 0, population std (ddof=0): load_openml's formula."""
    return zscore_with(values, values)


def zscore_with(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(values - mean) / (std + 1e-8) with the per-column statistics of `reference` (load_openml's formula).

    A column whose statistics overflow float64 (one cell near 1e300 squares to inf, and the plain formula then
    turns the whole column into zeros) is first divided by its largest magnitude, with the 1e-8 divided alike: the
    same z-scores, computed in range. Other columns keep the plain formula's bits."""
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = reference.mean(axis=0), reference.std(axis=0)
    overflow = ~(np.isfinite(mean) & np.isfinite(std))
    if not np.any(overflow):
        return (values - mean) / (std + ZSCORE_EPS)
    scale = np.where(overflow, np.abs(reference).max(axis=0), 1.0)
    reference = reference / scale
    return (values / scale - reference.mean(axis=0)) / (reference.std(axis=0) + ZSCORE_EPS / scale)


def standardize_split(X, y, *, n_train: int = 1000, n_valid: int = 100, n_test: int = 3000,
                      task: str = "classification", random_state=None) -> Split:
    """Z-score the whole data set, then split it at random into train/valid/test, as OpenDataVal does.

    Exactly (OpenDataVal load_openml + DataFetcher.split_dataset_by_count):
      1. X (n, *feature_shape) -> float64, each feature z-scored over ALL n rows: (x - mean) / (std + 1e-8), ddof=0.
         The statistics include the rows that end up in valid and test (OpenDataVal's choice, kept here).
      2. classification: y -> np.unique(y, return_inverse=True) codes 0..C-1 as int64 (classes sorted as np.unique
         sorts them); regression: y -> float64, z-scored over all n rows with the same formula.
      3. perm = rs.permutation(n) with rs = check_random_state(random_state); train = perm[:n_train],
         valid = perm[n_train:n_train+n_valid], test = perm[n_train+n_valid:n_train+n_valid+n_test]. Rows beyond
         the three sizes are left out. Passing the same RandomState on to `noisify_split` continues the stream
         as DataFetcher does, so a seeded run reproduces OpenDataVal's split and noise.

    X and y may be numpy arrays or torch tensors; y must be 1-D or (n, 1). Raises ValueError when the sizes exceed
    the rows available (the message names all three sizes), when X and y disagree in length, when X holds NaN or
    inf, for a bad task, or for sizes that are not ints (n_train >= 1, n_valid >= 0, n_test >= 0).
    """
    check_task(task)
    n_train = _check_count(n_train, "n_train", 1)
    n_valid = _check_count(n_valid, "n_valid", 0)
    n_test = _check_count(n_test, "n_test", 0)
    X = as_numpy(X, "X")
    y = as_numpy(y, "y")
    if X.ndim < 2:
        raise ValueError(f"X must be at least 2-D (n_samples, n_features), got shape {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (or (n, 1)), got shape {y.shape}")
    n = X.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"X and y must have the same number of rows, got {n} and {y.shape[0]}")
    total = n_train + n_valid + n_test
    if total > n:
        raise ValueError(f"n_train + n_valid + n_test = {n_train} + {n_valid} + {n_test} = {total} exceeds the "
                         f"{n} rows available")
    X = np.asarray(X, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(X)))
    if bad:
        raise ValueError(f"X contains {bad} NaN or inf entries")
    X = zscore(X)

    classes = None
    if task == "classification":
        classes, codes = np.unique(y, return_inverse=True)
        y = codes.reshape(-1).astype(np.int64)
    else:
        y = np.asarray(y, dtype=np.float64)
        bad = int(np.count_nonzero(~np.isfinite(y)))
        if bad:
            raise ValueError(f"y contains {bad} NaN or inf entries")
        y = zscore(y)

    perm = check_random_state(random_state).permutation(n)
    train, valid, test = perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:total]
    return Split(x_train=X[train], y_train=y[train], x_valid=X[valid], y_valid=y[valid], x_test=X[test],
                 y_test=y[test], train_indices=train, valid_indices=valid, test_indices=test, task=task,
                 classes=classes)
