"""Evaluation toolkit: noise injection, 2-means F1 and discovery curve, OpenDataVal splits, KNN-Shapley, load_table."""
import gzip
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from lossval_fast.datasets import SHARED_DATASETS, load_bundled_pol, load_table, openml_task
from lossval_fast.valuation import (KNNShapley, Split, add_feature_noise, add_label_noise, add_mixed_noise,
                                    discovery_curve, f1_score, inject_noise, noisify_split, noisy_count,
                                    noisy_detection_f1, standardize_split, two_means_split)

RATES = [0.0, 0.05, 0.1, 0.15, 0.2, 1.0]


# ---------------------------------------------------------------------------------------------- noise injection
def test_noisy_count_is_pythons_round():
    assert noisy_count(1000, 0.1) == 100
    assert noisy_count(100, 0.05) == 5
    assert noisy_count(25, 0.1) == 2    # round(2.5) -> 2 (halves to even), as OpenDataVal's round()
    assert noisy_count(35, 0.1) == 4    # round(3.5) -> 4
    assert noisy_count(19, 0.1) == 2    # round, not floor


@pytest.mark.parametrize("rate", RATES)
def test_label_noise_count_mask_and_changes_are_exact(rate):
    y = np.random.RandomState(0).randint(0, 3, size=1000)
    y_noisy, mask = add_label_noise(y, rate, random_state=1)
    assert mask.dtype == bool and mask.shape == (1000,)
    assert mask.sum() == round(1000 * rate)
    np.testing.assert_array_equal(y_noisy != y, mask)  # changed exactly on the mask, never kept
    assert y_noisy.dtype == y.dtype and set(np.unique(y_noisy)) <= {0, 1, 2}


def test_label_noise_is_uniform_over_the_other_classes():
    y = np.repeat(np.arange(4), 3000)
    y_noisy, mask = add_label_noise(y, 1.0, random_state=0)
    assert mask.all() and np.all(y_noisy != y)
    for c in range(4):
        new = y_noisy[y == c]
        share = np.bincount(new, minlength=4) / len(new)
        assert share[c] == 0
        # 3000 draws over 3 classes: sd of a share ~ 0.0086, so +-0.05 is ~6 sd.
        np.testing.assert_allclose(np.delete(share, c), 1 / 3, atol=0.05)


def test_label_noise_follows_opendataval_draws():
    """mix_labels: rows = rs.choice(n, k, replace=False), shift = rs.choice(U - 1, k) + 1, and the one-hot class
    order of np.unique(axis=0), which is the class order reversed."""
    y = np.random.RandomState(3).randint(0, 5, size=200)
    y_noisy, mask = add_label_noise(y, 0.2, random_state=7)
    rs = np.random.RandomState(7)
    rows = rs.choice(200, 40, replace=False)
    shift = rs.choice(4, 40) + 1
    order = np.arange(4, -1, -1)  # classes in one-hot lexicographic order
    position = 4 - y[rows]
    expected = y.copy()
    expected[rows] = order[(position + shift) % 5]
    np.testing.assert_array_equal(y_noisy, expected)
    np.testing.assert_array_equal(np.flatnonzero(mask), np.sort(rows))

    # The same call on one-hot rows (OpenDataVal's own label layout) moves the same rows to the same classes.
    one_hot = np.eye(5)[y]
    oh_noisy, oh_mask = add_label_noise(one_hot, 0.2, random_state=7)
    np.testing.assert_array_equal(oh_noisy.argmax(1), y_noisy)
    np.testing.assert_array_equal(oh_mask, mask)


def test_label_noise_num_classes_reaches_unobserved_classes():
    y = np.random.RandomState(0).randint(0, 2, size=600)  # classes 0, 1 observed, class 2 not
    y_noisy, mask = add_label_noise(y, 1.0, num_classes=3, random_state=0)
    assert np.all(y_noisy != y) and 2 in y_noisy
    y_obs, _ = add_label_noise(y, 1.0, random_state=0)
    assert set(np.unique(y_obs)) == {0, 1}  # OpenDataVal's default: observed labels only
    with pytest.raises(ValueError, match=r"integer class codes in \[0, 2\]"):
        add_label_noise(np.array([0, 1, 3]), 0.5, num_classes=3)


