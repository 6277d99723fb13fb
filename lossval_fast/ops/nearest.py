"""The argmin flavour of the pairwise primitive: nearest rows, optionally with per-cluster sums (k-means step)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import op_checks
from . import backends

__all__ = ["nearest", "Nearest"]


class Nearest(NamedTuple):
    index: torch.Tensor   # (N,) int64: the first nearest row of y
    sqdist: torch.Tensor  # (N,) squared Euclidean distance to it
    sums: torch.Tensor    # (M, d) sum of the rows of x assigned to each row of y ((0, d) without accumulate)
    counts: torch.Tensor  # (M,) int64 number of rows assigned ((0,) without accumulate)


def nearest(x: torch.Tensor, y: torch.Tensor, *, accumulate: bool = False, backend: str = "auto",
            validate: bool = True) -> Nearest:
    """Index and squared distance of the nearest row of y for every row of x, in one pass over y without an
    N x M matrix; ties go to the lower index. With ``accumulate=True`` the same pass also returns, for every
    row of y, the sum and the number of rows of x assigned to it (assignment + centroid update of Lloyd)."""
    x, y = op_checks.pair(x, y)
    if validate:
        op_checks.finite(x, "x")
        op_checks.finite(y, "y")
    be = backends.resolve(backend, "nearest", x.device)
    return Nearest(*backends.op_table(be).nearest(x, y, bool(accumulate)))
