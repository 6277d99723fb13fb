"""Pieces shared by the Triton kernels: the tile dot product, launch configurations, split-M bookkeeping.

Every pairwise kernel works in log2 units on clouds centred on the mean of y (the cost is translation invariant
and centred dot products lose less to float32 rounding). The torch wrappers fold every scalar into tensors
before the launch (x pre-multiplied by log2(e)/eps, biases in log2 units, computed in float64), so the kernels
take no float arguments: Triton would pass those as float32, which is too coarse for the float64 path.
"""
import functools
import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# fp32: tl.dot with exact fp32 products ("ieee"; "tf32" would trade ~1e-3 relative error for tensor cores).
DOT_PRECISION = "ieee"


# ---------------------------------------------------------------------------------------------- device code
@triton.jit
def matmul_acc(a, b, acc, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b for a (P, K), b (K, Q). float64 uses broadcast-and-sum: tl.dot on float64 is not lowered by
    every Triton release on every GPU, and the float64 path exists for accuracy tests, not speed."""
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit
def load_row_tile(a_ptr, rows, row_mask, D, BLOCK_K: tl.constexpr):
    """The first BLOCK_K features of the given rows (zero-padded): the whole row when D <= BLOCK_K."""
    ks = tl.arange(0, BLOCK_K)
    return tl.load(a_ptr + rows[:, None] * D + ks[None, :], mask=row_mask[:, None] & (ks < D)[None, :], other=0.0)


@triton.jit
def block_dots(a_ptr, b_ptr, rows, cols, row_mask, col_mask, D, a_tile, acc,
               BLOCK_K: tl.constexpr, SINGLE_K: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc[r, c] + a[rows[r]] . b[cols[c]] over all D features (rows and cols are int64 row indices).

    SINGLE_K: D fits one chunk and `a_tile` already holds the row tile, loaded once outside the column loop;
    otherwise both tiles are streamed in BLOCK_K-wide chunks (masked, so any D works)."""
    ks = tl.arange(0, BLOCK_K)
    if SINGLE_K:
        b = tl.load(b_ptr + cols[:, None] * D + ks[None, :], mask=col_mask[:, None] & (ks < D)[None, :], other=0.0)
        acc = matmul_acc(a_tile, tl.trans(b), acc, USE_DOT, PRECISION)
    else:
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + ks
            k_mask = kk < D
            a = tl.load(a_ptr + rows[:, None] * D + kk[None, :], mask=row_mask[:, None] & k_mask[None, :],
                        other=0.0)
            b = tl.load(b_ptr + cols[:, None] * D + kk[None, :], mask=col_mask[:, None] & k_mask[None, :],
                        other=0.0)
            acc = matmul_acc(a, tl.trans(b), acc, USE_DOT, PRECISION)
    return acc


# ---------------------------------------------------------------------------------------------- host side
def check_points(t: torch.Tensor, name: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (points x features), got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64 for the Triton kernels, got {t.dtype}")


def check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    check_points(x, "x")
    check_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of features, got {x.shape[1]} and {y.shape[1]}")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"x and y must share dtype and device, got {x.dtype}/{x.device} and {y.dtype}/{y.device}")
    check_device(x.device)


def check_vector(t: torch.Tensor, name: str, length: int, like: torch.Tensor) -> None:
    if t.shape != (length,) or t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{name} must be a ({length},) {like.dtype} tensor on {like.device}, got "
                         f"{tuple(t.shape)} {t.dtype} on {t.device}")


def check_eps(eps: float) -> None:
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive number, got {eps}")


def check_device(device: torch.device) -> None:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton kernels got CPU tensors: they run on CPU only under the interpreter "
                           "(set TRITON_INTERPRET=1 before importing lossval_fast)")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def tile_config(device: torch.device, dtype: torch.dtype, d: int, *, rows: int = 64, cols: int = 64) -> dict:
    """Tile sizes for the pairwise kernels (powers of two; tails are masked).

    GPU float32: `rows` x `cols` tiles, BLOCK_K <= 64 so a d <= 64 row tile is loaded once, BLOCK_D <= 128
    output features per program (wider d is split over the grid). float64 (broadcast-and-sum, a 3-D
    temporary per step) and the CPU interpreter (tests: small tiles so shapes like 33 cross tile borders)
    use 16-wide tiles. tl.dot needs every dimension >= 16."""
    k = min(max(16, next_pow2(d)), 64)
    if dtype == torch.float64:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, BLOCK_D=min(max(16, next_pow2(d)), 32), USE_DOT=False,
                    num_warps=4)
    if device.type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=k, BLOCK_D=min(max(16, next_pow2(d)), 64), USE_DOT=True,
                    num_warps=4)
    return dict(BLOCK_M=rows, BLOCK_N=cols, BLOCK_K=k, BLOCK_D=min(max(16, next_pow2(d)), 128), USE_DOT=True,
                num_warps=4)