def test_regression_label_noise_draws_other_observed_values():
    rs = np.random.RandomState(0)
    y = np.round(rs.randn(500), 1)  # many duplicated values
    y_noisy, mask = add_label_noise(y, 0.3, task="regression", random_state=2)
    assert mask.sum() == 150
    assert np.all(np.isin(y_noisy[mask], y))       # observed values only
    assert np.all(y_noisy[mask] != y[mask])          # never the row's own value
    np.testing.assert_array_equal(y_noisy[~mask], y[~mask])
    y2, mask2 = add_label_noise(y.reshape(-1, 1), 0.3, task="regression", random_state=2)
    np.testing.assert_array_equal(y2[:, 0], y_noisy)
    np.testing.assert_array_equal(mask2, mask)


def test_label_noise_errors():
    y = np.array([0, 1, 0, 1])
    for rate in (-0.1, 1.5, math.nan, "0.1"):
        with pytest.raises(ValueError, match="rate must be"):
            add_label_noise(y, rate)
    with pytest.raises(ValueError, match="at least 2 distinct values"):
        add_label_noise(np.zeros(10), 0.5)
    with pytest.raises(ValueError, match="classification only"):
        add_label_noise(np.arange(10.0), 0.5, task="regression", num_classes=3)
    with pytest.raises(ValueError, match="task must be one of"):
        add_label_noise(y, 0.5, task="ranking")
    y_same, mask = add_label_noise(np.zeros(10), 0.0)  # nothing to move: a single class is fine
    assert not mask.any() and np.all(y_same == 0)


@pytest.mark.parametrize("rate", RATES)
def test_feature_noise_changes_only_masked_rows(rate):
    X = np.random.RandomState(0).randn(400, 6).astype(np.float32)
    X_before = X.copy()
    X_noisy, mask = add_feature_noise(X, rate, random_state=4)
    np.testing.assert_array_equal(X, X_before)  # input untouched
    assert X_noisy.dtype == np.float64 and mask.sum() == round(400 * rate)
    changed = X_noisy != X.astype(np.float64)
    np.testing.assert_array_equal(changed.any(axis=1), mask)
    assert changed[mask].all()  # every feature of a chosen row


def test_feature_noise_distribution_and_draws():
    X = np.zeros((20000, 3))
    X_noisy, mask = add_feature_noise(X, 0.5, scale=2.0, random_state=0)
    noise = X_noisy[mask]
    # 30000 normal draws: sd of the mean ~ 0.012, of the sd ~ 0.008.
    assert abs(noise.mean()) < 0.06 and abs(noise.std() - 2.0) < 0.05
    rs = np.random.RandomState(0)
    rows = rs.choice(20000, 10000, replace=False)
    np.testing.assert_array_equal(X_noisy[rows], rs.normal(0.0, 2.0, size=(10000, 3)))
    X_t, mask_t = add_feature_noise(torch.zeros(20000, 3), 0.5, scale=2.0, random_state=0)
    np.testing.assert_array_equal(mask_t, mask)
    with pytest.raises(ValueError, match="scale must be"):
        add_feature_noise(X, 0.1, scale=-1.0)


@pytest.mark.parametrize("n,rate", [(30, 0.5), (1000, 0.1), (101, 0.15), (1, 1.0)])
def test_mixed_noise_uses_disjoint_halves(n, rate):
    rs = np.random.RandomState(5)
    X, y = rs.randn(n, 4), rs.randint(0, 3, size=n)  # n = 1: k = 1 goes to feature noise, one class is enough
    X_noisy, y_noisy, mask = add_mixed_noise(X, y, rate, random_state=9)
    k = round(n * rate)
    label_rows = y_noisy != y
    feature_rows = (X_noisy != X).any(axis=1)
    assert mask.sum() == k
    assert label_rows.sum() == k // 2 and feature_rows.sum() == k - k // 2  # odd k: feature noise gets the extra
    assert not np.any(label_rows & feature_rows)
    np.testing.assert_array_equal(label_rows | feature_rows, mask)
    assert (X_noisy[feature_rows] != X[feature_rows]).all()


