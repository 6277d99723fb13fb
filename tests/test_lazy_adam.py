"""Lazy Adam over LossVal's weight vector (csrc/cpu/lazy_adam.h, valuation/optim.py): the deferred zero-gradient
updates against torch's dense fused Adam run step by step, the gradient step, peek against write, settle, state
reloads, bad arguments, and whole fits against the dense Adam (one process, chunked, resumed across paths)."""
import numpy as np
import pytest
import torch

import lossval_fast  # noqa: F401  (registers the ops)
from lossval_fast.datasets import load_bundled_pol
from lossval_fast.valuation import lossval as module
from lossval_fast.valuation.lossval import LossVal
from lossval_fast.valuation.optim import LAST_STEP, LeanAdam, lazy_rows, lazy_steps, settle

LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
op = torch.ops.lossval_fast.lazy_adam


def _dense(w, m, v, t0, t1, grad=None):
    """torch's fused Adam run step by step on one entry from step t0 to t1 (grad at step t1, zeros before)."""
    w, m, v = w.clone().reshape(1), m.clone().reshape(1), v.clone().reshape(1)
    zero = torch.zeros_like(w)
    count = torch.tensor(float(t0))
    for t in range(t0 + 1, t1 + 1):
        count += 1
        g = grad.reshape(1).clone() if grad is not None and t == t1 else zero
        torch._fused_adam_([w], [g], [m], [v], [], [count], lr=LR, beta1=BETA1, beta2=BETA2, weight_decay=0.0,
                           eps=EPS, amsgrad=False, maximize=False)
    return w, m, v


def _state(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g, dtype=dtype) + 0.5
    m = torch.randn(n, generator=g, dtype=dtype) * 1e-2
    v = torch.rand(n, generator=g, dtype=dtype) * 1e-3 + 1e-6
    m[:3] = 0  # entries never in a batch yet: their updates are exactly zero
    v[:2] = 0
    return w, m, v


# ulp-level: w exact to its last bits; m and v after thousands of steps carry the dense loop's own rounding
@pytest.mark.parametrize("dtype,rtol_w,rtol_mv", [(torch.float64, 1e-15, 1e-13), (torch.float32, 2e-7, 3e-4)])
def test_deferred_updates_equal_the_dense_steps(dtype, rtol_w, rtol_mv):
    n = 29
    w, m, v = _state(n, dtype)
    g = torch.Generator().manual_seed(1)
    last = torch.randint(0, 2500, (n,), generator=g)
    # gaps from 0 to past the truncation point (~530 steps), some in the bias-correction regime (t < 5,000)
    target = last + torch.randint(0, 1600, (n,), generator=g)
    target[3], target[4] = last[3], last[4] + 1
    W, M, V, L = w.clone(), m.clone(), v.clone(), last.clone()
    out = op(W, M, V, L, torch.arange(n), target, None, LR, BETA1, BETA2, EPS, True)
    assert torch.equal(out, W) and torch.equal(L, target)
    for i in range(n):
        dw, dm, dv = _dense(w[i], m[i], v[i], int(last[i]), int(target[i]))
        assert torch.allclose(W[i:i + 1], dw, rtol=rtol_w, atol=0), (i, W[i].item(), dw.item())
        assert torch.allclose(M[i:i + 1], dm, rtol=rtol_mv, atol=1e-30), i
        assert torch.allclose(V[i:i + 1], dv, rtol=rtol_mv, atol=1e-30), i
    assert torch.equal(W[:3], w[:3]) and torch.equal(M[:3], m[:3])  # m = 0: w is not moved at all
    assert not torch.allclose(W[5:], w[5:])


def test_a_long_gap_is_cut_where_w_stops_moving():
    """Past the truncation the rest of w's updates are below float64's last bit: 20,000 dense steps agree."""
    w, m, v = (torch.tensor([x], dtype=torch.float64) for x in (0.8, -3e-3, 2e-5))
    W, M, V, L = w.clone(), m.clone(), v.clone(), torch.tensor([10])
    op(W, M, V, L, torch.tensor([0]), torch.tensor([20_010]), None, LR, BETA1, BETA2, EPS, True)
    dw, dm, dv = _dense(w, m, v, 10, 20_010)
    assert torch.allclose(W, dw, rtol=2e-16, atol=0) and torch.allclose(V, dv, rtol=1e-12, atol=0)
    assert M.item() == dm.item() == 0.0 or torch.allclose(M, dm, rtol=1e-6)


