"""The fused weighted losses (weighted_cross_entropy, weighted_mse): every backend against torch autograd of the
plain formula in float64, with signed and zero weights, exact-zero probabilities, index / one-hot / soft targets,
both input forms; the torch.library integration (opcheck, torch.compile); every bad input."""
import itertools
import math

import pytest
import torch

from backends import activate, backend_params, cpu_capabilities, is_slow_backend
from lossval_fast import ops, reference
from lossval_fast._extension import HAS_EXTENSION

BEST = cpu_capabilities()[-1] if cpu_capabilities() else None
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def loss_backends():
    """cpp (the best instruction set only: these kernels are plain loops, not per-ISA code), triton, torch."""
    out = []
    for param in backend_params(include_torch=True):
        backend, capability = param.values[0]
        if backend == "cuda" or (backend == "cpp" and capability not in (None, BEST)):
            continue
        out.append(pytest.param(param.values[0], marks=param.marks, id=param.id.split("-")[0]))
    return out


BACKENDS = loss_backends()


def too_slow(backend, n, c):
    return is_slow_backend(backend) and n * c > 1000 * 10


def ce_problem(n, c, kind, from_logits, seed=0):
    """(input, target, weight) in float64. Probabilities hold exact zeros, some of them targeted (log(0 + 1e-8));
    weights are signed with every fourth one zero."""
    g = torch.Generator().manual_seed(100000 * seed + 100 * n + c)
    z = 3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    index = torch.randint(0, c, (n,), generator=g)
    if from_logits:
        x = z
    else:
        x = torch.softmax(z, 1)
        x[::3, 0] = 0.0
        x[1::4, c - 1] = 0.0
        index[::3] = 0
    if kind == "index":
        target = index
    elif kind == "onehot":
        target = torch.nn.functional.one_hot(index, c).double()
    else:
        target = torch.rand(n, c, generator=g, dtype=torch.float64)
        target[:, 1::2] = 0.0
        target[::3, 0] = 1.0
        target = target / target.sum(1, keepdim=True)
    weight = torch.randn(n, generator=g, dtype=torch.float64)
    weight[::4] = 0.0
    return x, target, weight


def dense(target, c):
    return torch.nn.functional.one_hot(target, c).double() if target.dtype == torch.int64 else target


def on(t, dtype, device):
    return t.to(device) if t.dtype == torch.int64 else t.to(dtype=dtype, device=device)


def assert_close(out, exact, tol, what):
    err = (out.detach().double().cpu() - exact.detach()).abs()
    bad = ~(err <= tol)  # NaN counts as bad
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} entries off; worst error {err.max().item():.3e}, "
                                 f"tolerance there {tol.flatten()[err.flatten().argmax()].item():.3e}")


def ce_exact(x, target, weight, from_logits, dtype):
    """Loss, d/d input, d/d weight of the plain formula in float64 on the inputs rounded to `dtype`, and the
    rounding scales of the loss per row, of the loss and of each input gradient."""
    xe = x.to(dtype).double().requires_grad_()
    we = weight.to(dtype).double().requires_grad_()
    te = target if target.dtype == torch.int64 else target.to(dtype).double()
    loss = reference.weighted_cross_entropy(xe, te, we, from_logits)
    gx, gw = torch.autograd.grad(loss, (xe, we))
    xe, we = xe.detach(), we.detach()
    t = dense(te, x.shape[1]).abs()
    logp = torch.log_softmax(xe, 1) if from_logits else torch.log(xe + 1e-8)
    # log-sum-exp minus z cancels: its rounding scales with the logits themselves; p + eps is rounded (the
    # float32 plain formula loses eps next to p ~ 1): an absolute error of one unit of rtol per unit of target
    extra = xe.abs() + xe.abs().amax(1, keepdim=True) if from_logits else 1.0
    row_scale = (t * (logp.abs() + extra)).sum(1)
    gx_scale = gx.abs() + (we.abs()[:, None] * (t.sum(1, keepdim=True) + t) if from_logits else 0.0)
    return loss.detach(), gx, gw, row_scale, (we.abs() * row_scale).sum(), gx_scale