def test_inject_noise_matches_the_single_functions():
    rs = np.random.RandomState(0)
    X, y = rs.randn(300, 5), rs.randint(0, 4, size=300)
    Xl, yl, ml = inject_noise(X, y, "label", 0.1, random_state=3)
    y_ref, m_ref = add_label_noise(y, 0.1, random_state=3)
    np.testing.assert_array_equal(yl, y_ref)
    np.testing.assert_array_equal(ml, m_ref)
    np.testing.assert_array_equal(Xl, X)
    Xf, yf, mf = inject_noise(X, y, "feature", 0.1, scale=0.5, random_state=3)
    X_ref, m_ref = add_feature_noise(X, 0.1, scale=0.5, random_state=3)
    np.testing.assert_array_equal(Xf, X_ref)
    np.testing.assert_array_equal(yf, y)
    Xm, ym, mm = inject_noise(torch.tensor(X), torch.tensor(y), "mixed", 0.1, random_state=3)
    Xm_ref, ym_ref, mm_ref = add_mixed_noise(X, y, 0.1, random_state=3)
    np.testing.assert_array_equal(Xm, Xm_ref)
    np.testing.assert_array_equal(ym, ym_ref)
    with pytest.raises(ValueError, match="kind must be one of"):
        inject_noise(X, y, "labels", 0.1)
    with pytest.raises(ValueError, match="same number of rows"):
        inject_noise(X, y[:-1], "label", 0.1)


@pytest.mark.parametrize("kind", ["label", "feature", "mixed"])
def test_noisify_split_noises_train_and_valid_only(kind):
    rs = np.random.RandomState(0)
    split = standardize_split(rs.randn(700, 5), rs.randint(0, 3, 700), n_train=400, n_valid=100, n_test=200,
                              random_state=0)
    noisy, m_train, m_valid = noisify_split(split, kind, 0.15, random_state=1)
    assert m_train.sum() == 60 and m_valid.sum() == 15
    for x0, y0, x1, y1, m in ((split.x_train, split.y_train, noisy.x_train, noisy.y_train, m_train),
                              (split.x_valid, split.y_valid, noisy.x_valid, noisy.y_valid, m_valid)):
        changed = (x1 != x0).any(axis=1) | (y1 != y0)
        np.testing.assert_array_equal(changed, m)
    np.testing.assert_array_equal(noisy.x_test, split.x_test)
    np.testing.assert_array_equal(noisy.y_test, split.y_test)


def test_noisify_split_feature_draw_order_is_opendataval():
    """add_gauss_noise: choice(train), choice(valid), normal(train), normal(valid) on one stream."""
    rs = np.random.RandomState(0)
    split = standardize_split(rs.randn(300, 3), rs.randint(0, 2, 300), n_train=200, n_valid=50, n_test=0,
                              random_state=0)
    noisy, m_train, m_valid = noisify_split(split, "feature", 0.1, random_state=11)
    ref = np.random.RandomState(11)
    rows_tr, rows_va = ref.choice(200, 20, replace=False), ref.choice(50, 5, replace=False)
    np.testing.assert_array_equal(noisy.x_train[rows_tr], split.x_train[rows_tr] + ref.normal(0, 1, (20, 3)))
    np.testing.assert_array_equal(noisy.x_valid[rows_va], split.x_valid[rows_va] + ref.normal(0, 1, (5, 3)))


# ------------------------------------------------------------------------------------------- 2-means and F1
def brute_two_means(values):
    """OpenDataVal's rule in exact arithmetic, O(n^2): try every split of the stable sort, keep the first minimum."""
    order = np.argsort(values, kind="stable")
    s = [Fraction(float(v)) for v in np.asarray(values)[order]]

    def sse(part):
        mean = sum(part, Fraction(0)) / len(part)
        return sum((x - mean) ** 2 for x in part)

    costs = [sse(s[:i]) + sse(s[i:]) for i in range(1, len(s))]
    split = 1 + costs.index(min(costs))
    lower = np.zeros(len(s), dtype=bool)
    lower[order[:split]] = True
    return lower


