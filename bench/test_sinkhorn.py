"""Sinkhorn divergence on CPU, peers side by side in one run: geomloss 0.3.1 tensorized, POT's log-domain
Sinkhorn (100 iterations, cost given), the plain torch loop (lossval_fast.reference, what geomloss does written out)
and ours (C++: stored costs where they fit the memory budget, online otherwise). Forward and forward+backward,
time, peak memory and the error against float64. KeOps (geomloss' online backend) is not installed here.

    cd bench && python -m pytest test_sinkhorn.py        (results in bench/results/sinkhorn_cpu.{json,md})
"""
from __future__ import annotations

import os

import pytest
import torch

import lossval_fast  # noqa: F401
from lossval_fast import ops, reference

from conftest import annotate, markdown, record, rows
from memory import peak_bytes

SUITE = "sinkhorn_cpu"
BLUR, SCALING = 0.05, 0.5
# (n, m, d); peers only where they fit and finish in reasonable time on 2 cores
SHAPES = [(32, 100, 48), (128, 2000, 32), (2048, 2048, 32), (4096, 4096, 64), (16384, 16384, 64)]
PEER_LIMIT = {"geomloss": 4096 * 4096, "naive-torch": 2048 * 2048, "pot": 4096 * 4096}
QUICK = os.environ.get("LOSSVAL_FAST_BENCH_QUICK") == "1"
if QUICK:  # up to 2048 x 2048, fewer rounds (below), POT (17 s a call at 2048 x 2048) on the smaller shapes only
    SHAPES = SHAPES[:3]
    PEER_LIMIT = {**PEER_LIMIT, "pot": 128 * 2000}
_DATA: dict = {}


def data(n, m, d):
    if (n, m, d) not in _DATA:
        g = torch.Generator().manual_seed(n + m + d)
        x = torch.randn(n, d, generator=g)
        y = torch.randn(m, d, generator=g) + 0.2
        a, b = torch.ones(n), torch.ones(m)  # LossVal's faithful (unnormalised) masses
        _DATA[(n, m, d)] = (a, x, b, y)
    return _DATA[(n, m, d)]


def exact_value(n, m, d):
    """float64 value and gradient w.r.t. a (ours in float64 matches geomloss float64 to 1e-12, tests/)."""
    key = ("exact", n, m, d)
    if key not in _DATA:
        a, x, b, y = (t.double() for t in data(n, m, d))
        a = a.requires_grad_()
        value = ops.sinkhorn_divergence(a, x, b, y, blur=BLUR, scaling=SCALING, cost="online"
                                        if n * m > 4096 * 4096 else "auto")
        _DATA[key] = (value.item(), torch.autograd.grad(value, a)[0])
    return _DATA[key]


def geomloss_fn(a, x, b, y):
    from geomloss import SamplesLoss
    return SamplesLoss("sinkhorn", p=2, blur=BLUR, scaling=SCALING, backend="tensorized")(a, x, b, y)


def pot_fn(a, x, b, y):
    import ot
    cost = reference.half_sqdist(x, y)
    return ot.sinkhorn2(a / a.sum(), b / b.sum(), cost, BLUR**2, method="sinkhorn_log", numItermax=100,
                        stopThr=0.0)


IMPLEMENTATIONS = {
    "ours": lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, blur=BLUR, scaling=SCALING, validate=False),
    "ours-online": lambda a, x, b, y: ops.sinkhorn_divergence(a, x, b, y, blur=BLUR, scaling=SCALING,
                                                              cost="online", validate=False),
    "geomloss": geomloss_fn,
    "naive-torch": lambda a, x, b, y: reference.sinkhorn_divergence(a, x, b, y, blur=BLUR, scaling=SCALING),
    "pot": pot_fn,
}


def cases():
    out = []
    for n, m, d in SHAPES:
        for impl in IMPLEMENTATIONS:
            if impl in PEER_LIMIT and n * m > PEER_LIMIT[impl]:
                continue
            if impl == "ours-online" and n * m < 2048 * 2048:
                continue
            for mode in (("fwd",) if impl == "pot" else ("fwd", "fwd+bwd")):
                out.append(pytest.param(n, m, d, impl, mode, id=f"{n}x{m}x{d}-{impl}-{mode}"))
    return out


