"""k-means (Lloyd) on the fused argmin pass: every iteration is ONE call of `nearest(x, centroids,
accumulate=True)`, which assigns the rows and returns the per-centroid sums and counts in the same pass (no N x K
matrix); the new centroids are then a K x d division. On CPU, once fewer than 2 % of the labels move and K·d is
large enough for the dot products to dominate a pass, the iterations switch to the bounded pass
(`kmeans_bounded_step`, csrc/cpu/kmeans_cpu.cpp): Hamerly's bounds skip the rows whose nearest centroid provably
stays, with margins that cover the kernel's rounding, so the labels, sums and counts are those of the plain pass
bit for bit (tested) and only the work shrinks (~1.5x per late iteration at 100,000 x 32, K = 64).

The iteration follows scikit-learn's `KMeans(algorithm="lloyd")` (sklearn/cluster/_kmeans.py,
_k_means_common.pyx), so that both give the same labels, inertia and iteration count from the same centroids:

- assignment: nearest centroid, first index on ties;
- empty clusters: the e-th empty cluster (in increasing order) is re-seeded with the e-th row farthest from its
  assigned centroid (farthest first, ties to the lower row), which leaves its old cluster; with all distances zero
  (more clusters than distinct rows) nothing moves and an empty cluster sits on the centroid of the largest one.
  scikit-learn orders the farthest rows with numpy's argpartition: the two agree whenever at most two clusters are
  empty at once;
- stop when the labels did not change ("strict" convergence, the centroids are then the means of those labels),
  when the total squared centroid shift is <= tol * (mean of the per-feature variances of x), or after max_iter
  iterations; without strict convergence one last assignment makes the labels match the returned centroids;
- inertia: the sum of squared distances of the rows to their assigned centroids.

Initialisations:
- "k-means++": greedy k-means++ (scikit-learn's `_kmeans_plusplus`: 2 + ln(k) candidates per centre, the one
  lowering the potential most is kept), run in float64 on a seeded subsample of min(n, 256 k) rows, so its cost
  does not grow with n;
- "k-means||": Bahmani et al., "Scalable K-Means++" (VLDB 2012): 5 rounds that each sample every row with
  probability min(1, 2k d²(x, C) / phi(C)), distances by the nearest op against the new candidates only; the
  candidates are weighted by the rows nearest to them (one accumulate pass) and reduced to k centres by weighted
  greedy k-means++ and a few weighted Lloyd steps on the candidates;
- "random": k distinct rows;
- a (k, d) tensor: the initial centroids (n_init is then ignored: every run would be the same).

Random numbers come from one CPU `torch.Generator` seeded by `random_state` (an int, a torch.Generator, or None for
a seed drawn from torch's global generator, so `torch.manual_seed` makes it reproducible); run r of n_init gets
its own generator seeded from that one, on every device alike.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import numpy as np
import torch

from ..base import Estimator, NotFittedError, check_is_fitted  # noqa: F401 (NotFittedError re-exported)
from .. import op_checks
from . import backends
from .memory import release_freed_memory
from .nearest import nearest

__all__ = ["kmeans", "kmeans_groups", "KMeans", "KMeansResult", "INIT_METHODS", "NotFittedError"]

INIT_METHODS = ("k-means++", "k-means||", "random")
_PLUSPLUS_SAMPLE = 256  # k-means++ runs on min(n, 256 k) rows
_PARALLEL_ROUNDS = 5  # Bahmani et al.: about 5 rounds with oversampling 2k suffice in practice
_PARALLEL_OVERSAMPLING = 2.0
_PARALLEL_LLOYD_STEPS = 30  # weighted Lloyd on the candidates (as Spark MLlib's LocalKMeans)
_TRIM_ELEMENTS = 1 << 22  # from this size of x (32 MiB float64), freed heap memory is given back after each run


class KMeansResult(NamedTuple):
    centroids: torch.Tensor  # (K, d), the dtype of x; numbered group by group with groups
    labels: torch.Tensor  # (N,) int64: index of each row's centroid
    inertia: float  # sum of squared distances of the rows to their centroids
    n_iter: int  # Lloyd iterations run (with groups: the most any group ran)
    centroid_groups: torch.Tensor  # (K,) int64: the group of every centroid (all 0 without groups)


# ------------------------------------------------------------------------------------------------ checks
def _integer(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def _tolerance_arg(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(float(tol)):
        raise ValueError(f"tol must be a finite real number >= 0, got {tol!r}")
    if float(tol) < 0:
        raise ValueError(f"tol must be >= 0, got {float(tol)}")
    return float(tol)


def _counts_arg(k, grouped: bool) -> list[int]:
    """k as a list of per-group counts (one entry without groups)."""
    if not grouped:
        if isinstance(k, (list, tuple, torch.Tensor, np.ndarray)):
            raise ValueError(f"k must be an integer when groups is None, got {type(k).__name__}; a sequence of "
                             "per-group counts needs groups")
        return [_integer(k, "k", 1)]
    if isinstance(k, torch.Tensor) or isinstance(k, np.ndarray):
        if k.ndim != 1:
            raise ValueError(f"k must be a 1-D sequence of per-group counts with groups, got shape {tuple(k.shape)}")
        k = k.tolist()
    if not isinstance(k, (list, tuple)):
        raise ValueError(f"k must be a sequence of per-group centroid counts when groups is given, got {k!r}")
    if len(k) == 0:
        raise ValueError("k must name at least one group, got an empty sequence")
    return [_integer(v, f"k[{g}]", 1) for g, v in enumerate(k)]


def _groups_arg(groups, n: int, n_groups: int, device) -> torch.Tensor:
    g = op_checks.tensor(groups, "groups")
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},) (one id per row of x), got {tuple(g.shape)}")
    if g.dtype != torch.int64:
        raise ValueError(f"groups must be int64 group ids, got {g.dtype}")
    if g.device != device:
        raise ValueError(f"groups must be on {device} like x, got {g.device}")
    low, high = int(g.min()), int(g.max())
    if low < 0 or high >= n_groups:
        raise ValueError(f"groups must hold ids in 0..{n_groups - 1} (len(k) = {n_groups} groups), "
                         f"got ids from {low} to {high}")
    return g


def _init_arg(init, k_total: int, x: torch.Tensor, validate: bool):
    if isinstance(init, str):
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS} or a (k, d) tensor, got {init!r}")
        return init
    if isinstance(init, np.ndarray):
        init = torch.from_numpy(np.ascontiguousarray(init))
    if not isinstance(init, torch.Tensor):
        raise ValueError(f"init must be one of {INIT_METHODS} or a (k, d) tensor, got {type(init).__name__}")
    if init.shape != (k_total, x.shape[1]):
        raise ValueError(f"init must have shape ({k_total}, {x.shape[1]}) (k centroids x d features), "
                         f"got {tuple(init.shape)}")
    if not init.dtype.is_floating_point:
        raise ValueError(f"init must be a float tensor, got {init.dtype}")
    init = init.to(device=x.device, dtype=x.dtype).contiguous()
    if validate:
        op_checks.finite(init, "init")
    return init


def _base_generator(random_state) -> torch.Generator:
    if isinstance(random_state, torch.Generator):
        return random_state
    if random_state is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        seed = int(random_state) % (2 ** 64)
    else:
        raise ValueError(f"random_state must be None, an int or a torch.Generator, got {random_state!r}")
    return torch.Generator().manual_seed(seed)


def _child(generator: torch.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator).item()))


# ------------------------------------------------------------------------------------------------ initialisation
def _sqdist64(a: torch.Tensor, b: torch.Tensor, a_norms: torch.Tensor, b_norms: torch.Tensor) -> torch.Tensor:
    """Materialised squared distances in float64 (small operands only: the k-means++ sample, the candidates),
    from precomputed squared norms: one GEMM and in-place updates."""
    out = torch.addmm(b_norms[None, :], a, b.T, alpha=-2.0)
    return out.add_(a_norms[:, None]).clamp_min_(0)


def _draw(generator: torch.Generator, cumulative: torch.Tensor, count: int) -> torch.Tensor:
    """`count` indices drawn with probability proportional to the increments of `cumulative` (searchsorted, as
    scikit-learn does; the uniforms come from the CPU generator, so every device draws the same rows)."""
    u = torch.rand(count, generator=generator, dtype=torch.float64).to(cumulative.device)
    picks = torch.searchsorted(cumulative, u * cumulative[-1])
    return picks.clamp_max(cumulative.shape[0] - 1)


def _greedy_plusplus(points: torch.Tensor, k: int, generator: torch.Generator,
                     weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Indices of k rows of `points` (float64) chosen by greedy k-means++, optionally weighted."""
    n = points.shape[0]
    w = torch.ones(n, dtype=torch.float64, device=points.device) if weights is None else weights
    trials = 2 + int(math.log(k))
    norms = points.pow(2).sum(1)
    chosen = torch.empty(k, dtype=torch.int64, device=points.device)
    chosen[:1] = _draw(generator, torch.cumsum(w, 0), 1)
    closest = (points - points[chosen[0]]).pow(2).sum(1)
    for c in range(1, k):
        weighted = torch.cumsum(w * closest, 0)
        if float(weighted[-1]) > 0:
            candidates = _draw(generator, weighted, trials)
        else:  # every row sits on a chosen centre: any row will do
            candidates = _draw(generator, torch.cumsum(w, 0), trials)
        distance = torch.minimum(_sqdist64(points[candidates], points, norms[candidates], norms), closest[None, :])
        potentials = distance @ w
        best = int(torch.argmin(potentials))
        chosen[c] = candidates[best]
        closest = distance[best]
    return chosen


