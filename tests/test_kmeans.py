"""k-means op: parity with the float64 reference Lloyd and with scikit-learn on every backend, empty clusters,
groups, initialisations, determinism, the estimator and every input error."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from backends import activate, backend_params, is_slow_backend
from lossval_fast import ops, reference
from lossval_fast.ops.kmeans import NotFittedError

try:
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.exceptions import ConvergenceWarning
except ImportError:  # pragma: no cover - scikit-learn is a test dependency
    SkKMeans = None
needs_sklearn = pytest.mark.skipif(SkKMeans is None, reason="scikit-learn is not installed")


def blobs(n, d, k, seed, spread=10.0, dtype=torch.float32):
    """n points around k random centres (unit noise); centres `spread` apart on average."""
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    owner = torch.randint(0, k, (n,), generator=g)
    return (centres[owner] + torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)


def random_rows(x, k, seed):
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:k]].clone()


def near_tie(x, centroids, rel=1e-5):
    """Rows whose best two squared distances (float64) are within `rel` of each other."""
    if centroids.shape[0] < 2:
        return torch.zeros(x.shape[0], dtype=torch.bool)
    sq = torch.cdist(x.double(), centroids.double()).pow(2)
    two = sq.topk(2, dim=1, largest=False).values
    return (two[:, 1] - two[:, 0]) <= rel * two[:, 1]


def sk_fit(x, init, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return SkKMeans(init.shape[0], init=init.numpy(), n_init=1, algorithm="lloyd", **kwargs).fit(x.numpy())


def step_shapes(backend):
    if is_slow_backend(backend):
        return [(1, 1, 1), (7, 3, 3), (33, 17, 5)]
    return [s for s in itertools.product((1, 7, 1000, 4099), (1, 3, 17, 64), (1, 3, 20, 64)) if s[2] <= s[0]]


def step_cases():
    out = []
    for param in backend_params(include_torch=True):
        backend = param.values[0][0]
        for n, d, k in step_shapes(backend):
            out.append(pytest.param(param.values[0], n, d, k, marks=param.marks, id=f"{param.id}-{n}x{d}-k{k}"))
    return out


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("backend_param,n,d,k", step_cases())
def test_one_step_matches_reference(backend_param, n, d, k):
    backend, device = activate(backend_param)
    g = torch.Generator().manual_seed(1000 * n + 10 * d + k)
    x = torch.randn(n, d, generator=g)
    init = random_rows(x, k, n + d + k) + 0.01 * torch.randn(k, d, generator=g)
    result = ops.kmeans(x.to(device), k, init=init.to(device), max_iter=1, tol=0, backend=backend)
    c_ref, labels_ref, inertia_ref, n_iter_ref = reference.kmeans_lloyd(x.double(), init.double(), 1, 0)
    assert result.n_iter == n_iter_ref == 1
    centroids = result.centroids.cpu().double()
    assert result.centroids.dtype == torch.float32 and centroids.shape == (k, d)
    assert bool(((centroids - c_ref).abs() <= 1e-5 * (1 + c_ref.abs())).all())
    labels = result.labels.cpu()
    assert labels.dtype == torch.int64 and labels.shape == (n,)
    differ = labels != labels_ref
    assert bool(near_tie(x, c_ref)[differ].all()), "labels differ away from a near-tie"
    assert math.isclose(result.inertia, inertia_ref, rel_tol=1e-5, abs_tol=1e-6)
    assert torch.equal(result.centroid_groups.cpu(), torch.zeros(k, dtype=torch.int64))


@pytest.mark.parametrize("tol", [1e-4, 0.0])
@pytest.mark.parametrize("backend_param", backend_params(include_torch=True))
def test_separated_blobs_match_reference_labels_and_iterations(backend_param, tol):
    backend, device = activate(backend_param)
    n, d, k = (120, 3, 4) if is_slow_backend(backend) else (3000, 5, 6)
    x = blobs(n, d, k, seed=7)
    init = random_rows(x, k, seed=3)
    result = ops.kmeans(x.to(device), k, init=init.to(device), tol=tol, backend=backend)
    c_ref, labels_ref, inertia_ref, n_iter_ref = reference.kmeans_lloyd(x.double(), init.double(), 100, tol)
    assert torch.equal(result.labels.cpu(), labels_ref)
    assert result.n_iter == n_iter_ref
    assert bool(((result.centroids.cpu().double() - c_ref).abs() <= 1e-5 * (1 + c_ref.abs())).all())
    assert math.isclose(result.inertia, inertia_ref, rel_tol=1e-5)


@needs_sklearn
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("max_iter,tol", [(2, 0.0), (300, 1e-4), (300, 0.0), (300, 1e-2)])
def test_matches_sklearn_lloyd(dtype, max_iter, tol):
    """Overlapping blobs (many iterations): same labels, iteration count and inertia as scikit-learn."""
    x = blobs(2000, 4, 8, seed=11, spread=3.0, dtype=dtype)
    init = random_rows(x, 8, seed=5)
    sk = sk_fit(x, init, max_iter=max_iter, tol=tol)
    result = ops.kmeans(x, 8, init=init, max_iter=max_iter, tol=tol)
    assert result.n_iter == sk.n_iter_
    differ = result.labels.numpy() != sk.labels_
    assert bool(near_tie(x, torch.from_numpy(sk.cluster_centers_))[torch.from_numpy(differ)].all())
    assert math.isclose(result.inertia, sk.inertia_, rel_tol=1e-5)
    np.testing.assert_allclose(result.centroids.numpy(), sk.cluster_centers_, rtol=1e-5, atol=1e-5)


@needs_sklearn
@pytest.mark.parametrize("seed", range(3))
def test_reference_matches_sklearn(seed):
    x = blobs(1500, 3, 5, seed=seed, spread=2.0, dtype=torch.float64)
    init = random_rows(x, 5, seed)
    for tol in (0.0, 1e-4):
        c, labels, inertia, n_iter = reference.kmeans_lloyd(x, init, 300, tol)
        sk = sk_fit(x, init, max_iter=300, tol=tol)
        assert n_iter == sk.n_iter_ and np.array_equal(labels.numpy(), sk.labels_)
        assert math.isclose(inertia, sk.inertia_, rel_tol=1e-12)
        np.testing.assert_allclose(c.numpy(), sk.cluster_centers_, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ empty clusters
def empty_cluster_problem(n_empty):
    """Two tight groups, a few outliers, and initial centroids of which `n_empty` are far from every row."""
    g = torch.Generator().manual_seed(5)
    x = torch.cat([0.3 * torch.randn(60, 2, generator=g, dtype=torch.float64),
                   0.3 * torch.randn(60, 2, generator=g, dtype=torch.float64) + torch.tensor([8.0, 0.0]),
                   torch.tensor([[4.0, 9.0], [4.0, -7.0], [-6.0, 1.0]], dtype=torch.float64)])
    far = torch.tensor([[100.0, 100.0], [-100.0, 80.0]], dtype=torch.float64)[:n_empty]
    init = torch.cat([torch.tensor([[0.1, 0.0]], dtype=torch.float64), far,
                      torch.tensor([[8.2, 0.1]], dtype=torch.float64)])
    return x, init


@needs_sklearn
@pytest.mark.parametrize("n_empty", [1, 2])
@pytest.mark.parametrize("backend_param", backend_params(include_torch=True))
def test_empty_clusters_reseeded_like_sklearn(backend_param, n_empty):
    backend, device = activate(backend_param)
    x, init = empty_cluster_problem(n_empty)
    sk = sk_fit(x, init, max_iter=100, tol=1e-4)
    c_ref, labels_ref, inertia_ref, n_iter_ref = reference.kmeans_lloyd(x, init, 100, 1e-4)
    for dtype in (torch.float64, torch.float32):
        result = ops.kmeans(x.to(device, dtype), init.shape[0], init=init.to(device, dtype), backend=backend)
        assert np.array_equal(result.labels.cpu().numpy(), sk.labels_)
        assert torch.equal(result.labels.cpu(), labels_ref)
        assert result.n_iter == sk.n_iter_ == n_iter_ref
        np.testing.assert_allclose(result.centroids.cpu().double().numpy(), sk.cluster_centers_, rtol=1e-5, atol=1e-5)
        assert math.isclose(result.inertia, sk.inertia_, rel_tol=1e-5)
    # the re-seeded clusters did move onto data: every centroid ends up with rows
    assert (np.bincount(sk.labels_, minlength=init.shape[0]) > 0).all()


@needs_sklearn
def test_more_clusters_than_distinct_rows_parks_empty_clusters_like_sklearn():
    x = torch.tensor([[1.0, 2.0]] * 5 + [[3.0, 1.0]] * 3, dtype=torch.float64)
    init = torch.tensor([[1.0, 2.0], [3.0, 1.0], [1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    sk = sk_fit(x, init, max_iter=50, tol=1e-4)
    result = ops.kmeans(x, 4, init=init)
    assert np.array_equal(result.labels.numpy(), sk.labels_) and result.n_iter == sk.n_iter_
    np.testing.assert_allclose(result.centroids.numpy(), sk.cluster_centers_)
    assert result.inertia == pytest.approx(sk.inertia_, abs=1e-12)


# ------------------------------------------------------------------------------------------------ groups
@pytest.mark.parametrize("backend_param", backend_params(include_torch=True))
def test_groups_assign_within_group_and_equal_separate_runs(backend_param):
    backend, device = activate(backend_param)
    n = 90 if is_slow_backend(backend) else 2400
    x = blobs(n, 3, 6, seed=21, spread=4.0)
    groups = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(2))
    k = [2, 3, 4]
    init = torch.cat([random_rows(x[groups == g], kg, seed=g) for g, kg in enumerate(k)])
    result = ops.kmeans(x.to(device), k, init=init.to(device), groups=groups.to(device), backend=backend)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    assert torch.equal(result.centroid_groups.cpu(), owner)
    labels = result.labels.cpu()
    assert torch.equal(owner[labels], groups), "a row was assigned outside its group"
    offset, inertia, n_iter = 0, 0.0, 0
    for g, kg in enumerate(k):
        alone = ops.kmeans(x[groups == g].to(device), kg, init=init[offset:offset + kg].to(device), backend=backend)
        assert torch.equal(labels[groups == g], alone.labels.cpu() + offset)
        assert torch.equal(result.centroids[offset:offset + kg].cpu(), alone.centroids.cpu())
        inertia += alone.inertia
        n_iter = max(n_iter, alone.n_iter)
        offset += kg
    assert result.inertia == pytest.approx(inertia, rel=1e-12) and result.n_iter == n_iter


@pytest.mark.parametrize("init", ["k-means++", "k-means||", "random"])
def test_groups_with_seeded_initialisation(init):
    x = blobs(3000, 4, 8, seed=4)
    groups = torch.randint(0, 2, (3000,), generator=torch.Generator().manual_seed(0))
    first = ops.kmeans(x, [3, 5], init=init, groups=groups, random_state=9, n_init=2)
    second = ops.kmeans(x, [3, 5], init=init, groups=groups, random_state=9, n_init=2)
    assert torch.equal(first.centroids, second.centroids) and torch.equal(first.labels, second.labels)
    assert torch.equal(first.centroid_groups[first.labels], groups)
    assert torch.equal(torch.bincount(first.labels, minlength=8) > 0, torch.ones(8, dtype=torch.bool))


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_groups_made_on_demand_equal_the_grouped_op(init):
    """kmeans_groups (each group's rows made by a callable, one group at a time: EcoVal's standardised rows of one
    class) gives the grouped op's centroids, inertia and iterations bit for bit, and its labels in group order."""
    x = blobs(3000, 4, 8, seed=4).double()
    groups = torch.randint(0, 3, (3000,), generator=torch.Generator().manual_seed(1))
    whole = ops.kmeans(x, [2, 3, 3], init=init, groups=groups, random_state=5, n_init=3)
    members = [torch.nonzero(groups == g).flatten() for g in range(3)]
    made = []
    parts = ops.kmeans_groups(lambda g: made.append(g) or x[members[g]], [len(r) for r in members], [2, 3, 3],
                              init=init, random_state=5, n_init=3)
    assert made == [0, 1, 2]   # each group's rows made once
    assert torch.equal(parts.centroids, whole.centroids) and torch.equal(parts.centroid_groups, whole.centroid_groups)
    assert parts.inertia == whole.inertia and parts.n_iter == whole.n_iter
    assert torch.equal(parts.labels, torch.cat([whole.labels[rows] for rows in members]))
    with pytest.raises(ValueError, match="one row count per group"):
        ops.kmeans_groups(lambda g: x[members[g]], [len(members[0])], [2, 3, 3])


