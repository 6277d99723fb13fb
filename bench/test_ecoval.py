"""EcoVal on CPU: p = 20 clusters on 1000 training points of pol (48 features, 500 validation points), learner
"logreg": the 211 subset trainings as one batched model against the loop of 211 separate fits of the same learner
(its single-model version, lossval_fast.valuation.learners.LogReg), both inside the same estimator with the same
clusters, so the difference is the training path alone. Reports both times, the ratio and the largest value
difference; runs at the suite's thread count and, for reference, at 1 thread.

    cd bench && python -m pytest test_ecoval.py        (results in bench/results/ecoval_cpu.{json,md})
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lossval_fast.datasets import load_bundled_pol, load_table
from lossval_fast.valuation.ecoval import EcoVal

from conftest import THREADS, annotate, markdown, record, rows

SUITE = "ecoval_cpu"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
P = 20
THREAD_SETTINGS = sorted({THREADS, 1}, reverse=True)
_OUT: dict = {}


def pol_split(n_train=1000, n_val=500, seed=0):
    path = SHARED / "pol.csv.gz"
    if path.exists():
        X, y, _ = load_table(path)
        source = "shared/data/pol.csv.gz"
    else:  # outside the workspace: the bundled 4000-row subset
        X, y = load_bundled_pol()
        source = "bundled pol_4000"
    order = np.random.default_rng(seed).permutation(len(X))
    tr, va = order[:n_train], order[n_train:n_train + n_val]
    return np.asarray(X, np.float64)[tr], y[tr], np.asarray(X, np.float64)[va], y[va], source


@pytest.fixture(scope="module")
def problem():
    Xt, yt, Xv, yv, source = pol_split()
    est = EcoVal(P, verbose=False).fit(Xt, yt, Xv, yv)      # the clusters both timed runs share
    annotate(SUITE, data=source, n_train=len(Xt), n_val=len(Xv), d=Xt.shape[1], p=est.n_clusters_,
             trainings=int(est.n_trainings_), learner="logreg (L2 1e-3, Newton to ||grad||_inf <= 1e-6, float64)")
    return Xt, yt, Xv, yv, est.cluster_labels_


@pytest.mark.parametrize("threads", THREAD_SETTINGS, ids=lambda t: f"{t}thr")
@pytest.mark.parametrize("path", ["batched", "loop"])
def test_ecoval_trainings(benchmark, problem, path, threads):
    Xt, yt, Xv, yv, labels = problem
    benchmark.group = f"EcoVal p={P}, 1000 pol points, logreg, {threads} thread(s)"
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def run():
            return EcoVal(P, backend=path, verbose=False).fit(Xt, yt, Xv, yv, cluster_labels=labels)
        rounds = 3 if path == "batched" else 1
        est = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1 if path == "batched" else 0)
    finally:
        torch.set_num_threads(before)
    _OUT[(path, threads)] = est
    record(SUITE, path=path, threads=threads, backend=est.backend_, trainings=int(est.n_trainings_),
           seconds_min=benchmark.stats.stats.min, seconds_median=benchmark.stats.stats.median, rounds=rounds,
           ms_per_training=1e3 * benchmark.stats.stats.min / est.n_trainings_)


def test_sklearn_loop_context(benchmark, problem):
    """Context only: the same 211 subsets fitted one by one with scikit-learn's LogisticRegression (lbfgs,
    C = 1 / (l2 n_s), unpenalised intercept): a different solver and a slightly different objective, so its values
    are not compared; what a user without the batched path would typically run."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    Xt, yt, Xv, yv, labels = problem
    benchmark.group = f"EcoVal p={P}, 1000 pol points, context"

    class Scaled(sklearn.LogisticRegression):
        def fit(self, X, y):
            self.C = 1.0 / (1e-3 * len(X))
            return super().fit((X - mu) / sigma, y)

        def predict_proba(self, X):
            return super().predict_proba((X - mu) / sigma)

    mu, sigma = Xt.mean(0), np.where(Xt.std(0) > 0, Xt.std(0), 1.0)
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        est = benchmark.pedantic(lambda: EcoVal(P, Scaled(max_iter=1000), verbose=False).fit(
            Xt, yt, Xv, yv, cluster_labels=labels), rounds=1, iterations=1, warmup_rounds=0)
    finally:
        torch.set_num_threads(before)
    record(SUITE, path="loop, scikit-learn LogisticRegression (context)", threads=THREADS, backend=est.backend_,
           trainings=int(est.n_trainings_), seconds_min=benchmark.stats.stats.min,
           seconds_median=benchmark.stats.stats.median, rounds=1,
           ms_per_training=1e3 * benchmark.stats.stats.min / est.n_trainings_)