def _init_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    sample = min(n, _PLUSPLUS_SAMPLE * k)
    rows = torch.randperm(n, generator=generator)[:sample].to(x.device) if sample < n else None
    points = (x if rows is None else x[rows]).double()
    chosen = _greedy_plusplus(points, k, generator)
    return points[chosen].to(x.dtype)


def _init_random(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    rows = torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)
    return x[rows].clone()


def _init_parallel(x: torch.Tensor, k: int, generator: torch.Generator, backend: str) -> torch.Tensor:
    """k-means|| (Bahmani et al. 2012): oversample candidates in a few rounds, weight them, reduce to k."""
    n = x.shape[0]
    first = _draw(generator, torch.arange(1, n + 1, dtype=torch.float64, device=x.device), 1)
    candidates = x[first]
    closest = nearest(x, candidates, backend=backend, validate=False).sqdist.double()
    for _ in range(_PARALLEL_ROUNDS):
        phi = float(closest.sum())
        if phi <= 0:  # every row is a candidate already
            break
        p = (_PARALLEL_OVERSAMPLING * k * closest / phi).clamp_max(1)
        u = torch.rand(n, generator=generator, dtype=torch.float64).to(x.device)
        picked = torch.nonzero(u < p).flatten()
        if picked.numel() == 0:
            continue
        new = x[picked]
        candidates = torch.cat([candidates, new])
        closest = torch.minimum(closest, nearest(x, new, backend=backend, validate=False).sqdist.double())
    if candidates.shape[0] < k:  # very few distinct rows: top up with random ones
        extra = torch.randperm(n, generator=generator)[: k - candidates.shape[0]].to(x.device)
        candidates = torch.cat([candidates, x[extra]])
    weights = nearest(x, candidates, accumulate=True, backend=backend, validate=False).counts.double()
    points = candidates.double()
    centres = points[_greedy_plusplus(points, k, generator, weights)]
    # weighted Lloyd on the candidates; an empty centre keeps its place
    norms = points.pow(2).sum(1)
    for _ in range(_PARALLEL_LLOYD_STEPS):
        labels = _sqdist64(points, centres, norms, centres.pow(2).sum(1)).argmin(1)
        mass = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, labels, weights)
        sums = torch.zeros_like(centres).index_add_(0, labels, points * weights[:, None])
        new = torch.where(mass[:, None] > 0, sums / mass.clamp_min(1e-300)[:, None], centres)
        if torch.equal(new, centres):
            break
        centres = new
    return centres.to(x.dtype)


