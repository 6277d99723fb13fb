"""LossVal and EcoVal as OpenDataVal data evaluators (duck-typed: opendataval is not imported).

OpenDataVal (github.com/opendataval/opendataval, opendataval/dataval/api.py::DataEvaluator) drives an evaluator
either step by step,

    values = (LossValEvaluator(random_state=0)
              .input_model(model).input_metric(metric)          # optional; see below
              .input_data(x_train, y_train, x_valid, y_valid)
              .train_data_values(epochs=30)
              .evaluate_data_values())

or through its ExperimentMediator, which calls `evaluator.train(fetcher, pred_model, metric, **train_kwargs)` and
then reads `evaluator.data_values`. Both work here. Data come as torch tensors or numpy arrays; classification
labels as OpenDataVal's one-hot float rows (their argmax is the class) or as plain labels; regression targets as
(n,) or (n, 1) floats. `evaluate_data_values()` returns a float64 numpy array with one value per training point,
low = likely noisy or harmful, as OpenDataVal's experiments expect.

The prediction model and metric OpenDataVal passes are accepted and kept (`pred_model`, `metric`): LossVal trains
its own model (the paper's MLP) unless `use_input_model=True` and the model is a torch.nn.Module mapping
(batch, d) to class probabilities (OpenDataVal's ClassifierMLP) or regression outputs; EcoVal trains its own
learners (`learner=`).
"""
from __future__ import annotations

import re
import warnings

import numpy as np

from . import check_method, fit_method, prepare, seed_from

__all__ = ["LossValEvaluator", "EcoValEvaluator", "MethodEvaluator"]


class _Evaluator:
    """The DataEvaluator protocol around one of our estimators."""

    _params: tuple[str, ...] = ()

    def __init__(self, random_state=None, task: str = "auto"):
        self.random_state = random_state
        self.task = task
        self.pred_model = None
        self.metric = None
        self.values_ = None

    # --- OpenDataVal's input methods (each returns self so that calls chain)
    def input_model(self, pred_model):
        self.pred_model = pred_model
        return self

    def input_metric(self, metric):
        self.metric = metric
        return self

    def input_model_metric(self, pred_model, metric):
        return self.input_model(pred_model).input_metric(metric)

    def input_data(self, x_train, y_train, x_valid, y_valid):
        """Store the training data to value and the validation data; returns self."""
        self.x_train, self.y_train, self.x_valid, self.y_valid = x_train, y_train, x_valid, y_valid
        self.values_ = None
        return self

    def input_fetcher(self, fetcher):
        """Data from an OpenDataVal DataFetcher: its `datapoints` start with x_train, y_train, x_valid, y_valid."""
        x_train, y_train, x_valid, y_valid, *_ = fetcher.datapoints
        return self.input_data(x_train, y_train, x_valid, y_valid)

    def setup(self, fetcher, pred_model=None, metric=None):
        self.input_fetcher(fetcher)
        return self.input_model(pred_model).input_metric(metric)

    def train(self, fetcher, pred_model=None, metric=None, *args, **kwargs):
        """What ExperimentMediator calls: setup from the fetcher, then train_data_values(*args, **kwargs)."""
        self.setup(fetcher, pred_model, metric)
        return self.train_data_values(*args, **kwargs)

    # --- results
    def train_data_values(self, *args, **kwargs):
        if not hasattr(self, "x_train"):
            raise ValueError(f"{type(self).__name__}: call input_data(x_train, y_train, x_valid, y_valid) (or "
                             "train(fetcher, ...)) before train_data_values()")
        data = prepare(self.x_train, self.y_train, self.x_valid, self.y_valid, self.task)
        self.task_ = data["task"]
        self.classes_ = data["classes"]
        self.estimator_ = self._fit(data, kwargs)
        self.values_ = np.asarray(self.estimator_.values_, dtype=np.float64).reshape(-1)
        return self

    def evaluate_data_values(self) -> np.ndarray:
        """One value per training point (float64 copy), in the order of x_train."""
        if self.values_ is None:
            raise ValueError(f"{type(self).__name__}: call train_data_values() before evaluate_data_values()")
        return self.values_.copy()

    @property
    def data_values(self) -> np.ndarray:
        """What OpenDataVal's experiments read (a cached property there)."""
        return self.evaluate_data_values()

    @property
    def plot_title(self) -> str:
        return repr(self)

    def __str__(self) -> str:
        return repr(self)

    def __repr__(self) -> str:
        """Stable across runs (OpenDataVal keys results by str(evaluator)): no memory addresses."""
        args = ", ".join(f"{name}={_stable_repr(getattr(self, name))}" for name in self._params)
        return f"{type(self).__name__}({args})"


def _stable_repr(value) -> str:
    """repr without memory addresses: a RandomState or Generator (OpenDataVal passes one) by its kind, an object
    whose repr holds an address by its class name."""
    if isinstance(value, (np.random.RandomState, np.random.Generator)):
        return type(value).__name__
    text = repr(value)
    return type(value).__name__ if re.search(r" at 0x[0-9a-fA-F]+", text) else text