def test_full_fit_with_clustering(benchmark, problem):
    """The whole fit as a user runs it (stratified k-means, n_init=10, included), batched path."""
    Xt, yt, Xv, yv, _ = problem
    benchmark.group = f"EcoVal p={P}, full fit"
    est = benchmark.pedantic(lambda: EcoVal(P, verbose=False).fit(Xt, yt, Xv, yv), rounds=3, iterations=1,
                             warmup_rounds=0)
    record(SUITE, path="batched, with k-means", threads=THREADS, backend=est.backend_,
           trainings=int(est.n_trainings_), seconds_min=benchmark.stats.stats.min,
           seconds_median=benchmark.stats.stats.median, rounds=3,
           ms_per_training=1e3 * benchmark.stats.stats.min / est.n_trainings_)


def _comparisons() -> dict:
    out = {}
    times = {(r["path"], r["threads"]): r["seconds_min"] for r in rows(SUITE)}
    for threads in THREAD_SETTINGS:
        batched, loop = _OUT.get(("batched", threads)), _OUT.get(("loop", threads))
        if batched is None or loop is None:
            continue
        out[f"{threads} thread(s)"] = {
            "batched_s": times[("batched", threads)], "loop_s": times[("loop", threads)],
            "speedup": times[("loop", threads)] / times[("batched", threads)],
            "max_abs_value_difference": float(np.abs(batched.values_ - loop.values_).max()),
            "max_abs_utility_difference": float(np.abs(batched.utilities_ - loop.utilities_).max()),
            "max_abs_value": float(np.abs(loop.values_).max()),
        }
    return out


def _markdown(payload) -> str:
    meta, info = payload["machine"], payload["info"]
    lines = [f"# EcoVal on CPU ({meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, commit "
             f"{meta['commit']})", "",
             f"{info.get('data')}: {info.get('n_train')} training / {info.get('n_val')} validation points, "
             f"{info.get('d')} features; p = {info.get('p')} clusters (stratified k-means, fixed for the timed "
             f"runs), all pairs: {info.get('trainings')} trainings of {info.get('learner')}. Both paths run the "
             "same Newton iterations, so their values agree to rounding. On a shared machine the 2-thread rows "
             "swing with the load of other jobs; the 1-thread rows are the steadier ones.", "",
             "| path | threads | backend | trainings | min time (s) | median (s) | ms / training |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['path']} | {r['threads']} | {r['backend']} | {r['trainings']} | {r['seconds_min']:.3f} | "
                     f"{r['seconds_median']:.3f} | {r['ms_per_training']:.2f} |")
    lines += ["", "| threads | batched (s) | loop of single fits (s) | speed-up | max abs value difference | "
              "max abs utility difference |", "|---|---|---|---|---|---|"]
    for key, c in info.get("comparisons", {}).items():
        lines.append(f"| {key} | {c['batched_s']:.3f} | {c['loop_s']:.3f} | **{c['speedup']:.1f}x** | "
                     f"{c['max_abs_value_difference']:.1e} (values up to {c['max_abs_value']:.1e}) | "
                     f"{c['max_abs_utility_difference']:.1e} |")
    return "\n".join(lines) + "\n"


def test_report():
    """Last in the file: ratios and value differences from this run's rows."""
    comparisons = _comparisons()
    annotate(SUITE, comparisons=comparisons)
    markdown(SUITE, _markdown)
    for c in comparisons.values():
        assert c["max_abs_value_difference"] <= 1e-5
