"""Two builds of lossval_fast on the same host, side by side (a rerun on another CPU changes every ratio; this
says whether the code did). Run once per build, alternating, each with its package first on the path:

    PYTHONPATH=/path/to/unpacked/old/wheel python -P bench/compare_builds.py old
    PYTHONPATH=/path/to/unpacked/new/wheel python -P bench/compare_builds.py new

Prints the best of several timings (float32, 2 threads): the Sinkhorn divergence forward + backward at a LossVal
step's shape (32 x 100 x 48) and at 128 x 2000 x 32, and the ms per step of a LossVal fit over 100,000 x 32 points
against 10,000 validation points (diameter="global", 600 steps; the checks and the validation side apart)."""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from lossval_fast import LossVal, ops


def sinkhorn_ms(n: int, m: int, d: int, reps: int) -> float:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
    a, b = torch.ones(n, requires_grad=True), torch.ones(m)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        ops.sinkhorn_divergence(a, x, b, y, blur=0.05, scaling=0.5).backward()
        best = min(best, time.perf_counter() - start)
        a.grad = None
    return best * 1e3


def lossval_ms_per_step() -> tuple[float, float]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 32)).astype(np.float32)
    Xv = rng.normal(size=(10_000, 32)).astype(np.float32)
    y, yv = (X[:, 0] > 0).astype(np.int64), (Xv[:, 0] > 0).astype(np.int64)
    est = LossVal(diameter="global", epochs=1, max_steps=600, verbose=False, random_state=0).fit(X, y, Xv, yv)
    t = est.timings_
    return t["training"] / est.n_steps_ * 1e3, t["checks"] + t["validation_side"]


if __name__ == "__main__":
    torch.set_num_threads(2)
    label = sys.argv[1] if len(sys.argv) > 1 else "build"
    small, large = sinkhorn_ms(32, 100, 48, 300), sinkhorn_ms(128, 2000, 32, 40)
    step, fixed = lossval_ms_per_step()
    print(f"{label}: sinkhorn fwd+bwd 32x100x48 {small:.3f} ms, 128x2000x32 {large:.2f} ms; LossVal 100,000 x 32 / "
          f"10,000 {step:.2f} ms per step (+ {fixed:.2f} s checks and validation side)", flush=True)
