"""LossVal's data: the checks (by argument, in chunks for out-of-core inputs), the statistics merged over
ranks, and the rows of a minibatch."""
from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np
import torch

from ...data import RowSource

TASKS = ("classification", "regression")


@contextlib.contextmanager
def _intra_op_threads(count):
    """Temporarily run torch's CPU ops on `count` threads (None: leave as is)."""
    if count is None or count == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_INT_DTYPES = (torch.int32, torch.int64, torch.int16, torch.uint8)
_NP_INT_DTYPES = tuple(np.dtype(t) for t in (np.int32, np.int64, np.int16, np.uint8))
_CHECKSUM_MOD = 1 << 64


def _is_float_dtype(dtype) -> bool:
    return dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.dtype(dtype).kind == "f"


def _is_numeric_dtype(dtype, *, target: bool = False) -> bool:
    """Features: floats and the integer types torch converts (as before); targets: any bool, int or float."""
    if isinstance(dtype, torch.dtype):
        if target:
            return not dtype.is_complex
        return dtype.is_floating_point or dtype in _INT_DTYPES
    kind = np.dtype(dtype).kind
    if target:
        return kind in "biuf"
    return kind == "f" or np.dtype(dtype) in _NP_INT_DTYPES


def _plain(value):
    """A numpy scalar as the Python number it holds, so that messages say 1 rather than np.int64(1)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_int(value, name: str, minimum: int, alternative: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be {alternative}an integer >= {minimum}, got {_plain(value)!r}")
    return int(value)


def _check_positive(value, name: str, largest: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {_plain(value)!r}")
    if value > largest:
        raise ValueError(f"{name} must be at most {largest:g}, got {_plain(value)!r}")


def _check_magnitude(stats: dict, name: str, d: int, dtype: torch.dtype) -> None:
    """Finite features can still overflow the squared distances of the divergence (or the dtype itself, 1e308 in
    float32): refuse them by name rather than report them later as NaN or inf."""
    largest = float(np.max(np.maximum(np.abs(stats["min"]), np.abs(stats["max"])), initial=0.0))
    limit = math.sqrt(torch.finfo(dtype).max / max(d, 1)) / 2  # |x - y|² over d features stays finite below it
    if largest > limit:
        raise ValueError(f"{name} holds a value of magnitude {largest:.3g}; in {str(dtype).replace('torch.', '')} the "
                         f"squared distances overflow above about {limit:.3g}: standardise the features (z-score) "
                         "first")


def _check_feature_shape(src: RowSource, name: str):
    if src.ndim != 2:
        raise ValueError(f"{name} must be 2-D (points x features), got shape {src.shape}")
    if not _is_numeric_dtype(src.dtype):
        raise ValueError(f"{name} must be numeric, got dtype {src.dtype}")
    if src.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got shape {src.shape}")


def _checksum(chunk: np.ndarray, first_row: int) -> int:
    """Σ_k bits_k · (2k + 1) modulo 2**64 over the float64 bit patterns, k an element's position in the whole
    array (the chunk starts at row first_row): independent of how the rows are chunked or sharded, but not of
    their order (a checkpoint must not resume on permuted rows)."""
    bits = np.ascontiguousarray(chunk, dtype=np.float64).reshape(len(chunk), -1).view(np.uint64)
    start = first_row * bits.shape[1]
    k = np.arange(start, start + bits.size, dtype=np.uint64).reshape(bits.shape)
    return int((bits * (k * np.uint64(2) + np.uint64(1))).sum(dtype=np.uint64))


def _counted_chunks(src: RowSource, stats: dict, lo: int, hi: int | None):
    """Each chunk of rows lo..hi-1 as float64 with its count of NaN/inf, after adding that count and the chunk's
    checksum to stats["bad"] and stats["checksum"]."""
    row = 0 if lo is None else lo
    for chunk in src.chunks(lo, hi):
        c = np.asarray(chunk, dtype=np.float64)
        bad = c.size - int(np.count_nonzero(np.isfinite(c)))
        stats["bad"] += bad
        stats["checksum"] = (stats["checksum"] + _checksum(c, row)) % _CHECKSUM_MOD
        row += len(c)
        yield c, bad


def _feature_stats(src: RowSource, lo: int = 0, hi: int | None = None) -> dict:
    """NaN/inf count, per-column min and max (float64) and checksum of rows lo..hi-1, read in chunks."""
    d = src.shape[1]
    stats = {"bad": 0, "min": np.full(d, np.inf), "max": np.full(d, -np.inf), "checksum": 0}
    for c, bad in _counted_chunks(src, stats, lo, hi):
        if bad == 0 and c.shape[0]:
            stats["min"] = np.minimum(stats["min"], c.min(0))
            stats["max"] = np.maximum(stats["max"], c.max(0))
    return stats


def _target_stats(src: RowSource, classification: bool, lo: int = 0, hi: int | None = None,
                  max_labels: int | None = None) -> dict:
    """NaN/inf count, checksum and, for class labels, non-integer count, min, max and the set of labels (no more
    than max_labels of them kept when given: enough to tell that there are more)."""
    stats = {"bad": 0, "checksum": 0, "nonint": 0, "min": math.inf, "max": -math.inf, "labels": set()}
    for c, bad in _counted_chunks(src, stats, lo, hi):
        if classification and bad == 0 and c.size:
            stats["nonint"] += int(np.count_nonzero(c != np.round(c)))
            stats["min"] = min(stats["min"], float(c.min()))
            stats["max"] = max(stats["max"], float(c.max()))
            if max_labels is None or len(stats["labels"]) < max_labels:
                stats["labels"].update(np.unique(c.astype(np.int64)).tolist())
    return stats


def merge_stats(parts: list[dict]) -> dict:
    """Combine the statistics of disjoint row ranges (what each process of a distributed fit computed)."""
    out = {}
    for key in parts[0]:
        items = [p[key] for p in parts]
        if key in ("X", "y"):
            out[key] = merge_stats(items)
        elif key == "checksum":
            out[key] = sum(items) % _CHECKSUM_MOD
        elif key == "bad" or key == "nonint":
            out[key] = sum(items)
        elif key == "min":
            out[key] = np.minimum.reduce(items) if isinstance(items[0], np.ndarray) else min(items)
        elif key == "max":
            out[key] = np.maximum.reduce(items) if isinstance(items[0], np.ndarray) else max(items)
        elif key == "labels":
            out[key] = set().union(*items)
        else:
            raise KeyError(key)
    return out


def _to_tensor(src: RowSource) -> torch.Tensor:
    """The whole source as a tensor (in-memory inputs, and the validation set, which is always held in memory)."""
    if src.kind == "tensor":
        return src.data
    array = src.data if src.kind == "numpy" and src.in_memory else src.read(0, len(src))
    try:
        # a view with negative strides (X[::-1]) cannot be shared with torch: copied in order instead
        return torch.as_tensor(np.ascontiguousarray(array))
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot convert an array of dtype {array.dtype} to a tensor") from error


class Data:
    """Checked inputs of a fit: in-memory device tensors (X, y) or row sources (X_src, y_src) streamed by the
    loader; the validation set on the device; the statistics the checks gathered."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @property
    def streamed(self) -> bool:
        return self.X is None


def gather_rows(data: Data, task: str, idx: np.ndarray):
    """(x, y) of the rows idx (numpy int64), converted as the in-memory path converts the whole arrays."""
    xb = data.X_src.take(idx).to(data.dtype)
    yb = data.y_src.take(idx)
    if task == "classification":
        yb = yb.long()
    else:
        yb = yb.to(data.dtype).reshape(len(idx), -1)
    return xb, yb
