"""EcoVal (docs/ecoval.md): the identities of §3, the multiplicative rule of §4.3, the batched trainers against their single-model
versions, checkpoint/resume, and every error and warning.

The mock learner (TableLearner) makes U(S) a given table over cluster subsets: the cluster id is the last feature
column, fit() records which clusters it saw, predict_proba() writes that subset's code into its output, and the
callable metric table_metric(table) reads the code back and returns table[code]. It runs on EcoVal's loop path
like any scikit-learn-style learner, so no private hook is involved.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from lossval_fast.valuation import EcoVal as ExportedEcoVal
from lossval_fast.valuation import learners
from lossval_fast.valuation.ecoval import EcoVal, EcoValWarning, NotFittedError, cluster_quotas
from problems import gaussians


# ------------------------------------------------------------------------------------------------ fixtures
def small(seed=0, n=120, n_val=60, classes=2, d=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(classes, d))
    y = np.arange(n) % classes
    X = centres[y] + rng.normal(size=(n, d))
    yv = np.arange(n_val) % classes
    Xv = centres[yv] + rng.normal(size=(n_val, d))
    return X, y, Xv, yv


def regression(seed=0, n=200, n_val=80, d=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    X = rng.normal(size=(n, d))
    Xv = rng.normal(size=(n_val, d))
    return X, X @ w + 0.3 * rng.normal(size=n), Xv, Xv @ w + 0.3 * rng.normal(size=n_val)


class TableLearner:
    """Mock: its utility is table[bitmask of the clusters it was trained on] (read by table_metric)."""

    fits = 0
    fail_after = None

    def __init__(self, tag=0):
        self.tag = tag

    def get_params(self, deep=True):
        return {"tag": self.tag}

    def set_params(self, **params):
        self.tag = params.get("tag", self.tag)
        return self

    def fit(self, X, y):
        if TableLearner.fail_after is not None and TableLearner.fits >= TableLearner.fail_after:
            raise KeyboardInterrupt("simulated kill")
        TableLearner.fits += 1
        self.code_ = int(sum(1 << int(i) for i in np.unique(X[:, -1])))
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        out = np.full((len(X), len(self.classes_)), 0.5)
        out[:, 0] = -(self.code_ + 1.0)  # not a probability: the subset's code, for table_metric
        return out


def table_metric(table):
    def metric(y_true, proba):
        code = proba[0, 0]
        return float(table[int(round(-code)) - 1]) if code < 0 else float(table[0])  # u0's constant predictor: U(∅)
    return metric


def mock_data(p, per=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(p), per)
    X = np.column_stack([rng.normal(size=(p * per, 2)), ids])
    y = np.tile([0, 1], p * per // 2)            # both classes in every cluster: no subset is single-class
    return X, y, X[:4], y[:4], ids


def mock_fit(table, p, **kwargs):
    X, y, Xv, yv, ids = mock_data(p)
    kwargs.setdefault("intrinsic", "uniform")
    est = EcoVal(p, TableLearner(), metric=table_metric(table), verbose=False, **kwargs)
    return est.fit(X, y, Xv, yv, cluster_labels=ids)


@pytest.fixture(autouse=True)
def _reset_mock():
    TableLearner.fits, TableLearner.fail_after = 0, None
    yield
    TableLearner.fits, TableLearner.fail_after = 0, None


def full_mask(p):
    return (1 << p) - 1


def q_game(table, p):
    """The pairwise-truncated game q of docs/ecoval.md §3 on presence masks."""
    N = full_mask(p)
    UN = table[N]
    a = [UN - table[N ^ (1 << i)] for i in range(p)]
    e = {(i, j): UN - table[N ^ (1 << i) ^ (1 << j)] - a[i] - a[j] for i, j in itertools.combinations(range(p), 2)}

    def q(mask):
        gone = [i for i in range(p) if not mask >> i & 1]
        return UN - sum(a[i] for i in gone) - sum(e[ij] for ij in itertools.combinations(gone, 2))
    return q


def shapley(game, p):
    phi = np.zeros(p)
    for i in range(p):
        for mask in range(1 << p):
            if mask >> i & 1:
                continue
            s = bin(mask).count("1")
            phi[i] += math.factorial(s) * math.factorial(p - s - 1) / math.factorial(p) * (
                game(mask | 1 << i) - game(mask))
    return phi


# The multiplicative propagation (EcoVal-R's first rule, docs/ecoval.md §4.3): the tests of its identities name it;
# the default additive rule has its own tests in test_ecoval_propagation.py.
MULT = {"propagation": "multiplicative"}


def cluster_sums(est):
    return np.bincount(est.cluster_labels_, weights=est.values_, minlength=est.n_clusters_)


# ------------------------------------------------------------------------------------------------ T1-T11
@pytest.mark.parametrize("config", [
    {}, {"efficiency": "global"}, {"cluster_value": "cobb_douglas"}, {"gamma": 0.0}, {"intrinsic": "knn_agreement"},
    {"intrinsic": "uniform"}, {"lam": 0.5, "pairs": 3}])
def test_T1_cluster_sums(config):
    X, y, Xv, yv = small()
    est = EcoVal(6, verbose=False, **MULT, **config).fit(X, y, Xv, yv)
    np.testing.assert_allclose(cluster_sums(est), est.cluster_values_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.bincount(est.cluster_labels_, weights=est.weights_), 1.0, atol=1e-12)
    if config.get("cluster_value", "pairwise_shapley") == "pairwise_shapley" and "efficiency" not in config:
        assert np.array_equal(est.cluster_values_, est.lco_ + est.extrinsic_)
        assert est.gamma_beta_star_ == 1.0


@pytest.mark.parametrize("config", [{"lam": 0.0}, {"pairs": 0}])
def test_T2_copies_give_lco_over_size(config):
    rng = np.random.default_rng(3)
    points = rng.normal(scale=2.0, size=(8, 2))
    labels = np.repeat([0, 1], 4)
    sizes = np.array([5, 7, 9, 11, 6, 8, 10, 12])
    X = np.repeat(points, sizes, 0)
    y = np.repeat(labels, sizes)
    Xv, yv = points + 0.3 * rng.normal(size=points.shape), labels
    est = EcoVal(8, verbose=False, **MULT, **config).fit(X, y, Xv, yv)
    groups = np.repeat(np.arange(8), sizes)
    assert len({(g, c) for g, c in zip(groups, est.cluster_labels_)}) == 8   # one cluster per copied point
    n_i = np.bincount(est.cluster_labels_)
    np.testing.assert_allclose(est.values_, est.cluster_values_[est.cluster_labels_] / n_i[est.cluster_labels_],
                               rtol=1e-12, atol=1e-16)
    # without interactions the game is additive in the LCO values, with the one-class rule (label-pure clusters):
    # V = the Shapley value of q1(S) = u0 on one-class S, else U(N) - sum of a over the clusters not in S
    classes = est._cluster_classes.argmax(1)

    def q1(mask):
        kept = [i for i in range(8) if mask >> i & 1]
        if len({classes[i] for i in kept}) < 2:
            return est.u0_
        return est.utility_full_ - sum(est.lco_[i] for i in range(8) if i not in kept)
    np.testing.assert_allclose(est.cluster_values_, shapley(q1, 8), rtol=0, atol=1e-12)


@pytest.mark.parametrize("p", [3, 5, 8])
def test_T3_pairwise_value_is_shapley_of_q(p):
    table = np.random.default_rng(p).normal(size=1 << p)
    est = mock_fit(table, p)
    q = q_game(table, p)
    np.testing.assert_allclose(est.cluster_values_, shapley(q, p), rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.cluster_values_.sum(), q(full_mask(p)) - q(0), atol=1e-10)
    # q equals U on every trained subset
    N = full_mask(p)
    for i, j in itertools.combinations(range(p), 2):
        assert abs(q(N ^ (1 << i) ^ (1 << j)) - table[N ^ (1 << i) ^ (1 << j)]) < 1e-12


def pure_mock_fit(table, p, n_classes, **kwargs):
    """mock_fit with label-pure clusters (cluster i holds class i % n_classes): subsets with fewer than two classes
    are not fitted and score u0 = table[0]."""
    X, _, _, _, ids = mock_data(p)
    y = ids % n_classes
    kwargs.setdefault("intrinsic", "uniform")
    est = EcoVal(p, TableLearner(), metric=table_metric(table), verbose=False, **kwargs)
    return est.fit(X, y, X[:4], y[:4], cluster_labels=ids)


@pytest.mark.parametrize("p,n_classes", [(4, 2), (6, 2), (7, 3), (8, 2)])
def test_T3b_pairwise_value_is_shapley_of_q_with_the_one_class_rule(p, n_classes):
    """docs/ecoval.md §3: with label-pure clusters, V is the Shapley value of q1 = q on the subsets holding two
    classes or more and u0 on the others (the rule the utility obeys), and the values sum to U(N) - u0."""
    table = np.random.default_rng(10 * p + n_classes).normal(size=1 << p)
    est = pure_mock_fit(table, p, n_classes)
    classes = np.arange(p) % n_classes

    def one_class(mask):
        return len({classes[i] for i in range(p) if mask >> i & 1}) < 2

    seen = np.array([table[0] if one_class(m) else table[m] for m in range(1 << p)])   # what EcoVal trains
    q = q_game(seen, p)

    def q1(mask):
        return table[0] if one_class(mask) else q(mask)
    np.testing.assert_allclose(est.cluster_values_, shapley(q1, p), rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.cluster_values_.sum(), table[-1] - table[0], atol=1e-10)
    assert est.u0_ == table[0]
    # lam scales the interactions of the game whose Shapley value it is
    half = pure_mock_fit(table, p, n_classes, lam=0.5)
    N = full_mask(p)
    a = [seen[N] - seen[N ^ (1 << i)] for i in range(p)]

    def q_half(mask):
        gone = [i for i in range(p) if not mask >> i & 1]
        pairs = sum(seen[N] - seen[N ^ (1 << i) ^ (1 << j)] - a[i] - a[j] for i, j in itertools.combinations(gone, 2))
        return table[0] if one_class(mask) else seen[N] - sum(a[i] for i in gone) - 0.5 * pairs
    np.testing.assert_allclose(half.cluster_values_, shapley(q_half, p), rtol=0, atol=1e-10)


def test_T3c_one_class_rule_with_sampled_pairs_and_mixed_clusters():
    """Sampled pairs: the sums over unsampled partners are estimated (finite values, efficiency to U(N) - u0 up to
    the estimate); a cluster holding both classes ends every one-class subset: it gets the rule's whole jump."""
    p = 6
    table = np.random.default_rng(4).normal(size=1 << p)
    est = pure_mock_fit(table, p, 2, pairs=2)
    assert np.isfinite(est.cluster_values_).all()
    X, y, _, _, ids = mock_data(p)
    y = np.where(ids < 4, ids % 2, y)                      # clusters 4, 5 hold both classes (mock_data's labels)
    mixed = EcoVal(p, TableLearner(), metric=table_metric(table), intrinsic="uniform", verbose=False).fit(
        X, y, X[:4], y[:4], cluster_labels=ids)
    classes = [{0}, {1}, {0}, {1}, {0, 1}, {0, 1}]

    def one_class(mask):
        return len(set().union(*[classes[i] for i in range(p) if mask >> i & 1])) < 2
    seen = np.array([table[0] if one_class(m) else table[m] for m in range(1 << p)])
    q = q_game(seen, p)
    np.testing.assert_allclose(mixed.cluster_values_, shapley(lambda m: table[0] if one_class(m) else q(m), p),
                               rtol=0, atol=1e-10)


