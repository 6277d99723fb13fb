"""Input checks of the fused weighted losses, shared by their C++ fake kernels (ops/weighted_loss.py) and their Triton
kernels (triton/weighted_loss.py): a leaf below both, it imports nothing from the package. Shapes, dtypes and
devices need no pass over the data; `check_values` is the one pass (and host synchronisation) of validate=True."""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["check_cross_entropy", "check_mse", "check_values"]

_FLOAT = (torch.float32, torch.float64)


def _tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_weight(weight, n: int, like: torch.Tensor, like_name: str) -> None:
    _tensor(weight, "weight")
    if weight.shape != (n,):
        raise ValueError(f"weight must have shape ({n},) (one weight per row of {like_name}), "
                         f"got {tuple(weight.shape)}")
    if weight.dtype != like.dtype:
        raise ValueError(f"weight must have dtype {like.dtype} like {like_name}, got {weight.dtype}")
    if weight.device != like.device:
        raise ValueError(f"weight must be on {like.device} like {like_name}, got {weight.device}")


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps must be a real number >= 0, got {eps!r}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def check_cross_entropy(input, target, weight, eps) -> float:
    """Shapes, dtypes and devices of a cross-entropy call (no pass over the data); returns eps as a float."""
    _tensor(input, "input")
    _tensor(target, "target")
    if input.dim() != 2:
        raise ValueError(f"input must be 2-D (rows x classes), got shape {tuple(input.shape)}")
    if input.dtype not in _FLOAT:
        raise ValueError(f"input must be float32 or float64, got {input.dtype}")
    n, c = input.shape
    if n == 0 or c == 0:
        raise ValueError(f"input must have at least one row and one class, got shape {tuple(input.shape)}")
    if target.dtype == torch.int64:
        if target.shape != (n,):
            raise ValueError(f"target of class indices must have shape ({n},), got {tuple(target.shape)}")
    elif target.dtype != input.dtype:
        raise ValueError(f"target must be int64 class indices or a {input.dtype} distribution like input, "
                         f"got {target.dtype}")
    elif target.shape != input.shape:
        raise ValueError(f"target distribution must have the shape of input {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}")
    if target.device != input.device:
        raise ValueError(f"target must be on {input.device} like input, got {target.device}")
    _check_weight(weight, n, input, "input")
    return _check_eps(eps)


def check_mse(pred, target, weight) -> None:
    _tensor(pred, "pred")
    _tensor(target, "target")
    if pred.dim() not in (1, 2):
        raise ValueError(f"pred must be 1-D (rows) or 2-D (rows x outputs), got shape {tuple(pred.shape)}")
    if pred.dtype not in _FLOAT:
        raise ValueError(f"pred must be float32 or float64, got {pred.dtype}")
    if pred.numel() == 0:
        raise ValueError(f"pred must have at least one row and one output, got shape {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    if target.dtype != pred.dtype:
        raise ValueError(f"target must have dtype {pred.dtype} like pred, got {target.dtype}")
    if target.device != pred.device:
        raise ValueError(f"target must be on {pred.device} like pred, got {target.device}")
    _check_weight(weight, pred.shape[0], pred, "pred")


def check_values(target, weight, classes: int | None) -> None:
    """The data checks of validate=True for the Python-side backends (a pass and a host sync; the C++ kernels
    do them inside their own pass): class indices in [0, classes) and finite weights."""
    if classes is not None and target.dtype == torch.int64:
        bad = (target < 0) | (target >= classes)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"target holds class index {int(target[row])} at row {row}, outside [0, {classes}) "
                             f"(input has {classes} classes)")
    bad = ~torch.isfinite(weight)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"weight must be finite, got {float(weight[row])} at row {row}")
