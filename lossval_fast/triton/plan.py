"""Column sums of a known plan (Triton): the building block of the softmin gradient with respect to y and h.

    s_j = sum_i w_i P_ij,  sx_j = sum_i w_i P_ij x_i,  P_ij = exp(h_j + f_i / eps - C_ij / eps)

f is the softmin, so P is already normalised: no running max, just a weighted sum of exp2 over tiles of x.
The kernel's rows are y (one program per block of rows of y), its columns x. In log2 units, with x', y' centred
on the mean of x (the cloud summed over, as in the C++ kernel: exact when x is a single point) and
s = log2(e) / eps:
    log2 P_ij = [log2(e) h_j - s ½|y'_j|²] + [s (f_i - ½|x'_i|²)] + (s y'_j) . x'_i
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import (DOT_PRECISION, LOG2E, block_dots, check_eps, check_pair, check_vector, cloud_center,
                      column_splits, half_sqnorm, load_tile, matmul_acc, shift_bias, tile_config)


@triton.jit
def _plan_colsum_kernel(y_ptr, x_ptr, row_bias_ptr, col_bias_ptr, weight_ptr, s_ptr, sx_ptr, M, N, D,
                        cols_per_split, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr, REUSE_X: tl.constexpr,
                        USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    # grid: (row blocks of y, column splits of x, output feature chunks of sx)
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    pid_d = tl.program_id(2)
    dtype = y_ptr.dtype.element_ty
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows = rows.to(tl.int64)
    col_begin = split * cols_per_split
    col_end = tl.minimum(col_begin + cols_per_split, N)
    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = dcols < D

    if SINGLE_K:  # d <= BLOCK_K: the row tile stays in registers for the whole pass
        y_tile = load_tile(y_ptr, rows, row_mask, 0, D, BLOCK_K)
    # padding rows get -inf so that they produce exact zeros (no overflowing exp2 in dead lanes)
    row_bias = tl.load(row_bias_ptr + rows, mask=row_mask, other=float("-inf"))
    s = tl.zeros([BLOCK_M], dtype)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype)
    for n0 in range(col_begin, col_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < col_end
        cols = cols.to(tl.int64)
        col_bias = tl.load(col_bias_ptr + cols, mask=col_mask, other=float("-inf"))
        w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0)
        t = tl.zeros([BLOCK_M, BLOCK_N], dtype)
        if SINGLE_K:
            x_tile = load_tile(x_ptr, cols, col_mask, 0, D, BLOCK_K)
            t = matmul_acc(y_tile, tl.trans(x_tile), t, USE_DOT, PRECISION)
        else:
            t = block_dots(y_ptr, x_ptr, rows, cols, row_mask, col_mask, D, t, BLOCK_K, USE_DOT, PRECISION)
        e = tl.exp2(t + row_bias[:, None] + col_bias[None, :]) * w[None, :]
        s += tl.sum(e, axis=1)
        if REUSE_X:  # the features of this chunk are the ones just loaded for the dot products
            x_vals = x_tile
        else:
            x_vals = tl.load(x_ptr + cols[:, None] * D + dcols[None, :], mask=col_mask[:, None] & d_mask[None, :],
                             other=0.0)
        acc = matmul_acc(e, x_vals, acc, USE_DOT, PRECISION)

    out = split.to(tl.int64) * M + rows
    tl.store(s_ptr + out, s, mask=row_mask & (pid_d == 0))
    tl.store(sx_ptr + out[:, None] * D + dcols[None, :], acc, mask=row_mask[:, None] & d_mask[None, :])


@triton_op("lossval_fast::plan_colsum_triton", mutates_args=())
def plan_colsum(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, f: torch.Tensor, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, sx): s_j = sum_i w_i P_ij, sx_j = sum_i w_i P_ij x_i for P_ij = exp(h_j + f_i/eps - C_ij/eps)."""
    check_pair(x, y)
    check_vector(h, "h", y.shape[0], y)
    check_vector(f, "f", x.shape[0], x)
    check_vector(weight, "weight", x.shape[0], x)
    check_eps(eps)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    scale = LOG2E / eps
    center = cloud_center(x)
    xc = (x - center).contiguous()
    # O(N + M) vectors formed in float64: s f_i and s ½|x'_i|² are large at small eps and nearly cancel
    # the offset of the column biases moves into the row biases: exact when x is one point
    col_bias, offset = shift_bias(scale * (f.double() - half_sqnorm(x, center)), x.dtype)
    row_bias = (LOG2E * h.double() - scale * half_sqnorm(y, center) + offset).to(x.dtype)
    y_scaled = torch.sub(y, center).mul_(scale)  # one temporary, contiguous

    cfg = tile_config("plan", x.device, x.dtype, d)
    d_chunks = triton.cdiv(d, cfg["BLOCK_D"])
    row_blocks = triton.cdiv(m, cfg["BLOCK_M"])
    splits, per_split = column_splits(x.device, row_blocks * d_chunks, n, cfg["BLOCK_N"])
    s = torch.empty((splits, m), dtype=x.dtype, device=x.device)
    sx = torch.empty((splits, m, d), dtype=x.dtype, device=x.device)
    single_k = d <= cfg["BLOCK_K"]
    if m > 0:
        wrap_triton(_plan_colsum_kernel)[(row_blocks, splits, d_chunks)](
            y_scaled, xc, row_bias, col_bias, weight.contiguous(), s, sx, m, n, d, per_split,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"],
            SINGLE_K=single_k, REUSE_X=single_k and cfg["BLOCK_D"] == cfg["BLOCK_K"], USE_DOT=cfg["USE_DOT"],
            PRECISION=DOT_PRECISION, num_warps=cfg["num_warps"])
    s_total = s.sum(0)
    # the kernel summed centred rows x'_i: sum_i w_i P_ij x_i = sum_i w_i P_ij x'_i + s_j · centre
    return s_total, sx.sum(0) + s_total[:, None] * center
