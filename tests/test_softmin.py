"""softmin, its barycentre flavour, plan column sums and the stored-cost mode: every backend against the float64
reference, on shapes that are not multiples of any tile, with masked points and eps from 1e-4 to 10."""
import itertools
import os

import pytest
import torch

from backends import activate, backend_params, cpu_capabilities, is_slow_backend
from lossval_fast import ops, reference
from problems import DIMS, EPSILONS, SIZES, assert_rows_close, cast, exact_on, problem, softmin_tolerance

BEST = cpu_capabilities()[-1] if cpu_capabilities() else None


def grid(backend: str, capability):
    """Full grid for the best CPU kernel; a thinner one for the other instruction sets; small for Triton."""
    if is_slow_backend(backend):
        return [(n, m, d, e) for n, m, d, e in itertools.product((1, 7, 33), (1, 7, 33), (1, 3, 64), (1e-4, 1.0))
                if n * m * d <= 33 * 33 * 64] + [(5, 7, 257, 1e-2)]
    if backend == "cpp" and capability != BEST:
        return list(itertools.product((1, 33, 1000), (7, 1000), (3, 257), (1e-4, 1.0)))
    return list(itertools.product(SIZES, SIZES, DIMS, EPSILONS))


def cases(dtypes):
    out = []
    for param in backend_params():
        backend, capability = param.values[0]
        for dtype in dtypes:
            for n, m, d, eps in grid(backend, capability):
                out.append(pytest.param(param.values[0], dtype, n, m, d, eps, marks=param.marks,
                                        id=f"{param.id}-{str(dtype)[6:]}-{n}x{m}x{d}-eps{eps:g}"))
    return out


@pytest.mark.parametrize("backend_param,dtype,n,m,d,eps", cases((torch.float32, torch.float64)))
def test_softmin_matches_float64_reference(backend_param, dtype, n, m, d, eps):
    backend, device = activate(backend_param)
    x, y, h = problem(n, m, d)
    xe, ye, he = exact_on(dtype, x, y, h)
    exact = reference.softmin(xe, ye, he, eps)
    out = ops.pairwise_softmin(*cast(dtype, device, x, y, h), eps, backend=backend, cost="online")
    assert out.shape == (n,) and out.dtype == dtype and out.device.type == device.type
    assert_rows_close(out, exact, softmin_tolerance(dtype, xe, ye, he, eps, exact), "softmin")


@pytest.mark.parametrize("backend_param,dtype,n,m,d,eps", cases((torch.float32, torch.float64)))
def test_barycenter_matches_float64_reference(backend_param, dtype, n, m, d, eps):
    if m == 1000 and d == 257 and n == 1000 and dtype == torch.float64:
        pytest.skip("covered by the float32 case; the float64 reference at this size is slow")
    backend, device = activate(backend_param)
    x, y, h = problem(n, m, d)
    xe, ye, he = exact_on(dtype, x, y, h)
    exact_f, exact_b = reference.softmin_barycenter(xe, ye, he, eps)
    f, b = ops.softmin_barycenter(*cast(dtype, device, x, y, h), eps, backend=backend)
    assert b.shape == (n, d)
    assert_rows_close(f, exact_f, softmin_tolerance(dtype, xe, ye, he, eps, exact_f), "softmin")
    # a barycentre is an average of rows of y; in float32 the plan itself carries the rounding of C / eps, so
    # the bar is "no worse than 4x the plain torch computation in float32" (plus a floor)
    if dtype == torch.float64:
        tol = 1e-9 * (1 + ye.abs().max())
    else:
        plain = reference.softmin_barycenter(xe.float(), ye.float(), he.float(), eps)[1]
        tol = 4 * (plain.double() - exact_b).abs().max() + 1e-5 * (1 + ye.abs().max())
    assert_rows_close(b, exact_b, tol.expand(n, d), "barycentre")


