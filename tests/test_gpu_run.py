"""The GPU run's script (bench/gpu_run.py, `make gpu`) on this CPU machine: its dry run (Triton under the
interpreter, tiny shapes) writes every report, so that the one command a lent GPU gets does not rot."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    # by path, without putting bench/ on sys.path (its test_*.py would shadow the suite's own modules)
    import importlib.util
    spec = importlib.util.spec_from_file_location("lossval_fast_gpu_run", ROOT / "bench" / "gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_run = _load_script()


def test_dry_run_writes_every_report(tmp_path):
    result = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "gpu_run.py"), "--dry-run", "--out",
                             str(tmp_path), "--reps", "1"], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for op in ("softmin", "sinkhorn", "kmeans"):
        payload = json.loads((tmp_path / f"{op}_gpu.json").read_text())
        assert payload["machine"]["dry_run"] is True and payload["op"] == op
        implementations = {r["implementation"] for r in payload["rows"]}
        assert "ours-triton" in implementations and len(implementations) >= 2   # ours and a peer, side by side
        for row in payload["rows"]:
            assert row["min_s"] > 0 and row["median_s"] >= row["min_s"] and row["precision"] == "float32"
            assert row["error_vs_float64"] < 1e-4, row
        text = (tmp_path / f"{op}_gpu.md").read_text()
        assert "Dry run on a CPU" in text and "| ours-triton |" in text and "x " in text   # the ratio column
    summary = json.loads((tmp_path / "gpu_run.json").read_text())
    assert summary["tests"]["tests"] >= 1 and summary["tests"]["failures"] == summary["tests"]["errors"] == 0
    assert "gpu_run.md" in {p.name for p in tmp_path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".xml")]


def test_the_recommendation_is_the_faster_backend_at_the_largest_shape_both_ran():
    rows = [{"n": 10, "m": 10, "d": 2, "implementation": "ours-cuda", "min_s": 1.0},
            {"n": 10, "m": 10, "d": 2, "implementation": "ours-triton", "min_s": 2.0},
            {"n": 99, "m": 99, "d": 2, "implementation": "ours-cuda", "min_s": 5.0},
            {"n": 99, "m": 99, "d": 2, "implementation": "ours-triton", "min_s": 3.0},
            {"n": 500, "m": 500, "d": 2, "implementation": "ours-triton", "min_s": 9.0},
            {"n": 500, "m": 500, "d": 2, "implementation": "ours-cuda", "failed": "RuntimeError: x"}]
    decided = gpu_run.recommend({"softmin": rows, "kmeans": rows[4:]})
    assert decided["softmin"]["backend"] == "triton" and decided["softmin"]["shape"] == {"n": 99, "m": 99, "d": 2}
    assert decided["kmeans"] is None


def test_a_failing_case_is_reported_not_fatal(tmp_path):
    rows = []
    budget = gpu_run.Budget(60)
    import torch

    def broken():
        raise RuntimeError("kernel launch failed")
    gpu_run._case(rows, budget, "ours-cuda", broken, torch.device("cpu"), 1, lambda: 0.0, "float32", n=3)
    assert rows == [{"n": 3, "implementation": "ours-cuda", "failed": "RuntimeError: kernel launch failed"}]
    gpu_run._case(rows, gpu_run.Budget(-1), "ours-triton", broken, torch.device("cpu"), 1, lambda: 0.0, "float32",
                  n=3)
    assert rows[-1]["skipped"] == "time budget spent"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_gpu_builds_against_the_machines_torch_with_cuda_and_runs_the_script():
    out = subprocess.run(["make", "-n", "gpu"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "--system-site-packages" in out                      # the machine's own torch, not a pinned one
    assert "--no-build-isolation --no-deps ." in out and "--find-links wheels" in out
    assert "assert b.get('cuda')" in out                         # the build must have the CUDA kernels
    assert "bench/gpu_run.py --out bench/results" in out
