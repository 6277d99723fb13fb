"""Common checks every estimator of the package passes (scikit-learn's parametrize_with_checks is the model):
the parameter protocol, fit returning self with learned attributes ending in '_', one NotFittedError, clone,
the device rule."""
import numpy as np
import pytest
import torch

from lossval_fast import EcoVal, KNNShapley, LossVal
from lossval_fast.base import Estimator, NotFittedError, check_is_fitted, resolve_device
from lossval_fast.ops import KMeans


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    X_val = rng.normal(size=(20, 3))
    return X, y, X_val, (X_val[:, 0] > 0).astype(np.int64)


# (make an estimator with a non-default parameter, fit it on (X, y, X_val, y_val), a learned attribute)
ESTIMATORS = {
    "LossVal": (lambda: LossVal(epochs=1, batch_size=16, verbose=False, random_state=0),
                lambda e, X, y, Xv, yv: e.fit(X, y, Xv, yv), "values_"),
    "EcoVal": (lambda: EcoVal(n_clusters=4, verbose=False, random_state=0),
               lambda e, X, y, Xv, yv: e.fit(X, y, Xv, yv), "values_"),
    "KNNShapley": (lambda: KNNShapley(k=3), lambda e, X, y, Xv, yv: e.fit(X, y, Xv, yv), "values_"),
    "KMeans": (lambda: KMeans(n_clusters=3, random_state=0), lambda e, X, y, Xv, yv: e.fit(X), "labels_"),
}
PARAMS = [pytest.param(*v, id=k) for k, v in ESTIMATORS.items()]


@pytest.mark.parametrize("make,fit,learned", PARAMS)
def test_parameters_round_trip(make, fit, learned):
    est = make()
    assert isinstance(est, Estimator)
    params = est.get_params()
    assert params and all(not k.endswith("_") for k in params)
    # the parameters are the __init__ keywords, stored unchanged
    again = type(est)(**params)
    assert again.get_params().keys() == params.keys()
    for key, value in params.items():
        assert again.get_params()[key] is value or again.get_params()[key] == value, key
    name = next(iter(params))
    assert est.set_params(**{name: params[name]}) is est
    with pytest.raises(ValueError, match=rf"unknown parameter 'no_such_parameter' for {type(est).__name__}"):
        est.set_params(no_such_parameter=1)


@pytest.mark.parametrize("make,fit,learned", PARAMS)
def test_fit_returns_self_and_sets_learned_attributes(make, fit, learned):
    est = make()
    assert not hasattr(est, learned)
    before = dict(est.get_params())
    assert fit(est, *_data()) is est
    assert getattr(est, learned) is not None and len(getattr(est, learned)) == 60
    fitted = [k for k in vars(est) if k.endswith("_") and not k.startswith("_")]
    assert learned in fitted
    assert est.get_params().keys() == before.keys()


@pytest.mark.parametrize("make,fit,learned", PARAMS)
def test_clone_is_unfitted_with_the_same_parameters(make, fit, learned):
    est = make()
    fit(est, *_data())
    copy = est.clone()
    assert type(copy) is type(est) and not hasattr(copy, learned)
    assert repr(copy) == repr(est)
    # a refit of the clone gives the same values (the estimators are seeded)
    fit(copy, *_data())
    np.testing.assert_array_equal(np.asarray(getattr(copy, learned)), np.asarray(getattr(est, learned)))


@pytest.mark.parametrize("make,fit,learned", PARAMS)
def test_repr_names_the_non_default_parameters(make, fit, learned):
    est = make()
    text = repr(est)
    assert text.startswith(type(est).__name__ + "(")
    shown = {"LossVal": "epochs=1", "EcoVal": "n_clusters=4", "KNNShapley": "k=3", "KMeans": "n_clusters=3"}
    assert shown[type(est).__name__] in text
    assert repr(type(est)()) == type(est).__name__ + "()"


def test_a_model_parameter_is_copied_by_clone():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(-1))
    est = LossVal(model=model, epochs=1, verbose=False, random_state=0)
    copy = est.clone()
    assert copy.model is not model
    assert all(torch.equal(p, q) for p, q in zip(copy.model.parameters(), model.parameters()))


def test_one_not_fitted_error():
    from lossval_fast.ops.kmeans import NotFittedError as kmeans_error
    from lossval_fast.valuation.ecoval import NotFittedError as ecoval_error
    assert kmeans_error is NotFittedError and ecoval_error is NotFittedError
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    with pytest.raises(NotFittedError, match="this KMeans instance is not fitted yet; call fit before predict"):
        KMeans(2).predict(np.zeros((2, 3)))
    with pytest.raises(NotFittedError, match="EcoVal instance is not fitted"):
        EcoVal(4).value(np.zeros((2, 3)), np.zeros(2))

    class Thing:
        fitted_ = None
    with pytest.raises(NotFittedError, match="this Thing instance is not fitted yet; call fit before use"):
        check_is_fitted(Thing(), "fitted_", "use")


def test_the_device_rule():
    assert resolve_device(None) == resolve_device("auto") == torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("gpu", "tpu:0", 3.5):
        with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available here"):
            resolve_device("cuda")
        X, y, Xv, yv = _data()
        for est in (LossVal(epochs=1, verbose=False, device="cuda"), EcoVal(4, verbose=False, device="cuda")):
            with pytest.raises(ValueError, match="no CUDA device is available here"):
                est.fit(X, y, Xv, yv)


def _targets(kind, n, rng):
    return {"codes": rng.integers(0, 3, n), "float_codes": rng.integers(0, 2, n).astype(np.float64),
            "many_integers": rng.integers(0, 40, n), "floats": rng.normal(size=n)}[kind]


@pytest.mark.parametrize("kind, expected", [("codes", "classification"), ("float_codes", "classification"),
                                            ("many_integers", "regression"), ("floats", "regression")])
def test_task_auto_is_one_rule_everywhere(kind, expected):
    """task="auto" resolves the same way in LossVal, EcoVal, the adapters and the workflows (base.infer_task):
    integer-valued labels with at most 20 distinct values are classes, the rest regression."""
    from lossval_fast.base import infer_task, resolve_task
    from lossval_fast.integrations import prepare

    rng = np.random.default_rng(0)
    X, Xv = rng.normal(size=(90, 3)), rng.normal(size=(30, 3))
    y = _targets(kind, 90, rng)
    yv = y[:30].copy()
    assert infer_task(y) == resolve_task("auto", y) == prepare(X, y, Xv, yv)["task"] == expected
    lossval = LossVal(task="auto", epochs=1, verbose=False, random_state=0).fit(X, y, Xv, yv)
    ecoval = EcoVal(4, task="auto", stratify_by_label=False, verbose=False, random_state=0).fit(X, y, Xv, yv)
    assert lossval.task_ == ecoval.task_ == expected
    assert np.isfinite(lossval.values_).all() and np.isfinite(ecoval.values_).all()
    if kind == "codes":   # an explicit task gives the same fit as the one "auto" chose
        same = LossVal(task=expected, epochs=1, verbose=False, random_state=0).fit(X, y, Xv, yv)
        assert np.array_equal(same.values_, lossval.values_)


def test_task_names_are_checked_by_one_rule():
    from lossval_fast.base import resolve_task
    with pytest.raises(ValueError, match="task must be 'auto', 'classification' or 'regression', got 'ranking'"):
        resolve_task("ranking", np.zeros(3))
    with pytest.raises(ValueError, match=r"task must be one of \('auto', 'classification', 'regression'\)"):
        LossVal(task="ranking").fit(np.zeros((4, 2)), np.zeros(4), np.zeros((2, 2)), np.zeros(2))
