"""Reference Shapley values for checking a valuation: exact cluster Shapley and Truncated Monte Carlo Data Shapley,
both with the batched learners of ``lossval_fast.valuation.learners`` (many subset models trained as one batch).

The game (``SubsetGame``): the players are groups of training points (clusters, or single points), and
U(S) is the validation score of the learner trained on the points of the groups in S:

- classification ("logreg"): ``metric="log_likelihood"`` (default), the validation mean log-likelihood,
  mean_v log max(p(y_v | x_v), 1e-12), or ``metric="expected_accuracy"``, mean_v p(y_v | x_v) (EcoVal's default
  utility, docs/ecoval.md §2); a validation label absent from the training labels has probability 0 (EcoVal's rule). A subset with fewer than
  ``min_classes`` (default 2) classes is not fitted and scores like the empty one, the constant predictor: EcoVal's
  rule (docs/ecoval.md §2), and that of Ghorbani & Zou's TMC code, which scores a prefix missing classes at the
  random score. min_classes=1 fits every non-empty subset (the L2-regularised logreg has a finite optimum for each).
- regression ("ridge"): R^2 on the validation set, the targets standardised with the training mean and std for the
  fit and the predictions mapped back.
- features standardised with the training mean and std (a constant feature: std 1), as EcoVal's built-in learners.
- the empty subset: the constant predictor (the training class frequencies; the training mean in regression).

``exact_cluster_shapley``: all 2^p subsets of p <= 14 clusters, trained in chunks of models (memory bounded), and
the Shapley values by the subset formula
    phi_i = sum_{S subset of N \\ {i}} |S|! (p - |S| - 1)! / p! * (U(S + i) - U(S)).
``tmc_shapley``: Ghorbani & Zou, "Data Shapley: Equitable Valuation of Data for Machine Learning" (ICML 2019),
Algorithm 1 (TMC-Shapley): random permutations of the n points, the marginal contribution of each point to the
prefix before it, averaged over the permutations. A permutation is truncated once |U(D) - U(prefix)| <
truncation * |U(D)| (``patience`` such prefixes in a row; their code waits for 5 in a row, the paper's text for 1),
and the marginals of the points after that prefix are 0. All prefixes of many permutations are trained as one batch
of models (a model per arbitrary subset of points: group of point k = k).

``spearman`` (rank correlation, average ranks for ties) and ``split_half_correlation`` (Spearman of the means over
the even vs the odd permutations: how reproducible a Monte Carlo estimate is) help judge the estimates.
Invalid arguments raise ValueError naming the argument.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import time
from typing import Callable, Optional

import numpy as np
import torch

from . import checks as _checks
from . import learners as _learners

__all__ = ["SubsetGame", "TMCResult", "exact_cluster_shapley", "shapley_from_utilities", "spearman",
           "split_half_correlation", "tmc_shapley", "MAX_EXACT_CLUSTERS"]

TASKS = ("classification", "regression")
METRICS = {"classification": ("log_likelihood", "expected_accuracy"), "regression": ("r2",)}
LEARNERS = ("logreg", "ridge")
MAX_EXACT_CLUSTERS = 14          # 2^14 = 16384 subset trainings
MAX_TABLE_PLAYERS = 26           # shapley_from_utilities: 2^26 utilities (512 MiB) at most
LOG_FLOOR = 1e-12
MEMORY_BUDGET = 256 << 20        # bytes of working memory per chunk of models
TRUNCATION_BLOCK = 20            # prefix lengths trained per step of a truncated permutation
# solver None: Newton (tol 1e-6) up to this many logreg parameters per model ((C - 1) (d + 1)), L-BFGS (tol 1e-8)
# beyond. Measured on 2 cores: TMC prefixes of 200 points of pol (49 parameters) ~3x faster with Newton, of adult
# (109) 2x; 12-cluster subsets of 1000 points of adult 4x. Newton's utilities differ from a tol-1e-11 fit by 5e-6 on
# average (2e-4 at most; pol prefixes), L-BFGS's by 2e-7 (4e-6). MNIST on 50 PCA features (459 parameters): L-BFGS.
NEWTON_MAX_PARAMETERS = 128


# ------------------------------------------------------------------------------------------------ checks
_array, _features, _targets = _checks.array, _checks.features, _checks.targets


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_metric(task, metric) -> str:
    """None picks the task's first metric (log-likelihood / R^2)."""
    if metric is None:
        return METRICS[task][0]
    if metric not in METRICS[task]:
        raise ValueError(f"metric must be None or one of {', '.join(METRICS[task])} for {task}, got {metric!r}")
    return metric


