"""Peak resident memory of a call, sampled from /proc/self/statm by a background thread (torch's CPU allocations
are invisible to tracemalloc, and ru_maxrss never goes down). On CUDA, torch's own peak counters are used."""
from __future__ import annotations

import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakSampler:
    """Within the block, `reader()` (bytes) sampled every `interval` seconds by a background thread: `before`
    (on entry) and `peak` (the largest sample, the exit value included)."""

    def __init__(self, reader=_rss, interval: float = 2e-4):
        self.reader, self.interval = reader, interval
        self.before = self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self.reader())
            time.sleep(self.interval)

    def __enter__(self):
        self.before = self.peak = self.reader()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.reader())
        return False


def peak_bytes(fn, *, device: str = "cpu", interval: float = 2e-4):
    """(result, peak bytes above the level before the call)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return result, torch.cuda.max_memory_allocated() - before
    with PeakSampler(_rss, interval) as sampler:
        result = fn()
    return result, sampler.peak - sampler.before