def test_T3d_one_class_correction_is_efficient_for_large_p():
    """The closed form of docs/ecoval.md §3 at p = 1,500 (C(p-1, s) far beyond float64): finite, and the values of
    q1 sum to U(N) - u0 (g(N) = 0 when N holds two classes)."""
    from lossval_fast.valuation.ecoval.cluster_values import interaction_sums, one_class_correction
    p = 1500
    rng = np.random.default_rng(0)
    a = rng.normal(scale=1e-3, size=p)
    pairs = [(i, j) for i in range(p) for j in rng.choice(np.arange(i + 1, p), size=min(3, p - i - 1), replace=False)]
    e_pairs = rng.normal(scale=1e-4, size=len(pairs))
    groups = np.where(np.arange(p) < 1200, 0, 1)
    groups[:5] = -1                                         # a few clusters hold both classes
    rowsum, ingroup = interaction_sums(e_pairs, pairs, p, groups)
    k = one_class_correction(a, rowsum, ingroup, 0.8, 0.6, groups)
    assert np.isfinite(k).all()
    np.testing.assert_allclose(np.sum(a + 0.5 * rowsum + k), 0.8 - 0.6, rtol=1e-9)


def test_T4_additive_utility():
    p = 6
    c = np.random.default_rng(1).normal(size=p)
    table = np.array([sum(c[i] for i in range(p) if m >> i & 1) for m in range(1 << p)])
    est = mock_fit(table, p)
    off = ~np.eye(p, dtype=bool)
    np.testing.assert_allclose(est.interactions_[off], 0.0, atol=1e-12)
    np.testing.assert_allclose(est.cluster_values_, c, atol=1e-12)
    np.testing.assert_allclose(est.cluster_values_.sum(), table[-1] - table[0], atol=1e-12)


@pytest.mark.parametrize("pairs,n_repeats", [("all", 1), ("all", 2), (2, 2), (0, 3)])
def test_T5_counts_fits(pairs, n_repeats):
    p = 5
    est = mock_fit(np.zeros(1 << p), p, pairs=pairs, n_repeats=n_repeats)
    n_pairs = len(est.pairs_)
    if pairs == "all":
        assert n_pairs == p * (p - 1) // 2
    if pairs == 0:
        assert n_pairs == 0
    assert est.n_trainings_ == n_repeats * (1 + p + n_pairs) == TableLearner.fits
    if pairs == 2:  # m partners per cluster, deduplicated, the same P in every repeat
        assert all(len(set(map(tuple, est.pairs_))) == n_pairs for _ in [0])
        degree = np.bincount(est.pairs_.ravel(), minlength=p)
        assert (degree >= 2).all()


