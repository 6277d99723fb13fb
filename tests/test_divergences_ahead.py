"""Single-process LossVal with the divergences computed ahead on helper threads: the step-by-step values,
stopped and resumed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lossval_fast.valuation.lossval import LossVal
from large_scale_data import Doubler, synthetic


@pytest.fixture
def chunked_small(monkeypatch):
    """The chunked single-process step at test sizes: every problem qualifies, 3-step chunks, 2 threads."""
    from lossval_fast.valuation import lossval as single

    monkeypatch.setattr(single.STEP_OPTIONS, "chunked_min_pairs", 1)
    monkeypatch.setattr(single.STEP_OPTIONS, "chunk_steps", 3)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield single
    torch.set_num_threads(previous)


CHUNKED_CASES = [
    (dict(diameter="global"), "classification"),
    (dict(diameter="batch", batch_size=7), "classification"),
    (dict(diameter="global", normalize=True, batch_size=5), "regression"),
    (dict(diameter=4.0, model_output="logits", model=torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))), "classification"),
    (dict(diameter="global", model=Doubler()), "classification"),
]


@pytest.mark.parametrize("params, task", CHUNKED_CASES)
def test_single_process_divergences_ahead_equal_the_step_by_step_fit(chunked_small, monkeypatch, params, task):
    """With threads to spare a single process computes the divergences of chunks of steps ahead on a helper
    thread (weights fast-forwarded through Adam's zero-gradient updates): the values of the step-by-step fit, in
    float64 to 1e-9, over several chunks and epochs, the C++ model step and the autograd one, both diameters."""
    from lossval_fast.valuation.lossval import chunked

    X, y, Xv, yv = synthetic(n=150, m=40, task=task)
    params = {**dict(epochs=2, random_state=5, verbose=False, dtype=torch.float64, batch_size=8), **params}
    started = []
    original = chunked.ChunkedStep.start
    monkeypatch.setattr(chunked.ChunkedStep, "start", lambda self, chunk, skip: (started.append(skip),
                                                                                 original(self, chunk, skip)))
    ahead = LossVal(task=task, **params).fit(X, y, Xv, yv)
    assert len(started) >= 2 * 6  # every chunk of both epochs went through the chunked step
    monkeypatch.setattr(chunked_small.STEP_OPTIONS, "chunked_steps", False)
    plain = LossVal(task=task, **params).fit(X, y, Xv, yv)
    assert np.abs(ahead.values_ - plain.values_).max() <= 1e-9
    assert np.allclose(ahead.history_, plain.history_, rtol=1e-9)
    assert ahead.fused_step_ == plain.fused_step_ == (not isinstance(params.get("model"), Doubler))
    assert not np.allclose(ahead.values_, 1.0)


def test_single_process_divergences_ahead_stop_and_resume(chunked_small, tmp_path):
    """Time-boxed mid-chunk with helper tasks in flight, checkpointed, resumed: the uninterrupted values."""
    X, y, Xv, yv = synthetic(n=150, m=40)
    params = dict(epochs=2, random_state=2, verbose=False, dtype=torch.float64, batch_size=8, diameter="global")
    path = tmp_path / "ahead.pt"
    first = LossVal(**params, checkpoint=path, max_steps=11).fit(X, y, Xv, yv)
    resumed = LossVal(**params, checkpoint=path).fit(X, y, Xv, yv)
    whole = LossVal(**params).fit(X, y, Xv, yv)
    assert first.n_steps_ == 11 and resumed.n_steps_ == 2 * 19 - 11
    assert np.abs(resumed.values_ - whole.values_).max() <= 1e-9
    import threading
    assert not any(t.name.startswith("lossval-divergence") for t in threading.enumerate())  # helpers stopped