def _check_task_learner(task, learner) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if learner is None:
        return "logreg" if task == "classification" else "ridge"
    if learner not in LEARNERS:
        raise ValueError(f"learner must be None or one of {', '.join(LEARNERS)}, got {learner!r}")
    if (learner == "logreg") != (task == "classification"):
        raise ValueError(f"learner {learner!r} does not fit task {task!r}: use 'logreg' for classification and "
                         f"'ridge' for regression")
    return learner


# ------------------------------------------------------------------------------------------------ the game
class SubsetGame:
    """U(S) of subsets S of p groups of training points (see the module doc), trained by the batched learners.

    groups: (n,) the group of each training row, integers 0..p-1 (every group non-empty). utilities(kept) takes a
    (T, p) bool table (kept[t, i]: group i is in subset t) and returns U of each row, training the non-empty
    subsets in chunks of at most ``models_per_chunk`` models (from memory_budget, or max_models_per_batch);
    ``n_trainings`` counts the models trained so far.
    """

    def __init__(self, X, y, X_val, y_val, groups, *, task: str, learner: str | None = None, solver=None,
                 tol=None, max_models_per_batch: int | None = None, memory_budget: int = MEMORY_BUDGET,
                 device="cpu", min_classes: int = 2, metric: str | None = None):
        self.learner = _check_task_learner(task, learner)
        self.metric = _check_metric(task, metric)
        if not _is_int(min_classes) or min_classes < 1:
            raise ValueError(f"min_classes must be an int >= 1, got {min_classes!r}")
        self.min_classes = int(min_classes)
        if solver is not None and solver not in _learners.SOLVERS:
            raise ValueError(f"solver must be None or one of {', '.join(_learners.SOLVERS)}, got {solver!r}")
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, numbers.Real)
                                or not math.isfinite(tol) or tol <= 0):
            raise ValueError(f"tol must be None or a finite number > 0, got {tol!r}")
        self.task = task
        X = _features(X, "X")
        n, d = X.shape
        X_val = _features(X_val, "X_val", d)
        y = _targets(y, "y", n, "X")
        y_val = _targets(y_val, "y_val", X_val.shape[0], "X_val")
        groups = _array(groups, "groups")
        if groups.shape != (n,) or groups.dtype.kind not in "iu":
            raise ValueError(f"groups must be (n,) integers 0..p-1, got shape {groups.shape} dtype {groups.dtype}")
        p = int(groups.max()) + 1
        if groups.min() < 0 or np.bincount(groups, minlength=p).min() == 0:
            raise ValueError("groups must number the groups 0..p-1 with every group non-empty")
        if max_models_per_batch is not None and (not _is_int(max_models_per_batch) or max_models_per_batch < 1):
            raise ValueError(f"max_models_per_batch must be None or an int >= 1, got {max_models_per_batch!r}")
        if not _is_int(memory_budget) or memory_budget < 1:
            raise ValueError(f"memory_budget must be an int >= 1 (bytes), got {memory_budget!r}")
        self.device = torch.device(device)
        self.n, self.d, self.p, self.m = n, d, p, X_val.shape[0]

        mu = X.mean(0)
        sd = X.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        Xs = torch.as_tensor((X - mu) / sd, dtype=torch.float64, device=self.device)
        self._Xv = torch.as_tensor((X_val - mu) / sd, dtype=torch.float64, device=self.device)
        cluster_of = torch.as_tensor(groups.astype(np.int64), device=self.device)
        if task == "classification":
            self._setup_classification(Xs, y, y_val, groups, cluster_of, solver, tol)
        else:
            self._setup_regression(Xs, y, y_val, cluster_of)
        per_chunk = max(1, int(memory_budget) // max(1, self._bytes + 8 * n))
        self.models_per_chunk = int(max_models_per_batch) if max_models_per_batch is not None else per_chunk
        self.n_trainings = 0
        self.converged = True

    def _setup_classification(self, Xs, y, y_val, groups, cluster_of, solver, tol):
        """The batched logistic regression on the class codes, the validation labels' positions, and u(∅)."""
        n, d, p = self.n, self.d, self.p
        if y.dtype.kind == "f" and not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ValueError("y must hold class labels for classification; got non-integer floats (use "
                             "task='regression')")
        self.classes = np.unique(y)
        if len(self.classes) < 2:
            raise ValueError(f"y must hold at least 2 classes, got {len(self.classes)}")
        C = len(self.classes)
        codes = np.searchsorted(self.classes, y)
        position = np.searchsorted(self.classes, y_val).clip(0, C - 1)
        known = self.classes[position] == y_val
        self._known = torch.as_tensor(known, device=self.device)
        self._index = torch.as_tensor(np.where(known, position, 0), device=self.device)
        if solver is None:  # Newton's per-model Hessian is cheap for a few parameters, L-BFGS beyond
            solver = "newton" if (C - 1) * (d + 1) <= NEWTON_MAX_PARAMETERS else "lbfgs"
        self.solver = solver
        self._model = _learners.BatchedLogReg(Xs, torch.as_tensor(codes, device=self.device), cluster_of, C,
                                              solver=solver, tol=tol)
        self._bytes = _learners.BatchedLogReg.bytes_per_model(n, d, C, self.m)
        freq = np.bincount(codes, minlength=C) / n
        self._group_classes = np.zeros((p, C), dtype=np.int64)      # which classes each group holds
        self._group_classes[groups, codes] = 1
        p_true = np.where(known, freq[np.where(known, position, 0)], 0.0)
        self.empty_utility = float(np.mean(self._point_utility(p_true)))

    def _setup_regression(self, Xs, y, y_val, cluster_of):
        """The batched ridge regression on the standardised targets, R^2's denominator, and u(∅)."""
        n, d, p = self.n, self.d, self.p
        y, y_val = _checks.regression_targets(y, y_val)
        ss = float(np.sum((y_val - y_val.mean()) ** 2))
        if ss == 0.0:
            raise ValueError("y_val is constant: R^2 is undefined")
        self.classes = None
        self._group_classes = None
        self.solver = "cholesky"
        self._y_mu = float(y.mean())
        y_sd = float(y.std())
        self._y_sd = y_sd if y_sd > 0 else 1.0
        self._y_val = torch.as_tensor(y_val, dtype=torch.float64, device=self.device)
        self._ss_tot = ss
        ys = torch.as_tensor((y - self._y_mu) / self._y_sd, dtype=torch.float64, device=self.device)
        self._model = _learners.BatchedRidge(Xs, ys, cluster_of, p)
        self._bytes = _learners.BatchedRidge.bytes_per_model(n, d, 1, self.m)
        self.empty_utility = 1.0 - float(np.sum((y_val - self._y_mu) ** 2)) / ss

    def _point_utility(self, p_true):
        """Per validation point from the probability of its label (numpy or torch)."""
        if self.metric == "expected_accuracy":
            return p_true
        return np.log(np.maximum(p_true, LOG_FLOOR)) if isinstance(p_true, np.ndarray) else \
            torch.log(p_true.clamp(min=LOG_FLOOR))

    def _score(self, params) -> np.ndarray:
        out = self._model.predict(params, self._Xv)
        if self.task == "classification":
            T = out.shape[0]
            p = out.gather(2, self._index[None, :, None].expand(T, -1, 1))[..., 0]
            p = torch.where(self._known, p, torch.zeros((), dtype=p.dtype, device=p.device))
            return self._point_utility(p).mean(1).cpu().numpy()
        pred = out * self._y_sd + self._y_mu
        return (1.0 - ((self._y_val - pred) ** 2).sum(1) / self._ss_tot).cpu().numpy()

    def utilities(self, kept) -> np.ndarray:
        """kept (T, p) bool -> U (T,) float64; empty rows and rows with fewer than ``min_classes`` classes get
        ``empty_utility`` without a training."""
        kept = np.asarray(kept, dtype=bool)
        if kept.ndim != 2 or kept.shape[1] != self.p:
            raise ValueError(f"kept must be (T, {self.p}) booleans, got shape {kept.shape}")
        out = np.full(kept.shape[0], self.empty_utility, dtype=np.float64)
        fitted = kept.any(1)
        if self._group_classes is not None and self.min_classes > 1:
            fitted &= ((kept.astype(np.int64) @ self._group_classes) > 0).sum(1) >= self.min_classes
        rows = np.flatnonzero(fitted)
        for start in range(0, len(rows), self.models_per_chunk):
            chunk = rows[start:start + self.models_per_chunk]
            removed = torch.as_tensor(~kept[chunk], device=self.device)
            params = self._model.fit(removed, [0] * len(chunk))
            self.converged &= bool(params["converged"].all())
            out[chunk] = self._score(params)
            self.n_trainings += len(chunk)
        return out


# ------------------------------------------------------------------------------------------------ exact
def _popcount(masks: np.ndarray) -> np.ndarray:
    return np.bitwise_count(masks.astype(np.uint64)).astype(np.int64)


def shapley_from_utilities(utilities) -> np.ndarray:
    """Exact Shapley values (p,) of the game whose utility table is `utilities` (2^p,): entry m is U of the subset
    {i : bit i of m is set} (so entry 0 is U of the empty set). phi_i = sum over S without i of
    1 / (p * binom(p - 1, |S|)) * (U(S + i) - U(S)), the subset formula; the values sum to U(N) - U(empty)."""
    U = np.asarray(utilities, dtype=np.float64)
    if U.ndim != 1 or U.size < 2 or (U.size & (U.size - 1)) != 0:
        raise ValueError(f"utilities must be a 1-D table of 2^p entries (p >= 1), got shape {U.shape}")
    p = U.size.bit_length() - 1
    if p > MAX_TABLE_PLAYERS:
        raise ValueError(f"utilities has 2^{p} entries; at most 2^{MAX_TABLE_PLAYERS} are supported")
    if not np.all(np.isfinite(U)):
        raise ValueError("utilities contains NaN or inf")
    masks = np.arange(U.size, dtype=np.int64)
    size = _popcount(masks)
    weight = np.array([1.0 / (p * math.comb(p - 1, s)) for s in range(p)])
    values = np.empty(p, dtype=np.float64)
    for i in range(p):
        without = masks[(masks >> i) & 1 == 0]
        values[i] = float(np.sum(weight[size[without]] * (U[without | (1 << i)] - U[without])))
    return values


def exact_cluster_shapley(X, y, X_val, y_val, cluster_labels, *, task: str, learner: str | None = None,
                          solver=None, tol=None, max_models_per_batch: int | None = None,
                          memory_budget: int = MEMORY_BUDGET, device="cpu", min_classes: int = 2,
                          metric: str | None = None):
    """Exact Shapley values of the clusters of the training set: trains all 2^p subsets of the p clusters.

    X (n, d), y (n,) class labels or regression targets, X_val (m, d), y_val (m,); cluster_labels (n,) integers
    (or any sortable labels) naming p <= 14 clusters; value i belongs to the i-th smallest label (for labels
    0..p-1, to cluster i, as EcoVal's ``cluster_labels_``). task: "classification" (learner "logreg", U = validation
    mean log-likelihood, or with metric="expected_accuracy" the mean probability of the validation labels) or
    "regression" ("ridge", U = R^2); learner and metric None pick by task. The empty subset is the
    constant predictor. Returns (values (p,), utilities (2^p,)) with utilities[m] = U of the clusters {i : bit i of
    m is set}; the values sum to utilities[-1] - utilities[0]. solver, tol: the logreg solver ("newton" or
    "lbfgs"; None: Newton for at most 128 parameters per model, else L-BFGS) and its tolerance (None: the solver's
    default). min_classes: subsets with fewer classes score as the empty one (2: EcoVal's rule, so that its
    cluster values and these are values of the same game). max_models_per_batch / memory_budget bound the models
    trained at once (the values do not depend on
    them beyond rounding).
    """
    X = _features(X, "X")
    labels = _targets(cluster_labels, "cluster_labels", X.shape[0], "X")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
        raise ValueError("cluster_labels contains NaN or inf")
    ids, groups = np.unique(labels, return_inverse=True)
    p = len(ids)
    if p > MAX_EXACT_CLUSTERS:
        raise ValueError(f"cluster_labels names {p} clusters; exact_cluster_shapley trains all 2^p subsets and "
                         f"allows p <= {MAX_EXACT_CLUSTERS}")
    game = SubsetGame(X, y, X_val, y_val, groups.reshape(-1).astype(np.int64), task=task, learner=learner,
                      solver=solver, tol=tol, max_models_per_batch=max_models_per_batch,
                      memory_budget=memory_budget, device=device, min_classes=min_classes, metric=metric)
    masks = np.arange(1 << p, dtype=np.int64)
    kept = ((masks[:, None] >> np.arange(p)[None, :]) & 1).astype(bool)
    utilities = game.utilities(kept)
    return shapley_from_utilities(utilities), utilities


# ------------------------------------------------------------------------------------------------ TMC
def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    average = (starts + ends + 1) / 2.0          # mean of the 1-based positions start+1..end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two 1-D arrays of one length (average ranks for ties); NaN when either is
    constant."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman needs two 1-D arrays of one length >= 2, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("spearman: the arrays contain NaN or inf")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else float("nan")


def split_half_correlation(marginals) -> float:
    """Spearman of the mean marginal contributions over the even-numbered vs the odd-numbered permutations
    (rows 0, 2, 4, ... vs 1, 3, 5, ... of a (permutations, n) table): the reproducibility of the estimate from
    half of the permutations (the full estimate is more reproducible still)."""
    M = np.asarray(marginals, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] < 2:
        raise ValueError(f"marginals must be (permutations >= 2, n), got shape {M.shape}")
    return spearman(M[0::2].mean(0), M[1::2].mean(0))


@dataclasses.dataclass
class TMCResult:
    """TMC-Shapley estimate. values (n,): mean marginal contribution per point; marginals (P, n): the marginal
    contribution of point k in permutation r (0 after the truncation); permutations (P, n): the orders;
    truncated_at (P,): the prefix length after which the marginals are 0 (n: not truncated); utility_full U(D) and
    utility_empty U(empty); n_trainings: models trained (U(D) included); seconds: wall time; converged: every fit
    reached its tolerance; solver: the logreg solver ("cholesky" for ridge)."""

    values: np.ndarray
    marginals: np.ndarray
    permutations: np.ndarray
    truncated_at: np.ndarray
    utility_full: float
    utility_empty: float
    n_trainings: int
    seconds: float
    converged: bool
    solver: str = ""

    @property
    def standard_error(self) -> np.ndarray:
        """Standard error of each value over the permutations (ddof = 1)."""
        P = self.marginals.shape[0]
        return self.marginals.std(0, ddof=1) / math.sqrt(P) if P > 1 else np.full(self.values.shape, np.nan)

    def split_half(self) -> float:
        """Spearman of the means over the even vs the odd permutations (``split_half_correlation``)."""
        return split_half_correlation(self.marginals)


def tmc_shapley(X, y, X_val, y_val, *, task: str, learner: str | None = None, permutations: int = 100,
                truncation: Optional[float] = 0.01, patience: int = 1, random_state=0, solver=None, tol=None,
                max_models_per_batch: int | None = None, memory_budget: int = MEMORY_BUDGET, device="cpu",
                progress: Optional[Callable[[int, int], None]] = None, min_classes: int = 2,
                metric: str | None = None) -> TMCResult:
    """Truncated Monte Carlo Data Shapley (Ghorbani & Zou 2019) of every training point, trainings batched.

    X, y, X_val, y_val, task, learner, metric: as in ``exact_cluster_shapley`` (each point is its own player).
    permutations: P >= 1 random orders (numpy default_rng(random_state)). truncation: None (every prefix is
    trained: the plain Monte Carlo permutation estimate, unbiased) or a tolerance t > 0: a permutation stops after
    ``patience`` consecutive prefixes with |U(D) - U(prefix)| < t * |U(D)|, and the points after the stopping prefix
    get marginal 0. Without truncation the prefixes of many permutations are trained as one batch; with it, the
    prefix lengths run in blocks of 20 over a batch of permutations and a truncated permutation leaves the batch.
    The full prefix is U(D) (trained once). solver, tol, max_models_per_batch, memory_budget: as in
    ``exact_cluster_shapley``. progress(done, total): called after each batch of permutations.
    """
    if not _is_int(permutations) or permutations < 1:
        raise ValueError(f"permutations must be an int >= 1, got {permutations!r}")
    if truncation is not None and (isinstance(truncation, bool) or not isinstance(truncation, numbers.Real)
                                   or not math.isfinite(truncation) or truncation <= 0):
        raise ValueError(f"truncation must be None or a finite number > 0, got {truncation!r}")
    if not _is_int(patience) or patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    if random_state is not None and not _is_int(random_state) and \
            not isinstance(random_state, (np.random.Generator, np.random.SeedSequence)):
        raise ValueError(f"random_state must be None, an int or a numpy Generator, got {random_state!r}")
    began = time.perf_counter()
    X = _features(X, "X")
    n = X.shape[0]
    game = SubsetGame(X, y, X_val, y_val, np.arange(n, dtype=np.int64), task=task, learner=learner,
                      solver=solver, tol=tol, max_models_per_batch=max_models_per_batch,
                      memory_budget=memory_budget, device=device, min_classes=min_classes, metric=metric)
    rng = np.random.default_rng(random_state)
    perms = np.stack([rng.permutation(n) for _ in range(permutations)])
    u_full = float(game.utilities(np.ones((1, n), dtype=bool))[0])
    u_empty = game.empty_utility
    marginals = np.zeros((permutations, n), dtype=np.float64)
    truncated_at = np.full(permutations, n, dtype=np.int64)
    block = max(1, n - 1) if truncation is None else max(1, min(n - 1, TRUNCATION_BLOCK))
    batch = max(1, game.models_per_chunk // block)
    threshold = None if truncation is None else float(truncation) * abs(u_full)

    for start in range(0, permutations, batch):
        order = perms[start:start + batch]
        B = order.shape[0]
        rank = np.empty((B, n), dtype=np.int64)
        rank[np.arange(B)[:, None], order] = np.arange(n)[None, :]
        previous = np.full(B, u_empty)
        run = np.zeros(B, dtype=np.int64)
        active = np.ones(B, dtype=bool)
        for first in range(1, n + 1, block):
            lengths = np.arange(first, min(first + block, n + 1))
            rows = np.flatnonzero(active)
            if rows.size == 0:
                break
            trained = lengths[lengths < n]
            kept = rank[rows][:, None, :] < trained[None, :, None]        # (A, L, n)
            u = game.utilities(kept.reshape(-1, n)).reshape(rows.size, trained.size)
            if trained.size < lengths.size:                               # the full prefix: U(D)
                u = np.concatenate([u, np.full((rows.size, 1), u_full)], 1)
            live = np.ones(rows.size, dtype=bool)
            for j, length in enumerate(lengths):
                r = rows[live]
                point = order[r, length - 1]
                marginals[start + r, point] = u[live, j] - previous[r]
                previous[r] = u[live, j]
                if threshold is not None:
                    close = np.abs(u[live, j] - u_full) < threshold
                    run[r] = np.where(close, run[r] + 1, 0)
                    stop = run[r] >= patience
                    truncated_at[start + r[stop]] = length
                    active[r[stop]] = False
                    live[np.flatnonzero(live)[stop]] = False
        if progress is not None:
            progress(min(start + batch, permutations), permutations)

    return TMCResult(values=marginals.mean(0), marginals=marginals, permutations=perms, truncated_at=truncated_at,
                     utility_full=u_full, utility_empty=u_empty, n_trainings=game.n_trainings,
                     seconds=time.perf_counter() - began, converged=game.converged, solver=game.solver)
