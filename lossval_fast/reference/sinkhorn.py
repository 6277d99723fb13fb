"""The debiased Sinkhorn divergence, line by line as geomloss 0.3.1 computes it with backend="tensorized"
(shared/docs/LOSSVAL_SPEC.md §2), on materialised costs, with gradients by autograd through the same detaches.

    S = <a, F - FA> + <b, G - GB>            (debias=True)
    S = <a, F> + <b, G>                      (debias=False)
"""
from __future__ import annotations

import numpy as np
import torch

from .pairwise import half_sqdist


def log_weights(a: torch.Tensor) -> torch.Tensor:
    """log(a), with -1e5 where a <= 0 (such points still enter the final linear term)."""
    a_log = a.log()
    a_log[a <= 0] = -100000
    return a_log


def max_diameter(x: torch.Tensor, y: torch.Tensor) -> float:
    """Diagonal of the bounding box of both clouds (geomloss' default diameter)."""
    mins = torch.stack((x.min(dim=0)[0], y.min(dim=0)[0])).min(dim=0)[0]
    maxs = torch.stack((x.max(dim=0)[0], y.max(dim=0)[0])).max(dim=0)[0]
    return (maxs - mins).norm().item()


def epsilon_schedule(p: int, diameter: float, blur: float, scaling: float) -> list[float]:
    """[d^p] + [exp(e) for e in arange(p ln d, p ln blur, p ln scaling)] + [blur^p]: the first value repeats.
    (geomloss' own code, numpy included.)"""
    return ([diameter**p]
            + [np.exp(e) for e in np.arange(p * np.log(diameter), p * np.log(blur), p * np.log(scaling))]
            + [blur**p])


def _softmin(eps, cost, h):
    return -eps * (h[None, :] - cost / eps).logsumexp(1)


def sinkhorn_potentials(a, x, b, y, *, blur=0.05, scaling=0.5, p=2, debias=True, diameter=None):
    """(F, G, FA, GB, eps_list): the final extrapolated potentials, as geomloss' sinkhorn_loop returns them."""
    if p != 2:
        raise ValueError(f"p must be 2 (the half squared Euclidean cost), got {p}")
    C_xy, C_yx = half_sqdist(x, y.detach()), half_sqdist(y, x.detach())
    C_xx = half_sqdist(x, x.detach()) if debias else None
    C_yy = half_sqdist(y, y.detach()) if debias else None
    if diameter is None:
        diameter = max_diameter(x.detach(), y.detach())
    eps_list = epsilon_schedule(p, diameter, blur, scaling)
    a_log, b_log = log_weights(a), log_weights(b)
    with torch.no_grad():
        eps = eps_list[0]
        g_ab = _softmin(eps, C_yx, a_log)
        f_ba = _softmin(eps, C_xy, b_log)
        if debias:
            f_aa = _softmin(eps, C_xx, a_log)
            g_bb = _softmin(eps, C_yy, b_log)
        for eps in eps_list:
            ft_ba = _softmin(eps, C_xy, b_log + g_ab / eps)
            gt_ab = _softmin(eps, C_yx, a_log + f_ba / eps)
            if debias:
                ft_aa = _softmin(eps, C_xx, a_log + f_aa / eps)
                gt_bb = _softmin(eps, C_yy, b_log + g_bb / eps)
            f_ba, g_ab = 0.5 * (f_ba + ft_ba), 0.5 * (g_ab + gt_ab)
            if debias:
                f_aa, g_bb = 0.5 * (f_aa + ft_aa), 0.5 * (g_bb + gt_bb)
    # final extrapolation at eps = blur^p, from the old potentials, inputs detached (envelope theorem)
    F, G = (_softmin(eps, C_xy, (b_log + g_ab / eps).detach()),
            _softmin(eps, C_yx, (a_log + f_ba / eps).detach()))
    FA = _softmin(eps, C_xx, (a_log + f_aa / eps).detach()) if debias else None
    GB = _softmin(eps, C_yy, (b_log + g_bb / eps).detach()) if debias else None
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
