"""The pairwise primitive written the plain way, on the materialised N x M cost C_ij = ½|x_i - y_j|².

The cost is expanded as geomloss computes it, (|x|² - 2 x.y + |y|²) / 2, without clamping.
"""
from __future__ import annotations

import torch


def half_sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C_ij = ½|x_i - y_j|² (N x M), expanded form."""
    return (x.pow(2).sum(-1)[:, None] - 2 * x @ y.T + y.pow(2).sum(-1)[None, :]) / 2


def softmin_stored(cost: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """-eps log sum_j exp(h_j - cost_ij / eps) for every row i."""
    return -eps * torch.logsumexp(h[None, :] - cost / eps, dim=1)


def softmin(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """-eps log sum_j exp(h_j - ½|x_i - y_j|² / eps) for every row i of x."""
    return softmin_stored(half_sqdist(x, y), h, eps)


def softmin_barycenter(x, y, h, eps):
    """(softmin, sum_j P_ij y_j) with P_ij = softmax_j(h_j - C_ij / eps): each row of P sums to 1."""
    logits = h[None, :] - half_sqdist(x, y) / eps
    return -eps * torch.logsumexp(logits, dim=1), torch.softmax(logits, dim=1) @ y


def plan_colsum(x, y, h, f, weight, eps):
    """s_j = sum_i w_i P_ij and sx_j = sum_i w_i P_ij x_i with P_ij = exp(h_j + f_i / eps - C_ij / eps)."""
    plan = torch.exp(h[None, :] + f[:, None] / eps - half_sqdist(x, y) / eps)
    weighted = weight[:, None] * plan
    return weighted.sum(0), weighted.T @ x


def nearest(x, y, accumulate: bool = False):
    """(index, squared distance) of the nearest row of y (first on ties); with accumulate, the sum of the rows
    of x assigned to each row of y and their counts."""
    sq = (x.pow(2).sum(-1)[:, None] - 2 * x @ y.T + y.pow(2).sum(-1)[None, :]).clamp_min(0)
    dist, index = sq.min(dim=1)
    if not accumulate:
        return index, dist, x.new_zeros((0, x.shape[1])), index.new_zeros((0,))
    sums = x.new_zeros((y.shape[0], x.shape[1])).index_add_(0, index, x)
    counts = torch.bincount(index, minlength=y.shape[0])
    return index, dist, sums, counts