# ------------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("backend_param", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("f64", "f32"))
@pytest.mark.parametrize("n", (1, 7, 33, 1000))
@pytest.mark.parametrize("c", (2, 3, 10, 257))
@pytest.mark.parametrize("kind", ("index", "onehot", "soft"))
@pytest.mark.parametrize("from_logits", (False, True), ids=("probs", "logits"))
def test_cross_entropy_matches_plain_formula(backend_param, dtype, n, c, kind, from_logits):
    backend, device = activate(backend_param)
    if too_slow(backend, n, c):
        pytest.skip("interpreter: small shapes only")
    x, target, weight = ce_problem(n, c, kind, from_logits)
    exact, exact_gx, exact_gw, row_scale, loss_scale, gx_scale = ce_exact(x, target, weight, from_logits, dtype)
    xo = x.to(dtype=dtype, device=device).requires_grad_()
    wo = weight.to(dtype=dtype, device=device).requires_grad_()
    out = ops.weighted_cross_entropy(xo, on(target, dtype, device), wo, from_logits=from_logits, backend=backend)
    assert out.shape == () and out.dtype == dtype and out.device.type == device.type
    gx, gw = torch.autograd.grad(out, (xo, wo))
    rtol = RTOL[dtype]
    assert_close(out, exact, rtol * loss_scale, "loss")
    assert_close(gw, exact_gw, rtol * row_scale, "d/d weight")
    assert_close(gx, exact_gx, rtol * gx_scale, "d/d input")


@pytest.mark.parametrize("backend_param", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("f64", "f32"))
@pytest.mark.parametrize("n", (1, 7, 33, 1000))
@pytest.mark.parametrize("k", (None, 1, 2, 3, 10, 257), ids=lambda k: "1d" if k is None else f"k{k}")
def test_mse_matches_plain_formula(backend_param, dtype, n, k):
    backend, device = activate(backend_param)
    if too_slow(backend, n, k or 1):
        pytest.skip("interpreter: small shapes only")
    g = torch.Generator().manual_seed(7 * n + (k or 0))
    shape = (n,) if k is None else (n, k)
    pred = torch.randn(shape, generator=g, dtype=torch.float64)
    target = pred + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    target[::5] = pred[::5]  # rows with zero loss
    weight = torch.randn(n, generator=g, dtype=torch.float64)
    weight[::4] = 0.0
    pe, te, we = (t.to(dtype).double().requires_grad_() for t in (pred, target, weight))
    exact = reference.weighted_mse(pe, te, we)
    exact_grads = torch.autograd.grad(exact, (pe, te, we))
    po, to, wo = (t.to(dtype=dtype, device=device).requires_grad_() for t in (pred, target, weight))
    out = ops.weighted_mse(po, to, wo, backend=backend)
    assert out.shape == () and out.dtype == dtype
    grads = torch.autograd.grad(out, (po, to, wo))
    rtol = RTOL[dtype]
    elem = (pe.abs() + te.abs()).detach()
    row = reference.weighted_loss.mse_rows(elem, torch.zeros_like(elem))  # sum_k (|t| + |y|)^2
    w_abs = we.detach().abs()
    w_elem = w_abs if k is None else w_abs[:, None]
    assert_close(out, exact, rtol * (w_abs * row).sum(), "loss")
    assert_close(grads[0], exact_grads[0], rtol * 2 * w_elem * elem, "d/d pred")
    assert_close(grads[1], exact_grads[1], rtol * 2 * w_elem * elem, "d/d target")
    assert_close(grads[2], exact_grads[2], rtol * row, "d/d weight")


