"""EcoVal's training state and its checkpoint file. A state is a dict: U (R, S) utilities, Uv (R, S, m) utilities
per validation point (None for a callable metric), done (R, S), heldout (R, n) LCO held-out outputs, models
{(r, i): LCO model}, and the fingerprint of the fit (configuration, data, clusters, subsets), which a resumed fit
must match. The file is written atomically; the ranks of a distributed
fit each write `path.rank<r>` (r > 0), merged on resume.

The file holds only tensors and plain data (lossval_fast.valuation.state_file: read with weights_only=True, so
an untrusted file cannot run code): the arrays are stored as tensors, and of the models only the built-in
learners' (dicts of tensors); a learner object's LCO models are not saved and value() refits one when needed."""
from __future__ import annotations

import glob
import hashlib
import numbers
import os
import time

import numpy as np
import torch

from ...ops.memory import lazy_zeros
from .. import state_file


def _digest(*arrays) -> str:
    """SHA-1 of the arrays' dtypes, shapes and bytes (read in place, not copied)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a.reshape(-1)).cast("B") if a.dtype.kind != "O" else repr(a.tolist()).encode())
    return h.hexdigest()


def new_state(R, S, n, m, C=None) -> dict:
    """m: validation points of the per-point record Uv, or None (callable metric: no record); C: classes of the
    held-out class probabilities (R, n, C), or None (regression: held-out predictions (R, n)). The held-out table
    is on fresh zero pages (``ops.memory.lazy_zeros``): resident only where written, so a batched fit without a
    checkpoint, which fills it after its trainings, does not hold it through them."""
    return {"U": np.full((R, S), np.nan), "Uv": None if m is None else np.full((R, S, m), np.nan),
            "done": np.zeros((R, S), dtype=bool), "heldout": lazy_zeros((R, n) if C is None else (R, n, C)),
            "models": {}}


def merge_state(state, other, members):
    """Add to `state` the trainings `other` (a state of the same fit: another rank's, another checkpoint
    file's) has done and `state` has not: utilities, LCO held-out outputs and models."""
    new = other["done"] & ~state["done"]
    state["U"][new] = other["U"][new]
    if state.get("Uv") is not None:
        state["Uv"][new] = other["Uv"][new]
    p = len(members)
    for r, j in zip(*np.nonzero(new)):
        if 1 <= j <= p:
            rows = members[j - 1]
            state["heldout"][r, rows] = other["heldout_rows"][(r, j - 1)] if "heldout_rows" in other else \
                other["heldout"][r, rows]
            if (r, j - 1) in other["models"]:
                state["models"][(r, j - 1)] = other["models"][(r, j - 1)]
    state["done"] |= new
    return state


def checkpoint_path(est) -> str:
    """The checkpoint file of this process: `checkpoint`, or `checkpoint.rank<r>` for rank r > 0 of a
    distributed fit (each rank saves the trainings it finished; rank 0 saves the merged state at the end)."""
    path = os.fspath(est.checkpoint)
    if est._ranks is None or est._ranks.rank == 0:
        return path
    return f"{path}.rank{est._ranks.rank}"


def fingerprint(est, R, S, n, p) -> dict:
    learner = est.learner
    if not (isinstance(learner, str) or learner is None):
        # class and plain parameters only: reprs of nested objects carry memory addresses
        plain = {}
        if hasattr(learner, "get_params"):
            plain = {k: v for k, v in learner.get_params(deep=False).items()
                     if v is None or isinstance(v, (bool, numbers.Number, str))}
        learner = f"{type(learner).__module__}.{type(learner).__qualname__}{sorted(plain.items())}"
    metric = getattr(est.metric_, "__qualname__", repr(est.metric_)) if callable(est.metric_) else est.metric_
    data = est._data
    return {"n": int(n), "p": int(p), "R": int(R), "S": int(S), "learner": str(learner),
            "path": str(est._trainings.path), "metric": str(metric), "task": est.task_,
            "seeds": [int(s) for s in est._seeds], "keep_models": bool(est.keep_models), "utility_points": True,
            "data": _digest(data.X, np.asarray(data.y), data.X_val, np.asarray(est._utility.y_val)),
            "clusters": _digest(est.cluster_labels_), "subsets": _digest(est.subsets_)}


def load(est, R, S, n, p) -> dict:
    """A fresh state, with every training the checkpoint files (the main one and ranks') already hold."""
    state = new_state(R, S, n, None if callable(est.metric_) else len(est._data.y_val),
                      est._data.C if est._data.classification else None)
    est._fingerprint_ = None
    est._last_save = time.monotonic()
    if est.checkpoint is None:
        return state
    est._fingerprint_ = fingerprint(est, R, S, n, p)
    state["fingerprint"] = est._fingerprint_
    path = os.fspath(est.checkpoint)
    # the main file and the files of the ranks of an interrupted distributed fit: every training any finished
    paths = [path] + sorted(glob.glob(glob.escape(path) + ".rank[0-9]*"))
    for name in paths:
        if not os.path.exists(name) or name.endswith(".tmp"):
            continue
        saved = state_file.load(name)
        differ = state_file.mismatch(saved.get("fingerprint") if isinstance(saved, dict) else None,
                                     est._fingerprint_)
        if differ:
            raise ValueError(f"checkpoint {name!r} belongs to a different configuration or data set ({differ}); "
                             "delete it or pass another path")
        state = merge_state(state, _from_file(saved), est._members)
    return state


def save(est, state, force=False) -> None:
    """Write the state (at most every est._checkpoint_interval seconds unless force)."""
    if est.checkpoint is None:
        return
    now = time.monotonic()
    if not force and now - est._last_save < est._checkpoint_interval:
        return
    state_file.save(_to_file(state), checkpoint_path(est))  # atomic: never a truncated checkpoint
    est._last_save = now


def _to_file(state) -> dict:
    """The state as tensors and plain data: arrays as tensors, only the models that are dicts of tensors."""
    out = {k: v for k, v in state.items() if k != "models"}
    out["models"] = {key: model for key, model in state["models"].items()
                     if isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values())}
    return state_file.plain(out)


def _from_file(saved) -> dict:
    """A state read from a file, its arrays back as numpy arrays."""
    state = dict(saved)
    for key in ("U", "Uv", "done", "heldout"):
        if isinstance(state.get(key), torch.Tensor):
            state[key] = state[key].numpy()
    return state
