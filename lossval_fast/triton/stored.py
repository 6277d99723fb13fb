"""softmin over a stored cost matrix (Triton): -eps log sum_j exp(h_j - cost_ij / eps) for every row.

Memory bound: each program streams BLOCK_M rows of the row-major cost in BLOCK_N-wide tiles with a running max
and sum in log2 units (t_ij = log2(e) h_j - (log2(e) / eps) cost_ij). Few rows (a minibatch against a large
validation set) are split over the columns as well, and the partial log-sum-exps are combined afterwards.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import LN2, LOG2E, check_device, check_eps, check_vector, column_splits, combine_splits


@triton.jit
def _softmin_stored_kernel(cost_ptr, bias_ptr, scale_ptr, max_ptr, sum_ptr, N, M, cols_per_split,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    dtype = cost_ptr.dtype.element_ty
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    rows = rows.to(tl.int64)
    col_begin = split * cols_per_split
    col_end = tl.minimum(col_begin + cols_per_split, M)
    scale = tl.load(scale_ptr)  # a tensor, not a float argument: Triton passes floats as float32

    m_i = tl.full([BLOCK_M], float("-inf"), dtype)
    l_i = tl.zeros([BLOCK_M], dtype)
    for n0 in range(col_begin, col_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < col_end
        cols = cols.to(tl.int64)
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=float("-inf"))
        cost = tl.load(cost_ptr + rows[:, None] * M + cols[None, :], mask=row_mask[:, None] & col_mask[None, :],
                       other=0.0)
        t = bias[None, :] - scale * cost
        m_new = tl.maximum(m_i, tl.max(t, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: avoid inf - inf
        l_i = l_i * tl.exp2(m_i - m_ref) + tl.sum(tl.exp2(t - m_ref[:, None]), axis=1)
        m_i = m_new
    # (max, sum), combined in float64 by the wrapper: max + log2(sum) in float32 would round at ~1e5
    out = split.to(tl.int64) * N + rows
    tl.store(max_ptr + out, m_i, mask=row_mask)
    tl.store(sum_ptr + out, l_i, mask=row_mask)


@triton_op("lossval_fast::softmin_stored_triton", mutates_args=())
def softmin_stored(cost: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """f_i = -eps log sum_j exp(h_j - cost_ij / eps) over a stored (N, M) cost."""
    if cost.dim() != 2 or cost.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"cost must be a 2-D float32 or float64 tensor, got shape {tuple(cost.shape)} {cost.dtype}")
    check_device(cost)
    check_vector(h, "h", cost.shape[1], cost)
    check_eps(eps)
    n, m = cost.shape
    cost = cost.contiguous()
    bias = (LOG2E * h.double()).to(cost.dtype)
    scale = torch.full((1,), LOG2E / eps, dtype=cost.dtype, device=cost.device)

    if cost.device.type == "cuda":
        # 8 rows x 256 columns: 2,048 elements per step for 4 warps, coalesced along the rows
        block_m, block_n, num_warps = 8, 256, 4
    else:
        block_m, block_n, num_warps = 16, 16, 4
    row_blocks = triton.cdiv(n, block_m)
    splits, per_split = column_splits(cost.device, row_blocks, m, block_n)
    row_max = torch.empty((splits, n), dtype=cost.dtype, device=cost.device)
    row_sum = torch.empty((splits, n), dtype=cost.dtype, device=cost.device)
    if n > 0:
        wrap_triton(_softmin_stored_kernel)[(row_blocks, splits)](
            cost, bias, scale, row_max, row_sum, n, m, per_split, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps)
    top, total, _ = combine_splits(row_max, row_sum)
    return (-(eps * LN2) * (top.double() + torch.log2(total.double()))).to(cost.dtype)
