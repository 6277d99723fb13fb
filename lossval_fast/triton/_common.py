"""Pieces shared by the Triton kernels: the tile dot product, launch configurations, split bookkeeping.

Every pairwise kernel works in log2 units on two clouds centred on one common point (the cost is translation
invariant and centred dot products lose less to float32 rounding). The torch wrappers fold every scalar into
tensors before the launch (one cloud pre-multiplied by log2(e)/eps, biases in log2 units formed in float64), so
the kernels take no float arguments: Triton would pass those as float32, too coarse for the float64 path.
"""
import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

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
def load_tile(ptr, rows, row_mask, k0, D, BLOCK_K: tl.constexpr):
    """Features [k0, k0 + BLOCK_K) of the given rows (int64 indices) of a row-major (., D) array, zero-padded."""
    ks = k0 + tl.arange(0, BLOCK_K)
    return tl.load(ptr + rows[:, None] * D + ks[None, :], mask=row_mask[:, None] & (ks < D)[None, :], other=0.0)


@triton.jit
def block_dots(a_ptr, b_ptr, rows, cols, row_mask, col_mask, D, acc,
               BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc[r, c] + a[rows[r]] . b[cols[c]] over all D features, streamed in BLOCK_K-wide chunks (the kernels take
    the single-chunk case, d <= BLOCK_K, apart: there the row tile is loaded once, outside the column loop)."""
    for k0 in range(0, D, BLOCK_K):
        a = load_tile(a_ptr, rows, row_mask, k0, D, BLOCK_K)
        b = load_tile(b_ptr, cols, col_mask, k0, D, BLOCK_K)
        acc = matmul_acc(a, tl.trans(b), acc, USE_DOT, PRECISION)
    return acc


@triton.jit
def _half_sqnorm_kernel(z_ptr, c_ptr, out_ptr, N, D, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    rows = rows.to(tl.int64)
    acc = tl.zeros([BLOCK_M], tl.float64)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < D
        z = load_tile(z_ptr, rows, row_mask, k0, D, BLOCK_K).to(tl.float64)
        c = tl.load(c_ptr + ks, mask=k_mask, other=0.0).to(tl.float64)
        v = tl.where(row_mask[:, None] & k_mask[None, :], z - c[None, :], 0.0)  # exact in float64
        acc += tl.sum(v * v, axis=1)
    tl.store(out_ptr + rows, 0.5 * acc, mask=row_mask)


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
    check_device(x)


def check_vector(t: torch.Tensor, name: str, length: int, like: torch.Tensor) -> None:
    if t.shape != (length,) or t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{name} must be a ({length},) {like.dtype} tensor on {like.device}, got "
                         f"{tuple(t.shape)} {t.dtype} on {t.device}")


def check_eps(eps: float) -> None:
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive number, got {eps}")


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not interpreted():
        raise RuntimeError("the Triton kernels got CPU tensors: they run on CPU only under the interpreter "
                           "(set TRITON_INTERPRET=1 before importing lossval_fast)")
    if interpreted() and is_fake(t):
        # under the interpreter wrap_triton hands back the plain interpreted function, which cannot take fake
        # tensors: torch.compile / export / FakeTensorMode need a GPU (or the cpp backend) for these ops
        raise RuntimeError("the Triton ops cannot be traced (torch.compile, fake tensors) while Triton runs in the "
                           "CPU interpreter; use a GPU, or the cpp backend on CPU")


def cloud_center(z: torch.Tensor) -> torch.Tensor:
    """Mean of the rows: the common centre (any shared point is exact; the mean keeps dot products small)."""
    return z.mean(0) if z.shape[0] > 0 else z.new_zeros(z.shape[1])


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def tile_config(kind: str, device: torch.device, dtype: torch.dtype, d: int) -> dict:
    """Tile sizes for the pairwise kernels (powers of two; tails are masked). kind: "softmin", "barycenter",
    "plan" or "nearest" (the last three also carry a (BLOCK_M, BLOCK_D) weighted sum or a wider epilogue).

    GPU float32 (exact-fp32 tl.dot runs on the FMA units and is register hungry): 64-row tiles, 8 warps; d <= 64
    is one chunk (the row tile stays in registers, the column tile doubles as the summed features), wider d is
    streamed in 32-wide chunks and its output features are split over the grid. Every config here compiles for
    sm_90 without register spills (ptxas -v, Triton 3.7). float64 (broadcast-and-sum, a 3-D temporary per step)
    uses 16-wide tiles; so does the CPU interpreter, so that test shapes like 33 cross tile borders."""
    weighted = kind in ("barycenter", "plan")
    if dtype == torch.float64:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, BLOCK_D=min(max(16, next_pow2(d)), 32), USE_DOT=False,
                    num_warps=4)
    if device.type != "cuda":
        k = min(max(16, next_pow2(d)), 64)
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=k, BLOCK_D=k, USE_DOT=True, num_warps=4)
    if d <= 64:  # tl.dot needs every dimension >= 16
        k = max(16, next_pow2(d))
        return dict(BLOCK_M=64, BLOCK_N=32 if weighted and k == 64 else 64, BLOCK_K=k, BLOCK_D=k, USE_DOT=True,
                    num_warps=8)
    return dict(BLOCK_M=64, BLOCK_N=32 if weighted else 64, BLOCK_K=32, BLOCK_D=128 if kind == "barycenter" else 64,
                USE_DOT=True, num_warps=8)


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
    """½|z_i - c|² in float64 from the exact differences, without a float64 copy of z. The centred float32 copy
    the pairwise kernels read is rounded, and at small eps the norms enter the exponent multiplied by
    log2(e)/eps (~1e4): from the rounded copy they would cost ~1e-3 relative error in the plan (the C++ kernels
    compute them in double too)."""
    n, d = z.shape
    out = torch.empty((n,), dtype=torch.float64, device=z.device)
    if n > 0:
        block_k = min(max(16, next_pow2(d)), 32)  # memory bound: small float64 tiles, many programs
        wrap_triton(_half_sqnorm_kernel)[(triton.cdiv(n, 32),)](z.contiguous(), center.contiguous(), out, n, d,
                                                                 BLOCK_M=32, BLOCK_K=block_k, num_warps=4)
    return out


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