@pytest.mark.parametrize("n,m,d,impl,mode", cases())
def test_sinkhorn(benchmark, n, m, d, impl, mode):
    a, x, b, y = data(n, m, d)
    fn = IMPLEMENTATIONS[impl]
    benchmark.group = f"sinkhorn {n}x{m} d={d} {mode}"

    def run():
        if mode == "fwd":
            with torch.no_grad():
                return fn(a, x, b, y)
        ai, xi = a.clone().requires_grad_(), x.clone().requires_grad_()
        value = fn(ai, xi, b, y)
        value.backward()
        return value.detach(), ai.grad

    big = n * m >= 4096 * 4096 or impl == "pot" and n * m >= 2048 * 2048
    rounds = 1 if big else (3 if n * m >= 1 << 20 else 20)
    if QUICK:  # the memory run just before is the warm-up
        rounds, warmup = (1 if n * m >= 1 << 20 else 3 if n * m >= 1 << 16 else 10), 0
    else:
        warmup = 0 if big else 1
    result, peak = peak_bytes(run)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)
    value = result[0] if isinstance(result, tuple) else result
    if impl == "pot":
        error = None  # a different quantity (entropic OT of normalised masses, not the debiased divergence)
    else:
        exact, exact_grad = exact_value(n, m, d)
        error = abs(float(value) - exact) / max(1.0, abs(exact))
        if mode == "fwd+bwd":
            error = max(error, ((result[1].double() - exact_grad).abs().max() / exact_grad.abs().max()).item())
    record(SUITE, shape=f"{n}x{m}x{d}", n=n, m=m, d=d, implementation=impl, mode=mode,
           seconds_min=benchmark.stats.stats.min, seconds_median=benchmark.stats.stats.median,
           peak_mib=peak / 2**20, rel_error_vs_float64=error, precision="float32")


def _ratios(payload):
    by = {(r["shape"], r["implementation"], r["mode"]): r for r in payload["rows"]}
    out = {}
    for n, m, d in SHAPES:
        shape = f"{n}x{m}x{d}"
        ours = by.get((shape, "ours", "fwd+bwd"))
        peer = by.get((shape, "geomloss", "fwd+bwd"))
        if ours and peer:
            out[shape] = peer["seconds_min"] / ours["seconds_min"]
    return out


def _markdown(payload):
    meta = payload["machine"]
    lines = [f"# Sinkhorn divergence on CPU ({meta['cpu']}, {meta['threads']} threads, {meta['cpu_capability']}, "
             f"torch {meta['torch']}, commit {meta['commit']})", "",
             f"blur = {BLUR}, scaling = {SCALING}, p = 2, debias, unnormalised masses (LossVal's configuration), "
             "float32 everywhere; error = relative error of the value (and of dS/da for fwd+bwd) against float64.",
             "POT runs 100 log-domain iterations on the stored cost with normalised masses: a different quantity, "
             "timed for scale only.", "",
             "| shape | implementation | mode | min time (s) | median (s) | peak memory (MiB) | rel. error vs fp64 |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        err = "" if r["rel_error_vs_float64"] is None else f"{r['rel_error_vs_float64']:.1e}"
        lines.append(f"| {r['shape']} | {r['implementation']} | {r['mode']} | {r['seconds_min']:.4f} | "
                     f"{r['seconds_median']:.4f} | {r['peak_mib']:.0f} | {err} |")
    lines += ["", "| shape | geomloss fwd+bwd / ours fwd+bwd |", "|---|---|"]
    for shape, ratio in payload["info"].get("speedup_vs_geomloss", {}).items():
        lines.append(f"| {shape} | {ratio:.1f}x |")
    return "\n".join(lines) + "\n"


def test_report():
    annotate(SUITE, speedup_vs_geomloss=_ratios({"rows": rows(SUITE)}))
    markdown(SUITE, _markdown)
