"""k-means on CPU: ours (C++ fused assignment + update pass, `ops.kmeans`) against scikit-learn's
`KMeans(algorithm="lloyd", n_init=1, init=<the same centroids>, max_iter=20, tol=0)`, side by side in one run.
float32 data (overlapping Gaussian blobs, so that labels keep changing for all 20 iterations), the same initial
centroids (seeded random rows) for both, 2 threads for both (torch.set_num_threads, threadpoolctl for
scikit-learn). Reports the time for 20 Lloyd iterations, the inertia of both, their relative difference and that
of each against a float64 run of the reference Lloyd from the same centroids, the speed ratio, and the CPU time
per wall second (how many threads really worked).

    cd bench && python -m pytest test_kmeans.py        (results in bench/results/kmeans_cpu.{json,md})
"""
from __future__ import annotations

import contextlib
import os
import time

import pytest
import torch

import lossval_fast  # noqa: F401
from lossval_fast import ops, reference

from conftest import QUICK, THREADS, annotate, markdown, record, rows

SUITE = "kmeans_cpu"
SHAPES = [(100_000, 32, 64), (1_000_000, 16, 20)]  # (n, d, K)
ITERATIONS = 20
IMPLEMENTATIONS = ["ours-cpp", "sklearn-lloyd"]
_DATA: dict = {}

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # scikit-learn's OpenMP then follows OMP_NUM_THREADS
    threadpool_limits = None
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


def sklearn_threads():
    return threadpool_limits(limits=THREADS) if threadpool_limits is not None else contextlib.nullcontext()


def data(n, d, k):
    """Overlapping blobs (centres 3 sigma apart on average) and K random rows as the initial centroids."""
    if (n, d, k) not in _DATA:
        g = torch.Generator().manual_seed(n + d + k)
        centres = 1.5 * torch.randn(k, d, generator=g)
        x = centres[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, d, generator=g)
        init = x[torch.randperm(n, generator=g)[:k]].clone()
        _DATA[(n, d, k)] = (x.contiguous(), init)
    return _DATA[(n, d, k)]


def exact_inertia(n, d, k):
    key = ("exact", n, d, k)
    if key not in _DATA:
        x, init = data(n, d, k)
        _DATA[key] = reference.kmeans_lloyd(x.double(), init.double(), ITERATIONS, 0.0)[2]
    return _DATA[key]


def timed(benchmark, run):
    """pytest-benchmark rounds, plus the CPU seconds per wall second of the last round."""
    result = benchmark.pedantic(run, rounds=3 if QUICK else 5, iterations=1, warmup_rounds=1)
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return result, (time.process_time() - cpu) / (time.perf_counter() - wall)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("n,d,k", SHAPES, ids=[f"{n}x{d}-K{k}" for n, d, k in SHAPES])
def test_kmeans_20_iterations(benchmark, n, d, k, implementation):
    x, init = data(n, d, k)
    benchmark.group = f"k-means {n}x{d} K={k}, {ITERATIONS} iterations"
    if implementation == "ours-cpp":
        def run():
            result = ops.kmeans(x, k, init=init, max_iter=ITERATIONS, tol=0.0, backend="cpp", validate=False)
            return result.inertia, result.n_iter
    else:
        sklearn_cluster = pytest.importorskip("sklearn.cluster")
        xn, initn = x.numpy(), init.numpy()

        def run():
            with sklearn_threads():
                model = sklearn_cluster.KMeans(k, init=initn, n_init=1, max_iter=ITERATIONS, tol=0.0,
                                               algorithm="lloyd").fit(xn)
            return float(model.inertia_), int(model.n_iter_)
    (inertia, n_iter), busy = timed(benchmark, run)
    exact = exact_inertia(n, d, k)
    seconds = benchmark.stats.stats.min
    benchmark.extra_info.update(inertia=inertia, n_iter=n_iter, rel_inertia_vs_float64=abs(inertia - exact) / exact)
    record(SUITE, implementation=implementation, n=n, d=d, k=k, n_iter=n_iter, seconds_min=seconds,
           seconds_median=benchmark.stats.stats.median, ms_per_iteration=1e3 * seconds / n_iter, inertia=inertia,
           inertia_float64_reference=exact, rel_inertia_vs_float64=abs(inertia - exact) / exact,
           cpu_seconds_per_wall_second=busy, precision="float32")


PAIRS = 3 if QUICK else 7


