"""The user-facing workflows behind `lossval-fast value` and `lossval-fast evaluate`, as plain functions.

- `value_rows`: value every row of a table (one value per input row, in input order).
- `evaluate`: the OpenDataVal / LossVal protocol (docs/algorithms.md §4): per run, a random z-scored
  train/valid/test split, noise on train and valid (`noisify_split`), each method values the noisy training set,
  then noisy-point detection F1 (exact 2-means on the values), the noisy-point discovery curve and the point-removal
  curves (remove the lowest- or highest-valued points first, in 5 % steps, retrain a simple model, score the clean
  test set).
- `write_report`: `results.json`, `report.md`, `discovery.png`, `removal.png`; `plot_values` for `value --plot`.

Invalid arguments raise ValueError with a message meant for a person (the command prints it as one line).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ._io import atomic_write
from .base import MAX_AUTO_CLASSES, infer_task, resolve_device  # noqa: F401 (the package's rules; the CLI imports them here)
from .valuation import (KINDS, discovery_curve, noisify_split, noisy_count, noisy_detection_auc,
                        noisy_detection_f1, standardize_split, two_means_split)
from .valuation.learners import LEARNERS as _BUILTIN_LEARNERS
from .valuation.methods import METHODS as _METHODS
from .valuation.splits import zscore_with

METHODS = tuple(_METHODS)                                   # the method registry's names (valuation/methods.py)
LABELS = {name: method.label for name, method in _METHODS.items()}
LEARNERS = tuple(_BUILTIN_LEARNERS)   # EcoVal's built-in learners (the registry's names)
DIAMETERS = ("batch", "global")
TASKS = ("classification", "regression")
# task="auto": an integer-valued target with at most this many distinct values is a class label.
REMOVAL_STEP = 0.05
DISCOVERY_STEPS = 20
FORMAT = "lossval-fast-evaluate/1"
MIN_TRAIN_ROWS = 5  # `value`: fewer training rows than this cannot say anything about a row


# ------------------------------------------------------------------------------------------------ options
@dataclasses.dataclass
class MethodOptions:
    """Settings of the valuation methods (the paper's defaults).

    epochs, lr, batch_size, diameter: LossVal (30 epochs, lr 0.01, batch 32, per-batch diameter).
    clusters, learner: EcoVal (20 clusters; learner None = logreg for classification, ridge for regression).
    k: KNN-Shapley neighbours (OpenDataVal's default 10).
    """

    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 32
    diameter: str = "batch"
    clusters: int = 20
    learner: Optional[str] = None
    k: int = 10

    def __post_init__(self):
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("clusters", 2), ("k", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) \
                or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.diameter not in DIAMETERS:
            raise ValueError(f"diameter must be one of {', '.join(DIAMETERS)}, got {self.diameter!r}")
        if self.learner is not None and self.learner not in LEARNERS:
            raise ValueError(f"learner must be one of {', '.join(LEARNERS)}, got {self.learner!r}")

    def describe(self, method: str, task: str) -> str:
        """The settings of `method` in a few words (for tables and progress lines)."""
        return _METHODS[method].describe(self, task)

    def settings(self, method: str) -> dict:
        """The options `method` uses, for results.json."""
        return {key: getattr(self, key) for key in _METHODS[method].options}


def check_methods(methods: Sequence[str], task: str) -> list[str]:
    """The method names, validated: known, not repeated, and KNN-Shapley only for classification."""
    methods = list(methods)
    if not methods:
        raise ValueError(f"no method given; choose from {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ValueError(f"method(s) listed twice: {', '.join(repeated)}")
    for m in methods:
        method = _METHODS[m]
        if task not in method.tasks:
            note = f" ({method.task_note})" if method.task_note else ""
            raise ValueError(f"{m} supports {' and '.join(method.tasks)} only{note}; drop it for a {task} target")
    return methods


def default_methods(task: str) -> list[str]:
    return [m for m, method in _METHODS.items() if task in method.tasks]


# ------------------------------------------------------------------------------------------------ helpers
def _distributed_values(estimator, x, y, xv, yv):
    """Run on every rank of lossval_fast.distributed.launch: the estimator's values over the ranks."""
    from . import distributed
    return distributed.fit(estimator, x, y, xv, yv).values_


def make_valuer(method: str, task: str, options: MethodOptions, device, *, verbose: bool = False,
                nproc: int = 1) -> Callable[..., np.ndarray]:
    """A function (x_train, y_train, x_valid, y_valid, seed) -> values (n_train,) float64 for `method`.

    Classification labels must be codes 0..C-1, regression targets floats; features as float arrays.
    nproc > 1 (LossVal, EcoVal): each fit runs over that many processes (lossval_fast.distributed.launch, gloo on
    CPU, one GPU per process with NCCL), the threads shared out between them.
    """
    device = resolve_device(device)
    if isinstance(nproc, bool) or not isinstance(nproc, (int, np.integer)) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    over_processes = [name for name, m in _METHODS.items() if m.over_processes]
    if nproc > 1 and method not in over_processes:
        raise ValueError(f"nproc > 1 runs {' or '.join(LABELS[m] for m in over_processes)} over processes; {method} "
                         "runs in one process")

    def fit(estimator, x, y, xv, yv):
        if nproc == 1:
            return estimator.fit(x, y, xv, yv).values_
        from . import distributed
        threads = max(1, torch.get_num_threads() // nproc)
        return distributed.launch(int(nproc), _distributed_values, estimator, x, y, xv, yv, threads=threads)

    build = _METHODS[method].make

    def run(x, y, xv, yv, seed, checkpoint=None):
        """checkpoint: a path where LossVal and EcoVal save their state and resume from (None: no file)."""
        if checkpoint is not None and method not in CHECKPOINTED:
            raise ValueError(f"checkpoints apply to {' and '.join(CHECKPOINTED)}, not to {method}")
        estimator = build(task, options, device, seed, verbose, checkpoint)
        return np.asarray(fit(estimator, x, y, xv, yv), dtype=np.float64).reshape(-1)

    return run


CHECKPOINTED = tuple(name for name, m in _METHODS.items() if m.checkpoints)


def checkpoint_paths(checkpoint, method: str) -> tuple:
    """The checkpoint files of value_rows' fits: `checkpoint` for fit 1, `checkpoint`.fit2 for fit 2 (None, None
    without a checkpoint)."""
    if checkpoint is None:
        return None, None
    if method not in CHECKPOINTED:
        raise ValueError(f"checkpoints apply to {' and '.join(CHECKPOINTED)}, not to {method}")
    path = os.fspath(checkpoint)
    return path, path + ".fit2"


def _resume_note(path, say):
    if path is not None and os.path.exists(path):
        say(f"resuming from checkpoint {path}")
    return path


def machine_info(device=None) -> dict:
    """The machine a result came from: CPU model, cores, torch threads, versions, device."""
    from . import __version__, info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = resolve_device(device)
    built = info()
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_capability": built.get("cpu_capability"), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "python": platform.python_version(), "lossval_fast": __version__,
            "platform": platform.platform()}


def describe_machine(machine: dict) -> str:
    device = machine["device_name"] if machine["device"] != "cpu" else "CPU"
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads, "
            f"{device}, torch {machine['torch']}, lossval_fast {machine['lossval_fast']}")


def _zscore_with(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(values - mean) / (std + 1e-8) with the statistics of `reference` (OpenDataVal's formula, overflow-safe)."""
    return zscore_with(values, reference)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


# ------------------------------------------------------------------------------------------------ value
def _check_validation(X, validation, val_size):
    """(X_val, y_val) of validation=(X_val, y_val) (features flattened to float64), or (None, None) with a
    val_size that leaves both fits of value_rows enough training rows."""
    n = len(X)
    if validation is not None:
        X_val = np.asarray(validation[0], dtype=np.float64).reshape(len(validation[0]), -1)
        y_val = np.asarray(validation[1])
        if X_val.shape[1] != X.shape[1]:
            raise ValueError(f"the validation set has {X_val.shape[1]} features, the data {X.shape[1]}")
        if n < MIN_TRAIN_ROWS or len(X_val) < 1:
            raise ValueError(f"{n} training and {len(X_val)} validation rows are too few (need at least "
                             f"{MIN_TRAIN_ROWS} and 1)")
        return X_val, y_val
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or val_size < 1:
        raise ValueError(f"val_size must be an integer >= 1 (or pass validation=(X_val, y_val)), got "
                         f"{val_size!r}")
    if n - val_size < max(val_size, MIN_TRAIN_ROWS):
        raise ValueError(f"{n} rows are too few for a validation set of {val_size} rows: each of the two fits "
                         f"holds out {val_size} rows and trains on the rest, so at least "
                         f"{max(2 * val_size, val_size + MIN_TRAIN_ROWS)} rows are needed")
    return None, None


def _standardised(X, y, X_val, y_val, task):
    """(Z, t, Z_val, t_val, classes): features z-scored with X's statistics (OpenDataVal's), class labels coded
    0..C-1 over both sets, regression targets z-scored with y's statistics."""
    n = len(X)
    Z = _zscore_with(X, X)
    Z_val = _zscore_with(X_val, X) if X_val is not None else None
    if task == "classification":
        both = y if y_val is None else np.concatenate([y, y_val])
        classes, codes = np.unique(both, return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        return Z, codes[:n], Z_val, (codes[n:] if y_val is not None else None), classes
    try:
        yf = y.astype(np.float64)
        yf_val = y_val.astype(np.float64) if y_val is not None else None
    except (TypeError, ValueError):
        raise ValueError("regression needs a numeric target; text labels are classes") from None
    return Z, _zscore_with(yf, yf), Z_val, (_zscore_with(yf_val, yf) if yf_val is not None else None), None


def value_rows(X, y, *, task: str, method: str = "lossval", options: MethodOptions | None = None,
               validation=None, val_size: int | None = None, seed: int = 0, device="auto",
               verbose: bool = False, progress: Callable[[str], None] | None = None, nproc: int = 1,
               checkpoint: str | os.PathLike | None = None) -> dict:
    """Value every row of (X, y); returns a dict with `values` (n,), `fit` (n,), `classes`, `seconds`.

    X (n, ...) features (flattened), y (n,) labels or targets, both as loaded (not standardised). Features are
    z-scored with the statistics of X (and the validation rows with the same statistics); regression targets
    likewise; class labels become codes 0..C-1 over the labels of X and the validation set together.

    nproc > 1: each LossVal or EcoVal fit runs over that many processes (lossval_fast.distributed).

    checkpoint: a path (LossVal, EcoVal): the fit saves its state there and a later call with the same data,
    method and options resumes from it (checkpoint_paths names the second fit's file).

    validation=(X_val, y_val): every row of X is a training row, valued by one fit against that set (fit = 1).
    Otherwise val_size rows are held out at random as the validation set of fit 1, which values the other rows;
    those held-out rows are valued by fit 2, which holds out the next val_size rows instead (fit = 2). Both fits
    train on n - val_size rows, so every input row gets a value from a fit of the same size.
    """
    options = options or MethodOptions()
    say = progress or (lambda message: None)
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    y = np.asarray(y)
    n = len(X)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    check_methods([method], task)
    X_val, y_val = _check_validation(X, validation, val_size)
    Z, t, Z_val, t_val, classes = _standardised(X, y, X_val, y_val, task)

    valuer = make_valuer(method, task, options, device, verbose=verbose, nproc=nproc)
    checkpoints = checkpoint_paths(checkpoint, method)
    label = LABELS[method]
    values = np.empty(n, dtype=np.float64)
    fit = np.ones(n, dtype=np.int64)
    start = time.perf_counter()
    if Z_val is not None:
        say(f"{label} ({options.describe(method, task)}): {n} training rows against {len(Z_val)} validation rows")
        values[:] = valuer(Z, t, Z_val, t_val, seed, _resume_note(checkpoints[0], say))
    else:
        order = np.random.RandomState(seed).permutation(n)
        held = [order[:val_size], order[val_size:2 * val_size]]
        for number, valid in enumerate(held, start=1):
            train = np.setdiff1d(np.arange(n), valid)  # ascending: training rows keep their input order
            say(f"fit {number}/2 {label} ({options.describe(method, task)}): {len(train)} training rows against "
                f"{len(valid)} held-out rows" + ("" if number == 1 else
                                                 f" (values the {len(held[0])} rows fit 1 held out)"))
            result = valuer(Z[train], t[train], Z[valid], t[valid], seed + number - 1,
                            _resume_note(checkpoints[number - 1], say))
            if number == 1:
                values[train] = result
            else:  # only the rows fit 1 held out take their value from fit 2
                values[held[0]] = result[np.searchsorted(train, held[0])]
                fit[held[0]] = 2
    seconds = time.perf_counter() - start
    return {"values": values, "fit": fit, "classes": classes, "seconds": seconds, "method": method,
            "settings": options.describe(method, task), "task": task}


# ------------------------------------------------------------------------------------------------ removal
class _ConstantModel:
    """What a training set with a single class predicts: that class."""

    def __init__(self, value):
        self.value = value

    def predict(self, X):
        return np.full(len(X), self.value)


def removal_model(task: str):
    """(factory, description, metric name): scikit-learn's LogisticRegression / Ridge when installed, otherwise
    the package's own LogReg / Ridge (lossval_fast.valuation.learners)."""
    try:
        from sklearn.linear_model import LogisticRegression, Ridge
    except ImportError:
        from .valuation.learners import LogReg, Ridge as OwnRidge
        if task == "classification":
            return (lambda: LogReg(), "lossval_fast LogReg (L2 1e-3, Newton)", "accuracy")
        return (lambda: OwnRidge(), "lossval_fast Ridge (L2 1e-3)", "R^2")
    if task == "classification":
        return (lambda: LogisticRegression(max_iter=1000), "scikit-learn LogisticRegression(max_iter=1000)",
                "accuracy")
    return (lambda: Ridge(alpha=1.0), "scikit-learn Ridge(alpha=1.0)", "R^2")


def _score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if task == "classification":
        return float(np.mean(y_true == y_pred))
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return 1.0 - float(np.sum((y_true - y_pred) ** 2)) / total if total > 0 else 0.0


def _one_blas_thread():
    """BLAS on one thread while the small refits run: scipy's L-BFGS on a 1000 x 48 problem makes thousands of
    tiny BLAS calls, and a thread pool per call made each fit 20x slower on a busy 2-core machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _fit_score(factory, task, x, y, x_test, y_test) -> float:
    if task == "classification" and len(np.unique(y)) < 2:
        model = _ConstantModel(y[0])
    else:
        model = factory()
        with warnings.catch_warnings(), _one_blas_thread():
            warnings.simplefilter("ignore")  # convergence chatter of small refits says nothing about the curve
            model.fit(x, y)
    return _score(task, y_test, np.asarray(model.predict(x_test)).reshape(-1))


def removal_fractions(maximum: float = 0.5, step: float = REMOVAL_STEP) -> np.ndarray:
    count = int(math.floor(maximum / step + 1e-9))
    return np.round(np.arange(count + 1) * step, 10)


def removal_curves(values, x_train, y_train, x_test, y_test, *, task: str, fractions, factory=None,
                   baseline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Test score after removing round(f * n) lowest-valued (first array) or highest-valued (second) training
    points, for each fraction f; equal values are removed in index order (stable sort)."""
    if factory is None:
        factory = removal_model(task)[0]
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    n = len(values)
    lowest, highest = [], []
    for f in fractions:
        k = _round_half_up(f * n)
        if k == 0:
            score = baseline if baseline is not None else _fit_score(factory, task, x_train, y_train, x_test,
                                                                     y_test)
            lowest.append(score)
            highest.append(score)
            continue
        keep_low, keep_high = np.sort(order[k:]), np.sort(order[:n - k])
        lowest.append(_fit_score(factory, task, x_train[keep_low], y_train[keep_low], x_test, y_test))
        highest.append(_fit_score(factory, task, x_train[keep_high], y_train[keep_high], x_test, y_test))
    return np.array(lowest), np.array(highest)


# ------------------------------------------------------------------------------------------------ evaluate
def check_protocol(n: int, *, n_train: int, n_valid: int, n_test: int | None, rate: float, noise: str) -> int:
    """Validate the split sizes and the noise against n rows; returns n_test (the rest when None)."""
    if noise not in KINDS:
        raise ValueError(f"noise must be one of {', '.join(KINDS)}, got {noise!r}")
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0 < rate < 1):
        raise ValueError(f"rate must be a fraction in (0, 1), got {rate!r}")
    if n_train < 2 or n_valid < 1:
        raise ValueError(f"the split needs at least 2 training and 1 validation rows, got train {n_train}, "
                         f"valid {n_valid}")
    if n_test is None:
        n_test = n - n_train - n_valid
        if n_test < 1:
            raise ValueError(f"{n} rows are too few for the split {n_train} train + {n_valid} valid + at least "
                             f"1 test row; pass smaller --train/--valid sizes")
    elif n_test < 1 or n_train + n_valid + n_test > n:
        raise ValueError(f"{n} rows are too few for the split {n_train} train + {n_valid} valid + {n_test} test "
                         f"= {n_train + n_valid + n_test} rows")
    if noisy_count(n_train, rate) == 0:
        raise ValueError(f"rate {rate:g} makes no training point noisy (round({rate:g} x {n_train}) = 0): raise "
                         f"the rate or the training size")
    if noise == "mixed" and noisy_count(n_train, rate) < 2:
        raise ValueError(f"mixed noise needs at least 2 noisy training points (one of each kind); rate {rate:g} "
                         f"gives {noisy_count(n_train, rate)} of {n_train}")
    return n_test


def _score_run(valuer, seed, split, noisy, mask, task, fractions, factory, baseline) -> dict:
    """One method on one run: its values' F1, AUC and discovery curve against the noisy mask, the valuation's time
    alone, and the removal curves (lowest and highest values first)."""
    start = time.perf_counter()
    values = valuer(noisy.x_train, noisy.y_train, noisy.x_valid, noisy.y_valid, seed)
    seconds = time.perf_counter() - start
    _, found = discovery_curve(values, mask, steps=DISCOVERY_STEPS)
    low, high = removal_curves(values, noisy.x_train, noisy.y_train, split.x_test, split.y_test, task=task,
                               fractions=fractions, factory=factory, baseline=baseline)
    return {"f1": noisy_detection_f1(values, mask), "auc": noisy_detection_auc(values, mask), "time_s": seconds,
            "discovery": found.tolist(), "lowest": low.tolist(), "highest": high.tolist()}


def _summarise(record: dict, label: str, settings: str, options: dict) -> dict:
    """A method's per-run records with their means (and sample standard deviations: none for one run)."""
    runs = len(record["f1"])
    return {
        "label": label,
        "settings": settings,
        "options": options,
        "f1": record["f1"],
        "f1_mean": float(np.mean(record["f1"])),
        "f1_std": float(np.std(record["f1"], ddof=1)) if runs > 1 else None,  # one run measures no spread
        "auc": record["auc"],
        "auc_mean": float(np.mean(record["auc"])),
        "auc_std": float(np.std(record["auc"], ddof=1)) if runs > 1 else None,
        "time_s": record["time_s"],
        "time_mean_s": float(np.mean(record["time_s"])),
        "discovery": {"mean": np.mean(record["discovery"], axis=0).tolist(), "runs": record["discovery"]},
        "removal": {"lowest_first": {"mean": np.mean(record["lowest"], axis=0).tolist(), "runs": record["lowest"]},
                    "highest_first": {"mean": np.mean(record["highest"], axis=0).tolist(),
                                      "runs": record["highest"]}},
    }


def evaluate(X, y, *, task: str, noise: str = "label", rate: float = 0.1, runs: int = 5,
             methods: Sequence[str] | None = None, n_train: int = 1000, n_valid: int = 100,
             n_test: int | None = None, seed: int = 0, options: MethodOptions | None = None, device="auto",
             removal_max: float = 0.5, data_name: str = "data",
             progress: Callable[[str], None] | None = None) -> dict:
    """Run the noisy-point detection protocol `runs` times; returns the results dict that write_report stores.

    Run r uses numpy.random.RandomState(seed + r) for the split and then the noise (OpenDataVal's DataFetcher
    threads one stream through both), and seed + r for every method. Labels of a classification target become
    codes 0..C-1 over the whole data set; features (and regression targets) are z-scored over the whole data set
    before the split, as OpenDataVal's loader does.

    Per method and run: the values of the noisy training points, F1 of the 2-means split against the noisy mask,
    the discovery curve (fraction of noisy points among the q lowest-valued, q = 0, 0.05, ..., 1), the time of
    the valuation alone, and the removal curves (test accuracy or R^2 of a model refit after removing 0, 5, ...,
    removal_max·100 % of the training points, lowest- or highest-valued first). Summaries: F1 mean and sample
    standard deviation (ddof = 1; 0 for one run), time mean, mean curves.
    """
    options = options or MethodOptions()
    say = progress or (lambda message: None)
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"runs must be an integer >= 1, got {runs!r}")
    if not 0 < removal_max <= 0.95:
        raise ValueError(f"removal_max must be in (0, 0.95], got {removal_max!r}")
    X = np.asarray(X)
    X = X.reshape(len(X), -1)
    y = np.asarray(y)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    methods = check_methods(default_methods(task) if methods is None else methods, task)
    n_test = check_protocol(len(X), n_train=n_train, n_valid=n_valid, n_test=n_test, rate=rate, noise=noise)
    factory, model_name, metric = removal_model(task)
    fractions = removal_fractions(removal_max)
    valuers = {m: make_valuer(m, task, options, device) for m in methods}
    per_method = {m: {"f1": [], "auc": [], "time_s": [], "discovery": [], "lowest": [], "highest": []} for m in methods}
    started = datetime.datetime.now(datetime.timezone.utc)
    wall = time.perf_counter()
    classes = None
    n_noisy = noisy_count(n_train, rate)

    for run in range(runs):
        rs = np.random.RandomState(seed + run)
        split = standardize_split(X, y, n_train=n_train, n_valid=n_valid, n_test=n_test, task=task,
                                  random_state=rs)
        classes = split.classes
        noisy, mask, _ = noisify_split(split, noise, rate, random_state=rs)
        baseline = _fit_score(factory, task, noisy.x_train, noisy.y_train, split.x_test, split.y_test)
        for method in methods:
            record = _score_run(valuers[method], seed + run, split, noisy, mask, task, fractions, factory, baseline)
            for key, value in record.items():
                per_method[method][key].append(value)
            say(f"run {run + 1}/{runs}  {LABELS[method]:<14} F1 {record['f1']:.3f}  AUC {record['auc']:.3f}  "
                f"{record['time_s']:7.2f} s")

    summary = {method: _summarise(per_method[method], LABELS[method], options.describe(method, task),
                                  options.settings(method)) for method in methods}
    return {
        "format": FORMAT,
        "data": data_name,
        "rows": int(len(X)),
        "features": int(X.shape[1]),
        "task": task,
        "classes": None if classes is None else [c.item() if hasattr(c, "item") else c for c in classes],
        "noise": noise,
        "rate": float(rate),
        "runs": int(runs),
        "seed": int(seed),
        "split": {"train": int(n_train), "valid": int(n_valid), "test": int(n_test)},
        "noisy_train_points": int(n_noisy),
        "discovery_fractions": (np.arange(DISCOVERY_STEPS + 1) / DISCOVERY_STEPS).tolist(),
        "removal": {"model": model_name, "metric": metric, "fractions": fractions.tolist()},
        "machine": machine_info(device),
        "started": started.isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - wall,
        "methods": summary,
    }


# ------------------------------------------------------------------------------------------------ report
def results_table(results: dict) -> str:
    """The markdown table: method, settings, F1 and AUC mean ± std, time per run."""
    lines = ["| method | settings | noisy-point F1 (mean ± std) | AUC (mean ± std) | time per run (s) |",
             "|---|---|---|---|---|"]
    for record in results["methods"].values():
        auc = _mean_spread(record["auc_mean"], record["auc_std"]) if "auc_mean" in record else "–"
        lines.append(f"| {record['label']} | {record['settings']} | {_mean_spread(record['f1_mean'], record['f1_std'])} "
                     f"| {auc} | {record['time_mean_s']:.2f} |")
    return "\n".join(lines)


def _mean_spread(mean: float, std) -> str:
    """'mean ± std', or the mean alone when one run measured no spread (std None)."""
    return f"{mean:.3f} (1 run, no spread)" if std is None else f"{mean:.3f} ± {std:.3f}"


def _removal_table(results: dict) -> str:
    fractions = results["removal"]["fractions"]
    shown = [f for f in (0.1, 0.2, 0.3) if any(abs(f - g) < 1e-9 for g in fractions)]
    index = {round(f, 6): i for i, f in enumerate(fractions)}
    header = ["method", "none removed"] + [f"{f:.0%} lowest removed" for f in shown] + \
             [f"{f:.0%} highest removed" for f in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in results["methods"].values():
        low = record["removal"]["lowest_first"]["mean"]
        high = record["removal"]["highest_first"]["mean"]
        cells = [record["label"], f"{low[0]:.3f}"] + [f"{low[index[round(f, 6)]]:.3f}" for f in shown] + \
                [f"{high[index[round(f, 6)]]:.3f}" for f in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(results: dict) -> str:
    split = results["split"]
    rate = results["rate"]
    random_f1 = rate / (rate + 0.5)
    metric = "test accuracy" if results["removal"]["metric"] == "accuracy" else "test R²"
    lines = [
        f"# Noisy-point detection: {results['data']}, {results['noise']} noise at {rate:.0%}",
        "",
        "| data set | rows | features | task | split (train / valid / test) | noise | rate | runs | seed |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {results['data']} | {results['rows']} | {results['features']} | {results['task']} | "
        f"{split['train']} / {split['valid']} / {split['test']} | {results['noise']} | {rate:g} | {results['runs']} "
        f"| {results['seed']} |",
        "",
        f"Machine: {describe_machine(results['machine'])}. Started {results['started']}, "
        f"{results['wall_time_s']:.1f} s in all.",
        "",
        results_table(results),
        "",
        f"Each run draws a new split (z-scored over the whole data set), puts {results['noise']} noise on "
        f"{results['noisy_train_points']} of the {split['train']} training points (and on the validation set), and "
        "each method values the noisy training set. F1: the lower cluster of the exact 1-D 2-means split of the "
        "values is predicted noisy (OpenDataVal's kmeans_f1); mean ± sample standard deviation over the runs. "
        f"Random values score about r / (r + 0.5) = {random_f1:.3f} at rate r = {rate:g}. AUC: the probability "
        "that a noisy point's value is below a clean point's (random values: 0.5). Time: the valuation alone, mean "
        "over the runs.",
        "",
        f"## Point removal ({metric}, {results['removal']['model']})",
        "",
        _removal_table(results),
        "",
        "Remove the lowest-valued points first (a good valuation removes the noisy points first, so the score "
        "holds or rises) or the highest-valued first (a good valuation removes the most useful points, so the "
        "score falls fast); mean over the runs.",
        "",
        "## Plots",
        "",
        "- `discovery.png`: fraction of the noisy points found among the lowest-valued points, against the fraction "
        "inspected (the diagonal is random order, the dashed line a perfect ranking).",
        "- `removal.png`: the point-removal curves above, for every removal step.",
        "",
        "Numbers for every run are in `results.json`.",
        "",
    ]
    return "\n".join(lines)


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.2):
    """A matplotlib Figure on the Agg canvas (no global pyplot state, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("the plots need matplotlib: pip install matplotlib") from None
    figure = Figure(figsize=(width * ncols, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> None:
    """The figure to `path`, whole or not at all; the format from the suffix (.png, .pdf, .svg; none: PNG)."""
    kind = Path(path).suffix[1:].lower() or "png"
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format=kind)


def plot_discovery(results: dict, path) -> None:
    figure = _figure()
    ax = figure.add_subplot(1, 1, 1)
    q = np.asarray(results["discovery_fractions"])
    share = results["noisy_train_points"] / results["split"]["train"]
    ax.plot(q, q, color="0.6", lw=1, label="random order")
    ax.plot(q, np.minimum(q / share, 1.0), color="0.3", lw=1, ls="--", label="perfect ranking")
    for record in results["methods"].values():
        ax.plot(q, record["discovery"]["mean"], marker="o", ms=3,
                label=f"{record['label']} (F1 {record['f1_mean']:.2f})")
    ax.set_xlabel("fraction of training points inspected (lowest values first)")
    ax.set_ylabel("fraction of noisy points found")
    ax.set_title(f"{results['data']}: {results['noise']} noise {results['rate']:.0%}, {results['runs']} run(s)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def plot_removal(results: dict, path) -> None:
    figure = _figure(ncols=2, width=5.5)
    fractions = np.asarray(results["removal"]["fractions"])
    metric = "test accuracy" if results["removal"]["metric"] == "accuracy" else "test R²"
    axes = [figure.add_subplot(1, 2, i + 1) for i in range(2)]
    for ax, key, title in ((axes[0], "lowest_first", "lowest-valued removed first"),
                           (axes[1], "highest_first", "highest-valued removed first")):
        for record in results["methods"].values():
            ax.plot(fractions, record["removal"][key]["mean"], marker="o", ms=3, label=record["label"])
        ax.set_title(title)
        ax.set_xlabel("fraction of training points removed")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{results['data']}: {results['removal']['model']}", fontsize=9)
    figure.tight_layout()
    _save(figure, path)


def plot_values(values, path, *, title: str = "data values") -> None:
    """Histogram and sorted values, with the 2-means split between the low cluster and the rest marked."""
    values = np.asarray(values, dtype=np.float64)
    figure = _figure(ncols=2, width=5.0)
    low = two_means_split(values) if len(values) >= 2 else np.zeros(len(values), bool)
    hist, ranked = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    hist.hist(values, bins=min(50, max(5, len(values) // 5)), color="tab:blue", alpha=0.8)
    hist.set_xlabel("value")
    hist.set_ylabel("rows")
    hist.set_title("distribution")
    ranked.plot(np.arange(len(values)), np.sort(values), color="tab:blue", lw=1.2)
    if low.any() and not low.all():
        threshold = 0.5 * (values[low].max() + values[~low].min())
        hist.axvline(threshold, color="tab:red", ls="--", lw=1, label=f"2-means split ({int(low.sum())} low)")
        ranked.axhline(threshold, color="tab:red", ls="--", lw=1)
        hist.legend(fontsize=8)
    ranked.set_xlabel("rank (lowest first)")
    ranked.set_ylabel("value")
    ranked.set_title("sorted values")
    for ax in (hist, ranked):
        ax.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(figure, path)


def write_report(results: dict, out_dir) -> dict:
    """Write results.json, report.md, discovery.png and removal.png into out_dir (created); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "report": out / "report.md", "discovery": out / "discovery.png",
             "removal": out / "removal.png"}
    with atomic_write(paths["results"]) as f:
        f.write(json.dumps(results, indent=1) + "\n")
    with atomic_write(paths["report"]) as f:
        f.write(report_markdown(results))
    plot_discovery(results, paths["discovery"])
    plot_removal(results, paths["removal"])
    return paths
