"""torch.library registrations shared by the C++ ops and their Triton twins: fake kernels and autograd formulas.
A leaf below the kernels and the ops: it imports nothing from the package.

With P_ij = exp(h_j - C_ij/eps + f_i/eps) the plan of f = softmin(x, y, h, eps) (rows of P sum to 1) and an
upstream gradient c:
    d/dx_i = c_i (x_i - sum_j P_ij y_j)          (barycentre flavour, online)
    d/dy_j = s_j y_j - sx_j,  d/dh_j = -eps s_j  (column sums s_j = sum_i c_i P_ij, sx_j = sum_i c_i P_ij x_i)
Nothing of size N x M is formed.
"""
from __future__ import annotations

import functools

import torch


def _softmin_fake(x, y, h, eps):
    return x.new_empty((x.shape[0],))


def _softmin_barycenter_fake(x, y, h, eps):
    return x.new_empty((x.shape[0],)), x.new_empty(x.shape)


def _plan_colsum_fake(x, y, h, f, weight, eps):
    return y.new_empty((y.shape[0],)), y.new_empty(y.shape)


def _nearest_fake(x, y, accumulate):
    k = y.shape[0] if accumulate else 0
    return (x.new_empty((x.shape[0],), dtype=torch.int64), x.new_empty((x.shape[0],)),
            y.new_empty((k, y.shape[1])), y.new_empty((k,), dtype=torch.int64))


def _softmin_stored_fake(cost, h, eps):
    return cost.new_empty((cost.shape[0],))


def _save_softmin(ctx, inputs, output):
    x, y, h, eps = inputs
    ctx.save_for_backward(x, y, h, output)
    ctx.eps = eps


def softmin_backward(softmin_barycenter, plan_colsum):
    """Backward of softmin(x, y, h, eps) built on one backend's barycentre and column-sum ops."""

    def backward(ctx, grad):
        x, y, h, f = ctx.saved_tensors
        eps = ctx.eps
        grad = grad.contiguous()
        gx = gy = gh = None
        if ctx.needs_input_grad[0]:
            _, barycenter = softmin_barycenter(x, y, h, eps)
            gx = grad[:, None] * (x - barycenter)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            s, sx = plan_colsum(x, y, h, f, grad, eps)
            if ctx.needs_input_grad[1]:
                gy = s[:, None] * y - sx
            if ctx.needs_input_grad[2]:
                gh = -eps * s
        return gx, gy, gh, None

    return backward


def _save_stored(ctx, inputs, output):
    cost, h, eps = inputs
    ctx.save_for_backward(cost, h, output)
    ctx.eps = eps


def _softmin_stored_backward(ctx, grad):
    # the cost is stored anyway, so the N x M plan may be formed here
    cost, h, f = ctx.saved_tensors
    eps = ctx.eps
    weighted = grad[:, None] * torch.exp(h[None, :] - cost / eps + f[:, None] / eps)
    g_cost = weighted if ctx.needs_input_grad[0] else None
    g_h = -eps * weighted.sum(0) if ctx.needs_input_grad[1] else None
    return g_cost, g_h, None


def register(namespace_ops: dict) -> None:
    """Register fakes and autograd for one backend's ops, given as {"softmin": "lossval_fast::softmin", ...}
    (qualified names) or op objects."""
    lib = torch.library
    fakes = {"softmin": _softmin_fake, "softmin_barycenter": _softmin_barycenter_fake,
             "plan_colsum": _plan_colsum_fake, "nearest": _nearest_fake, "softmin_stored": _softmin_stored_fake}
    for key, fake in fakes.items():
        op = namespace_ops.get(key)
        if isinstance(op, str):
            lib.register_fake(op)(fake)
    resolve = {k: (getattr(torch.ops.lossval_fast, v.split("::")[1]) if isinstance(v, str) else v)
               for k, v in namespace_ops.items()}
    lib.register_autograd(namespace_ops["softmin"],
                          softmin_backward(resolve["softmin_barycenter"], resolve["plan_colsum"]),
                          setup_context=_save_softmin)
    lib.register_autograd(namespace_ops["softmin_stored"], _softmin_stored_backward, setup_context=_save_stored)


