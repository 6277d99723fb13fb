"""LossVal on CPU: one epoch (1000 training points, 100 validation points, 48 features of the pol data, batch 32,
the paper's 5 x 100 MLP) with our estimator against the reference eager loop (the authors' LossVal_MLP.fit with
geomloss' tensorized Sinkhorn), side by side; and one epoch at scale (1,000,000 x 32 points, 10,000 validation
points) with the validation side cached (diameter="global"), with time and peak memory.

    cd bench && python -m pytest test_lossval.py        (results in bench/results/lossval_cpu.{json,md})
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lossval_fast.models import paper_mlp
from lossval_fast.valuation.lossval import LossVal

from conftest import annotate, markdown, record, rows
from memory import peak_bytes

SUITE = "lossval_cpu"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pol_split(n_train=1000, n_val=100, seed=0):
    path = SHARED / "pol.csv.gz"
    if path.exists():
        import pandas as pd
        table = pd.read_csv(path)
        X, y = table.drop(columns="target").to_numpy(np.float64), table["target"].to_numpy(np.int64)
    else:  # outside the workspace: the bundled subset
        from lossval_fast.datasets import load_bundled_pol
        X, y = load_bundled_pol()
    std = X.std(0)
    X = ((X - X.mean(0)) / np.where(std > 0, std, 1)).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(X))
    tr, va = order[:n_train], order[n_train:n_train + n_val]
    return X[tr], y[tr], X[va], y[va]


def reference_epoch(Xt, yt, Xv, epochs=1, seed=0):
    """The authors' loop (LossVal_MLP.fit, "Weighted CE loss with squared Sinkhorn") with geomloss."""
    from geomloss import SamplesLoss
    from torch.utils.data import DataLoader, TensorDataset

    X, Xval = torch.tensor(Xt), torch.tensor(Xv)
    onehot = torch.nn.functional.one_hot(torch.tensor(yt), 2).float()
    torch.manual_seed(seed)
    net = paper_mlp(X.shape[1], 2, "classification")
    data_weights = torch.nn.Parameter(torch.ones(len(X)))
    optimizer = torch.optim.Adam([data_weights, *net.parameters()], lr=0.01)
    loader = DataLoader(TensorDataset(torch.arange(len(X)), X, onehot), 32, shuffle=True)
    steps = 0
    for _ in range(epochs):
        for idx, xb, yb in loader:
            optimizer.zero_grad()
            loss = -torch.sum(yb * torch.log(net(xb) + 1e-8), dim=1)
            weights = data_weights.index_select(0, idx)
            weighted = torch.sum(weights @ loss)
            max_distance = torch.cdist(xb, Xval, p=2).max().item()
            dist = SamplesLoss(loss="sinkhorn", diameter=max_distance * 1.1)(weights, xb, torch.ones(len(Xval)), Xval)
            (weighted * torch.abs(dist) ** 2).backward()
            optimizer.step()
            steps += 1
    return data_weights.detach().numpy(), steps


@pytest.mark.parametrize("implementation", ["reference-geomloss", "ours"])
def test_lossval_epoch(benchmark, implementation):
    Xt, yt, Xv, yv = pol_split()
    benchmark.group = "LossVal epoch, 1000 train / 100 val / 48 features, batch 32"
    if implementation == "ours":
        def run():
            est = LossVal(epochs=1, random_state=0, verbose=False).fit(Xt, yt, Xv, yv)
            return est.values_, est.n_steps_
    else:
        def run():
            return reference_epoch(Xt, yt, Xv)
    rounds = 3 if os.environ.get("LOSSVAL_FAST_BENCH_QUICK") == "1" else 5
    values, steps = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.min
    # ours against the float64 plain port after the same epoch (same seed, same batches)
    exact = LossVal(epochs=1, random_state=0, verbose=False, dtype=torch.float64).fit(Xt, yt, Xv, yv).values_
    error = float(np.abs(values - exact).max()) if implementation == "ours" else None
    record(SUITE, implementation=implementation, work="epoch 1000/100/48", seconds_min=seconds,
           seconds_median=benchmark.stats.stats.median, ms_per_step=1e3 * seconds / steps, steps=steps,
           max_abs_error_vs_float64=error, precision="float32", peak_mib=None)


def test_lossval_scale_epoch(benchmark):
    """1,000,000 x 32 training points, 10,000 validation points: memory beyond the data stays flat."""
    if os.environ.get("LOSSVAL_FAST_BENCH_QUICK") == "1":
        pytest.skip("quick run")
    g = torch.Generator().manual_seed(0)
    n, m, d = 1_000_000, 10_000, 32
    X = torch.randn(n, d, generator=g)
    y = (X[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long()
    Xv = torch.randn(m, d, generator=g)
    yv = (Xv[:, 0] > 0).long()
    data_mib = (X.numel() + Xv.numel()) * 4 / 2**20
    benchmark.group = "LossVal epoch at scale"

    def run():
        return LossVal(epochs=1, random_state=0, diameter="global", verbose=False).fit(X, y, Xv, yv)

    start = time.perf_counter()
    est, peak = peak_bytes(run)
    seconds = time.perf_counter() - start
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    record(SUITE, implementation="ours (diameter='global', cached validation side)",
           work=f"epoch {n}/{m}/{d}", seconds_min=seconds, seconds_median=seconds,
           ms_per_step=1e3 * seconds / est.n_steps_, steps=est.n_steps_, max_abs_error_vs_float64=None,
           precision="float32", peak_mib=peak / 2**20, data_mib=data_mib)


def _markdown(payload):
    meta = payload["machine"]
    lines = [f"# LossVal on CPU ({meta['cpu']}, {meta['threads']} threads, {meta['cpu_capability']}, torch "
             f"{meta['torch']}, commit {meta['commit']})", "",
             "Faithful configuration (batch 32, lr 0.01, blur 0.05, scaling 0.5, per-batch diameter, unnormalised "
             "masses, the paper's 5 x 100 MLP), float32; error = max |values - values of the float64 run| after "
             "the same epoch.", "",
             "| work | implementation | epoch (s) | ms / step | steps | error vs fp64 | peak memory above start (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        err = "" if r["max_abs_error_vs_float64"] is None else f"{r['max_abs_error_vs_float64']:.1e}"
        peak = "" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f} (data {r.get('data_mib', 0):.0f})"
        lines.append(f"| {r['work']} | {r['implementation']} | {r['seconds_min']:.3f} | {r['ms_per_step']:.2f} | "
                     f"{r['steps']} | {err} | {peak} |")
    speedup = payload["info"].get("speedup_vs_reference")
    if speedup:
        lines += ["", f"Speed-up per epoch against the reference loop: **{speedup:.1f}x**."]
    return "\n".join(lines) + "\n"


def test_report():
    by = {r["implementation"]: r for r in rows(SUITE)}
    if "ours" in by and "reference-geomloss" in by:
        annotate(SUITE, speedup_vs_reference=by["reference-geomloss"]["seconds_min"] / by["ours"]["seconds_min"])
    markdown(SUITE, _markdown)
