"""Memory budget and the stored-versus-online choice for the cost matrix; freed heap memory given back."""
from __future__ import annotations

import ctypes
import mmap
import os
import sys

import numpy as np

import torch

COST_MODES = ("auto", "online", "stored")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


# read once at import: ops call this on every pass, also inside torch.compile'd code
_ENV_BUDGET = os.environ.get("LOSSVAL_FAST_MEMORY_BUDGET")
_CPU_BUDGET = int(float(_ENV_BUDGET)) if _ENV_BUDGET else min(2 << 30, _physical_memory() // 4)


_TRIM = None   # glibc's malloc_trim, looked up on first use (False: not available)


def release_freed_memory() -> None:
    """Give the heap's freed memory back to the system (glibc's malloc_trim(0); a no-op elsewhere). glibc serves
    blocks below its mmap threshold, which rises with use up to 32 MiB, from the heap and keeps them there once
    freed, still counted in the process's resident memory: the many-MiB temporaries of passes over large arrays
    (row chunks, per-iteration outputs) would otherwise add up before the next large allocation. Costs
    milliseconds: call it between phases, not in inner loops."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                trim = ctypes.CDLL("libc.so.6").malloc_trim
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
                _TRIM = trim
            except (OSError, AttributeError):   # not glibc (musl has no malloc_trim)
                pass
    if _TRIM:
        _TRIM(0)


def lazy_zeros(shape, dtype=np.float64) -> np.ndarray:
    """np.zeros(shape, dtype) on its own anonymous mapping (from 1 MiB): the kernel's zero pages, resident only once
    written, whatever glibc's heap holds (np.zeros' calloc may reuse, and clear, heap memory); freed with the array.
    For a large array filled late (or partly)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize < (1 << 20) or not hasattr(mmap, "MAP_PRIVATE"):   # MAP_PRIVATE: Unix only
        return np.zeros(shape, dtype)
    # private: counted as the process's anonymous memory like any array (mmap's default, MAP_SHARED, is shmem)
    buffer = mmap.mmap(-1, count * dtype.itemsize, flags=mmap.MAP_PRIVATE)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def default_memory_budget(device: torch.device) -> int:
    """Bytes an op may spend on a stored cost: a quarter of free GPU memory, or min(2 GiB, a quarter of RAM);
    the environment variable LOSSVAL_FAST_MEMORY_BUDGET (bytes) overrides both."""
    if device.type == "cuda" and not _ENV_BUDGET:
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return _CPU_BUDGET


def choose_cost_mode(cost: str, n: int, m: int, d: int, itemsize: int, device: torch.device, *, passes: int,
                     memory_budget: int | None = None) -> str:
    """"online" or "stored" for `passes` reductions over the same N x M cost.

    Stored pays one GEMM (2·d flops per pair) plus N·M·itemsize bytes, then each pass only reads the cost;
    online pays 2·d flops per pair in every pass. On CPU storing wins from a few passes at d >= 16; on GPU the
    online kernel is bound by exp and tensor cores and storing wins only when the cost stays in cache.
    """
    if cost not in COST_MODES:
        raise ValueError(f"cost must be one of {COST_MODES} or an (N, M) tensor, got {cost!r}")
    if cost == "online":
        return "online"
    budget = default_memory_budget(device) if memory_budget is None else int(memory_budget)
    fits = n * m * itemsize <= budget
    if cost == "stored":
        if not fits:
            raise ValueError(f"cost='stored' needs {n * m * itemsize / 2**20:.1f} MiB for the {n} x {m} cost, "
                             f"more than memory_budget={budget / 2**20:.1f} MiB; use cost='online'")
        return "stored"
    if cost == "online" or not fits:
        return "online"
    if device.type == "cpu":
        return "stored" if passes >= 3 and d >= 16 else "online"
    return "stored" if passes >= 3 and n * m * itemsize <= (32 << 20) else "online"
