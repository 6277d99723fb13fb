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
