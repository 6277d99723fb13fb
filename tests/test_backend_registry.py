"""The backend registry (lossval_fast/ops/backends): what `auto` picks and why, the errors of explicit names, a
backend added by registering one table, and the plain-torch backend against the reference on row blocks."""
import types

import pytest
import torch

from lossval_fast import ops, reference
from lossval_fast._extension import HAS_EXTENSION
from lossval_fast.ops import backends
from lossval_fast.ops.backends import plain_torch, registry

CPU = torch.device("cpu")


def test_names_and_auto_on_this_machine():
    assert backends.names() == ("auto", "cpp", "cuda", "triton", "torch")
    for op in backends.OPS:
        name, reason = backends.auto(op, CPU)
        assert name == ("cpp" if HAS_EXTENSION else "torch"), (op, name)
        assert reason
    # a device type no kernel knows: the plain torch backend
    assert backends.auto("softmin", torch.device("meta"))[0] == "torch"


def test_explicit_names_are_checked():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'cpp', 'cuda', 'triton', 'torch'\)"):
        backends.resolve("numpy", "softmin", CPU)
    with pytest.raises(ValueError, match="backend='cuda' runs on CUDA tensors, got tensors on cpu"):
        backends.resolve("cuda", "softmin", CPU)
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors, got tensors on meta"):
        backends.resolve("cpp", "softmin", torch.device("meta"))
    assert backends.resolve("torch", "nearest", CPU) == "torch"


def test_a_backend_lacking_an_op_is_refused_for_it(monkeypatch):
    toy = registry.Backend(name="toy", runs_on=("cpu",), where="CPU", auto_on=(), priority={"softmin": 1},
                           available=lambda: True, unavailable=lambda: None,
                           load=lambda: types.SimpleNamespace(), describe="toy")
    monkeypatch.setitem(registry._REGISTRY, "toy", toy)
    with pytest.raises(ValueError, match=r"backend='toy' has no nearest kernel; use 'auto' or one of"):
        backends.resolve("toy", "nearest", CPU)


def test_a_backend_is_one_registration(monkeypatch):
    """Register a table and every op entry point, `auto` and info() see it; an unavailable one says why."""
    calls = []

    def softmin(x, y, h, eps):
        calls.append(x.shape)
        return plain_torch.softmin(x, y, h, eps)
    toy = registry.Backend(name="toy", runs_on=("cpu",), where="CPU", auto_on=("cpu",), priority={"softmin": 99},
                           available=lambda: True, unavailable=lambda: None,
                           load=lambda: types.SimpleNamespace(softmin=softmin), describe="a toy kernel")
    monkeypatch.setitem(registry._REGISTRY, "toy", toy)
    monkeypatch.delitem(registry._TABLES, "toy", raising=False)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    h = torch.zeros(7, dtype=torch.float64)
    assert backends.auto("softmin", CPU) == ("toy", "a toy kernel")
    expected = reference.softmin(x, y, h, 0.3)
    assert torch.allclose(ops.pairwise_softmin(x, y, h, 0.3), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ops.pairwise_softmin(x, y, h, 0.3, backend="toy"), expected, rtol=1e-12, atol=1e-12)
    assert calls == [(5, 2), (5, 2)]
    import lossval_fast
    assert lossval_fast.info()["dispatch"]["cpu"]["softmin"].startswith("toy")

    def refuse():
        raise RuntimeError("the toy is broken")
    monkeypatch.setitem(registry._REGISTRY, "toy", registry.Backend(
        name="toy", runs_on=("cpu",), where="CPU", auto_on=("cpu",), priority={"softmin": 99},
        available=lambda: False, unavailable=refuse, load=toy.load, describe="a toy kernel"))
    with pytest.raises(RuntimeError, match="the toy is broken"):
        backends.resolve("toy", "softmin", CPU)
    name, reason = backends.auto("softmin", CPU)
    assert name != "toy" and "toy cannot run here" in reason


