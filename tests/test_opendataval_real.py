"""The OpenDataVal adapter against the real OpenDataVal 1.3 (`make opendataval` installs it with --no-deps beside
torch 2.13 in .venv-odv, docs/integrations.md; skipped where it is not installed).

OpenDataVal imports torchvision (its image data sets) and transformers (its BERT model) when its packages load.
PyPI's torchvision does not import beside the CPU torch 2.13.0 build ('operator torchvision::nms does not exist'),
and neither is used on tabular data; where they do not import, empty stand-in modules take their place, so the
real DataFetcher, Register, ExperimentMediator and noisy_detection run unchanged."""
import sys
import types

import numpy as np
import pytest


def _stand_in(names):
    class Anything:
        def __init__(self, *args, **kwargs):
            pass

    class Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything

    for name in names:
        sys.modules[name] = Module(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])


def _importable(name) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # ImportError, or torchvision's RuntimeError beside a CPU torch it was not built for
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return False


try:
    import opendataval  # noqa: F401
except ImportError:
    pytest.skip("OpenDataVal is not installed here (make opendataval)", allow_module_level=True)
except Exception:
    pass
if not _importable("torchvision"):
    _stand_in(["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.datasets",
               "torchvision.models", "torchvision.models.resnet"])
if not _importable("transformers"):
    _stand_in(["transformers"])

from opendataval.dataloader import Register  # noqa: E402
from opendataval.experiment import ExperimentMediator  # noqa: E402
from opendataval.experiment.exper_methods import noisy_detection  # noqa: E402

from lossval_fast.integrations.opendataval import EcoValEvaluator, LossValEvaluator  # noqa: E402


def test_experiment_mediator_runs_our_evaluators():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(np.int64)
    Register("lossval-fast-synthetic", one_hot=True).from_data(X, y, one_hot=True)
    mediator = ExperimentMediator.setup("lossval-fast-synthetic", train_count=120, valid_count=40, test_count=40,
                                        noise_kwargs={"noise_rate": 0.1}, random_state=np.random.RandomState(0),
                                        train_kwargs={"epochs": 5, "batch_size": 50}, metric_name="accuracy",
                                        raises_error=True)
    evaluators = [LossValEvaluator(epochs=2, random_state=np.random.RandomState(1)),
                  EcoValEvaluator(n_clusters=4, random_state=0)]
    with pytest.warns(UserWarning, match="not applied: LossVal keeps its own schedule"):
        mediator.compute_data_values(evaluators)
    lossval = evaluators[0]
    assert lossval.estimator_.epochs == 2 and lossval.estimator_.batch_size == 32  # not OpenDataVal's 5 at 50
    assert len(lossval.data_values) == 120 and np.isfinite(lossval.data_values).all()
    frame = mediator.evaluate(noisy_detection)
    keys = [str(ev) for ev in evaluators]
    assert all("0x" not in key for key in keys) and set(keys) <= set(frame.index.get_level_values(0))
    assert ((frame["kmeans_f1"] >= 0) & (frame["kmeans_f1"] <= 1)).all()
