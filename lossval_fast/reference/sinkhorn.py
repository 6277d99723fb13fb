"""The debiased Sinkhorn divergence, line by line as geomloss 0.3.1 computes it with backend="tensorized"
(docs/algorithms.md §2), on materialised costs, with gradients by autograd through the same detaches.

    S = <a, F - FA> + <b, G - GB>            (debias=True)
    S = <a, F> + <b, G>                      (debias=False)
"""
from __future__ import annotations

import torch

from ..sinkhorn_loop import epsilon_schedule, log_weights, max_diameter, sinkhorn_loop
from .pairwise import half_sqdist


def _softmin(eps, cost, h):
    return -eps * (h[None, :] - cost / eps).logsumexp(1)


def sinkhorn_potentials(a, x, b, y, *, blur=0.05, scaling=0.5, p=2, debias=True, diameter=None):
    """(F, G, FA, GB, eps_list): the final extrapolated potentials, as geomloss' sinkhorn_loop returns them.

    The package's one loop (lossval_fast.sinkhorn_loop) on the four materialised costs: the updates without
    gradients, the final extrapolation with the cost's gradient and detached biases (the envelope theorem)."""
    if p != 2:
        raise ValueError(f"p must be 2 (the half squared Euclidean cost), got {p}")
    costs = {"xy": half_sqdist(x, y.detach()), "yx": half_sqdist(y, x.detach())}
    if debias:
        costs["xx"], costs["yy"] = half_sqdist(x, x.detach()), half_sqdist(y, y.detach())
    if diameter is None:
        diameter = max_diameter(x.detach(), y.detach())
    eps_list = epsilon_schedule(p, diameter, blur, scaling)

    def softmin(kind, h, eps):
        with torch.no_grad():
            return _softmin(eps, costs[kind], h)

    def final(kind, h, eps):
        return _softmin(eps, costs[kind], h.detach())

    # log-weights in the inputs' dtype, as geomloss computes them
    a_log, b_log = log_weights(a.detach(), None), log_weights(b.detach(), None)
    F, G, FA, GB = sinkhorn_loop(softmin, a_log, b_log, eps_list, debias=debias, final=final)
    return F, G, FA, GB, eps_list


def sinkhorn_divergence(a, x, b, y, *, blur=0.05, scaling=0.5, p=2, debias=True, diameter=None,
                        normalize=False):
    """S(a, x; b, y) for one pair of weighted point clouds (a: (N,), x: (N, d), b: (M,), y: (M, d))."""
    if normalize:
        a, b = a / a.sum(), b / b.sum()
    F, G, FA, GB, _ = sinkhorn_potentials(a, x, b, y, blur=blur, scaling=scaling, p=p, debias=debias,
                                          diameter=diameter)
    if debias:
        return torch.dot(a, F - FA) + torch.dot(b, G - GB)
    return torch.dot(a, F) + torch.dot(b, G)


__all__ = ["sinkhorn_divergence", "sinkhorn_potentials", "epsilon_schedule", "max_diameter", "log_weights"]
