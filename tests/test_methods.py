"""The valuation-method registry (lossval_fast/valuation/methods.py): every method builds an estimator that values
the tasks it claims, and the evaluation workflows and the command line take their methods from it."""
import numpy as np
import pytest

from lossval_fast import evaluation
from lossval_fast.valuation import methods


def _data(task):
    rng = np.random.default_rng(0)
    X, X_val = rng.normal(size=(40, 3)), rng.normal(size=(15, 3))
    if task == "classification":
        return X, (X[:, 0] > 0).astype(np.int64), X_val, (X_val[:, 0] > 0).astype(np.int64)
    return X, X[:, 0] + 0.1 * rng.normal(size=40), X_val, X_val[:, 0]


CASES = [pytest.param(name, task, id=f"{name}-{task}") for name, m in methods.METHODS.items() for task in m.tasks]


@pytest.mark.parametrize("name,task", CASES)
def test_every_method_values_the_tasks_it_claims(name, task):
    options = evaluation.MethodOptions(epochs=1, clusters=4, k=3)
    valuer = evaluation.make_valuer(name, task, options, "cpu")
    values = valuer(*_data(task), 7)
    assert values.shape == (40,) and values.dtype == np.float64 and np.isfinite(values).all()
    method = methods.get(name)
    assert set(evaluation.MethodOptions().settings(name)) == set(method.options)
    assert evaluation.MethodOptions().describe(name, task)


def test_the_workflows_read_the_registry():
    assert evaluation.METHODS == tuple(methods.METHODS) == ("lossval", "ecoval", "knn-shapley", "random")
    assert evaluation.LABELS == {n: m.label for n, m in methods.METHODS.items()}
    assert evaluation.CHECKPOINTED == ("lossval", "ecoval")
    assert evaluation.default_methods("regression") == ["lossval", "ecoval", "random"]
    with pytest.raises(ValueError, match=r"knn-shapley supports classification only \(it matches labels exactly\)"):
        evaluation.check_methods(["knn-shapley"], "regression")
    with pytest.raises(ValueError, match="unknown method 'oob'"):
        methods.get("oob")
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.get("random"))


def test_a_method_is_one_registration(monkeypatch):
    class Constant:
        def fit(self, X, y, X_val, y_val):
            self.values_ = np.full(len(X), 0.5)
            return self
    monkeypatch.setitem(methods.METHODS, "constant", methods.Method(
        "constant", "constant values", (), ("regression",), checkpoints=False, over_processes=False,
        make=lambda task, options, device, seed, verbose, checkpoint: Constant(),
        describe=lambda options, task: "0.5 everywhere"))
    assert "constant" in evaluation.default_methods("regression")
    assert "constant" not in evaluation.default_methods("classification")
    valuer = evaluation.make_valuer("constant", "regression", evaluation.MethodOptions(), "cpu")
    values = valuer(*_data("regression"), 0)
    assert (values == 0.5).all()
    with pytest.raises(ValueError, match="constant runs in one process"):
        evaluation.make_valuer("constant", "regression", evaluation.MethodOptions(), "cpu", nproc=2)
    with pytest.raises(ValueError, match="checkpoints apply to lossval and ecoval, not to constant"):
        evaluation.make_valuer("constant", "regression", evaluation.MethodOptions(), "cpu")(
            *_data("regression"), 0, checkpoint="x.pt")
    # both adapters, from the same registration
    from lossval_fast.integrations.opendataval import MethodEvaluator
    from lossval_fast.integrations.pydvl import MethodValuation
    X, y, Xv, yv = _data("regression")
    evaluator = MethodEvaluator("constant").input_data(X, y, Xv, yv).train_data_values()
    assert (evaluator.evaluate_data_values() == 0.5).all() and evaluator.task_ == "regression"
    assert repr(evaluator) == "MethodEvaluator(method='constant', options={}, task='auto', device=None, random_state=None)"
    with pytest.raises(ValueError, match="constant values regression targets only, got a classification target"):
        MethodEvaluator("constant").input_data(*_data("classification")).train_data_values()
    valuation = MethodValuation("constant", (Xv, yv)).fit((X, y))
    assert (valuation.values().values == 0.5).all() and str(valuation) == "constant values"
    # distributed.fit finds a method from its estimator and runs only those that run over processes
    assert methods.of(Constant()) is None
    from lossval_fast import distributed
    with pytest.raises(ValueError, match="runs over processes .*got Constant"):
        distributed.fit(Constant(), X, y, Xv, yv)


def test_the_generic_adapters_value_with_any_registered_method():
    from lossval_fast.integrations.opendataval import MethodEvaluator
    from lossval_fast.integrations.pydvl import MethodValuation
    X, y, Xv, yv = _data("classification")
    knn = MethodEvaluator("knn-shapley", k=3).input_data(X, y, Xv, yv).train_data_values()
    direct = evaluation.make_valuer("knn-shapley", "classification", evaluation.MethodOptions(k=3), "cpu")(
        X, y, Xv, yv, 0)
    assert np.allclose(knn.evaluate_data_values(), direct, rtol=0, atol=1e-12)
    eco = MethodValuation("ecoval", (Xv, yv), clusters=4, random_state=3).fit((X, y))
    assert eco.estimator_.n_clusters == 4 and np.isfinite(eco.values().values).all()
    assert methods.of(eco.estimator_) is methods.get("ecoval")
    with pytest.raises(ValueError, match="knn-shapley takes the options k, got clusters"):
        MethodEvaluator("knn-shapley", clusters=3)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        MethodValuation("knn-shapley", k=0)
    with pytest.raises(ValueError, match="unknown method 'oob'"):
        MethodEvaluator("oob")


def test_the_command_line_offers_the_registered_methods():
    from lossval_fast import cli
    parser = cli.build_parser()
    for name in ("lossval", "ecoval", "knn-shapley"):
        assert parser.parse_args(["value", "data.csv", "--method", name]).method == name
    # a baseline is not a method to value data with
    with pytest.raises(cli.UsageError, match=r"invalid choice: 'random' \(choose from 'lossval', 'ecoval', "
                                             r"'knn-shapley'\)"):
        parser.parse_args(["value", "data.csv", "--method", "random"])
    assert parser.parse_args(["evaluate", "data.csv", "--methods", "random,knn-shapley"]).methods == ["random",
                                                                                                     "knn-shapley"]
    with pytest.raises(cli.UsageError, match="unknown method"):
        parser.parse_args(["evaluate", "data.csv", "--methods", "lossval,oob"])
