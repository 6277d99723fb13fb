"""The TrainingContext of a LossVal fit in one process: one Adam over the weights and the model with the plain step
runner (steps.SingleStep), or, when the divergences are worth computing ahead on helper threads, SplitAdam with
chunked.ChunkedStep."""
from __future__ import annotations

from ..optim import adam
from .chunked import ChunkedStep, SplitAdam
from .protocols import TrainingContext
from .steps import SingleStep

__all__ = ["OneProcess"]


class OneProcess(TrainingContext):
    """One process owning every weight. chunk_steps: steps per chunk of divergences computed ahead (ChunkedStep),
    or None for the plain step."""

    def __init__(self, n: int, device, chunk_steps: int | None = None):
        super().__init__(n, device)
        self.chunk_steps = chunk_steps

    def optimizer(self, weights, model, lr):
        if self.chunk_steps is not None:
            return SplitAdam(weights, model, lr)
        return adam([weights, *model.parameters()], lr)

    def step_runner(self, est, model, weights, data, fixed_diameter, optimizer, threads: int):
        if self.chunk_steps is not None:
            return ChunkedStep(self, est, model, weights, data, fixed_diameter, optimizer, helpers=threads - 1)
        return SingleStep(est, model, weights, data, fixed_diameter, optimizer, threads)
