"""The OpenDataVal and pyDVL adapters, driven the way those libraries call a data evaluator / valuation method
(small fake DataFetcher, ExperimentMediator and Dataset classes written after their sources; neither library is
installed or imported)."""
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lossval_fast.integrations import prepare, seed_from
from lossval_fast.integrations.opendataval import EcoValEvaluator, LossValEvaluator
from lossval_fast.integrations.pydvl import (PYDVL, EcoValValuation, LossValValuation, NotFittedException,
                                             ValuationResult, ValueItem)

if PYDVL:  # these tests cover the duck-typed path; tests/test_pydvl_real.py covers pyDVL's own classes
    pytest.skip("pyDVL is installed: its classes replace the duck-typed ones", allow_module_level=True)
from lossval_fast.valuation import add_label_noise, noisy_detection_f1
from lossval_fast.valuation.ecoval import EcoVal
from lossval_fast.valuation.lossval import LossVal

EPOCHS = 2


def make_data(n_train=120, n_valid=30, d=5, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    X = rng.normal(size=(n_train + n_valid, d))
    y = (X @ w > 0).astype(np.int64)
    y_train, noisy = add_label_noise(y[:n_train], noise, random_state=seed)
    return X[:n_train], y_train, X[n_train:], y[n_train:], noisy


def direct_lossval(X, y, Xv, yv, epochs=EPOCHS, seed=0, task="classification"):
    return LossVal(task=task, epochs=epochs, random_state=seed, verbose=False).fit(X, y, Xv, yv).values_


# ------------------------------------------------------------------------------------------------ OpenDataVal
class FakeFetcher:
    """OpenDataVal's DataFetcher after setup: datapoints = (x_train, y_train, x_valid, y_valid, x_test, y_test)
    as tensors, classification labels one-hot float (fetcher.one_hot), noisy_train_indices."""

    def __init__(self, X, y, Xv, yv, noisy, one_hot=True):
        self.one_hot = one_hot
        num_classes = int(max(y.max(), yv.max())) + 1

        def labels(v):
            t = torch.as_tensor(v)
            return torch.nn.functional.one_hot(t, num_classes).float() if one_hot else t.float().reshape(-1, 1)

        self.datapoints = (torch.as_tensor(X, dtype=torch.float32), labels(y),
                           torch.as_tensor(Xv, dtype=torch.float32), labels(yv),
                           torch.zeros(0, X.shape[1]), labels(yv[:0]))
        self.noisy_train_indices = np.flatnonzero(noisy)


def noisy_detection(evaluator, fetcher):
    """OpenDataVal's experiment/exper_methods.py::noisy_detection, on the cached data_values."""
    data_values = evaluator.data_values
    mask = np.zeros(len(data_values), dtype=bool)
    mask[fetcher.noisy_train_indices] = True
    return {"kmeans_f1": noisy_detection_f1(data_values, mask)}


class FakeMediator:
    """OpenDataVal's ExperimentMediator: compute_data_values trains each evaluator with
    evaluator.train(fetcher, pred_model, metric, **train_kwargs); evaluate runs an experiment per evaluator."""

    def __init__(self, fetcher, pred_model=None, train_kwargs=None, metric=None):
        self.fetcher, self.pred_model, self.metric = fetcher, pred_model, metric
        self.train_kwargs = train_kwargs or {}

    def compute_data_values(self, data_evaluators):
        self.data_evaluators = [ev.train(self.fetcher, self.pred_model, self.metric, **self.train_kwargs)
                                for ev in data_evaluators]
        return self

    def evaluate(self, exper_func):
        return {str(ev): exper_func(ev, self.fetcher) for ev in self.data_evaluators}


def accuracy(pred, target):  # OpenDataVal's default classification metric (_acc)
    return (pred.argmax(dim=1) == target.argmax(dim=1)).float().mean().item()


def test_opendataval_builder_chain_with_one_hot_labels_equals_a_direct_fit():
    X, y, Xv, yv, noisy = make_data()
    fetcher = FakeFetcher(X, y, Xv, yv, noisy)
    x_train, y_train, x_valid, y_valid, *_ = fetcher.datapoints
    evaluator = (LossValEvaluator(epochs=EPOCHS, random_state=0)
                 .input_model(torch.nn.Linear(5, 2)).input_metric(accuracy)
                 .input_data(x_train, y_train, x_valid, y_valid))
    assert evaluator.train_data_values() is evaluator
    values = evaluator.evaluate_data_values()
    assert isinstance(values, np.ndarray) and values.dtype == np.float64 and values.shape == (120,)
    expected = direct_lossval(x_train.numpy().astype(np.float64), y, x_valid.numpy().astype(np.float64), yv)
    np.testing.assert_array_equal(values, expected)
    assert evaluator.task_ == "classification"
    np.testing.assert_array_equal(evaluator.data_values, values)
    values[0] = 123.0  # a copy: the evaluator keeps its values
    assert evaluator.evaluate_data_values()[0] != 123.0


def test_opendataval_experiment_mediator_trains_and_runs_noisy_detection():
    X, y, Xv, yv, noisy = make_data()
    fetcher = FakeFetcher(X, y, Xv, yv, noisy)
    evaluators = [LossValEvaluator(random_state=np.random.RandomState(1), use_train_kwargs=True),
                  EcoValEvaluator(n_clusters=4, random_state=2)]
    mediator = FakeMediator(fetcher, pred_model=torch.nn.Linear(5, 2), train_kwargs={"epochs": EPOCHS},
                            metric=accuracy).compute_data_values(evaluators)
    results = mediator.evaluate(noisy_detection)
    assert set(results) == {str(ev) for ev in evaluators}
    assert all(0.0 <= r["kmeans_f1"] <= 1.0 for r in results.values())
    # stable result keys: no memory address (the RandomState shows as its kind)
    assert "0x" not in str(evaluators[0]) and "random_state=RandomState" in str(evaluators[0])
    assert str(evaluators[0]) == str(LossValEvaluator(random_state=np.random.RandomState(1), use_train_kwargs=True))
    # use_train_kwargs=True: train_kwargs reached LossVal (epochs=2 instead of the default 30); the RandomState
    # gave one draw as the seed
    lossval = evaluators[0]
    assert lossval.estimator_.epochs == EPOCHS and len(lossval.estimator_.history_) == EPOCHS
    seed = int(np.random.RandomState(1).randint(0, 2**31 - 1))
    xt, _, xv, _, *_ = fetcher.datapoints
    np.testing.assert_array_equal(lossval.data_values, direct_lossval(xt.numpy().astype(np.float64), y,
                                                                      xv.numpy().astype(np.float64), yv, seed=seed))
    ecoval = evaluators[1]
    expected = EcoVal(n_clusters=4, task="classification", random_state=2, verbose=False).fit(
        xt.numpy().astype(np.float64), y, xv.numpy().astype(np.float64), yv).values_
    np.testing.assert_array_equal(ecoval.data_values, expected)
    assert ecoval.pred_model is mediator.pred_model and ecoval.metric is accuracy


def test_opendataval_train_kwargs_do_not_silently_change_lossvals_schedule():
    """ExperimentMediator's train_kwargs (5 epochs at batch 50 by default, meant for the prediction model) leave
    LossVal's epochs and batch size as set, with one warning naming what was not applied."""
    X, y, Xv, yv, noisy = make_data()
    evaluator = LossValEvaluator(epochs=EPOCHS, batch_size=32, random_state=0)
    with pytest.warns(UserWarning, match=r"train_kwargs \{'epochs': 5, 'batch_size': 50\} not applied: LossVal "
                                         r"keeps its own schedule .*use_train_kwargs=True"):
        FakeMediator(FakeFetcher(X, y, Xv, yv, noisy), train_kwargs={"epochs": 5, "batch_size": 50}
                     ).compute_data_values([evaluator])
    assert evaluator.estimator_.epochs == EPOCHS and evaluator.estimator_.batch_size == 32
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same values as ours: nothing to say
        FakeMediator(FakeFetcher(X, y, Xv, yv, noisy), train_kwargs={"epochs": EPOCHS}
                     ).compute_data_values([LossValEvaluator(epochs=EPOCHS, random_state=0)])


def test_opendataval_regression_targets_as_n_by_1_floats():
    rng = np.random.default_rng(3)
    X, Xv = rng.normal(size=(80, 4)), rng.normal(size=(20, 4))
    y, yv = X @ [1.0, -1.0, 0.5, 0.0], Xv @ [1.0, -1.0, 0.5, 0.0]
    evaluator = LossValEvaluator(epochs=EPOCHS, random_state=0).input_data(
        torch.tensor(X), torch.tensor(y).reshape(-1, 1), torch.tensor(Xv), torch.tensor(yv).reshape(-1, 1))
    values = evaluator.train_data_values().evaluate_data_values()
    assert evaluator.task_ == "regression"
    np.testing.assert_array_equal(values, direct_lossval(X, y, Xv, yv, task="regression"))


def test_opendataval_input_model_is_trained_when_asked():
    X, y, Xv, yv, _ = make_data()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2),
                                torch.nn.Softmax(dim=1))  # OpenDataVal's ClassifierMLP outputs probabilities
    evaluator = LossValEvaluator(epochs=EPOCHS, random_state=0, use_input_model=True).input_model(model)
    values = evaluator.input_data(X, y, Xv, yv).train_data_values().evaluate_data_values()
    expected = LossVal(model=model, epochs=EPOCHS, random_state=0, verbose=False).fit(X, y, Xv, yv).values_
    np.testing.assert_array_equal(values, expected)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        LossValEvaluator(use_input_model=True).input_model("not a model").input_data(
            X, y, Xv, yv).train_data_values()