def test_registering_twice_or_an_unknown_op_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("torch"))
    with pytest.raises(ValueError, match="unknown ops"):
        registry.register(registry.Backend(name="odd", runs_on=("cpu",), where="CPU", auto_on=(),
                                           priority={"sort": 1}, available=lambda: True, unavailable=lambda: None,
                                           load=types.SimpleNamespace, describe="odd"))


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(plain_torch, "BLOCK_ELEMENTS", 64)   # several row blocks even at test sizes


def test_plain_torch_is_the_reference_on_row_blocks(small_blocks):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 3, generator=g, dtype=torch.float64), torch.randn(29, 3, generator=g, dtype=torch.float64)
    h, f = 0.1 * torch.randn(29, generator=g, dtype=torch.float64), torch.randn(37, generator=g, dtype=torch.float64)
    w, eps = torch.randn(37, generator=g, dtype=torch.float64), 0.4

    def close(a, b):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-12), (a - b).abs().max()
    close(plain_torch.softmin(x, y, h, eps), reference.softmin(x, y, h, eps))
    for got, want in zip(plain_torch.softmin_barycenter(x, y, h, eps), reference.softmin_barycenter(x, y, h, eps)):
        close(got, want)
    for got, want in zip(plain_torch.plan_colsum(x, y, h, f, w, eps), reference.plan_colsum(x, y, h, f, w, eps)):
        close(got, want)
    cost = reference.half_sqdist(x, y)
    close(plain_torch.softmin_stored(cost, h, eps), reference.softmin_stored(cost, h, eps))
    got, want = plain_torch.nearest(x, y, True), reference.nearest(x, y, True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[3], want[3])
    close(got[1], want[1])
    close(got[2], want[2])
    logits, target = torch.randn(37, 4, generator=g, dtype=torch.float64), torch.arange(37) % 4
    close(plain_torch.weighted_cross_entropy(logits, target, w, True, 1e-8, False)[0],
          reference.weighted_cross_entropy(logits, target, w, True))
    probs = torch.softmax(logits, 1)
    soft = torch.softmax(torch.randn(37, 4, generator=g, dtype=torch.float64), 1)
    close(plain_torch.weighted_cross_entropy(probs, soft, w, False, 1e-8, False)[0],
          reference.weighted_cross_entropy(probs, soft, w, False, 1e-8))
    close(plain_torch.weighted_mse(logits, probs, w, False)[0], reference.weighted_mse(logits, probs, w))
    close(plain_torch.weighted_mse(logits[:, 0], probs[:, 0], w, False)[0],
          reference.weighted_mse(logits[:, 0], probs[:, 0], w))


def test_plain_torch_sinkhorn_is_the_reference_to_second_order(small_blocks):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(11, generator=g, dtype=torch.float64) + 0.2, torch.rand(9, generator=g, dtype=torch.float64)
    b[2] = 0.0
    x = torch.randn(11, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(9, 2, generator=g, dtype=torch.float64)
    eps_list = ops.epsilon_schedule(2, ops.max_diameter(x.detach(), y), 0.05, 0.5)
    ours = plain_torch.sinkhorn_divergence(a, x, b, y, eps_list, True)
    theirs = reference.sinkhorn_divergence(a, x, b, y)
    assert torch.allclose(ours, theirs, rtol=1e-11, atol=1e-13)
    (g_ours,) = torch.autograd.grad(ours, x, create_graph=True)
    (g_theirs,) = torch.autograd.grad(theirs, x, create_graph=True)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-10, atol=1e-12)
    (h_ours,) = torch.autograd.grad(g_ours.sum(), x)
    (h_theirs,) = torch.autograd.grad(g_theirs.sum(), x)
    assert torch.allclose(h_ours, h_theirs, rtol=1e-9, atol=1e-11)
    assert torch.allclose(ops.sinkhorn_divergence(a, x, b, y, backend="torch"), theirs, rtol=1e-11, atol=1e-13)