def test_T5_single_class_subsets_are_skipped_alike_on_both_paths():
    X, y, Xv, yv = small(n=80)
    batched = EcoVal(4, verbose=False).fit(X, y, Xv, yv)            # 2 clusters per class
    # the 2 pairs that remove a whole class are not fitted: they get u0 and are not counted
    assert batched.n_trainings_ == 1 + 4 + 6 - 2
    removes_class = [k for k, (i, j) in enumerate(batched.pairs_) if (i < 2) == (j < 2)]
    assert len(removes_class) == 2
    assert np.all(batched.utilities_[0, 5 + np.array(removes_class)] == batched.u0_)
    loop = EcoVal(4, backend="loop", verbose=False).fit(X, y, Xv, yv)
    assert loop.n_trainings_ == batched.n_trainings_
    mock = EcoVal(4, TableLearner(), metric=table_metric(np.zeros(16)), verbose=False)
    Xm = np.column_stack([X, batched.cluster_labels_])
    mock.fit(Xm, y, np.column_stack([Xv, np.zeros(len(Xv))]), yv, cluster_labels=batched.cluster_labels_)
    assert mock.n_trainings_ == TableLearner.fits == 9


@pytest.mark.parametrize("intrinsic", ["lco_proba", "uniform"])
@pytest.mark.parametrize("backend", ["batched", "loop"])
def test_T6_a_copy_of_a_training_point_gets_its_value(intrinsic, backend):
    X, y, Xv, yv, _ = gaussians(0, n=240, n_val=100)
    est = EcoVal(6, intrinsic=intrinsic, backend=backend, verbose=False).fit(X, y, Xv, yv)
    assert np.array_equal(est.value(X, y), est.values_)
    order = np.random.default_rng(0).permutation(len(X))[:37]   # any subset, any order
    assert np.array_equal(est.value(X[order], y[order]), est.values_[order])


def test_T6_mlp_and_regression_and_refits():
    X, y, Xv, yv, _ = gaussians(1, n=100, n_val=50)
    est = EcoVal(4, "mlp", n_repeats=2, intrinsic="lco_proba", verbose=False).fit(X, y, Xv, yv)
    assert np.array_equal(est.value(X, y), est.values_)
    Xr, yr, Xrv, yrv = regression()
    reg = EcoVal(5, intrinsic="lco_proba", verbose=False).fit(Xr, yr, Xrv, yrv)
    assert reg.task_ == "regression" and reg.backend_.startswith("batched ridge")
    assert np.array_equal(reg.value(Xr, yr), reg.values_)
    # keep_models=False refits f_{-i} on demand: same values (loop: bit for bit; batched: to rounding)
    X, y, Xv, yv, _ = gaussians(2, n=160, n_val=80)
    for backend, tol in (("loop", 0.0), ("batched", 1e-9)):
        kept = EcoVal(5, backend=backend, intrinsic="lco_proba", verbose=False).fit(X, y, Xv, yv)
        lean = EcoVal(5, backend=backend, intrinsic="lco_proba", keep_models=False, verbose=False).fit(X, y, Xv, yv)
        assert lean._lco_models == {}
        np.testing.assert_allclose(lean.value(X, y), kept.values_, rtol=0, atol=tol)


def test_T6_sklearn_learner_on_the_loop_path():
    from sklearn.linear_model import LogisticRegression
    X, y, Xv, yv, _ = gaussians(3, n=150, n_val=60)
    est = EcoVal(4, LogisticRegression(), intrinsic="lco_proba", verbose=False).fit(X, y, Xv, yv)
    assert est.backend_.startswith("loop LogisticRegression")
    np.testing.assert_allclose(est.value(X, y), est.values_, rtol=1e-12, atol=1e-15)


def test_T7_gamma_zero_splits_evenly():
    X, y, Xv, yv = small()
    est = EcoVal(6, gamma=0.0, verbose=False, **MULT).fit(X, y, Xv, yv)
    n_i = np.bincount(est.cluster_labels_)
    assert np.array_equal(est.values_, est.cluster_values_[est.cluster_labels_] / n_i[est.cluster_labels_])


def test_T8_dummy_cluster_gets_zero():
    p, dummy = 6, 2
    base = np.random.default_rng(8).normal(size=1 << p)
    table = np.array([base[m & ~(1 << dummy)] for m in range(1 << p)])
    for intrinsic in ("uniform", "lco_proba"):
        est = mock_fit(table, p, intrinsic=intrinsic, **MULT)
        assert est.cluster_values_[dummy] == 0.0
        assert np.all(est.values_[est.cluster_labels_ == dummy] == 0.0)
        assert np.all(est.interactions_[dummy] == 0.0)


