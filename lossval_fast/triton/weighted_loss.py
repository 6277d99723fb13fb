"""Fused weighted losses (Triton): weighted_cross_entropy_triton and weighted_mse_triton.

Same semantics and outputs as the C++ ops lossval_fast::weighted_cross_entropy / weighted_mse: (loss = sum_i w_i l_i,
per-row losses l, G = w_i dl_i/d input or an empty (0,) tensor without need_grad). One program per block of rows
streams the row in BLOCK_C-wide chunks (logits: a first pass for the row's max and sum of exponentials, a second
for the loss and G); each program writes its part of the loss in float64 and the wrapper adds the parts in order
(deterministic, no atomics). Autograd (backward = two scalings) comes from op_autograd.register_weighted_losses.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..op_autograd import register_weighted_losses
from ..op_checks import check_cross_entropy, check_mse
from ._common import check_device, next_pow2


@triton.jit
def _cross_entropy_kernel(in_ptr, tgt_ptr, w_ptr, eps_ptr, rows_ptr, factor_ptr, partial_ptr, N, C,
                          INDEX: tl.constexpr, LOGITS: tl.constexpr, GRAD: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    dtype = in_ptr.dtype.element_ty
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows = rows.to(tl.int64)  # row * C overflows int32 for large inputs
    w = tl.load(w_ptr + rows, mask=row_mask, other=0.0)
    if INDEX:
        cls = tl.load(tgt_ptr + rows, mask=row_mask, other=0)
        valid = (cls >= 0) & (cls < C)  # validate=False leaves bad indices to here: their loss is NaN
    l = tl.zeros([BLOCK_N], dtype)

    if LOGITS:
        # pass 1: m = max_k z_k, s = sum_k exp(z_k - m) (online over chunks), mass = sum_k t_k
        m = tl.full([BLOCK_N], float("-inf"), dtype)
        s = tl.zeros([BLOCK_N], dtype)
        mass = tl.zeros([BLOCK_N], dtype)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = row_mask[:, None] & (cols < C)[None, :]
            offs = rows[:, None] * C + cols[None, :]
            z = tl.load(in_ptr + offs, mask=mask, other=float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # padding rows: no inf - inf
            s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(z - m_ref[:, None]), axis=1)
            m = m_new
            if not INDEX:
                mass += tl.sum(tl.load(tgt_ptr + offs, mask=mask, other=0.0), axis=1)
        m = tl.where(row_mask, m, 0.0)  # padding rows: finite logs, no spurious NaN in the interpreter
        s = tl.where(row_mask, s, 1.0)
        log_s = tl.log(s)
        # pass 2: l = -sum_k t_k logp_k with logp_k = (z_k - m) - log s (torch's log_softmax form);
        # G = w (mass softmax - t)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = row_mask[:, None] & (cols < C)[None, :]
            offs = rows[:, None] * C + cols[None, :]
            z = tl.load(in_ptr + offs, mask=mask, other=0.0)
            logp = (z - m[:, None]) - log_s[:, None]
            if INDEX:
                t = tl.where(cols[None, :] == cls[:, None], 1.0, 0.0).to(dtype)
                l -= tl.sum(tl.where(mask & (t != 0), logp, 0.0), axis=1)
                row_mass = tl.full([BLOCK_N], 1.0, dtype)
            else:
                t = tl.load(tgt_ptr + offs, mask=mask, other=0.0)
                l -= tl.sum(tl.where(mask, t * logp, 0.0), axis=1)
                row_mass = mass
            if GRAD:
                soft = tl.exp(z - m[:, None]) / s[:, None]
                tl.store(factor_ptr + offs, w[:, None] * (row_mass[:, None] * soft - t), mask=mask)
    else:
        # probabilities: l = -sum_k t_k log(p_k + eps), G = -w t / (p + eps)
        eps = tl.load(eps_ptr)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = row_mask[:, None] & (cols < C)[None, :]
            offs = rows[:, None] * C + cols[None, :]
            q = tl.load(in_ptr + offs, mask=mask, other=1.0) + eps
            if INDEX:
                hit = cols[None, :] == cls[:, None]
                # a gather: the other entries of the row do not enter (as in the C++ kernel and the reference)
                l -= tl.sum(tl.where(mask & hit, tl.log(q), 0.0), axis=1)
                if GRAD:
                    tl.store(factor_ptr + offs, tl.where(hit, -w[:, None] / q, 0.0).to(dtype), mask=mask)
            else:
                t = tl.load(tgt_ptr + offs, mask=mask, other=0.0)
                l -= tl.sum(tl.where(mask, t * tl.log(q), 0.0), axis=1)  # 0 * log(q) stays NaN for q <= 0
                if GRAD:
                    tl.store(factor_ptr + offs, -(w[:, None] * t) / q, mask=mask)

    if INDEX:
        l = tl.where(valid, l, float("nan"))
    tl.store(rows_ptr + rows, l, mask=row_mask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(row_mask, w.to(tl.float64) * l.to(tl.float64), 0.0), axis=0))


@triton.jit
def _mse_kernel(pred_ptr, tgt_ptr, w_ptr, rows_ptr, factor_ptr, partial_ptr, N, C, GRAD: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    dtype = pred_ptr.dtype.element_ty
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows = rows.to(tl.int64)
    w = tl.load(w_ptr + rows, mask=row_mask, other=0.0)
    l = tl.zeros([BLOCK_N], dtype)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols < C)[None, :]
        offs = rows[:, None] * C + cols[None, :]
        d = tl.load(tgt_ptr + offs, mask=mask, other=0.0) - tl.load(pred_ptr + offs, mask=mask, other=0.0)
        l += tl.sum(d * d, axis=1)
        if GRAD:
            tl.store(factor_ptr + offs, -(w[:, None] * (2.0 * d)), mask=mask)  # d/dy (t - y)^2 = -2 (t - y)
    tl.store(rows_ptr + rows, l, mask=row_mask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(row_mask, w.to(tl.float64) * l.to(tl.float64), 0.0), axis=0))


def _config(device: torch.device, c: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, num_warps). GPU: ~4k elements per step. Interpreter: small tiles, so that the test
    shapes (C = 257, N = 33) cross chunk and row-block borders."""
    if device.type == "cuda":
        block_c = min(max(16, next_pow2(c)), 1024)
        return max(1, min(128, 4096 // block_c)), block_c, 4
    return 16, min(max(16, next_pow2(c)), 64), 4


def _outputs(x: torch.Tensor, need_grad: bool, programs: int):
    rows = torch.empty((x.shape[0],), dtype=x.dtype, device=x.device)
    factor = torch.empty(x.shape if need_grad else (0,), dtype=x.dtype, device=x.device)
    partial = torch.empty((programs,), dtype=torch.float64, device=x.device)
    return rows, factor, partial


@triton_op("lossval_fast::weighted_cross_entropy_triton", mutates_args=())
def weighted_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, from_logits: bool,
                           eps: float, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_i w_i l_i, l, G = w_i dl_i/d input or (0,)); target: (N,) int64 indices or an (N, C) distribution."""
    eps = check_cross_entropy(input, target, weight, eps)
    check_device(input)
    n, c = input.shape
    input, target, weight = input.contiguous(), target.contiguous(), weight.contiguous()
    block_n, block_c, num_warps = _config(input.device, c)
    programs = triton.cdiv(n, block_n)
    rows, factor, partial = _outputs(input, need_grad, programs)
    # eps as a tensor: Triton passes float arguments as float32, too coarse for the float64 path
    eps_t = weight if from_logits else torch.full((1,), eps, dtype=input.dtype, device=input.device)
    wrap_triton(_cross_entropy_kernel)[(programs,)](
        input, target, weight, eps_t, rows, factor if need_grad else rows, partial, n, c,
        INDEX=target.dtype == torch.int64, LOGITS=bool(from_logits), GRAD=bool(need_grad),
        BLOCK_N=block_n, BLOCK_C=block_c, num_warps=num_warps)
    return partial.sum().to(input.dtype), rows, factor


@triton_op("lossval_fast::weighted_mse_triton", mutates_args=())
def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                 need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_i w_i sum_k (t_ik - y_ik)^2, l, G = w_i dl_i/d pred or (0,)); pred (N,) or (N, K)."""
    check_mse(pred, target, weight)
    check_device(pred)
    n, c = pred.shape[0], (pred.shape[1] if pred.dim() == 2 else 1)
    pred, target, weight = pred.contiguous(), target.contiguous(), weight.contiguous()
    block_n, block_c, num_warps = _config(pred.device, c)
    programs = triton.cdiv(n, block_n)
    rows, factor, partial = _outputs(pred, need_grad, programs)
    wrap_triton(_mse_kernel)[(programs,)](
        pred, target, weight, rows, factor if need_grad else rows, partial, n, c, GRAD=bool(need_grad),
        BLOCK_N=block_n, BLOCK_C=block_c, num_warps=num_warps)
    return partial.sum().to(pred.dtype), rows, factor


# autograd: the formulas live in the leaf op_autograd (shared with any other kernel of the same (loss, rows,
# factor) form), registered on these triton_ops
register_weighted_losses(weighted_cross_entropy, weighted_mse)
