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
CPU interpreter under TRITON_INTERPRET=1), "torch" (the plain formulas, ops/backends/plain_torch.py). There is no
CUDA C++ kernel: on GPU "auto" picks Triton, else the plain formulas (the backend registry, ops/backends).
"""
from __future__ import annotations

import torch

from .._extension import HAS_EXTENSION
from . import backends
from ..op_checks import check_cross_entropy, check_mse, check_values  # noqa: F401 (re-exported)

__all__ = ["weighted_cross_entropy", "weighted_mse"]



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
    be = backends.resolve(backend, "weighted_cross_entropy", input.device)
    need_grad = input.requires_grad and torch.is_grad_enabled()
    if be == "cpp":
        if _CE_CPP is None:
            _missing("weighted_cross_entropy")
        return _CE_CPP(input, target, weight, from_logits, eps, validate, need_grad)[0]
    if validate and not torch.compiler.is_compiling():  # a host sync: no place in a compiled graph
        check_values(target, weight, input.shape[1])
    return backends.op_table(be).weighted_cross_entropy(input, target, weight, from_logits, eps, need_grad)[0]


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
    be = backends.resolve(backend, "weighted_mse", pred.device)
    need_grad = (pred.requires_grad or target.requires_grad) and torch.is_grad_enabled()
    if be == "cpp":
        if _MSE_CPP is None:
            _missing("weighted_mse")
        return _MSE_CPP(pred, target, weight, validate, need_grad)[0]
    if validate and not torch.compiler.is_compiling():
        check_values(target, weight, None)
    return backends.op_table(be).weighted_mse(pred, target, weight, need_grad)[0]