@pytest.mark.parametrize("dtype,ulps", [(torch.float64, 2), (torch.float32, 2)])
def test_the_gradient_step_is_torchs_adam_step(dtype, ulps):
    n = 200
    w, m, v = _state(n, dtype, seed=3)
    grad = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(4))
    last = torch.randint(0, 40, (n,), generator=torch.Generator().manual_seed(5))
    target = last + 1 + (torch.arange(n) % 3)  # the step right after, or a few zero-gradient steps before it
    W, M, V, L = w.clone(), m.clone(), v.clone(), last.clone()
    op(W, M, V, L, torch.arange(n), target, grad, LR, BETA1, BETA2, EPS, True)
    eps = torch.finfo(dtype).eps
    for i in range(n):
        dw, dm, dv = _dense(w[i], m[i], v[i], int(last[i]), int(target[i]), grad[i])
        # within a few ulps of the terms each sums (torch lerps m and fuses multiply-adds; cancellation allowed)
        scales = (abs(w[i].item()) + LR, abs(m[i].item()) + abs(grad[i].item()), v[i].item() + grad[i].item() ** 2)
        for ours, theirs, scale in zip((W[i], M[i], V[i]), (dw, dm, dv), scales):
            assert abs(ours.item() - theirs.item()) <= ulps * eps * scale, i


def test_peek_and_write_agree_bit_for_bit_and_peek_leaves_the_state():
    w, m, v = _state(50, torch.float32, seed=6)
    last = torch.randint(0, 900, (50,), generator=torch.Generator().manual_seed(7))
    target = last + 700
    idx = torch.tensor([5, 17, 3, 40, 22])
    state = [t.clone() for t in (w, m, v, last)]
    peek = op(*state, idx, target[idx], None, LR, BETA1, BETA2, EPS, False)
    assert all(torch.equal(a, b) for a, b in zip(state, (w, m, v, last)))
    wrote = op(*state, idx, target[idx], None, LR, BETA1, BETA2, EPS, True)
    assert torch.equal(peek, wrote) and torch.equal(state[0][idx], wrote) and torch.equal(state[3][idx], target[idx])
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(state[0][untouched], w[untouched]) and torch.equal(state[3][untouched], last[untouched])


def test_bad_arguments_name_what_is_wrong():
    w, m, v = _state(8, torch.float64)
    last = torch.full((8,), 10)
    idx = torch.arange(8)
    with pytest.raises(RuntimeError, match="cannot be brought to step 9"):
        op(w, m, v, last, idx, torch.tensor([9]), None, LR, BETA1, BETA2, EPS, True)
    with pytest.raises(RuntimeError, match="with a gradient"):
        op(w, m, v, last, idx, torch.tensor([10]), torch.zeros(8, dtype=torch.float64), LR, BETA1, BETA2, EPS, True)
    with pytest.raises(RuntimeError, match="outside the 8 entries"):
        op(w, m, v, last, torch.tensor([8]), torch.tensor([11]), None, LR, BETA1, BETA2, EPS, False)
    with pytest.raises(RuntimeError, match="last must be an int64"):
        op(w, m, v, last.double(), idx, torch.tensor([11]), None, LR, BETA1, BETA2, EPS, False)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(w.half(), m.half(), v.half(), last, idx, torch.tensor([11]), None, LR, BETA1, BETA2, EPS, False)
    with pytest.raises(RuntimeError, match="one entry or one per row"):
        op(w, m, v, last, idx, torch.tensor([11, 12]), None, LR, BETA1, BETA2, EPS, False)
    assert torch.equal(last, torch.full((8,), 10))


def test_settle_and_a_state_reload_keep_the_lazy_state():
    """The step numbers survive a state_dict round trip as int64 (torch would cast them to the parameter's
    dtype); settle brings every entry to the current step and drops them."""
    weights = torch.nn.Parameter(torch.ones(40, dtype=torch.float64))
    opt = LeanAdam([weights], LR)
    last = lazy_steps(opt, weights)
    assert torch.equal(last, torch.zeros(40, dtype=torch.int64))
    state = opt.state[weights]
    g = torch.Generator().manual_seed(8)
    for t in range(1, 61):  # the step counter and the batch's entries, as the C++ step keeps them
        state["step"] += 1
        idx = torch.randperm(40, generator=g)[:6]
        op(weights.data, state["exp_avg"], state["exp_avg_sq"], last, idx, torch.tensor([t]),
           torch.randn(6, generator=g, dtype=torch.float64), LR, BETA1, BETA2, EPS, True)
    saved = opt.state_dict()
    other = LeanAdam([torch.nn.Parameter(weights.detach().clone())], LR)
    other.load_state_dict(saved)
    reloaded = other.state[other.param_groups[0]["params"][0]]
    assert reloaded[LAST_STEP].dtype == torch.int64 and torch.equal(reloaded[LAST_STEP], last)
    peek = lazy_rows(opt, weights, torch.arange(40), torch.tensor([60]))
    settle(opt, weights)
    assert LAST_STEP not in opt.state[weights] and torch.equal(weights.detach(), peek)
    settle(opt, weights)  # nothing pending: a no-op
    assert torch.equal(weights.detach(), peek)


