"""The valuation methods, one registry: what the evaluation workflows, the command line and the process launcher
read to know a method (its name and label, the options it takes, the tasks it values, whether it checkpoints and
runs over processes, and how its estimator is built). Adding a method is one `register(Method(...))` plus tests."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..base import Estimator

__all__ = ["Method", "METHODS", "register", "get", "of", "RandomValues"]


@dataclasses.dataclass(frozen=True)
class Method:
    """name: the method's name in `--methods`, results and options. label: its name in tables. options: the
    MethodOptions fields it reads. tasks: the tasks it values; task_note: why not the others. checkpoints: it saves
    and resumes from a checkpoint file. over_processes: lossval_fast.distributed runs it over ranks. make(task,
    options, device, seed, verbose, checkpoint): its estimator, whose fit(X, y, X_val, y_val) sets values_ (and,
    when over_processes, takes ranks=: a base.Ranks). estimator: the class name of what make builds (of() finds a
    method from an estimator). describe(options, task): its settings in a few words."""

    name: str
    label: str
    options: tuple
    tasks: tuple
    checkpoints: bool
    over_processes: bool
    make: Callable
    describe: Callable
    estimator: str = ""
    task_note: str = ""
    baseline: bool = False   # a reference to beat (random values), not offered by `lossval-fast value`


class RandomValues(Estimator):
    """Values drawn uniformly on [0, 1): the baseline every valuation must beat."""

    def __init__(self, random_state=None):
        self.random_state = random_state

    def fit(self, X, y=None, X_val=None, y_val=None) -> "RandomValues":
        self.values_ = np.random.default_rng(self.random_state).random(len(X))
        return self


def _lossval(task, options, device, seed, verbose, checkpoint):
    from .lossval import LossVal
    return LossVal(task=task, epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                   diameter=options.diameter, device=device, random_state=seed, verbose=verbose,
                   checkpoint=checkpoint)


def _ecoval(task, options, device, seed, verbose, checkpoint):
    from .ecoval import EcoVal
    return EcoVal(n_clusters=options.clusters, learner=options.learner, task=task, device=device, random_state=seed,
                  verbose=verbose, checkpoint=checkpoint)


def _knn_shapley(task, options, device, seed, verbose, checkpoint):
    from .knn_shapley import KNNShapley
    return KNNShapley(k=options.k, task=task, device=device)


def _describe_lossval(options, task):
    text = f"{options.epochs} epochs, batch {options.batch_size}, lr {options.lr:g}"
    return text + (", global diameter" if options.diameter == "global" else "")


def _describe_ecoval(options, task):
    return f"{options.clusters} clusters, {options.learner or ('logreg' if task == 'classification' else 'ridge')}"


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def of(estimator) -> Method | None:
    """The registered method whose estimator `estimator` is (an instance of its class or of a subclass), or None."""
    names = {cls.__name__ for cls in type(estimator).__mro__}
    return next((m for m in METHODS.values() if m.estimator in names), None)


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


BOTH = ("classification", "regression")
register(Method("lossval", "LossVal", ("epochs", "lr", "batch_size", "diameter"), BOTH, checkpoints=True,
                over_processes=True, make=_lossval, describe=_describe_lossval, estimator="LossVal"))
register(Method("ecoval", "EcoVal", ("clusters", "learner"), BOTH, checkpoints=True, over_processes=True,
                make=_ecoval, describe=_describe_ecoval, estimator="EcoVal"))
register(Method("knn-shapley", "KNN-Shapley", ("k",), ("classification",), checkpoints=False, over_processes=False,
                make=_knn_shapley, describe=lambda options, task: f"k = {options.k}",
                task_note="it matches labels exactly", estimator="KNNShapley"))
register(Method("random", "random values", (), BOTH, checkpoints=False, over_processes=False,
                make=lambda task, options, device, seed, verbose, checkpoint: RandomValues(random_state=seed),
                describe=lambda options, task: "uniform on [0, 1)", baseline=True, estimator="RandomValues"))
