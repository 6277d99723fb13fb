"""Input checks of the ops, shared by the ops and the kernels (a leaf below both: it imports nothing from the
package). Every message names the argument, what was seen and what was expected. The weighted losses' checks need no
pass over the data except `check_values`, the one pass (and host synchronisation) of validate=True."""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def points(value, name: str) -> torch.Tensor:
    """A non-empty (n, d) float32/float64 point cloud with d >= 1."""
    t = tensor(value, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (points x features), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one point, got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature, got shape {tuple(t.shape)}")
    return t


def pair(x, y, x_name: str = "x", y_name: str = "y"):
    x, y = points(x, x_name), points(y, y_name)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{x_name} and {y_name} must have the same number of features (d), "
                         f"got {x.shape[1]} and {y.shape[1]}")
    if x.dtype != y.dtype:
        raise ValueError(f"{x_name} and {y_name} must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"{x_name} and {y_name} must be on the same device, got {x.device} and {y.device}")
    return x, y


def vector(value, name: str, length: int, like: torch.Tensor, what: str,
           like_name: str = "the points") -> torch.Tensor:
    t = tensor(value, name)
    if t.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) ({what}), got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise ValueError(f"{name} must have dtype {like.dtype} like {like_name}, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} must be on {like.device} like {like_name}, got {t.device}")
    return t


def positive_scalar(value, name: str, largest: float = math.inf) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a positive scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if value > largest:
        raise ValueError(f"{name} must be at most {largest:g}, got {value:g}")
    return value


def finite(t: torch.Tensor, name: str, allow_neg_inf: bool = False) -> None:
    """Reject NaN and inf (a host synchronisation on GPU: callers can skip it with validate=False)."""
    if allow_neg_inf:
        bad = torch.isnan(t) | (t == math.inf)
    else:
        # a NaN or inf anywhere makes the sum NaN or inf, and a sum reads t once without an N x d mask; only a
        # sum that is not finite (which a huge finite value can also cause) pays for the element-wise scan
        if t.numel() > 4096 and bool(torch.isfinite(t.sum())):
            return
        bad = ~torch.isfinite(t)
    if bool(bad.any()):
        count = int(bad.sum())
        allowed = "NaN or +inf" if allow_neg_inf else "NaN or inf"
        raise ValueError(f"{name} contains {count} {allowed} value(s); expected finite numbers"
                         + (" (-inf masks a point)" if allow_neg_inf else ""))


# ---------------------------------------------------------------------------------------------- weighted losses
def _check_weight(weight, n: int, like: torch.Tensor, like_name: str) -> None:
    vector(weight, "weight", n, like, f"one weight per row of {like_name}", like_name=like_name)


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps must be a real number >= 0, got {eps!r}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def check_cross_entropy(input, target, weight, eps) -> float:
    """Shapes, dtypes and devices of a cross-entropy call (no pass over the data); returns eps as a float."""
    tensor(input, "input")
    tensor(target, "target")
    if input.dim() != 2:
        raise ValueError(f"input must be 2-D (rows x classes), got shape {tuple(input.shape)}")
    if input.dtype not in FLOAT_DTYPES:
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
    tensor(pred, "pred")
    tensor(target, "target")
    if pred.dim() not in (1, 2):
        raise ValueError(f"pred must be 1-D (rows) or 2-D (rows x outputs), got shape {tuple(pred.shape)}")
    if pred.dtype not in FLOAT_DTYPES:
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