# ------------------------------------------------------------------------------------------------ whole fits
def _data(n_train=150, n_val=40):
    X, y = load_bundled_pol()
    std = X.std(0)
    X = (X - X.mean(0)) / np.where(std > 0, std, 1)
    order = np.random.default_rng(2).permutation(len(X))
    tr, va = order[:n_train], order[n_train:n_train + n_val]
    return X[tr], y[tr], X[va], y[va]


@pytest.mark.parametrize("params", [dict(), dict(diameter="global", normalize=True)], ids=["faithful", "global"])
def test_lazy_fit_equals_the_dense_adam_fit(monkeypatch, params):
    """Four epochs (every entry's updates deferred across an epoch), float64, the C++ step both times."""
    fits = {}
    for lazy in (True, False):
        monkeypatch.setattr(module.STEP_OPTIONS, "lazy_adam", lazy)
        fits[lazy] = LossVal(epochs=4, batch_size=16, random_state=5, dtype=torch.float64, verbose=False,
                             **params).fit(*_data())
        assert fits[lazy].fused_step_
    assert np.abs(fits[True].values_ - fits[False].values_).max() <= 1e-12
    assert np.allclose(fits[True].history_, fits[False].history_, rtol=1e-12)
    assert not np.allclose(fits[True].values_, 1.0)


def test_a_lazy_checkpoint_resumes_on_the_dense_path_and_back(monkeypatch, tmp_path):
    """A checkpoint written mid-epoch by the lazy C++ step holds the step numbers; the generic (dense) path
    settles them on resume, and a dense checkpoint resumes on the lazy path."""
    Xt, yt, Xv, yv = _data(96, 30)
    kwargs = dict(batch_size=16, random_state=2, dtype=torch.float64, verbose=False)
    full = LossVal(epochs=3, **kwargs).fit(Xt, yt, Xv, yv)
    for first, second in ((True, False), (False, True)):
        path = tmp_path / f"ckpt-{first}.pt"
        monkeypatch.setattr(module.STEP_OPTIONS, "fused_step", first)
        LossVal(epochs=3, max_steps=9, checkpoint=path, checkpoint_every=3, **kwargs).fit(Xt, yt, Xv, yv)
        saved = torch.load(path, weights_only=True)
        assert (LAST_STEP in saved["optimizer"]["state"][0]) is first
        monkeypatch.setattr(module.STEP_OPTIONS, "fused_step", second)
        resumed = LossVal(epochs=3, checkpoint=path, **kwargs).fit(Xt, yt, Xv, yv)
        assert resumed.fused_step_ is second
        assert np.abs(resumed.values_ - full.values_).max() <= 1e-10


def test_steps_past_the_bias_correction_table_equal_the_dense_steps():
    """Past ~41,600 steps (beta2 = 0.999) Adam's bias corrections are 1 in double and the kernel stops looking
    them up: entries brought from step 50,000 on still match torch's dense steps."""
    w, m, v = _state(6, torch.float64, seed=9)
    last = torch.full((6,), 50_000)
    target = last + torch.tensor([0, 1, 40, 300, 700, 2000])
    W, M, V, L = w.clone(), m.clone(), v.clone(), last.clone()
    op(W, M, V, L, torch.arange(6), target, None, LR, BETA1, BETA2, EPS, True)
    for i in range(3, 6):
        dw, dm, dv = _dense(w[i], m[i], v[i], int(last[i]), int(target[i]))
        assert torch.allclose(W[i:i + 1], dw, rtol=1e-15, atol=0) and torch.allclose(V[i:i + 1], dv, rtol=1e-13)


def test_divergences_ahead_with_the_lazy_adam_equal_the_dense_adam(monkeypatch):
    """The chunked step (divergences of chunks of steps computed ahead on a helper thread) brings the chunk's
    entries forward with the lazy kernel: the values of the chunked fit with the dense Adam (float64, 3 epochs)."""
    from lossval_fast.valuation.lossval import chunked

    monkeypatch.setattr(module.STEP_OPTIONS, "chunked_min_pairs", 1)
    monkeypatch.setattr(module.STEP_OPTIONS, "chunk_steps", 3)
    lazy_seen = []
    original = chunked.ChunkedStep.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        lazy_seen.append(self.lazy)
    monkeypatch.setattr(chunked.ChunkedStep, "__init__", spy)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fits = {}
        for lazy in (True, False):
            monkeypatch.setattr(module.STEP_OPTIONS, "lazy_adam", lazy)
            fits[lazy] = LossVal(epochs=3, batch_size=8, random_state=4, dtype=torch.float64, verbose=False,
                                 diameter="global").fit(*_data(130, 30))
    finally:
        torch.set_num_threads(previous)
    assert lazy_seen == [True, False]
    assert np.abs(fits[True].values_ - fits[False].values_).max() <= 1e-12
    assert not np.allclose(fits[True].values_, 1.0)
