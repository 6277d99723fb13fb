"""The `lossval-fast` command (also `python -m lossval_fast`).

    lossval-fast value DATA       value every row of a table; writes one value per input row
    lossval-fast evaluate DATA    the OpenDataVal / LossVal noisy-point detection protocol; report, JSON and plots
    lossval-fast bench            run the benchmark suites (source checkout) and collect the speed-up ratios
    lossval-fast info             version, backends built, devices, threads
    lossval-fast demo             the main job on the bundled data set (what `make demo` runs)

A user mistake (missing file, no target column, non-numeric columns, too few rows, a bad option value) ends with
one line on stderr and a non-zero exit: 2 for bad options, 1 for problems found in the data. Set
LOSSVAL_FAST_DEBUG=1 to get the full traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._io import atomic_write, check_writable, check_writable_dir
from .valuation.methods import METHODS

PROG = "lossval-fast"
BUNDLED = "bundled:pol"
RATIO_FILE = "ratios.md"


class UsageError(Exception):
    """A bad command line (exit status 2)."""


class CommandError(Exception):
    """A user mistake found while running, e.g. in the data (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (no usage block), so scripts can parse it."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _plain(value):
    """A numpy scalar as the Python number or string it holds (its repr is then 1, not np.int64(1))."""
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------------------------------------ option types
def _int_at_least(minimum: int, maximum: int | None = None):
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds below 2**32


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _fraction(low_open: float, high: float, high_closed: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
        inside = low_open < value and (value <= high if high_closed else value < high)
        if not math.isfinite(value) or not inside:
            bracket = "]" if high_closed else ")"
            raise argparse.ArgumentTypeError(f"expected a fraction in ({low_open:g}, {high:g}{bracket}, got {text!r}")
        return value
    return parse


def _method_list(text: str) -> list[str]:
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or repr(text)}; choose from "
                                         f"{','.join(METHODS)}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"method(s) listed twice: {', '.join(repeated)}")
    return methods


# ------------------------------------------------------------------------------------------------ parser
def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help=f"CSV, CSV.GZ or NPZ file (or '{BUNDLED}' for the bundled subset)")
    p.add_argument("--target", default="target", metavar="COL", help="label column of a CSV file (default: target)")
    p.add_argument("--task", choices=("auto", "classification", "regression"), default="auto",
                   help="auto: text labels and integer targets with at most 20 distinct values are classes")
    p.add_argument("--one-hot", action="store_true", help="one-hot encode non-numeric feature columns")


