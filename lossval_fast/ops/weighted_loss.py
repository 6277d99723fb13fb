"""LossVal's weighted training losses, fused: the scalar sum_i w_i l_i with the gradients for the input and the
weights formed in the same pass (the forward keeps l_i and the factor G_ik = w_i dl_i/d input_ik, so backward is
two scalings).

    weighted_cross_entropy:  l_i = -sum_k t_ik log(p_ik + eps)       (from_logits=False: probabilities, the
                                                                       reference LossVal code's log(p + 1e-8))
                             l_i = -sum_k t_ik log_softmax(z)_ik     (from_logits=True, no eps)
    weighted_mse:            l_i =  sum_k (t_ik - yhat_ik)^2         (sum over output dims)

The result is a SUM over the batch, as LossVal uses it; weights are signed (LossVal weights can go negative).

Gradients: with respect to the input and the weights; also with respect to a float target (cross entropy: the
plain formula -w_i logp_ik, formed in backward only when the target requires grad; mse: -d/d pred). First-order
only: the factor G is a constant of the backward graph, so double backward through the input is not supported.

Backends: "cpp" (C++ CPU kernels, autograd in C++: the fast path for a 32-row minibatch), "triton" (GPU, or the
CPU interpreter under TRITON_INTERPRET=1), "torch" (the plain formulas of ``lossval_fast.reference``). There is no
CUDA C++ kernel: on GPU "auto" picks Triton.
"""
from __future__ import annotations

import math
import numbers

import torch

from .._extension import HAS_EXTENSION
from . import _dispatch

__all__ = ["weighted_cross_entropy", "weighted_mse"]

_FLOAT = (torch.float32, torch.float64)


def _cpp_op(name: str):
    """The C++ op, or None when the extension is missing or was built before the op existed."""
    if not HAS_EXTENSION:
        return None
    try:
        return getattr(torch.ops.lossval_fast, name).default
    except (AttributeError, RuntimeError):
        return None


_CE_CPP = _cpp_op("weighted_cross_entropy")
_MSE_CPP = _cpp_op("weighted_mse")



# ------------------------------------------------------------------------------------------------ checks
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


def _weighted_cross_entropy_fake(input, target, weight, from_logits, eps, validate, need_grad):
    # the checks of the real kernel that need no data: the fake kernel is also the meta kernel, which a call
    # with one meta argument reaches instead of the CPU kernel
    check_cross_entropy(input, target, weight, eps)
    return (input.new_empty(()), input.new_empty((input.shape[0],)),
            input.new_empty(input.shape if need_grad else (0,)))


def _weighted_mse_fake(pred, target, weight, validate, need_grad):
    check_mse(pred, target, weight)
    return (pred.new_empty(()), pred.new_empty((pred.shape[0],)),
            pred.new_empty(pred.shape if need_grad else (0,)))


# fake kernels for torch.compile / FakeTensorMode; autograd of the C++ ops is registered in C++
if _CE_CPP is not None:
    torch.library.register_fake("lossval_fast::weighted_cross_entropy")(_weighted_cross_entropy_fake)
if _MSE_CPP is not None:
    torch.library.register_fake("lossval_fast::weighted_mse")(_weighted_mse_fake)


def _resolve(backend: str, device: torch.device, op: str) -> str:
    if backend == "auto":
        be = _dispatch.auto_backend(op, device)[0]
        # no CUDA C++ kernel for these ops: without Triton the torch formulas run
        return "torch" if be == "cuda" else be
    be = _dispatch.resolve(backend, op, device)
    if be == "cuda":
        raise ValueError("backend='cuda': the weighted losses have no CUDA C++ kernel; use 'triton' or 'auto'")
    return be


_BACKENDS: dict = {}


def _backend(name: str):
    """The Triton op set or the reference module, imported on first use (TRITON_INTERPRET must be set before
    triton is imported) and cached."""
    if name not in _BACKENDS:
        if name == "triton":
            from ..triton import weighted_loss_ops
            _BACKENDS[name] = weighted_loss_ops()
        else:
            from ..reference import weighted_loss
            _BACKENDS[name] = weighted_loss
    return _BACKENDS[name]


