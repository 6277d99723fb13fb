"""LossVal and EcoVal as pyDVL valuation methods.

pyDVL (github.com/aai-institute/pyDVL, pydvl/valuation/base.py::Valuation) runs a method as

    valuation = LossValValuation(test_data=test, epochs=30)     # pyDVL >= 0.10: the valuation set goes here
    valuation.fit(train)                                         # returns the valuation
    result = valuation.result                                    # a ValuationResult (values(sort=True): sorted copy)

With pyDVL >= 0.10 installed, the valuations are subclasses of pyDVL's `Valuation` and return pyDVL's own
`ValuationResult` (sort, `+`, compute_removal_score, to_dataframe, isinstance all pyDVL's), and `.result` before
fit raises pyDVL's NotFittedException. Without pyDVL (it pins numpy < 2, which other peers of ours do not allow)
nothing of it is imported and this module's duck-typed `ValuationResult` stands in: the same constructor and the
read side of pyDVL 0.10's (`values`, `indices`, `names`, `variances`, `counts`, `stderr`, `algorithm`, `status`,
`sort(reverse, key, inplace)` returning the sorted result, iteration over `ValueItem`s, positional indexing,
`get(data_index)`, `positions()`, `to_dataframe(column, use_names)` indexed like pyDVL's, `copy()`).
`PYDVL` says which one is in use.

`fit(data)` accepts what pyDVL passes:
  - a pyDVL >= 0.10 `Dataset`: `data.data()` gives the raw (x, y) (a RawData with `.x`, `.y`, or a pair), and
    `data.indices` / `data.names` label the points; the validation ("test") set is the `test_data` given to the
    constructor (a Dataset, or an (x, y) pair);
  - a pyDVL <= 0.9 `Dataset`, which holds both splits: `x_train, y_train, x_test, y_test`, `indices`, `data_names`
    (its test split is the validation set unless `test_data` is given);
  - a plain (x, y) pair (indices 0..n-1).
Grouped datasets (pyDVL's GroupedDataset) are refused: LossVal and EcoVal value single points. `continue_from`
(a previous result to add to) is refused with a clear error: LossVal and EcoVal train once and do not accumulate
samples; a long fit resumes from a checkpoint instead (checkpoint=PATH, passed on to LossVal or EcoVal).
"""
from __future__ import annotations

import copy as _copy
import importlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from . import check_method, fit_method, prepare, seed_from
from ..valuation.splits import as_numpy

__all__ = ["LossValValuation", "EcoValValuation", "MethodValuation", "ValuationResult", "ValueItem", "NotFittedException", "PYDVL"]


def _load_pydvl():
    """pyDVL's (Valuation, ValuationResult, ValueItem, NotFittedException, Status) when pyDVL >= 0.10 is installed
    and imports, else None."""
    try:
        base = importlib.import_module("pydvl.valuation.base")
        result = importlib.import_module("pydvl.valuation.result")
        exceptions = importlib.import_module("pydvl.utils.exceptions")
        status = importlib.import_module("pydvl.utils.status")
        return (base.Valuation, result.ValuationResult, result.ValueItem, exceptions.NotFittedException,
                status.Status)
    except ImportError:
        return None
    except Exception as error:  # installed but broken (e.g. built for another numpy): say so, use our classes
        warnings.warn(f"pyDVL is installed but does not import ({type(error).__name__}: {error}); the pyDVL "
                      "adapter returns its own duck-typed ValuationResult", RuntimeWarning, stacklevel=2)
        return None


_PYDVL = _load_pydvl()
PYDVL = _PYDVL is not None  # True: the valuations and their results are pyDVL's own classes


class _NotFitted(ValueError):
    """pyDVL's NotFittedException where pyDVL is not installed (a ValueError, as there)."""

    def __init__(self, object_type):
        super().__init__(f"Objects of type {object_type} must be fitted before calling methods. Call method fit "
                         "with appropriate input.")


@dataclass
class ValueItem:
    """The value of one data point: data index, name, value, variance (0: deterministic) and count (1)."""

    idx: Any
    name: Any
    value: float
    variance: float
    count: int

    def __index__(self):
        return int(self.idx)


