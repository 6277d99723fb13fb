"""Benchmark setup: same thread count for us and the peers, results gathered per file and written as JSON and
markdown under bench/results/ at the end of the session (ratios are computed within one run)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

THREADS = int(os.environ.get("LOSSVAL_FAST_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)
RESULTS = Path(__file__).parent / "results"
_ROWS: dict[str, list[dict]] = {}
_EXTRA: dict[str, dict] = {}
_MARKDOWN: dict = {}


def record(suite: str, **row) -> None:
    """Add a result row (time, precision, error vs float64, ...) to `suite`'s report."""
    _ROWS.setdefault(suite, []).append(row)


def annotate(suite: str, **info) -> None:
    """Suite-level information (machine floors, ratios)."""
    _EXTRA.setdefault(suite, {}).update(info)


def markdown(suite: str, writer) -> None:
    """`writer(payload) -> str` renders the suite's report as results/<suite>.md."""
    _MARKDOWN[suite] = writer


def rows(suite: str) -> list[dict]:
    return _ROWS.get(suite, [])


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import lossval_fast
    info = lossval_fast.info()
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": THREADS, "torch": torch.__version__,
            "cpu_capability": info["cpu_capability"], "commit": commit,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def pytest_sessionfinish(session, exitstatus):
    if not _ROWS:
        return
    RESULTS.mkdir(exist_ok=True)
    meta = machine()
    for suite, rows in _ROWS.items():
        payload = {"machine": meta, "info": _EXTRA.get(suite, {}), "rows": rows}
        (RESULTS / f"{suite}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
        if suite in _MARKDOWN:
            (RESULTS / f"{suite}.md").write_text(_MARKDOWN[suite](payload))