def _initial_centroids(x, k, init, generator, backend) -> torch.Tensor:
    if init == "k-means++":
        return _init_plusplus(x, k, generator)
    if init == "k-means||":
        return _init_parallel(x, k, generator, backend)
    return _init_random(x, k, generator)


# ------------------------------------------------------------------------------------------------ Lloyd
def _relocate(x, labels, distances, sums, counts) -> None:
    """scikit-learn's empty-cluster rule, in place on (sums float64, counts)."""
    empty = torch.nonzero(counts == 0).flatten()
    n_empty = int(empty.numel())
    if n_empty == 0 or float(distances.max()) == 0:
        return
    # the n_empty farthest rows, farthest first, ties to the lower row (topk alone leaves ties unordered)
    threshold = torch.topk(distances, n_empty).values.min()
    candidates = torch.nonzero(distances >= threshold).flatten()
    far = candidates[torch.sort(-distances[candidates].double(), stable=True).indices[:n_empty]]
    for new, row in zip(empty.tolist(), far.tolist()):  # sequential: a far row may leave a cluster emptied
        old = int(labels[row])
        sums[old] -= x[row].double()
        counts[old] -= 1
        sums[new] = x[row].double()
        counts[new] = 1


# Bounded iterations (the kmeans_bounded_step op, Hamerly's bounds): rows whose centroid provably stays are not
# measured again. Its pass costs more than the plain one per row it does measure, and its bounds and the sums
# stream 40 bytes per row, so it pays only when a plain pass is mostly dot products (K·d large) and few rows
# still move; the loop switches to it once fewer than _BOUNDED_SWITCH of the rows changed in a plain pass.
_BOUNDED_MIN_WORK = 1024  # K · d
_BOUNDED_MIN_ROWS = 4096
_BOUNDED_SWITCH = 0.02