def test_opendataval_errors_and_repr():
    evaluator = LossValEvaluator(epochs=3)
    with pytest.raises(ValueError, match="input_data"):
        evaluator.train_data_values()
    X, y, Xv, yv, _ = make_data()
    with pytest.raises(ValueError, match="train_data_values"):
        evaluator.input_data(X, y, Xv, yv).evaluate_data_values()
    with pytest.raises(ValueError, match="same label layout"):
        evaluator.input_data(X, np.eye(2)[y], Xv, yv).train_data_values()
    with pytest.raises(TypeError, match="embedded"):
        evaluator.input_data(object(), y, Xv, yv).train_data_values()
    assert repr(evaluator).startswith("LossValEvaluator(epochs=3, lr=0.01, batch_size=32")
    assert repr(EcoValEvaluator(n_clusters=6)).startswith("EcoValEvaluator(n_clusters=6")


# ------------------------------------------------------------------------------------------------ pyDVL
@dataclass(frozen=True)
class RawData:
    """pyDVL >= 0.10 RawData: x, y, unpackable."""

    x: object
    y: object

    def __iter__(self):
        return iter((self.x, self.y))


class Dataset:
    """pyDVL >= 0.10 Dataset: only (x, y); data() -> RawData; indices, names; len()."""

    def __init__(self, x, y, data_names=None):
        self._x, self._y = x, y
        self._indices = np.arange(len(x))
        self._names = np.array(data_names if data_names is not None else self._indices.astype(str), dtype=str)

    def data(self, indices=None):
        return RawData(self._x, self._y) if indices is None else RawData(self._x[indices], self._y[indices])

    @property
    def indices(self):
        return self._indices

    @property
    def names(self):
        return self._names

    def __len__(self):
        return len(self._x)


