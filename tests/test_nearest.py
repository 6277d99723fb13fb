"""nearest (argmin flavour): every backend against the float64 reference; ties, sums and counts."""
import itertools

import pytest
import torch

from backends import activate, backend_params, is_slow_backend
from lossval_fast import ops, reference
from problems import cast, exact_on, problem


def shapes(backend):
    if is_slow_backend(backend):
        return [(1, 1, 1), (7, 33, 3), (33, 7, 64), (5, 3, 257)]
    return list(itertools.product((1, 7, 33, 1000), (1, 7, 33, 1000), (1, 3, 64, 257)))


def cases():
    out = []
    for param in backend_params(include_torch=True):
        backend = param.values[0][0]
        for dtype in (torch.float32, torch.float64):
            for n, m, d in shapes(backend):
                out.append(pytest.param(param.values[0], dtype, n, m, d, marks=param.marks,
                                        id=f"{param.id}-{str(dtype)[6:]}-{n}x{m}x{d}"))
    return out


@pytest.mark.parametrize("backend_param,dtype,n,m,d", cases())
def test_nearest_matches_float64_reference(backend_param, dtype, n, m, d):
    backend, device = activate(backend_param)
    x, y, _ = problem(n, m, d)
    xe, ye = exact_on(dtype, x, y)
    sq = ((xe[:, None, :] - ye[None, :, :]) ** 2).sum(-1)
    best = sq.min(1).values
    result = ops.nearest(*cast(dtype, device, x, y), accumulate=True, backend=backend)
    index, dist = result.index.cpu(), result.sqdist.cpu().double()
    assert index.dtype == torch.int64 and index.shape == (n,) and dist.shape == (n,)
    # the chosen row is optimal up to rounding (near-ties may pick either), and the distance is its distance
    rel = 1e-12 if dtype == torch.float64 else 2e-6
    scale = 1 + xe.pow(2).sum(1) + ye.pow(2).sum(1).max()
    chosen = sq.gather(1, index[:, None])[:, 0]
    assert bool(((chosen - best) <= rel * scale).all()), "an assignment is not the nearest row"
    assert bool(((dist - chosen).abs() <= rel * scale).all()), "distance does not match the chosen row"
    exact_index = sq.argmin(1)
    clear = (sq.topk(min(2, m), dim=1, largest=False).values.diff(dim=1).abs().min(1).values > 1e-4 * scale
             if m > 1 else torch.ones(n, dtype=torch.bool))
    assert torch.equal(index[clear], exact_index[clear])
    # sums and counts of the rows assigned to each centre, for the labels the kernel chose
    counts = torch.bincount(index, minlength=m)
    sums = torch.zeros(m, d, dtype=torch.float64).index_add_(0, index, xe)
    assert torch.equal(result.counts.cpu(), counts)
    tol = (1e-10 if dtype == torch.float64 else 1e-5) * (1 + counts[:, None] * xe.abs().max())
    assert bool(((result.sums.cpu().double() - sums).abs() <= tol).all())


@pytest.mark.parametrize("backend_param", backend_params(include_torch=True))
def test_nearest_ties_go_to_the_lowest_index(backend_param):
    backend, device = activate(backend_param)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], device=device)
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.5, 0.5]], device=device)
    result = ops.nearest(x, y, backend=backend)
    assert result.index.tolist() == [0, 0, 0]
    assert result.sums.shape == (0, 2) and result.counts.shape == (0,)


@pytest.mark.parametrize("backend_param", backend_params())
def test_nearest_many_centres_crosses_panels(backend_param):
    """More centres than one register tile and one chunk: the running best must carry across tiles."""
    backend, device = activate(backend_param)
    if is_slow_backend(backend):
        pytest.skip("interpreter: small shapes only")
    g = torch.Generator().manual_seed(3)
    y = torch.randn(1031, 5, generator=g)
    x = y[torch.tensor([0, 1030, 517, 31, 32, 33, 255, 256, 257])] + 1e-3
    result = ops.nearest(x.to(device), y.to(device), backend=backend)
    assert result.index.cpu().tolist() == [0, 1030, 517, 31, 32, 33, 255, 256, 257]


def test_reference_nearest_accumulates():
    x, y, _ = problem(20, 3, 2)
    index, dist, sums, counts = reference.nearest(x, y, accumulate=True)
    assert counts.sum() == 20 and torch.allclose(sums.sum(0), x.sum(0))