def test_T9_cobb_douglas_without_pairs():
    X, y, Xv, yv = small()
    est = EcoVal(6, cluster_value="cobb_douglas", pairs=0, metric="log_likelihood", verbose=False).fit(X, y, Xv, yv)
    U = est.utilities_[0]
    np.testing.assert_allclose(est.beta_star_, U[0] - U[1:7], rtol=0, atol=1e-12)   # log-likelihood: g = U
    np.testing.assert_allclose(est.cluster_values_.sum(), est.utility_full_ - est.u0_, rtol=1e-12)
    np.testing.assert_allclose(est.extrinsic_, est.cluster_values_ - est.lco_)
    # a positive metric: g = log U
    p = 5
    table = np.random.default_rng(9).uniform(0.5, 1.0, size=1 << p)
    mock = mock_fit(table, p, cluster_value="cobb_douglas", pairs=0)
    N = full_mask(p)
    np.testing.assert_allclose(mock.beta_star_, [np.log(table[N]) - np.log(table[N ^ (1 << i)]) for i in range(p)],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(mock.cluster_values_.sum(), table[N] - table[0], rtol=1e-12)


def test_T10_permuting_rows_permutes_values():
    p = 6
    table = np.random.default_rng(10).normal(size=1 << p)
    X, y, Xv, yv, ids = mock_data(p)
    perm = np.random.default_rng(0).permutation(len(X))
    for intrinsic in ("uniform", "lco_proba"):
        kw = dict(metric=table_metric(table), intrinsic=intrinsic, verbose=False)
        a = EcoVal(p, TableLearner(), **kw).fit(X, y, Xv, yv, cluster_labels=ids)
        b = EcoVal(p, TableLearner(), **kw).fit(X[perm], y[perm], Xv, yv, cluster_labels=ids[perm])
        assert np.array_equal(a.values_[perm], b.values_)
    X, y, Xv, yv, _ = gaussians(4, n=200, n_val=80)
    perm = np.random.default_rng(1).permutation(len(X))
    labels = EcoVal(6, verbose=False).fit(X, y, Xv, yv).cluster_labels_
    a = EcoVal(6, verbose=False).fit(X, y, Xv, yv, cluster_labels=labels)
    b = EcoVal(6, verbose=False).fit(X[perm], y[perm], Xv, yv, cluster_labels=labels[perm])
    np.testing.assert_allclose(a.values_[perm], b.values_, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_T11_two_gaussians_bottom_decile_finds_flips(seed):
    X, y, Xv, yv, flipped = gaussians(seed)
    est = EcoVal(10, random_state=seed, verbose=False).fit(X, y, Xv, yv)
    assert est.n_trainings_ == 56
    bottom = np.argsort(est.values_, kind="stable")[:60]
    assert flipped[bottom].mean() >= 0.5


# ------------------------------------------------------------------------------------------------ S1-S5
def test_S1_quotas():
    assert cluster_quotas(20, [500, 500]) == [10, 10]
    assert cluster_quotas(20, [900, 100]) == [18, 2]
    assert cluster_quotas(10, [950, 30, 20]) == [6, 2, 2]        # decrements: largest p_c > 2
    assert cluster_quotas(10, [5, 5, 5]) == [4, 3, 3]            # increments: largest n_c/p_c, then smaller label
    assert cluster_quotas(7, [10, 10, 10]) == [3, 2, 2]
    assert cluster_quotas(9, [8, 20, 22]) == [2, 4, 3]           # decrement ties: larger n_c
    assert cluster_quotas(9, [10, 20, 20]) == [2, 3, 4]          # ... then smaller label


@pytest.mark.parametrize("n,d", [(1001, 3), (333, 7)])
def test_S1_stratified_clustering(n, d):
    """Label-pure clusters numbered by class, every point at its nearest centroid within its class, and on
    separated blobs exactly the blobs (shapes that are not tile multiples)."""
    rng = np.random.default_rng(n)
    blob_of = rng.integers(0, 5, n)                               # classes 0 (blobs 0-1), 1 (2-4)
    centres = rng.normal(scale=30.0, size=(5, d))
    X = centres[blob_of] + rng.normal(size=(n, d))
    y = (blob_of >= 2).astype(int)
    est = EcoVal(5, pairs=0, verbose=False).fit(X, y, X[:20], y[:20])
    assert cluster_quotas(5, np.bincount(y)) == [2, 3]
    labels = est.cluster_labels_
    assert np.array_equal(np.unique(labels[y == 0]), [0, 1]) and np.array_equal(np.unique(labels[y == 1]), [2, 3, 4])
    assert len({(b, c) for b, c in zip(blob_of, labels)}) == 5    # the clusters are the blobs
    Z = (X - X.mean(0)) / X.std(0)
    for c in (0, 1):
        cands = np.flatnonzero(np.isin(np.arange(5), np.unique(labels[y == c])))
        dist = ((Z[y == c, None, :] - est.centroids_[None, cands, :]) ** 2).sum(2)
        assert np.array_equal(cands[dist.argmin(1)], labels[y == c])


def test_S1_clusters_of_regression_and_embedding():
    Xr, yr, Xrv, yrv = regression(n=150)
    est = EcoVal(4, pairs=0, verbose=False).fit(Xr, yr, Xrv, yrv)
    assert est.centroids_.shape == (4, Xr.shape[1] + 1)          # [z, y~]
    X, y, Xv, yv = small()
    emb = EcoVal(6, embed=lambda A: A[:, :2] * 10.0, intrinsic="lco_proba", verbose=False).fit(X, y, Xv, yv)
    assert emb.centroids_.shape == (6, 2)
    assert np.array_equal(emb.value(X, y), emb.values_)


@pytest.mark.parametrize("solver", ["lbfgs", "newton"])
@pytest.mark.parametrize("classes", [2, 3])
def test_S2_batched_logreg_equals_single_fits(solver, classes):
    """The batched trainer runs the single model's iterations: same iteration counts, same parameters to
    rounding (L-BFGS amplifies GEMM-vs-GEMV rounding over its iterations, hence 1e-9 rather than Newton's 1e-12)."""
    X, y, Xv, yv = small(n=150, classes=classes, d=4)
    rng = np.random.default_rng(0)
    cl = rng.integers(0, 5, len(X))
    removed = torch.zeros(4, 5, dtype=torch.bool)
    removed[1, 0] = True
    removed[2, [1, 3]] = True
    removed[3, 4] = True
    trainer = learners.BatchedLogReg(torch.tensor(X), torch.tensor(y), torch.tensor(cl), classes, solver=solver)
    out = trainer.fit(removed, [0] * 4)
    assert bool(out["converged"].all())
    tol = learners.LBFGS_TOL if solver == "lbfgs" else learners.TOL
    for s in range(4):
        rows = ~removed[s].numpy()[cl]
        single = learners.LogReg(n_classes=classes, solver=solver).fit(X[rows], y[rows])
        assert single.solver_ == solver and single.converged_
        np.testing.assert_allclose(out["W"][s].numpy(), np.vstack([single.coef_, single.intercept_]), rtol=0,
                                   atol=1e-9 if solver == "lbfgs" else 1e-12)
        assert single.n_iter_ == int(out["steps"][s])
        grad_inf = _logreg_gradient(X[rows], y[rows], out["W"][s].numpy(), classes)
        assert grad_inf <= tol


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_lbfgs_optimum_equals_newton_optimum(classes):
    """Strict convexity: L-BFGS at its tolerance (1e-8) and Newton run to 1e-10 find the same minimiser. L-BFGS
    stops with ||grad||_inf just below tol, so its parameters sit within about sqrt(P) tol / l2 of the optimum
    (l2 = 1e-3 bounds the curvature from below), and its predicted probabilities far closer."""
    X, y, Xv, yv = small(seed=3, n=200, classes=classes, d=5)
    lbfgs = learners.LogReg(n_classes=classes, solver="lbfgs").fit(X, y)
    newton = learners.LogReg(n_classes=classes, solver="newton", tol=1e-10).fit(X, y)
    assert lbfgs.converged_ and newton.converged_
    assert lbfgs.n_iter_ > newton.n_iter_
    W_l = np.vstack([lbfgs.coef_, lbfgs.intercept_])
    W_n = np.vstack([newton.coef_, newton.intercept_])
    np.testing.assert_allclose(W_l, W_n, rtol=0, atol=math.sqrt(W_l.size) * learners.LBFGS_TOL / learners.L2)
    np.testing.assert_allclose(lbfgs.predict_proba(Xv), newton.predict_proba(Xv), rtol=0, atol=1e-6)
    # batched, too: every subset model against its own Newton optimum
    cl = np.arange(len(X)) % 4
    removed = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    out_l = learners.BatchedLogReg(torch.tensor(X), torch.tensor(y), torch.tensor(cl), classes).fit(removed, [0] * 3)
    out_n = learners.BatchedLogReg(torch.tensor(X), torch.tensor(y), torch.tensor(cl), classes, solver="newton",
                                   tol=1e-10).fit(removed, [0] * 3)
    np.testing.assert_allclose(out_l["W"].numpy(), out_n["W"].numpy(), rtol=0,
                               atol=math.sqrt(W_l.size) * learners.LBFGS_TOL / learners.L2)


def test_logreg_solver_errors():
    X, y, _, _ = small()
    with pytest.raises(ValueError, match="solver must be one of"):
        learners.LogReg(solver="sgd").fit(X, y)
    with pytest.raises(ValueError, match="solver must be one of"):
        learners.BatchedLogReg(torch.tensor(X), torch.tensor(y), torch.zeros(len(X), dtype=torch.long), 2,
                               solver="sgd")
    with pytest.raises(ValueError, match="memory must be >= 1"):
        learners.LogReg(solver="lbfgs", memory=0).fit(X, y)
    with pytest.warns(RuntimeWarning, match="L-BFGS iterations"):
        learners.LogReg(solver="lbfgs", max_iter=2).fit(X, y)


def _logreg_gradient(X, y, W, C):
    Xb = np.column_stack([X, np.ones(len(X))])
    Z = Xb @ W
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    G = Xb.T @ (P - np.eye(C)[y]) / len(X) + 1e-3 * W
    return np.abs(G).max()


def test_S2_batched_ridge_equals_single_fits():
    X, y, _, _ = regression(n=120)
    cl = np.random.default_rng(1).integers(0, 4, len(X))
    removed = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    out = learners.BatchedRidge(torch.tensor(X), torch.tensor(y), torch.tensor(cl), 4).fit(removed, [0] * 3)
    for s in range(3):
        rows = ~removed[s].numpy()[cl]
        single = learners.Ridge().fit(X[rows], y[rows])
        np.testing.assert_allclose(out["theta"][s].numpy(), np.append(single.coef_, single.intercept_), atol=1e-10)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_S2_batched_mlp_equals_single_after_one_epoch(task):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 5))
    y = rng.integers(0, 3, 300) if task == "classification" else X @ rng.normal(size=5)
    cl = rng.integers(0, 6, 300)
    removed = torch.zeros(4, 6, dtype=torch.bool)
    removed[1, 0] = True
    removed[2, [1, 2]] = True
    removed[3, 5] = True
    seeds = [7, 7, 7, 9]
    outputs = 3 if task == "classification" else 1
    trainer = learners.BatchedMLP(torch.tensor(X), torch.tensor(y), torch.tensor(cl), outputs,
                                  classification=task == "classification", epochs=1, batch_size=32)
    out = trainer.fit(removed, seeds)
    for s in range(4):
        rows = np.flatnonzero(~removed[s].numpy()[cl])
        single = learners.MLP(epochs=1, batch_size=32, task=task, n_classes=3 if outputs == 3 else None,
                              random_state=seeds[s]).fit(X, y, rows=rows)
        for mine, key in zip(single.parameters_(), ("W1", "b1", "W2", "b2")):
            np.testing.assert_allclose(out[key][s].numpy(), mine.numpy(), rtol=0, atol=1e-4)
        assert int(out["steps"][s]) == math.ceil(len(rows) / 32)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_S2_estimator_batched_equals_loop(task):
    if task == "classification":
        X, y, Xv, yv, _ = gaussians(5, n=200, n_val=80, d=3)
    else:
        X, y, Xv, yv = regression(n=200)
    a = EcoVal(6, verbose=False).fit(X, y, Xv, yv)
    b = EcoVal(6, backend="loop", verbose=False).fit(X, y, Xv, yv)
    assert a.backend_.startswith("batched") and b.backend_.startswith("loop")
    assert a.n_trainings_ == b.n_trainings_
    np.testing.assert_allclose(a.utilities_, b.utilities_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.values_, b.values_, rtol=0, atol=1e-5)


