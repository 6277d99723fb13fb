"""Input checks shared by the public ops: every message names the argument, what was seen and what was expected."""
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


def vector(value, name: str, length: int, like: torch.Tensor, what: str) -> torch.Tensor:
    t = tensor(value, name)
    if t.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) ({what}), got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise ValueError(f"{name} must have dtype {like.dtype} like the points, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} must be on {like.device} like the points, got {t.device}")
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
