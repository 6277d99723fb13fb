"""Test problems and tolerances shared by the op tests and the valuation tests."""
from __future__ import annotations

import numpy as np
import torch

from lossval_fast import reference

SIZES = (1, 7, 33, 1000)
DIMS = (1, 3, 64, 257)
EPSILONS = (1e-4, 1e-2, 1.0, 10.0)


def problem(n: int, m: int, d: int, seed: int = 0, masked: bool = True):
    """Points off the origin (the centring matters), biases with every third point masked by -1e5 (all of
    them when m == 1)."""
    g = torch.Generator().manual_seed(1000 * n + 10 * m + d + seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.3
    y = 0.8 * torch.randn(m, d, generator=g, dtype=torch.float64) - 0.2
    h = torch.randn(m, generator=g, dtype=torch.float64)
    if masked:
        h[::3] = -1e5
    return x, y, h


def cast(dtype, device, *tensors):
    return tuple(t.to(dtype=dtype, device=device) for t in tensors)


def exact_on(dtype, *tensors):
    """The float64 values of the inputs as the kernel sees them (rounded to `dtype` first)."""
    return tuple(t.to(dtype).double() for t in tensors)


def softmin_tolerance(dtype, x, y, h, eps, exact):
    """Per-row absolute tolerance: a few units of rounding of the largest magnitude entering the row
    (the cost, eps times the bias, the result). fp64: 1e-10 relative; fp32: 4e-6 relative."""
    cost = reference.half_sqdist(x, y)
    finite_h = torch.where(h > -1e4, h, torch.zeros_like(h))
    scale = 1 + cost.abs().amax(1) + eps * finite_h.abs().max() + exact.abs()
    return (1e-10 if dtype == torch.float64 else 4e-6) * scale


def assert_rows_close(out, exact, tol, what: str):
    err = (out.detach().double().cpu() - exact.cpu()).abs()
    bad = err > tol.cpu()
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} rows off; worst error {err.max().item():.3e}, "
                                 f"tolerance there {tol.cpu().flatten()[err.argmax()].item():.3e}")


def gaussians(seed, n=600, n_val=300, d=2, flip=0.1):
    """T11's data: two unit Gaussians at +-(2, 0, ...), 10% of the training labels flipped, a clean validation set."""
    rng = np.random.default_rng(seed)
    shift = np.zeros(d)
    shift[0] = 2.0

    def draw(m):
        y = rng.integers(0, 2, m)
        return rng.normal(size=(m, d)) + np.where(y[:, None] == 1, shift, -shift), y

    X, y = draw(n)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, int(round(flip * n)), replace=False)] = True
    X_val, y_val = draw(n_val)
    return X, np.where(flipped, 1 - y, y), X_val, y_val, flipped