class LossValEvaluator(_Evaluator):
    """LossVal (lossval_fast.valuation.lossval.LossVal) as an OpenDataVal DataEvaluator.

    Parameters: epochs, lr, batch_size (the paper's 30, 0.01, 32), use_train_kwargs (False: OpenDataVal's
    train_kwargs, which ExperimentMediator passes to every evaluator for its prediction model (5 epochs at batch 50
    by default), do not change LossVal's schedule, and a warning says which were not applied; True: epochs, lr and
    batch_size among them override ours for that training), task ("auto",
    "classification", "regression"), device, random_state (None, an int, or a numpy RandomState as OpenDataVal
    passes; a RandomState gives one draw as the seed), use_input_model (train the model given to input_model
    instead of the paper's MLP), and any other LossVal keyword (blur, scaling, diameter, normalize, ...).
    Attributes after training: estimator_ (the fitted LossVal), values_, task_, classes_.
    """

    _params = ("epochs", "lr", "batch_size", "task", "device", "random_state", "use_input_model",
               "use_train_kwargs")

    def __init__(self, epochs: int = 30, lr: float = 0.01, batch_size: int = 32, *, task: str = "auto",
                 device="auto", random_state=None, use_input_model: bool = False, use_train_kwargs: bool = False,
                 **lossval_params):
        super().__init__(random_state=random_state, task=task)
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.use_train_kwargs = use_train_kwargs
        self.device = device
        self.use_input_model = use_input_model
        self.lossval_params = lossval_params

    def _fit(self, data, train_kwargs):
        import torch

        from ..valuation.lossval import LossVal

        model = None
        if self.use_input_model:
            if not isinstance(self.pred_model, torch.nn.Module):
                raise ValueError("use_input_model=True needs a torch.nn.Module passed to input_model(), got "
                                 f"{type(self.pred_model).__name__}")
            model = self.pred_model
        params = dict(self.lossval_params)
        params.setdefault("verbose", False)
        schedule = self._schedule(train_kwargs)
        return LossVal(task=data["task"], model=model, device=self.device, random_state=seed_from(self.random_state),
                       **schedule, **params).fit(data["x_train"], data["y_train"], data["x_valid"], data["y_valid"])

    def _schedule(self, train_kwargs) -> dict:
        """epochs, lr, batch_size: ours, or train_kwargs' with use_train_kwargs=True; a warning names the
        train_kwargs that differ from ours and were not applied."""
        ours = {"epochs": int(self.epochs), "lr": float(self.lr), "batch_size": int(self.batch_size)}
        given = {key: train_kwargs[key] for key in ours if key in train_kwargs}
        if self.use_train_kwargs:
            return {**ours, **{key: type(ours[key])(value) for key, value in given.items()}}
        differ = {key: value for key, value in given.items() if value != ours[key]}
        if differ:
            warnings.warn(f"{type(self).__name__}: train_kwargs {differ} not applied: LossVal keeps its own "
                          f"schedule {ours} (OpenDataVal passes train_kwargs for the prediction model; pass "
                          "use_train_kwargs=True to let them override)", UserWarning, stacklevel=4)
        return ours


class MethodEvaluator(_Evaluator):
    """Any registered valuation method (lossval_fast.valuation.methods: "lossval", "ecoval", "knn-shapley",
    "random", and any method registered later) as an OpenDataVal DataEvaluator, with the options it reads
    (MethodOptions fields, e.g. MethodEvaluator("knn-shapley", k=5)); task, device, random_state as
    LossValEvaluator. Attributes after training: estimator_, values_, task_, classes_.
    """

    _params = ("method", "options", "task", "device", "random_state")

    def __init__(self, method: str, *, task: str = "auto", device=None, random_state=None, **options):
        check_method(method, options)
        super().__init__(random_state=random_state, task=task)
        self.method, self.options, self.device = method, options, device

    def _fit(self, data, train_kwargs):
        return fit_method(self.method, data, self.options, self.device, self.random_state)


class EcoValEvaluator(_Evaluator):
    """EcoVal (lossval_fast.valuation.ecoval.EcoVal) as an OpenDataVal DataEvaluator.

    Parameters: n_clusters (20), learner (None: logreg / ridge by task; "logreg", "ridge", "mlp" or a scikit-learn
    style object), task, device, random_state (as LossValEvaluator; None means EcoVal's default seed 0), and any
    other EcoVal keyword. Training keywords OpenDataVal passes (epochs, batch_size, ...) do not apply to EcoVal's
    learners and are ignored, as OpenDataVal's model-free evaluators ignore them.
    Attributes after training: estimator_ (the fitted EcoVal), values_, task_, classes_.
    """

    _params = ("n_clusters", "learner", "task", "device", "random_state")

    def __init__(self, n_clusters: int = 20, learner=None, *, task: str = "auto", device=None, random_state=None,
                 **ecoval_params):
        super().__init__(random_state=random_state, task=task)
        self.n_clusters, self.learner = n_clusters, learner
        self.device = device
        self.ecoval_params = ecoval_params

    def _fit(self, data, train_kwargs):
        from ..valuation.ecoval import EcoVal

        params = dict(self.ecoval_params)
        params.setdefault("verbose", False)
        seed = seed_from(self.random_state)
        return EcoVal(n_clusters=self.n_clusters, learner=self.learner, task=data["task"], device=self.device,
                      random_state=0 if seed is None else seed, **params
                      ).fit(data["x_train"], data["y_train"], data["x_valid"], data["y_valid"])
