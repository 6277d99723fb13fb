"""The machine's own ceilings, measured in the same run as the kernels they bound.

- exp rate: vectorised exponentials per second on an in-cache buffer, all threads; both our kernel's exp2 and a
  plain libm `expf` loop vectorised by the compiler (the larger one is the floor we hold ourselves to);
- read bandwidth: a vectorised sum over a buffer far larger than the last-level cache;
- float32 GEMM rate: torch.mm at the shapes the online kernel's dot products have (N x d by d x M).
"""
from __future__ import annotations

import torch

from lossval_fast.demo import best_time


def _best(fn, repeats: int = 7) -> float:
    return best_time(fn, repeats)


def exp_rates(threads: int | None = None, length: int = 4096, repeats: int = 300) -> dict:
    """Exponentials per second: {"exp2": our vectorised exp2, "expf": plain libm loop}."""
    threads = threads or torch.get_num_threads()
    buffer = torch.randn(threads, length)
    out = {}
    for kind in ("exp2", "expf"):
        seconds = _best(lambda: torch.ops.lossval_fast.machine_probe(buffer, repeats, kind))
        out[kind] = threads * length * repeats / seconds
    return out


def read_bandwidth(threads: int | None = None, megabytes: int = 512) -> float:
    """Bytes per second read from memory by a vectorised sum over `megabytes` (beyond every cache)."""
    threads = threads or torch.get_num_threads()
    buffer = torch.ones(threads, (megabytes << 20) // 4 // threads)
    seconds = _best(lambda: torch.ops.lossval_fast.machine_probe(buffer, 1, "read"), repeats=5)
    return buffer.numel() * 4 / seconds


def gemm_rate(n: int, m: int, d: int) -> float:
    """float32 FLOP/s of torch.mm for an (n x d) by (d x m) product."""
    a, b = torch.randn(n, d), torch.randn(d, m)
    seconds = _best(lambda: torch.mm(a, b))
    return 2.0 * n * m * d / seconds


def measure(shapes=((2048, 32), (4096, 64))) -> dict:
    rates = exp_rates()
    return {
        "threads": torch.get_num_threads(),
        "exp2_per_s": rates["exp2"],
        "expf_per_s": rates["expf"],
        "exp_per_s": max(rates.values()),
        "read_bytes_per_s": read_bandwidth(),
        "gemm_flops_per_s": {f"{n}x{d}": gemm_rate(n, n, d) for n, d in shapes},
    }


if __name__ == "__main__":
    import json

    import lossval_fast  # noqa: F401  (loads the probes)

    print(json.dumps(measure(), indent=2))