class _Bounds:
    """State of the bounded iterations: labels (updated in place by the op), upper and lower bounds."""

    def __init__(self, labels: torch.Tensor):
        n = labels.shape[0]
        self.labels = labels.clone()
        self.upper = torch.empty(n, dtype=torch.float64)
        self.lower = torch.empty(n, dtype=torch.float64)
        self.reference = None  # the centroids the bounds refer to; None: not set yet (the next pass measures all)

    def step(self, x, c):
        """(sums, counts, labels changed) of one Lloyd pass; labels in self.labels."""
        reset = self.reference is None
        sums, counts, _, changed = torch.ops.lossval_fast.kmeans_bounded_step(
            x, c, c if reset else self.reference, self.labels, self.upper, self.lower, reset)
        self.reference = c
        return sums, counts, changed


def _bounds_apply(x: torch.Tensor, k: int, backend: str) -> bool:
    return (backend == "cpp" and x.device.type == "cpu" and k >= 2 and k * x.shape[1] >= _BOUNDED_MIN_WORK
            and x.shape[0] >= _BOUNDED_MIN_ROWS and hasattr(torch.ops.lossval_fast, "kmeans_bounded_step"))


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, max_iter: int, threshold: float, backend: str):
    """One Lloyd run from `centroids`: (centroids, labels, inertia, n_iter). Plain passes, or bounded ones once
    few labels move (same labels every iteration: the bounds only skip rows whose label the plain pass would
    keep)."""
    c = centroids
    labels_old = counts_old = None
    strict = False
    n_iter = 0
    step = None
    bounds = None
    may_bound = _bounds_apply(x, c.shape[0], backend)
    for n_iter in range(1, max_iter + 1):
        changed = None  # labels changed since the last pass, when a bounded pass counted them
        if bounds is not None:
            sums_t, counts, changed = bounds.step(x, c)
            index = bounds.labels
            if bool((counts == 0).any()):  # relocation needs every row's distance: this pass again, plainly
                bounds = None
        if bounds is None:
            step = None   # the last pass's outputs go before this pass makes its own (labels_old keeps its index)
            step = nearest(x, c, accumulate=True, backend=backend, validate=False)
            index, counts, sums_t = step.index, step.counts, step.sums
        sums = sums_t.double()
        if bool((counts == 0).any()):
            counts = counts.clone()
            _relocate(x, step.index, step.sqdist, sums, counts)
            filled = counts > 0
            new = sums / counts.clamp_min(1).double()[:, None]
            if not bool(filled.all()):  # all distances zero: park the empty ones on the largest cluster
                new[~filled] = new[int(torch.argmax(counts))].clone()
        else:
            new = sums / counts.double()[:, None]
        new = new.to(x.dtype)
        shift = float((new.double() - c.double()).pow(2).sum())
        previous, c = c, new
        # strict convergence (labels unchanged); equal counts first, which is cheap and almost never true otherwise
        if changed is not None:
            if changed == 0:
                strict = True
                break
        elif labels_old is not None and torch.equal(counts, counts_old) and torch.equal(index, labels_old):
            strict = True
            break
        if shift <= threshold:
            break
        if (may_bound and bounds is None and labels_old is not None
                and int((index != labels_old).sum()) < _BOUNDED_SWITCH * x.shape[0]):
            bounds = _Bounds(index)
        if bounds is not None:
            step = index = None   # the bounded passes need neither (a plain pass makes its own again)
        labels_old, counts_old = (None, None) if bounds is not None else (index, counts)
    if strict and bounds is None:
        labels = step.index
        if torch.equal(c, previous):  # the usual case: the pass already measured against these centroids
            inertia = float(step.sqdist.double().sum())
        else:
            inertia = float((x.double() - c.double()[labels]).pow(2).sum())
    elif strict and not torch.equal(c, previous):
        labels = bounds.labels
        inertia = float((x.double() - c.double()[labels]).pow(2).sum())
    else:  # a last plain pass: the labels of the returned centroids and the distances for the inertia
        final = nearest(x, c, backend=backend, validate=False)
        labels, inertia = final.index, float(final.sqdist.double().sum())
    return c, labels, inertia, n_iter