@pytest.mark.parametrize("backend_param", BACKENDS)
@pytest.mark.parametrize("from_logits", (False, True), ids=("probs", "logits"))
def test_cross_entropy_gradient_for_soft_target(backend_param, from_logits):
    backend, device = activate(backend_param)
    x, target, weight = ce_problem(9, 5, "soft", from_logits)
    xe, te, we = (t.clone().requires_grad_() for t in (x, target, weight))
    exact = torch.autograd.grad(reference.weighted_cross_entropy(xe, te, we, from_logits), (xe, te, we))
    xo, to, wo = (t.to(device).requires_grad_() for t in (x, target, weight))
    grads = torch.autograd.grad(ops.weighted_cross_entropy(xo, to, wo, from_logits=from_logits, backend=backend),
                                (xo, to, wo))
    for name, got, want in zip(("input", "target", "weight"), grads, exact):
        assert_close(got, want, 1e-12 * (1 + want.abs()), f"d/d {name}")


@pytest.mark.parametrize("backend_param", BACKENDS)
def test_gradient_only_for_what_requires_it(backend_param):
    backend, device = activate(backend_param)
    x, target, weight = ce_problem(7, 3, "index", False)
    x, weight = x.to(device), weight.to(device)
    wo = weight.clone().requires_grad_()
    (gw,) = torch.autograd.grad(ops.weighted_cross_entropy(x, target.to(device), wo, backend=backend), (wo,))
    assert_close(gw, reference.weighted_loss.cross_entropy_rows(x, target), 1e-12 * torch.ones(7), "d/d weight")
    xo = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(ops.weighted_cross_entropy(xo, target.to(device), weight, backend=backend), (xo,))
    xe = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference.weighted_cross_entropy(xe, target, weight), (xe,))
    assert_close(gx, want, 1e-12 * want.abs(), "d/d input")
    with torch.no_grad():
        out = ops.weighted_cross_entropy(xo, target.to(device), wo, backend=backend)
    assert not out.requires_grad


@pytest.mark.parametrize("backend_param", BACKENDS)
def test_non_contiguous_inputs(backend_param):
    backend, device = activate(backend_param)
    x, target, weight = ce_problem(8, 5, "soft", True)
    xt = x.t().contiguous().to(device).t().requires_grad_()  # column-major
    tt, ws = target.t().contiguous().t(), torch.stack([weight, weight], 1)[:, 0]  # strided weight
    out = ops.weighted_cross_entropy(xt, tt.to(device), ws.to(device), from_logits=True, backend=backend)
    (gx,) = torch.autograd.grad(out, (xt,))
    xe = x.clone().requires_grad_()
    exact = reference.weighted_cross_entropy(xe, target, weight, True)
    (ge,) = torch.autograd.grad(exact, (xe,))
    assert_close(out, exact, 1e-12 * (1 + exact.abs()), "loss")
    assert_close(gx, ge, 1e-12 * (1 + ge.abs()), "d/d input")
    mse = ops.weighted_mse(xt[:, ::2], tt[:, ::2].to(device), ws.to(device), backend=backend)
    exact_mse = reference.weighted_mse(x[:, ::2], target[:, ::2], weight)
    assert_close(mse, exact_mse, 1e-12 * (1 + exact_mse.abs()), "mse")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy log
@pytest.mark.parametrize("backend_param", BACKENDS)
def test_nan_propagation_matches_plain_formula(backend_param):
    """A class-index target reads one entry per row (a NaN elsewhere in the row does not enter); a dense target
    multiplies every entry (0 * log(NaN) and 0 * log(p + eps <= 0) are NaN), as the plain formula does."""
    backend, device = activate(backend_param)
    x = torch.tensor([[0.2, float("nan"), 0.8], [0.5, 0.5, 0.0], [-1.0, 1.0, 1.0]], dtype=torch.float64)
    index = torch.tensor([0, 1, 1])
    weight = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for target in (index, dense(index, 3)):
        exact = reference.weighted_cross_entropy(x, target, weight)
        out = ops.weighted_cross_entropy(x.to(device), target.to(device), weight.to(device), backend=backend)
        if target.dtype == torch.int64:
            assert math.isfinite(exact.item())
            assert abs(out.item() - exact.item()) <= 1e-12 * abs(exact.item())
        else:
            assert math.isnan(exact.item()) and math.isnan(out.item())


