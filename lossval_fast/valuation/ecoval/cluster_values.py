"""EcoVal's cluster values (docs/ecoval.md §3) from the mean utilities over the repeats:

    a_i  = U(N) - U(N\\{i})                       lco_
    e_ij = U(N) - U(N\\{i,j}) - a_i - a_j         interactions_
    V_i  = a_i + lam * 1/2 sum_j e_ij + k_i      (Variant A; Variant B fits a Cobb-Douglas g = log A + sum b_i s_i)

k_i (classification) is the Shapley value of the one-class rule the utility obeys (a subset with fewer than two
classes scores u0): V is the Shapley value of the pairwise-truncated game with that rule (docs/ecoval.md §3, §3.2).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .inputs import EcoValWarning
from .propagation import _mean_rows

CLIP = 1e-6            # Variant B: U <= 0 of a positive metric is clipped here before the log


def pure_groups(cluster_classes) -> np.ndarray | None:
    """(p,) the class of each cluster that holds a single class, -1 for clusters holding several; None when no
    subset can hold fewer than two classes (regression, or every cluster mixed)."""
    if cluster_classes is None:
        return None
    one = cluster_classes.sum(1) == 1
    if not one.any():
        return None
    return np.where(one, cluster_classes.argmax(1), -1)


def interaction_sums(e_pairs, pair_list, p, groups):
    """From the interactions of the trained pairs e_pairs (P, *t): rowsum (p, *t) = the estimate of sum_{j != i}
    e_ij, (p - 1) times the mean over i's trained partners (0 without partners), and ingroup (p, *t) = the same over
    the partners j in i's single-class group (groups[j] == groups[i] >= 0; the mean of all i's partners stands in
    when none of them is), times |group| - 1. With all pairs both are exact sums."""
    shape = (p,) + e_pairs.shape[1:]
    total, count = np.zeros(shape), np.zeros(p)
    same_total, same_count = np.zeros(shape), np.zeros(p)
    for q, (i, j) in enumerate(pair_list):
        total[i] += e_pairs[q]
        total[j] += e_pairs[q]
        count[i] += 1
        count[j] += 1
        if groups is not None and groups[i] >= 0 and groups[i] == groups[j]:
            same_total[i] += e_pairs[q]
            same_total[j] += e_pairs[q]
            same_count[i] += 1
            same_count[j] += 1
    extra = (slice(None),) + (None,) * (len(shape) - 1)
    mean = np.where(count[extra] > 0, total / np.maximum(count, 1)[extra], 0.0)
    rowsum = (p - 1) * mean
    if groups is None:
        return rowsum, None
    size = np.array([np.sum(groups == g) if g >= 0 else 1 for g in groups])
    same_mean = np.where(same_count[extra] > 0, same_total / np.maximum(same_count, 1)[extra], mean)
    ingroup = np.where((groups >= 0)[extra], (size - 1)[extra] * same_mean, 0.0)
    return rowsum, ingroup


def one_class_correction(a, rowsum, ingroup, UN, u0, groups) -> np.ndarray:
    """k (p, *t): the Shapley values of g(S) = (u0 - q(S)) [S holds fewer than 2 classes], so that V + k is the
    Shapley value of q1 = q with the one-class rule (docs/ecoval.md §3). In presence form q(S) = c0 + sum_S c_i +
    sum_{i<j in S} c_ij with c_i = a_i + rowsum_i, c_ij = -e_ij, c0 = U(N) - sum a - 1/2 sum rowsum; g is nonzero
    only on the empty set and the subsets of one single-class group A (m clusters), where sum_{S in A, |S| = s} q(S)
    = C(m, s) c0 + C(m-1, s-1) sum_A c_i + C(m-2, s-2) sum_{i<j in A} c_ij: closed forms, no enumeration.
    a, rowsum, ingroup (p, *t) (lam already applied to the interactions), UN, u0 scalars or (*t)."""
    p = len(groups)
    c = a + rowsum
    c0 = UN - a.sum(0) - 0.5 * rowsum.sum(0)
    base = u0 - c0                                                  # g(empty set)

    def weighted(n, shift, sizes):
        """sum over s in sizes of w(s) C(n, s - shift), w(s) = 1 / (p C(p-1, s)) the Shapley weight of a coalition
        of s; exact integer ratios (no overflow for any p)."""
        return sum(math.comb(n, s - shift) / (p * math.comb(p - 1, s)) for s in sizes if 0 <= s - shift <= n)

    # G_A = sum over the non-empty subsets S of group A of w(|S|) g(S); per member i of A the weights of the
    # subsets S of A \ {i} (the empty set too), where g(S + i) - g(S) = -(c_i + sum_{j in S} c_ij)
    G, inside = {}, {}
    for g in np.unique(groups[groups >= 0]):
        members = groups == g
        m = int(members.sum())
        s1 = c[members].sum(0)
        s2 = -0.5 * ingroup[members].sum(0)                         # sum_{i<j in A} c_ij = -sum_{i<j in A} e_ij
        sizes = range(1, m + 1)
        G[g] = weighted(m, 0, sizes) * base - weighted(m - 1, 1, sizes) * s1 - weighted(m - 2, 2, sizes) * s2
        inside[g] = (weighted(m - 1, 0, range(m)), weighted(m - 2, 1, range(m)))
    all_groups = sum(G.values())
    k = np.empty_like(a)
    for i in range(p):
        g = groups[i]
        if g < 0:                                   # g(S + i) = 0: only -g(S) of every S it can follow
            k[i] = -(base / p + all_groups)         # w(0) = 1 / p
            continue
        own, pairs = inside[g]
        k[i] = -(own * c[i] - pairs * ingroup[i]) - (all_groups - G[g])   # S in another group: g(S + i) = 0
    return k


def cluster_values(utilities, removed, pair_list, p, *, u0, lam, cluster_value, efficiency, metric,
                   groups=None) -> dict:
    """utilities (R, S), removal masks (S, p), the pairs -> the fitted attributes utility_full_, lco_,
    interactions_, cluster_values_, extrinsic_, beta_star_, gamma_beta_star_ (a dict by attribute name).
    groups: ``pure_groups`` of the clusters (None: no one-class rule)."""
    U = _mean_rows(utilities)
    UN = float(U[0])
    a = UN - U[1:1 + p]
    e = np.full((p, p), np.nan)
    np.fill_diagonal(e, 0.0)
    e_pairs = np.empty(len(pair_list))
    for q, (i, j) in enumerate(pair_list):
        e[i, j] = e[j, i] = e_pairs[q] = UN - U[1 + p + q] - a[i] - a[j]
    out = {"utility_full_": UN, "lco_": a, "interactions_": e}
    target = UN - u0
    if cluster_value == "pairwise_shapley":
        rowsum, ingroup = interaction_sums(lam * e_pairs, pair_list, p, groups)
        extrinsic = 0.5 * rowsum
        if groups is not None:
            extrinsic = extrinsic + one_class_correction(a, rowsum, ingroup, UN, u0, groups)
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


def cluster_value_se(utility_points, pair_list, p, *, lam, scale=1.0, groups=None, u0_points=None) -> np.ndarray:
    """Standard errors (p,) of Variant A's cluster values over the validation points: U is a mean over the m
    validation points, and V_i is linear in U, so V_i is the mean over v of the same formula applied to the
    per-point utilities u_v (R, S, m) (repeats averaged first); se_i = std_v V_i(v) / sqrt(m). scale is the
    efficiency factor Gamma_beta applied to the values. NaN for all when the utilities are not per point
    (a callable metric) or there is only one validation point. groups, u0_points (m,): the one-class rule's
    groups and u0's per-point utilities (its correction is linear in them too)."""
    if utility_points is None or utility_points.shape[-1] < 2:
        return np.full(p, np.nan)
    u = _mean_rows(np.asarray(utility_points, dtype=np.float64))           # (S, m)
    m = u.shape[1]
    a = u[0][None, :] - u[1:1 + p]                                          # (p, m)
    e_pairs = np.empty((len(pair_list), m))
    for q, (i, j) in enumerate(pair_list):
        e_pairs[q] = u[0] - u[1 + p + q] - a[i] - a[j]
    rowsum, ingroup = interaction_sums(lam * e_pairs, pair_list, p, groups)
    V = a + 0.5 * rowsum
    if groups is not None:
        V = V + one_class_correction(a, rowsum, ingroup, u[0], np.asarray(u0_points, np.float64), groups)
    V = scale * V
    return V.std(1, ddof=1) / math.sqrt(m)