@pytest.mark.parametrize("n,d,k", SHAPES, ids=[f"{n}x{d}-K{k}" for n, d, k in SHAPES])
def test_kmeans_paired_ratio(benchmark, n, d, k):
    """The two implementations alternated, one of each per pair, PAIRS times: the load of this shared machine
    drifts over seconds, so the ratio within a pair (run back to back) is steadier than the ratio of two
    benchmarks run one after the other. Reports the median and the range of the per-pair ratios."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    x, init = data(n, d, k)
    xn, initn = x.numpy(), init.numpy()

    def ours():
        return ops.kmeans(x, k, init=init, max_iter=ITERATIONS, tol=0.0, backend="cpp", validate=False).inertia

    def theirs():
        with sklearn_threads():
            return float(sklearn_cluster.KMeans(k, init=initn, n_init=1, max_iter=ITERATIONS, tol=0.0,
                                                algorithm="lloyd").fit(xn).inertia_)

    ours(), theirs()  # warm-up
    ratios = []
    for pair in range(PAIRS):
        order = (ours, theirs) if pair % 2 == 0 else (theirs, ours)  # neither always runs first
        seconds = {}
        for run in order:
            start = time.perf_counter()
            run()
            seconds[run] = time.perf_counter() - start
        ratios.append(seconds[theirs] / seconds[ours])
    ratios.sort()
    benchmark.group = f"k-means {n}x{d} K={k}, paired"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    record(SUITE, implementation="paired", n=n, d=d, k=k, pairs=PAIRS, ratio_median=ratios[PAIRS // 2],
           ratio_min=ratios[0], ratio_max=ratios[-1], ratios=ratios)


def _comparisons(payload) -> dict:
    by = {(r["implementation"], r["n"], r["d"], r["k"]): r for r in payload["rows"]}
    out = {}
    paired = {(r["n"], r["d"], r["k"]): r for r in payload["rows"] if r["implementation"] == "paired"}
    for n, d, k in SHAPES:
        ours, theirs = by.get(("ours-cpp", n, d, k)), by.get(("sklearn-lloyd", n, d, k))
        if not (ours and theirs):
            continue
        out[f"{n}x{d} K={k}"] = {
            "speedup_vs_sklearn": theirs["seconds_min"] / ours["seconds_min"],
            "speedup_vs_sklearn_median": theirs["seconds_median"] / ours["seconds_median"],
            "rel_inertia_difference": abs(ours["inertia"] - theirs["inertia"]) / theirs["inertia"],
            "same_n_iter": ours["n_iter"] == theirs["n_iter"],
        }
        if (n, d, k) in paired:
            p = paired[(n, d, k)]
            out[f"{n}x{d} K={k}"].update(paired_median=p["ratio_median"], paired_min=p["ratio_min"],
                                         paired_max=p["ratio_max"], pairs=p["pairs"])
    return out


def _markdown(payload) -> str:
    meta = payload["machine"]
    lines = [f"# k-means on CPU ({meta['cpu']}, {meta['threads']} threads, {meta['cpu_capability']}, "
             f"torch {meta['torch']}, commit {meta['commit']})", "",
             f"{ITERATIONS} Lloyd iterations from the same initial centroids (K seeded random rows), tol = 0, float32 "
             "overlapping blobs. scikit-learn: `KMeans(algorithm=\"lloyd\", n_init=1, init=<centroids>, "
             f"max_iter={ITERATIONS}, tol=0)` under threadpoolctl. Inertia error against a float64 reference Lloyd "
             "from the same centroids. 'CPU/wall' is the CPU seconds per wall second of one run: about the threads "
             "that really worked.", "",
             "| shape | implementation | min (s) | median (s) | ms / iteration | iterations | inertia | "
             "rel. error vs float64 | CPU/wall |", "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        if r["implementation"] == "paired":
            continue
        lines.append(f"| {r['n']}x{r['d']} K={r['k']} | {r['implementation']} | {r['seconds_min']:.3f} | "
                     f"{r['seconds_median']:.3f} | {r['ms_per_iteration']:.1f} | {r['n_iter']} | {r['inertia']:.6g} | "
                     f"{r['rel_inertia_vs_float64']:.1e} | {r['cpu_seconds_per_wall_second']:.2f} |")
    lines += ["", "| shape | speed-up vs scikit-learn (min / median) | paired runs: median (range) | "
              "rel. inertia difference | same iterations |", "|---|---|---|---|---|"]
    for shape, c in payload["info"].get("comparisons", {}).items():
        paired = (f"{c['paired_median']:.2f}x ({c['paired_min']:.2f}-{c['paired_max']:.2f}, {c['pairs']} pairs)"
                  if "paired_median" in c else "")
        lines.append(f"| {shape} | {c['speedup_vs_sklearn']:.2f}x / {c['speedup_vs_sklearn_median']:.2f}x | "
                     f"{paired} | {c['rel_inertia_difference']:.1e} | {'yes' if c['same_n_iter'] else 'no'} |")
    lines += ["", "Paired runs: ours and scikit-learn alternated back to back (the first of a pair alternating too); "
              "the ratio of each pair, median and range over the pairs."]
    return "\n".join(lines) + "\n"


def test_report():
    """Last in the file: ratios to scikit-learn from this run's rows."""
    annotate(SUITE, comparisons=_comparisons({"rows": rows(SUITE)}), iterations=ITERATIONS, threads=THREADS,
             precision="float32 (exact fp32 dot products, float64 cluster sums)")
    markdown(SUITE, _markdown)
