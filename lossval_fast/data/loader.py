"""Row sources for out-of-core valuation and the background minibatch loader.

A *row source* wraps what a user passes as X or y: an in-memory array (numpy, torch, list), a path to a ``.npy``
file (opened with ``np.load(mmap_mode="r")``), a ``numpy.memmap``, or any array-like with ``__len__`` and a
``__getitem__`` that accepts an integer index array (h5py and zarr datasets, custom readers). Only the rows a
minibatch needs are ever read; input checks stream over the rows in chunks.

``BatchPrefetcher`` gathers the minibatches of an epoch in a background thread, a few batches ahead (a bounded
queue), into pinned memory when the target device is CUDA, and copies them there with ``non_blocking=True``, so
the device does not wait for the loader.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

__all__ = ["RowSource", "open_rows", "BatchPrefetcher", "CHUNK_BYTES"]

CHUNK_BYTES = 4 << 20  # rows per streaming chunk: a float64 copy of a chunk stays below this


class RowSource:
    """Random access to the rows of a 2-D (points x features) or 1-D/2-D (targets) array.

    Attributes: ``shape``, ``dtype`` (a numpy dtype, or the torch dtype of a torch input),
    ``in_memory`` (True for arrays already in RAM or on a device: those are used directly, never streamed),
    ``data`` (the wrapped object).
    """

    def __init__(self, data, shape: tuple, dtype, *, in_memory: bool, kind: str):
        self.data = data
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.in_memory = in_memory
        self.kind = kind  # "tensor" | "numpy" | "generic"

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def take(self, idx: np.ndarray) -> torch.Tensor:
        """The rows `idx` (int64 array), in that order, as a tensor (on the source's device for torch inputs,
        else on the CPU, never sharing memory with the source)."""
        if self.kind == "tensor":
            return self.data.index_select(0, torch.as_tensor(idx, device=self.data.device))
        if self.kind == "numpy":
            return torch.from_numpy(np.ascontiguousarray(self.data[idx]))
        # generic readers: sorted, unique indices (what h5py requires, and what a disk prefers), put back in order
        order = np.argsort(idx, kind="stable")
        rows = np.asarray(self.data[idx[order]])
        out = np.empty_like(rows)
        out[order] = rows
        return torch.from_numpy(out)

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 as a numpy array (a copy for torch inputs on a device)."""
        if self.kind == "tensor":
            return self.data[lo:hi].detach().cpu().numpy()
        if self.kind == "numpy":
            return np.asarray(self.data[lo:hi])
        return np.asarray(self.data[np.arange(lo, hi, dtype=np.int64)])

    def chunks(self, lo: int = 0, hi: int | None = None, *, chunk_bytes: int | None = None) -> Iterator[np.ndarray]:
        """Rows lo..hi-1 in consecutive chunks of at most `chunk_bytes` (as float64; default CHUNK_BYTES)."""
        hi = len(self) if hi is None else hi
        chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        width = int(np.prod(self.shape[1:], dtype=np.int64)) if self.ndim > 1 else 1
        step = max(1, chunk_bytes // (8 * max(width, 1)))
        for start in range(lo, hi, step):
            yield self.read(start, min(hi, start + step))

    def __repr__(self) -> str:
        where = "in memory" if self.in_memory else "out of core"
        return f"RowSource({type(self.data).__name__}, shape={self.shape}, dtype={self.dtype}, {where})"


def _numpy_dtype(value) -> np.dtype | None:
    try:
        return np.dtype(value)
    except TypeError:
        return None


def open_rows(value, name: str = "X") -> RowSource:
    """Wrap `value` as a RowSource. Paths must name a ``.npy`` file (memory-mapped read-only)."""
    if isinstance(value, RowSource):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not path.endswith(".npy"):
            raise ValueError(f"{name} given as a path must name a .npy file (memory-mapped), got {path!r}")
        if not os.path.exists(path):
            raise ValueError(f"{name}: no such file {path!r}")
        try:
            value = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"{name}: cannot memory-map {path!r} ({error})") from error
    if isinstance(value, torch.Tensor):
        t = value.detach()
        return RowSource(t, t.shape, t.dtype, in_memory=True, kind="tensor")
    if isinstance(value, np.memmap):
        return RowSource(value, value.shape, value.dtype, in_memory=False, kind="numpy")
    if isinstance(value, np.ndarray):
        return RowSource(value, value.shape, value.dtype, in_memory=True, kind="numpy")
    if isinstance(value, (list, tuple)) or hasattr(value, "iloc") or np.isscalar(value) or value is None:
        # lists and pandas objects are in memory already (and a DataFrame's [] selects columns, not rows)
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be array-like (numpy or torch), got {type(value).__name__}") from error
        if array.dtype == object:
            raise ValueError(f"{name} must be array-like (numpy or torch), got {type(value).__name__}")
        return RowSource(array, array.shape, array.dtype, in_memory=True, kind="numpy")
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        length = len(value)
        shape = getattr(value, "shape", None)
        dtype = _numpy_dtype(getattr(value, "dtype", None)) if hasattr(value, "dtype") else None
        if shape is None or dtype is None:
            if length == 0:
                raise ValueError(f"{name} must hold at least one row, got an empty {type(value).__name__}")
            first = np.asarray(value[np.array([0], dtype=np.int64)])
            shape = (length,) + tuple(first.shape[1:]) if shape is None else shape
            dtype = first.dtype if dtype is None else dtype
        if len(shape) == 0 or int(shape[0]) != length:
            raise ValueError(f"{name}: shape {tuple(shape)} does not match its length {length}")
        return RowSource(value, shape, dtype, in_memory=False, kind="generic")
    raise ValueError(f"{name} must be array-like (numpy or torch), a .npy path or an object with __len__ and "
                     f"__getitem__ over index arrays, got {type(value).__name__}")


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