# ------------------------------------------------------------------------------------------------ initialisation
@needs_sklearn
@pytest.mark.parametrize("init", ["k-means++", "k-means||"])
def test_initialisation_quality_close_to_sklearn_kmeanspp(init):
    x = blobs(6000, 8, 15, seed=8, spread=4.0)
    ours, theirs = [], []
    for seed in range(5):
        ours.append(ops.kmeans(x, 15, init=init, random_state=seed).inertia)
        theirs.append(SkKMeans(15, init="k-means++", n_init=1, random_state=seed, algorithm="lloyd")
                      .fit(x.numpy()).inertia_)
    assert np.mean(ours) <= 1.03 * np.mean(theirs), (ours, theirs)


@pytest.mark.parametrize("backend_param", backend_params(include_torch=True))
@pytest.mark.parametrize("init", ["k-means++", "k-means||", "random"])
def test_seeded_initialisations_run_on_every_backend(backend_param, init):
    backend, device = activate(backend_param)
    n = 60 if is_slow_backend(backend) else 1500
    x = blobs(n, 3, 4, seed=2)
    result = ops.kmeans(x.to(device), 4, init=init, random_state=1, backend=backend, max_iter=5 if n < 100 else 100)
    cpu = ops.kmeans(x, 4, init=init, random_state=1, backend="torch", max_iter=5 if n < 100 else 100)
    assert torch.equal(torch.bincount(result.labels.cpu(), minlength=4) > 0, torch.ones(4, dtype=torch.bool))
    # same random draws on every device and backend: the same clustering as the reference backend
    assert torch.equal(result.labels.cpu(), cpu.labels)