def _tolerance(x: torch.Tensor, tol: float) -> float:
    """tol times the mean of the per-feature variances (torch accumulates the variance in double on CPU)."""
    if tol == 0:
        return 0.0
    return float(x.var(dim=0, unbiased=False).double().mean()) * tol


# The n_init runs spread over the ranks of a distributed fit (`ranks`, a base.Ranks; lossval_fast.distributed runs
# EcoVal's k-means so): each rank runs every world-th, then `_best_over_ranks` (collective) agrees on the best of all,
# lowest inertia and ties to the lower run as in one process. Run r draws from its own generator, so it is the same
# run wherever it runs.
def _best_over_ranks(ranks, best, run_index):
    """The best run over the ranks (lowest inertia, ties to the lower run index), from the rank that ran it; `best`
    is this rank's (None without a run)."""
    mine = None if best is None else (float(best[2]), run_index, ranks.rank)
    offers = ranks.all_gather(mine)
    winner = min((o for o in offers if o is not None), key=lambda o: (o[0], o[1]))
    return ranks.broadcast(best if ranks.rank == winner[2] else None, src=winner[2])


def _fit_group(x, k, init, n_init, generators, max_iter, tol, backend, ranks=None):
    """Best of the runs (one per generator) on one group's rows: (centroids, labels, inertia, n_iter); with ranks,
    this rank's share of the runs and then the best over the ranks."""
    threshold = _tolerance(x, tol)
    split = ranks if ranks is not None and ranks.world > 1 and len(generators) > 1 else None
    runs = list(enumerate(generators))
    if split is not None:
        runs = runs[split.rank::split.world]
    best, best_run = None, None
    for r, generator in runs:
        start = init if isinstance(init, torch.Tensor) else _initial_centroids(x, k, init, generator, backend)
        run = _lloyd(x, start, max_iter, threshold, backend)
        if best is None or run[2] < best[2]:
            best, best_run = run, r
        del run
        if x.device.type == "cpu" and x.numel() >= _TRIM_ELEMENTS:
            release_freed_memory()   # the run's per-iteration outputs, kept in the heap by glibc
    if split is not None:
        best = _best_over_ranks(split, best, best_run)
    return best


