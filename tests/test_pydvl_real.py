"""The pyDVL adapter against the real pyDVL 0.10 (make test runs this file in .venv-pydvl, where pip resolves
numpy 1.26; in an environment without pyDVL it is skipped and tests/test_integrations.py covers the duck-typed
path): results are pyDVL's own ValuationResult and work with its tools."""
import numpy as np
import pytest

pytest.importorskip("pydvl.valuation.result", reason="pyDVL >= 0.10 is not installed here (make test-pydvl)")
pd = pytest.importorskip("pandas")

from pydvl.reporting.scores import compute_removal_score  # noqa: E402
from pydvl.utils.exceptions import NotFittedException  # noqa: E402
from pydvl.valuation.base import Valuation  # noqa: E402
from pydvl.valuation.dataset import Dataset  # noqa: E402
from pydvl.valuation.result import ValuationResult  # noqa: E402
from pydvl.valuation.scorers import SupervisedScorer  # noqa: E402
from pydvl.valuation.utility import ModelUtility  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from lossval_fast.integrations import pydvl as adapter  # noqa: E402
from lossval_fast.integrations.pydvl import EcoValValuation, LossValValuation, MethodValuation  # noqa: E402
from lossval_fast.valuation.lossval import LossVal  # noqa: E402

EPOCHS = 2


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    y = (X[:, 0] + 0.3 * rng.normal(size=150) > 0).astype(np.int64)
    y[:12] = 1 - y[:12]  # some label noise
    train = Dataset(X[:120], y[:120], data_names=[f"row-{i}" for i in range(120)])
    test = Dataset(X[120:], y[120:])
    return train, test, X, y


@pytest.fixture(scope="module")
def fitted(data):
    train, test, _, _ = data
    return LossValValuation(test, epochs=EPOCHS, random_state=0).fit(train)


def test_the_result_is_pydvls_own_class(data, fitted):
    train, test, X, y = data
    assert adapter.PYDVL and isinstance(fitted, Valuation) and fitted.is_fitted
    result = fitted.result
    assert type(result) is ValuationResult
    expected = LossVal(epochs=EPOCHS, random_state=0, verbose=False).fit(X[:120], y[:120], X[120:], y[120:]).values_
    np.testing.assert_array_equal(result.values, expected)
    np.testing.assert_array_equal(result.indices, train.indices)
    assert result.names[7] == "row-7" and result.algorithm == "LossVal" and str(result.status) == str(
        result.status.Converged)


def test_any_registered_method_is_a_pydvl_valuation(data):
    """MethodValuation: a method of the registry (here KNN-Shapley) as pyDVL's Valuation, with pyDVL's result."""
    from lossval_fast.valuation.knn_shapley import KNNShapley
    train, test, X, y = data
    valuation = MethodValuation("knn-shapley", test, k=5).fit(train)
    assert isinstance(valuation, Valuation) and type(valuation.result) is ValuationResult
    expected = KNNShapley(k=5, device="cpu").fit(X[:120], y[:120], X[120:], y[120:]).values_
    np.testing.assert_allclose(valuation.result.values, expected, rtol=0, atol=1e-12)
    assert valuation.result.algorithm == "KNN-Shapley"


def test_sort_behaves_as_pydvls(fitted):
    result = fitted.result
    ascending = result.sort()                     # a sorted copy
    assert ascending is not result and np.all(np.diff(ascending.values) >= 0)
    copy = result.copy()
    assert copy.sort(reverse=True, inplace=True) is copy and np.all(np.diff(copy.values) <= 0)
    sorted_copy = fitted.values(sort=True)
    assert np.all(np.diff(sorted_copy.values) >= 0)


def test_compute_removal_score_runs_on_the_result(data, fitted):
    train, test, _, _ = data
    utility = ModelUtility(LogisticRegression(), SupervisedScorer("accuracy", test, default=0.0))
    scores = compute_removal_score(utility, fitted.result, train, [0.0, 0.1, 0.2])
    assert set(scores) == {0.0, 0.1, 0.2} and all(0.0 <= s <= 1.0 for s in scores.values())


def test_adding_pydvl_results_and_dataframes_align(data, fitted):
    train, _, _, _ = data
    other = ValuationResult(values=np.ones(120), indices=train.indices, data_names=train.names,
                            algorithm="LossVal")
    total = fitted.result + other
    assert isinstance(total, ValuationResult) and len(total) == 120
    frame = fitted.result.to_dataframe()
    random = ValuationResult.from_random(size=120, algorithm="random").to_dataframe()
    joined = pd.concat([frame, random], axis=1)
    assert len(joined) == 120 and not joined.isna().any().any()  # the same integer index as pyDVL's results
    assert list(frame.index) == list(fitted.result.indices)


def test_before_fit_and_continue_from(data):
    train, test, _, _ = data
    valuation = EcoValValuation(test, n_clusters=4)
    with pytest.raises(NotFittedException):
        valuation.result  # noqa: B018
    with pytest.raises(ValueError, match="continue_from is not supported"):
        LossValValuation(test, epochs=EPOCHS).fit(train, continue_from=ValuationResult.zeros(size=120))
    result = valuation.fit(train).result
    assert type(result) is ValuationResult and result.algorithm == "EcoVal"
