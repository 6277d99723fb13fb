"""LossVal, one module per part: data.py (checks, statistics, minibatch rows), steps.py (the divergence of a step,
the C++ whole-step of an MLP, the generic step runner, STEP_OPTIONS), chunked.py (divergences of chunks of steps
ahead on spare threads), estimator.py (the estimator and its training loop). Dependencies point one way:
estimator -> chunked -> steps -> data."""
from .data import TASKS, Data, gather_rows, merge_stats
from .estimator import LossVal
from .steps import STEP_OPTIONS, StepOptions, Divergence, SingleStep, mlp_structure, weighted_batch_loss

__all__ = ["LossVal", "STEP_OPTIONS", "StepOptions", "TASKS", "mlp_structure", "gather_rows", "merge_stats",
           "weighted_batch_loss", "Data", "Divergence", "SingleStep"]
