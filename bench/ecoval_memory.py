"""EcoVal's memory by phase (issue 14): RssAnon growth of one EcoVal(20, propagation="multiplicative") fit above the
level with the input loaded, sampled every 2 ms by a thread, split by the fit's own timings into the clustering
phase, the trainings and the values; also what stays after the fit, and the times. 1 thread. Data: n x 32 float32
standard normal features, y = x_0 + 0.3 noise > 0, 10,000 validation points (the scale benchmark's recipe).

    python bench/ecoval_memory.py 1000000 [values.npz] [--propagation additive]
        one JSON line; values.npz: values_, cluster_values_, cluster_labels_ and utilities_, to compare two
        versions; --propagation: the values' rule (default multiplicative, as the scale benchmark; EcoVal's own
        default, additive, searches all training points in the values phase and holds their standardised copy)

docs/large_scale.md §6 has its numbers at 1,000,000 points.
"""
from __future__ import annotations

import array
import json
import os
import threading
import time

import numpy as np
import torch


def anon() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def data(n: int, d: int = 32, m: int = 10_000):
    rng = np.random.default_rng(0)
    X = np.empty((n, d), np.float32)
    y = np.empty(n, np.int64)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        X[lo:hi] = rng.standard_normal((hi - lo, d), dtype=np.float32)
        y[lo:hi] = X[lo:hi, 0] + 0.3 * rng.standard_normal(hi - lo) > 0
    Xv = rng.standard_normal((m, d), dtype=np.float32)
    yv = (Xv[:, 0] + 0.3 * rng.standard_normal(m) > 0).astype(np.int64)
    return X, y, Xv, yv


def main(n: int, out: str | None = None, propagation: str = "multiplicative") -> dict:
    from lossval_fast._io import atomic_write
    from lossval_fast.valuation.ecoval import EcoVal

    torch.set_num_threads(1)
    X, y, Xv, yv = data(n)
    EcoVal(4, n_init=1, propagation="multiplicative", verbose=False).fit(X[:2000], y[:2000], Xv[:500], yv[:500])
    # the samples in two flat arrays (16 bytes each): a list of tuples grew by ~120 bytes a sample, ~18 MiB over a
    # 1,000,000-point fit, counted in the RssAnon it measures
    times, sizes, stop = array.array("d"), array.array("q"), threading.Event()

    def sample():
        while not stop.is_set():
            times.append(time.perf_counter())
            sizes.append(anon())
            time.sleep(0.002)

    est = EcoVal(20, propagation=propagation, verbose=False)
    before = anon()
    thread = threading.Thread(target=sample)
    start = time.perf_counter()
    thread.start()
    est.fit(X, y, Xv, yv)
    end = time.perf_counter()
    time.sleep(0.05)
    stop.set()
    thread.join()
    after = anon()
    clustered, trained = start + est.timings_["clustering"], end - est.timings_["values"]

    def peak(lo, hi):
        inside = [s for t, s in zip(times, sizes) if lo <= t <= hi]
        return (max(inside) - before) / 2**20 if inside else float("nan")

    mib = X.nbytes / 2**20
    result = {"n": n, "input_mib": mib, "peak_mib": peak(start, end + 1), "kmeans_mib": peak(start, clustered),
              "trainings_mib": peak(clustered, trained), "values_mib": peak(trained, end + 1),
              "held_mib": (after - before) / 2**20, "timings_s": est.timings_, "wall_s": end - start,
              "propagation": propagation, "load": os.getloadavg()}
    result["peak_x_input"] = result["peak_mib"] / mib
    if out:
        with atomic_write(out, "wb") as f:
            np.savez(f, values=est.values_, cluster_values=est.cluster_values_, labels=est.cluster_labels_,
                     utilities=est.utilities_)
    return result


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=1_000_000, help="training points (default 1,000,000)")
    parser.add_argument("out", nargs="?", default=None, help="values.npz to write (optional)")
    parser.add_argument("--propagation", choices=("multiplicative", "additive"), default="multiplicative")
    args = parser.parse_args()
    print(json.dumps(main(args.n, args.out, args.propagation)))
