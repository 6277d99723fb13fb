"""Plain PyTorch on any device, differentiated by autograd (twice if asked): the fallback where no kernel can run,
and `backend="torch"`. Apart from lossval_fast.reference (the tests' oracles, which materialise whole N x M
matrices): a forward pass here works on row blocks of x, at most BLOCK_ELEMENTS entries of a cost matrix at a time;
a backward through autograd keeps the blocks it needs."""
from __future__ import annotations

import types

import torch
import torch.nn.functional as functional

from ...sinkhorn_loop import log_weights, sinkhorn_loop
from .registry import OPS, Backend, register

BLOCK_ELEMENTS = 1 << 22   # 32 MiB of float64 cost per block


def _row_blocks(x: torch.Tensor, m: int):
    step = max(1, BLOCK_ELEMENTS // max(m, 1))
    return [x[i:i + step] for i in range(0, x.shape[0], step)] or [x]


def _cost(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """½|r_i - c_j|², expanded as geomloss expands it (|r|² - 2 r.c + |c|²) / 2, without clamping."""
    return torch.addmm(rows.pow(2).sum(-1)[:, None] + cols.pow(2).sum(-1)[None, :], rows, cols.T, alpha=-2) / 2


def softmin(x, y, h, eps):
    return torch.cat([-eps * torch.logsumexp(h[None, :] - _cost(block, y) / eps, dim=1)
                      for block in _row_blocks(x, y.shape[0])])


def softmin_barycenter(x, y, h, eps):
    values, barycenters = [], []
    for block in _row_blocks(x, y.shape[0]):
        logits = h[None, :] - _cost(block, y) / eps
        values.append(-eps * torch.logsumexp(logits, dim=1))
        barycenters.append(torch.softmax(logits, dim=1) @ y)
    return torch.cat(values), torch.cat(barycenters)


def plan_colsum(x, y, h, f, weight, eps):
    s, sx, start = y.new_zeros(y.shape[0]), y.new_zeros(y.shape), 0
    for block in _row_blocks(x, y.shape[0]):
        stop = start + block.shape[0]
        weighted = weight[start:stop, None] * torch.exp(h[None, :] + f[start:stop, None] / eps
                                                        - _cost(block, y) / eps)
        s, sx, start = s + weighted.sum(0), sx + weighted.T @ block, stop
    return s, sx


def nearest(x, y, accumulate=False):
    dist, index = [], []
    for block in _row_blocks(x, y.shape[0]):
        d, i = (2 * _cost(block, y)).clamp_min(0).min(dim=1)   # the first index on ties
        dist.append(d)
        index.append(i)
    dist, index = torch.cat(dist), torch.cat(index)
    if not accumulate:
        return index, dist, x.new_zeros((0, x.shape[1])), index.new_zeros((0,))
    sums = x.new_zeros((y.shape[0], x.shape[1])).index_add_(0, index, x)
    return index, dist, sums, torch.bincount(index, minlength=y.shape[0])


def softmin_stored(cost, h, eps):
    return torch.cat([-eps * torch.logsumexp(h[None, :] - block / eps, dim=1)
                      for block in _row_blocks(cost, cost.shape[1])])


def weighted_cross_entropy(input, target, weight, from_logits, eps, need_grad):
    """(Σ_i w_i l_i,): l_i the cross entropy of row i against class indices or a distribution."""
    log_p = functional.log_softmax(input, dim=1) if from_logits else torch.log(input + eps)
    if target.dtype == torch.int64:
        rows = functional.nll_loss(log_p, target, reduction="none")
    else:
        rows = -(target * log_p).sum(dim=1)
    return (torch.dot(weight, rows),)


def weighted_mse(pred, target, weight, need_grad):
    """(Σ_i w_i Σ_k (t_ik - p_ik)²,)."""
    rows = (target - pred).pow(2).reshape(pred.shape[0], -1).sum(dim=1)
    return (torch.dot(weight, rows),)


def sinkhorn_divergence(a, x, b, y, eps_list, debias):
    """S(a, x; b, y) with geomloss' tensorized semantics: the loop's potentials are constants (the envelope
    theorem), the final extrapolation's cost is differentiated in x and y by autograd, twice if asked."""
    clouds = {"xy": (x, y), "yx": (y, x), "xx": (x, x), "yy": (y, y)}

    def loop_softmin(kind, h, eps):
        rows, cols = clouds[kind]
        with torch.no_grad():
            return softmin(rows.detach(), cols.detach(), h, eps)

    def final(kind, h, eps):
        rows, cols = clouds[kind]
        return softmin(rows, cols.detach(), h.detach(), eps)

    # log-weights in the inputs' dtype, as geomloss computes them
    F, G, FA, GB = sinkhorn_loop(loop_softmin, log_weights(a.detach(), None), log_weights(b.detach(), None),
                                 eps_list, debias=debias, final=final)
    if debias:
        return torch.dot(a, F - FA) + torch.dot(b, G - GB)
    return torch.dot(a, F) + torch.dot(b, G)


BACKEND = register(Backend(
    name="torch", runs_on=("*",), where="any", auto_on=("*",), priority={op: 0 for op in OPS},
    available=lambda: True, unavailable=lambda: None,
    load=lambda: types.SimpleNamespace(softmin=softmin, softmin_barycenter=softmin_barycenter,
                                       plan_colsum=plan_colsum, nearest=nearest, softmin_stored=softmin_stored,
                                       weighted_cross_entropy=weighted_cross_entropy, weighted_mse=weighted_mse,
                                       sinkhorn_divergence=sinkhorn_divergence),
    describe="plain torch"))