class ValuationResult:
    """Values of the points of a data set, in the shape of pyDVL's ValuationResult (the parts a reader uses;
    where pyDVL is installed, its own class replaces this one).

    The arrays `values`, `indices`, `names`, `variances`, `counts`, `stderr` follow the current order: the order
    of the data set until `sort()` is called, then ascending (or descending with reverse=True) by the sort key.
    Positional indexing (`result[0]`, slices, index lists) follows that order too and returns a ValuationResult;
    `get(data_index)` returns the ValueItem of a data index whatever the order.
    """

    def __init__(self, *, values, indices=None, data_names=None, variances=None, counts=None, algorithm: str = "",
                 status: str = "Converged"):
        self._values = np.asarray(values, dtype=np.float64).reshape(-1)
        n = len(self._values)
        self._indices = np.arange(n) if indices is None else np.asarray(indices)
        self._names = (np.array([str(i) for i in self._indices]) if data_names is None
                       else np.asarray(data_names))
        self._variances = np.zeros(n) if variances is None else np.asarray(variances, dtype=np.float64)
        self._counts = np.ones(n, dtype=np.int64) if counts is None else np.asarray(counts)
        for name, array in (("indices", self._indices), ("data_names", self._names),
                            ("variances", self._variances), ("counts", self._counts)):
            if len(array) != n:
                raise ValueError(f"lengths of values ({n}) and {name} ({len(array)}) do not match")
        self.algorithm = algorithm
        self.status = status
        self._order = np.arange(n)
        self._sort_order = None

    # --- arrays in the current order
    @property
    def values(self) -> np.ndarray:
        return self._values[self._order]

    @property
    def indices(self) -> np.ndarray:
        return self._indices[self._order]

    @property
    def names(self) -> np.ndarray:
        return self._names[self._order]

    @property
    def variances(self) -> np.ndarray:
        return self._variances[self._order]

    @property
    def counts(self) -> np.ndarray:
        return self._counts[self._order]

    @property
    def stderr(self) -> np.ndarray:
        return np.sqrt(self.variances / np.maximum(1, self.counts))

    # --- ordering
    def sort(self, reverse: bool = False, key: str = "value", inplace: bool = False) -> "ValuationResult":
        """Sort by "value" (default), "variance", "index" or "name", ascending (descending with reverse=True); ties
        keep the data order. As pyDVL's: a sorted copy, or this result sorted in place with inplace=True."""
        keys = {"value": self._values, "variance": self._variances, "index": self._indices, "name": self._names}
        if key not in keys:
            raise ValueError(f"key must be one of {', '.join(keys)}, got {key!r}")
        obj = self if inplace else self.copy()
        order = np.argsort(keys[key], kind="stable")
        obj._order = order[::-1].copy() if reverse else order
        obj._sort_order = not reverse
        return obj

    def positions(self, data_indices) -> np.ndarray:
        """Positions, in the current order, of the given data indices."""
        where = {idx: pos for pos, idx in enumerate(self.indices.tolist())}
        try:
            return np.array([where[i] for i in np.asarray(data_indices).tolist()], dtype=np.int64)
        except KeyError as error:
            raise IndexError(f"data index {error.args[0]!r} is not in this result") from None

    def get(self, data_index) -> ValueItem:
        """The ValueItem of a data index."""
        return self._item(self._order[self.positions([data_index])[0]])

    def _item(self, i: int) -> ValueItem:
        idx, name = self._indices[i], self._names[i]
        return ValueItem(idx.item() if hasattr(idx, "item") else idx, name.item() if hasattr(name, "item") else name,
                         float(self._values[i]), float(self._variances[i]), int(self._counts[i]))

    # --- sequence behaviour
    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[ValueItem]:
        for i in self._order:
            yield self._item(i)

    def __getitem__(self, key) -> "ValuationResult":
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"position {key} out of range for {len(self)} values")
            chosen = self._order[[key]]
        else:
            chosen = self._order[key]
        return ValuationResult(values=self._values[chosen], indices=self._indices[chosen],
                               data_names=self._names[chosen], variances=self._variances[chosen],
                               counts=self._counts[chosen], algorithm=self.algorithm, status=self.status)

    def copy(self) -> "ValuationResult":
        return _copy.deepcopy(self)

    def to_dataframe(self, column: str | None = None, use_names: bool = False):
        """As pyDVL's: a pandas DataFrame in the current order, indexed by data index (by name with
        use_names=True), with columns <column>, <column>_variances and <column>_counts."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install pandas") from None
        column = column or self.algorithm or "value"
        return pd.DataFrame({column: self.values, f"{column}_variances": self.variances,
                             f"{column}_counts": self.counts}, index=self.names if use_names else self.indices)

    def __repr__(self) -> str:
        return (f"ValuationResult(algorithm={self.algorithm!r}, status={self.status!r}, n={len(self)}, "
                f"values=[{', '.join(f'{v:.4g}' for v in self.values[:5])}{', ...' if len(self) > 5 else ''}])")


def _raw_xy(raw):
    """(x, y) of a pyDVL RawData (.x, .y) or of a pair."""
    if hasattr(raw, "x") and hasattr(raw, "y"):
        return raw.x, raw.y
    x, y = raw
    return x, y


def _test_pair(test_data):
    if hasattr(test_data, "x_test") and hasattr(test_data, "y_test"):
        return test_data.x_test, test_data.y_test
    if callable(getattr(test_data, "data", None)):
        return _raw_xy(test_data.data())
    if isinstance(test_data, (tuple, list)) and len(test_data) == 2:
        return test_data[0], test_data[1]
    raise TypeError(f"test_data must be a pyDVL Dataset or an (x, y) pair, got {type(test_data).__name__}")


def _optional(obj, *names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def dataset_parts(data, test_data=None) -> tuple:
    """(x_train, y_train, x_valid, y_valid, indices, names) from the data shapes pyDVL passes (see the module
    docstring)."""
    if hasattr(data, "data_to_group"):
        raise TypeError("grouped datasets are not supported: LossVal and EcoVal value single data points")
    own_test = None
    if hasattr(data, "x_train") and hasattr(data, "y_train"):  # pyDVL <= 0.9: both splits in one object
        x, y = data.x_train, data.y_train
        if hasattr(data, "x_test") and hasattr(data, "y_test"):
            own_test = (data.x_test, data.y_test)
    elif callable(getattr(data, "data", None)):  # pyDVL >= 0.10
        x, y = _raw_xy(data.data())
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise TypeError(f"fit() needs a pyDVL Dataset or an (x, y) pair, got {type(data).__name__}")
    if test_data is not None:
        xv, yv = _test_pair(test_data)
    elif own_test is not None:
        xv, yv = own_test
    else:
        raise ValueError("no validation data: pass test_data=... to the valuation (pyDVL >= 0.10 keeps the "
                         "valuation set outside the training Dataset), or a Dataset with x_test and y_test")
    n = len(as_numpy(x, "x"))
    indices = _optional(data, "indices")
    indices = np.arange(n) if indices is None else np.asarray(indices)
    names = _optional(data, "names", "data_names")
    names = np.array([str(i) for i in indices]) if names is None else np.asarray(names)
    if len(indices) != n or len(names) != n:
        raise ValueError(f"the dataset has {n} points but {len(indices)} indices and {len(names)} names")
    return x, y, xv, yv, indices, names


if _PYDVL is not None:  # pyDVL's own classes: results that pyDVL's tools and other methods' results accept
    _Base, ValuationResult, ValueItem, NotFittedException, _Status = _PYDVL  # noqa: F811
    _CONVERGED = _Status.Converged
else:
    _Base, NotFittedException, _CONVERGED = object, _NotFitted, "Converged"


class _Valuation(_Base):
    """pyDVL's Valuation protocol around one of our estimators."""

    algorithm_name = "Valuation"
    _params: tuple[str, ...] = ()

    def __init__(self, test_data=None, *, task: str = "auto", random_state=None, progress: bool = False):
        super().__init__()
        self._result = None
        self.test_data = test_data
        self.task = task
        self.random_state = random_state
        self.progress = progress

    def fit(self, data, continue_from=None):
        """Value every point of `data` against the validation set; returns self. continue_from (pyDVL: a result
        to add this fit's samples to) is refused: LossVal and EcoVal train once, there are no samples to add."""
        if continue_from is not None:
            raise ValueError(f"{type(self).__name__}.fit: continue_from is not supported (got a "
                             f"{type(continue_from).__name__}; expected None): {self.algorithm_name} trains once and "
                             "does not accumulate samples; to resume an interrupted fit pass checkpoint=PATH to "
                             f"{type(self).__name__}(...)")
        x, y, xv, yv, indices, names = dataset_parts(data, self.test_data)
        prepared = prepare(x, y, xv, yv, self.task)
        self.task_ = prepared["task"]
        self.classes_ = prepared["classes"]
        self.estimator_ = self._fit(prepared)
        self._result = ValuationResult(values=np.asarray(self.estimator_.values_, dtype=np.float64), indices=indices,
                                       data_names=names, algorithm=str(self), status=_CONVERGED)
        return self

    @property
    def result(self):
        """The result of the last fit (not a copy); NotFittedException (a ValueError) before fit."""
        if self._result is None:
            raise NotFittedException(type(self))
        return self._result

    @property
    def is_fitted(self) -> bool:
        return self._result is not None

    def values(self, sort: bool = False):
        """A copy of the result (ascending by value with sort=True)."""
        result = self.result.copy()
        if sort:
            result.sort(inplace=True)
        return result

    def __str__(self) -> str:
        return self.algorithm_name

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._params)
        return f"{type(self).__name__}({args})"


