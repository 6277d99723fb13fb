"""lossval_fast: fast, exact data valuation (LossVal, EcoVal) on online pairwise-reduction kernels."""
__version__ = "0.1.0"

from ._info import info  # noqa: E402
from . import ops, reference  # noqa: E402
from .ops.sinkhorn import SinkhornLoss  # noqa: E402
from .valuation import EcoVal, KNNShapley, LossVal  # noqa: E402

__all__ = ["info", "ops", "reference", "SinkhornLoss", "LossVal", "EcoVal", "KNNShapley", "__version__"]
