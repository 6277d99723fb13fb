"""Sinkhorn divergence: parity with geomloss 0.3.1 (tensorized) in value and gradients, with POT on normalised
masses, on every backend; batches, the drop-in loss, the cache, and bad input."""
import math

import numpy as np
import pytest
import torch
from geomloss import SamplesLoss

from backends import activate, backend_params, is_slow_backend
from lossval_fast import SinkhornLoss, ops, reference


def clouds(n, m, d, seed=0, *, weights="unequal"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 0.7 * torch.randn(m, d, generator=g, dtype=torch.float64) + 0.4
    if weights == "uniform":
        a, b = torch.full((n,), 1.0 / n, dtype=torch.float64), torch.full((m,), 1.0 / m, dtype=torch.float64)
    elif weights == "ones":  # LossVal's faithful mode: unnormalised masses
        a, b = torch.ones(n, dtype=torch.float64), torch.ones(m, dtype=torch.float64)
    else:
        a = torch.rand(n, generator=g, dtype=torch.float64) * 2
        b = torch.rand(m, generator=g, dtype=torch.float64) + 0.5
    return a, x, b, y


def geomloss_value_and_grads(a, x, b, y, **kw):
    loss = SamplesLoss("sinkhorn", p=2, backend="tensorized", **kw)
    inputs = [t.clone().requires_grad_() for t in (a, x, b, y)]
    value = loss(*inputs)
    return value.detach(), torch.autograd.grad(value, inputs)


def ours_value_and_grads(a, x, b, y, dtype, device, **kw):
    inputs = [t.to(dtype=dtype, device=device).requires_grad_() for t in (a, x, b, y)]
    value = ops.sinkhorn_divergence(*inputs, **kw)
    return value.detach().double().cpu(), [g.double().cpu() for g in torch.autograd.grad(value, inputs)]


def assert_parity(ours, exact, rel, what):
    value, grads = ours
    exact_value, exact_grads = exact
    assert abs(value.item() - exact_value.item()) <= rel * max(1.0, abs(exact_value.item())), \
        f"{what}: S = {value.item()!r}, geomloss {exact_value.item()!r}"
    for name, g, e in zip(("a", "x", "b", "y"), grads, exact_grads):
        err = (g - e).abs().max().item()
        assert err <= rel * max(1.0, e.abs().max().item()), f"{what}: dS/d{name} off by {err:.3e}"


CASES = {
    # name: (n, m, d, weights, kwargs)
    "lossval-step": (32, 100, 5, "ones", dict(blur=0.05, scaling=0.5, diameter=None)),
    "unequal-masses": (20, 17, 3, "unequal", dict(blur=0.05)),
    "uniform": (33, 29, 4, "uniform", dict(blur=0.1, scaling=0.7)),
    "n-is-1": (1, 9, 2, "unequal", dict(blur=0.05)),
    "m-is-1": (9, 1, 2, "unequal", dict(blur=0.05)),
    "diameter-given": (15, 21, 3, "ones", dict(blur=0.05, diameter=7.0)),
    "blur-0.01": (12, 14, 2, "unequal", dict(blur=0.01)),
    "blur-1": (12, 14, 2, "unequal", dict(blur=1.0)),
    "biased": (15, 11, 3, "unequal", dict(blur=0.05, debias=False)),
    "wide-d": (10, 12, 64, "ones", dict(blur=0.05)),
}


def _zero_and_negative(a):
    a = a.clone()
    a[1] = 0.0
    a[min(2, a.numel() - 1)] = -0.3
    return a


@pytest.mark.parametrize("cost", ["online", "stored"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpp_matches_geomloss_float64(case, cost):
    n, m, d, weights, kw = CASES[case]
    a, x, b, y = clouds(n, m, d, weights=weights)
    exact = geomloss_value_and_grads(a, x, b, y, **kw)
    ours = ours_value_and_grads(a, x, b, y, torch.float64, "cpu", backend="cpp", cost=cost, **kw)
    assert_parity(ours, exact, 1e-9, f"{case}/{cost}")


@pytest.mark.parametrize("cost", ["online", "stored"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cpp_float32_matches_geomloss_float64(case, cost):
    """float32 against the exact (float64) value: 1e-4 relative. geomloss itself in float32 misses this on the
    point gradients (it differentiates through float32 log-sum-exps of C/eps)."""
    n, m, d, weights, kw = CASES[case]
    a, x, b, y = clouds(n, m, d, weights=weights)
    exact = geomloss_value_and_grads(a, x, b, y, **kw)
    ours = ours_value_and_grads(a, x, b, y, torch.float32, "cpu", backend="cpp", cost=cost, **kw)
    assert_parity(ours, exact, 1e-4, f"{case}/{cost}/float32")


@pytest.mark.parametrize("weights", ["zero-and-negative", "duplicated-points"])
def test_cpp_matches_geomloss_on_degenerate_input(weights):
    a, x, b, y = clouds(12, 10, 3)
    if weights == "zero-and-negative":
        a, b = _zero_and_negative(a), _zero_and_negative(b)
    else:
        x = torch.cat([x[:6], x[:6]])
        y = torch.cat([y[:5], y[:5]])
    for cost in ("online", "stored"):
        exact = geomloss_value_and_grads(a, x, b, y, blur=0.05)
        ours = ours_value_and_grads(a, x, b, y, torch.float64, "cpu", backend="cpp", cost=cost, blur=0.05)
        assert_parity(ours, exact, 1e-9, f"{weights}/{cost}")


@pytest.mark.parametrize("backend_param", backend_params(include_torch=True))
def test_every_backend_matches_geomloss(backend_param):
    backend, device = activate(backend_param)
    cases = ["unequal-masses", "m-is-1"] if is_slow_backend(backend) else sorted(CASES)
    for case in cases:
        n, m, d, weights, kw = CASES[case]
        if is_slow_backend(backend):
            n, m = min(n, 6), min(m, 5)
        a, x, b, y = clouds(n, m, d, weights=weights)
        exact = geomloss_value_and_grads(a, x, b, y, **kw)
        for dtype, rel in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
            if backend == "torch" and dtype == torch.float32:
                continue  # the materialised reference in float32 is geomloss in float32: not 1e-4 on dS/dx
            ours = ours_value_and_grads(a, x, b, y, dtype, device, backend=backend, **kw)
            assert_parity(ours, exact, rel, f"{backend}/{case}/{str(dtype)[6:]}")


def test_reference_is_geomloss_line_by_line():
    a, x, b, y = clouds(20, 30, 3)
    a = _zero_and_negative(a)
    exact = geomloss_value_and_grads(a, x, b, y, blur=0.05, diameter=6.0)
    inputs = [t.clone().requires_grad_() for t in (a, x, b, y)]
    value = reference.sinkhorn_divergence(*inputs, blur=0.05, diameter=6.0)
    grads = torch.autograd.grad(value, inputs)
    assert_parity((value.detach(), grads), exact, 1e-13, "reference")


def test_epsilon_schedule_is_geomloss():
    from geomloss._legacy.sinkhorn_divergence import epsilon_schedule as theirs
    for diameter, blur, scaling in [(7.3, 0.05, 0.5), (1.0, 0.05, 0.5), (0.06, 0.05, 0.9), (100.0, 0.01, 0.3)]:
        ours = ops.epsilon_schedule(2, diameter, blur, scaling)
        expected = theirs(2, diameter, blur, scaling)
        assert len(ours) == len(expected)
        assert np.allclose(ours, expected, rtol=1e-13, atol=0)
        assert ours[0] == diameter**2 and math.isclose(ours[1], diameter**2, rel_tol=1e-13)
        assert ours[-1] == blur**2


@pytest.mark.parametrize("cost", ["online", "stored"])
def test_batched_equals_loop(cost):
    batches = [clouds(9, 11, 3, seed=s) for s in range(3)]
    a, x, b, y = (torch.stack(parts) for parts in zip(*batches))
    x.requires_grad_()
    values = ops.sinkhorn_divergence(a, x, b, y, cost=cost, diameter=8.0)
    assert values.shape == (3,)
    gx = torch.autograd.grad(values.sum(), x)[0]
    for k, (ak, xk, bk, yk) in enumerate(batches):
        xk = xk.clone().requires_grad_()
        v = ops.sinkhorn_divergence(ak, xk, bk, yk, cost=cost, diameter=8.0)
        assert torch.allclose(values[k], v, rtol=1e-12)
        assert torch.allclose(gx[k], torch.autograd.grad(v, xk)[0], rtol=1e-10, atol=1e-12)


def test_batched_default_diameter_spans_the_batch_like_geomloss():
    batches = [clouds(9, 11, 3, seed=s) for s in range(2)]
    a, x, b, y = (torch.stack(parts) for parts in zip(*batches))
    expected = SamplesLoss("sinkhorn", p=2, blur=0.05, backend="tensorized")(a, x, b, y)
    assert torch.allclose(ops.sinkhorn_divergence(a, x, b, y), expected, rtol=1e-9)


def test_sinkhorn_loss_is_a_drop_in_for_samples_loss():
    a, x, b, y = clouds(25, 30, 3)
    theirs = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, backend="tensorized")
    ours = SinkhornLoss(blur=0.05, scaling=0.5)
    assert torch.allclose(ours(x, y), theirs(x, y), rtol=1e-10)
    assert torch.allclose(ours(a, x, b, y), theirs(a, x, b, y), rtol=1e-10)
    assert torch.allclose(ours(a[:, None], x, b[:, None], y), theirs(a, x, b, y), rtol=1e-10)
    xb, yb = torch.stack([x, x + 1]), torch.stack([y, y - 1])
    assert torch.allclose(ours(xb, yb), theirs(xb, yb), rtol=1e-10)
    assert ours(xb, yb).shape == (2,) and ours(x, y).shape == ()
    assert "blur=0.05" in repr(ours)


def test_normalize_turns_masses_into_probabilities():
    a, x, b, y = clouds(20, 15, 3, weights="ones")
    value = ops.sinkhorn_divergence(a, x, b, y, normalize=True)
    expected = SamplesLoss("sinkhorn", p=2, blur=0.05, backend="tensorized")(a / 20, x, b / 15, y)
    assert torch.allclose(value, expected, rtol=1e-10)


def test_pot_agrees_on_normalised_masses_at_a_converged_schedule():
    """POT's log-domain Sinkhorn on cost/2 with reg = blur^2, debiased by hand. geomloss' annealing stops short of
    the fixed point by roughly (1 - scaling) x the value (7e-3 at scaling 0.5, 4e-5 at 0.99): at scaling 0.999
    (2,619 iterations) both agree to 1e-6."""
    import ot

    a, x, b, y = clouds(30, 25, 2, weights="uniform")
    blur = 0.5
    ours = ops.sinkhorn_divergence(a, x, b, y, blur=blur, scaling=0.999).item()

    def entropic(p, u, q, v):
        cost = (reference.half_sqdist(u, v)).numpy()
        result = ot.solve(cost, p.numpy(), q.numpy(), reg=blur**2, reg_type="KL", method="sinkhorn_log",
                          max_iter=20000, tol=1e-13)
        return float(result.value)

    pot = entropic(a, x, b, y) - 0.5 * entropic(a, x, a, x) - 0.5 * entropic(b, y, b, y)
    assert abs(ours - pot) <= 3e-6 * max(1.0, abs(pot)), (ours, pot)


def test_cache_reuses_the_validation_potential():
    a, x, b, y = clouds(12, 40, 3, weights="ones")
    cache = ops.SinkhornCache()
    first = ops.sinkhorn_divergence(a, x, b, y, diameter=9.0, cache=cache)
    x2 = x + 0.1
    a2 = a.clone().requires_grad_()
    second = ops.sinkhorn_divergence(a2, x2, b, y, diameter=9.0, cache=cache)
    assert cache.hits == 1 and cache.misses == 1
    fresh = ops.sinkhorn_divergence(a, x2, b, y, diameter=9.0)
    assert torch.allclose(second, fresh, rtol=1e-12)
    assert torch.allclose(first, ops.sinkhorn_divergence(a, x, b, y, diameter=9.0), rtol=1e-12)
    torch.autograd.grad(second, a2)  # a cached GB still gives gradients
    y.add_(0.0)  # an in-place change (version bump) must miss
    ops.sinkhorn_divergence(a, x, b, y, diameter=9.0, cache=cache)
    assert cache.misses == 2
    ops.sinkhorn_divergence(a, x, b, y, diameter=5.0, cache=cache)  # another schedule misses too
    assert cache.misses == 3


@pytest.mark.parametrize("call,match", [
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x[:, :2], b, y), "same number of features"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a[:-1], x, b, y), r"a must have shape \(6,\)"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y[0]), "both be"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, blur=-0.1), "blur must be > 0"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, blur=math.nan), "blur must be finite"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, scaling=1.0), r"scaling must be in the open interval"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, scaling=0.0), r"scaling must be in the open interval"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, p=1), "p must be 2"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, diameter=0.0), "diameter must be > 0"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, cost="dense"), "cost must be"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x.float(), b, y), "share dtype"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a[:0], x[:0], b, y), "x must hold at least one point"),
    (lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, backend="numpy"), "backend must be one of"),
])
def test_bad_input_raises_value_error(call, match):
    a, x, b, y = clouds(6, 5, 3)
    with pytest.raises(ValueError, match=match):
        call(a, x, b, y)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("name", ["a", "x", "b", "y"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_is_named(backend, name, bad):
    tensors = dict(zip("axby", clouds(6, 5, 3)))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[1] = bad
    with pytest.raises(ValueError, match=f"{name} contains 1 NaN or inf"):
        ops.sinkhorn_divergence(*tensors.values(), backend=backend)


def test_validate_false_skips_the_check():
    a, x, b, y = clouds(6, 5, 3)
    x = x.clone()
    x[0, 0] = math.nan
    value = ops.sinkhorn_divergence(a, x, b, y, validate=False, diameter=5.0)
    assert value.shape == ()


def test_online_mode_allocates_no_cost_matrix():
    """Four 10,000 x 10,000 float32 costs would take 1.5 GiB; the online loop's peak RSS must stay far below."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource, torch, lossval_fast
        from lossval_fast import ops
        torch.manual_seed(0)
        n = m = 10_000
        x, y = torch.randn(n, 2), torch.randn(m, 2) + 1
        a, b = torch.ones(n), torch.ones(m)
        ops.sinkhorn_divergence(a[:10], x[:10], b[:10], y[:10])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        x.requires_grad_()
        s = ops.sinkhorn_divergence(a, x, b, y, blur=1.0, scaling=0.3, cost="online")
        s.backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert torch.isfinite(s) and torch.isfinite(x.grad).all()
        print((after - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    grown_mib = int(result.stdout.strip().splitlines()[-1])
    assert grown_mib < 50, f"peak RSS grew by {grown_mib} MiB (one cost matrix would be 381 MiB)"


def test_auto_picks_stored_only_within_the_budget():
    a, x, b, y = clouds(40, 50, 8)
    tight = ops.sinkhorn_divergence(a, x, b, y, memory_budget=100)  # falls back to online
    assert torch.allclose(tight, ops.sinkhorn_divergence(a, x, b, y, cost="stored"), rtol=1e-11)
    with pytest.raises(ValueError, match="memory_budget"):
        ops.sinkhorn_divergence(a, x, b, y, cost="stored", memory_budget=100)


@pytest.mark.parametrize("barycenters", [False, True])
@pytest.mark.parametrize("cost_mode", [0, 1])
def test_second_thread_for_the_validation_side_changes_no_bit(cost_mode, barycenters):
    """A small problem may run its y-y loop on a second thread (threads >= 2): the same operations in the same
    order per potential. Only the stored costs' GEMM may round differently (BLAS splits it over threads outside
    the parallel region, not inside), so the online mode is bit for bit and the stored one within rounding."""
    if not hasattr(torch.ops.lossval_fast, "sinkhorn_potentials"):
        pytest.skip("the C++ extension is not built")
    a, x, b, y = clouds(33, 101, 47, seed=4)
    eps_list = ops.epsilon_schedule(2, 12.0, 0.05, 0.5)
    for dtype in (torch.float32, torch.float64):
        args = [t.to(dtype)[None] for t in (a, x, b, y)]
        outs = [torch.ops.lossval_fast.sinkhorn_potentials(*args, eps_list, True, barycenters, cost_mode, None,
                                                             threads) for threads in (1, 2)]
        for serial, concurrent in zip(*outs):
            if cost_mode == 0:
                assert torch.equal(serial, concurrent)
            else:
                assert torch.allclose(serial, concurrent, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_online_fused_row_and_column_pass_equals_the_stored_one(threads):
    """Online mode computes each tile of dot products once for both half-steps (rows with one bias, columns with
    the other, per-thread column partials merged): the same divergence and gradients as the stored mode, on a
    problem large enough to be split over threads, with zero-weight (masked) points and ragged sizes."""
    a, x, b, y = clouds(701, 903, 13, seed=9)
    a[::17] = 0.0
    b[5::29] = 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values = {}
        for cost in ("online", "stored"):
            inputs = [t.clone().requires_grad_() for t in (a, x, b, y)]
            value = ops.sinkhorn_divergence(*inputs, cost=cost, backend="cpp" if _has_cpp() else "auto")
            values[cost] = (value.detach(), torch.autograd.grad(value, inputs))
    finally:
        torch.set_num_threads(previous)
    (v_on, g_on), (v_st, g_st) = values["online"], values["stored"]
    assert torch.allclose(v_on, v_st, rtol=1e-11, atol=0)
    for p, q in zip(g_on, g_st):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-10)


def _has_cpp():
    return hasattr(torch.ops.lossval_fast, "sinkhorn_potentials")


def test_reused_scratch_buffers_change_no_bit():
    """The stored costs live in per-thread scratch buffers reused across calls (a fresh ~MB buffer per call made
    the kernel map and zero new pages every LossVal step): a problem solved after a larger and a smaller one, whose
    buffers it then reuses uninitialised, gives the bits it gave first."""
    if not hasattr(torch.ops.lossval_fast, "sinkhorn_potentials"):
        pytest.skip("the C++ extension is not built")
    eps_list = ops.epsilon_schedule(2, 12.0, 0.05, 0.5)
    for dtype in (torch.float32, torch.float64):
        problems = [[t.to(dtype)[None] for t in clouds(n, m, 19, seed=n)] for n, m in ((31, 517), (97, 1203), (5, 33))]

        def solve(k):
            return torch.ops.lossval_fast.sinkhorn_potentials(*problems[k], eps_list, True, False, 1, None, 1)

        first = solve(0)
        solve(1), solve(2)
        for before, after in zip(first, solve(0)):
            assert torch.equal(before, after)


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("barycenters", [False, True])
def test_compiled_loop_is_the_python_loop(debias, barycenters):
    """csrc's sinkhorn_one is the package's one loop (lossval_fast.sinkhorn_loop) compiled: the Python loop over the
    same compiled softmin gives the same value, potentials, GB and barycentres, on ragged sizes with masked
    (zero-weight) points, with GB computed and with GB given (the cache's path)."""
    if not _has_cpp():
        pytest.skip("the C++ extension is not built")
    from lossval_fast.ops import backends
    from lossval_fast.ops.sinkhorn import _cpp_runner, _ops_runner
    from lossval_fast.sinkhorn_loop import epsilon_schedule, max_diameter
    python_loop = _ops_runner(backends.op_table("cpp"))
    for n, m, d, seed in ((13, 29, 3, 1), (37, 5, 11, 2)):
        a, x, b, y = clouds(n, m, d, seed=seed)
        a[3] = 0.0
        b[1] = 0.0
        a, x, b, y = (t[None] for t in (a, x, b, y))
        eps_list = epsilon_schedule(2, max_diameter(x, y), 0.05, 0.5)
        compiled = _cpp_runner(0)(a, x, b, y, eps_list, debias, barycenters, None)
        ours = python_loop(a, x, b, y, eps_list, debias, barycenters, None)
        names = ["S", "dF", "dG", "GB", "bxy", "byx", "bxx", "byy"]
        for name, c, p in zip(names, compiled, ours):
            assert (c.numel() == 0) == (p.numel() == 0), name  # an absent output is empty in both
            if c.numel() == 0:
                continue
            assert c.shape == p.shape, name
            # barycentres are sums of plan x points: an absolute 1e-10 on values of order 1
            atol = 1e-10 if name.startswith("b") else 1e-12
            assert torch.allclose(c, p, rtol=1e-11, atol=atol), (name, n, m, (c - p).abs().max())
        if debias:  # GB given: the y-y loop is skipped and GB passed through
            gb = compiled[3]
            given_c = _cpp_runner(0)(a, x, b, y, eps_list, True, barycenters, gb)
            given_p = python_loop(a, x, b, y, eps_list, True, barycenters, gb)
            for name, c, p, full in zip(names[:3], given_c, given_p, compiled):
                assert torch.allclose(c, p, rtol=1e-11, atol=1e-12), name
                assert torch.allclose(p, full, rtol=1e-11, atol=1e-12), name


def test_reference_runs_the_one_loop():
    """The reference's potentials are the one loop's on materialised costs, and its schedule, diameter and
    log-weights are the leaf module's (one home for each)."""
    from lossval_fast import reference, sinkhorn_loop
    assert reference.epsilon_schedule is sinkhorn_loop.epsilon_schedule
    assert reference.max_diameter is sinkhorn_loop.max_diameter
    assert reference.log_weights is sinkhorn_loop.log_weights
    assert ops.epsilon_schedule is sinkhorn_loop.epsilon_schedule
    a, x, b, y = clouds(9, 14, 4, seed=5)
    a[2] = 0.0
    F, G, FA, GB, eps_list = reference.sinkhorn_potentials(a, x, b, y)
    # the loop by hand, written out as geomloss writes it
    from lossval_fast.reference.pairwise import half_sqdist

    def sm(eps, cost, h):
        return -eps * (h[None, :] - cost / eps).logsumexp(1)
    cxy, cyx, cxx, cyy = half_sqdist(x, y), half_sqdist(y, x), half_sqdist(x, x), half_sqdist(y, y)
    a_log = torch.where(a > 0, a.log(), torch.full_like(a, -1e5))
    b_log = b.log()
    eps = eps_list[0]
    g_ab, f_ba, f_aa, g_bb = sm(eps, cyx, a_log), sm(eps, cxy, b_log), sm(eps, cxx, a_log), sm(eps, cyy, b_log)
    for eps in eps_list:
        ft_ba, gt_ab = sm(eps, cxy, b_log + g_ab / eps), sm(eps, cyx, a_log + f_ba / eps)
        ft_aa, gt_bb = sm(eps, cxx, a_log + f_aa / eps), sm(eps, cyy, b_log + g_bb / eps)
        f_ba, g_ab, f_aa, g_bb = 0.5 * (f_ba + ft_ba), 0.5 * (g_ab + gt_ab), 0.5 * (f_aa + ft_aa), 0.5 * (g_bb + gt_bb)
    expected = (sm(eps, cxy, b_log + g_ab / eps), sm(eps, cyx, a_log + f_ba / eps),
                sm(eps, cxx, a_log + f_aa / eps), sm(eps, cyy, b_log + g_bb / eps))
    for got, want in zip((F, G, FA, GB), expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend_param", backend_params(include_torch=True))
def test_debiasing_potential_is_the_reference_fa(backend_param):
    """The sharded LossVal divergence's FA (ops.sinkhorn.debiasing_potential: the compiled loop on cpp, the one
    Python loop over the backend's softmin elsewhere) equals the reference's x-x potential, masked points included."""
    backend, device = activate(backend_param)
    from lossval_fast import reference
    from lossval_fast.ops.sinkhorn import debiasing_potential
    a, x, b, y = clouds(11, 7, 3, seed=8)
    a[4] = 0.0
    _, _, FA, _, eps_list = reference.sinkhorn_potentials(a, x, b, y)
    fa = debiasing_potential(a.to(device), x.to(device), eps_list, backend)
    assert fa.dtype == torch.float64
    assert torch.allclose(fa.cpu(), FA, rtol=1e-10, atol=1e-11), (fa.cpu() - FA).abs().max()
