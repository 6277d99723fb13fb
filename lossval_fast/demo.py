"""`python -m lossval_fast demo` (`make demo`): the main job on the bundled data set.

`evaluate` on the bundled pol subset (4,000 rows of OpenML 722, see lossval_fast/data/README.md for its source and
licence): 1000 train / 100 validation / 2900 test points, z-scored, 10 % of the training and validation labels
flipped, valued by LossVal (the paper's configuration), EcoVal, KNN-Shapley and random values, three runs. Prints
the F1 / time table and where the report and plots are; then the speed of the pairwise primitive against the
plain torch computation.
"""
from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import torch


def best_time(fn, repeats: int = 5) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up call (also bench/machine_floor.py's timer)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _valuation(out, runs: int, epochs: int, quiet: bool) -> None:
    from lossval_fast.datasets import load_bundled_pol
    from lossval_fast.evaluation import MethodOptions, evaluate, results_table, write_report

    X, y = load_bundled_pol()
    print(f"evaluate: bundled pol subset ({len(X)} rows, {X.shape[1]} features; OpenML 722 via PMLB), "
          f"1000 train / 100 valid / {len(X) - 1100} test, label noise 10 % on train and valid, {runs} runs")
    say = (lambda message: None) if quiet else (lambda message: print("  " + message, flush=True))
    results = evaluate(X, y, task="classification", noise="label", rate=0.1, runs=runs, n_train=1000, n_valid=100,
                       seed=0, options=MethodOptions(epochs=epochs), device="auto", data_name="bundled pol subset",
                       progress=say)
    out = out or tempfile.mkdtemp(prefix="lossval-fast-demo-")
    paths = write_report(results, out)
    print()
    print(results_table(results))
    print(f"\n{runs} runs in {results['wall_time_s']:.1f} s. Report: {paths['report']}")
    print(f"plots: {paths['discovery']} (noisy-point discovery), {paths['removal']} (point removal)")
    print(f"same from the command line: lossval-fast evaluate bundled:pol --noise label --rate 0.1 --runs {runs} "
          f"--epochs {epochs} --out {out}")


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
        seconds = best_time(fn)
        err = (fn().double() - exact).abs().max().item()
        print(f"{name:<42}{seconds * 1e3:>10.3f}{pairs / seconds / 1e9:>10.2f}{err:>20.2e}")


def main(out=None, runs: int = 3, epochs: int = 30, speed: bool = True, quiet: bool = False) -> int:
    import lossval_fast

    start = time.perf_counter()
    info = lossval_fast.info()
    print(f"lossval_fast {info['version']} | torch {info['torch']} | {info['threads']} threads | "
          f"CPU kernels: {info['cpu_capability']}\n", flush=True)
    _valuation(out, runs, epochs, quiet)
    if speed:
        _primitive_table()
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s")
    sys.stdout.flush()
    return 0