# ------------------------------------------------------------------------------------------------ public op
@torch.no_grad()  # not differentiable: no graph for the passes and the divisions
def kmeans(x: torch.Tensor, k, *, max_iter: int = 100, tol: float = 1e-4, init="k-means++", n_init: int = 1,
           random_state=None, groups: Optional[torch.Tensor] = None, backend: str = "auto",
           validate: bool = True, ranks=None) -> KMeansResult:
    """Lloyd's k-means on the fused assignment + update pass of the nearest op (see the module docstring for
    the exact rules, which are scikit-learn's).

    x: (N, d) float32/float64 tensor on any device. k: number of centroids, or with `groups` a sequence of
    per-group counts. init: "k-means++" | "k-means||" | "random" | (K, d) tensor. n_init: runs from different
    initialisations, lowest inertia kept (per group with groups). groups: (N,) int64 ids in 0..len(k)-1; each row
    is then assigned only to its own group's centroids, which are numbered group by group (every group is an
    independent k-means on its rows). backend: that of the nearest op ("auto", "cpp", "triton", "cuda", "torch").
    validate=False skips the NaN/inf scan of x (a host synchronisation on GPU). ranks: a base.Ranks (every rank
    calls with the same arguments): the n_init runs are spread over them, with the result of one process.
    """
    x = op_checks.points(x, "x")
    n, d = x.shape
    counts_per_group = _counts_arg(k, groups is not None)
    max_iter = _integer(max_iter, "max_iter", 1)
    tol = _tolerance_arg(tol)
    n_init = _integer(n_init, "n_init", 1)
    init = _init_arg(init, sum(counts_per_group), x, validate)
    be = backends.resolve(backend, "nearest", x.device)
    if validate:  # one full sum on clean data (a column sum, dim=0, is a strided reduction: 20x slower)
        op_checks.finite(x, "x")
    x = x.contiguous()
    base = _base_generator(random_state)
    runs = 1 if isinstance(init, torch.Tensor) else n_init
    generators = [_child(base) for _ in range(runs)]

    if groups is None:
        if counts_per_group[0] > n:
            raise ValueError(f"k must be <= the number of rows of x ({n}), got {counts_per_group[0]}")
        c, labels, inertia, n_iter = _fit_group(x, counts_per_group[0], init, n_init, generators, max_iter, tol, be,
                                                ranks)
        return KMeansResult(c, labels, inertia, n_iter,
                            torch.zeros(c.shape[0], dtype=torch.int64, device=x.device))

    g = _groups_arg(groups, n, len(counts_per_group), x.device)
    sizes = torch.bincount(g, minlength=len(counts_per_group)).tolist()
    order = torch.argsort(g, stable=True)
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    result = _fit_groups(lambda gid: x[order[starts[gid]:starts[gid + 1]]], sizes, counts_per_group, init, n_init,
                         generators, max_iter, tol, be, d, x.dtype, x.device, ranks=ranks)
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    labels[order] = result.labels
    return result._replace(labels=labels)


def _fit_groups(part, sizes, counts_per_group, init, n_init, generators, max_iter, tol, backend, d, dtype, device,
                validate=False, ranks=None) -> KMeansResult:
    """Every group's k-means, one group's rows part(gid) at a time (only one group's rows need exist at once);
    labels in the order of the groups' rows, concatenated."""
    for gid, (size, kg) in enumerate(zip(sizes, counts_per_group)):
        if kg > size:
            raise ValueError(f"k[{gid}] = {kg} exceeds the {size} row(s) of group {gid}; k per group must be <= "
                             "its number of rows")
    centroids = torch.empty((sum(counts_per_group), d), dtype=dtype, device=device)
    labels = torch.empty(sum(sizes), dtype=torch.int64, device=device)
    owner = torch.repeat_interleave(torch.arange(len(counts_per_group), device=device),
                                    torch.tensor(counts_per_group, device=device))
    inertia, n_iter, row0, col0 = 0.0, 0, 0, 0
    for gid, (size, kg) in enumerate(zip(sizes, counts_per_group)):
        xg = part(gid)
        if validate:
            op_checks.finite(xg, "x")
        if xg.device.type == "cpu" and xg.numel() >= _TRIM_ELEMENTS:
            release_freed_memory()   # the temporaries of making the group's rows, before its runs
        start = init[col0:col0 + kg] if isinstance(init, torch.Tensor) else init
        c, lab, piece, it = _fit_group(xg.contiguous(), kg, start, n_init, generators, max_iter, tol, backend, ranks)
        del xg
        centroids[col0:col0 + kg] = c
        labels[row0:row0 + size] = lab + col0
        del lab   # not held while the next group's rows are made and fitted
        inertia += piece
        n_iter = max(n_iter, it)
        row0 += size
        col0 += kg
    return KMeansResult(centroids, labels, inertia, n_iter, owner)


