"""`python -m lossval_fast demo` (`make demo`): the main job on the bundled data set.

The bundled pol subset is split the OpenDataVal way (1000 train / 100 validation, z-scored), 10 % of the labels are
flipped, and the data are valued with LossVal (the paper's configuration), EcoVal (when available) and
KNN-Shapley; each method's noisy-point detection F1 (exact 2-means on the values) and time are printed next to
random values. Then the speed of the pairwise primitive against the plain torch computation.
"""
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


def _valuation_table(seed: int = 0) -> None:
    from lossval_fast.datasets import load_bundled_pol
    from lossval_fast.valuation import KNNShapley, inject_noise, noisy_detection_f1, standardize_split
    from lossval_fast.valuation.lossval import LossVal

    X, y = load_bundled_pol()
    split = standardize_split(X, y, n_train=1000, n_valid=100, n_test=2900, task="classification",
                              random_state=seed)
    x_train, y_train, noisy = inject_noise(split.x_train, split.y_train, kind="label", rate=0.1,
                                           task="classification", random_state=seed)
    print(f"data: bundled pol subset, {len(x_train)} training / {len(split.x_valid)} validation points, "
          f"{x_train.shape[1]} features, {int(noisy.sum())} labels flipped (10 %)")
    methods = [
        ("LossVal (30 epochs, batch 32, lr 0.01)",
         lambda: LossVal(epochs=30, random_state=seed, verbose=False).fit(
             x_train, y_train, split.x_valid, split.y_valid).values_),
        ("KNN-Shapley (k = 10)",
         lambda: KNNShapley(k=10).fit(x_train, y_train, split.x_valid, split.y_valid).values_),
        ("random values", lambda: np.random.default_rng(seed).random(len(x_train))),
    ]
    try:
        from lossval_fast.valuation import EcoVal
        methods.insert(1, ("EcoVal (20 clusters, logreg)", lambda: EcoVal(
            n_clusters=20, random_state=seed, verbose=False).fit(
                x_train, y_train, split.x_valid, split.y_valid).values_))
    except ImportError:
        pass
    print(f"{'method':<42}{'noisy-label F1':>16}{'time (s)':>10}")
    for name, run in methods:
        start = time.perf_counter()
        values = run()
        seconds = time.perf_counter() - start
        print(f"{name:<42}{noisy_detection_f1(values, noisy):>16.3f}{seconds:>10.2f}")


def _primitive_table() -> None:
    from lossval_fast import ops, reference
    from lossval_fast.datasets import load_bundled_pol

    features, _ = load_bundled_pol()
    std = features.std(0)
    z = (features - features.mean(0)) / np.where(std > 0, std, 1)
    x = torch.from_numpy(z[:3000].astype(np.float32))
    y = torch.from_numpy(z[3000:].astype(np.float32))
    h = torch.zeros(y.shape[0])
    eps = 0.25
    exact = reference.softmin(x.double(), y.double(), h.double(), eps)
    pairs = x.shape[0] * y.shape[0]
    cost = reference.half_sqdist(x, y)
    stored = ops.half_sqdist(x, y)
    rows = [
        ("lossval_fast online softmin (fp32)", lambda: ops.pairwise_softmin(x, y, h, eps)),
        ("lossval_fast stored-cost pass (fp32)", lambda: ops.softmin_stored(stored, h, eps)),
        ("torch logsumexp on a stored cost (fp32)", lambda: -eps * torch.logsumexp(h - cost / eps, 1)),
    ]
    print(f"\nthe primitive: softmin of {x.shape[0]} x {y.shape[0]} points, d = {x.shape[1]}, eps = {eps}")
    print(f"{'implementation':<42}{'time (ms)':>10}{'Gpairs/s':>10}{'max |err| vs fp64':>20}")
    for name, fn in rows:
        seconds = _best_time(fn)
        err = (fn().double() - exact).abs().max().item()
        print(f"{name:<42}{seconds * 1e3:>10.3f}{pairs / seconds / 1e9:>10.2f}{err:>20.2e}")


def main() -> int:
    import lossval_fast

    info = lossval_fast.info()
    print(f"lossval_fast {info['version']} | torch {info['torch']} | {info['threads']} threads | "
          f"CPU kernels: {info['cpu_capability']}\n")
    _valuation_table()
    _primitive_table()
    return 0