class LossValValuation(_Valuation):
    """LossVal as a pyDVL valuation: LossValValuation(test_data, epochs=30, lr=0.01, batch_size=32, task="auto",
    device="auto", random_state=None, progress=False, **lossval_params).fit(data).values().

    random_state: None, an int or a numpy RandomState/Generator (one draw). Other keywords go to LossVal (blur,
    diameter, model, ...). Attributes after fit: result, estimator_ (the fitted LossVal), task_, classes_.
    """

    algorithm_name = "LossVal"
    _params = ("epochs", "lr", "batch_size", "task", "device", "random_state")

    def __init__(self, test_data=None, *, epochs: int = 30, lr: float = 0.01, batch_size: int = 32,
                 task: str = "auto", device="auto", random_state=None, progress: bool = False, **lossval_params):
        super().__init__(test_data, task=task, random_state=random_state, progress=progress)
        self.epochs, self.lr, self.batch_size, self.device = epochs, lr, batch_size, device
        self.lossval_params = lossval_params

    def _fit(self, data):
        from ..valuation.lossval import LossVal
        return LossVal(task=data["task"], epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                       device=self.device, random_state=seed_from(self.random_state), verbose=self.progress,
                       **self.lossval_params).fit(data["x_train"], data["y_train"], data["x_valid"], data["y_valid"])