@pytest.mark.parametrize("seed", range(50))
def test_two_means_matches_brute_force(seed):
    rs = np.random.RandomState(seed)
    n = rs.randint(2, 40)
    kind = seed % 5
    if kind == 0:
        values = rs.randn(n)
    elif kind == 1:
        values = rs.randint(0, 4, size=n).astype(float)       # many ties
    elif kind == 2:
        values = np.round(rs.exponential(size=n), 1) - 3.0    # skewed, some ties
    elif kind == 3:
        values = 1e6 + rs.randint(0, 3, size=n) * 0.25        # ties on a large offset
    else:
        # Symmetric around a run of zeros: splitting at either end of the run gives the same SSE, an exact tie.
        half = rs.randint(1, 6, size=n // 2 + 1).astype(float)
        values = rs.permutation(np.concatenate([half, -half, np.zeros(rs.randint(1, 4))]))
    if np.all(values == values[0]):
        values[0] -= 1.0
    np.testing.assert_array_equal(two_means_split(values), brute_two_means(values))


def test_two_means_exact_ties_take_the_smaller_lower_cluster():
    # {0} | {1, 1, 2} and {0, 1, 1} | {2} have the same SSE 2/3.
    np.testing.assert_array_equal(two_means_split([1.0, 0.0, 2.0, 1.0]), [False, True, False, False])
    np.testing.assert_array_equal(two_means_split([3.0, 3.0, 1.0, 1.0]), [False, False, True, True])
    assert not two_means_split(np.full(7, 2.5)).any()  # all equal: no allowed split, nothing predicted


def test_two_means_input_errors():
    with pytest.raises(ValueError, match="at least 2 values"):
        two_means_split([1.0])
    with pytest.raises(ValueError, match="1 NaN or inf"):
        two_means_split([1.0, math.nan, 2.0])
    with pytest.raises(ValueError, match="must be 1-D"):
        two_means_split(np.zeros((3, 2)))


def test_f1_edge_cases():
    values = np.array([0.1, 0.2, 5.0, 5.1, 5.2])
    assert noisy_detection_f1(values, [True, True, False, False, False]) == 1.0
    assert noisy_detection_f1(values, np.zeros(5, dtype=bool)) == 0.0             # nothing noisy
    assert noisy_detection_f1(np.ones(5), [True, False, False, False, False]) == 0.0  # nothing predicted
    assert noisy_detection_f1(values, [False, False, True, True, True]) == 0.0   # all wrong
    # predicted {0, 1}, actual {1, 2}: tp 1, fp 1, fn 1 -> 2 / 4
    assert noisy_detection_f1(values, [0, 1, 1, 0, 0]) == 0.5
    assert noisy_detection_f1(torch.tensor(values), torch.tensor([True, True, False, False, False])) == 1.0
    assert f1_score([False, False], [False, False]) == 0.0
    with pytest.raises(ValueError, match=r"noisy_mask must have shape \(5,\)"):
        noisy_detection_f1(values, [True, False])
    with pytest.raises(ValueError, match="boolean"):
        noisy_detection_f1(values, [0, 2, 0, 0, 0])


def random_f1(rate, draws, seed):
    rs = np.random.RandomState(seed)
    scores = []
    for _ in range(draws):
        mask = np.zeros(1000, dtype=bool)
        mask[rs.choice(1000, noisy_count(1000, rate), replace=False)] = True
        scores.append(noisy_detection_f1(rs.uniform(size=1000), mask))
    return float(np.mean(scores))


def test_random_values_f1_band_at_10_percent():
    """Uniform random values: the 2-means split falls near the median, so ~500 points are predicted noisy, ~50 of
    them truly noisy: F1 ~= 2 * 50 / (100 + 500) = 1/6 (LossVal's RandomEvaluator rows: 0.167 at 10 %). One draw has
    sd ~0.016, the mean of 50 draws ~0.0023; the band is about +-5 sd around 1/6."""
    assert 0.155 < random_f1(0.1, 50, seed=0) < 0.178


def test_random_values_f1_averages_019_over_the_four_rates():
    """The LossVal paper's "random values score about 0.19" (docs/algorithms.md §4) is the mean over the rates 5/10/15/20 %: r / (r + 0.5)
    gives 0.091, 0.167, 0.231, 0.286, mean 0.194. 25 draws per rate: sd of the mean ~0.0017; band ~+-5 sd."""
    mean = np.mean([random_f1(rate, 25, seed=i) for i, rate in enumerate([0.05, 0.1, 0.15, 0.2])])
    assert 0.185 < mean < 0.202


def test_discovery_curve():
    n = 1000
    mask = np.zeros(n, dtype=bool)
    mask[:100] = True
    perfect = np.where(mask, 0.0, 1.0) + np.arange(n) * 1e-6
    q, found = discovery_curve(perfect, mask, 20)
    np.testing.assert_allclose(q, np.arange(21) / 20)
    np.testing.assert_allclose(found, np.minimum(q / 0.1, 1.0))
    q, found = discovery_curve(-perfect, mask, 10)
    np.testing.assert_allclose(found, np.where(q > 0.9 - 1e-12, (q - 0.9) / 0.1, 0.0), atol=1e-12)

    # OpenDataVal's discover_corrupted_sample loop (percentile 0.05 -> 50 more points per step) on random values.
    rs = np.random.RandomState(0)
    values, noisy = rs.randn(n), rs.choice(n, 100, replace=False)
    mask = np.zeros(n, dtype=bool)
    mask[noisy] = True
    order = np.argsort(values, kind="stable")
    expected = [len(np.intersect1d(order[:i], noisy)) / 100 for i in range(0, n + 50, 50)]
    np.testing.assert_allclose(discovery_curve(values, mask, 20)[1], expected)

    q, found = discovery_curve(values, mask, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(found, [0.0, expected[5], 1.0])
    with pytest.raises(ValueError, match="marks no point"):
        discovery_curve(values, np.zeros(n, dtype=bool))
    with pytest.raises(ValueError, match="steps must be"):
        discovery_curve(values, mask, [0.5, 1.5])


# ------------------------------------------------------------------------------------------------ splits
def test_split_sizes_labels_and_indices():
    rs = np.random.RandomState(0)
    X = rs.randn(500, 4) * [1, 10, 100, 0.1] + [0, 5, -3, 1]
    y = rs.choice(["cat", "dog", "emu"], size=500)
    split = standardize_split(X, y, n_train=300, n_valid=50, n_test=100, random_state=0)
    assert isinstance(split, Split)
    assert split.x_train.shape == (300, 4) and split.x_valid.shape == (50, 4) and split.x_test.shape == (100, 4)
    assert split.y_train.dtype == np.int64 and set(np.unique(split.y_train)) == {0, 1, 2}
    np.testing.assert_array_equal(split.classes[split.y_valid], y[split.valid_indices])
    used = np.concatenate([split.train_indices, split.valid_indices, split.test_indices])
    assert len(np.unique(used)) == 450


def test_split_zscores_the_whole_data_set_first():
    rs = np.random.RandomState(1)
    X = rs.randn(400, 3) * [2, 50, 0.01] + [1, -7, 3]
    X[:, 2] = 4.0  # a constant column maps to 0, as (x - mean) / (std + 1e-8)
    y = rs.randn(400) * 30 + 100
    split = standardize_split(X, y, n_train=250, n_valid=50, n_test=100, task="regression", random_state=0)
    Z = np.empty_like(X)
    rows = np.concatenate([split.train_indices, split.valid_indices, split.test_indices])
    Z[rows] = np.concatenate([split.x_train, split.x_valid, split.x_test])
    np.testing.assert_allclose(Z, (X - X.mean(0)) / (X.std(0) + 1e-8), rtol=0, atol=1e-12)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), [1, 1, 0], atol=1e-7)
    y_all = np.empty(400)
    y_all[rows] = np.concatenate([split.y_train, split.y_valid, split.y_test])
    np.testing.assert_allclose(y_all, (y - y.mean()) / (y.std() + 1e-8), atol=1e-12)
    assert split.y_train.dtype == np.float64 and split.classes is None