def _method_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method options (defaults: the papers' settings)")
    g.add_argument("--epochs", type=_int_at_least(1), metavar="N", help="LossVal training epochs (30)")
    g.add_argument("--lr", type=_positive_float, metavar="LR", help="LossVal learning rate (0.01)")
    g.add_argument("--batch-size", type=_int_at_least(1), metavar="N", help="LossVal batch size (32)")
    g.add_argument("--diameter", choices=("batch", "global"),
                   help="LossVal Sinkhorn diameter: per batch (paper) or one for the run, for large data (batch)")
    g.add_argument("--clusters", type=_int_at_least(2), metavar="P", help="EcoVal clusters (20)")
    g.add_argument("--learner", choices=("logreg", "ridge", "mlp"),
                   help="EcoVal learner (logreg for classification, ridge for regression)")
    g.add_argument("--k", type=_int_at_least(1), metavar="K", help="KNN-Shapley neighbours (10)")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_int_at_least(0, SEED_MAX), default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=_int_at_least(1), metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Fast data valuation: LossVal, EcoVal, KNN-Shapley.",
                     epilog="Run 'lossval-fast COMMAND --help' for the options of a command.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    for add in (_add_value, _add_evaluate, _add_bench, _add_info, _add_demo):
        add(sub)
    return parser


def _add_value(sub) -> None:
    p = sub.add_parser("value", help="value every row of a data file", description=(
        "Value every row of DATA and write one value per input row (low = likely noisy or harmful). The "
        "validation set is --val FILE, or --val-size rows held out at random: those rows are then valued by a "
        "second fit that holds out the next --val-size rows instead."))
    _data_arguments(p)
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", metavar="FILE", help="validation data file (same columns as DATA)")
    val.add_argument("--val-size", type=_int_at_least(1), metavar="N",
                     help="rows held out as the validation set (default: 100, or 10%% of the rows if fewer than "
                          "1000)")
    p.add_argument("--method", choices=[m for m, method in METHODS.items() if not method.baseline],
                   default="lossval", help="valuation method (default lossval)")
    p.add_argument("--out", default="values.csv", metavar="CSV", help="values file to write (default values.csv)")
    p.add_argument("--plot", metavar="PNG", help="also write a histogram and sorted-values plot")
    p.add_argument("--show", type=_int_at_least(0), default=10, metavar="N",
                   help="lowest-valued rows to print (default 10)")
    p.add_argument("--nproc", type=_int_at_least(1), default=1, metavar="N",
                   help="run each LossVal or EcoVal fit over N processes (torch.distributed: gloo on CPU, one GPU "
                        "per process with NCCL; the threads are shared out); default 1")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="save the LossVal or EcoVal fit's state to PATH as it goes and resume from it when it "
                        "exists (a killed run started again with the same options goes on where it stopped); "
                        "with --val-size the second fit uses PATH.fit2")
    _method_arguments(p)
    _run_arguments(p)
    p.set_defaults(handler=_cmd_value)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="noisy-point detection benchmark (OpenDataVal / LossVal protocol)",
                       description=(
        "Per run: split DATA at random (train/valid/test, z-scored), put noise on train and valid, value the noisy "
        "training set with every method, and score noisy-point detection (F1 of the 2-means split of the values), "
        "the discovery curve and the point-removal curves. Writes report.md, results.json, discovery.png and "
        "removal.png into --out."))
    _data_arguments(p)
    p.add_argument("--noise", choices=("label", "feature", "mixed"), default="label", help="noise kind (label)")
    p.add_argument("--rate", type=_fraction(0.0, 1.0, False), default=0.1, help="noisy fraction (0.1)")
    p.add_argument("--runs", type=_int_at_least(1), default=5, help="runs, each with a new split and noise (5)")
    p.add_argument("--methods", type=_method_list, metavar="LIST",
                   help=f"comma-separated, from {','.join(METHODS)} (default: all that apply)")
    p.add_argument("--train", type=_int_at_least(2), default=1000, metavar="N", help="training rows (1000)")
    p.add_argument("--valid", type=_int_at_least(1), default=100, metavar="N", help="validation rows (100)")
    p.add_argument("--test", type=_int_at_least(1), metavar="N", help="test rows (default: the rest)")
    p.add_argument("--removal-max", type=_fraction(0.0, 0.95, True), default=0.5, metavar="F",
                   help="largest fraction removed in the point-removal curves, in 5%% steps (0.5)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: report-<data>-<noise>-<rate>)")
    _method_arguments(p)
    _run_arguments(p)
    p.set_defaults(handler=_cmd_evaluate)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmark suites and collect the speed-up ratios", description=(
        "Runs the pytest-benchmark suites of the source checkout's bench/ folder (each writes bench/results/"
        "<suite>.md and .json), then collects every speed-up ratio of those reports into one markdown table."))
    p.add_argument("--quick", action="store_true",
                   help="about 2 minutes on 2 cores: every suite with its peers, smaller shapes and fewer rounds, "
                        "no million-point cases (LOSSVAL_FAST_BENCH_QUICK=1)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help=f"where the reports and {RATIO_FILE} go (default: a new folder "
                                                    "bench/runs/<date-time>)")
    where.add_argument("--update-results", action="store_true",
                       help="write into bench/results/, replacing the committed reports of the suites that ran")
    p.add_argument("--bench-dir", metavar="DIR", help="the suites' folder (default: ./bench, else the checkout's)")
    p.add_argument("--select", metavar="EXPR", help="only the benchmarks matching this pytest -k expression")
    p.add_argument("--threads", type=_int_at_least(1), metavar="N", help="threads for us and the peers (2)")
    p.set_defaults(handler=_cmd_bench)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="version, backends built, devices, threads")
    p.set_defaults(handler=_cmd_info)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the bundled data set (make demo)", description=(
        "Runs `evaluate` on the bundled pol subset (label noise 10 %, LossVal, EcoVal, KNN-Shapley and random "
        "values), prints the table and where the report and plots are, then times the pairwise primitive."))
    p.add_argument("--out", metavar="DIR", help="output folder (default: a new temporary folder)")
    p.add_argument("--runs", type=_int_at_least(1), default=3, help="runs (3)")
    p.add_argument("--epochs", type=_int_at_least(1), default=30, help="LossVal epochs (30)")
    p.add_argument("--no-speed", action="store_true", help="skip the timing of the pairwise primitive")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    p.set_defaults(handler=_cmd_demo)