class GroupedDataset(Dataset):
    def __init__(self, x, y, data_groups):
        super().__init__(x, y)
        self.data_to_group = np.asarray(data_groups)


class OldDataset:
    """pyDVL <= 0.9 Dataset: both splits, indices and data_names."""

    def __init__(self, x_train, y_train, x_test, y_test):
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.indices = np.arange(len(x_train))
        self.data_names = np.array([f"p{i}" for i in self.indices])


def test_pydvl_valuation_on_a_new_style_dataset():
    X, y, Xv, yv, noisy = make_data()
    train = Dataset(X, y, data_names=[f"row-{i}" for i in range(120)])
    valuation = LossValValuation(Dataset(Xv, yv), epochs=EPOCHS, random_state=0)
    assert not valuation.is_fitted
    assert valuation.fit(train) is valuation and valuation.is_fitted
    result = valuation.values()
    expected = direct_lossval(X, y, Xv, yv)
    np.testing.assert_array_equal(result.values, expected)
    np.testing.assert_array_equal(result.indices, np.arange(120))
    assert result.names[7] == "row-7" and result.algorithm == "LossVal" and result.status == "Converged"
    assert len(result) == 120 and np.all(result.variances == 0) and np.all(result.counts == 1)

    ranked = valuation.values(sort=True)  # what a pyDVL user does to find the worst points
    np.testing.assert_array_equal(ranked.indices, np.argsort(expected, kind="stable"))
    assert np.all(np.diff(ranked.values) >= 0)
    lowest = [item.idx for item in ranked][:10]
    assert lowest == ranked.indices[:10].tolist() and isinstance(next(iter(ranked)), ValueItem)
    assert ranked[0].indices[0] == lowest[0] and len(ranked[:5]) == 5
    assert ranked.get(7).value == expected[7] and ranked.get(7).name == "row-7"
    np.testing.assert_array_equal(ranked.indices[ranked.positions([3, 9])], [3, 9])
    descending = ranked.sort(reverse=True)  # pyDVL 0.10: a sorted copy, the original unchanged
    assert descending.values[0] == expected.max() and ranked.values[0] == expected.min()
    assert ranked.sort(key="index", inplace=True) is ranked
    np.testing.assert_array_equal(ranked.values, expected)
    np.testing.assert_array_equal(result.values, expected)  # values() returned copies
    f1 = noisy_detection_f1(result.values, noisy)
    assert 0.0 <= f1 <= 1.0