class MethodValuation(_Valuation):
    """Any registered valuation method (lossval_fast.valuation.methods) as a pyDVL valuation, with the options it
    reads: MethodValuation("knn-shapley", test_data, k=5).fit(data).values(). task, device, random_state, progress
    as LossValValuation. Attributes after fit: result, estimator_, task_, classes_.
    """

    _params = ("method", "options", "task", "device", "random_state")

    def __init__(self, method: str, test_data=None, *, task: str = "auto", device=None, random_state=None,
                 progress: bool = False, **options):
        spec = check_method(method, options)
        super().__init__(test_data, task=task, random_state=random_state, progress=progress)
        self.algorithm_name = spec.label
        self.method, self.options, self.device = method, options, device

    def _fit(self, data):
        return fit_method(self.method, data, self.options, self.device, self.random_state, verbose=self.progress)


class EcoValValuation(_Valuation):
    """EcoVal as a pyDVL valuation: EcoValValuation(test_data, n_clusters=20, learner=None, task="auto",
    device=None, random_state=None (EcoVal's seed 0), progress=False, **ecoval_params).fit(data).values().

    Attributes after fit: result, estimator_ (the fitted EcoVal), task_, classes_.
    """

    algorithm_name = "EcoVal"
    _params = ("n_clusters", "learner", "task", "device", "random_state")

    def __init__(self, test_data=None, *, n_clusters: int = 20, learner=None, task: str = "auto", device=None,
                 random_state=None, progress: bool = False, **ecoval_params):
        super().__init__(test_data, task=task, random_state=random_state, progress=progress)
        self.n_clusters, self.learner, self.device = n_clusters, learner, device
        self.ecoval_params = ecoval_params

    def _fit(self, data):
        from ..valuation.ecoval import EcoVal
        seed = seed_from(self.random_state)
        return EcoVal(n_clusters=self.n_clusters, learner=self.learner, task=data["task"], device=self.device,
                      random_state=0 if seed is None else seed, verbose=self.progress,
                      **self.ecoval_params).fit(data["x_train"], data["y_train"], data["x_valid"], data["y_valid"])
