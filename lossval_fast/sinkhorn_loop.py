"""The one Sinkhorn ε-loop, given a softmin: geomloss' ``sinkhorn_loop`` semantics (docs/algorithms.md §2).

Every Python Sinkhorn in the package runs this loop: the reference (materialised costs, autograd), the ops on a
backend's kernels (Triton, or the compiled softmin), and the rank-sharded LossVal divergence (its x <- Y softmin
combines the ranks' partial log-sum-exps). Each supplies only

    softmin(kind, h, eps) = -eps log Σ_j exp(h_j - C_ij / eps)     over the points of the kind's second cloud

with kind "xy" (a potential on x from a bias on y), "yx", "xx" or "yy", and, where the final extrapolation differs
(barycentres, autograd, a collective), a ``final`` of the same signature. The C++ loop
(csrc/cpu/sinkhorn_cpu.cpp, ``sinkhorn_one``) is the same loop compiled for speed and is tested against this one.

This module is a leaf: it imports nothing from the package.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["log_weights", "epsilon_schedule", "max_diameter", "sinkhorn_loop", "self_potential"]

# log-weight of a point with weight <= 0: it leaves the updates but still enters the final linear term (geomloss)
MASKED_LOG_WEIGHT = -1e5


def log_weights(w: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """log(w), with -1e5 where w <= 0, in `dtype` (float64 by default: the compiled loops keep their potentials in
    double; None keeps w's dtype, as geomloss does)."""
    if dtype is not None:
        w = w.to(dtype)
    return torch.where(w > 0, w.clamp_min(torch.finfo(w.dtype).tiny).log(),
                       torch.full_like(w, MASKED_LOG_WEIGHT))


def epsilon_schedule(p: int, diameter: float, blur: float, scaling: float) -> list[float]:
    """geomloss' schedule: [d^p] + [exp(e) for e in arange(p ln d, p ln blur, p ln scaling)] + [blur^p].
    The first value appears twice (once to initialise, once in the loop); ceil(log(d/blur)/log(1/scaling)) + 2
    entries in all. numpy.arange's rule (length ceil((stop - start) / step), values start + i * delta with
    delta = (start + step) - start) is reproduced with math, which is ~20x cheaper per call."""
    start, stop, step = p * math.log(diameter), p * math.log(blur), p * math.log(scaling)
    count = max(0, math.ceil((stop - start) / step))
    delta = (start + step) - start
    return [diameter**p] + [math.exp(start + i * delta) for i in range(count)] + [blur**p]


def max_diameter(x: torch.Tensor, y: torch.Tensor) -> float:
    """Diagonal of the bounding box of both clouds, over every batch item (geomloss' default diameter)."""
    d = x.shape[-1]
    x, y = x.reshape(-1, d), y.reshape(-1, d)
    mins = torch.minimum(x.min(0).values, y.min(0).values)
    maxs = torch.maximum(x.max(0).values, y.max(0).values)
    return float((maxs - mins).norm())


Softmin = Callable[[str, torch.Tensor, float], object]


def self_potential(softmin: Callable[[torch.Tensor, float], torch.Tensor], log_w: torch.Tensor,
                   eps_list: list[float], final: Callable | None = None):
    """The debiasing potential of one cloud against itself (FA or GB): symmetric averaged updates over the
    schedule, then the extrapolation at the last ε with `final` (default: softmin)."""
    eps = eps_list[0]
    f = softmin(log_w, eps)
    for eps in eps_list:
        f = 0.5 * (f + softmin(log_w + f / eps, eps))
    return (final or softmin)(log_w + f / eps, eps)


def sinkhorn_loop(softmin: Softmin, a_log: torch.Tensor, b_log: torch.Tensor, eps_list: list[float], *,
                  debias: bool = True, fa=None, gb=None, final: Softmin | None = None):
    """(F, G, FA, GB): the potentials after geomloss' ε schedule and the final extrapolation at ε = eps_list[-1].

    The x-y pair is updated symmetrically (both new potentials from the old ones, then averaged); with `debias`,
    FA and GB come from ``self_potential`` (their recursions do not involve the pair). `gb`, when given, is a known
    GB (cached: it depends only on b, y and the schedule) and the y-y loop is skipped; `fa` likewise (computed by
    a compiled self-potential loop, say). `final(kind, h, eps)` makes
    the last pass; it is called in the order "yx", "xy", "xx", "yy" (a sharded final may carry G's sum into the
    collective of F) and its results are returned as they are. Without `debias`, FA and GB are None.
    """
    final = final or softmin
    eps = eps_list[0]
    g_ab, f_ba = softmin("yx", a_log, eps), softmin("xy", b_log, eps)
    for eps in eps_list:
        ft_ba, gt_ab = softmin("xy", b_log + g_ab / eps, eps), softmin("yx", a_log + f_ba / eps, eps)
        f_ba, g_ab = 0.5 * (f_ba + ft_ba), 0.5 * (g_ab + gt_ab)
    G = final("yx", a_log + f_ba / eps, eps)
    F = final("xy", b_log + g_ab / eps, eps)
    if not debias:
        return F, G, None, None
    if fa is None:
        fa = self_potential(lambda h, e: softmin("xx", h, e), a_log, eps_list, lambda h, e: final("xx", h, e))
    if gb is None:
        gb = self_potential(lambda h, e: softmin("yy", h, e), b_log, eps_list, lambda h, e: final("yy", h, e))
    return F, G, fa, gb