def test_S2_estimator_mlp_batched_equals_loop():
    X, y, Xv, yv, _ = gaussians(6, n=90, n_val=40)
    a = EcoVal(4, "mlp", verbose=False).fit(X, y, Xv, yv)
    b = EcoVal(4, "mlp", backend="loop", verbose=False).fit(X, y, Xv, yv)
    np.testing.assert_allclose(a.values_, b.values_, rtol=0, atol=1e-5)


@pytest.mark.parametrize("learner", ["logreg", "mlp"])
def test_S3_chunking_does_not_change_results(learner):
    X, y, Xv, yv, _ = gaussians(7, n=120 if learner == "mlp" else 240, n_val=60)
    p = 4 if learner == "mlp" else 6
    whole = EcoVal(p, learner, n_repeats=2, verbose=False).fit(X, y, Xv, yv)
    chunked = EcoVal(p, learner, n_repeats=2, max_models_per_batch=5, verbose=False).fit(X, y, Xv, yv)
    np.testing.assert_allclose(chunked.utilities_, whole.utilities_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(chunked.values_, whole.values_, rtol=0, atol=1e-10)
    assert chunked.n_trainings_ == whole.n_trainings_


def test_S4_models_of_a_repeat_start_identical(monkeypatch):
    X, y, Xv, yv, _ = gaussians(8, n=80, n_val=40)
    trainer = learners.BatchedMLP(torch.tensor(X), torch.tensor(y), torch.zeros(80, dtype=torch.long), 2)
    W1, b1, W2, b2 = trainer.initial_parameters([3, 3, 3, 4])
    for t in (W1, b1, W2, b2):
        assert torch.equal(t[0], t[1]) and torch.equal(t[0], t[2]) and not torch.equal(t[0], t[3])
    seen = []
    original = learners.BatchedMLP.fit

    def spy(self, removed, seeds):
        seen.append((removed.clone(), list(seeds)))
        return original(self, removed, seeds)
    monkeypatch.setattr(learners.BatchedMLP, "fit", spy)
    est = EcoVal(4, "mlp", n_repeats=2, verbose=False).fit(X, y, Xv, yv)
    seeds = [s for _, part in seen for s in part]
    per_repeat = len(seeds) // 2
    assert len(set(seeds[:per_repeat])) == 1 and len(set(seeds[per_repeat:])) == 1
    assert seeds[0] != seeds[-1] and seeds[0] == est._seeds[0]
    # logistic regression: every subset model starts from zero (no step taken yet), with either solver
    masks = torch.ones(3, 80, dtype=torch.float64)
    masks[1, :10] = 0
    for solver in ("lbfgs", "newton"):
        lr = learners.BatchedLogReg(torch.tensor(X), torch.tensor(y), torch.zeros(80, dtype=torch.long), 2,
                                    max_iter=0, solver=solver)
        W, V, steps, _ = lr.optimizer.fit(masks)
        assert torch.count_nonzero(W) == 0 and int(steps.sum()) == 0


# ------------------------------------------------------------------------------------------------ S5: errors
@pytest.fixture(scope="module")
def data():
    return small()


@pytest.mark.parametrize("kwargs,match", [
    ({"n_clusters": 1}, "n_clusters must be >= 2"),
    ({"n_clusters": 200}, "n_clusters must be <= the number of training points"),
    ({"lam": -0.1}, "lam must be"),
    ({"gamma": -1.0}, "gamma must be"),
    ({"eps": 0.0}, r"eps must be in the open interval \(0, 1\)"),
    ({"eps": 1.0}, r"eps must be in the open interval \(0, 1\)"),
    ({"pairs": -1}, "pairs must be 'all' or an int >= 0"),
    ({"pairs": "some"}, "pairs must be 'all'"),
    ({"cluster_value": "banzhaf"}, "cluster_value must be one of"),
    ({"intrinsic": "oob"}, "intrinsic must be None or one of"),
    ({"metric": "f1"}, "metric must be None"),
    ({"n_repeats": 0}, "n_repeats must be"),
    ({"backend": "gpu"}, "backend must be one of"),
    ({"learner": "svm"}, "learner must be None"),
    ({"learner": "ridge"}, "learner='ridge' is for regression"),
    ({"task": "ranking"}, "task must be one of"),
    ({"efficiency": "local"}, "efficiency must be None or 'global'"),
    ({"max_models_per_batch": 0}, "max_models_per_batch"),
    ({"random_state": -1}, "random_state must be None or an int >= 0"),
    ({"knn_k": 0}, "knn_k must be"),
    ({"n_jobs": 0}, "n_jobs must be"),
])
def test_S5_parameter_errors(data, kwargs, match):
    X, y, Xv, yv = data
    kwargs = dict(kwargs)
    n_clusters = kwargs.pop("n_clusters", 6)
    with pytest.raises(ValueError, match=match):
        EcoVal(n_clusters, verbose=False, **kwargs).fit(X, y, Xv, yv)


def test_S5_data_errors(data):
    X, y, Xv, yv = data
    est = EcoVal(6, verbose=False)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="X contains 1 NaN or inf"):
        est.fit(bad, y, Xv, yv)
    badv = Xv.copy()
    badv[0, 0] = np.inf
    with pytest.raises(ValueError, match="X_val contains 1 NaN or inf"):
        est.fit(X, y, badv, yv)
    with pytest.raises(ValueError, match="y contains 1 NaN or inf"):
        est.fit(X, np.where(np.arange(len(y)) == 0, np.nan, y), Xv, yv)
    with pytest.raises(ValueError, match="y_val contains 1 NaN or inf"):
        est.fit(X, y, Xv, np.where(np.arange(len(yv)) == 0, np.inf, yv).astype(float))
    with pytest.raises(ValueError, match=r"y must have one entry per row of X: expected shape \(120,\)"):
        est.fit(X, y[:-1], Xv, yv)
    with pytest.raises(ValueError, match="y_val must have one entry per row of X_val"):
        est.fit(X, y, Xv, yv[:-2])
    with pytest.raises(ValueError, match="X_val must have 3 features like X"):
        est.fit(X, y, Xv[:, :2], yv)
    with pytest.raises(ValueError, match="X_val is empty"):
        est.fit(X, y, Xv[:0], yv[:0])
    with pytest.raises(ValueError, match="only one class"):
        est.fit(X, np.zeros(len(y), dtype=int), Xv, yv)
    lonely = y.copy()
    lonely[0] = 7                                                # class 7 has 1 point, its quota is 2
    with pytest.raises(ValueError, match="class 7 has 1 training point"):
        est.fit(X, lonely, Xv, yv)
    with pytest.raises(ValueError, match="cluster_labels must have one entry per row"):
        est.fit(X, y, Xv, yv, cluster_labels=np.zeros(5))


