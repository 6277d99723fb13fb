"""What LossVal's training loop (estimator.LossVal._train) is written against, declared once:

- StepRunner: runs an epoch's minibatch steps (steps.SingleStep, chunked.ChunkedStep, and lossval_fast.distributed's
  sharded step);
- TrainingContext: where the loop runs: one process (context.OneProcess) or one rank of a data-parallel fit
  (lossval_fast.distributed's): its shard of the weights, the agreed seed, the optimiser and step runner it
  builds, the gathers for checkpoints and values;
- DataParallel: the ranks LossVal.fit(ranks=...) takes (a base.Ranks that also makes the rank's TrainingContext).

Imports only the package's leaves."""
from __future__ import annotations

import torch

from ...base import Ranks

__all__ = ["StepRunner", "TrainingContext", "DataParallel", "shard_bounds"]


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous shards of n rows over `world` ranks; sizes differ by at most one (a shard may be empty)."""
    return [(n * r // world, n * (r + 1) // world) for r in range(world)]


class StepRunner:
    """One epoch's LossVal steps. batches(order, position) yields one item per minibatch of `order` (the epoch's
    row order) from step `position` on; calling the runner with an item and the optimiser takes that step
    (forward, backward, the optimiser's step) and returns its loss."""

    fused = None   # the C++ whole step's model structure when a step is one C++ call (it keeps its gradients), or None
    lazy = False   # the weights' Adam moves only the batch's entries each step (optim.lazy_steps; settled at the end)

    def batches(self, order: torch.Tensor, position: int):
        raise NotImplementedError

    def __call__(self, item, optimizer) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Release helper threads; called when the fit ends, also when it fails."""

    def finish(self) -> None:
        """At the end of a fit that ran normally: wait for work issued ahead for steps that will not run."""


class TrainingContext:
    """Where the training loop runs (this base: one process owning every weight, no collectives)."""

    rank, world = 0, 1

    def __init__(self, n: int, device):
        self.shard = (0, n)
        self.comm_device = torch.device(device)

    def agree(self, seed: int) -> int:
        """The seed every rank uses (rank 0's)."""
        return seed

    def barrier(self) -> None:
        """Wait until every rank is here."""

    @staticmethod
    def all_reduce(tensor):
        """Sum over the ranks, issued asynchronously: the work to wait for (None in one process: nothing to sum)."""
        return None

    def optimizer(self, weights, model, lr):
        raise NotImplementedError

    def step_runner(self, est, model, weights, data, fixed_diameter, optimizer, threads: int) -> StepRunner:
        raise NotImplementedError

    def gather_values(self, weights: torch.Tensor):
        """All n weights on the CPU (None on ranks other than 0)."""
        return weights.detach().cpu()

    def gather_state(self, weights, optimizer):
        """(all weights, the optimiser's full state dict), or (None, None) on ranks other than 0; collective."""
        return weights, optimizer.state_dict()


class DataParallel(Ranks):
    """The ranks of a data-parallel LossVal fit (LossVal.fit(ranks=...)): each rank checks and holds the rows of
    its shard (shard_bounds) and trains in the TrainingContext this makes."""

    def check(self, est) -> None:
        """Reject an estimator this kind of data-parallel fit cannot run, before the data are read."""

    def training_context(self, est, data) -> TrainingContext:
        raise NotImplementedError
