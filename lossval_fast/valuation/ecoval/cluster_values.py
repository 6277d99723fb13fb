"""EcoVal's cluster values (docs/ecoval.md §3) from the mean utilities over the repeats:

    a_i  = U(N) - U(N\\{i})                       lco_
    e_ij = U(N) - U(N\\{i,j}) - a_i - a_j         interactions_
    V_i  = a_i + lam * 1/2 sum_j e_ij             (Variant A; Variant B fits a Cobb-Douglas g = log A + sum b_i s_i)
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .inputs import EcoValWarning
from .propagation import _mean_rows

CLIP = 1e-6            # Variant B: U <= 0 of a positive metric is clipped here before the log


def cluster_values(utilities, removed, pair_list, p, *, u0, lam, cluster_value, efficiency, metric) -> dict:
    """utilities (R, S), removal masks (S, p), the pairs -> the fitted attributes utility_full_, lco_,
    interactions_, cluster_values_, extrinsic_, beta_star_, gamma_beta_star_ (a dict by attribute name)."""
    U = _mean_rows(utilities)
    UN = float(U[0])
    a = UN - U[1:1 + p]
    e = np.full((p, p), np.nan)
    np.fill_diagonal(e, 0.0)
    partners = [[] for _ in range(p)]
    for q, (i, j) in enumerate(pair_list):
        e[i, j] = e[j, i] = UN - U[1 + p + q] - a[i] - a[j]
        partners[i].append(j)
        partners[j].append(i)
    x = np.array([0.5 * (p - 1) * float(np.mean([e[i, j] for j in partners[i]])) if partners[i] else 0.0
                  for i in range(p)])
    out = {"utility_full_": UN, "lco_": a, "interactions_": e}
    target = UN - u0
    if cluster_value == "pairwise_shapley":
        extrinsic = lam * x
        V = a + extrinsic
        gamma = 1.0
        if efficiency == "global":
            total = math.fsum(V.tolist())
            if abs(total) > 1e-12 and np.sign(total) == np.sign(target) and target != 0:
                gamma = target / total
            else:
                warnings.warn(f"efficiency='global' skipped: the cluster values sum to {total:.3g} and "
                              f"U(N) - u0 = {target:.3g} (need the same sign and |sum| > 1e-12); Gamma_beta = 1",
                              EcoValWarning, stacklevel=3)
        out["cluster_values_"] = V if gamma == 1.0 else gamma * V
        out["extrinsic_"] = extrinsic
        with np.errstate(divide="ignore", invalid="ignore"):
            out["beta_star_"] = np.where(np.abs(a) > 1e-12, V / np.where(np.abs(a) > 1e-12, a, 1.0), np.nan)
    else:
        if metric == "log_likelihood":
            g = U.copy()
        else:
            if (U <= 0).any():
                warnings.warn(f"{int((U <= 0).sum())} utilities <= 0 clipped to {CLIP} before the log "
                              "(cluster_value='cobb_douglas' with a positive metric)", EcoValWarning,
                              stacklevel=3)
            g = np.log(np.maximum(U, CLIP))
        design = np.concatenate([np.ones((len(U), 1)), (~removed).astype(np.float64)], 1)
        coef = np.linalg.lstsq(design, g, rcond=None)[0]
        beta = coef[1:]
        total = math.fsum(beta.tolist())
        if total > 0:
            gamma = 1.0 / total
        else:
            warnings.warn(f"cluster_value='cobb_douglas': the elasticities sum to {total:.3g} <= 0; "
                          "Gamma_beta = 1 (no constant-returns correction)", EcoValWarning, stacklevel=3)
            gamma = 1.0
        out["cluster_values_"] = gamma * (beta * target)
        out["extrinsic_"] = out["cluster_values_"] - a
        out["beta_star_"] = beta
    out["gamma_beta_star_"] = float(gamma)
    return out


def cluster_value_se(utility_points, pair_list, p, *, lam, scale=1.0) -> np.ndarray:
    """Standard errors (p,) of Variant A's cluster values over the validation points: U is a mean over the m
    validation points, and V_i is linear in U, so V_i is the mean over v of the same formula applied to the
    per-point utilities u_v (R, S, m) (repeats averaged first); se_i = std_v V_i(v) / sqrt(m). scale is the
    efficiency factor Gamma_beta applied to the values. NaN for all when the utilities are not per point
    (a callable metric) or there is only one validation point."""
    if utility_points is None or utility_points.shape[-1] < 2:
        return np.full(p, np.nan)
    u = _mean_rows(np.asarray(utility_points, dtype=np.float64))           # (S, m)
    m = u.shape[1]
    a = u[0][None, :] - u[1:1 + p]                                          # (p, m)
    total = np.zeros_like(a)
    count = np.zeros(p)
    for q, (i, j) in enumerate(pair_list):
        e = u[0] - u[1 + p + q] - a[i] - a[j]
        total[i] += e
        total[j] += e
        count[i] += 1
        count[j] += 1
    x = np.where(count[:, None] > 0, 0.5 * (p - 1) * total / np.maximum(count, 1)[:, None], 0.0)
    V = scale * (a + lam * x)
    return V.std(1, ddof=1) / math.sqrt(m)
