"""EcoVal on CPU: p = 20 clusters on 1000 training points of pol (48 features, 500 validation points), learner
"logreg": the 211 subset trainings as one batched model against the loop of 211 separate fits of the same learner
(its single-model version, lossval_fast.valuation.learners.LogReg, with the same solver), both inside the same
estimator with the same clusters, so the difference is the training path alone. Both solvers are timed: L-BFGS
(the default, ecoval.LOGREG_SOLVER) and Newton. Reports the times, the ratios, the largest value differences
(batched vs loop, and L-BFGS vs Newton), the iteration counts and each solver's distance to the optimum; runs at
the suite's thread count and, for reference, at 1 thread.

    cd bench && python -m pytest test_ecoval.py        (results in bench/results/ecoval_cpu.{json,md})

Quick (LOSSVAL_FAST_BENCH_QUICK=1): p = 10 (56 trainings), the suite's thread count only, one round of the full fit;
the same paths, solvers and checks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lossval_fast.datasets import load_bundled_pol, load_table
from lossval_fast.valuation import ecoval as ecoval_module
from lossval_fast.valuation import learners
from lossval_fast.valuation.ecoval import EcoVal

from conftest import QUICK, THREADS, annotate, markdown, record, rows

SUITE = "ecoval_cpu"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
P = 10 if QUICK else 20
THREAD_SETTINGS = [THREADS] if QUICK else sorted({THREADS, 1}, reverse=True)
REFERENCE_GRAD = 1e-9   # the optimum's largest ||grad||_inf allowed (test_solver_accuracy)
SOLVERS = [ecoval_module.LOGREG_SOLVER] + [s for s in learners.SOLVERS if s != ecoval_module.LOGREG_SOLVER]
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


def _solver_text(solver: str) -> str:
    tol = learners.LBFGS_TOL if solver == "lbfgs" else learners.TOL
    extra = f", memory {learners.LBFGS_MEMORY}" if solver == "lbfgs" else ""
    return f"{solver} to ||grad||_inf <= {tol:g}{extra}"


@pytest.fixture(scope="module")
def problem():
    Xt, yt, Xv, yv, source = pol_split()
    est = EcoVal(P, verbose=False).fit(Xt, yt, Xv, yv)      # the clusters all timed runs share
    annotate(SUITE, data=source, n_train=len(Xt), n_val=len(Xv), d=Xt.shape[1], p=est.n_clusters_,
             trainings=int(est.n_trainings_), default_solver=ecoval_module.LOGREG_SOLVER,
             learner=f"logreg (L2 1e-3, float64; default solver {_solver_text(ecoval_module.LOGREG_SOLVER)})")
    return Xt, yt, Xv, yv, est.cluster_labels_


@pytest.mark.parametrize("threads", THREAD_SETTINGS, ids=lambda t: f"{t}thr")
@pytest.mark.parametrize("path", ["batched", "loop"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_ecoval_trainings(benchmark, problem, solver, path, threads, monkeypatch):
    Xt, yt, Xv, yv, labels = problem
    benchmark.group = f"EcoVal p={P}, 1000 pol points, logreg ({solver}), {threads} thread(s)"
    monkeypatch.setattr(ecoval_module, "LOGREG_SOLVER", solver)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def run():
            return EcoVal(P, backend=path, verbose=False).fit(Xt, yt, Xv, yv, cluster_labels=labels)
        rounds = 3 if path == "batched" else 1
        est = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1 if path == "batched" else 0)
    finally:
        torch.set_num_threads(before)
    assert est.converged_
    _OUT[(solver, path, threads)] = est
    record(SUITE, solver=solver, path=path, threads=threads, backend=est.backend_, trainings=int(est.n_trainings_),
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
    record(SUITE, solver="scikit-learn lbfgs", path="loop, scikit-learn LogisticRegression (context)",
           threads=THREADS, backend=est.backend_, trainings=int(est.n_trainings_),
           seconds_min=benchmark.stats.stats.min, seconds_median=benchmark.stats.stats.median, rounds=1,
           ms_per_training=1e3 * benchmark.stats.stats.min / est.n_trainings_)


def test_full_fit_with_clustering(benchmark, problem):
    """The whole fit as a user runs it (stratified k-means, n_init=10, included), batched path, default solver."""
    Xt, yt, Xv, yv, _ = problem
    benchmark.group = f"EcoVal p={P}, full fit"
    rounds = 1 if QUICK else 3
    est = benchmark.pedantic(lambda: EcoVal(P, verbose=False).fit(Xt, yt, Xv, yv), rounds=rounds, iterations=1,
                             warmup_rounds=0)
    record(SUITE, solver=ecoval_module.LOGREG_SOLVER, path="batched, with k-means", threads=THREADS,
           backend=est.backend_, trainings=int(est.n_trainings_), seconds_min=benchmark.stats.stats.min,
           seconds_median=benchmark.stats.stats.median, rounds=rounds,
           ms_per_training=1e3 * benchmark.stats.stats.min / est.n_trainings_)


def test_solver_accuracy(problem):
    """Not timed: each solver's batched models against the optimum (Newton run to ||grad||_inf <= 1e-10), in
    parameters and in validation log-likelihood (the utility), with the iteration counts."""
    Xt, yt, Xv, yv, labels = problem
    est = EcoVal(P, verbose=False).fit(Xt, yt, Xv, yv, cluster_labels=labels)
    # the features the estimator's learners see: its own standardisation of X and X_val (the estimator keeps no
    # standardised copy of X; Data.standardized() computes the same bits as its trainer's row-block transform)
    X = torch.as_tensor(est._data.standardized())
    y = torch.as_tensor(est._y_code)
    cl = torch.as_tensor(labels)
    removed = torch.as_tensor(est.subsets_)
    Xv_bar = np.column_stack([est._data.Xs_val, np.ones(len(Xv))])
    yv_code = np.searchsorted(est.classes_, yv)

    def utilities(W):
        Z = np.einsum("md,tdc->tmc", Xv_bar, W.numpy())
        Z -= Z.max(2, keepdims=True)
        Pr = np.exp(Z)
        Pr /= Pr.sum(2, keepdims=True)
        return np.log(np.maximum(Pr[:, np.arange(len(yv)), yv_code], 1e-12)).mean(1)

    def gradient_sup(W):
        """||grad||_inf of each model's objective (mean cross-entropy on its rows + l2/2 ||W||^2) at W, computed
        here, independently of the solvers."""
        Xbar = np.column_stack([X.numpy(), np.ones(len(X))])
        masks = (~removed.numpy())[:, labels].astype(np.float64)
        Z = np.einsum("nd,tdc->tnc", Xbar, W.numpy())
        Z -= Z.max(2, keepdims=True)
        Pr = np.exp(Z)
        Pr /= Pr.sum(2, keepdims=True)
        Pr[:, np.arange(len(X)), y.numpy()] -= 1.0
        R = Pr * (masks / masks.sum(1, keepdims=True))[:, :, None]
        return np.abs(np.einsum("nd,tnc->tdc", Xbar, R) + learners.L2 * W.numpy()).max((1, 2))

    # The optimum: Newton to ||grad||_inf <= 1e-10, which is at float64's floor for this objective: a model whose
    # Armijo test finds no decrease of f (~0.3, rounding ~6e-17) left stops short of it, converged False, with a
    # gradient of a few 1e-10 (p = 10: one of 56 models at 6.7e-10, its W within 6e-9 of a longer solve). The
    # reference holds where every model's gradient is <= REFERENCE_GRAD, a tenth of the tightest tolerance measured
    # against it (L-BFGS's 1e-8): the check is on the gradient itself, not on the solver's flag.
    ref = learners.BatchedLogReg(X, y, cl, 2, solver="newton", tol=1e-10).fit(removed, [0] * len(removed))
    reference_grad = float(gradient_sup(ref["W"]).max())
    assert reference_grad <= REFERENCE_GRAD, reference_grad
    u_ref = utilities(ref["W"])
    out = {}
    for solver in SOLVERS:
        fit = learners.BatchedLogReg(X, y, cl, 2, solver=solver).fit(removed, [0] * len(removed))
        assert bool(fit["converged"].all())
        out[solver] = {"settings": _solver_text(solver), "iterations_mean": float(fit["steps"].double().mean()),
                       "iterations_max": int(fit["steps"].max()),
                       "max_abs_W_vs_optimum": float((fit["W"] - ref["W"]).abs().max()),
                       "max_abs_utility_vs_optimum": float(np.abs(utilities(fit["W"]) - u_ref).max())}
    annotate(SUITE, solver_accuracy=out, reference_max_grad=reference_grad,
             reference_not_converged=int((~ref["converged"]).sum()))


def _comparisons() -> dict:
    out = {}
    times = {(r["solver"], r["path"], r["threads"]): r["seconds_min"] for r in rows(SUITE)}
    for solver in SOLVERS:
        for threads in THREAD_SETTINGS:
            batched, loop = _OUT.get((solver, "batched", threads)), _OUT.get((solver, "loop", threads))
            if batched is None or loop is None:
                continue
            out[f"{solver}, {threads} thread(s)"] = {
                "solver": solver, "threads": threads,
                "batched_s": times[(solver, "batched", threads)], "loop_s": times[(solver, "loop", threads)],
                "speedup": times[(solver, "loop", threads)] / times[(solver, "batched", threads)],
                "max_abs_value_difference": float(np.abs(batched.values_ - loop.values_).max()),
                "max_abs_utility_difference": float(np.abs(batched.utilities_ - loop.utilities_).max()),
                "max_abs_value": float(np.abs(loop.values_).max()),
            }
    return out


def _solver_agreement() -> dict:
    """Values of the two solvers' batched runs against each other (same clusters, same subsets)."""
    out = {}
    for threads in THREAD_SETTINGS:
        runs = [_OUT.get((s, "batched", threads)) for s in SOLVERS]
        if len(SOLVERS) == 2 and all(r is not None for r in runs):
            out[f"{threads} thread(s)"] = {
                "max_abs_value_difference": float(np.abs(runs[0].values_ - runs[1].values_).max()),
                "max_abs_utility_difference": float(np.abs(runs[0].utilities_ - runs[1].utilities_).max())}
    return out