def test_split_reproducibility_and_stream():
    rs = np.random.RandomState(2)
    X, y = rs.randn(200, 2), rs.randint(0, 2, 200)
    a = standardize_split(X, y, n_train=100, n_valid=20, n_test=50, random_state=5)
    b = standardize_split(torch.tensor(X), torch.tensor(y), n_train=100, n_valid=20, n_test=50, random_state=5)
    c = standardize_split(X, y, n_train=100, n_valid=20, n_test=50, random_state=6)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.train_indices, c.train_indices)
    perm = np.random.RandomState(5).permutation(200)  # DataFetcher.split_dataset_by_count
    np.testing.assert_array_equal(a.train_indices, perm[:100])
    np.testing.assert_array_equal(a.valid_indices, perm[100:120])
    np.testing.assert_array_equal(a.test_indices, perm[120:170])


def test_split_errors():
    X, y = np.zeros((100, 2)), np.zeros(100)
    with pytest.raises(ValueError, match=r"n_train \+ n_valid \+ n_test = 80 \+ 10 \+ 20 = 110 exceeds the 100"):
        standardize_split(X, y, n_train=80, n_valid=10, n_test=20)
    with pytest.raises(ValueError, match="4100 exceeds"):
        standardize_split(X, y)
    with pytest.raises(ValueError, match="same number of rows"):
        standardize_split(X, y[:50], n_train=10, n_valid=5, n_test=5)
    with pytest.raises(ValueError, match="n_train must be >= 1"):
        standardize_split(X, y, n_train=0, n_valid=5, n_test=5)
    with pytest.raises(ValueError, match="n_valid must be an int"):
        standardize_split(X, y, n_train=10, n_valid=5.0, n_test=5)
    with pytest.raises(ValueError, match="task must be one of"):
        standardize_split(X, y, n_train=10, n_valid=5, n_test=5, task="clf")
    X_bad = X.copy()
    X_bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN or inf"):
        standardize_split(X_bad, y, n_train=10, n_valid=5, n_test=5)


