"""Nearest row of y for every row of x (Triton), optionally with per-cluster sums and counts (a Lloyd step).

argmin_j |x_i - y_j|² = argmax_j (x'_i . y'_j - ½|y'_j|²) with x', y' centred on the mean of y; the squared
distance is then |x'_i|² - 2 max_j (...). One program per block of rows of x scans all of y (k-means has few
centroids, so the grid is tall enough without splitting y); ties go to the lowest index.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import (DOT_PRECISION, block_dots, check_pair, cloud_center, half_sqnorm, load_tile, matmul_acc,
                      tile_config)


@triton.jit
def _nearest_kernel(x_ptr, y_ptr, bias_ptr, x_raw_ptr, best_ptr, index_ptr, sums_ptr, counts_ptr, N, M, D,
                    ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, SINGLE_K: tl.constexpr, USE_DOT: tl.constexpr,
                    PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    dtype = x_ptr.dtype.element_ty
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    rows = rows.to(tl.int64)

    if SINGLE_K:  # d <= BLOCK_K: the row tile stays in registers for the whole pass
        x_tile = load_tile(x_ptr, rows, row_mask, 0, D, BLOCK_K)
    best = tl.full([BLOCK_M], float("-inf"), dtype)
    best_index = tl.zeros([BLOCK_M], tl.int64)
    for n0 in range(0, M, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < M
        cols = cols.to(tl.int64)
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=float("-inf"))
        score = tl.zeros([BLOCK_M, BLOCK_N], dtype)
        if SINGLE_K:
            score = matmul_acc(x_tile, tl.trans(load_tile(y_ptr, cols, col_mask, 0, D, BLOCK_K)), score, USE_DOT,
                               PRECISION)
        else:
            score = block_dots(x_ptr, y_ptr, rows, cols, row_mask, col_mask, D, score, BLOCK_K, USE_DOT, PRECISION)
        score += bias[None, :]
        tile_best = tl.max(score, axis=1)
        # first column reaching the tile maximum; a later tile replaces it only when strictly better
        tile_index = tl.min(tl.where(score == tile_best[:, None], cols[None, :], M), axis=1)
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, tile_index, best_index)

    tl.store(best_ptr + rows, best, mask=row_mask)
    tl.store(index_ptr + rows, best_index, mask=row_mask)
    if ACCUMULATE:
        # relaxed atomics: the order of the additions does not matter, only that none is lost
        tl.atomic_add(counts_ptr + best_index, tl.full([BLOCK_M], 1, tl.int64), mask=row_mask, sem="relaxed")
        ks = tl.arange(0, BLOCK_K)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + ks
            mask = row_mask[:, None] & (kk < D)[None, :]
            xv = tl.load(x_raw_ptr + rows[:, None] * D + kk[None, :], mask=mask, other=0.0)
            tl.atomic_add(sums_ptr + best_index[:, None] * D + kk[None, :], xv, mask=mask, sem="relaxed")


@triton_op("lossval_fast::nearest_triton", mutates_args=())
def nearest(x: torch.Tensor, y: torch.Tensor,
            accumulate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index int64 (N,), squared distance (N,), sums (M, d) or (0, d), counts int64 (M,) or (0,))."""
    check_pair(x, y)
    if y.shape[0] == 0:
        raise ValueError("y must have at least one row")
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    center = cloud_center(y)
    xc = (x - center).contiguous()
    yc = (y - center).contiguous()
    bias = (-half_sqnorm(y, center)).to(x.dtype)
    x_raw = x.contiguous()  # the sums add the original rows, not centred ones (no rounding from re-adding c)

    cfg = tile_config("nearest", x.device, x.dtype, d)
    best = torch.empty((n,), dtype=x.dtype, device=x.device)
    index = torch.empty((n,), dtype=torch.int64, device=x.device)
    k = m if accumulate else 0
    sums = torch.zeros((k, d), dtype=x.dtype, device=x.device)
    counts = torch.zeros((k,), dtype=torch.int64, device=x.device)
    if n > 0:
        wrap_triton(_nearest_kernel)[(triton.cdiv(n, cfg["BLOCK_M"]),)](
            xc, yc, bias, x_raw, best, index, sums, counts, n, m, d,
            ACCUMULATE=accumulate, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
            SINGLE_K=d <= cfg["BLOCK_K"], USE_DOT=cfg["USE_DOT"], PRECISION=DOT_PRECISION,
            num_warps=cfg["num_warps"])
    # |x' - y'|² = |x'|² - 2 (x'.y' - ½|y'|²), clamped like the reference (rounding can dip below 0)
    sqdist = (2 * (half_sqnorm(x, center) - best.double())).clamp_min(0).to(x.dtype)
    return index, sqdist, sums, counts