def test_pydvl_result_to_dataframe():
    pytest.importorskip("pandas")
    result = ValuationResult(values=[0.3, 0.1, 0.2], data_names=["a", "b", "c"], algorithm="LossVal")
    result.sort(inplace=True)
    frame = result.to_dataframe()  # pyDVL 0.10's layout: indexed by data index, names with use_names=True
    assert list(frame.index) == [1, 2, 0] and list(frame.columns) == ["LossVal", "LossVal_variances",
                                                                       "LossVal_counts"]
    assert frame["LossVal"].tolist() == [0.1, 0.2, 0.3]
    assert list(result.to_dataframe(use_names=True).index) == ["b", "c", "a"]


def test_pydvl_valuation_on_an_old_style_dataset_and_raw_pairs():
    X, y, Xv, yv, _ = make_data()
    ecoval = EcoValValuation(n_clusters=4, random_state=1).fit(OldDataset(X, y, Xv, yv))
    expected = EcoVal(n_clusters=4, task="classification", random_state=1, verbose=False).fit(X, y, Xv, yv).values_
    result = ecoval.values()
    np.testing.assert_array_equal(result.values, expected)
    assert result.names[0] == "p0" and result.algorithm == "EcoVal"
    # RawData as a plain pair, torch tensors, and an explicit test set that overrides the dataset's own
    pair = LossValValuation((torch.tensor(Xv), torch.tensor(yv)), epochs=EPOCHS, random_state=0).fit(
        (torch.tensor(X), torch.tensor(y)))
    np.testing.assert_array_equal(pair.values().values, direct_lossval(X, y, Xv, yv))
    override = LossValValuation((Xv[:10], yv[:10]), epochs=EPOCHS, random_state=0).fit(OldDataset(X, y, Xv, yv))
    np.testing.assert_array_equal(override.values().values, direct_lossval(X, y, Xv[:10], yv[:10]))


def test_pydvl_errors():
    X, y, Xv, yv, _ = make_data()
    with pytest.raises(ValueError, match="test_data"):
        LossValValuation(epochs=EPOCHS).fit(Dataset(X, y))
    with pytest.raises(TypeError, match="grouped"):
        LossValValuation(Dataset(Xv, yv)).fit(GroupedDataset(X, y, np.arange(120) // 10))
    with pytest.raises(ValueError, match="must be fitted"):
        EcoValValuation(Dataset(Xv, yv)).values()
    with pytest.raises(NotFittedException, match="must be fitted before"):
        LossValValuation(Dataset(Xv, yv)).result  # noqa: B018
    with pytest.raises(ValueError, match="continue_from is not supported .*checkpoint=PATH"):
        LossValValuation(Dataset(Xv, yv), epochs=EPOCHS).fit(Dataset(X, y), continue_from=ValuationResult(
            values=np.zeros(120)))
    with pytest.raises(TypeError, match="pyDVL Dataset"):
        LossValValuation(Dataset(Xv, yv)).fit(42)
    with pytest.raises(ValueError, match="do not match"):
        ValuationResult(values=[1.0, 2.0], indices=[0])
    assert str(LossValValuation()) == "LossVal"


# ------------------------------------------------------------------------------------------------ shared pieces
def test_prepare_label_layouts():
    X, Xv = np.zeros((4, 2)), np.zeros((2, 2))
    one_hot = prepare(X, np.eye(3)[[0, 2, 2, 0]], Xv, np.eye(3)[[2, 0]])
    assert one_hot["task"] == "classification"
    np.testing.assert_array_equal(one_hot["y_train"], [0, 1, 1, 0])   # class 1 absent: codes compacted
    np.testing.assert_array_equal(one_hot["classes"], [0, 2])
    text = prepare(X, np.array(["b", "a", "b", "c"]), Xv, np.array(["a", "c"]))
    np.testing.assert_array_equal(text["y_train"], [1, 0, 1, 2])
    regression = prepare(X, np.array([[0.5], [1.5], [2.0], [3.25]]), Xv, np.array([0.1, 0.2]))
    assert regression["task"] == "regression" and regression["y_train"].shape == (4,)
    images = prepare(np.zeros((4, 2, 3)), [0, 1, 0, 1], np.zeros((2, 2, 3)), [1, 0])
    assert images["x_train"].shape == (4, 6)
    assert seed_from(None) is None and seed_from(7) == 7
    assert seed_from(np.random.RandomState(0)) == np.random.RandomState(0).randint(0, 2**31 - 1)


def test_adapters_never_import_the_frameworks():
    """OpenDataVal is never imported; pyDVL only where it is installed (its classes then replace ours)."""
    root = Path(__file__).resolve().parents[1] / "lossval_fast" / "integrations"
    for path in root.glob("*.py"):
        source = path.read_text()
        assert "import opendataval" not in source and "from opendataval" not in source
        assert "import pydvl" not in source and "from pydvl" not in source
    assert "opendataval" not in sys.modules and "pydvl" not in sys.modules
