"""EcoVal's propagation of cluster values to points (docs/ecoval.md §4).

Additive (the default, §4.1): phi_k = V~_c(k) / n_c(k) + rho_k + (intrinsic_weight / n) * min(0, delta_k + tau),
with V~ the cluster values shrunk by their standard errors, rho_k the point's votes on the validation points whose
nearest training points it is among (classification; relevance_weight / (K m) per vote), delta_k <= 0 the evidence
the held-out experts hold against k's label and tau the evidence margin ((1/4) log2 C nats in classification by default).

Multiplicative (EcoVal-R v1, §4.3): phi_k = Gamma_beta * V_c(k) * w_k, w_k = s_k / sum_{l in C_c(k)} s_l,
s_k = max(g_k, eps)^gamma, with g_k the agreement of the models trained without k's cluster (or of the kNN labels,
or 1).

The functions take the fitted estimator and set its attributes."""
from __future__ import annotations

import math

import numpy as np
import torch

from .clustering import embed

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
    if est.intrinsic_kind_ == "uniform":
        return np.ones(n)
    if est.intrinsic_kind_ == "knn_agreement":
        return knn(est, est._Z, y_code, exclude_self=True)
    held = _mean_rows(est._heldout)
    if est.task_ == "classification":
        return held[np.arange(n), y_code]          # the held-out probability of each point's own label
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


# ------------------------------------------------------------------------------------------------ additive
# propagation="additive" (docs/ecoval.md §4): phi_k = extrinsic share + validation votes + intrinsic part,
#
#     phi_k = V~_c(k) / n_c(k)  +  rho_k  +  (intrinsic_weight / n) * min(0, delta_k + tau)
#
# V~ the cluster values shrunk by their standard error over the validation points, rho_k the point's votes on the
# validation points it is a nearest training point of (classification), delta_k <= 0 the evidence
# (in nats) that the held-out experts (the LCO models, the k nearest other training points) hold against k's label,
# counted beyond the margin tau (evidence_margin_).
ROW_BLOCK = 1 << 16           # training rows made at a time for a search (8 MiB at d = 16 in float64)
NEIGHBOUR_BLOCK_BYTES = 1 << 25   # the (queries, reference rows) work matrix of one search step
SMOOTHING = 0.5        # kNN class frequencies: (count + 1/2) / (K + C/2), so that no class has probability 0
MAD_SCALE = 1.4826     # MAD -> standard deviation of a normal