# ------------------------------------------------------------------------------------------------ shared pieces
def _progress(args):
    if getattr(args, "quiet", False):
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def _setup_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(args.threads)


def _check_device(device) -> None:
    from .evaluation import resolve_device
    try:
        resolve_device(device)
    except ValueError as error:
        raise UsageError(f"argument --device: {error}") from None


def _load(path: str, target: str, one_hot: bool, what: str = "data"):
    """(X float64 (n, d), y, feature names, display name) with every problem as a one-line CommandError."""
    from .datasets import load_bundled_pol, load_table

    if path == BUNDLED:
        X, y = load_bundled_pol()
        return X.astype(np.float64), y, [f"f{i + 1}" for i in range(X.shape[1])], "bundled pol subset"
    if os.path.isdir(path):
        raise CommandError(f"{what} file {path} is a directory")
    if not os.path.exists(path):
        raise CommandError(f"{what} file not found: {path}")
    try:
        X, y, names = load_table(path, target, encode_categorical=one_hot)
    except ValueError as error:
        message = str(error).replace("Pass encode_categorical=True to one-hot encode them",
                                     "Pass --one-hot to one-hot encode them, or drop them")
        if "no target column" in message:
            message += " (choose the label column with --target)"
        raise CommandError(message) from None
    except (OSError, EOFError) as error:  # unreadable or corrupt (e.g. a truncated .gz)
        raise CommandError(f"{path}: cannot read the file: {_one_line(error)}") from None
    X = np.asarray(X, dtype=np.float64)
    if X.shape[1] == 0:
        raise CommandError(f"{path}: no feature columns besides the target {target!r}")
    bad = int(np.count_nonzero(~np.isfinite(X)))
    if bad:
        raise CommandError(f"{path}: {bad} feature value(s) are NaN or infinite (missing values are not supported)")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise CommandError(f"{path}: the target has NaN or infinite values (missing values are not supported)")
    return X, y, list(names), os.path.basename(path)


def _resolve_task(requested: str, y, path: str) -> tuple[str, str]:
    from .base import MAX_AUTO_CLASSES, infer_task

    distinct = len(np.unique(y))
    if requested == "auto":
        task = infer_task(y)
        why = (f"auto: {distinct} distinct labels" if task == "classification"
               else f"auto: {distinct} distinct numeric values (more than {MAX_AUTO_CLASSES} or not integers)")
    else:
        task, why = requested, "--task"
    if task == "classification" and distinct < 2:
        raise CommandError(f"{path}: the target has a single class ({_plain(np.unique(y)[0])!r}); nothing to tell "
                           "apart")
    if task == "regression" and y.dtype.kind not in "iuf":
        raise CommandError(f"{path}: --task regression needs a numeric target, the target holds text labels")
    return task, why


def _options(args, method: str | None = None):
    """MethodOptions from the command line; with `method`, say which given options it does not use."""
    from .evaluation import MethodOptions

    given = {name: getattr(args, name) for name in ("epochs", "lr", "batch_size", "diameter", "clusters", "learner",
                                                    "k") if getattr(args, name) is not None}
    if method is not None:
        uses = set(METHODS[method].options)
        unused = ["--" + name.replace("_", "-") for name in given if name not in uses]
        if unused:
            verb = "does" if len(unused) == 1 else "do"
            warnings.warn(f"{', '.join(unused)} {verb} not apply to --method {method}; ignored")
    return MethodOptions(**given)


# ------------------------------------------------------------------------------------------------ value
def _check_method_use(args, task: str) -> None:
    """--method against --nproc, --checkpoint and the task, by what the method registry says of it."""
    method = METHODS[args.method]
    over_processes = " and ".join(m for m, other in METHODS.items() if other.over_processes)
    checkpointed = " and ".join(m for m, other in METHODS.items() if other.checkpoints)
    if args.nproc > 1 and not method.over_processes:
        raise CommandError(f"--nproc applies to {over_processes}; {args.method} runs in one process")
    if args.checkpoint is not None and not method.checkpoints:
        raise UsageError(f"argument --checkpoint: applies to --method {checkpointed}; {args.method} has no "
                         "training to resume")
    if task not in method.tasks:
        others = " or ".join(m for m, other in METHODS.items() if task in other.tasks and not other.baseline)
        raise CommandError(f"{args.method} supports {' and '.join(method.tasks)} only; use --method {others} for a "
                           f"{task} target")


