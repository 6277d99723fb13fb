"""EcoVal's propagation of cluster values to points (ECOVAL_SPEC §2.5):

    phi_k = Gamma_beta * V_c(k) * w_k,   w_k = s_k / sum_{l in C_c(k)} s_l,   s_k = max(g_k, eps)^gamma

with g_k the agreement of the models trained without k's cluster (or of the kNN labels, or 1). The functions
take the fitted estimator and set its attributes (agreement_, intrinsic_, weights_, values_)."""
from __future__ import annotations

import math

import numpy as np
import torch


def _mean_rows(table: np.ndarray) -> np.ndarray:
    """Mean over the first axis, summed in order (the same bits for in-sample and out-of-sample uses)."""
    total = table[0].copy()
    for row in table[1:]:
        total = total + row
    return total / table.shape[0]


def _scores(g: np.ndarray, eps: float, gamma: float, negative) -> np.ndarray:
    """s = max(g, eps)^gamma, or max(1 - g, eps)^gamma where the cluster value is negative (math.pow per point,
    so that a point scores the same bits in fit and in value)."""
    negative = np.broadcast_to(np.asarray(negative, dtype=bool), g.shape)
    return np.array([math.pow(max(1.0 - v, eps), gamma) if neg else math.pow(max(v, eps), gamma)
                     for v, neg in zip(g.tolist(), negative.tolist())], dtype=np.float64)


def agreement_in_sample(est, y_code, y):
    n = len(est.cluster_labels_)
    if est.intrinsic == "uniform":
        return np.ones(n)
    if est.intrinsic == "knn_agreement":
        return knn(est, est._Z, y_code, exclude_self=True)
    held = _mean_rows(est._heldout)
    if est.task_ == "classification":
        return held
    resid = y - held
    est._sigma2 = np.array([math.fsum((resid[rows] ** 2).tolist()) / len(rows) for rows in est._members])
    est._var_y = float(np.var(y))
    return residual_agreement(est, resid, est.cluster_labels_)


def residual_agreement(est, resid, clusters):
    out = np.ones(len(resid))
    for k, (r, c) in enumerate(zip(resid.tolist(), clusters.tolist())):
        s2 = est._sigma2[c]
        if s2 > 1e-12 * est._var_y:
            out[k] = math.exp(-r * r / (2.0 * s2))
    return out


def knn(est, Zq, codes, exclude_self):
    Zt = torch.as_tensor(est._Z, dtype=torch.float64)
    q = torch.as_tensor(Zq, dtype=torch.float64)
    yt = torch.as_tensor(est._y_code)
    n = Zt.shape[0]
    K = min(est.knn_k, n - 1 if exclude_self else n)
    if K < 1:
        return np.ones(len(Zq))
    out = np.empty(len(Zq))
    block = max(1, (1 << 22) // max(n, 1))
    tn = (Zt * Zt).sum(1)
    for start in range(0, len(Zq), block):
        xb = q[start:start + block]
        d2 = (xb * xb).sum(1)[:, None] + tn[None, :] - 2.0 * xb @ Zt.T
        if exclude_self:
            rows = torch.arange(start, start + xb.shape[0])
            d2[torch.arange(xb.shape[0]), rows] = float("inf")
        idx = torch.topk(d2, K, dim=1, largest=False, sorted=True).indices
        same = (yt[idx] == torch.as_tensor(codes[start:start + xb.shape[0]])[:, None]).double().mean(1)
        out[start:start + xb.shape[0]] = same.numpy()
    return out


def propagate(est, labels, members, y_code, y):
    g = agreement_in_sample(est, y_code, y)
    est.intrinsic_ = _scores(g, est.eps, est.gamma, False)
    negative = est.cluster_values_ < 0
    scores = _scores(g, est.eps, est.gamma, negative[labels])
    est._score_sum = np.array([math.fsum(scores[rows].tolist()) for rows in members])
    est.agreement_ = g
    est.weights_ = scores / est._score_sum[labels]
    est.values_ = (est.cluster_values_[labels] * scores) / est._score_sum[labels]