def shrink(values: np.ndarray, se: np.ndarray) -> np.ndarray:
    """V * max(0, 1 - se^2 / V^2): a value within one standard error of 0 becomes 0, a larger one moves towards 0
    by se^2 / V (positive-part James-Stein per cluster). NaN standard errors (no per-point utilities) leave V."""
    values = np.asarray(values, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    out = values.copy()
    known = np.isfinite(se)
    v, s = values[known], se[known]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(v != 0.0, np.maximum(0.0, 1.0 - (s * s) / (v * v)), 0.0)
    out[known] = v * factor
    return out


def neighbours(Z_query: np.ndarray, Z_ref: np.ndarray, k: int, self_rows=None,
               block_bytes: int = NEIGHBOUR_BLOCK_BYTES):
    """Indices (m, k) into Z_ref of each query row's k nearest reference rows (squared Euclidean distance, ties to
    the lower index); self_rows (m,) names the reference row that IS the query (excluded; -1: none). Blocked so
    that no (m, n_ref) matrix is held: one work buffer of block_bytes, reused by every block (a fresh one per block
    made the search fault its pages in again each time: 25 s instead of 2 s for 20,000 x 20,000 points)."""
    ref = torch.as_tensor(Z_ref, dtype=torch.float64)
    q_all = torch.as_tensor(Z_query, dtype=torch.float64)
    rn = (ref * ref).sum(1)
    k = int(min(k, ref.shape[0] - (0 if self_rows is None else 1)))
    out = np.empty((q_all.shape[0], max(k, 0)), dtype=np.int64)
    if k < 1:
        return out
    block = max(1, min(q_all.shape[0], block_bytes // (8 * max(ref.shape[0], 1))))
    work = torch.empty(block, ref.shape[0], dtype=torch.float64)
    ref_t = ref.T
    for start in range(0, q_all.shape[0], block):
        q = q_all[start:start + block]
        d2 = work[:q.shape[0]]
        torch.addmm(rn[None, :], q, ref_t, beta=1.0, alpha=-2.0, out=d2)     # |r|^2 - 2 q.r
        d2 += (q * q).sum(1)[:, None]
        if self_rows is not None:
            own = torch.as_tensor(np.asarray(self_rows[start:start + q.shape[0]]), dtype=torch.int64)
            hit = own >= 0
            d2[torch.arange(q.shape[0])[hit], own[hit]] = float("inf")
        out[start:start + q.shape[0]] = torch.topk(d2, k, dim=1, largest=False, sorted=True).indices.numpy()
    return out


def knn_class_proba(idx: np.ndarray, ref_codes: np.ndarray, n_classes: int) -> np.ndarray:
    """(m, C) smoothed class frequencies among each row's neighbours."""
    k = idx.shape[1]
    counts = np.zeros((idx.shape[0], n_classes))
    for c in range(n_classes):
        counts[:, c] = (ref_codes[idx] == c).sum(1)
    return (counts + SMOOTHING) / (k + SMOOTHING * n_classes)


def class_evidence(probas, codes: np.ndarray) -> np.ndarray:
    """delta_k = min(0, log pbar(y_k) - log max_{c != y_k} pbar(c)) for pbar the mean of the experts' class
    probabilities (m, C): 0 where the experts' average prefers k's label, the log-odds against it otherwise."""
    pbar = probas[0].copy()
    for P in probas[1:]:
        pbar = pbar + P
    pbar /= len(probas)
    rows = np.arange(len(codes))
    own = pbar[rows, codes]
    other = pbar.copy()
    other[rows, codes] = -np.inf
    best = other.max(1)
    return np.minimum(0.0, np.log(np.maximum(own, 1e-300)) - np.log(np.maximum(best, 1e-300)))


def robust_scale(residuals: np.ndarray) -> float:
    """1.4826 * median |r - median r| (a normal's standard deviation), or the RMS when more than half of the
    residuals are equal (MAD 0); 0 only for all-equal residuals."""
    r = np.asarray(residuals, dtype=np.float64)
    mad = float(np.median(np.abs(r - np.median(r))))
    if mad > 0:
        return MAD_SCALE * mad
    return float(np.sqrt(np.mean((r - np.median(r)) ** 2)))


def regression_evidence(residuals, scales) -> np.ndarray:
    """delta_k = log mean_e rho_e(k), rho_e = min(1, 1 / z_e^2), z_e = r_e / s_e: each expert e accepts a target
    within one of its scales and discounts a farther one like a Cauchy (Student-t, one degree of freedom)
    likelihood ratio, so that the evidence grows as log z^2, not z^2 (docs/ecoval.md §4.1, §8: with a normal ratio
    a few residuals of 10-30 scales took the whole range of the values). s_e: one scale, or one per row; a row
    whose scale is 0 accepts only residual 0."""
    total = np.zeros(len(residuals[0]))
    for r, s in zip(residuals, scales):
        r = np.asarray(r, dtype=np.float64)
        s = np.broadcast_to(np.asarray(s, dtype=np.float64), r.shape)
        positive = s > 0
        z2 = np.divide(r, s, out=np.zeros_like(r), where=positive) ** 2
        total += np.where(positive, 1.0 / np.maximum(z2, 1.0), (r == 0).astype(np.float64))
    return np.log(np.maximum(total / len(residuals), 1e-300))


MIN_SCALE_POINTS = 5    # a cluster with fewer training points takes the expert's global scale


def cluster_scales(residuals: np.ndarray, labels: np.ndarray, p: int) -> np.ndarray:
    """(p,) the residual size an expert leaves on each cluster's training points: 1.4826 * median |r| (about 0, not
    about the median: an expert biased on a cluster, e.g. a linear model on a mode it cannot fit, leaves large
    residuals on all of its points, clean or not). The expert's global robust_scale where a cluster has fewer than
    MIN_SCALE_POINTS points or a size 0 (docs/ecoval.md §4.1)."""
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    labels = np.asarray(labels)
    fallback = robust_scale(residuals)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(p + 1))
    scales = np.full(p, fallback)
    for c in range(p):
        part = r[order[starts[c]:starts[c + 1]]]
        if len(part) >= MIN_SCALE_POINTS:
            size = MAD_SCALE * float(np.median(part))
            if size > 0:
                scales[c] = size
    return scales


EXPERTS = {"lco_knn": ("lco", "knn"), "lco_proba": ("lco",), "knn_agreement": ("knn",), "uniform": ()}


def knn_space(est, Z: np.ndarray) -> np.ndarray:
    """The kNN space: the clustering space without the regression target's column."""
    return Z if est.task_ == "classification" else Z[:, :-1]


def knn_reference(n: int, limit: int, seed: int) -> np.ndarray:
    """The training rows the neighbours are searched among: all n, or a seeded sorted sample of `limit` rows (a
    point's neighbourhood is then estimated from a thinner sample: O(n * limit) work instead of O(n^2))."""
    if n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    return np.sort(rng.choice(n, size=limit, replace=False))


def knn_expert(est, Zk: np.ndarray, self_rows) -> np.ndarray:
    """The K-NN expert's outputs for the query rows Zk (m, d) in the kNN space: class probabilities (m, C) or mean
    targets (m,) of their K nearest reference rows; self_rows as in ``neighbours``."""
    ref = est._knn_ref
    idx = neighbours(Zk, est._knn_Z, est.knn_k, self_rows, block_bytes=NEIGHBOUR_BLOCK_BYTES)
    if est.task_ == "classification":
        return knn_class_proba(idx, est._y_code[ref], est._data.C)
    return est._data.y[ref][idx].mean(1)


def knn_expert_in_blocks(est, rows: "TrainingRows", self_rows) -> np.ndarray:
    """knn_expert for all n training rows, made block by block from ``rows`` (no (n, d) float64 copy). The blocks
    are whole multiples of neighbours' own query blocks, so every row meets the same arithmetic as in one call. In a
    fit over ranks (est._ranks) the blocks are spread over them."""
    n = rows.n
    inner = max(1, min(n, NEIGHBOUR_BLOCK_BYTES // (8 * max(len(est._knn_Z), 1))))
    step = inner * max(1, ROW_BLOCK // inner)
    starts = list(range(0, n, step))
    ranks = est._ranks
    if ranks is not None and ranks.world > 1 and len(starts) > 1:
        # a fit over ranks: each rank searches every world-th block, one all-gather puts them in order (every block
        # is computed as in one process, so the outputs are those of one process bit for bit)
        mine = {lo: knn_expert(est, rows.block(lo, min(n, lo + step)), self_rows[lo:lo + step])
                for lo in starts[ranks.rank::ranks.world]}
        done = {lo: part for gathered in ranks.all_gather(mine) for lo, part in gathered.items()}
        parts = [done[lo] for lo in starts]
    else:
        parts = [knn_expert(est, rows.block(lo, min(n, lo + step)), self_rows[lo:lo + step]) for lo in starts]
    return np.concatenate(parts) if parts else knn_expert(est, rows.block(0, 0), self_rows[:0])


def evidence(est, experts, *, knn_out, codes, y, held, clusters, fit_scales: bool) -> np.ndarray:
    """delta (m,) for m rows: held (m, C) held-out class probabilities or (m,) predictions of the LCO models of
    their clusters (repeats averaged), knn_out the K-NN expert's outputs for them (``knn_expert``; None when it is
    not an expert), clusters (m,) their clusters. fit_scales: estimate the regression experts' scales per cluster
    on these rows (in-sample, ``cluster_scales``) and keep them for new points."""
    if not experts:
        return np.zeros(len(codes) if codes is not None else len(y))
    if est.task_ == "classification":
        probas = []
        if "lco" in experts:
            probas.append(held)
        if "knn" in experts:
            probas.append(knn_out)
        return class_evidence(probas, codes)
    residuals = []
    if "lco" in experts:
        residuals.append(y - held)
    if "knn" in experts:
        residuals.append(y - knn_out)
    if fit_scales:
        est._evidence_scales = [cluster_scales(r, clusters, len(est.cluster_values_)) for r in residuals]
    return regression_evidence(residuals, [scales[clusters] for scales in est._evidence_scales])


class TrainingRows:
    """The training points' rows in the kNN space, a block at a time: slices of a held array (an embedding, or the
    clustering space without the regression target), or the standardised X made for the rows asked
    (``Data.standardized``: the same bits as those rows of the whole, no (n, d) float64 copy)."""

    def __init__(self, array=None, data=None):
        self.array, self.data = array, data
        self.n = len(array) if array is not None else data.X.shape[0]

    def block(self, lo: int, hi: int) -> np.ndarray:
        if self.array is not None:
            return self.array[lo:hi]
        return self.data.standardized(np.arange(lo, hi))

    def take(self, rows) -> np.ndarray:
        if self.array is not None:
            return self.array[rows]
        return self.data.standardized(np.asarray(rows))


def training_rows(est) -> TrainingRows:
    return TrainingRows(array=knn_space(est, est._Z)) if est._Z is not None else TrainingRows(data=est._data)


def squared_distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(len(A), len(B)) squared Euclidean distances as sums of squared differences (not |a|^2 - 2ab + |b|^2): the
    same bits for the same pair of rows wherever it is computed, so a copy of a training point ties with it."""
    return ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)


def neighbours_in_blocks(Z_query: np.ndarray, rows: TrainingRows, k: int, ref_block: int = None, ranks=None):
    """(idx (m, k), d2 (m, k)): each query row's k nearest training rows, the reference made block by block from
    ``rows`` (no (n, d) copy, no (m, n) matrix): a running top-k merged with each block's, ties to the lower index
    (among the candidates a block's top-k keeps). ranks (a base.Ranks): each rank merges every world-th reference
    block, one all-gather merges the ranks' top-k by the same rule (the k smallest (distance, index) pairs of the
    same candidates: the result of one process bit for bit)."""
    n = rows.n
    k = int(min(k, n))
    q = torch.as_tensor(np.asarray(Z_query, np.float64))
    m = q.shape[0]
    best_d = torch.full((m, k), float("inf"), dtype=torch.float64)
    best_i = torch.zeros((m, k), dtype=torch.int64)
    if k < 1 or m == 0:
        return best_i.numpy(), best_d.numpy()
    qn = (q * q).sum(1)[:, None]
    step = ref_block or max(k, ROW_BLOCK)
    # queries in blocks too, so that one (queries, step) work matrix stays within NEIGHBOUR_BLOCK_BYTES
    q_step = max(1, min(m, NEIGHBOUR_BLOCK_BYTES // (8 * step)))
    starts = range(0, n, step)
    spread = ranks is not None and ranks.world > 1 and len(starts) > 1
    for lo in (starts[ranks.rank::ranks.world] if spread else starts):
        ref = torch.as_tensor(rows.block(lo, min(n, lo + step)), dtype=torch.float64)
        rn, ref_t = (ref * ref).sum(1), ref.T
        kk = min(k, ref.shape[0])
        for qs in range(0, m, q_step):
            qb = q[qs:qs + q_step]
            d2 = torch.addmm(rn[None, :], qb, ref_t, beta=1.0, alpha=-2.0)        # |r|^2 - 2 q.r
            d2 += qn[qs:qs + q_step]
            top = torch.topk(d2, kk, dim=1, largest=False, sorted=True)
            cand_d = torch.cat([best_d[qs:qs + q_step], top.values], 1)
            cand_i = torch.cat([best_i[qs:qs + q_step], top.indices + lo], 1)
            by_index = torch.sort(cand_i, dim=1, stable=True).indices         # then a stable sort by distance:
            cand_d, cand_i = cand_d.gather(1, by_index), cand_i.gather(1, by_index)   # ties to the lower index
            order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
            best_d[qs:qs + q_step] = cand_d.gather(1, order)
            best_i[qs:qs + q_step] = cand_i.gather(1, order)
    if spread:
        parts = ranks.all_gather((best_d.numpy(), best_i.numpy()))
        cand_d = torch.as_tensor(np.concatenate([d for d, _ in parts], 1))
        cand_i = torch.as_tensor(np.concatenate([i for _, i in parts], 1))
        by_index = torch.sort(cand_i, dim=1, stable=True).indices
        cand_d, cand_i = cand_d.gather(1, by_index), cand_i.gather(1, by_index)
        order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
        best_d, best_i = cand_d.gather(1, order), cand_i.gather(1, order)
    return best_i.numpy(), best_d.numpy()


def validation_votes(Z_train, codes, Z_val, val_codes, k: int, ref_block: int = None, ranks=None):
    """Each validation point v's k nearest training points N_k(v) (squared Euclidean distance, ties to the lower
    index). Returns (votes (n,), kth (m,)): votes[j] = sum over the v with j in N_k(v) of +1 where y_j = y_v and -1
    otherwise (what j does for a k-NN vote on the validation set); kth[v] the squared distance of v's k-th nearest
    training point, which decides whether a new point would enter N_k(v). Z_train: an (n, d) array or the
    TrainingRows, searched block by block (over the ranks when given: neighbours_in_blocks)."""
    rows = Z_train if isinstance(Z_train, TrainingRows) else TrainingRows(array=np.asarray(Z_train, np.float64))
    k = int(min(k, rows.n))
    idx, _ = neighbours_in_blocks(Z_val, rows, k, ref_block, ranks)
    agree = codes[idx] == np.asarray(val_codes)[:, None]
    votes = np.bincount(idx.ravel(), weights=np.where(agree, 1.0, -1.0).ravel(), minlength=rows.n)
    kth = ((Z_val - rows.take(idx[:, -1])) ** 2).sum(-1)
    return votes, kth


def new_votes(Z_new, codes_new, Z_val, val_codes, kth, block_bytes: int = 1 << 25) -> np.ndarray:
    """The votes (m_new,) new points would cast: on each validation point v whose k-NN set they would enter (squared
    distance <= kth[v]: a copy of a training point in N_k(v) enters it too), +1 where the labels agree, -1
    otherwise. Blocked: no (m_new, m) matrix beyond block_bytes."""
    Z_new, Z_val = np.asarray(Z_new, np.float64), np.asarray(Z_val, np.float64)
    sign = np.where(np.asarray(codes_new)[:, None] == np.asarray(val_codes)[None, :], 1.0, -1.0) \
        if len(Z_new) else np.zeros((0, len(Z_val)))
    out = np.zeros(len(Z_new))
    block = max(1, block_bytes // (8 * max(1, Z_val.shape[0] * Z_val.shape[1])))
    for lo in range(0, len(Z_new), block):
        inside = squared_distances(Z_new[lo:lo + block], Z_val) <= kth[None, :]
        out[lo:lo + block] = (inside * sign[lo:lo + block]).sum(1)
    return out


def relevance(est, rows: TrainingRows) -> np.ndarray:
    """rho (n,) = relevance_weight / (K m) * votes (classification; 0 in regression or with relevance_weight 0).
    One vote moves a K-NN classifier's validation accuracy by at most 1 / (K m); relevance_weight converts that
    into the units of U like intrinsic_weight does for nats. Keeps what value() needs for new points."""
    data = est._data
    n = rows.n
    est._relevance_unit = 0.0
    if not data.classification or est.relevance_weight == 0:
        est._val_Z = None
        return np.zeros(n)
    Z_val = embed(est.embed, data.X_val, data.Xs_val, "X_val")
    votes, kth = validation_votes(rows, est._y_code, Z_val, data.y_val_code, est.knn_k, ranks=est._ranks)
    est._val_Z, est._val_kth = Z_val, kth
    est._relevance_unit = est.relevance_weight / (min(est.knn_k, n) * len(Z_val))
    return est._relevance_unit * votes


def intrinsic_part(est, delta: np.ndarray) -> np.ndarray:
    """(w / n) * min(0, delta + tau): only the evidence beyond the margin tau (nats) counts against a label."""
    tau = est.evidence_margin_
    return est._intrinsic_unit * (np.minimum(0.0, delta + tau) if tau else delta)


def heldout_mean(est) -> np.ndarray:
    """The LCO models' held-out outputs, averaged over the repeats: (n, C) probabilities or (n,) predictions."""
    return _mean_rows(est._heldout)


def propagate_additive(est, labels, members, se):
    """values_ = cluster_shares_[c] / n_c + relevance_ + intrinsic_ (docs/ecoval.md §4)."""
    n = len(labels)
    data = est._data
    sizes = np.array([len(rows) for rows in members], dtype=np.float64)
    experts = EXPERTS[est.intrinsic_kind_]
    est._knn_ref = knn_reference(n, est.knn_reference, est.random_state_)
    rows = training_rows(est)
    est._knn_Z = rows.take(est._knn_ref)
    self_rows = np.full(n, -1, dtype=np.int64)
    self_rows[est._knn_ref] = np.arange(len(est._knn_ref))
    held = heldout_mean(est) if "lco" in experts else None
    knn_out = knn_expert_in_blocks(est, rows, self_rows) if "knn" in experts else None
    delta = evidence(est, experts, knn_out=knn_out, codes=est._y_code, y=data.y, held=held, clusters=labels,
                     fit_scales=True)
    est.cluster_value_se_ = se
    est.cluster_shares_ = shrink(est.cluster_values_, se) if est.shrinkage else est.cluster_values_.copy()
    est.evidence_ = delta
    est._intrinsic_unit = est.intrinsic_weight / n
    est.intrinsic_ = intrinsic_part(est, delta)
    est.relevance_ = relevance(est, rows)
    est.weights_ = 1.0 / sizes[labels]
    est._sizes = sizes
    est.values_ = est.cluster_shares_[labels] / sizes[labels] + est.relevance_ + est.intrinsic_


def value_new_additive(est, clusters, Z, codes, y_new, held) -> np.ndarray:
    """New points' values (docs/ecoval.md §5): the share of the nearest cluster of their class, the votes they
    would cast on the validation set, and their own intrinsic part, from the stored LCO models (held) and their K
    nearest training points (itself excluded for none: a new point is not in the reference)."""
    Zk = knn_space(est, Z)
    experts = EXPERTS[est.intrinsic_kind_]
    knn_out = knn_expert(est, Zk, None) if "knn" in experts else None
    delta = evidence(est, experts, knn_out=knn_out, codes=codes, y=y_new, held=held, clusters=clusters,
                     fit_scales=False)
    rho = 0.0
    if est._relevance_unit:
        rho = est._relevance_unit * new_votes(Zk, codes, est._val_Z, est._data.y_val_code, est._val_kth)
    return est.cluster_shares_[clusters] / est._sizes[clusters] + rho + intrinsic_part(est, delta)