@pytest.mark.parametrize("backend_param", BACKENDS)
def test_validate_false_lets_non_finite_weights_through(backend_param):
    backend, device = activate(backend_param)
    x, target, weight = ce_problem(5, 3, "index", True)
    weight[2] = float("nan")
    out = ops.weighted_cross_entropy(x.to(device), target.to(device), weight.to(device), from_logits=True,
                                     backend=backend, validate=False)
    assert math.isnan(out.item())
    out = ops.weighted_mse(x[:, 0].to(device), x[:, 1].to(device), weight.to(device), backend=backend,
                           validate=False)
    assert math.isnan(out.item())


def test_cpp_rejects_bad_class_index_even_without_validate():
    # an index out of range would read outside its row: the C++ kernel checks it in its pass regardless
    x, target, weight = ce_problem(5, 3, "index", True)
    target[3] = 3
    with pytest.raises(ValueError, match=r"target holds class index 3 at row 3, outside \[0, 3\)"):
        ops.weighted_cross_entropy(x, target, weight, from_logits=True, backend="cpp", validate=False)


@pytest.mark.skipif(not HAS_EXTENSION, reason="extension not built")
def test_cpp_loss_does_not_depend_on_thread_count():
    x, target, weight = ce_problem(1000, 257, "soft", True)  # above the parallel threshold
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(ops.weighted_cross_entropy(x, target, weight, from_logits=True, backend="cpp"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results)


# ------------------------------------------------------------------------------------------------ raw ops
def cpp_op_args():
    x, index, weight = ce_problem(9, 4, "index", False, seed=3)
    soft = ce_problem(9, 4, "soft", False, seed=3)[1]
    logits = ce_problem(9, 4, "index", True, seed=3)[0]
    pred = torch.randn(9, 3, dtype=torch.float64)
    out = []
    for (inp, tgt, from_logits), need_grad in itertools.product(
            ((x, index, False), (x, soft, False), (logits, index, True), (logits, soft, True)), (True, False)):
        out.append(pytest.param("weighted_cross_entropy",
                                lambda i=inp, t=tgt, f=from_logits, g=need_grad: (
                                    i.clone().requires_grad_(), t.clone(), weight.clone().requires_grad_(), f,
                                    1e-8, True, g),
                                id=f"ce-{'logits' if from_logits else 'probs'}-{tgt.dtype}-grad{need_grad}"))
    for shape, need_grad in itertools.product(((9,), (9, 3)), (True, False)):
        out.append(pytest.param("weighted_mse",
                                lambda s=shape, g=need_grad: (
                                    pred[:, 0].reshape(s).clone().requires_grad_() if len(s) == 1 else
                                    pred.clone().requires_grad_(), torch.randn(s, dtype=torch.float64),
                                    weight.clone().requires_grad_(), True, g),
                                id=f"mse-{len(shape)}d-grad{need_grad}"))
    return out


@pytest.mark.skipif(not HAS_EXTENSION, reason="extension not built")
@pytest.mark.parametrize("name,args", cpp_op_args())
def test_opcheck_cpp(name, args):
    result = torch.library.opcheck(getattr(torch.ops.lossval_fast, name), args())
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("name,args", cpp_op_args())
def test_opcheck_triton(name, args):
    from lossval_fast._extension import has_triton
    if not has_triton():
        pytest.skip("triton cannot run: no GPU and TRITON_INTERPRET is not set")
    from lossval_fast.triton import weighted_loss_ops
    op = getattr(weighted_loss_ops(), name)
    a = args()
    a = a[:-2] + a[-1:] if name == "weighted_cross_entropy" else a[:3] + a[-1:]  # the triton ops take no validate
    # the fake-tensor and AOT tests need a GPU driver (docs/build.md): the full opcheck runs on GPU only
    utils = None if torch.cuda.is_available() else ("test_schema", "test_autograd_registration")
    if torch.cuda.is_available():
        a = tuple(t.cuda().detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in a)
    result = torch.library.opcheck(op, a, **({} if utils is None else {"test_utils": utils}))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("backend_param", [p for p in BACKENDS if p.values[0][0] != "torch"])
def test_raw_op_without_factor_still_differentiates(backend_param):
    """need_grad=False is a promise the public functions keep; a direct caller who breaks it gets the factor
    formed in backward rather than a wrong gradient."""
    backend, device = activate(backend_param)
    x, target, weight = ce_problem(7, 3, "soft", True)
    if backend == "cpp":
        ce, mse = torch.ops.lossval_fast.weighted_cross_entropy, torch.ops.lossval_fast.weighted_mse
        ce_args, mse_args = (True, 0.0, True, False), (True, False)
    else:
        from lossval_fast.triton import weighted_loss_ops
        ce, mse = weighted_loss_ops().weighted_cross_entropy, weighted_loss_ops().weighted_mse
        ce_args, mse_args = (True, 0.0, False), (False,)
    xo, wo = x.to(device).requires_grad_(), weight.to(device).requires_grad_()
    loss, rows, factor = ce(xo, target.to(device), wo, *ce_args)
    assert factor.shape == (0,) and rows.shape == (7,) and not rows.requires_grad
    got = torch.autograd.grad(loss, (xo, wo))
    xe, we = x.clone().requires_grad_(), weight.clone().requires_grad_()
    want = torch.autograd.grad(reference.weighted_cross_entropy(xe, target, we, True), (xe, we))
    for a, b in zip(got, want):
        assert_close(a, b, 1e-12 * (1 + b.abs()), "gradient")
    po, to = x[:, 0].to(device).requires_grad_(), x[:, 1].to(device).requires_grad_()
    got = torch.autograd.grad(mse(po, to, wo, *mse_args)[0], (po, to))
    assert_close(got[0], -got[1], torch.zeros(7), "d/d target = -d/d pred")
    assert_close(got[0], 2 * weight * (x[:, 0] - x[:, 1]), 1e-12 * torch.ones(7), "d/d pred")


# ------------------------------------------------------------------------------------------------ compile
def lossval_like_step(x, index, soft, w, pred, y):
    """A LossVal-shaped objective: weighted losses times a differentiable factor of the weights."""
    probs = torch.softmax(x, 1)
    ce = ops.weighted_cross_entropy(probs, index, w)
    ce_soft = ops.weighted_cross_entropy(x, soft, w, from_logits=True, validate=False)
    mse = ops.weighted_mse(pred, y, w)
    return (ce + ce_soft + mse) * (w.sum() ** 2)


@pytest.mark.skipif(not HAS_EXTENSION, reason="extension not built")
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=("f32", "f64"))
def test_torch_compile_fullgraph_with_backward(dtype):
    x, index, w = ce_problem(33, 4, "index", True)
    soft = ce_problem(33, 4, "soft", True)[1]
    pred, y = torch.randn(33, 2, dtype=torch.float64), torch.randn(33, 2, dtype=torch.float64)
    inputs = [t.to(dtype) for t in (x, soft, w, pred)]
    torch._dynamo.reset()
    compiled = torch.compile(lossval_like_step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (lossval_like_step, compiled):
        xo, so, wo, po = (t.clone().requires_grad_() for t in inputs)
        out = fn(xo, index, so, wo, po, y.to(dtype))
        results.append((out, *torch.autograd.grad(out, (xo, wo, po))))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton ops are traced by torch.compile on GPU only")
def test_torch_compile_triton_ops_on_gpu():
    x, index, w = ce_problem(33, 4, "index", True)
    soft = ce_problem(33, 4, "soft", True)[1]
    pred, y = torch.randn(33, 2, dtype=torch.float64), torch.randn(33, 2, dtype=torch.float64)
    inputs = [t.float().cuda() for t in (x, soft, w, pred)]
    torch._dynamo.reset()
    compiled = torch.compile(lossval_like_step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (lossval_like_step, compiled):
        xo, so, wo, po = (t.clone().requires_grad_() for t in inputs)
        out = fn(xo, index.cuda(), so, wo, po, y.float().cuda())
        results.append((out, *torch.autograd.grad(out, (xo, wo, po))))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------------------ bad inputs
def _ce(**change):
    x, target, weight = ce_problem(6, 3, "index", False)
    args = dict(input=x, target=target, weight=weight)
    args.update(change)
    return args


BAD_CROSS_ENTROPY = [
    ("input-1d", lambda: _ce(input=torch.rand(6, dtype=torch.float64)), ValueError, r"input must be 2-D"),
    ("input-3d", lambda: _ce(input=torch.rand(6, 3, 1, dtype=torch.float64)), ValueError, r"input must be 2-D"),
    ("input-int", lambda: _ce(input=torch.ones(6, 3, dtype=torch.int64)), ValueError, r"input must be float32"),
    ("input-half", lambda: _ce(input=torch.rand(6, 3).half()), ValueError, r"input must be float32"),
    ("n0", lambda: _ce(input=torch.rand(0, 3, dtype=torch.float64), target=torch.zeros(0, dtype=torch.int64),
                       weight=torch.ones(0, dtype=torch.float64)), ValueError, r"input must have at least one row"),
    ("c0", lambda: _ce(input=torch.rand(6, 0, dtype=torch.float64)), ValueError, r"input must have at least one"),
    ("index-shape", lambda: _ce(target=torch.zeros(5, dtype=torch.int64)), ValueError,
     r"target of class indices must have shape \(6,\)"),
    ("index-2d", lambda: _ce(target=torch.zeros(6, 3, dtype=torch.int64)), ValueError,
     r"target of class indices must have shape \(6,\)"),
    ("index-int32", lambda: _ce(target=torch.zeros(6, dtype=torch.int32)), ValueError,
     r"target must be int64 class indices"),
    ("target-dtype", lambda: _ce(target=torch.rand(6, 3)), ValueError, r"target must be int64 class indices"),
    ("target-shape", lambda: _ce(target=torch.rand(6, 4, dtype=torch.float64)), ValueError,
     r"target distribution must have the shape of input"),
    ("target-device", lambda: _ce(target=torch.zeros(6, dtype=torch.int64, device="meta")), ValueError,
     r"target must be .*(on cpu|CPU tensor)"),
    ("weight-shape", lambda: _ce(weight=torch.ones(6, 1, dtype=torch.float64)), ValueError,
     r"weight must have shape \(6,\)"),
    ("weight-length", lambda: _ce(weight=torch.ones(5, dtype=torch.float64)), ValueError,
     r"weight must have shape \(6,\)"),
    ("weight-dtype", lambda: _ce(weight=torch.ones(6)), ValueError, r"weight must have dtype"),
    ("index-too-large", lambda: _ce(target=torch.tensor([0, 1, 2, 3, 0, 1])), ValueError,
     r"target holds class index 3 at row 3, outside \[0, 3\)"),
    ("index-negative", lambda: _ce(target=torch.tensor([0, 1, 2, 0, -1, 1])), ValueError,
     r"target holds class index -1 at row 4, outside \[0, 3\)"),
    ("weight-nan", lambda: _ce(weight=torch.tensor([1.0, 0, float("nan"), 1, 1, 1], dtype=torch.float64)),
     ValueError, r"weight must be finite, got nan at row 2"),
    ("weight-inf", lambda: _ce(weight=torch.tensor([1.0, 0, 1, 1, 1, -float("inf")], dtype=torch.float64)),
     ValueError, r"weight must be finite, got -inf at row 5"),
    ("eps-negative", lambda: _ce(eps=-1e-8), ValueError, r"eps must be a finite number >= 0"),
    ("eps-nan", lambda: _ce(eps=float("nan")), ValueError, r"eps must be a finite number >= 0"),
    ("eps-str", lambda: _ce(eps="1e-8"), ValueError, r"eps must be a real number"),
    ("input-list", lambda: _ce(input=[[0.5, 0.5]]), TypeError, r"input must be a torch.Tensor"),
    ("weight-none", lambda: _ce(weight=None), TypeError, r"weight must be a torch.Tensor"),
]


def _mse(**change):
    args = dict(pred=torch.randn(6, 2, dtype=torch.float64), target=torch.randn(6, 2, dtype=torch.float64),
                weight=torch.ones(6, dtype=torch.float64))
    args.update(change)
    return args


BAD_MSE = [
    ("pred-3d", lambda: _mse(pred=torch.randn(6, 2, 1, dtype=torch.float64)), ValueError, r"pred must be 1-D"),
    ("pred-0d", lambda: _mse(pred=torch.tensor(1.0, dtype=torch.float64)), ValueError, r"pred must be 1-D"),
    ("pred-int", lambda: _mse(pred=torch.ones(6, 2, dtype=torch.int64), target=torch.ones(6, 2, dtype=torch.int64)),
     ValueError, r"pred must be float32"),
    ("n0", lambda: _mse(pred=torch.randn(0, 2, dtype=torch.float64), target=torch.randn(0, 2, dtype=torch.float64),
                        weight=torch.ones(0, dtype=torch.float64)), ValueError, r"pred must have at least one row"),
    ("target-shape", lambda: _mse(target=torch.randn(6, dtype=torch.float64)), ValueError,
     r"target must have the shape of pred"),
    ("target-dtype", lambda: _mse(target=torch.randn(6, 2)), ValueError, r"target must have dtype"),
    ("weight-shape", lambda: _mse(weight=torch.ones(7, dtype=torch.float64)), ValueError,
     r"weight must have shape \(6,\)"),
    ("weight-dtype", lambda: _mse(weight=torch.ones(6)), ValueError, r"weight must have dtype"),
    ("weight-nan", lambda: _mse(weight=torch.tensor([1.0, 0, 1, float("nan"), 1, 1], dtype=torch.float64)),
     ValueError, r"weight must be finite, got nan at row 3"),
    ("target-list", lambda: _mse(target=[1.0]), TypeError, r"target must be a torch.Tensor"),
]

CALL_BACKENDS = [pytest.param(("auto", None), id="auto")] + BACKENDS


@pytest.mark.parametrize("backend_param", CALL_BACKENDS)
@pytest.mark.parametrize("case,args,error,match", [pytest.param(*c, id=c[0]) for c in BAD_CROSS_ENTROPY])
def test_cross_entropy_rejects_bad_input(backend_param, case, args, error, match):
    backend = backend_param[0] if backend_param[0] == "auto" else activate(backend_param)[0]
    with pytest.raises(error, match=match):
        ops.weighted_cross_entropy(**args(), backend=backend)


@pytest.mark.parametrize("backend_param", CALL_BACKENDS)
@pytest.mark.parametrize("case,args,error,match", [pytest.param(*c, id=c[0]) for c in BAD_MSE])
def test_mse_rejects_bad_input(backend_param, case, args, error, match):
    backend = backend_param[0] if backend_param[0] == "auto" else activate(backend_param)[0]
    with pytest.raises(error, match=match):
        ops.weighted_mse(**args(), backend=backend)


def test_bad_backend_names():
    args = _ce()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.weighted_cross_entropy(**args, backend="numpy")
    with pytest.raises(ValueError, match="backend='cuda' runs on CUDA tensors"):
        ops.weighted_mse(**_mse(), backend="cuda")


@pytest.mark.skipif(not HAS_EXTENSION, reason="extension not built")
def test_info_lists_the_losses():
    import lossval_fast
    dispatch = lossval_fast.info()["dispatch"]["cpu"]
    assert dispatch["weighted_cross_entropy"].startswith("cpp")
    assert dispatch["weighted_mse"].startswith("cpp")