@torch.no_grad()
def kmeans_groups(part, sizes, k, *, max_iter: int = 100, tol: float = 1e-4, init="k-means++", n_init: int = 1,
                  random_state=None, backend: str = "auto", validate: bool = True, ranks=None) -> KMeansResult:
    """``kmeans(x, k, groups=g)`` with the rows of each group made on demand: part(gid) returns group gid's rows
    (sizes[gid] of them, (sizes[gid], d) float32/float64 on one device; the rows x[g == gid] in order, for the same
    result), called once per group, so only one group's rows need exist at a time (e.g. a float64 transform of a
    float32 input). Labels are in the order of the groups' rows, group after group. ranks: as in kmeans."""
    counts_per_group = _counts_arg(k, True)
    sizes = [int(s) for s in sizes]
    if len(sizes) != len(counts_per_group):
        raise ValueError(f"sizes must give one row count per group ({len(counts_per_group)}), got {len(sizes)}")
    first = op_checks.points(part(0), "part(0)")
    d, dtype, device = first.shape[1], first.dtype, first.device
    max_iter = _integer(max_iter, "max_iter", 1)
    tol = _tolerance_arg(tol)
    n_init = _integer(n_init, "n_init", 1)
    init = _init_arg(init, sum(counts_per_group), first, validate)
    be = backends.resolve(backend, "nearest", device)
    base = _base_generator(random_state)
    runs = 1 if isinstance(init, torch.Tensor) else n_init
    generators = [_child(base) for _ in range(runs)]
    made = [first]   # group 0's rows, handed over (and dropped here) when its turn comes
    del first

    def rows_of(gid):
        xg = made.pop() if gid == 0 and made else op_checks.points(part(gid), f"part({gid})")
        if xg.shape != (sizes[gid], d) or xg.dtype != dtype or xg.device != device:
            raise ValueError(f"part({gid}) must return ({sizes[gid]}, {d}) {dtype} rows on {device} like part(0), "
                             f"got {tuple(xg.shape)} {xg.dtype} on {xg.device}")
        return xg
    return _fit_groups(rows_of, sizes, counts_per_group, init, n_init, generators, max_iter, tol, be, d, dtype,
                       device, validate=validate, ranks=ranks)


# ------------------------------------------------------------------------------------------------ estimator
def _as_tensor(X, name: str):
    """(tensor, was_numpy). Integer or boolean data become float64, as scikit-learn does."""
    if isinstance(X, torch.Tensor):
        t, was_numpy = X, False
    else:
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(np.asarray(X))), True
    if not t.dtype.is_floating_point or t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (samples x features), got shape {tuple(t.shape)}")
    return t, was_numpy


class KMeans(Estimator):
    """scikit-learn style k-means on `kmeans`: fit(X) -> self with cluster_centers_, labels_, inertia_, n_iter_;
    predict(X) by the nearest op. numpy in gives numpy out and a tensor in gives tensors out (fit sets the kind of
    cluster_centers_ and labels_; predict answers in the kind it is given)."""

    def __init__(self, n_clusters: int = 8, *, init="k-means++", n_init: int = 1, max_iter: int = 100,
                 tol: float = 1e-4, random_state=None, backend: str = "auto"):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.backend = backend

    def fit(self, X, y=None, *, ranks=None) -> "KMeans":
        """ranks: a base.Ranks to spread the n_init runs over (every rank fits the same X)."""
        x, was_numpy = _as_tensor(X, "X")
        init = self.init
        if isinstance(init, np.ndarray):
            init = torch.from_numpy(np.ascontiguousarray(init))
        result = kmeans(x, self.n_clusters, max_iter=self.max_iter, tol=self.tol, init=init, n_init=self.n_init,
                        random_state=self.random_state, backend=self.backend, ranks=ranks)
        self._centroids = result.centroids
        self.cluster_centers_ = result.centroids.cpu().numpy() if was_numpy else result.centroids
        self.labels_ = result.labels.cpu().numpy() if was_numpy else result.labels
        self.inertia_ = result.inertia
        self.n_iter_ = result.n_iter
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, X):
        check_is_fitted(self, "_centroids", "predict(X)")
        x, was_numpy = _as_tensor(X, "X")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have {self.n_features_in_} features like the data KMeans was fitted on, "
                             f"got {x.shape[1]}")
        c = self._centroids
        labels = nearest(x.to(device=c.device, dtype=c.dtype), c, backend=self.backend).index
        return labels.cpu().numpy() if was_numpy else labels

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_
