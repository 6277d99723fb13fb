"""Benchmark setup: same thread count for us and the peers, results gathered per file and written as JSON and
markdown (ratios are computed within one run) as each suite (file) finishes, so an interrupted run keeps the
suites it completed.

Where: $LOSSVAL_FAST_BENCH_OUT, else a fresh folder bench/runs/<date-time>/ (not tracked): a run never rewrites
the committed reports in bench/results/ unless asked (`lossval-fast bench --update-results`, or
LOSSVAL_FAST_BENCH_OUT=bench/results). LOSSVAL_FAST_BENCH_QUICK=1 (`lossval-fast bench --quick`, about 2 minutes
on 2 idle cores) leaves out the 1,000,000-point cases and the quality harness' own test (QUICK_SKIPS) and shrinks
the others (each suite's own QUICK settings: smaller shapes, fewer rounds); every suite still runs, with its peers
side by side. The full run keeps the shapes and rounds of the committed reports."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

THREADS = int(os.environ.get("LOSSVAL_FAST_BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)
QUICK = os.environ.get("LOSSVAL_FAST_BENCH_QUICK") == "1"
RESULTS = Path(os.environ.get("LOSSVAL_FAST_BENCH_OUT") or
               Path(__file__).parent / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
# Cases left out by --quick: the million-point suites and shapes (minutes each on 2 cores), and the quality
# harness' structure test (a real EcoVal / LossVal / TMC run: no timing, ~20 s; the full run keeps it)
QUICK_SKIPS = ("test_scale.py", "test_lossval_scale_epoch", "1000000x", "-1000000]",
               "test_ecoval_quality.py::test_quick_configuration_writes_the_report")
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


def pytest_collection_modifyitems(config, items):
    if not QUICK:
        return
    skipped = [item for item in items if any(key in item.nodeid for key in QUICK_SKIPS)]
    if skipped:
        items[:] = [item for item in items if item not in skipped]
        config.hook.pytest_deselected(items=skipped)


def pytest_runtest_teardown(item, nextitem):
    """The reports of the suites recorded so far, whenever a file's last test has run."""
    if nextitem is None or nextitem.path != item.path:
        _write_reports()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves half a report


def _write_reports() -> None:
    if not _ROWS:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = machine()
    for suite, rows in _ROWS.items():
        payload = {"machine": meta, "info": _EXTRA.get(suite, {}), "rows": rows}
        _write(RESULTS / f"{suite}.json", json.dumps(payload, indent=2, default=float) + "\n")
        if suite in _MARKDOWN:  # registered by the suite's test_report (its last test)
            _write(RESULTS / f"{suite}.md", _MARKDOWN[suite](payload))


def pytest_sessionfinish(session, exitstatus):
    _write_reports()
    if _ROWS:
        print(f"\nbenchmark reports in {RESULTS}")