def column_splits(device: torch.device, programs: int, m: int, block_n: int) -> tuple[int, int]:
    """(splits, columns per split) for a reduction over m columns when `programs` row programs are too few to
    fill the GPU (a 32-point minibatch against 100,000 validation points): each split reduces its own range of
    columns and the wrapper combines the partial results. A split gets at least a few column tiles."""
    col_tiles = triton.cdiv(m, block_n)
    if device.type == "cuda":
        target, min_tiles = 2 * _sm_count(device.index if device.index is not None else
                                           torch.cuda.current_device()), 4
    else:  # interpreter: split small problems too, so the tests cover the combine step
        target, min_tiles = 2, 2
    splits = 1
    if col_tiles > 0 and programs < target:
        splits = max(1, min(triton.cdiv(col_tiles, min_tiles), triton.cdiv(target, max(programs, 1))))
    per_split = max(1, triton.cdiv(col_tiles, splits)) * block_n
    return max(1, triton.cdiv(m, per_split)), per_split


def half_sqnorm(z: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """½|z_i - c|² in float64 from the exact differences. The centred float32 copy the kernels read is rounded,
    and at small eps the norms enter the exponent multiplied by log2(e)/eps (~1e4): computed from the rounded
    copy they would cost ~1e-3 relative error in the plan (the C++ kernels compute them in double too)."""
    return 0.5 * (z.double() - center.double()).pow(2).sum(1)


def shift_bias(bias: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias - offset in `dtype`, offset as a float64 0-d tensor), offset = the largest finite bias (0 if none).

    The biases share huge common parts (s ½|y'|² at small eps, -1e5 masks): subtracted in float64 before the
    cast, the kernel's float32 logits stay near 0 for the terms that matter, and the wrapper adds the offset back
    in float64 (the C++ kernels do the same). No host synchronisation: the offset stays on the device."""
    if bias.numel() == 0:
        return bias.to(dtype), bias.new_zeros(())
    offset = torch.where(torch.isfinite(bias), bias, float("-inf")).amax()
    offset = torch.where(torch.isfinite(offset), offset, 0.0)
    return (bias - offset).to(dtype), offset


def combine_splits(row_max: torch.Tensor, row_sum: torch.Tensor):
    """Merge per-split online reductions (S, N): sum_j 2^t_j = 2^top · total over all splits.

    Returns (top, total, share): top = max_s row_max (-inf for rows with every column masked), total =
    sum_s row_sum_s 2^(row_max_s - top) (0 for those rows) and share (S, N), each split's part of total, for
    merging per-split weighted means. The maxima are exact float32 logits of the same computation, so the
    rescale factors are as consistent as those of the single-program loop."""
    if row_max.shape[0] == 1:
        return row_max[0], row_sum[0], torch.ones_like(row_sum)
    top = row_max.max(0).values
    safe_top = torch.where(top == float("-inf"), 0.0, top)  # no (-inf) - (-inf)
    part = row_sum * torch.exp2(row_max - safe_top[None, :])
    total = part.sum(0)
    return top, total, part / total[None, :]
