"""Resumable LossVal runs: killed mid-epoch or stopped by max_steps, resumed to the values of an
uninterrupted fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lossval_fast.valuation.lossval import LossVal
from scripts import run_script
from large_scale_data import HERE, synthetic


KILL_SCRIPT = """
    import os, signal, sys, numpy as np
    sys.path.insert(0, {tests!r})
    from large_scale_data import synthetic
    from lossval_fast.valuation import lossval as module
    X, y, Xv, yv = synthetic()
    np.save({folder!r} + "/X.npy", X)
    X = {source}
    call, count = module.SingleStep.__call__, [0]
    def step_then_die(self, *args):
        count[0] += 1
        if count[0] == {kill_at}:  # in the middle of a step, before the weights of this step are updated
            os.kill(os.getpid(), signal.SIGKILL)
        return call(self, *args)
    module.SingleStep.__call__ = step_then_die
    module.LossVal(epochs=3, batch_size=16, random_state=3, verbose=False, checkpoint={path!r},
                   checkpoint_every={every}).fit(X, y, Xv, yv)
"""


@pytest.mark.parametrize("source,every,kill_at", [("X", None, 15 + 7), ("{folder!r} + '/X.npy'", None, 15 + 7),
                                                  ("{folder!r} + '/X.npy'", 4, 2 * 15 + 11)],
                         ids=["in-memory", "npy", "npy-checkpoint-every-4"])
def test_killed_mid_epoch_resumes_with_the_same_values(tmp_path, source, every, kill_at):
    """SIGKILL inside a step (240 points, 15 steps per epoch): the resumed fit redoes the interrupted part from the
    last checkpoint (end of epoch, or the last of every 4 steps) and ends with an uninterrupted run's values."""
    path = str(tmp_path / "run.pt")
    folder = str(tmp_path)
    script = KILL_SCRIPT.format(tests=str(HERE), folder=folder, source=source.format(folder=folder), kill_at=kill_at,
                                path=path, every=every)
    result = run_script(script, timeout=300)
    assert result.returncode == -9, result.stderr
    state = torch.load(path, weights_only=True)
    if every is None:
        assert state["epoch"] == (kill_at - 1) // 15 - 1 and state["partial"] is None
    else:
        assert state["partial"]["position"] == 8 and state["epoch"] == 1  # epoch 2 (index), after 8 of 15 steps
    X, y, Xv, yv = synthetic()
    data = str(tmp_path / "X.npy") if "npy" in source else X
    resumed = LossVal(epochs=3, batch_size=16, random_state=3, verbose=False, checkpoint=path,
                      checkpoint_every=every).fit(data, y, Xv, yv)
    full = LossVal(epochs=3, batch_size=16, random_state=3, verbose=False).fit(X, y, Xv, yv)
    assert np.array_equal(resumed.values_, full.values_)
    assert resumed.history_ == full.history_
    assert resumed.n_steps_ == (45 - 15 * (state["epoch"] + 1) - (state["partial"] or {"position": 0})["position"])


def test_max_steps_stops_and_a_later_fit_continues_exactly(tmp_path):
    X, y, Xv, yv = synthetic()
    path = tmp_path / "boxed.pt"
    params = dict(epochs=2, batch_size=16, random_state=8, verbose=False, diameter="global")
    first = LossVal(**params, checkpoint=path, max_steps=11).fit(X, y, Xv, yv)
    assert first.n_steps_ == 11 and first.history_ == []
    second = LossVal(**params, checkpoint=path, max_steps=11).fit(X, y, Xv, yv)
    assert second.n_steps_ == 11 and len(second.history_) == 1
    last = LossVal(**params, checkpoint=path).fit(X, y, Xv, yv)
    full = LossVal(**params).fit(X, y, Xv, yv)
    assert last.n_steps_ == 30 - 22
    assert np.array_equal(last.values_, full.values_) and last.history_ == full.history_
    with pytest.raises(ValueError, match="max_steps must be None or an integer >= 1"):
        LossVal(max_steps=0).fit(X, y, Xv, yv)