def _missing(op: str):
    raise RuntimeError(f"the compiled extension has no lossval_fast::{op} (built before the op existed?): "
                       "rebuild with `pip install --no-build-isolation .`")


# ------------------------------------------------------------------------------------------------ public ops
def weighted_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *,
                           from_logits: bool = False, eps: float = 1e-8, backend: str = "auto",
                           validate: bool = True) -> torch.Tensor:
    """sum_i w_i l_i (a 0-d tensor), l_i the cross entropy of row i.

    Parameters
    ----------
    input : (N, C) float32/float64. Probabilities (from_logits=False: l_i = -sum_k t_ik log(p_ik + eps)) or
        logits (from_logits=True: the stable l_i = -sum_k t_ik log_softmax(z)_ik; eps is not used).
    target : (N,) int64 class indices, or an (N, C) target distribution (one-hot or soft) of input's dtype.
    weight : (N,) signed weights, input's dtype.
    eps : the constant inside the log of the probability form (LossVal: 1e-8).
    backend : "auto" | "cpp" | "triton" | "torch".
    validate : reject non-finite weights and class indices outside [0, C). The C++ kernel checks inside its
        pass at no extra cost (and rejects out-of-range indices even with validate=False: it would read outside
        the row); the other backends spend a pass and a host sync, skipped inside torch.compile, and give a NaN
        loss (triton) or an indexing error (torch) for a bad index without validate.

    Differentiable with respect to input and weight (and a float target); see the module docstring.
    """
    if (backend == "auto" and _CE_CPP is not None and isinstance(input, torch.Tensor) and input.is_cpu
            and isinstance(target, torch.Tensor) and isinstance(weight, torch.Tensor) and type(eps) is float):
        # the per-step fast path: the C++ kernel makes the checks below itself (same ValueErrors), the data ones
        # inside its single pass
        return _CE_CPP(input, target, weight, from_logits, eps, validate,
                       input.requires_grad and torch.is_grad_enabled())[0]
    eps = check_cross_entropy(input, target, weight, eps)
    be = _resolve(backend, input.device, "weighted_cross_entropy")
    need_grad = input.requires_grad and torch.is_grad_enabled()
    if be == "cpp":
        if _CE_CPP is None:
            _missing("weighted_cross_entropy")
        return _CE_CPP(input, target, weight, from_logits, eps, validate, need_grad)[0]
    if validate and not torch.compiler.is_compiling():  # a host sync: no place in a compiled graph
        check_values(target, weight, input.shape[1])
    if be == "triton":
        return _backend("triton").weighted_cross_entropy(input, target, weight, from_logits, eps, need_grad)[0]
    return _backend("torch").weighted_cross_entropy(input, target, weight, from_logits, eps)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *, backend: str = "auto",
                 validate: bool = True) -> torch.Tensor:
    """sum_i w_i sum_k (t_ik - yhat_ik)^2 (a 0-d tensor).

    pred : (N,) or (N, K) float32/float64; target : pred's shape and dtype; weight : (N,) signed, pred's dtype.
    backend : "auto" | "cpp" | "triton" | "torch". validate : reject non-finite weights.
    Differentiable with respect to pred, target and weight.
    """
    if (backend == "auto" and _MSE_CPP is not None and isinstance(pred, torch.Tensor) and pred.is_cpu
            and isinstance(target, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return _MSE_CPP(pred, target, weight, validate,
                        (pred.requires_grad or target.requires_grad) and torch.is_grad_enabled())[0]
    check_mse(pred, target, weight)
    be = _resolve(backend, pred.device, "weighted_mse")
    need_grad = (pred.requires_grad or target.requires_grad) and torch.is_grad_enabled()
    if be == "cpp":
        if _MSE_CPP is None:
            _missing("weighted_mse")
        return _MSE_CPP(pred, target, weight, validate, need_grad)[0]
    if validate and not torch.compiler.is_compiling():
        check_values(target, weight, None)
    if be == "triton":
        return _backend("triton").weighted_mse(pred, target, weight, need_grad)[0]
    return _backend("torch").weighted_mse(pred, target, weight)
