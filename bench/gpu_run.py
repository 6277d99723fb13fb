"""The GPU run in one command (`make gpu` on a lent GPU machine; docs/benchmarks.md "The GPU run").

    python bench/gpu_run.py [--out bench/results] [--budget-s 420] [--dry-run]

On the GPU machine (after `make gpu` has built the package against the machine's own torch, with CUDA):
1. records the machine (GPU, torch / CUDA / triton versions, the commit, what `backend="auto"` picks per op);
2. runs the CUDA and Triton tests (`-k "cuda or triton"` over the op test files), time-boxed;
3. times every op on every GPU backend side by side with the peers (geomloss, a plain torch Lloyd), with CUDA events
   after a warm-up, the precision and the error against float64 next to each time and the peak memory;
4. recommends CUDA or Triton per op from the times (the faster at the largest shape both ran);
5. writes `<out>/{softmin,sinkhorn,kmeans}_gpu.{md,json}` and `<out>/gpu_run.{md,json}`, each atomically.
It stops starting new cases when `--budget-s` is spent, so that the whole call fits the machine's time.

`--dry-run` runs the same script on a CPU (Triton under TRITON_INTERPRET=1, tiny shapes, perf_counter timings, the
Triton tests only): CI runs it (tests/test_gpu_run.py) so that the script never rots.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# the op test files; on the GPU every CUDA / Triton case of them runs
TEST_FILES = ["test_softmin.py", "test_nearest.py", "test_sinkhorn.py", "test_weighted_loss.py", "test_kmeans.py"]
DRY_TESTS = ["test_sinkhorn.py"]          # the dry run: Triton under the interpreter, one file

# (N, M, d) per op; on CPU (dry run) tiny shapes
SOFTMIN_SHAPES = {"gpu": [(4096, 4096, 16), (16384, 16384, 64), (65536, 65536, 64)], "dry": [(67, 45, 3)]}
SINKHORN_SHAPES = {"gpu": [(32, 10000, 32), (1000, 1000, 32), (10000, 10000, 32)], "dry": [(23, 31, 3)]}
KMEANS_SHAPES = {"gpu": [(100_000, 32, 64), (1_000_000, 32, 64)], "dry": [(300, 3, 4)]}   # (N, d, K)
MATERIALISED_LIMIT = 1 << 28   # bytes of one N x M float64 matrix a materialised peer may form


def _say(message: str) -> None:
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _atomic_text(path: Path, text: str) -> None:
    from lossval_fast._io import atomic_write
    with atomic_write(path) as f:
        f.write(text)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


# ------------------------------------------------------------------------------------------------ machine
def machine(dry: bool) -> dict:
    import torch
    import lossval_fast
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = lossval_fast.info()
    cuda = torch.cuda.is_available()
    return {"dry_run": dry, "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "triton": triton_version, "python": sys.version.split()[0],
            "commit": _commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backends_built": info.get("backends_built"), "dispatch": info.get("dispatch")}


def gpu_backends(dry: bool) -> list[str]:
    """The GPU backends that can run here (the dry run: Triton under the interpreter)."""
    from lossval_fast._extension import has_cuda_kernels, has_triton
    import torch
    found = []
    if not dry and torch.cuda.is_available() and has_cuda_kernels():
        found.append("cuda")
    if has_triton():
        found.append("triton")
    return found


# ------------------------------------------------------------------------------------------------ tests
def run_tests(dry: bool, out: Path, timeout: float) -> dict:
    files = DRY_TESTS if dry else TEST_FILES
    selection = "triton" if dry else "cuda or triton"
    report = out.resolve() / "gpu_tests.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
               f"--junitxml={report}", *files]
    began = time.perf_counter()
    try:
        # from tests/, as `make test` runs them: the installed package, not the source tree, is imported
        result = subprocess.run(command, cwd=ROOT / "tests", capture_output=True, text=True,
                                timeout=max(timeout, 1.0))
        tail, code = (result.stdout + result.stderr)[-3000:], result.returncode
    except subprocess.TimeoutExpired as error:
        tail, code = f"timed out after {timeout:.0f} s\n" + str(error.stdout or "")[-2000:], 124
    summary = _junit_counts(report)
    report.unlink(missing_ok=True)
    return {"command": " ".join(command[1:]), "returncode": code, "seconds": time.perf_counter() - began,
            **summary, "tail": tail}


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET
    if not path.exists():
        return {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    return {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}


# ------------------------------------------------------------------------------------------------ timing
def timed(fn, device, reps: int) -> dict:
    """min and median seconds of fn() after one warm-up call (it compiles Triton kernels)."""
    import torch
    fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return {"min_s": min(times), "median_s": statistics.median(times), "reps": reps}


def peak_bytes(fn, device) -> int | None:
    import torch
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def _case(rows: list, budget: Budget, name: str, fn, device, reps: int, error, precision: str, **shape) -> None:
    if budget.left() <= 0:
        rows.append({**shape, "implementation": name, "skipped": "time budget spent"})
        return
    try:
        row = {**shape, "implementation": name, "precision": precision, **timed(fn, device, reps),
               "peak_bytes": peak_bytes(fn, device), "error_vs_float64": float(error())}
    except Exception as exc:  # a failing backend is a result to report, not the end of the run
        row = {**shape, "implementation": name, "failed": f"{type(exc).__name__}: {exc}"[:300]}
    rows.append(row)
    _say(f"  {name} {shape}: " + (f"{row['min_s'] * 1e3:.3f} ms, error {row['error_vs_float64']:.2e}"
                                  if "min_s" in row else row.get("failed", "")))


# ------------------------------------------------------------------------------------------------ ops
def _clouds(n: int, m: int, d: int, seed: int, device):
    """x (n, d) standard normal and y (m, d) shifted and narrower, float32, made on the CPU (the same on every
    device), and the generator for more."""
    import torch
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(device)
    y = (0.7 * torch.randn(m, d, generator=g) + 0.3).to(device)
    return x, y, g


def bench_softmin(device, backends, shapes, budget, reps) -> list:
    import torch
    from lossval_fast import ops
    rows = []
    for n, m, d in shapes:
        x, y, g = _clouds(n, m, d, 0, device)
        h = (0.1 * torch.randn(m, generator=g)).to(device)
        eps = 0.5
        r = min(n, 256)   # the float64 reference on the first rows (each depends on all of y)
        c = torch.cdist(x[:r].double(), y.double()).pow(2) / 2
        ref = -eps * torch.logsumexp(h.double()[None] - c / eps, dim=1)
        shape = {"n": n, "m": m, "d": d}
        for be in backends:
            _case(rows, budget, f"ours-{be}", lambda be=be: ops.pairwise_softmin(x, y, h, eps, backend=be,
                                                                                validate=False),
                  device, reps, lambda be=be: (ops.pairwise_softmin(x[:r], y, h, eps, backend=be).double()
                                               - ref).abs().max(), "float32", **shape)
        if n * m * 8 <= MATERIALISED_LIMIT:   # the peer: plain torch, materialised cost
            def plain():
                return -eps * torch.logsumexp(h[None] - torch.cdist(x, y).pow(2) / (2 * eps), dim=1)
            _case(rows, budget, "torch-materialised", plain, device, reps,
                  lambda: (plain()[:r].double() - ref).abs().max(), "float32", **shape)
    return rows


def bench_sinkhorn(device, backends, shapes, budget, reps) -> list:
    import torch
    from lossval_fast import ops
    rows = []
    for n, m, d in shapes:
        x, y, _ = _clouds(n, m, d, 1, device)
        a, b = torch.ones(n, device=device), torch.ones(m, device=device)
        be64 = backends[0] if backends else "torch"
        ref = float(ops.sinkhorn_divergence(a.double(), x.double(), b.double(), y.double(), backend=be64))
        shape = {"n": n, "m": m, "d": d}

        def err(value):
            return abs(float(value) - ref) / max(abs(ref), 1e-30)
        for be in backends:
            run = (lambda be=be: ops.sinkhorn_divergence(a, x, b, y, backend=be, validate=False))
            _case(rows, budget, f"ours-{be}", run, device, reps, lambda run=run: err(run()), "float32", **shape)
        if n * m * 8 <= MATERIALISED_LIMIT:
            try:
                from geomloss import SamplesLoss
            except ImportError:
                SamplesLoss = None
            if SamplesLoss is not None:
                loss = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, backend="tensorized")

                def peer():
                    return loss(a, x, b, y)
                _case(rows, budget, "geomloss-tensorized", peer, device, reps, lambda: err(peer()), "float32",
                      **shape)
    return rows


def bench_kmeans(device, backends, shapes, budget, reps) -> list:
    import torch
    from lossval_fast import ops
    rows = []
    iterations = 20
    for n, d, k in shapes:
        g = torch.Generator(device="cpu").manual_seed(2)
        x = torch.randn(n, d, generator=g).to(device)
        init = x[torch.randperm(n, generator=g)[:k].to(device)].clone()
        ref = ops.kmeans(x.double(), k, init=init.double(), max_iter=iterations, tol=0.0,
                         backend=backends[0] if backends else "torch").inertia
        shape = {"n": n, "d": d, "k": k, "iterations": iterations}

        def err(inertia):
            return abs(inertia - ref) / abs(ref)
        for be in backends:
            run = (lambda be=be: ops.kmeans(x, k, init=init, max_iter=iterations, tol=0.0, backend=be,
                                            validate=False))
            _case(rows, budget, f"ours-{be}", run, device, reps, lambda run=run: err(run().inertia), "float32",
                  **shape)

        def lloyd():   # the peer: a plain torch Lloyd from the same centroids
            c = init.clone()
            for _ in range(iterations):
                labels = torch.cdist(x, c).argmin(1)
                sums = torch.zeros_like(c).index_add_(0, labels, x)
                counts = torch.bincount(labels, minlength=k).clamp_min(1).to(x.dtype)
                c = sums / counts[:, None]
            return float(((x - c[torch.cdist(x, c).argmin(1)]) ** 2).sum())
        _case(rows, budget, "torch-lloyd", lloyd, device, reps, lambda: err(lloyd()), "float32", **shape)
    return rows


def recommend(results: dict) -> dict:
    """Per op: the faster of CUDA and Triton at the largest shape where both ran."""
    out = {}
    for op, rows in results.items():
        timed_rows = [r for r in rows if "min_s" in r]
        keys = sorted({tuple((k, r[k]) for k in ("n", "m", "d", "k") if k in r) for r in timed_rows},
                      key=lambda key: [v for _, v in key])
        choice = None
        for key in reversed(keys):
            at = {r["implementation"]: r["min_s"] for r in timed_rows
                  if tuple((k, r[k]) for k in ("n", "m", "d", "k") if k in r) == key}
            if "ours-cuda" in at and "ours-triton" in at:
                faster = "cuda" if at["ours-cuda"] < at["ours-triton"] else "triton"
                choice = {"backend": faster, "shape": dict(key), "cuda_s": at["ours-cuda"],
                          "triton_s": at["ours-triton"]}
                break
        out[op] = choice
    return out


# ------------------------------------------------------------------------------------------------ report
def _shape(r: dict) -> str:
    return " × ".join(str(r[k]) for k in ("n", "m", "d", "k") if k in r)


def _table(rows: list) -> list[str]:
    """One row per case; `vs peer`: the peer's min time over this row's, at the same shape (> 1: ours faster)."""
    peers = {}
    for r in rows:
        if "min_s" in r and not r["implementation"].startswith("ours-"):
            peers[_shape(r)] = (r["implementation"], r["min_s"])
    lines = ["| shape | implementation | precision | min (ms) | median (ms) | vs peer | error vs float64 | "
             "peak memory (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = _shape(r)
        if "min_s" not in r:
            why = r.get("failed") or r.get("skipped")
            lines.append(f"| {shape} | {r['implementation']} | – | – | – | – | {why} | – |")
            continue
        peak = "–" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        peer = peers.get(shape)
        ratio = (f"{peer[1] / r['min_s']:.2f}x {peer[0]}" if peer and r["implementation"].startswith("ours-")
                 else "–")
        lines.append(f"| {shape} | {r['implementation']} | {r['precision']} | {r['min_s'] * 1e3:.3f} | "
                     f"{r['median_s'] * 1e3:.3f} | {ratio} | {r['error_vs_float64']:.2e} | {peak} |")
    return lines


def write(out: Path, env: dict, tests: dict, results: dict, decisions: dict, wall: float) -> None:
    head = (f"Device: {env['device']}; torch {env['torch']} (CUDA {env['torch_cuda']}), triton {env['triton']}, "
            f"Python {env['python']}; commit {env['commit'] or '?'}; {env['date']}."
            + (" **Dry run on a CPU** (Triton interpreter, tiny shapes, perf_counter): the script's check, not "
               "a measurement." if env["dry_run"] else " Times: CUDA events after a warm-up."))
    titles = {"softmin": "online softmin (x ← y, one pass; error: max absolute over the first 256 rows against "
                         "a float64 log-sum-exp)",
              "sinkhorn": "Sinkhorn divergence (debiased, blur 0.05, scaling 0.5; error: relative, against our "
                          "first GPU backend in float64, which the tests hold to geomloss' float64 to 1e-9)",
              "kmeans": "k-means, 20 Lloyd iterations from the same centroids (error: relative inertia against "
                        "our first GPU backend in float64)"}
    for op, rows in results.items():
        payload = {"format": "lossval-fast-gpu/1", "op": op, "machine": env, "rows": rows,
                   "recommended": decisions.get(op)}
        _atomic_text(out / f"{op}_gpu.json", json.dumps(payload, indent=1) + "\n")
        lines = [f"# {op} on the GPU: {titles[op]}", "", head, "", *_table(rows), ""]
        if decisions.get(op):
            dec = decisions[op]
            lines += [f"Faster at {dec['shape']}: **{dec['backend']}** (CUDA {dec['cuda_s'] * 1e3:.3f} ms, Triton "
                      f"{dec['triton_s'] * 1e3:.3f} ms).", ""]
        _atomic_text(out / f"{op}_gpu.md", "\n".join(lines))
    summary = {"format": "lossval-fast-gpu-run/1", "machine": env, "tests": tests, "recommended": decisions,
               "wall_s": wall}
    _atomic_text(out / "gpu_run.json", json.dumps(summary, indent=1) + "\n")
    lines = ["# The GPU run (`make gpu`, bench/gpu_run.py)", "", head, "",
             f"Tests: `{tests['command']}`: {tests['tests']} run, {tests['failures']} failed, {tests['errors']} "
             f"errors, {tests['skipped']} skipped, exit code {tests['returncode']}, {tests['seconds']:.0f} s.", "",
             "| op | recommended backend (faster at the largest shape both ran) |", "|---|---|"]
    for op in results:
        dec = decisions.get(op)
        lines.append(f"| {op} | {dec['backend'] if dec else '– (CUDA and Triton did not both run)'} |")
    if tests["returncode"] not in (0, 5):
        lines += ["", "The tests' last output:", "", "```", tests["tail"][-2000:], "```"]
    lines += ["", f"Wall time {wall:.0f} s. Per op: " + ", ".join(f"`{op}_gpu.md`" for op in results) + ".", ""]
    _atomic_text(out / "gpu_run.md", "\n".join(lines))


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"), help="where the results go (bench/results)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds for tests and benchmarks together; no new case starts after it (420)")
    parser.add_argument("--dry-run", action="store_true", help="on a CPU: Triton interpreter, tiny shapes")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per case (GPU 10, dry run 2)")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args(argv)
    dry = args.dry_run
    if dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is first imported
    import torch
    if not dry and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --dry-run on a CPU")
    began = time.perf_counter()
    budget = Budget(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if dry else "cuda")
    env = machine(dry)
    _say(f"{env['device']}: torch {env['torch']} (CUDA {env['torch_cuda']}), triton {env['triton']}")
    backends = gpu_backends(dry)
    tests = {"command": "skipped", "returncode": 0, "seconds": 0.0, "tests": 0, "failures": 0, "errors": 0,
             "skipped": 0, "tail": ""}
    if not args.skip_tests:
        _say("tests")
        tests = run_tests(dry, out, timeout=budget.left() * 0.5)
        _say(f"tests: {tests['tests']} run, {tests['failures']} failed, {tests['errors']} errors "
             f"({tests['seconds']:.0f} s)")
    kind = "dry" if dry else "gpu"
    reps = args.reps or (2 if dry else 10)
    results = {}
    for op, bench, shapes in (("softmin", bench_softmin, SOFTMIN_SHAPES), ("sinkhorn", bench_sinkhorn,
                                                                          SINKHORN_SHAPES),
                              ("kmeans", bench_kmeans, KMEANS_SHAPES)):
        _say(op)
        results[op] = bench(device, backends, shapes[kind], budget, reps)
    decisions = recommend(results)
    write(out, env, tests, results, decisions, time.perf_counter() - began)
    _say(f"wrote {out}/gpu_run.md ({time.perf_counter() - began:.0f} s)")
    failed = tests["returncode"] not in (0, 5) or any("failed" in r for rows in results.values() for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