class BatchPrefetcher:
    """Iterate over ``gather(batch)`` for every batch, computed `depth` batches ahead in a background thread.

    `gather` returns a tuple of tensors (CPU tensors are pinned and copied to `device` with ``non_blocking=True``
    when it is a CUDA device; tensors already on `device` pass through; anything else is returned as is).
    An exception raised by `gather` is re-raised in the iterating thread; ``close()`` (also on leaving a ``with``
    block or abandoning the iteration) stops the thread and waits for it.
    """

    def __init__(self, batches: Sequence | Iterable, gather: Callable, device, *, depth: int = 4):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.batches = batches
        self.gather = gather
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="lossval-prefetch", daemon=True)
        self._started = False

    # -------------------------------------------------------------------------------------- producer
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        try:
            for batch in self.batches:
                if self._stop.is_set():
                    return
                item = self.gather(batch)
                if self.pin:
                    item = tuple(t.pin_memory() if isinstance(t, torch.Tensor) and t.device.type == "cpu" else t
                                 for t in item)
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._put(_Failure(error))
            return
        self._put(_DONE)

    # -------------------------------------------------------------------------------------- consumer
    def _to_device(self, item):
        return tuple(t.to(self.device, non_blocking=True)
                     if isinstance(t, torch.Tensor) and t.device != self.device else t for t in item)

    def _next(self):
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread stopped without a result") from None
                continue
            if isinstance(item, _Failure):
                raise item.error
            return item

    def __iter__(self):
        if self._started:
            raise RuntimeError("a BatchPrefetcher can be iterated only once")
        self._started = True
        self._thread.start()
        try:
            item = self._next()
            if item is _DONE:
                return
            current = self._to_device(item)
            while True:
                item = self._next()
                # the next batch's copy is issued before the current one is used: on CUDA it overlaps compute
                upcoming = None if item is _DONE else self._to_device(item)
                yield current
                if upcoming is None:
                    return
                current = upcoming
        finally:
            self.close()

    def close(self):
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