def test_S5_regression_only_errors():
    X, y, Xv, yv = regression()
    with pytest.raises(ValueError, match="cobb_douglas.*classification"):
        EcoVal(4, cluster_value="cobb_douglas", verbose=False).fit(X, y, Xv, yv)
    with pytest.raises(ValueError, match="knn_agreement.*classification"):
        EcoVal(4, intrinsic="knn_agreement", verbose=False, **MULT).fit(X, y, Xv, yv)
    with pytest.raises(ValueError, match="learner='logreg' is for classification"):
        EcoVal(4, "logreg", verbose=False).fit(X, y, Xv, yv)
    with pytest.raises(ValueError, match="metric='accuracy' is for classification"):
        EcoVal(4, metric="accuracy", verbose=False).fit(X, y, Xv, yv)


def test_S5_learner_type_errors(data):
    X, y, Xv, yv = data

    class NoFit:
        def predict_proba(self, X):
            return np.zeros((len(X), 2))

    class NoProba:
        def fit(self, X, y):
            return self

        def predict(self, X):
            return np.zeros(len(X))

    with pytest.raises(TypeError, match="learner must have a fit method"):
        EcoVal(6, NoFit(), verbose=False).fit(X, y, Xv, yv)
    with pytest.raises(TypeError, match="learner must have a predict_proba method"):
        EcoVal(6, NoProba(), verbose=False).fit(X, y, Xv, yv)

    class NoPredict:
        def fit(self, X, y):
            return self

    Xr, yr, Xrv, yrv = regression()
    with pytest.raises(TypeError, match="learner must have a predict method"):
        EcoVal(4, NoPredict(), verbose=False).fit(Xr, yr, Xrv, yrv)
    with pytest.raises(ValueError, match="backend='batched' needs a built-in learner"):
        EcoVal(6, NoProba(), backend="batched", verbose=False).fit(Xr, yr, Xrv, yrv)


def test_S5_value_errors(data):
    X, y, Xv, yv = data
    with pytest.raises(NotFittedError, match="not fitted"):
        EcoVal(6).value(X, y)
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    est = EcoVal(6, verbose=False).fit(X, y, Xv, yv)
    bad = X[:3].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="X_new contains 1 NaN or inf"):
        est.value(bad, y[:3])
    with pytest.raises(ValueError, match="X_new must have 3 features"):
        est.value(X[:3, :2], y[:3])
    with pytest.raises(ValueError, match="y_new must have one entry per row of X_new"):
        est.value(X[:3], y[:2])
    with pytest.raises(ValueError, match=r"y_new holds label\(s\) \[5\] not seen in y"):
        est.value(X[:2], np.array([0, 5]))


def _warns(match, fn):
    with pytest.warns(EcoValWarning, match=match):
        return fn()


def test_S5_warnings():
    X, y, Xv, yv = small(classes=3)
    est = _warns("raised to p=6", lambda: EcoVal(4, pairs=0, verbose=False).fit(X, y, Xv, yv))
    assert est.n_clusters_ == 6
    # two distinct points in class 0 but three clusters: one centroid is a duplicate and ends up empty
    rng = np.random.default_rng(0)
    Xd = np.vstack([np.repeat([[0.0, 0.0], [5.0, 5.0]], 15, 0), rng.normal(size=(30, 2)) + 20])
    yd = np.repeat([0, 1], [30, 30])
    est = _warns("were dropped", lambda: EcoVal(6, pairs=0, verbose=False).fit(Xd, yd, Xd, yd))
    assert est.n_clusters_ == 5 and np.bincount(est.cluster_labels_).min() > 0
    _warns(r"y_val holds label\(s\) \[9\] absent from y",
           lambda: EcoVal(6, pairs=0, verbose=False).fit(X, y, Xv, np.where(np.arange(len(yv)) == 0, 9, yv)))
    p = 4
    # efficiency skipped: the cluster values sum to a positive number, U(N) - u0 < 0
    table = np.array([bin(m).count("1") for m in range(1 << p)], dtype=float)
    table[0] = 100.0
    est = _warns("efficiency='global' skipped", lambda: mock_fit(table, p, efficiency="global"))
    assert est.gamma_beta_star_ == 1.0
    # Variant B: elasticities summing to <= 0 (more data, lower utility), and utilities <= 0 clipped
    falling = np.array([1.0 / (1 + bin(m).count("1")) for m in range(1 << p)])
    est = _warns("elasticities sum to", lambda: mock_fit(falling, p, cluster_value="cobb_douglas"))
    assert est.gamma_beta_star_ == 1.0
    signed = np.linspace(-1.0, 1.0, 1 << p)
    _warns("clipped to 1e-06", lambda: mock_fit(signed, p, cluster_value="cobb_douglas"))


