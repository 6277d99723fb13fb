"""lossval_fast.valuation.shapley: the exact subset formula, exact cluster Shapley with the batched learners, TMC
Data Shapley, the rank correlations, and the argument checks. Shapes stay small (CI has 2 cores)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lossval_fast.valuation import learners
from lossval_fast.valuation.shapley import (MAX_EXACT_CLUSTERS, SubsetGame, exact_cluster_shapley,
                                            shapley_from_utilities, spearman, split_half_correlation, tmc_shapley)


def _classification(n=40, d=3, m=30, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * [1.0, 3.0, 0.5] + [0.5, -1.0, 2.0]
    W = rng.normal(size=(d, classes))
    y = (X @ W + rng.gumbel(size=(n, classes))).argmax(1)
    Xv = rng.normal(size=(m, d)) * [1.0, 3.0, 0.5] + [0.5, -1.0, 2.0]
    yv = (Xv @ W + rng.gumbel(size=(m, classes))).argmax(1)
    return X, y, Xv, yv


def _regression(n=40, d=3, m=30, seed=1):
    rng = np.random.default_rng(seed)
    w = np.array([1.0, -2.0, 0.5])
    X = rng.normal(size=(n, d))
    Xv = rng.normal(size=(m, d))
    return X, 10.0 + 4.0 * (X @ w + 0.5 * rng.normal(size=n)), Xv, 10.0 + 4.0 * (Xv @ w + 0.5 * rng.normal(size=m))


def _subset(mask: int, p: int) -> list[int]:
    return [i for i in range(p) if mask >> i & 1]


def _permutation_average(U: np.ndarray, p: int) -> np.ndarray:
    """Shapley values as the mean marginal contribution over all p! orders."""
    total = np.zeros(p)
    orders = list(itertools.permutations(range(p)))
    for order in orders:
        mask = 0
        for i in order:
            total[i] += U[mask | 1 << i] - U[mask]
            mask |= 1 << i
    return total / len(orders)


# ------------------------------------------------------------------------------------------------ subset formula
def test_additive_utility_gives_each_cluster_its_contribution():
    p = 6
    contribution = np.array([0.3, -1.2, 2.5, 0.0, 0.7, -0.05])
    U = np.array([-4.0 + sum(contribution[i] for i in _subset(m, p)) for m in range(1 << p)])
    np.testing.assert_allclose(shapley_from_utilities(U), contribution, atol=1e-12)


def test_subset_formula_equals_the_average_over_all_orders():
    p = 5
    U = np.random.default_rng(3).normal(size=1 << p)
    values = shapley_from_utilities(U)
    assert len(list(itertools.permutations(range(p)))) == 120
    np.testing.assert_allclose(values, _permutation_average(U, p), atol=1e-12)
    assert values.sum() == pytest.approx(U[-1] - U[0], abs=1e-12)          # efficiency


def test_symmetric_and_null_players():
    # U(S) depends on S only through whether it holds player 0 or player 1 (symmetric); player 2 adds nothing
    p = 3
    U = np.array([float(bool(m & 1) or bool(m & 2)) for m in range(1 << p)])
    values = shapley_from_utilities(U)
    np.testing.assert_allclose(values, [0.5, 0.5, 0.0], atol=1e-15)


# ------------------------------------------------------------------------------------------------ exact, learners
def test_exact_cluster_shapley_classification_matches_single_fits():
    X, y, Xv, yv = _classification()
    labels = np.arange(len(X)) % 4
    labels[y == 1] = np.where(labels[y == 1] == 3, 2, labels[y == 1])  # cluster 3 holds class 0 only
    values, U = exact_cluster_shapley(X, y, Xv, yv, labels, task="classification", solver="lbfgs", min_classes=1)
    assert values.shape == (4,) and U.shape == (16,)
    assert values.sum() == pytest.approx(U[-1] - U[0], abs=1e-12)
    np.testing.assert_allclose(values, shapley_from_utilities(U), atol=0)
    mu, sd = X.mean(0), X.std(0)
    # the empty subset: the training class frequencies
    freq = np.bincount(y, minlength=2) / len(y)
    assert U[0] == pytest.approx(np.mean(np.log(freq[yv])), abs=1e-12)
    # a few subsets, also the one that misses class 1 (cluster 3 alone), against one LogReg fit each
    for mask in (0b1000, 0b0101, 0b1111):
        rows = np.isin(labels, _subset(mask, 4))
        model = learners.LogReg(solver="lbfgs", n_classes=2).fit((X[rows] - mu) / sd, y[rows])
        proba = model.predict_proba((Xv - mu) / sd)
        expected = np.mean(np.log(np.maximum(proba[np.arange(len(yv)), yv], 1e-12)))
        assert U[mask] == pytest.approx(expected, abs=1e-6)
    assert np.isfinite(U).all()


def test_expected_accuracy_game_matches_single_fits_and_ecoval():
    """metric="expected_accuracy": U = mean probability of the validation labels, u0 = mean training frequency of
    them; the same numbers as one LogReg fit per subset, and EcoVal's default utility is this game's."""
    from lossval_fast.valuation import EcoVal
    X, y, Xv, yv = _classification(n=48, seed=3)
    labels = np.arange(len(X)) % 4
    values, U = exact_cluster_shapley(X, y, Xv, yv, labels, task="classification", metric="expected_accuracy")
    assert values.sum() == pytest.approx(U[-1] - U[0], abs=1e-12)
    freq = np.bincount(y, minlength=2) / len(y)
    assert U[0] == pytest.approx(np.mean(freq[yv]), abs=1e-12)
    mu, sd = X.mean(0), X.std(0)
    for mask in (0b0011, 0b1010, 0b1111):
        rows = np.isin(labels, _subset(mask, 4))
        model = learners.LogReg(n_classes=2).fit((X[rows] - mu) / sd, y[rows])
        proba = model.predict_proba((Xv - mu) / sd)
        assert U[mask] == pytest.approx(np.mean(proba[np.arange(len(yv)), yv]), abs=1e-6)
    log_values, log_U = exact_cluster_shapley(X, y, Xv, yv, labels, task="classification")
    assert not np.allclose(log_U, U)                      # the default game is still the log-likelihood one
    est = EcoVal(4, task="classification", random_state=0, verbose=False).fit(X, y, Xv, yv, cluster_labels=labels)
    assert est.metric_ == "expected_accuracy"
    assert est.utility_full_ == pytest.approx(U[-1], abs=1e-6)
    assert est.u0_ == pytest.approx(U[0], abs=1e-12)
    # all pairs, lambda = 1: EcoVal's cluster values are the Shapley values of the pairwise-truncated game, which
    # at p = 4 differs from U only on the subsets of 0 and 1 clusters
    assert np.corrcoef(est.cluster_values_, values)[0, 1] > 0.5


def test_exact_cluster_shapley_regression_matches_single_fits_and_chunking():
    X, y, Xv, yv = _regression()
    labels = np.random.default_rng(0).integers(0, 5, size=len(X))
    labels[:5] = np.arange(5)
    values, U = exact_cluster_shapley(X, y, Xv, yv, labels, task="regression")
    again, U2 = exact_cluster_shapley(X, y, Xv, yv, labels, task="regression", max_models_per_batch=3)
    np.testing.assert_allclose(U2, U, rtol=0, atol=1e-10)
    np.testing.assert_allclose(again, values, rtol=0, atol=1e-10)
    ss = np.sum((yv - yv.mean()) ** 2)
    assert U[0] == pytest.approx(1 - np.sum((yv - y.mean()) ** 2) / ss, abs=1e-12)
    mu, sd = X.mean(0), X.std(0)
    ymu, ysd = y.mean(), y.std()
    for mask in (0b00001, 0b10110, 0b11111):
        rows = np.isin(labels, _subset(mask, 5))
        model = learners.Ridge().fit((X[rows] - mu) / sd, (y[rows] - ymu) / ysd)
        pred = model.predict((Xv - mu) / sd) * ysd + ymu
        assert U[mask] == pytest.approx(1 - np.sum((yv - pred) ** 2) / ss, abs=1e-9)
    assert values.sum() == pytest.approx(U[-1] - U[0], abs=1e-12)


def test_cluster_labels_are_numbered_in_sorted_order():
    X, y, Xv, yv = _regression(n=24)
    labels = np.repeat([7, 3, 11], 8)
    values, _ = exact_cluster_shapley(X, y, Xv, yv, labels, task="regression")
    renumbered, _ = exact_cluster_shapley(X, y, Xv, yv, np.repeat([1, 0, 2], 8), task="regression")
    np.testing.assert_allclose(values, renumbered, atol=1e-12)


def test_multiclass_exact_and_efficiency():
    X, y, Xv, yv = _classification(n=45, classes=3, seed=4)
    values, U = exact_cluster_shapley(X, y, Xv, yv, np.arange(45) % 3, task="classification")
    assert values.shape == (3,)
    assert values.sum() == pytest.approx(U[-1] - U[0], abs=1e-12)


# ------------------------------------------------------------------------------------------------ TMC
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_tmc_without_truncation_converges_to_the_exact_values(task):
    if task == "regression":
        X, y, Xv, yv = _regression(n=6)
    else:
        X, y, Xv, yv = _classification(n=6, seed=2)
        y[:2] = [0, 1]
    exact, U = exact_cluster_shapley(X, y, Xv, yv, np.arange(6), task=task, min_classes=1)
    errors = {}
    for P in (20, 1500):
        result = tmc_shapley(X, y, Xv, yv, task=task, permutations=P, truncation=None, random_state=5,
                             min_classes=1)
        assert result.marginals.shape == (P, 6) and result.permutations.shape == (P, 6)
        assert result.n_trainings == 1 + P * 5            # U(D) once, prefixes 1..n-1 of every permutation
        assert (result.truncated_at == 6).all()
        # every permutation's marginals telescope to U(D) - U(empty)
        np.testing.assert_allclose(result.marginals.sum(1), U[-1] - U[0], atol=1e-9)
        assert result.utility_full == pytest.approx(U[-1], abs=1e-9)
        assert result.utility_empty == pytest.approx(U[0], abs=1e-12)
        errors[P] = np.abs(result.values - exact).max()
    scale = np.abs(exact).max()
    assert errors[1500] < 0.05 * scale
    assert errors[1500] < errors[20]
    assert np.all(np.abs(result.values - exact) < 4 * result.standard_error + 1e-9)


def test_tmc_truncation_zeroes_the_tail():
    X, y, Xv, yv = _regression(n=30)
    result = tmc_shapley(X, y, Xv, yv, task="regression", permutations=12, truncation=0.05, random_state=0)
    assert (result.truncated_at < 30).any()
    for r in range(12):
        t = result.truncated_at[r]
        tail = result.permutations[r, t:]
        assert np.all(result.marginals[r, tail] == 0.0)
        # the marginals up to the truncation telescope to U(prefix) - U(empty), and that prefix is within 5 %
        u_prefix = result.utility_empty + result.marginals[r].sum()
        if t < 30:
            assert abs(u_prefix - result.utility_full) < 0.05 * abs(result.utility_full)
    assert result.n_trainings < 1 + 12 * 29
    # patience: a later (or equal) stop
    patient = tmc_shapley(X, y, Xv, yv, task="regression", permutations=12, truncation=0.05, patience=3,
                          random_state=0)
    assert (patient.truncated_at >= result.truncated_at).all()
    np.testing.assert_array_equal(patient.permutations, result.permutations)


def test_tmc_batches_do_not_change_the_result():
    X, y, Xv, yv = _classification(n=8, seed=6)
    a = tmc_shapley(X, y, Xv, yv, task="classification", permutations=6, truncation=None, random_state=1)
    b = tmc_shapley(X, y, Xv, yv, task="classification", permutations=6, truncation=None, random_state=1,
                    max_models_per_batch=4)
    np.testing.assert_allclose(a.marginals, b.marginals, atol=1e-7)
    assert a.split_half() == pytest.approx(split_half_correlation(a.marginals))


# ------------------------------------------------------------------------------------------------ correlations
def test_spearman_with_ties_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=40).astype(float)
    b = a + rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(5), -np.arange(5.0)) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.ones(4), np.arange(4)))


def test_split_half_correlation_uses_even_and_odd_rows():
    M = np.zeros((4, 3))
    M[0::2] = [1.0, 2.0, 3.0]
    M[1::2] = [3.0, 2.0, 1.0]
    assert split_half_correlation(M) == pytest.approx(-1.0)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_name_the_argument():
    X, y, Xv, yv = _classification(n=30)
    too_many = np.arange(30) % (MAX_EXACT_CLUSTERS + 1)
    with pytest.raises(ValueError, match="cluster_labels.*p <= 14"):
        exact_cluster_shapley(X, y, Xv, yv, too_many, task="classification")
    with pytest.raises(ValueError, match="cluster_labels"):
        exact_cluster_shapley(X, y, Xv, yv, np.zeros(29, int), task="classification")
    with pytest.raises(ValueError, match="task"):
        exact_cluster_shapley(X, y, Xv, yv, np.arange(30) % 3, task="ranking")
    with pytest.raises(ValueError, match="learner"):
        exact_cluster_shapley(X, y, Xv, yv, np.arange(30) % 3, task="classification", learner="ridge")
    with pytest.raises(ValueError, match="learner"):
        exact_cluster_shapley(X, y, Xv, yv, np.arange(30) % 3, task="classification", learner="mlp")
    with pytest.raises(ValueError, match="X_val"):
        exact_cluster_shapley(X, y, Xv[:, :2], yv, np.arange(30) % 3, task="classification")
    with pytest.raises(ValueError, match="y "):
        exact_cluster_shapley(X, y[:-1], Xv, yv, np.arange(30) % 3, task="classification")
    with pytest.raises(ValueError, match="X contains"):
        bad = X.copy()
        bad[0, 0] = np.nan
        exact_cluster_shapley(bad, y, Xv, yv, np.arange(30) % 3, task="classification")
    with pytest.raises(ValueError, match="2 classes"):
        exact_cluster_shapley(X, np.zeros(30, int), Xv, yv, np.arange(30) % 3, task="classification")
    with pytest.raises(ValueError, match="y_val is constant"):
        exact_cluster_shapley(X, X[:, 0], Xv, np.ones(len(Xv)), np.arange(30) % 3, task="regression")
    with pytest.raises(ValueError, match="solver"):
        exact_cluster_shapley(X, y, Xv, yv, np.arange(30) % 3, task="classification", solver="sgd")
    with pytest.raises(ValueError, match="metric must be None or one of log_likelihood, expected_accuracy"):
        exact_cluster_shapley(X, y, Xv, yv, np.arange(30) % 3, task="classification", metric="r2")
    with pytest.raises(ValueError, match="metric.*for regression, got 'expected_accuracy'"):
        tmc_shapley(X, X[:, 0], Xv, Xv[:, 0], task="regression", metric="expected_accuracy")
    with pytest.raises(ValueError, match="permutations"):
        tmc_shapley(X, y, Xv, yv, task="classification", permutations=0)
    with pytest.raises(ValueError, match="truncation"):
        tmc_shapley(X, y, Xv, yv, task="classification", truncation=-0.1)
    with pytest.raises(ValueError, match="patience"):
        tmc_shapley(X, y, Xv, yv, task="classification", patience=0)
    with pytest.raises(ValueError, match="max_models_per_batch"):
        tmc_shapley(X, y, Xv, yv, task="classification", max_models_per_batch=0)
    with pytest.raises(ValueError, match="utilities"):
        shapley_from_utilities(np.zeros(6))
    with pytest.raises(ValueError, match="kept"):
        SubsetGame(X, y, Xv, yv, np.arange(30) % 3, task="classification").utilities(np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="groups"):
        SubsetGame(X, y, Xv, yv, np.arange(30) % 3 * 2, task="classification")


def test_subsets_with_one_class_score_like_the_empty_one_as_in_ecoval():
    """min_classes=2 (default): a subset of label-pure clusters of one class is not fitted and scores u0, EcoVal's
    rule, so EcoVal's utilities of its trained subsets are utilities of this game (to solver tolerance)."""
    from lossval_fast.valuation.ecoval import EcoVal

    rng = np.random.default_rng(5)
    y = np.arange(120) % 2
    X = rng.normal(size=(120, 3)) + 1.5 * y[:, None]
    yv = np.arange(60) % 2
    Xv = rng.normal(size=(60, 3)) + 1.5 * yv[:, None]
    est = EcoVal(4, pairs="all", random_state=0, verbose=False).fit(X, y, Xv, yv)
    values, table = exact_cluster_shapley(X, y, Xv, yv, est.cluster_labels_, task="classification", solver="lbfgs",
                                          metric=est.metric_)
    p = est.n_clusters_
    full = (1 << p) - 1
    for j, removed in enumerate(est.subsets_):
        mask = full & ~sum(1 << i for i in np.flatnonzero(removed))
        assert table[mask] == pytest.approx(est.utilities_[0, j], abs=1e-6)   # the same solver, to its tolerance
    one_class = [m for m in range(1, 1 << p) if len(set(est._cluster_classes[[i for i in range(p) if m >> i & 1]]
                                                         .nonzero()[1])) < 2]
    assert one_class and all(table[m] == table[0] for m in one_class)
    assert table[0] == pytest.approx(est.u0_, abs=1e-12)
    _, fitted = exact_cluster_shapley(X, y, Xv, yv, est.cluster_labels_, task="classification", min_classes=1,
                                      metric=est.metric_)
    assert all(fitted[m] != table[0] for m in one_class)
    with pytest.raises(ValueError, match="min_classes"):
        exact_cluster_shapley(X, y, Xv, yv, est.cluster_labels_, task="classification", min_classes=0)