def _validation_setup(args, X, y, names):
    """(validation, val_size, what it is in words): the --val file, checked against the data, or --val-size rows
    held out (default 100, or 10 % of fewer than 1,000 rows)."""
    from .evaluation import MIN_TRAIN_ROWS

    n = len(X)
    validation = None
    val_size = None
    if args.val is not None:
        X_val, y_val, val_names, _ = _load(args.val, args.target, args.one_hot, what="validation")
        if X_val.shape[1] != X.shape[1] or (args.data.lower().endswith((".csv", ".csv.gz")) and val_names != names):
            raise CommandError(f"{args.val}: the validation file's feature columns differ from {args.data}'s "
                               f"({X_val.shape[1]} vs {X.shape[1]} features)")
        if (y.dtype.kind == "U") != (y_val.dtype.kind == "U"):
            kinds = ("text" if y_val.dtype.kind == "U" else "numbers", "text" if y.dtype.kind == "U" else "numbers")
            raise CommandError(f"{args.val}: its labels are {kinds[0]}, those of {args.data} are {kinds[1]}")
        if n < MIN_TRAIN_ROWS:
            raise CommandError(f"{args.data}: {n} rows are too few to value (need at least {MIN_TRAIN_ROWS})")
        validation = (X_val, y_val)
        setup = f"validation set {args.val} ({len(X_val)} rows)"
    else:
        val_size = args.val_size if args.val_size is not None else min(100, max(1, n // 10))
        need = max(2 * val_size, val_size + MIN_TRAIN_ROWS)
        if n < need:
            raise CommandError(f"{args.data}: {n} rows are too few for --val-size {val_size}: each of the two fits "
                               f"holds out {val_size} rows and trains on the rest, so at least {need} rows are needed "
                               f"(pass a smaller --val-size or a --val file)")
        setup = f"{val_size} held-out validation rows (--val-size), valued by a second fit"
    return validation, val_size, setup


def _cmd_value(args) -> int:
    from .evaluation import LABELS, plot_values, value_rows
    from .valuation import two_means_split

    _check_device(args.device)
    _setup_threads(args)
    check_writable(args.out)  # before the fit: a bad path fails now, not after it
    if args.plot:
        check_writable(args.plot, "--plot")
    say = _progress(args)
    X, y, names, shown = _load(args.data, args.target, args.one_hot)
    n = len(X)
    task, why = _resolve_task(args.task, y, args.data)
    options = _options(args, args.method)
    _check_method_use(args, task)
    validation, val_size, setup = _validation_setup(args, X, y, names)
    say(f"{shown}: {n} rows, {X.shape[1]} features, task {task} ({why}); {setup}")
    replaces = Path(args.out).is_file()  # said after the write: the default values.csv is easy to reuse by mistake

    result = value_rows(X, y, task=task, method=args.method, options=options, validation=validation,
                        val_size=val_size, seed=args.seed, device=args.device, verbose=not args.quiet, progress=say,
                        nproc=args.nproc, checkpoint=args.checkpoint)
    values = result["values"]
    low = two_means_split(values) if n >= 2 else np.zeros(n, bool)
    out = Path(args.out)
    with atomic_write(out, newline="") as f:
        f.write("row,target,value,lower_2means,fit\n")
        for i in range(n):
            label = str(y[i].item() if hasattr(y[i], "item") else y[i])
            if any(c in label for c in ',"\n'):
                label = '"' + label.replace('"', '""') + '"'
            f.write(f"{i},{label},{float(values[i])!r},{int(low[i])},{int(result['fit'][i])}\n")

    print(f"valued {n} rows of {shown} with {LABELS[args.method]} ({result['settings']}) in "
          f"{result['seconds']:.1f} s")
    print(f"values: min {values.min():.4g}, median {np.median(values):.4g}, max {values.max():.4g}; the 2-means split "
          f"puts {int(low.sum())} rows ({low.mean():.1%}) in its lower cluster (column lower_2means: a relative cut "
          "that exists on clean data too, not a test for noise; rank by value to inspect the lowest rows)")
    if args.show:
        order = np.argsort(values, kind="stable")[:args.show]
        print("lowest-valued rows (row = 0-based data row, header not counted):")
        print(f"{'row':>8}  {'target':>12}  {'value':>12}")
        for i in order:
            label = y[i].item() if hasattr(y[i], "item") else y[i]
            print(f"{i:>8}  {str(label):>12}  {values[i]:>12.5g}")
    print(f"wrote {out} ({n} values, one per input row, in input order)")
    if replaces:
        print(f"{PROG} value: note: {out} existed and was replaced (pass --out to keep both)", file=sys.stderr)
    if args.plot:
        plot = Path(args.plot)
        plot_values(values, plot, title=f"{LABELS[args.method]} values of {shown} ({n} rows)")
        print(f"wrote {plot}")
    return 0


# ------------------------------------------------------------------------------------------------ evaluate
def _cmd_evaluate(args) -> int:
    from .evaluation import check_methods, check_protocol, default_methods, evaluate, results_table, write_report

    _check_device(args.device)
    _setup_threads(args)
    say = _progress(args)
    X, y, _, shown = _load(args.data, args.target, args.one_hot)
    task, why = _resolve_task(args.task, y, args.data)
    methods = check_methods(args.methods if args.methods is not None else default_methods(task), task)
    options = _options(args)
    if args.out is None:
        stem = "pol" if args.data == BUNDLED else re.sub(r"(\.csv\.gz|\.csv|\.npz)$", "", shown, flags=re.I)
        out = Path(f"report-{stem}-{args.noise}-{args.rate * 100:g}")
    else:
        out = Path(args.out)
    check_writable_dir(out)
    if args.seed + args.runs - 1 > SEED_MAX:
        raise UsageError(f"argument --seed: run r uses seed + r, so --seed must be at most {SEED_MAX - args.runs + 1} "
                         f"with --runs {args.runs}, got {args.seed}")
    try:
        test = check_protocol(len(X), n_train=args.train, n_valid=args.valid, n_test=args.test, rate=args.rate,
                              noise=args.noise)
    except ValueError as error:
        raise CommandError(f"{args.data}: {error}") from None
    say(f"{shown}: {len(X)} rows, {X.shape[1]} features, task {task} ({why}); split {args.train} / {args.valid} / "
        f"{test}; {args.noise} noise at {args.rate:.0%}; {args.runs} run(s); methods {', '.join(methods)}")
    results = evaluate(X, y, task=task, noise=args.noise, rate=args.rate, runs=args.runs, methods=methods,
                       n_train=args.train, n_valid=args.valid, n_test=args.test, seed=args.seed, options=options,
                       device=args.device, removal_max=args.removal_max, data_name=shown, progress=say)
    paths = write_report(results, out)
    print(results_table(results))
    print(f"\n{results['runs']} run(s) in {results['wall_time_s']:.1f} s; report: {paths['report']}, numbers: "
          f"{paths['results']}")
    print(f"plots: {paths['discovery']} (noisy-point discovery), {paths['removal']} (point removal)")
    return 0


# ------------------------------------------------------------------------------------------------ bench
_ONE_RATIO = r"\**\s*(\d+(?:\.\d+)?)\s*[x×]\s*\**"
# "16.7x", "**3.4x**", "1.67x / 1.62x", "2.20x (1.94-2.38, 7 pairs)"
_RATIO = re.compile(rf"^{_ONE_RATIO}(?:\s*/\s*{_ONE_RATIO})*(?:\s*\([^)]*\))?$")
_PROSE_RATIO = re.compile(r"([Ss]peed-?up[^:|]*):\s*\**\s*(\d+(?:\.\d+)?)\s*[x×]")


def find_bench_dir(explicit: str | None = None) -> Path | None:
    """The folder holding the pytest-benchmark suites: --bench-dir, else ./bench, else the source checkout's."""
    def is_suite(path: Path) -> bool:
        return path.is_dir() and any(path.glob("test_*.py"))

    if explicit is not None:
        return Path(explicit) if is_suite(Path(explicit)) else None
    # ./bench, the bench/ of a source checkout that holds the working directory (the folder with pyproject.toml),
    # then the one next to the package (an editable install)
    checkouts = [p for p in (Path.cwd(), *Path.cwd().parents) if (p / "pyproject.toml").is_file()]
    candidates = [Path.cwd() / "bench", *(p / "bench" for p in checkouts[:1]),
                  Path(__file__).resolve().parents[1] / "bench"]
    for candidate in candidates:
        if is_suite(candidate):
            return candidate
    return None


def _tables(text: str):
    """The markdown tables of a document: lists of rows, each a list of cell strings (separator rows dropped)."""
    table: list[list[str]] = []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                table.append(cells)
        elif table:
            yield table
            table = []


def collect_ratios(results_dir) -> list[dict]:
    """Every speed-up ratio in the reports results_dir/*.md: table cells made of ratios ("16.7x", "**3.4x**",
    "1.67x / 1.62x", optionally followed by a note in parentheses) and sentences "Speed-up ...: **3.1x**". One dict per cell or sentence: the report file, its
    title, the case (the row's first cell), the comparison (the column header), the first ratio as a number and the
    cell's text."""
    found = []
    for path in sorted(Path(results_dir).glob("*.md")):
        if path.name == RATIO_FILE:
            continue
        text = path.read_text()
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), path.stem)
        for table in _tables(text):
            header, rows = table[0], table[1:]
            for row in rows:
                for column, cell in enumerate(row[1:], start=1):
                    match = _RATIO.match(cell)
                    if match and column < len(header):
                        found.append({"file": path.name, "title": title, "case": row[0], "comparison": header[column],
                                      "ratio": float(match.group(1)), "text": cell.replace("*", "").strip()})
        for line in text.splitlines():  # ratios stated in prose: "Speed-up per epoch against X: **3.1x**."
            match = _PROSE_RATIO.search(line)
            if match and not line.lstrip().startswith("|"):
                found.append({"file": path.name, "title": title, "case": "(whole suite)",
                              "comparison": match.group(1).strip(), "ratio": float(match.group(2)),
                              "text": f"{float(match.group(2)):g}x"})
    return found


