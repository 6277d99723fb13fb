"""`python -m lossval_fast demo`: the pairwise primitive on the bundled pol subset, timed against the plain torch
computation (what geomloss' tensorized backend does per Sinkhorn half-step), with the error against float64."""
from __future__ import annotations

import time

import numpy as np
import torch


def _best_time(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    import lossval_fast
    from lossval_fast import ops, reference
    from lossval_fast.datasets import load_bundled_pol

    features, target = load_bundled_pol()
    z = (features - features.mean(0)) / np.where(features.std(0) > 0, features.std(0), 1)
    x = torch.from_numpy(z[:3000].astype(np.float32))
    y = torch.from_numpy(z[3000:].astype(np.float32))
    h = torch.zeros(y.shape[0])
    eps = 0.05**2 * 100
    info = lossval_fast.info()
    print(f"lossval_fast {info['version']} | torch {info['torch']} | {info['threads']} threads | "
          f"CPU kernels: {info['cpu_capability']}")
    print(f"data: bundled pol subset, {x.shape[0]} x {y.shape[0]} points, d = {x.shape[1]} (z-scored), eps = {eps}")
    exact = reference.softmin(x.double(), y.double(), h.double(), eps)
    pairs = x.shape[0] * y.shape[0]
    cost = reference.half_sqdist(x, y)
    rows = [
        ("lossval_fast online softmin (fp32)", lambda: ops.pairwise_softmin(x, y, h, eps)),
        ("lossval_fast stored-cost pass (fp32)", lambda: ops.softmin_stored(stored, h, eps)),
        ("torch logsumexp on a stored cost (fp32)", lambda: -eps * torch.logsumexp(h - cost / eps, 1)),
    ]
    stored = ops.half_sqdist(x, y)
    print(f"{'implementation':<42}{'time (ms)':>10}{'Gpairs/s':>10}{'max |err| vs fp64':>20}")
    for name, fn in rows:
        seconds = _best_time(fn)
        err = (fn().double() - exact).abs().max().item()
        print(f"{name:<42}{seconds * 1e3:>10.3f}{pairs / seconds / 1e9:>10.2f}{err:>20.2e}")
    return 0
