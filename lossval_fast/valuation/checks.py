"""Array checks shared by the valuation methods and the reference Shapley values: each raises ValueError naming
the argument, what was seen and what was expected."""
from __future__ import annotations

import numpy as np
import torch


def array(value, name) -> np.ndarray:
    """`value` as a numpy array (a torch tensor detached and moved to the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be array-like (numpy array, torch tensor or sequence), got "
                         f"{type(value).__name__}") from error


CHUNK_ELEMENTS = 1 << 20   # passes over the features touch this many entries at a time (8 MiB float64)


def row_chunks(n: int, d: int):
    """(lo, hi) row ranges of about CHUNK_ELEMENTS entries each."""
    step = max(1, CHUNK_ELEMENTS // max(d, 1))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def features(value, name, d=None, keep_float=False) -> np.ndarray:
    """A 2-D finite numeric array, float64; keep_float: a float32 or float64 array is kept as given (no copy;
    checked in row chunks)."""
    X = array(value, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (points x features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape}); expected at least one row")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name} must have {d} features like X, got shape {X.shape}")
    if not (keep_float and X.dtype in (np.float32, np.float64)):
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be numeric, got dtype {X.dtype}") from error
    bad = sum(int(np.count_nonzero(~np.isfinite(X[lo:hi]))) for lo, hi in row_chunks(*X.shape))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or inf value(s); expected finite numbers")
    return X


def targets(value, name, rows, xname) -> np.ndarray:
    """One entry per row of `xname` ((rows,) or (rows, 1)); float entries must be finite."""
    y = array(value, name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != rows:
        raise ValueError(f"{name} must have one entry per row of {xname}: expected shape ({rows},), got {y.shape}")
    if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains {int(np.count_nonzero(~np.isfinite(y)))} NaN or inf value(s); expected "
                         "finite numbers")
    return y


def regression_targets(y, y_val) -> tuple[np.ndarray, np.ndarray]:
    """y and y_val as finite float64 regression targets."""
    try:
        y, y_val = y.astype(np.float64), y_val.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"regression targets must be numeric, got dtypes {y.dtype} and {y_val.dtype}") from error
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(y_val))):
        raise ValueError("y and y_val must be finite for regression")
    return y, y_val
