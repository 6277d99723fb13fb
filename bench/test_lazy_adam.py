"""The weight vector's Adam step on CPU: torch's dense fused Adam over all n weights (what the faithful LossVal step
does: every weight moves every step) against the lazy kernel over the batch's 32 entries (csrc/cpu/lazy_adam.h), in
the regime that costs it most (the second epoch: every entry has momentum and ~n/32 steps of pending updates), one
thread, float32. Error: the weights after two epochs of random batch gradients (n = 20,000, batch 32), lazy float32
and dense float32 each against the dense float64 run.

    cd bench && python -m pytest test_lazy_adam.py        (results in bench/results/lazy_adam_cpu.{json,md})
"""
from __future__ import annotations

import os

import pytest
import torch

import lossval_fast  # noqa: F401  (registers the ops)

from conftest import annotate, markdown, record, rows

SUITE = "lazy_adam_cpu"
LR, BETA1, BETA2, EPS, BATCH = 1e-2, 0.9, 0.999, 1e-8, 32
SIZES = [100_000, 1_000_000] if os.environ.get("LOSSVAL_FAST_BENCH_QUICK") == "1" else [100_000, 1_000_000,
                                                                                          10_000_000]


def _second_epoch_state(n, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    w = torch.rand(n, generator=g, dtype=dtype) + 0.5
    m = torch.randn(n, generator=g, dtype=dtype) * 1e-3
    v = torch.rand(n, generator=g, dtype=dtype) * 1e-4
    steps = -(-n // BATCH)
    last = torch.randint(1, steps + 1, (n,), generator=g)  # each entry's step in the first epoch
    return w, m, v, last, steps


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["dense fused Adam (torch)", "lazy (ours)"])
def test_weight_adam_step(benchmark, kind, n):
    torch.set_num_threads(1)
    w, m, v, last, steps = _second_epoch_state(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    grad_rows = torch.randn(BATCH)
    benchmark.group = f"the weights' Adam step, n = {n:,}"
    state = {"t": steps, "k": 0}
    if kind.startswith("dense"):
        grad = torch.zeros(n)
        count = torch.tensor(float(steps))

        def step():
            idx = order[state["k"] * BATCH:(state["k"] + 1) * BATCH]
            grad.index_copy_(0, idx, grad_rows)
            count.add_(1)
            torch._fused_adam_([w], [grad], [m], [v], [], [count], lr=LR, beta1=BETA1, beta2=BETA2,
                               weight_decay=0.0, eps=EPS, amsgrad=False, maximize=False)
            grad.index_fill_(0, idx, 0.0)
            state["k"] += 1
    else:
        op = torch.ops.lossval_fast.lazy_adam

        def step():
            idx = order[state["k"] * BATCH:(state["k"] + 1) * BATCH]
            state["t"] += 1
            op(w, m, v, last, idx, torch.tensor([state["t"]]), grad_rows, LR, BETA1, BETA2, EPS, True)
            state["k"] += 1
    benchmark.pedantic(step, rounds=30 if n >= 10_000_000 else 200, iterations=1, warmup_rounds=3)
    s = benchmark.stats.stats
    record(SUITE, kind=kind, n=n, ms_min=1e3 * s.min, ms_median=1e3 * s.median, precision="float32",
           memory_mib=(4 * n * (3 if kind.startswith("lazy") else 4) + (8 * n if kind.startswith("lazy") else 0))
           / 2**20)


def _run(n, epochs, dtype, lazy):
    """`epochs` epochs of random batch gradients through the dense or the lazy Adam; the final weights."""
    g = torch.Generator().manual_seed(2)
    w, m, v = torch.ones(n, dtype=dtype), torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype)
    last = torch.zeros(n, dtype=torch.int64)
    count, t = torch.tensor(0.0), 0
    grad = torch.zeros(n, dtype=dtype)
    for _ in range(epochs):
        for idx in torch.split(torch.randperm(n, generator=g), BATCH):
            rows = torch.randn(len(idx), generator=g, dtype=torch.float64).to(dtype) * 0.1
            t += 1
            if lazy:
                torch.ops.lossval_fast.lazy_adam(w, m, v, last, idx, torch.tensor([t]), rows, LR, BETA1, BETA2, EPS,
                                                 True)
            else:
                grad.index_copy_(0, idx, rows)
                count.add_(1)
                torch._fused_adam_([w], [grad], [m], [v], [], [count], lr=LR, beta1=BETA1, beta2=BETA2,
                                   weight_decay=0.0, eps=EPS, amsgrad=False, maximize=False)
                grad.zero_()
    if lazy:  # settle: every entry to the last step
        torch.ops.lossval_fast.lazy_adam(w, m, v, last, torch.arange(n), torch.tensor([t]), None, LR, BETA1, BETA2,
                                         EPS, True)
    return w.double()


def test_error_against_float64():
    n = 20_000
    exact = _run(n, 2, torch.float64, lazy=False)
    errors = {name: float((_run(n, 2, dtype, lazy) - exact).abs().max())
              for name, dtype, lazy in (("lazy float32", torch.float32, True),
                                        ("dense float32", torch.float32, False),
                                        ("lazy float64", torch.float64, True))}
    moved = float((exact - 1).abs().max())
    annotate(SUITE, errors=errors, largest_move=moved, error_n=n)
    assert moved > 1e-2 and errors["lazy float64"] < 1e-12 and errors["lazy float32"] < 1e-5


def _markdown(payload):
    meta, info = payload["machine"], payload["info"]
    lines = [f"# The weight vector's Adam step on CPU ({meta['cpu']}, 1 thread, {meta['cpu_capability']}, torch "
             f"{meta['torch']}, commit {meta['commit']})", "",
             "One LossVal step's Adam over the weight vector, float32, batch 32, in the second epoch (every entry "
             "has momentum and ~n / 32 steps of pending zero-gradient updates): torch's fused Adam over all n "
             "weights (what a dense step does) against the lazy kernel over the batch's entries.", "",
             "| n | dense fused Adam (ms) | lazy (ms) | speed-up | state memory dense / lazy (MiB) |",
             "|---|---|---|---|---|"]
    by = {(r["kind"], r["n"]): r for r in payload["rows"]}
    for n in sorted({r["n"] for r in payload["rows"]}):
        dense, lazy = by.get(("dense fused Adam (torch)", n)), by.get(("lazy (ours)", n))
        if dense and lazy:
            lines.append(f"| {n:,} | {dense['ms_median']:.3f} | {lazy['ms_median']:.3f} | "
                         f"{dense['ms_median'] / lazy['ms_median']:.1f}x | {dense['memory_mib']:.0f} / "
                         f"{lazy['memory_mib']:.0f} |")
    if "errors" in info:
        e = info["errors"]
        lines += ["", f"Error against the dense float64 Adam after two epochs (n = {info['error_n']:,}, weights moved "
                  f"by up to {info['largest_move']:.2f}): lazy float32 {e['lazy float32']:.1e}, dense float32 "
                  f"{e['dense float32']:.1e}, lazy float64 {e['lazy float64']:.1e}.",
                  "", "Medians of pytest-benchmark rounds. The dense step is memory-bound (it reads and writes "
                  "16 bytes per weight); the lazy one costs the same at any n."]
    return "\n".join(lines) + "\n"


def test_report():
    if rows(SUITE):
        markdown(SUITE, _markdown)
