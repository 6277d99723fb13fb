"""EcoVal's additive propagation (docs/ecoval.md §4-§5): the pieces one by one against plain numpy versions, then
the whole fit (efficiency within clusters, the uniform and dummy-cluster cases, out-of-sample values, the
noise of cluster values) and its detection quality on data where it must find flipped labels."""
import math

import numpy as np
import pytest

from lossval_fast.valuation.ecoval import EcoVal
from problems import gaussians
from lossval_fast.valuation.ecoval.cluster_values import cluster_value_se, pure_groups
from lossval_fast.valuation.ecoval import propagation
from lossval_fast.valuation.ecoval.propagation import (TrainingRows, class_evidence, knn_class_proba, neighbours,
                                                       neighbours_in_blocks, new_votes, regression_evidence,
                                                       robust_scale, shrink, validation_votes, cluster_scales,
                                                       MIN_SCALE_POINTS)


def auc(values, positive):
    """P(value of a positive < value of a negative), ties counted half: the AUC of -values."""
    pos, neg = values[positive], values[~positive]
    less = (pos[:, None] < neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return less + 0.5 * ties


# ------------------------------------------------------------------------------------------------ pieces
def test_shrink_zeroes_values_within_one_standard_error_and_moves_the_rest():
    V = np.array([0.5, -0.5, 0.05, -0.05, 0.0, 2.0])
    se = np.array([0.1, 0.1, 0.1, 0.1, 0.1, np.nan])
    out = shrink(V, se)
    np.testing.assert_allclose(out[:2], [0.5 - 0.01 / 0.5, -0.5 + 0.01 / 0.5], rtol=1e-15)
    assert out[2] == 0.0 and out[3] == 0.0 and out[4] == 0.0
    assert out[5] == 2.0                                     # unknown noise: left alone
    assert np.all(np.abs(out) <= np.abs(V)) and np.all(out * V >= 0)


@pytest.mark.parametrize("n,m,k,block", [(57, 23, 5, 1 << 10), (130, 130, 10, 1 << 12), (9, 4, 20, 1 << 26)])
def test_neighbours_match_a_brute_force_search(n, m, k, block):
    rng = np.random.default_rng(n)
    ref = rng.normal(size=(n, 3))
    query = np.concatenate([ref[:m // 2], rng.normal(size=(m - m // 2, 3))])
    self_rows = np.concatenate([np.arange(m // 2), np.full(m - m // 2, -1)])
    idx = neighbours(query, ref, k, self_rows, block_bytes=block)
    d2 = ((query[:, None] - ref[None]) ** 2).sum(-1)
    d2[np.arange(m // 2), np.arange(m // 2)] = np.inf
    kk = min(k, n - 1)
    expected = np.argsort(d2, axis=1, kind="stable")[:, :kk]
    assert idx.shape == (m, kk)
    np.testing.assert_allclose(np.take_along_axis(d2, idx, 1), np.take_along_axis(d2, expected, 1), rtol=1e-12)
    assert not np.any(idx[: m // 2] == np.arange(m // 2)[:, None])   # a point is not its own neighbour


@pytest.mark.parametrize("n,m,k,ref_block", [(57, 23, 5, 8), (130, 41, 10, 3), (9, 4, 20, 4), (40, 7, 3, 1000)])
def test_neighbours_in_blocks_match_a_brute_force_search(n, m, k, ref_block):
    """The reference made block by block (a running top-k): the k smallest distances, ties to the lower index
    across blocks (exact duplicates of reference rows sit in different blocks)."""
    rng = np.random.default_rng(n + ref_block)
    ref = rng.normal(size=(n, 3))
    ref[n - 1] = ref[0]                                   # a duplicate in the last block of the first row
    query = np.concatenate([ref[:1] + 1e-9, rng.normal(size=(m - 1, 3))])
    idx, d2 = neighbours_in_blocks(query, TrainingRows(array=ref), k, ref_block=ref_block)
    full = ((query[:, None] - ref[None]) ** 2).sum(-1)
    kk = min(k, n)
    expected = np.argsort(full, axis=1, kind="stable")[:, :kk]
    assert idx.shape == d2.shape == (m, kk)
    np.testing.assert_allclose(d2, np.take_along_axis(full, expected, 1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.take_along_axis(full, idx, 1), np.take_along_axis(full, expected, 1),
                               rtol=1e-9, atol=1e-12)
    assert idx[0, 0] == 0 and (kk < 2 or idx[0, 1] == n - 1)   # the tie: the lower index first


def test_validation_votes_made_in_row_blocks_equal_the_whole_search():
    X, y, Xv, yv, _ = gaussians(6, n=150, n_val=40)
    est = EcoVal(n_clusters=6, random_state=0, verbose=False).fit(X, y, Xv, yv)
    data = est._data
    whole = validation_votes(data.standardized(), est._y_code, data.Xs_val, data.y_val_code, 10)
    blocks = validation_votes(TrainingRows(data=data), est._y_code, data.Xs_val, data.y_val_code, 10, ref_block=17)
    np.testing.assert_array_equal(blocks[0], whole[0])
    np.testing.assert_array_equal(blocks[1], whole[1])


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_additive_values_do_not_depend_on_the_row_blocks(task, monkeypatch):
    """The values phase makes the training rows it searches a block at a time (no (n, d) float64 copy is held):
    blocks of 7 rows and a tiny work matrix give the bits of the default blocks."""
    if task == "classification":
        X, y, Xv, yv, _ = gaussians(7, n=200, n_val=60)
    else:
        rng = np.random.default_rng(7)
        X = rng.normal(size=(260, 4))
        y = np.sin(X[:, 0]) + X[:, 1] ** 2 + 0.1 * rng.normal(size=260)
        X, y, Xv, yv = X[:200], y[:200], X[200:], y[200:]
    default = EcoVal(n_clusters=6, task=task, random_state=0, verbose=False).fit(X, y, Xv, yv)
    assert default._Z is None
    monkeypatch.setattr(propagation, "ROW_BLOCK", 7)
    monkeypatch.setattr(propagation, "NEIGHBOUR_BLOCK_BYTES", 8 * 7 * 50)
    small = EcoVal(n_clusters=6, task=task, random_state=0, verbose=False).fit(X, y, Xv, yv)
    np.testing.assert_array_equal(small.values_, default.values_)
    np.testing.assert_array_equal(small.value(Xv, yv), default.value(Xv, yv))


def test_knn_class_proba_is_smoothed_frequencies():
    idx = np.array([[0, 1, 2, 3], [2, 3, 3, 3]])
    codes = np.array([0, 0, 1, 2])
    P = knn_class_proba(idx, codes, 3)
    np.testing.assert_allclose(P, [[2.5 / 5.5, 1.5 / 5.5, 1.5 / 5.5], [0.5 / 5.5, 1.5 / 5.5, 3.5 / 5.5]])
    np.testing.assert_allclose(P.sum(1), 1.0)


def test_class_evidence_is_the_log_odds_against_the_label_or_zero():
    P1 = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.3]])
    P2 = np.array([[0.7, 0.3], [0.4, 0.6], [0.1, 0.5]])
    P2 = np.concatenate([P2, 1 - P2.sum(1, keepdims=True)], 1)
    P1 = np.concatenate([P1, 1 - P1.sum(1, keepdims=True)], 1)
    codes = np.array([0, 0, 2])
    delta = class_evidence([P1, P2], codes)
    pbar = (P1 + P2) / 2
    assert delta[0] == 0.0                                    # the experts' mean prefers the label
    assert delta[1] == pytest.approx(math.log(pbar[1, 0]) - math.log(pbar[1, 1]), rel=1e-14)
    assert delta[2] == pytest.approx(math.log(pbar[2, 2]) - math.log(pbar[2, 1]), rel=1e-14)
    assert np.all(delta <= 0)


def test_regression_evidence_accepts_one_scale_and_discounts_beyond():
    r1 = np.array([0.5, 2.0, 3.0, 0.0])
    r2 = np.array([0.0, 0.5, 4.0, 0.0])
    delta = regression_evidence([r1, r2], [1.0, 2.0])
    # by hand: rho = 1 within one scale, 1 / z^2 beyond (Cauchy ratio, docs/ecoval.md §4.1)
    rho1 = np.array([1.0, 1 / 4, 1 / 9, 1.0])
    rho2 = np.array([1.0, 1.0, 1 / 4, 1.0])
    np.testing.assert_allclose(delta, np.log((rho1 + rho2) / 2), rtol=1e-14)
    assert delta[0] == 0.0 and delta[3] == 0.0
    # the evidence grows as log z^2: a residual of 100 scales counts 2 log 10 more than one of 10, not 4950 nats
    far = regression_evidence([np.array([10.0, 100.0])], [1.0])
    np.testing.assert_allclose(far, [-2 * math.log(10), -4 * math.log(10)], rtol=1e-14)


def test_robust_scale_ignores_outliers():
    r = np.concatenate([np.random.default_rng(0).normal(size=2000), [1e6] * 50])
    assert 0.9 < robust_scale(r) < 1.1
    assert robust_scale(np.zeros(10)) == 0.0


# ------------------------------------------------------------------------------------------------ the fit
@pytest.fixture(scope="module")
def noisy_gaussians():
    X, y, Xv, yv, flipped = gaussians(0, d=5)
    est = EcoVal(n_clusters=10, random_state=0, verbose=False).fit(X, y, Xv, yv)
    return est, X, y, Xv, yv, flipped


def test_additive_values_are_cluster_shares_plus_intrinsic(noisy_gaussians):
    est = noisy_gaussians[0]
    labels = est.cluster_labels_
    p = est.n_clusters_
    np.testing.assert_allclose(np.bincount(labels, est.values_ - est.relevance_ - est.intrinsic_, p),
                               est.cluster_shares_, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.bincount(labels, est.weights_, p), 1.0, rtol=1e-12)
    assert np.all(est.intrinsic_ <= 0) and np.all(est.evidence_ <= 0)
    assert est.evidence_margin_ == 0.25                      # the default margin for two classes (docs §4.1)
    np.testing.assert_allclose(est.intrinsic_, est.intrinsic_weight / len(labels) * np.minimum(0.0, est.evidence_ + 0.25),
                               rtol=1e-15, atol=0)
    assert (est.intrinsic_ == 0).sum() > (est.evidence_ == 0).sum()     # the margin forgives some evidence
    assert est.cluster_value_se_.shape == (p,) and np.all(est.cluster_value_se_ > 0)
    np.testing.assert_array_equal(est.cluster_shares_, shrink(est.cluster_values_, est.cluster_value_se_))


@pytest.mark.parametrize("margin", [0.0, 0.3, 2.0])
def test_evidence_margin_forgives_only_the_evidence_within_it(noisy_gaussians, margin):
    """The margin changes the intrinsic part only: the same evidence, clusters and votes; intrinsic_ is
    (w / n) * min(0, delta + tau) and values_ move by exactly the change of the intrinsic part; value() of new
    points uses the same margin (a copy of a training point gets its value with intrinsic="lco_proba")."""
    est, X, y, Xv, yv, _ = noisy_gaussians
    other = EcoVal(n_clusters=10, random_state=0, verbose=False, evidence_margin=margin).fit(X, y, Xv, yv)
    assert other.evidence_margin_ == margin
    np.testing.assert_array_equal(other.evidence_, est.evidence_)
    np.testing.assert_array_equal(other.relevance_, est.relevance_)
    np.testing.assert_array_equal(other.cluster_shares_, est.cluster_shares_)
    unit = other.intrinsic_weight / len(y)
    expected = unit * (np.minimum(0.0, est.evidence_ + margin) if margin else est.evidence_)
    np.testing.assert_array_equal(other.intrinsic_, expected)
    np.testing.assert_allclose(other.values_ - est.values_, other.intrinsic_ - est.intrinsic_, rtol=0, atol=1e-15)
    flagged = est.evidence_ < -margin
    assert np.all(other.intrinsic_[~flagged] == 0) and np.all(other.intrinsic_[flagged] < 0)
    lco = EcoVal(n_clusters=10, random_state=0, verbose=False, evidence_margin=margin, intrinsic="lco_proba").fit(X, y, Xv, yv)
    rows = np.arange(0, len(y), 37)
    np.testing.assert_allclose(lco.value(X[rows], y[rows]), lco.values_[rows], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n_classes", [3, 10])
def test_default_evidence_margin_grows_with_the_number_of_classes(n_classes):
    """evidence_margin=None is (1/4) log2 C nats (docs/ecoval.md §4.1): C counts the classes of y, and the intrinsic
    part is (w / n) * min(0, delta + tau) with that tau."""
    rng = np.random.default_rng(n_classes)
    centres = 3.0 * rng.normal(size=(n_classes, 2))
    y = np.arange(40 * n_classes) % n_classes
    X = centres[y] + rng.normal(size=(len(y), 2))
    yv = np.arange(10 * n_classes) % n_classes
    Xv = centres[yv] + rng.normal(size=(len(yv), 2))
    est = EcoVal(n_clusters=2 * n_classes, random_state=0, verbose=False).fit(X, y, Xv, yv)
    tau = 0.25 * np.log2(n_classes)
    assert est.evidence_margin_ == pytest.approx(tau, rel=1e-15)
    np.testing.assert_allclose(est.intrinsic_, est.intrinsic_weight / len(y) * np.minimum(0.0, est.evidence_ + tau),
                               rtol=1e-15, atol=0)
    explicit = EcoVal(n_clusters=2 * n_classes, random_state=0, verbose=False, evidence_margin=tau).fit(X, y, Xv, yv)
    np.testing.assert_array_equal(explicit.values_, est.values_)


def test_regression_has_no_evidence_margin_by_default():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(160, 3))
    y = X @ np.array([1.0, -0.5, 0.2]) + 0.1 * rng.normal(size=160)
    est = EcoVal(n_clusters=4, random_state=0, verbose=False).fit(X[:120], y[:120], X[120:], y[120:])
    assert est.task_ == "regression" and est.evidence_margin_ == 0.0
    np.testing.assert_array_equal(est.intrinsic_, est.intrinsic_weight / 120 * est.evidence_)


def test_cluster_value_se_is_over_per_point_values_whose_mean_is_the_value(noisy_gaussians):
    """V_i(v): the Shapley value of the pairwise-truncated game with the one-class rule, built from validation point
    v's utilities alone (brute force over the 2^p subsets); their mean is V_i, their spread over v the se."""
    from lossval_fast.valuation.shapley import shapley_from_utilities
    est = noisy_gaussians[0]
    p = est.n_clusters_
    groups = pure_groups(est._cluster_classes)
    assert groups is not None and (groups >= 0).all()          # label-stratified: every cluster holds one class
    u0_points = est._trainings.constant_points(est._utility)
    se = cluster_value_se(est.utility_points_, [tuple(q) for q in est.pairs_], p, lam=est.lam, groups=groups,
                          u0_points=u0_points)
    np.testing.assert_allclose(se, est.cluster_value_se_, rtol=1e-12)
    u = est.utility_points_.mean(0)                             # (S, m)
    a = u[0][None] - u[1:1 + p]
    e = np.zeros((p, p, u.shape[1]))
    for q, (i, j) in enumerate(est.pairs_):
        e[i, j] = e[j, i] = u[0] - u[1 + p + q] - a[i] - a[j]
    masks = np.arange(1 << p)
    kept = (masks[:, None] >> np.arange(p)) & 1
    removed = 1.0 - kept
    one_class = np.array([len(set(groups[kept[t] == 1])) < 2 for t in masks])
    V = np.empty((p, u.shape[1]))
    for v in range(u.shape[1]):
        q_v = u[0, v] - removed @ a[:, v] - 0.5 * np.einsum("ti,ij,tj->t", removed, e[:, :, v], removed)
        V[:, v] = shapley_from_utilities(np.where(one_class, u0_points[v], q_v))
    np.testing.assert_allclose(V.mean(1), est.cluster_values_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(V.std(1, ddof=1) / math.sqrt(u.shape[1]), se, rtol=1e-9)


def test_validation_votes_against_a_plain_search():
    rng = np.random.default_rng(7)
    Z, Zv = rng.normal(size=(53, 3)), rng.normal(size=(11, 3))
    codes, val_codes = rng.integers(0, 3, 53), rng.integers(-1, 3, 11)     # -1: a label absent from y never agrees
    votes, kth = validation_votes(Z, codes, Zv, val_codes, 4)
    d2 = ((Zv[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
    expected = np.zeros(53)
    for v in range(11):
        near = np.argsort(d2[v], kind="stable")[:4]
        expected[near] += np.where(codes[near] == val_codes[v], 1.0, -1.0)
        assert kth[v] == pytest.approx(d2[v, near[-1]], rel=1e-12)
    np.testing.assert_array_equal(votes, expected)
    # a new point casts the votes of the training point it copies (a copy enters N_k(v) with it), others by distance
    np.testing.assert_array_equal(new_votes(Z, codes, Zv, val_codes, kth, block_bytes=64), expected)
    far = new_votes(Zv + 100.0, val_codes, Zv, val_codes, kth)
    np.testing.assert_array_equal(far, 0.0)


def test_relevance_is_the_weighted_votes_and_zero_in_regression(noisy_gaussians):
    est, X, y, Xv, yv, _ = noisy_gaussians
    votes, _ = validation_votes(est._data.standardized(), est._y_code, est._data.Xs_val, est._data.y_val_code,
                                est.knn_k)
    np.testing.assert_allclose(est.relevance_, est.relevance_weight / (est.knn_k * len(yv)) * votes, rtol=1e-15)
    assert np.any(est.relevance_ != 0)
    off = EcoVal(n_clusters=10, relevance_weight=0.0, random_state=0, verbose=False).fit(X, y, Xv, yv)
    np.testing.assert_array_equal(off.relevance_, 0.0)
    np.testing.assert_allclose(off.values_, est.values_ - est.relevance_, rtol=1e-12, atol=1e-15)
    rng = np.random.default_rng(3)
    Xr = rng.normal(size=(120, 3))
    yr = Xr @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=120)
    reg = EcoVal(n_clusters=4, random_state=0, verbose=False).fit(Xr[:100], yr[:100], Xr[100:], yr[100:])
    np.testing.assert_array_equal(reg.relevance_, 0.0)


def test_uniform_intrinsic_gives_equal_shares():
    X, y, Xv, yv, _ = gaussians(1, n=200, n_val=100)
    est = EcoVal(n_clusters=6, intrinsic="uniform", relevance_weight=0.0, random_state=0,
                 verbose=False).fit(X, y, Xv, yv)
    sizes = np.bincount(est.cluster_labels_)
    np.testing.assert_allclose(est.values_, est.cluster_shares_[est.cluster_labels_] / sizes[est.cluster_labels_],
                               rtol=1e-15)
    assert np.all(est.intrinsic_ == 0)


def test_no_shrinkage_shares_the_raw_cluster_values():
    X, y, Xv, yv, _ = gaussians(2, n=200, n_val=100)
    est = EcoVal(n_clusters=6, shrinkage=False, random_state=0, verbose=False).fit(X, y, Xv, yv)
    np.testing.assert_array_equal(est.cluster_shares_, est.cluster_values_)


@pytest.mark.parametrize("intrinsic", ["lco_proba", "uniform"])
def test_copies_of_training_points_get_their_values(intrinsic):
    X, y, Xv, yv, _ = gaussians(3, n=200, n_val=100)
    est = EcoVal(n_clusters=6, intrinsic=intrinsic, random_state=0, verbose=False).fit(X, y, Xv, yv)
    rows = np.arange(0, 200, 7)
    np.testing.assert_allclose(est.value(X[rows], y[rows]), est.values_[rows], rtol=1e-12, atol=1e-15)


def test_new_points_get_the_knn_and_lco_evidence():
    """lco_knn: a new point is not excluded from its own neighbours, so a copy of training point k counts k among
    them; the cluster share is the same, and so is the whole value wherever k's label is supported either way."""
    X, y, Xv, yv, flipped = gaussians(4, n=300, n_val=100)
    est = EcoVal(n_clusters=6, random_state=0, verbose=False).fit(X, y, Xv, yv)
    new = est.value(X, y)
    assert np.all(np.isfinite(new))
    agreed = est.evidence_ == 0
    assert agreed.mean() > 0.7
    np.testing.assert_allclose(new[agreed], est.values_[agreed], rtol=1e-12, atol=1e-15)
    # with k among its own neighbours a copy is never more suspicious than k itself
    assert np.all(new >= est.values_ - 1e-15)
    assert auc(new, flipped) > 0.9


def test_knn_reference_sample_bounds_the_search():
    X, y, Xv, yv, flipped = gaussians(5, n=400, n_val=100)
    full = EcoVal(n_clusters=6, random_state=0, verbose=False).fit(X, y, Xv, yv)
    thin = EcoVal(n_clusters=6, knn_reference=150, random_state=0, verbose=False).fit(X, y, Xv, yv)
    assert len(thin._knn_ref) == 150 and len(full._knn_ref) == 400
    np.testing.assert_array_equal(thin.cluster_values_, full.cluster_values_)
    assert auc(thin.values_, flipped) > 0.85 and auc(full.values_, flipped) > 0.85


def test_multiplicative_propagation_is_still_available():
    X, y, Xv, yv, _ = gaussians(6, n=200, n_val=100)
    est = EcoVal(n_clusters=6, propagation="multiplicative", random_state=0, verbose=False).fit(X, y, Xv, yv)
    np.testing.assert_allclose(np.bincount(est.cluster_labels_, est.values_), est.cluster_values_, rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("kwargs,match", [({"propagation": "sum"}, "propagation"),
                                          ({"intrinsic_weight": -1.0}, "intrinsic_weight"),
                                          ({"intrinsic_weight": float("nan")}, "intrinsic_weight"),
                                          ({"relevance_weight": -1.0}, "relevance_weight"),
                                          ({"relevance_weight": float("inf")}, "relevance_weight"),
                                          ({"evidence_margin": -0.1}, "evidence_margin"),
                                          ({"evidence_margin": float("nan")}, "evidence_margin"),
                                          ({"evidence_margin": "0.5"}, "evidence_margin"),
                                          ({"shrinkage": "yes"}, "shrinkage"),
                                          ({"knn_reference": 0}, "knn_reference"),
                                          ({"intrinsic": "lco_knn", "propagation": "multiplicative"}, "lco_knn")])
def test_bad_propagation_parameters_are_named(kwargs, match):
    X, y, Xv, yv, _ = gaussians(7, n=100, n_val=50)
    with pytest.raises(ValueError, match=match):
        EcoVal(n_clusters=4, verbose=False, **kwargs).fit(X, y, Xv, yv)


# ------------------------------------------------------------------------------------------------ quality
@pytest.mark.parametrize("seed", range(3))
def test_flipped_labels_rank_lowest_on_two_gaussians(seed):
    """T11 at d = 5 (where the multiplicative rule's precision fell to 0.48): the bottom 10 % by value holds
    flipped points with precision >= 0.7 (chance 0.1) and the AUC is >= 0.9."""
    X, y, Xv, yv, flipped = gaussians(seed, d=5)
    est = EcoVal(n_clusters=10, random_state=seed, verbose=False).fit(X, y, Xv, yv)
    bottom = np.argsort(est.values_, kind="stable")[:60]
    assert flipped[bottom].mean() >= 0.7
    assert auc(est.values_, flipped) >= 0.9


def test_flipped_labels_rank_lowest_on_the_bundled_pol():
    """The README's example: 1000 pol rows with 10 % flipped labels; AUC >= 0.9 (the multiplicative rule: ~0.7)."""
    from lossval_fast.datasets import load_bundled_pol
    from lossval_fast.valuation import inject_noise, standardize_split

    X, y = load_bundled_pol()
    split = standardize_split(X, y, n_train=1000, n_valid=100, n_test=2900, random_state=0)
    xn, yn, noisy = inject_noise(split.x_train, split.y_train, kind="label", rate=0.1, random_state=0)
    est = EcoVal(n_clusters=20, random_state=0, verbose=False).fit(xn, yn, split.x_valid, split.y_valid)
    assert auc(est.values_, noisy) >= 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_detection_survives_a_valid_far_mode(seed):
    """A linear target plus a valid mode 8 units off the linear fit (3-4 % of the points, like cpu_activity's zero
    targets) and 10 % label noise: the LCO ridge leaves the mode residuals of ~25 scales. The Cauchy evidence
    (docs/ecoval.md §4.1, §8) keeps the flipped targets in the lower 2-means cluster: F1 >= 0.25 (random ~0.17).
    The normal ratio it replaced gave F1 0.00-0.12 on these data at the same AUC."""
    from lossval_fast.valuation import inject_noise, noisy_detection_auc, noisy_detection_f1
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(500, 3))
    y = X @ np.array([1.0, -0.5, 0.3]) + 0.3 * rng.normal(size=500)
    y[X[:, 0] > 1.8] += 8.0
    _, y_noisy, noisy = inject_noise(X[:400], y[:400], kind="label", rate=0.1, random_state=seed)
    est = EcoVal(n_clusters=8, random_state=0, verbose=False).fit(X[:400], y_noisy, X[400:], y[400:])
    assert noisy_detection_f1(est.values_, noisy) >= 0.25
    assert noisy_detection_auc(est.values_, noisy) >= 0.7


def test_cluster_scales_by_hand():
    """1.4826 * median |r| per cluster (about 0: a biased expert's cluster gets a large scale); the global robust
    scale for a cluster below MIN_SCALE_POINTS points or with size 0."""
    assert MIN_SCALE_POINTS == 5
    biased = np.array([3.0, 3.2, 2.8, 3.1, 2.9, 3.0])          # an expert off by 3 on a mode it cannot fit
    mixed = np.array([0.1, -0.2, 0.3, -0.1, 2.0, 0.2])
    small = np.array([5.0, -5.0])
    zeros = np.zeros(5)
    r = np.concatenate([biased, mixed, small, zeros])
    labels = np.repeat([0, 1, 2, 3], [6, 6, 2, 5])
    scales = cluster_scales(r, labels, 5)                      # cluster 4 has no points
    assert scales[0] == pytest.approx(1.4826 * 3.0, rel=1e-15)
    assert scales[1] == pytest.approx(1.4826 * 0.2, rel=1e-15)
    assert scales[2] == scales[3] == scales[4] == robust_scale(r)
    delta = regression_evidence([r], [scales[labels]])
    assert np.all(delta[:6] == 0.0)                             # the biased cluster's points are all accepted
    assert delta[10] == pytest.approx(math.log(1 / (2.0 / (1.4826 * 0.2)) ** 2), rel=1e-14)


def test_regression_evidence_uses_each_experts_cluster_scales():
    """evidence_ is regression_evidence of the LCO and K-NN residuals with each expert's scale taken on the point's
    cluster; a copy of a training point valued by value() gets the same intrinsic part with the LCO expert."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 3))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2 + 0.1 * rng.normal(size=400)
    y[rng.choice(300, 30, replace=False)] = rng.uniform(y.min(), y.max(), 30)
    est = EcoVal(n_clusters=6, random_state=0, verbose=False).fit(X[:300], y[:300], X[300:], y[300:])
    labels = est.cluster_labels_
    rows = propagation.training_rows(est)
    self_rows = np.full(300, -1, dtype=np.int64)
    self_rows[est._knn_ref] = np.arange(len(est._knn_ref))
    yy = est._data.y
    residuals = [yy - propagation.heldout_mean(est), yy - propagation.knn_expert_in_blocks(est, rows, self_rows)]
    scales = [cluster_scales(r, labels, 6)[labels] for r in residuals]
    np.testing.assert_allclose(est.evidence_, regression_evidence(residuals, scales), rtol=1e-12, atol=1e-15)
    assert not np.allclose(est.evidence_, regression_evidence(residuals, [robust_scale(r) for r in residuals]))
    lco = EcoVal(n_clusters=6, random_state=0, verbose=False, intrinsic="lco_proba").fit(X[:300], y[:300],
                                                                                          X[300:], y[300:])
    some = np.arange(0, 300, 11)
    np.testing.assert_allclose(lco.value(X[some], y[some]), lco.values_[some], rtol=1e-12, atol=1e-12)
