"""Online softmin and its barycentre flavour (Triton).

    softmin_i = -eps log sum_j exp(h_j - C_ij / eps),  C_ij = ½|x_i - y_j|²
    barycentre_i = sum_j P_ij y_j,  P_ij = softmax_j(h_j - C_ij / eps)

In log2 units with x', y' centred on the mean of y and s = log2(e) / eps:
    h_j - C_ij / eps = ln2 · (t_ij - s ½|x'_i|²),   t_ij = [log2(e) h_j - s ½|y'_j|²] + (s x'_i) . y'_j
so the kernel reduces t_ij = bias_j + x~_i . y'_j with a running max and sum over tiles of y (FlashAttention
style, exp2), never forming an N x M tensor; ½|x'_i|² stays outside the log-sum-exp. The biases are formed in
float64 and shifted by their largest finite value before the cast (added back afterwards), so the float32 logits
that matter stay small even when s ½|y'|² is ~1e5.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import (DOT_PRECISION, LN2, LOG2E, block_dots, check_eps, check_pair, check_vector, cloud_center,
                      column_splits, combine_splits, half_sqnorm, load_tile, matmul_acc, shift_bias, tile_config)


@triton.jit
def _softmin_kernel(x_ptr, y_ptr, bias_ptr, max_ptr, sum_ptr, bary_ptr, N, M, D, cols_per_split,
                    BARY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr, REUSE_Y: tl.constexpr, USE_DOT: tl.constexpr,
                    PRECISION: tl.constexpr):
    # grid: (row blocks of x, column splits of y, output feature chunks of the barycentre)
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    pid_d = tl.program_id(2)
    dtype = x_ptr.dtype.element_ty
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    rows = rows.to(tl.int64)  # row * D overflows int32 for large clouds
    col_begin = split * cols_per_split
    col_end = tl.minimum(col_begin + cols_per_split, M)

    if SINGLE_K:  # d <= BLOCK_K: the row tile stays in registers for the whole pass
        x_tile = load_tile(x_ptr, rows, row_mask, 0, D, BLOCK_K)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype)
    l_i = tl.zeros([BLOCK_M], dtype)
    if BARY:
        dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = dcols < D
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype)

    for n0 in range(col_begin, col_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < col_end
        cols = cols.to(tl.int64)
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=float("-inf"))  # padding columns: -inf
        t = tl.zeros([BLOCK_M, BLOCK_N], dtype)
        if SINGLE_K:
            y_tile = load_tile(y_ptr, cols, col_mask, 0, D, BLOCK_K)
            t = matmul_acc(x_tile, tl.trans(y_tile), t, USE_DOT, PRECISION)
        else:
            t = block_dots(x_ptr, y_ptr, rows, cols, row_mask, col_mask, D, t, BLOCK_K, USE_DOT, PRECISION)
        t += bias[None, :]
        m_new = tl.maximum(m_i, tl.max(t, axis=1))
        # rows whose columns so far are all -inf (masked points): subtract 0 instead of -inf (no inf - inf NaN)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(t - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if BARY:
            if REUSE_Y:  # the features of this chunk are the ones just loaded for the dot products
                y_vals = y_tile
            else:
                y_vals = tl.load(y_ptr + cols[:, None] * D + dcols[None, :],
                                 mask=col_mask[:, None] & d_mask[None, :], other=0.0)
            acc = matmul_acc(p, y_vals, acc * alpha[:, None], USE_DOT, PRECISION)
        m_i = m_new

    out = split.to(tl.int64) * N + rows
    # (max, sum) rather than max + log2(sum): at small eps the max is ~1e5 in log2 units, where a float32 sum
    # would round away ~1e-2; every feature chunk computes the same pair, the first one stores it
    first = row_mask & (pid_d == 0)
    tl.store(max_ptr + out, m_i, mask=first)
    tl.store(sum_ptr + out, l_i, mask=first)
    if BARY:
        # l_i == 0 (every column masked) gives 0/0 = NaN, as the softmax of the reference does
        tl.store(bary_ptr + out[:, None] * D + dcols[None, :], acc / l_i[:, None],
                 mask=row_mask[:, None] & d_mask[None, :])


def _softmin_forward(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, eps: float, barycenter: bool):
    check_pair(x, y)
    check_vector(h, "h", y.shape[0], y)
    check_eps(eps)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    scale = LOG2E / eps
    center = cloud_center(y)
    yc = (y - center).contiguous()
    # the O(N + M) vectors are formed in float64: biases in log2 units reach ~1e5 at small eps
    half_x = half_sqnorm(x, center)
    bias, offset = shift_bias(LOG2E * h.double() - scale * half_sqnorm(y, center), x.dtype)
    x_scaled = torch.sub(x, center).mul_(scale)  # one temporary, contiguous

    cfg = tile_config("barycenter" if barycenter else "softmin", x.device, x.dtype, d)
    d_chunks = triton.cdiv(d, cfg["BLOCK_D"]) if barycenter else 1
    row_blocks = triton.cdiv(n, cfg["BLOCK_M"])
    splits, per_split = column_splits(x.device, row_blocks * d_chunks, m, cfg["BLOCK_N"])
    row_max = torch.empty((splits, n), dtype=x.dtype, device=x.device)
    row_sum = torch.empty((splits, n), dtype=x.dtype, device=x.device)
    bary = torch.empty((splits, n, d) if barycenter else (0,), dtype=x.dtype, device=x.device)
    single_k = d <= cfg["BLOCK_K"]
    if n > 0:
        wrap_triton(_softmin_kernel)[(row_blocks, splits, d_chunks)](
            x_scaled, yc, bias, row_max, row_sum, bary, n, m, d, per_split,
            BARY=barycenter, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            BLOCK_D=cfg["BLOCK_D"], SINGLE_K=single_k, REUSE_Y=single_k and cfg["BLOCK_D"] == cfg["BLOCK_K"],
            USE_DOT=cfg["USE_DOT"], PRECISION=DOT_PRECISION, num_warps=cfg["num_warps"])

    top, total, share = combine_splits(row_max, row_sum)
    # log2 sum_j 2^t_ij = offset + top + log2(total), added in float64
    f = (half_x - (eps * LN2) * (offset + top.double() + torch.log2(total.double()))).to(x.dtype)
    if not barycenter:
        return f, None
    if splits == 1:
        centred = bary[0]
    else:
        # split s holds its own normalised barycentre: weight it by its share of the row's mass
        terms = torch.where(share[:, :, None] == 0, 0.0, share[:, :, None] * bary)
        centred = terms.sum(0).masked_fill((total == 0)[:, None], float("nan"))
    return f, centred + center


@triton_op("lossval_fast::softmin_triton", mutates_args=())
def softmin(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """f_i = -eps log sum_j exp(h_j - ½|x_i - y_j|² / eps), online over tiles of y."""
    return _softmin_forward(x, y, h, eps, False)[0]


@triton_op("lossval_fast::softmin_barycenter_triton", mutates_args=())
def softmin_barycenter(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmin, sum_j P_ij y_j) in one online pass; rows of P sum to 1."""
    f, bary = _softmin_forward(x, y, h, eps, True)
    return f, bary