def test_efficiency_global_rescales():
    X, y, Xv, yv = small()
    est = EcoVal(6, efficiency="global", verbose=False, **MULT).fit(X, y, Xv, yv)
    plain = EcoVal(6, verbose=False, **MULT).fit(X, y, Xv, yv)
    np.testing.assert_allclose(est.cluster_values_.sum(), est.utility_full_ - est.u0_, rtol=1e-12)
    np.testing.assert_allclose(est.cluster_values_, est.gamma_beta_star_ * plain.cluster_values_, rtol=1e-12)
    assert np.array_equal(np.argsort(est.values_), np.argsort(plain.values_))


# ------------------------------------------------------------------------------------------------ regression paths
def test_regression_residual_intrinsic_by_hand():
    X, y, Xv, yv = regression(n=150)
    est = EcoVal(4, pairs=0, verbose=False, **MULT).fit(X, y, Xv, yv)
    Xs = (X - X.mean(0)) / X.std(0)
    g = np.empty(len(X))
    resid = np.empty(len(X))
    for i in range(4):
        rows = est.cluster_labels_ == i
        model = learners.Ridge().fit(Xs[~rows], (y[~rows] - y.mean()) / y.std())
        resid[rows] = y[rows] - (y.mean() + y.std() * model.predict(Xs[rows]))
    for i in range(4):
        rows = est.cluster_labels_ == i
        g[rows] = np.exp(-resid[rows] ** 2 / (2 * np.mean(resid[rows] ** 2)))
    np.testing.assert_allclose(est.intrinsic_, np.maximum(g, 1e-3), rtol=1e-8)
    np.testing.assert_allclose(cluster_sums(est), est.cluster_values_, atol=1e-12)
    # R^2 utility, u0 = 0
    assert est.u0_ == 0.0 and 0.5 < est.utility_full_ <= 1.0
    uniform = EcoVal(4, pairs=0, intrinsic="uniform", verbose=False, **MULT).fit(X, y, Xv, yv)
    n_i = np.bincount(uniform.cluster_labels_)
    np.testing.assert_allclose(uniform.values_, uniform.cluster_values_[uniform.cluster_labels_] /
                               n_i[uniform.cluster_labels_], rtol=1e-14)


def test_regression_mlp_and_task_auto():
    X, y, Xv, yv = regression(n=80, n_val=40)
    est = EcoVal(4, "mlp", pairs=0, intrinsic="lco_proba", verbose=False).fit(X, y, Xv, yv)
    assert est.backend_.startswith("batched mlp") and est.task_ == "regression"
    assert np.array_equal(est.value(X, y), est.values_)
    Xc, yc, Xcv, ycv = small()
    assert EcoVal(6, pairs=0, verbose=False).fit(Xc, yc.astype(float), Xcv, ycv).task_ == "classification"
    labels = np.array(["cat", "dog"])[yc]
    named = EcoVal(6, pairs=0, verbose=False).fit(Xc, labels, Xcv, np.array(["cat", "dog"])[ycv])
    assert list(named.classes_) == ["cat", "dog"]
    np.testing.assert_allclose(named.values_,
                               EcoVal(6, pairs=0, verbose=False).fit(Xc, yc, Xcv, ycv).values_, atol=0)


# ------------------------------------------------------------------------------------------------ other paths
def test_knn_agreement_by_hand():
    X, y, Xv, yv = small(n=90)
    est = EcoVal(6, intrinsic="knn_agreement", knn_k=5, pairs=0, verbose=False, **MULT).fit(X, y, Xv, yv)
    Z = (X - X.mean(0)) / X.std(0)
    d2 = ((Z[:, None] - Z[None]) ** 2).sum(2)
    np.fill_diagonal(d2, np.inf)
    share = (y[np.argsort(d2, 1, kind="stable")[:, :5]] == y[:, None]).mean(1)
    np.testing.assert_allclose(est.intrinsic_, np.maximum(share, 1e-3))
    new = est.value(X[:10] + 0.01, y[:10])
    assert new.shape == (10,) and np.all(np.isfinite(new))


def test_negative_cluster_value_weights_the_contradicted_points():
    X, y, Xv, yv, flipped = gaussians(0)
    est = EcoVal(10, verbose=False, **MULT).fit(X, y, Xv, yv)
    neg = np.flatnonzero(est.cluster_values_ < 0)
    assert len(neg)  # flipped-heavy clusters hurt
    for i in neg:
        rows = est.cluster_labels_ == i
        g = est.agreement_[rows]
        expected = np.maximum(1 - g, 1e-3) / np.maximum(1 - g, 1e-3).sum()
        np.testing.assert_allclose(est.weights_[rows], expected, rtol=1e-12)


def test_absent_classes_get_probability_zero():
    from sklearn.linear_model import LogisticRegression
    X, y, Xv, yv = small(n=90, classes=3)
    clusters = np.where(y == 2, 0, 1 + np.arange(len(y)) % 3)    # cluster 0 holds all of class 2
    est = EcoVal(4, LogisticRegression(max_iter=500), verbose=False, **MULT).fit(X, y, Xv, yv,
                                                                             cluster_labels=clusters)
    # f_{-0} never saw class 2: p(y=2 | x) = 0 for the held-out points, so their scores sit at eps
    np.testing.assert_allclose(est.intrinsic_[clusters == 0], 1e-3)
    assert np.isfinite(est.values_).all()


def test_loop_n_jobs_matches_sequential():
    from sklearn.linear_model import LogisticRegression
    X, y, Xv, yv = small(n=60)
    a = EcoVal(4, LogisticRegression(), verbose=False).fit(X, y, Xv, yv)
    b = EcoVal(4, LogisticRegression(), n_jobs=2, verbose=False).fit(X, y, Xv, yv)
    np.testing.assert_allclose(a.values_, b.values_, rtol=0, atol=1e-14)
    assert a.n_trainings_ == b.n_trainings_


