"""LossVal's weighted losses written the plain way (autograd through torch): the oracle of the fused ops.

    cross entropy:  l_i = -sum_k t_ik log(p_ik + eps)          (probabilities, LossVal's `log(p + 1e-8)`)
                    l_i = -sum_k t_ik log_softmax(z)_ik         (logits)
    mse:            l_i =  sum_k (t_ik - yhat_ik)^2             (sum over output dims)
    loss         =  sum_i w_i l_i                               (a SUM over the batch)

A target of int64 class indices picks one entry per row (a gather: other entries of the row do not enter).
"""
from __future__ import annotations

import torch


def cross_entropy_rows(input: torch.Tensor, target: torch.Tensor, from_logits: bool = False,
                       eps: float = 1e-8) -> torch.Tensor:
    """Per-row losses l_i (N,)."""
    logp = torch.log_softmax(input, dim=1) if from_logits else torch.log(input + eps)
    if target.dtype == torch.int64:
        return -logp.gather(1, target[:, None])[:, 0]
    return -(target * logp).sum(1)


def weighted_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                           from_logits: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """sum_i w_i l_i (0-d) for probabilities (from_logits=False) or logits; target: (N,) int64 or (N, C)."""
    return (weight * cross_entropy_rows(input, target, from_logits, eps)).sum()


def mse_rows(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row losses l_i (N,) for pred and target of shape (N,) or (N, K)."""
    sq = (target - pred) ** 2
    return sq.sum(1) if sq.dim() == 2 else sq


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_i w_i sum_k (t_ik - yhat_ik)^2 (0-d)."""
    return (weight * mse_rows(pred, target)).sum()