# -------------------------------------------------------------------------------------------- KNN-Shapley
def brute_knn_shapley(x_train, y_train, x_valid, y_valid, k):
    """Shapley values of U(S) = mean_v (1/K) #{label matches among the min(K, |S|) nearest of S}, by enumerating
    every subset; equal distances are ordered by training index."""
    n = len(x_train)
    dist = np.sqrt(((x_valid[:, None, :] - x_train[None]) ** 2).sum(-1))
    ranks = [sorted(range(n), key=lambda i: (dist[v, i], i)) for v in range(len(x_valid))]

    def utility(subset):
        total = 0.0
        for v, rank in enumerate(ranks):
            nearest = [i for i in rank if i in subset][:k]
            total += sum(y_train[i] == y_valid[v] for i in nearest) / k
        return total / len(x_valid)

    u = {s: utility(set(s)) for r in range(n + 1) for s in itertools.combinations(range(n), r)}
    values = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r in range(n):
            weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for s in itertools.combinations(others, r):
                values[i] += weight * (u[tuple(sorted(s + (i,)))] - u[s])
    return values, u[tuple(range(n))]


@pytest.mark.parametrize("k,n", [(1, 7), (3, 8), (5, 6), (10, 7)])  # k > n checks the exact farthest-point term
def test_knn_shapley_matches_brute_force(k, n):
    rs = np.random.RandomState(k * 10 + n)
    x_train, y_train = rs.randn(n, 3), rs.randint(0, 3, n)
    x_valid, y_valid = rs.randn(4, 3), rs.randint(0, 3, 4)
    x_train[1] = x_train[4]  # a duplicate point: equal distances, ordered by index
    expected, u_all = brute_knn_shapley(x_train, y_train, x_valid, y_valid, k)
    values = KNNShapley(k=k).fit(x_train, y_train, x_valid, y_valid).values_
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    assert abs(values.sum() - u_all) < 1e-12  # efficiency: sum = U(N) - U(empty), U(empty) = 0