def test_kmeanspp_runs_on_a_subsample():
    """k-means++ looks at min(n, 256 k) rows: with k = 1 the centroid is a row of the subsample, then Lloyd."""
    x = blobs(5000, 2, 3, seed=0)
    result = ops.kmeans(x, 1, random_state=0)
    assert torch.allclose(result.centroids[0].double(), x.double().mean(0), atol=1e-5)
    assert result.n_iter <= 2


@pytest.mark.parametrize("init", ["k-means++", "k-means||", "random"])
def test_random_state_makes_runs_reproducible(init):
    x = blobs(2000, 5, 7, seed=3, spread=3.0)
    a = ops.kmeans(x, 7, init=init, random_state=123, n_init=2)
    b = ops.kmeans(x, 7, init=init, random_state=123, n_init=2)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert a.inertia == b.inertia and a.n_iter == b.n_iter
    generator = ops.kmeans(x, 7, init=init, random_state=torch.Generator().manual_seed(123), n_init=2)
    assert torch.equal(generator.centroids, a.centroids)
    torch.manual_seed(0)
    c = ops.kmeans(x, 7, init=init)
    torch.manual_seed(0)
    d = ops.kmeans(x, 7, init=init)
    assert torch.equal(c.centroids, d.centroids)


def test_n_init_keeps_the_lowest_inertia():
    x = blobs(3000, 4, 12, seed=6, spread=3.0)
    single = ops.kmeans(x, 12, init="random", random_state=5, n_init=1)
    several = ops.kmeans(x, 12, init="random", random_state=5, n_init=6)
    assert several.inertia <= single.inertia  # run 0 of both draws the same centroids
    assert several.inertia < single.inertia or torch.equal(several.centroids, single.centroids)


