"""What every estimator of the package shares (LossVal, EcoVal, KNNShapley, KMeans): scikit-learn's parameter
protocol (get_params / set_params / clone, a repr of the non-default parameters), one NotFittedError, the fitted
check, the device and task resolution, and `Ranks`: the processes a fit is spread over, passed explicitly to fit.
A leaf module: it imports nothing from the package."""
from __future__ import annotations

import copy
import inspect

import numpy as np
import torch

__all__ = ["Estimator", "NotFittedError", "Ranks", "TASKS", "MAX_AUTO_CLASSES", "check_is_fitted", "infer_task",
           "resolve_device", "resolve_task", "task_from"]

TASKS = ("classification", "regression")
MAX_AUTO_CLASSES = 20   # task="auto": integer-valued targets with more distinct values are taken as regression


def task_from(kind: str, integral: bool, distinct: int, one_hot: bool = False) -> str:
    """The package's one rule for task="auto", on a summary of the targets: text or boolean labels (numpy dtype
    kind O, U, S, b) and one-hot rows are classes; integer-valued numbers are classes when at most
    MAX_AUTO_CLASSES distinct values occur; anything else (a non-integer or non-finite value, more values) is a
    regression target."""
    if kind in "OUSb" or one_hot:
        return "classification"
    return "classification" if integral and distinct <= MAX_AUTO_CLASSES else "regression"


def _is_one_hot(y: np.ndarray) -> bool:
    """(n, C) rows of 0/1 with exactly one 1 each."""
    if y.ndim != 2 or y.shape[1] < 2 or y.dtype.kind not in "biuf":
        return False
    return bool(np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all())


def infer_task(y) -> str:
    """"classification" or "regression" for the targets y by `task_from`'s rule."""
    y = np.asarray(y)
    if y.dtype.kind in "OUSb":
        return "classification"
    if y.dtype.kind not in "iuf":
        raise ValueError(f"cannot infer the task of a target of dtype {y.dtype}")
    if _is_one_hot(y):
        return "classification"
    integral = y.dtype.kind in "iu" or bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    return task_from(y.dtype.kind, integral, len(np.unique(y)) if integral else 0)


def resolve_task(task, y, name: str = "task") -> str:
    """task, checked: "auto" becomes infer_task(y)."""
    if isinstance(task, str) and task == "auto":
        return infer_task(y)
    if not (isinstance(task, str) and task in TASKS):
        raise ValueError(f"{name} must be 'auto', 'classification' or 'regression', got {task!r}")
    return task


class NotFittedError(ValueError, AttributeError):
    """A fitted attribute or method used before fit() (a ValueError and an AttributeError, like scikit-learn's)."""


def check_is_fitted(estimator, attribute: str, action: str) -> None:
    """NotFittedError naming the estimator and what needs the fit, unless `attribute` is set."""
    if getattr(estimator, attribute, None) is None:
        name = type(estimator).__name__
        raise NotFittedError(f"this {name} instance is not fitted yet; call fit before {action}")


def resolve_device(device) -> torch.device:
    """None or 'auto' -> CUDA when available, else the CPU; any other name must parse and exist."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here (torch "
                             f"{torch.__version__}); use device='cpu' (--device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return resolved


class Ranks:
    """The processes one fit is spread over, as a fit sees them: `fit(..., ranks=...)` of EcoVal, LossVal and
    kmeans / KMeans take one (lossval_fast.distributed makes it from a torch.distributed process group); None is one
    process. Every method is collective: each rank calls it, in the same order."""

    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        """Wait until every rank is here."""
        raise NotImplementedError

    def all_gather(self, obj) -> list:
        """Every rank's `obj` (a picklable value), in rank order, on every rank."""
        raise NotImplementedError

    def broadcast(self, obj, src: int):
        """Rank `src`'s `obj` on every rank."""
        raise NotImplementedError


class Estimator:
    """scikit-learn's parameter protocol: the parameters are the keyword arguments of __init__, stored unchanged
    under their own names; learned attributes end in '_' and are set by fit, which returns self."""

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p.name for p in signature.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"unknown parameter {key!r} for {type(self).__name__}; its parameters are "
                                 f"{', '.join(valid)}")
            setattr(self, key, value)
        return self

    def clone(self):
        """An unfitted copy with the same parameters (a parameter that holds state, such as a torch model, is
        deep-copied, so that fitting the copy leaves this one's untouched)."""
        return type(self)(**{k: copy.deepcopy(v) for k, v in self.get_params().items()})

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = []
        for name, value in self.get_params().items():
            default = defaults.get(name, inspect.Parameter.empty)
            try:
                same = default is not inspect.Parameter.empty and bool(value == default)
            except Exception:  # an array or a module: never equal to a scalar default here
                same = False
            if not same:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"