def test_knn_shapley_efficiency_chunks_and_inputs():
    rs = np.random.RandomState(0)
    x_train, y_train = rs.randn(300, 5), rs.randint(0, 4, 300)
    x_valid, y_valid = rs.randn(37, 5), rs.randint(0, 4, 37)
    model = KNNShapley(k=10).fit(x_train, y_train, x_valid, y_valid)
    dist = np.sqrt(((x_valid[:, None] - x_train[None]) ** 2).sum(-1))
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :10]
    u_all = np.mean((y_train[nearest] == y_valid[:, None]).sum(1) / 10)
    assert abs(model.values_.sum() - u_all) < 1e-12
    assert model.values_.shape == (300,) and model.n_valid_ == 37
    chunked = KNNShapley(k=10, chunk_size=4).fit(torch.tensor(x_train), torch.tensor(y_train),
                                                 torch.tensor(x_valid), torch.tensor(y_valid)).values_
    np.testing.assert_allclose(chunked, model.values_, rtol=0, atol=1e-15)
    one_hot = KNNShapley(k=10).fit(x_train, np.eye(4)[y_train], x_valid, np.eye(4)[y_valid]).values_
    np.testing.assert_allclose(one_hot, model.values_, rtol=0, atol=1e-15)


def test_knn_shapley_puts_flipped_labels_low():
    X, y = load_bundled_pol()
    split = standardize_split(X, y, n_train=1000, n_valid=200, n_test=0, random_state=0)
    y_noisy, flipped = add_label_noise(split.y_train, 0.1, random_state=0)
    values = KNNShapley(k=10).fit(split.x_train, y_noisy, split.x_valid, split.y_valid).values_
    assert values[flipped].mean() < 0 < values[~flipped].mean()
    lowest = np.argsort(values, kind="stable")[:100]
    # Random values would put ~10 flipped points (sd ~2.8) in the lowest 100 and score F1 ~0.17.
    assert flipped[lowest].sum() >= 35
    assert noisy_detection_f1(values, flipped) > 0.3


def test_knn_shapley_errors():
    x, y = np.random.RandomState(0).randn(10, 2), np.arange(10) % 2
    with pytest.raises(ValueError, match="classification only"):
        KNNShapley(task="regression").fit(x, y, x, y)
    with pytest.raises(ValueError, match="non-integer floats"):
        KNNShapley().fit(x, x[:, 0], x, x[:, 0])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        KNNShapley(k=0).fit(x, y, x, y)
    with pytest.raises(ValueError, match="same number of features"):
        KNNShapley().fit(x, y, x[:, :1], y)
    with pytest.raises(ValueError, match=r"y must be \(10,\)"):
        KNNShapley().fit(x, y[:5], x, y)


# -------------------------------------------------------------------------------------------------- loaders
CSV_TEXT = "a,b,target\n1.5,2,0\n-3,4e-1,1\n\n0,7,1\n"


def test_load_table_csv_and_csv_gz(tmp_path):
    plain = tmp_path / "t.csv"
    plain.write_text(CSV_TEXT)
    packed = tmp_path / "t.csv.gz"
    packed.write_bytes(gzip.compress(CSV_TEXT.encode()))
    for path in (plain, str(packed)):
        X, y, names = load_table(path)
        np.testing.assert_array_equal(X, [[1.5, 2.0], [-3.0, 0.4], [0.0, 7.0]])
        assert X.dtype == np.float64 and names == ["a", "b"]
        assert y.dtype == np.int64 and y.tolist() == [0, 1, 1]
    X, y, names = load_table(plain, target="a")
    assert names == ["b", "target"] and y.dtype == np.float64 and y.tolist() == [1.5, -3.0, 0.0]


