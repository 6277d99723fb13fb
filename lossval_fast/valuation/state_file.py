"""Checkpoint files that hold only tensors and plain data (dict, list, tuple, str, int, float, bool, None).

They are written with torch.save to a temporary name in the same folder and renamed (atomic: a crash mid-save
never leaves a truncated file) and read with ``torch.load(weights_only=True)``, which refuses any other Python
object instead of running its pickled code: opening an untrusted checkpoint cannot run code.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import torch

from .._io import atomic_write

__all__ = ["save", "load", "mismatch", "plain"]


def save(state, path) -> None:
    """torch.save `state` to `path` atomically (lossval_fast._io.atomic_write: a unique temporary name in the same
    folder, then os.replace; ranks or two fits never share a temporary file)."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load(path, what: str = "checkpoint"):
    """The state in `path`, read with weights_only=True; a clear ValueError naming the file when it is empty,
    truncated, not a checkpoint, or holds Python objects other than tensors and plain data."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{what} {path!r} is empty (0 bytes); expected a file written by torch.save: delete it "
                         "or pass another path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        lines = [line.strip() for line in text.splitlines()]
        found = [line for line in lines if "GLOBAL" in line or "Unsupported global" in line]
        if found:  # a class or function to import and call: what a code-running pickle needs
            first = found[0]
            raise ValueError(f"{what} {path!r} holds Python objects other than tensors and plain data ({first}); "
                             "refused without running it: checkpoints of this version hold only tensors and plain "
                             "data") from None
        detail = next((line for line in lines if line.startswith("Unsupported")), _first_line(error))
        raise ValueError(f"{what} {path!r} is not a checkpoint ({size} bytes; {type(error).__name__}: {detail}); "
                         "expected a file written by torch.save: delete it or pass another path") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as error:
        raise ValueError(f"{what} {path!r} is truncated or not a checkpoint ({size} bytes; {type(error).__name__}: "
                         f"{_first_line(error)}); expected a file written by torch.save: delete it or pass "
                         "another path") from None


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "no message"


def mismatch(saved, expected) -> str | None:
    """None when the fingerprints agree, else 'field: checkpoint has A, this fit has B' for each field that
    differs (the fields of one and not the other count too)."""
    if not isinstance(saved, dict):
        return f"fingerprint: checkpoint has {type(saved).__name__}, expected a dict"
    parts = []
    for key in list(expected) + [k for k in saved if k not in expected]:
        a, b = saved.get(key, "<missing>"), expected.get(key, "<missing>")
        if a != b:
            parts.append(f"{key}: checkpoint has {_short(a)}, this fit has {_short(b)}")
    return "; ".join(parts) or None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def plain(value):
    """`value` with numpy scalars and arrays turned into Python numbers and tensors, recursively (what a
    weights_only file can hold)."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    return value
