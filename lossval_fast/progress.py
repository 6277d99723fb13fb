"""Progress of a long fit: tqdm's bar on a terminal, periodic plain lines with rate and ETA elsewhere (a log file,
CI), where a bar would print nothing useful for minutes."""
from __future__ import annotations

import sys
import time

INTERVAL = 10.0     # seconds between lines at most (also a line at every 10 % of the work)
QUIET_START = 2.0   # fits shorter than this print no line at all


def progress(total: int, desc: str, unit: str, initial: int = 0):
    """A tqdm bar when stderr is a terminal, else a LineProgress (same update / set_postfix / close)."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit=unit)
    return LineProgress(total, desc, unit, initial)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LineProgress:
    """'desc: 3/30 epoch (10%), 1.25 epoch/s, ETA 22 s' on stderr every INTERVAL seconds or 10 % of the work,
    whichever comes first, once the work has run QUIET_START seconds; a last line at close if any was printed."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, file=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.file = file
        self.started = self.last = time.monotonic()
        self.last_tenth = self._tenth(initial)
        self.postfix = ""
        self.printed = False

    def _tenth(self, n) -> int:
        return int(10 * n / self.total) if self.total else 10

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def update(self, count: int = 1):
        self.n += count
        now = time.monotonic()
        tenth = self._tenth(self.n)
        if now - self.started < QUIET_START:
            return
        if now - self.last >= INTERVAL or tenth > self.last_tenth:
            self._line(now)
            self.last, self.last_tenth = now, tenth

    def _line(self, now, final=False):
        elapsed = now - self.started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        left = self.total - self.n
        if final:
            timing = f"done in {_duration(elapsed)}"
        else:
            timing = f"ETA {_duration(left / rate)}" if rate > 0 else "ETA unknown"
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}{percent}, {rate:.3g} {self.unit}/s, {timing}{extra}",
              file=self.file or sys.stderr, flush=True)
        self.printed = True

    def close(self):
        if self.printed:
            self._line(time.monotonic(), final=True)