@pytest.mark.parametrize("backend_param,dtype,n,m,d,eps", cases((torch.float32, torch.float64)))
def test_plan_colsum_matches_float64_reference(backend_param, dtype, n, m, d, eps):
    if max(n, m) == 1000 and d == 257 and dtype == torch.float64:
        pytest.skip("covered by the float32 case; the float64 reference at this size is slow")
    backend, device = activate(backend_param)
    x, y, h = problem(n, m, d)
    weight = torch.randn(n, generator=torch.Generator().manual_seed(n + m), dtype=torch.float64)
    xe, ye, he, we = exact_on(dtype, x, y, h, weight)
    f = reference.softmin(xe, ye, he, eps).to(dtype)
    exact_s, exact_sx = reference.plan_colsum(xe, ye, he, f.double(), we, eps)
    s, sx = ops.plan_colsum(*cast(dtype, device, x, y, h), f.to(device), we.to(dtype=dtype, device=device), eps,
                            backend=backend)
    assert s.shape == (m,) and sx.shape == (m, d)
    # each column sum is a signed combination of plan entries (each <= 1) and of rows of x
    mass = reference.plan_colsum(xe, ye, he, f.double(), we.abs(), eps)[0]
    tol_s = 1e-9 * (1 + mass)
    tol_sx = (tol_s * (1 + xe.abs().max()))[:, None].expand(m, d)
    if dtype == torch.float32:  # no worse than 8x the plain float32 computation (plus a floor): both round
        # terms of size |C| / eps, which dominate at eps = 1e-4
        plain_s, plain_sx = reference.plan_colsum(xe.float(), ye.float(), he.float(), f, we.float(), eps)
        tol_s = 8 * (plain_s.double() - exact_s).abs().max() + 1e-5 * (1 + mass)
        tol_sx = 8 * (plain_sx.double() - exact_sx).abs().max() + (1e-5 * (1 + mass) * (1 + xe.abs().max()))[:, None]
    assert_rows_close(s, exact_s, tol_s, "column sums")
    assert_rows_close(sx, exact_sx, tol_sx.expand(m, d), "column sums of x")


@pytest.mark.parametrize("backend_param", backend_params())
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n,m,d,eps", [(7, 33, 3, 1e-2), (33, 7, 64, 1.0), (1, 33, 1, 0.1), (33, 1, 3, 10.0),
                                       (40, 1000, 5, 0.05)])
def test_softmin_gradients_match_reference_autograd(backend_param, dtype, n, m, d, eps):
    backend, device = activate(backend_param)
    if is_slow_backend(backend) and m == 1000:
        pytest.skip("interpreter: small shapes only")
    x, y, h = problem(n, m, d, masked=m > 1)
    weight = torch.randn(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    xe, ye, he = (t.requires_grad_() for t in exact_on(dtype, x, y, h))
    exact = torch.autograd.grad((reference.softmin(xe, ye, he, eps) * weight).sum(), (xe, ye, he))
    xo, yo, ho = (t.requires_grad_() for t in cast(dtype, device, x, y, h))
    out = ops.pairwise_softmin(xo, yo, ho, eps, backend=backend, cost="online")
    grads = torch.autograd.grad((out * weight.to(dtype=dtype, device=device)).sum(), (xo, yo, ho))
    rel = 1e-9 if dtype == torch.float64 else 2e-4
    for name, g, e in zip(("x", "y", "h"), grads, exact):
        scale = 1 + e.abs().max()
        err = (g.double().cpu() - e).abs().max().item()
        assert err <= rel * scale.item() * (1 if name == "h" else 1 + xe.abs().max().item()), \
            f"d softmin / d {name}: error {err:.3e}"


@pytest.mark.parametrize("eps", (1e-2, 1.0))
def test_cpp_gradcheck_float64(eps):
    x, y, h = (t.requires_grad_() for t in problem(5, 9, 3, masked=False))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.pairwise_softmin(a, b, c, eps), (x, y, h))


@pytest.mark.parametrize("backend_param", backend_params(include_torch=True))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n,m,d,eps", [(1, 1, 1, 1.0), (7, 33, 3, 1e-4), (33, 7, 64, 1e-2), (1000, 33, 257, 10.0),
                                       (33, 1000, 64, 1.0), (129, 1031, 3, 0.1)])
def test_stored_mode_matches_reference_and_online(backend_param, dtype, n, m, d, eps):
    backend, device = activate(backend_param)
    if is_slow_backend(backend) and n * m > 33 * 33:
        pytest.skip("interpreter: small shapes only")
    x, y, h = problem(n, m, d)
    xe, ye, he = exact_on(dtype, x, y, h)
    exact = reference.softmin(xe, ye, he, eps)
    xs, ys, hs = cast(dtype, device, x, y, h)
    stored = ops.pairwise_softmin(xs, ys, hs, eps, backend=backend, cost="stored")
    assert_rows_close(stored, exact, softmin_tolerance(dtype, xe, ye, he, eps, exact), "stored softmin")
    cost = ops.half_sqdist(xs, ys)
    again = ops.pairwise_softmin(xs, ys, hs, eps, backend=backend, cost=cost)
    assert torch.equal(again, stored)


