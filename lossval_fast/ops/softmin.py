"""The softmin flavour of the pairwise primitive and its stored-cost mode.

    softmin(x, y, h, eps)_i = -eps log sum_j exp(h_j - C_ij / eps),   C_ij = ½|x_i - y_j|²

Online (default): tiles over y with a running max and sum, O((N + M) d) memory, no N x M matrix.
Stored: C is built once with one GEMM (``half_sqdist``) and later passes only read it; worth it when many passes
reuse the same cost (Sinkhorn iterations) and N·M fits the memory budget.
"""
from __future__ import annotations

import torch

from .. import op_checks
from . import backends
from .memory import choose_cost_mode

__all__ = ["pairwise_softmin", "softmin_barycenter", "plan_colsum", "softmin_stored", "half_sqdist"]


def _check(x, y, h, eps, validate):
    x, y = op_checks.pair(x, y)
    h = op_checks.vector(h, "h", y.shape[0], x, "one bias per row of y")
    eps = op_checks.positive_scalar(eps, "eps")
    if validate:
        op_checks.finite(x, "x")
        op_checks.finite(y, "y")
        op_checks.finite(h, "h", allow_neg_inf=True)
    return x, y, h, eps


def half_sqdist(x: torch.Tensor, y: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """The stored cost C_ij = ½|x_i - y_j|² (N x M), built with one GEMM.

    Both clouds are centred on the same point first (the mean of y unless `center` is given): the cost is
    translation invariant and the dot products of centred points lose less to float32 rounding.
    """
    x, y = op_checks.pair(x, y)
    c = y.mean(0) if center is None else center
    xc, yc = x - c, y - c
    norms = 0.5 * xc.pow(2).sum(1)[:, None] + 0.5 * yc.pow(2).sum(1)[None, :]
    return torch.addmm(norms, xc, yc.T, alpha=-1)


def softmin_stored(cost: torch.Tensor, h: torch.Tensor, eps: float, *, backend: str = "auto",
                   validate: bool = True) -> torch.Tensor:
    """softmin over a stored cost: -eps log sum_j exp(h_j - cost_ij / eps) for every row i (autograd: cost, h)."""
    cost = op_checks.points(cost, "cost")
    h = op_checks.vector(h, "h", cost.shape[1], cost, "one bias per column of cost")
    eps = op_checks.positive_scalar(eps, "eps")
    if validate:
        op_checks.finite(cost, "cost")
        op_checks.finite(h, "h", allow_neg_inf=True)
    be = backends.resolve(backend, "softmin_stored", cost.device)
    return backends.op_table(be).softmin_stored(cost, h, eps)


def pairwise_softmin(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, eps: float, *, cost="auto",
                     memory_budget: int | None = None, backend: str = "auto",
                     validate: bool = True) -> torch.Tensor:
    """softmin_i = -eps log sum_j exp(h_j - ½|x_i - y_j|² / eps) for every row of x.

    Parameters
    ----------
    x : (N, d) tensor; y : (M, d) tensor, same dtype (float32 or float64) and device.
    h : (M,) tensor of biases (log-weights plus potential / eps); -inf or -1e5 masks a point.
    eps : float > 0, the temperature.
    cost : "auto" | "online" | "stored" | (N, M) tensor
        "online" never forms the N x M cost; "stored" builds it with one GEMM first (only if it fits
        `memory_budget` bytes); a tensor is used as the stored cost (see ``half_sqdist``). "auto" picks by the
        memory budget and the work: for one pass the online kernel wins.
    backend : "auto" | "cpp" | "cuda" | "triton" | "torch".
    validate : check x, y, h for NaN/inf (a host synchronisation on GPU).

    Differentiable with respect to x, y and h (envelope formulas, no N x M matrix in the online mode).
    """
    x, y, h, eps = _check(x, y, h, eps, validate)
    if isinstance(cost, torch.Tensor):
        if cost.shape != (x.shape[0], y.shape[0]):
            raise ValueError(f"cost must have shape ({x.shape[0]}, {y.shape[0]}) (rows of x by rows of y), "
                             f"got {tuple(cost.shape)}")
        return softmin_stored(cost, h, eps, backend=backend, validate=False)
    mode = choose_cost_mode(cost, x.shape[0], y.shape[0], x.shape[1], x.element_size(), x.device,
                            passes=1, memory_budget=memory_budget)
    if mode == "stored":
        return softmin_stored(half_sqdist(x, y), h, eps, backend=backend, validate=False)
    be = backends.resolve(backend, "softmin", x.device)
    return backends.op_table(be).softmin(x, y, h, eps)


def softmin_barycenter(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, eps: float, *, backend: str = "auto",
                       validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmin, barycentre) in one online pass: barycentre_i = sum_j P_ij y_j with
    P_ij = exp(h_j - C_ij / eps + softmin_i / eps), whose rows sum to 1. The gradient of softmin_i with respect
    to x_i is x_i - barycentre_i."""
    x, y, h, eps = _check(x, y, h, eps, validate)
    be = backends.resolve(backend, "softmin_barycenter", x.device)
    return backends.op_table(be).softmin_barycenter(x, y, h, eps)


def plan_colsum(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, f: torch.Tensor, weight: torch.Tensor,
                eps: float, *, backend: str = "auto", validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Column sums of a known plan P_ij = exp(h_j + f_i / eps - C_ij / eps) (f = softmin(x, y, h, eps)):
    s_j = sum_i w_i P_ij and sx_j = sum_i w_i P_ij x_i, for signed weights w. Gradient building block."""
    x, y, h, eps = _check(x, y, h, eps, validate)
    f = op_checks.vector(f, "f", x.shape[0], x, "one potential per row of x")
    weight = op_checks.vector(weight, "weight", x.shape[0], x, "one weight per row of x")
    be = backends.resolve(backend, "plan_colsum", x.device)
    return backends.op_table(be).plan_colsum(x, y, h, f, weight, eps)