_REGISTERED = False


def register_cpp() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    register({name: f"lossval_fast::{name}" for name in
              ("softmin", "softmin_barycenter", "plan_colsum", "nearest", "softmin_stored")})
    _REGISTERED = True


# ------------------------------------------------------------------------------------------------ weighted losses
# Ops that return (L_w, per-row losses, per-row gradient factor): backward is two scalings, dL/dinput = factor * grad
# and dL/dweight = rows * grad; an op called without the factor (need_grad=False) is called again for it
# (ctx.forward_op). The Triton kernels register these; the C++ CPU ops carry the same formulas in their Autograd
# kernel (csrc/cpu/weighted_loss_cpu.cpp): these formulas registered on the CPU op instead measured 190 µs against
# 86 µs per forward + backward of a 32-row batch (2026-12-08, 1 thread), +0.1 ms on every autograd LossVal step.
def _setup_cross_entropy(forward_op, ctx, inputs, output):
    ctx.forward_op = forward_op
    input, target, weight, from_logits, eps, need_grad = inputs
    _, rows, factor = output
    ctx.mark_non_differentiable(rows, factor)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the two non-differentiable outputs
    ctx.from_logits, ctx.eps, ctx.need_grad = from_logits, eps, need_grad
    # the inputs are kept only where backward needs more than the factor (as in the C++ autograd kernel)
    keep = target.requires_grad or (input.requires_grad and not need_grad)
    ctx.save_for_backward(rows, factor, *((input, target, weight) if keep else ()))


def _backward_cross_entropy(ctx, grad, _grad_rows, _grad_factor):
    if grad is None:
        return None, None, None, None, None, None
    rows, factor, *inputs = ctx.saved_tensors
    g_input = g_target = g_weight = None
    if ctx.needs_input_grad[0]:
        if not ctx.need_grad:  # forward was asked for no factor: form it now
            factor = ctx.forward_op(*inputs, ctx.from_logits, ctx.eps, True)[2]
        g_input = factor * grad
    if ctx.needs_input_grad[1]:
        input, _, weight = inputs
        logp = torch.log_softmax(input, 1) if ctx.from_logits else torch.log(input + ctx.eps)
        g_target = logp * (-(weight * grad))[:, None]
    if ctx.needs_input_grad[2]:
        g_weight = rows * grad
    return g_input, g_target, g_weight, None, None, None


def _setup_mse(forward_op, ctx, inputs, output):
    ctx.forward_op = forward_op
    pred, target, weight, need_grad = inputs
    _, rows, factor = output
    ctx.mark_non_differentiable(rows, factor)
    ctx.set_materialize_grads(False)
    ctx.need_grad = need_grad
    keep = (pred.requires_grad or target.requires_grad) and not need_grad
    ctx.save_for_backward(rows, factor, *((pred, target, weight) if keep else ()))


def _backward_mse(ctx, grad, _grad_rows, _grad_factor):
    if grad is None:
        return None, None, None, None
    rows, factor, *inputs = ctx.saved_tensors
    g_pred = g_target = g_weight = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        if not ctx.need_grad:
            factor = ctx.forward_op(*inputs, True)[2]
        scaled = factor * grad
        g_pred = scaled if ctx.needs_input_grad[0] else None
        g_target = -scaled if ctx.needs_input_grad[1] else None  # l depends on t - y only
    if ctx.needs_input_grad[2]:
        g_weight = rows * grad
    return g_pred, g_target, g_weight, None


def register_weighted_losses(cross_entropy_op, mse_op) -> None:
    """Register the weighted losses' autograd on two custom ops (torch.library.custom_op / triton_op)."""
    cross_entropy_op.register_autograd(_backward_cross_entropy,
                                       setup_context=functools.partial(_setup_cross_entropy, cross_entropy_op))
    mse_op.register_autograd(_backward_mse, setup_context=functools.partial(_setup_mse, mse_op))