def ratios_markdown(ratios: list[dict], results_dir, *, quick: bool, updated: set) -> str:
    lines = ["# Speed-up ratios collected from the benchmark reports", "",
             f"Collected by `lossval-fast bench{' --quick' if quick else ''}` from `{results_dir}` on "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Each ratio is a time of the peer (or the slower path) divided by "
             "ours, measured side by side in one run; the machine is in each report's title. Reports marked * were "
             "not rewritten by this run (their suites were skipped or deselected) and come from an earlier run.", "",
             "| report | case | comparison | ratio |", "|---|---|---|---|"]
    for r in ratios:
        mark = "" if r["file"] in updated else " *"
        lines.append(f"| [{r['file']}]({r['file']}){mark} | {r['case']} | {r['comparison']} | {r['text']} |")
    lines += ["", "## Reports", ""]
    for name in sorted({r["file"] for r in ratios}):
        title = next(r["title"] for r in ratios if r["file"] == name)
        lines.append(f"- [{name}]({name}): {title}")
    return "\n".join(lines) + "\n"


def _cmd_bench(args) -> int:
    bench = find_bench_dir(args.bench_dir)
    if bench is None:
        if args.bench_dir is not None:
            raise CommandError(f"--bench-dir {args.bench_dir}: no benchmark suites there (expected test_*.py files)")
        raise CommandError("the benchmark suites (bench/) come with the source checkout, not with the installed "
                           "package: run 'lossval-fast bench' in a clone of the repository, or pass --bench-dir")
    missing = [name for name in ("pytest", "pytest_benchmark") if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError("bench needs pytest and pytest-benchmark: pip install pytest pytest-benchmark")
    env = dict(os.environ)
    if args.quick:
        env["LOSSVAL_FAST_BENCH_QUICK"] = "1"
    if args.threads:
        env["LOSSVAL_FAST_BENCH_THREADS"] = str(args.threads)
    # a fresh folder unless asked: a run never rewrites the committed reports in bench/results/ by default
    if args.update_results:
        out = bench / "results"
    elif args.out:
        out = Path(args.out)
    else:
        out = bench / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out = out.resolve()
    env["LOSSVAL_FAST_BENCH_OUT"] = str(out)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-columns=min,median,rounds"]
    if args.select:
        command += ["-k", args.select]
    started = time.time()
    print(f"running the benchmark suites in {bench}{' (quick)' if args.quick else ''}, reports to {out} (each as "
          f"its suite finishes): {' '.join(command[1:])}", flush=True)
    try:
        status = subprocess.run(command, cwd=bench, env=env).returncode
    except KeyboardInterrupt:
        status = 130
        print(f"\ninterrupted: the suites that finished are in {out}", file=sys.stderr, flush=True)
    if status == 5 and args.select:  # pytest: nothing collected
        raise CommandError(f"no benchmark matches --select {args.select!r}")
    updated = {p.name for p in out.glob("*.md") if p.stat().st_mtime >= started - 1} if out.is_dir() else set()
    if not out.is_dir() or not any(out.glob("*.md")):
        raise CommandError(f"the suites wrote no report to {out} (pytest exit status {status})")
    ratios = collect_ratios(out)
    text = ratios_markdown(ratios, out, quick=args.quick, updated=updated)
    with atomic_write(out / RATIO_FILE) as f:
        f.write(text)
    print()
    print("\n".join(line for line in text.splitlines() if line.startswith("|")))
    print(f"\nwrote {out / RATIO_FILE} ({len(ratios)} ratios from {len({r['file'] for r in ratios})} report(s))")
    if status != 0:
        raise CommandError(f"pytest exited with status {status}; the ratios above come from the reports that exist")
    return 0


# ------------------------------------------------------------------------------------------------ info, demo
def _cmd_info(args) -> int:
    from . import info
    json.dump(info(), sys.stdout, indent=2, default=str)
    print()
    return 0


def _cmd_demo(args) -> int:
    from .demo import main as demo
    return demo(out=args.out, runs=args.runs, epochs=args.epochs, speed=not args.no_speed, quiet=args.quiet)


# ------------------------------------------------------------------------------------------------ entry point
@contextlib.contextmanager
def _plain_warnings():
    """Warnings as one line each ('lossval-fast: warning: ...'), without the source line."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def _failure(error: BaseException) -> tuple[int, str] | None:
    """(exit status, one line) for the exceptions that are the user's or the machine's doing, None for others.

    One table for every command: 2 for a bad command line, 1 for bad data or parameters (ValueError, TypeError are
    how the package reports invalid input), for files that cannot be read or written, and for a dead worker.
    """
    from .distributed import WorkerError

    if isinstance(error, UsageError):
        return 2, _one_line(error)
    if isinstance(error, WorkerError):
        return 1, f"{_one_line(error)}; nothing was written"
    if isinstance(error, (CommandError, ValueError, TypeError)):
        return 1, _one_line(error)
    if isinstance(error, OSError):  # permission denied, disk full, a corrupt gzip stream, ...
        where = f": {error.filename}" if error.filename else ""
        return 1, f"{_one_line(error.strerror or error)}{where}"
    if isinstance(error, (zlib.error, zipfile.BadZipFile, csv.Error, EOFError)):  # a damaged file read elsewhere
        return 1, f"cannot read a file: {type(error).__name__}: {_one_line(error)}"
    if isinstance(error, MemoryError):
        return 1, "out of memory (try fewer rows, a smaller --batch-size or --val-size)"
    return None


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (`lossval-fast ... | head`): stop without a word, as a process killed by SIGPIPE
    would. Later writes and the interpreter's final flush go to /dev/null instead of failing again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + 13  # what the shell reports for a process ended by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    debug = os.environ.get("LOSSVAL_FAST_DEBUG") == "1"
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    name = f"{PROG} {args.command}"
    with _plain_warnings():
        try:
            code = args.handler(args)
            sys.stdout.flush()  # a closed pipe shows up here, where it is handled, not at the interpreter's exit
            return code
        except BrokenPipeError:
            return _quiet_broken_pipe()
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        except Exception as error:
            failure = _failure(error)
            if debug:
                raise
            if failure is None:  # a bug of ours: still one line, and how to see more
                failure = 1, (f"internal error: {type(error).__name__}: {_one_line(error)} (please report it; "
                              "LOSSVAL_FAST_DEBUG=1 shows the traceback)")
            code, message = failure
            print(f"{name}: error: {message}", file=sys.stderr)
            return code