@pytest.mark.parametrize("n,k", [(1, 1), (5, 5), (9, 1)])
def test_edge_sizes(n, k):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    result = ops.kmeans(x, k, random_state=0)
    assert result.centroids.shape == (k, 3) and result.labels.shape == (n,)
    if k == n:
        assert result.inertia == pytest.approx(0.0, abs=1e-5)  # expanded-form float32 rounding
        assert sorted(result.labels.tolist()) == list(range(n))
    if k == 1:
        assert torch.allclose(result.centroids[0], x.mean(0), atol=1e-6)


def test_float64_and_noncontiguous_input():
    x = blobs(800, 6, 4, seed=1, dtype=torch.float64)[:, ::2]
    init = random_rows(x, 4, 0)
    result = ops.kmeans(x, 4, init=init)
    assert result.centroids.dtype == torch.float64
    c_ref, labels_ref, inertia_ref, n_iter_ref = reference.kmeans_lloyd(x, init, 100, 1e-4)
    assert torch.equal(result.labels, labels_ref) and result.n_iter == n_iter_ref
    assert torch.allclose(result.centroids, c_ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ estimator
def test_estimator_numpy_in_numpy_out():
    x = blobs(1000, 3, 4, seed=9).numpy()
    model = ops.KMeans(4, random_state=0)
    assert model.fit(x) is model
    assert isinstance(model.cluster_centers_, np.ndarray) and model.cluster_centers_.shape == (4, 3)
    assert isinstance(model.labels_, np.ndarray) and model.labels_.dtype == np.int64
    assert model.inertia_ > 0 and model.n_iter_ >= 1
    assert np.array_equal(model.predict(x), model.labels_)
    assert isinstance(model.predict(torch.from_numpy(x)), torch.Tensor)
    assert np.array_equal(ops.KMeans(4, random_state=0).fit_predict(x), model.labels_)
    ints = ops.KMeans(2, random_state=0).fit(np.array([[0, 0], [0, 1], [9, 9], [9, 8]]))
    assert ints.cluster_centers_.dtype == np.float64 and len(set(ints.labels_.tolist())) == 2


def test_estimator_tensor_in_tensor_out_and_errors():
    x = blobs(500, 2, 3, seed=1)
    model = ops.KMeans(3, init="k-means||", random_state=0, tol=0.0)
    with pytest.raises(NotFittedError):
        model.predict(x)
    model.fit(x)
    assert isinstance(model.cluster_centers_, torch.Tensor) and isinstance(model.labels_, torch.Tensor)
    assert torch.equal(model.predict(x), model.labels_)
    assert isinstance(model.predict(x.numpy()), np.ndarray)
    with pytest.raises(ValueError, match="features"):
        model.predict(x[:, :1])
    assert model.get_params()["n_clusters"] == 3 and model.set_params(n_clusters=2).n_clusters == 2


# ------------------------------------------------------------------------------------------------ bad input
def _x():
    return torch.randn(20, 3, generator=torch.Generator().manual_seed(0))


def _nan():
    x = _x()
    x[3, 1] = float("nan")
    return x


def _inf():
    x = _x()
    x[0, 0] = float("inf")
    return x


BAD = [
    ("k-zero", lambda: ops.kmeans(_x(), 0), "k"),
    ("k-above-n", lambda: ops.kmeans(_x(), 21), "k must be <="),
    ("k-float", lambda: ops.kmeans(_x(), 2.5), "k"),
    ("k-bool", lambda: ops.kmeans(_x(), True), "k"),
    ("k-sequence-without-groups", lambda: ops.kmeans(_x(), [2, 3]), "k must be an integer"),
    ("x-nan", lambda: ops.kmeans(_nan(), 2), "x contains"),
    ("x-inf", lambda: ops.kmeans(_inf(), 2), "x contains"),
    ("x-empty", lambda: ops.kmeans(torch.empty(0, 3), 1), "x must hold at least one point"),
    ("x-no-features", lambda: ops.kmeans(torch.empty(5, 0), 1), "x must have at least one feature"),
    ("x-1d", lambda: ops.kmeans(torch.randn(10), 2), "x must be 2-D"),
    ("x-int", lambda: ops.kmeans(torch.ones(10, 2, dtype=torch.int64), 2), "x must be float32 or float64"),
    ("init-string", lambda: ops.kmeans(_x(), 2, init="kmeans++"), "init must be one of"),
    ("init-type", lambda: ops.kmeans(_x(), 2, init=3), "init must be one of"),
    ("init-shape", lambda: ops.kmeans(_x(), 2, init=torch.zeros(3, 3)), r"init must have shape \(2, 3\)"),
    ("init-features", lambda: ops.kmeans(_x(), 2, init=torch.zeros(2, 4)), r"init must have shape \(2, 3\)"),
    ("init-nan", lambda: ops.kmeans(_x(), 2, init=torch.full((2, 3), float("nan"))), "init contains"),
    ("init-int", lambda: ops.kmeans(_x(), 2, init=torch.zeros(2, 3, dtype=torch.int64)), "init must be a float"),
    ("max_iter-zero", lambda: ops.kmeans(_x(), 2, max_iter=0), "max_iter"),
    ("max_iter-float", lambda: ops.kmeans(_x(), 2, max_iter=1.5), "max_iter"),
    ("tol-negative", lambda: ops.kmeans(_x(), 2, tol=-1e-3), "tol"),
    ("tol-nan", lambda: ops.kmeans(_x(), 2, tol=float("nan")), "tol"),
    ("n_init-zero", lambda: ops.kmeans(_x(), 2, n_init=0), "n_init"),
    ("backend", lambda: ops.kmeans(_x(), 2, backend="gpu"), "backend"),
    ("random_state", lambda: ops.kmeans(_x(), 2, random_state="seed"), "random_state"),
    ("groups-length", lambda: ops.kmeans(_x(), [1, 1], groups=torch.zeros(19, dtype=torch.int64)),
     "groups must have shape"),
    ("groups-dtype", lambda: ops.kmeans(_x(), [1, 1], groups=torch.zeros(20, dtype=torch.int32)),
     "groups must be int64"),
    ("groups-id-high", lambda: ops.kmeans(_x(), [1, 1], groups=torch.arange(20) % 3), r"groups must hold ids in 0..1"),
    ("groups-id-negative", lambda: ops.kmeans(_x(), [1, 1], groups=torch.arange(20) % 2 - 1), "groups must hold ids"),
    ("groups-int-k", lambda: ops.kmeans(_x(), 2, groups=torch.arange(20) % 2), "k must be a sequence"),
    ("groups-empty-k", lambda: ops.kmeans(_x(), [], groups=torch.arange(20) % 2), "k must name at least one group"),
    ("groups-k-zero", lambda: ops.kmeans(_x(), [0, 1], groups=torch.arange(20) % 2), r"k\[0\] must be >= 1"),
    ("groups-k-above-size", lambda: ops.kmeans(_x(), [2, 11], groups=torch.arange(20) % 2), r"k\[1\] = 11 exceeds"),
    ("groups-missing-group", lambda: ops.kmeans(_x(), [1, 1, 1], groups=torch.arange(20) % 2), r"k\[2\] = 1 exceeds"),
    ("groups-init-shape", lambda: ops.kmeans(_x(), [1, 2], groups=torch.arange(20) % 2, init=torch.zeros(2, 3)),
     r"init must have shape \(3, 3\)"),
]


@pytest.mark.parametrize("call,match", [pytest.param(c, m, id=i) for i, c, m in BAD])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_tensor_x_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.kmeans(np.zeros((4, 2)), 2)


def test_validate_false_skips_the_finite_scan():
    """validate=False changes nothing on finite data and skips the NaN/inf scan (the one that raises)."""
    checked = ops.kmeans(_x(), 2, random_state=0)
    unchecked = ops.kmeans(_x(), 2, validate=False, random_state=0)
    assert torch.equal(checked.labels, unchecked.labels) and torch.equal(checked.centroids, unchecked.centroids)
    assert checked.inertia == unchecked.inertia
    with pytest.raises(ValueError, match="x contains 1 NaN or inf"):
        ops.kmeans(_nan(), 2, random_state=0)
    try:  # unchecked, a NaN row is not looked for: whatever happens, it is not the scan's error
        ops.kmeans(_nan(), 2, validate=False, random_state=0)
    except ValueError as error:
        assert "NaN or inf value" not in str(error)


# ------------------------------------------------------------------------------------------------ bounded passes
needs_bounded = pytest.mark.skipif(not hasattr(torch.ops.lossval_fast, "kmeans_bounded_step"),
                                   reason="the C++ extension is not built")


@needs_bounded
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d,k", [(1037, 7, 5), (3001, 33, 37), (500, 3, 1)])
def test_bounded_pass_gives_the_plain_pass_labels_and_sums(n, d, k, dtype):
    """Every iteration of the bounded pass (Hamerly's bounds, rows skipped) equals the plain pass: labels, counts
    and sums bit for bit, on overlapping blobs whose labels keep moving."""
    x = blobs(n, d, k, seed=n + d, spread=2.0, dtype=dtype)
    c = random_rows(x, k, seed=1)
    labels = torch.full((n,), -1, dtype=torch.int64)
    upper, lower = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    previous, recomputed = c, []
    for iteration in range(12):
        index, _, sums, counts = torch.ops.lossval_fast.nearest(x, c, True)
        before = labels.clone()
        s, cnt, done, changed = torch.ops.lossval_fast.kmeans_bounded_step(x, c, previous, labels, upper, lower,
                                                                           iteration == 0)
        assert torch.equal(labels, index)
        assert torch.equal(cnt, counts) and torch.equal(s, sums)
        assert changed == int((labels != before).sum())
        recomputed.append(done)
        previous = c
        c = torch.where(counts[:, None] > 0, sums.double() / counts.clamp_min(1).double()[:, None],
                        c.double()).to(dtype)
    assert recomputed[0] == n
    assert min(recomputed[3:]) < n // 2  # rows were skipped
    if k == 1:
        assert max(recomputed[1:]) == 0


@needs_bounded
def test_bounded_pass_rejects_malformed_state():
    x, c = torch.randn(10, 3), torch.randn(2, 3)
    good = dict(labels=torch.zeros(10, dtype=torch.int64), upper=torch.zeros(10, dtype=torch.float64),
                lower=torch.zeros(10, dtype=torch.float64))
    for name, bad in [("labels", torch.zeros(9, dtype=torch.int64)), ("upper", torch.zeros(10)),
                      ("lower", torch.zeros(10, dtype=torch.float64)[::1][:9])]:
        state = dict(good, **{name: bad})
        with pytest.raises(RuntimeError, match=name if name == "labels" else "upper and lower"):
            torch.ops.lossval_fast.kmeans_bounded_step(x, c, c, state["labels"], state["upper"], state["lower"],
                                                       True)
    with pytest.raises(RuntimeError, match="centroids and previous"):
        torch.ops.lossval_fast.kmeans_bounded_step(x, c, torch.randn(3, 3), **good, reset=False)
    # labels out of range (never set) with reset=False: those rows are measured, not looked up
    labels = torch.tensor([-1, 7, 0, 1, -5, 2, 0, 1, 99, 1], dtype=torch.int64)
    upper, lower = torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    unset = (labels < 0) | (labels >= 2)
    torch.ops.lossval_fast.kmeans_bounded_step(x, c, c, labels, upper, lower, False)
    assert torch.equal(labels[unset], torch.ops.lossval_fast.nearest(x, c, False)[0][unset])


@needs_bounded
@pytest.mark.parametrize("case", ["overlapping", "separated", "empty-clusters"])
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_kmeans_with_bounded_passes_equals_plain_passes(monkeypatch, case, tol):
    """kmeans() switched to bounded passes after its first iteration gives what plain passes give."""
    import importlib
    module = importlib.import_module("lossval_fast.ops.kmeans")
    if case == "empty-clusters":
        x, init = empty_cluster_problem(2)
        x, init = x.float(), init.float()
    else:
        x = blobs(4000, 6, 9, seed=3, spread=2.0 if case == "overlapping" else 12.0)
        init = random_rows(x, 9, seed=2)
    results = {}
    for bounded in (True, False):
        monkeypatch.setattr(module, "_BOUNDED_MIN_WORK", 1 if bounded else 10**12)
        monkeypatch.setattr(module, "_BOUNDED_MIN_ROWS", 1)
        monkeypatch.setattr(module, "_BOUNDED_SWITCH", 1.0)  # switch as soon as one pass has been compared
        calls = []
        step = module._Bounds.step
        monkeypatch.setattr(module._Bounds, "step", lambda self, *a: calls.append(1) or step(self, *a))
        results[bounded] = ops.kmeans(x, init.shape[0], init=init, max_iter=60, tol=tol)
        assert bool(calls) == (bounded and results[bounded].n_iter > 2)
    a, b = results[True], results[False]
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia and a.n_iter == b.n_iter