def _markdown(payload) -> str:
    meta, info = payload["machine"], payload["info"]
    lines = [f"# EcoVal on CPU ({meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, commit "
             f"{meta['commit']})", "",
             f"{info.get('data')}: {info.get('n_train')} training / {info.get('n_val')} validation points, "
             f"{info.get('d')} features; p = {info.get('p')} clusters (stratified k-means, fixed for the timed "
             f"runs), all pairs: {info.get('trainings')} trainings of {info.get('learner')}. The batched and the "
             "loop path run the same iterations of the same solver, so their values agree to rounding. On a shared "
             "machine the times swing with the load of other jobs, the 2-thread rows most (their BLAS and "
             "elementwise threads wait on each other when a core is taken); the 1-thread rows are the steadier "
             "ones. Compare the rows of one run.", "",
             "| solver | path | threads | backend | trainings | min time (s) | median (s) | ms / training |",
             "|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['solver']} | {r['path']} | {r['threads']} | "
                     f"{r['backend']} | {r['trainings']} | {r['seconds_min']:.3f} | {r['seconds_median']:.3f} | "
                     f"{r['ms_per_training']:.2f} |")
    lines += ["", "| solver, threads | batched (s) | loop of single fits (s) | speed-up | max abs value difference | "
              "max abs utility difference |", "|---|---|---|---|---|---|"]
    for key, c in info.get("comparisons", {}).items():
        lines.append(f"| {key} | {c['batched_s']:.3f} | {c['loop_s']:.3f} | **{c['speedup']:.1f}x** | "
                     f"{c['max_abs_value_difference']:.1e} (values up to {c['max_abs_value']:.1e}) | "
                     f"{c['max_abs_utility_difference']:.1e} |")
    agreement = info.get("solver_agreement", {})
    if agreement:
        lines += ["", f"Values of the batched {SOLVERS[0]} run against the batched {SOLVERS[1]} run:", "",
                  "| threads | max abs value difference | max abs utility difference |", "|---|---|---|"]
        for key, c in agreement.items():
            lines.append(f"| {key} | {c['max_abs_value_difference']:.1e} | {c['max_abs_utility_difference']:.1e} |")
    accuracy = info.get("solver_accuracy", {})
    if accuracy:
        lines += ["", "Batched models against the optimum (Newton to ||grad||_inf <= 1e-10; largest gradient of the "
                  f"optimum {info.get('reference_max_grad', float('nan')):.1e}, "
                  f"{info.get('reference_not_converged', 0)} model(s) stopped at float64's floor above 1e-10), all "
                  f"{info.get('trainings')} subsets:", "",
                  "| solver | settings | iterations mean / max | max abs W error | max abs utility error |",
                  "|---|---|---|---|---|"]
        for solver, c in accuracy.items():
            lines.append(f"| {solver} | {c['settings']} | {c['iterations_mean']:.1f} / {c['iterations_max']} | "
                         f"{c['max_abs_W_vs_optimum']:.1e} | {c['max_abs_utility_vs_optimum']:.1e} |")
    return "\n".join(lines) + "\n"


def test_report():
    """Last in the file: ratios and value differences from this run's rows."""
    comparisons = _comparisons()
    annotate(SUITE, comparisons=comparisons, solver_agreement=_solver_agreement())
    markdown(SUITE, _markdown)
    for c in comparisons.values():
        assert c["max_abs_value_difference"] <= 1e-5
    for c in _solver_agreement().values():
        assert c["max_abs_value_difference"] <= 1e-5
