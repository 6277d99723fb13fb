"""Adapters that let other data-valuation frameworks drive LossVal and EcoVal, duck-typed: neither OpenDataVal nor
pyDVL is imported (their pins conflict with ours), the adapters only follow their calling conventions.

- `lossval_fast.integrations.opendataval`: `LossValEvaluator`, `EcoValEvaluator` (OpenDataVal's DataEvaluator
  protocol: input_data / train_data_values / evaluate_data_values, and train(fetcher, ...) for ExperimentMediator).
- `lossval_fast.integrations.pydvl`: `LossValValuation`, `EcoValValuation` (pyDVL's Valuation protocol:
  fit(data) / values() returning a `ValuationResult`).

Both accept numpy arrays or torch tensors, class labels as integer codes, arbitrary labels or one-hot rows (what
OpenDataVal passes), and regression targets as (n,) or (n, 1) floats.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..base import resolve_task
from ..valuation.splits import as_numpy

__all__ = ["prepare", "seed_from", "check_method", "fit_method"]


def _features(x, name: str) -> np.ndarray:
    if not hasattr(x, "shape") and not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__} (image datasets must "
                        "be embedded into feature vectors first)")
    x = as_numpy(x, name)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n_samples, n_features, ...) with n_samples >= 1, got {x.shape}")
    try:
        return np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}") from None


def _is_label_rows(y: np.ndarray) -> bool:
    """One-hot or probability rows (what OpenDataVal's fetchers hand out): one column per class."""
    return y.ndim == 2 and y.shape[1] > 1


def prepare(x_train, y_train, x_valid, y_valid, task: str = "auto") -> dict:
    """Training and validation data in the form LossVal and EcoVal take.

    Returns dict(x_train, y_train, x_valid, y_valid, task, classes): features float64 (n, d) (flattened);
    classification labels as codes 0..C-1 (one-hot or probability rows: their argmax, C = the number of columns;
    other labels: their position in the sorted labels of train and valid together); regression targets float64 (n,).
    task "auto": label rows are classes, other targets by the package's rule (lossval_fast.base.infer_task).
    """
    xt, xv = _features(x_train, "x_train"), _features(x_valid, "x_valid")
    if xt.shape[1] != xv.shape[1]:
        raise ValueError(f"x_train and x_valid must have the same number of features, got {xt.shape[1]} and "
                         f"{xv.shape[1]}")
    yt, yv = as_numpy(y_train, "y_train"), as_numpy(y_valid, "y_valid")
    for y, x, name in ((yt, xt, "y_train"), (yv, xv, "y_valid")):
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} must have one row per sample ({x.shape[0]}), got shape {y.shape}")
    if yt.ndim == 2 and yt.shape[1] == 1:
        yt = yt[:, 0]
    if yv.ndim == 2 and yv.shape[1] == 1:
        yv = yv[:, 0]
    if _is_label_rows(yt) != _is_label_rows(yv) or (_is_label_rows(yt) and yt.shape[1] != yv.shape[1]):
        raise ValueError(f"y_train and y_valid must have the same label layout, got shapes {yt.shape} and {yv.shape}")
    task = "classification" if task == "auto" and _is_label_rows(yt) else resolve_task(task, yt)

    classes = None
    if task == "classification":
        if _is_label_rows(yt):
            ct, cv = yt.argmax(1), yv.argmax(1)
            # Compact the codes to the classes present, keeping their order (LossVal wants 0..C-1 all present).
            classes, codes = np.unique(np.concatenate([ct, cv]), return_inverse=True)
        else:
            if yt.ndim != 1:
                raise ValueError(f"classification labels must be (n,) or one-hot (n, C), got shape {yt.shape}")
            classes, codes = np.unique(np.concatenate([yt, yv]), return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        yt_out, yv_out = codes[:len(xt)], codes[len(xt):]
    else:
        if yt.ndim != 1:
            raise ValueError(f"regression targets must be (n,) or (n, 1), got shape {yt.shape}")
        try:
            yt_out, yv_out = yt.astype(np.float64), yv.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("regression targets must be numeric") from None
    return {"x_train": xt, "y_train": yt_out, "x_valid": xv, "y_valid": yv_out, "task": task, "classes": classes}


def check_method(method: str, options: dict):
    """A registered valuation method (valuation.methods) and options it reads (MethodOptions fields), or the error
    naming what is wrong."""
    from ..evaluation import MethodOptions
    from ..valuation import methods

    spec = methods.get(method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"{method} takes the options {', '.join(spec.options) or '(none)'}, got {', '.join(unknown)}")
    MethodOptions(**options)   # the values' checks
    return spec


def fit_method(method: str, data: dict, options: dict, device, random_state, verbose: bool = False):
    """The fitted estimator of a registered method on prepare()'s data: what the generic adapters (OpenDataVal's
    MethodEvaluator, pyDVL's MethodValuation) run, so that a method registered once has both adapters."""
    from ..evaluation import MethodOptions

    spec = check_method(method, options)
    if data["task"] not in spec.tasks:
        raise ValueError(f"{method} values {' and '.join(spec.tasks)} targets only, got a {data['task']} target"
                         + (f" ({spec.task_note})" if spec.task_note else ""))
    estimator = spec.make(data["task"], MethodOptions(**options), device, seed_from(random_state), verbose, None)
    return estimator.fit(data["x_train"], data["y_train"], data["x_valid"], data["y_valid"])


def seed_from(random_state):
    """An int seed (or None) from None, an int, or a numpy RandomState / Generator (one draw is taken from it, as
    OpenDataVal evaluators draw from their RandomState)."""
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise ValueError(f"random_state must be None, an int, or a numpy RandomState/Generator, got {random_state!r}")