def test_repeats_and_attributes():
    X, y, Xv, yv = small()
    est = EcoVal(6, n_repeats=3, pairs=2, verbose=False).fit(X, y, Xv, yv)
    p = est.n_clusters_
    assert est.utilities_.shape == (3, 1 + p + len(est.pairs_))
    np.testing.assert_allclose(est.utilities_[0], est.utilities_[2], atol=1e-12)   # logreg is deterministic
    for name, shape in [("values_", (120,)), ("cluster_labels_", (120,)), ("lco_", (p,)), ("extrinsic_", (p,)),
                        ("interactions_", (p, p)), ("cluster_values_", (p,)), ("beta_star_", (p,)),
                        ("intrinsic_", (120,)), ("weights_", (120,))]:
        assert getattr(est, name).shape == shape, name
    e = est.interactions_
    assert np.all(np.diag(e) == 0) and np.array_equal(np.isnan(e), np.isnan(e.T))
    trained = {tuple(sorted(pq)) for pq in est.pairs_.tolist()}
    for i, j in itertools.combinations(range(p), 2):
        assert np.isnan(e[i, j]) == ((i, j) not in trained)
    assert isinstance(est.utility_full_, float) and isinstance(est.gamma_beta_star_, float)
    assert ExportedEcoVal is EcoVal


@pytest.mark.parametrize("backend", ["batched", "loop"])
@pytest.mark.parametrize("metric", ["log_likelihood", "accuracy", "expected_accuracy", "r2"])
def test_utility_points_average_to_the_utilities(metric, backend):
    """utility_points_ (R, S, m): one utility per validation point, whose mean is utilities_ (skipped subsets:
    u0's points); a callable metric has none."""
    from sklearn.linear_model import LogisticRegression, Ridge as SkRidge

    def learner(classification):   # the loop path's record is the same for every learner: a fast one
        return None if backend == "batched" else LogisticRegression() if classification else SkRidge()

    if metric == "r2":
        X, y, Xv, yv = regression()
        est = EcoVal(4, learner(False), n_repeats=2, metric=metric, verbose=False).fit(X, y, Xv, yv)
    else:
        X, y, Xv, yv = small(classes=3)
        est = EcoVal(6, learner(True), n_repeats=2, metric=metric, verbose=False).fit(X, y, Xv, yv)
    assert est.backend_.startswith(backend)
    points = est.utility_points_
    assert points.shape == est.utilities_.shape + (len(yv),) and points.dtype == np.float64
    np.testing.assert_allclose(points.mean(-1), est.utilities_, rtol=0, atol=1e-12)
    if metric == "accuracy":
        assert set(np.unique(points)) <= {0.0, 1.0}
    X, y, Xv, yv = small()
    skipping = EcoVal(4, learner(True), metric=None if metric == "r2" else metric,
                      verbose=False).fit(X, y, Xv, yv)                 # pairs of a class's 2 clusters: skipped
    skipped = np.isclose(skipping.utilities_[0], skipping.u0_, rtol=0, atol=0)
    assert skipped.any()
    np.testing.assert_allclose(skipping.utility_points_.mean(-1), skipping.utilities_, rtol=0, atol=1e-12)
    custom = EcoVal(4, learner(True), pairs=0, metric=lambda t, p: float(np.mean(p[:, 0])),
                    verbose=False).fit(X, y, Xv, yv)
    assert custom.utility_points_ is None


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_resume_batched(tmp_path, monkeypatch):
    X, y, Xv, yv, _ = gaussians(9, n=200, n_val=80)
    path = tmp_path / "ecoval.ckpt"
    full = EcoVal(6, max_models_per_batch=6, verbose=False).fit(X, y, Xv, yv)
    calls = {"n": 0}
    original = learners.BatchedLogReg.fit

    def dying(self, removed, seeds):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(self, removed, seeds)
    monkeypatch.setattr(learners.BatchedLogReg, "fit", dying)
    with pytest.raises(KeyboardInterrupt):
        EcoVal(6, max_models_per_batch=6, checkpoint=path, verbose=False).fit(X, y, Xv, yv)
    monkeypatch.setattr(learners.BatchedLogReg, "fit", original)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    assert set(torch.load(path, weights_only=True)) >= {"U", "done", "heldout", "models", "fingerprint"}
    resumed = EcoVal(6, max_models_per_batch=6, checkpoint=path, verbose=False).fit(X, y, Xv, yv)
    assert resumed.n_trainings_ == full.n_trainings_ - 12
    # with a checkpoint the LCO held-out outputs are made per chunk, without one after the last chunk: same bits
    assert np.array_equal(resumed._heldout, full._heldout) and np.array_equal(resumed.values_, full.values_)
    assert np.array_equal(resumed.utility_points_, full.utility_points_)
    assert np.array_equal(resumed.value(X, y), full.value(X, y))
    again = EcoVal(6, max_models_per_batch=6, checkpoint=path, verbose=False).fit(X, y, Xv, yv)
    assert again.n_trainings_ == 0 and np.array_equal(again.values_, full.values_)
    with pytest.raises(ValueError, match=r"belongs to a different configuration .*S: checkpoint has 22, this fit "
                                         r"has 7"):
        EcoVal(6, pairs=0, checkpoint=path, verbose=False).fit(X, y, Xv, yv)
    with pytest.raises(ValueError, match=r"ecoval.ckpt.*data: checkpoint has '[0-9a-f]+', this fit has"):
        EcoVal(6, max_models_per_batch=6, checkpoint=path, verbose=False).fit(X, y, Xv, 1 - yv)
    import os
    import pickle

    class Payload:  # a file that would run code if unpickled is refused without running it
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))
    hostile = tmp_path / "hostile.ckpt"
    hostile.write_bytes(pickle.dumps({"fingerprint": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="hostile.ckpt.*holds Python objects other than tensors"):
        EcoVal(6, checkpoint=hostile, verbose=False).fit(X, y, Xv, yv)
    assert not (tmp_path / "ran").exists()


def test_checkpoint_resume_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(EcoVal, "_checkpoint_interval", 0.0)
    p = 5
    table = np.random.default_rng(11).normal(size=1 << p)
    X, y, Xv, yv, ids = mock_data(p)
    path = tmp_path / "loop.ckpt"
    kw = dict(metric=table_metric(table), intrinsic="lco_proba", verbose=False)
    full = EcoVal(p, TableLearner(), **kw).fit(X, y, Xv, yv, cluster_labels=ids)
    TableLearner.fits, TableLearner.fail_after = 0, 7
    with pytest.raises(KeyboardInterrupt):
        EcoVal(p, TableLearner(), checkpoint=path, **kw).fit(X, y, Xv, yv, cluster_labels=ids)
    TableLearner.fits, TableLearner.fail_after = 0, None
    resumed = EcoVal(p, TableLearner(), checkpoint=path, **kw).fit(X, y, Xv, yv, cluster_labels=ids)
    assert resumed.n_trainings_ == TableLearner.fits == full.n_trainings_ - 7
    assert np.array_equal(resumed.values_, full.values_)
    assert np.array_equal(resumed.value(X, y), full.value(X, y))


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    X, y, Xv, yv = small(n=60)
    EcoVal(4, verbose=True).fit(X, y, Xv, yv)
    assert "EcoVal" not in capsys.readouterr().err                    # captured stderr is not a terminal
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    EcoVal(4, verbose=True).fit(X, y, Xv, yv)
    assert "EcoVal" in capsys.readouterr().err
    EcoVal(4, verbose=False).fit(X, y, Xv, yv)
    assert "EcoVal" not in capsys.readouterr().err
