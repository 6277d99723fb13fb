"""Shared by the large-scale tests: synthetic data, a minimal out-of-core reader, a model outside the C++ step."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def synthetic(n=240, m=50, d=8, seed=0, task="classification"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Xv = rng.normal(size=(m, d))
    if task == "classification":
        y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
        yv = (Xv[:, 0] > 0).astype(np.int64)
    else:
        coef = rng.normal(size=d)
        y, yv = X @ coef + 0.1 * rng.normal(size=n), Xv @ coef
    return X, y, Xv, yv


class Reader:
    """A minimal out-of-core array-like: __len__, shape, dtype and __getitem__ over index arrays only."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.largest = 0
        self.calls = 0

    def __len__(self):
        return len(self.array)

    def __getitem__(self, idx):
        assert isinstance(idx, np.ndarray) and idx.dtype == np.int64, type(idx)
        assert np.all(np.diff(idx) > 0), "a generic reader gets sorted, unique indices"
        self.largest = max(self.largest, len(idx))
        self.calls += 1
        return self.array[idx]


class Doubler(torch.nn.Module):
    """A model the C++ step does not cover (not an nn.Sequential): the autograd path."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 2),
                                         torch.nn.Softmax(-1))

    def forward(self, x):
        return self.inner(2 * x)