def test_load_table_categorical_columns(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("age,color,size,target\n30, red ,S,yes\n40,blue,M,no\n50,red,M,yes\n")
    with pytest.raises(ValueError, match="non-numeric feature columns: color, size.*encode_categorical=True"):
        load_table(path)
    X, y, names = load_table(path, encode_categorical=True)
    assert names == ["age", "color_blue", "color_red", "size_M", "size_S"]
    np.testing.assert_array_equal(X, [[30, 0, 1, 0, 1], [40, 1, 0, 1, 0], [50, 0, 1, 1, 0]])
    assert y.tolist() == ["yes", "no", "yes"]


def test_load_table_npz(tmp_path):
    rs = np.random.RandomState(0)
    images = tmp_path / "img.npz"
    x_train, x_test = rs.randint(0, 255, (5, 2, 3), dtype=np.uint8), rs.randint(0, 255, (2, 2, 3), dtype=np.uint8)
    np.savez(images, x_train=x_train, y_train=np.arange(5, dtype=np.uint8), x_test=x_test,
             y_test=np.array([7, 8], dtype=np.uint8))
    X, y, names = load_table(images)
    np.testing.assert_array_equal(X, np.concatenate([x_train, x_test]).reshape(7, 6))
    assert X.dtype == np.float64 and y.dtype == np.int64 and y.tolist() == [0, 1, 2, 3, 4, 7, 8]
    assert names == [f"x{i}" for i in range(6)]
    flat = tmp_path / "flat.npz"
    np.savez(flat, X=rs.randn(4, 3), y=rs.randn(4))
    X, y, names = load_table(flat)
    assert X.shape == (4, 3) and y.dtype == np.float64


def test_load_table_errors(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_table(missing)
    path = tmp_path / "t.csv"
    path.write_text(CSV_TEXT)
    with pytest.raises(ValueError, match="no target column 'label'; columns: a, b, target"):
        load_table(path, target="label")
    bad = tmp_path / "ragged.csv"
    bad.write_text("a,target\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3 has 1 fields, the header has 2"):
        load_table(bad)
    holes = tmp_path / "holes.csv"
    holes.write_text("a,target\n1,0\n,1\n")
    with pytest.raises(ValueError, match="column 'a' has 1 empty cells"):
        load_table(holes)
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,target\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_table(header_only)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        load_table(empty)
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a,target\n1,2,3\n")
    with pytest.raises(ValueError, match="duplicated column names: a"):
        load_table(dup)
    other = tmp_path / "t.parquet"
    other.write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_table(other)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, features=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="expected arrays 'X' and 'y'.*found: features"):
        load_table(wrong)
    short = tmp_path / "short.npz"
    np.savez(short, X=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(ValueError, match="disagree in length"):
        load_table(short)


def test_openml_task():
    assert {name: openml_task(name) for name in SHARED_DATASETS} == {
        "2dplanes": "classification", "pol": "classification", "electricity": "classification",
        "adult": "classification", "kin8nm": "regression", "cpu_activity": "regression",
        "mnist": "classification", "fashion_mnist": "classification"}
    assert openml_task("Fashion-MNIST") == "classification"
    with pytest.raises(ValueError, match="unknown data set 'iris'; known: 2dplanes"):
        openml_task("iris")


# ------------------------------------------------------------------------------------------------ AUC
@pytest.mark.parametrize("seed", range(4))
def test_noisy_detection_auc_matches_scikit_learn(seed):
    from sklearn.metrics import roc_auc_score
    from lossval_fast.valuation import noisy_detection_auc

    rng = np.random.default_rng(seed)
    n = 257
    mask = rng.random(n) < 0.1
    values = rng.normal(size=n) - 1.5 * mask
    if seed % 2:                                   # ties: a few repeated values, across both groups
        values = np.round(values, 1)
    assert noisy_detection_auc(values, mask) == pytest.approx(roc_auc_score(mask, -values), abs=1e-12)
    assert noisy_detection_auc(np.zeros(n), mask) == 0.5
    assert noisy_detection_auc(np.where(mask, 0.0, 1.0), mask) == 1.0
    with pytest.raises(ValueError, match="noisy_mask must mark some but not all"):
        noisy_detection_auc(values, np.zeros(n, dtype=bool))