@pytest.mark.parametrize("backend_param", backend_params())
def test_stored_mode_gradients(backend_param):
    backend, device = activate(backend_param)
    x, y, h = problem(9, 13, 4)
    h[::3] = 0.0
    cost = ops.half_sqdist(x, y).to(device).requires_grad_()
    hh = h.to(device).requires_grad_()
    w = torch.randn(9, dtype=torch.float64, device=device)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        c, hd = cost.detach().to(dtype).requires_grad_(), hh.detach().to(dtype).requires_grad_()
        g = torch.autograd.grad((ops.softmin_stored(c, hd, 0.3, backend=backend) * w.to(dtype)).sum(), (c, hd))
        e = torch.autograd.grad((reference.softmin_stored(cost, hh, 0.3) * w).sum(), (cost, hh))
        for a, b in zip(g, e):
            assert (a.double().cpu() - b.cpu()).abs().max().item() <= tol * (1 + b.abs().max().item())


def test_all_masked_row_is_infinite_not_nan():
    x, y, _ = problem(3, 4, 2)
    h = torch.full((4,), -float("inf"), dtype=torch.float64)
    out = ops.pairwise_softmin(x, y, h, 0.5)
    assert torch.isinf(out).all() and (out > 0).all()


def test_online_allocates_no_cost_matrix():
    """N·M = 10^8 in float32 would be 400 MB: the online pass must not come near (peak RSS measured in a fresh
    process, so earlier tests do not hide it)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource, torch, lossval_fast
        from lossval_fast import ops
        torch.manual_seed(0)
        n = m = 10_000
        x, y, h = torch.randn(n, 8), torch.randn(m, 8), torch.zeros(m)
        ops.pairwise_softmin(x[:10], y[:10], h[:10], 1.0)  # load everything first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        f = ops.pairwise_softmin(x, y, h, 0.1, cost="online")
        f2, b = ops.softmin_barycenter(x, y, h, 0.1)
        s, sx = ops.plan_colsum(x, y, h, f, torch.ones(n), 0.1)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert torch.isfinite(f).all() and torch.isfinite(sx).all()
        print((after - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    grown_mib = int(result.stdout.strip().splitlines()[-1])
    assert grown_mib < 40, f"peak RSS grew by {grown_mib} MiB during the online passes (the cost would be 381 MiB)"


# ------------------------------------------------------------------------------------------------ memory
def test_online_pass_allocates_nothing_of_size_n_times_m():
    """N = M = 10,000 (N·M = 10⁸ pairs, 400 MB as a float32 matrix), d = 32, online softmin and the barycentre
    flavour with gradients for x, y and h: the peak resident memory the calls add (VmHWM after a reset through
    /proc/self/clear_refs, in a fresh process) stays at O((N + M) d), far below one N x M matrix."""
    from scripts import run_script

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("/proc/self/clear_refs is not writable here")
    code = """
        import torch
        from lossval_fast import ops
        torch.set_num_threads(1)
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
        g = torch.Generator().manual_seed(0)
        n = m = 10_000
        x = torch.randn(n, 32, generator=g).requires_grad_()
        y = torch.randn(m, 32, generator=g).requires_grad_()
        h = torch.zeros(m, requires_grad=True)
        ops.pairwise_softmin(x[:5], y[:7], h[:7], eps=1.0, cost="online").sum().backward()  # warm-up
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS:")
        f = ops.pairwise_softmin(x, y, h, eps=1.0, cost="online")
        f.sum().backward()
        fb, bary = ops.softmin_barycenter(x.detach(), y.detach(), h.detach(), 1.0)
        assert torch.isfinite(f).all() and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
        assert torch.isfinite(h.grad).all() and torch.isfinite(bary).all()
        print(status("VmHWM:") - before)
    """
    result = run_script(code)
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.strip().splitlines()[-1])
    one_matrix = 10_000 * 10_000 * 4
    assert growth < one_matrix / 20, f"the online pass added {growth / 2**20:.1f} MiB of resident memory"
