"""Valuation quality with the paper's protocol on the shared data sets (OpenDataVal's: z-scored, 1000/100/3000
splits, noise on train and valid, 2-means noisy-point F1), LossVal next to EcoVal, KNN-Shapley and random values.

    python bench/quality.py [--runs 5] [--rate 0.1] [--datasets pol,kin8nm] [--noise label,feature,mixed]

Writes bench/results/quality/<data>_<noise>/ (report.md, results.json, discovery.png, removal.png, via
lossval_fast.evaluation) and the summary bench/results/quality.md with the paper's published means beside ours.
The data files come from ../shared/data (next to the repository); missing files are skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lossval_fast.datasets import SHARED_DATASETS, load_table
from lossval_fast.evaluation import MethodOptions, describe_machine, evaluate, write_report

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
RESULTS = HERE / "results"
# LossVal paper (docs/algorithms.md §4): mean F1 over 6 classification / 6 regression sets, 25 runs per rate, 30 epochs
PAPER = {("classification", "label"): 0.544, ("classification", "feature"): 0.204,
         ("classification", "mixed"): 0.371, ("regression", "label"): 0.464, ("regression", "feature"): 0.256,
         ("regression", "mixed"): 0.354}
CLASSIFICATION = ["2dplanes", "pol", "electricity", "adult"]
REGRESSION = ["kin8nm", "cpu_activity"]


def methods_for(task: str) -> list[str]:
    # KNN-Shapley is defined for classification (OpenDataVal's regression variant values every point ~0)
    return ["lossval", "ecoval", "knn-shapley", "random"] if task == "classification" else \
        ["lossval", "ecoval", "random"]


def run(datasets, noises, runs, rate, seed):
    torch.set_num_threads(2)
    rows = []
    for name in datasets:
        file, task = SHARED_DATASETS[name]
        path = DATA / file
        if not path.exists():
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        X, y, _ = load_table(path, encode_categorical=(name == "adult"), dtype=np.float32)
        for noise in noises:
            start = time.perf_counter()
            results = evaluate(X, y, task=task, noise=noise, rate=rate, runs=runs, methods=methods_for(task),
                               seed=seed, options=MethodOptions(), data_name=name,
                               progress=lambda m, n=name, k=noise: print(f"{n}/{k}: {m}", file=sys.stderr))
            write_report(results, RESULTS / "quality" / f"{name}_{noise}")
            for method, record in results["methods"].items():
                rows.append({"data": name, "task": task, "noise": noise, "method": record["label"],
                             "f1_mean": record["f1_mean"], "f1_std": record["f1_std"],
                             "time_mean_s": record["time_mean_s"]})
            print(f"{name}/{noise}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
            machine = results["machine"]
    return rows, machine


def summary_markdown(rows, runs, rate, machine) -> str:
    lines = [f"# Valuation quality: noisy-point detection F1 ({runs} runs each, {int(rate * 100)} % noise)", "",
             f"Machine: {describe_machine(machine)}. Protocol: OpenDataVal splits 1000/100/rest (z-scored), noise on "
             "train and valid, exact 2-means split of the values (lower cluster = predicted noisy). LossVal: the "
             "paper's configuration (30 epochs, batch 32, lr 0.01, per-batch diameter, float32). EcoVal: 20 label-"
             "stratified clusters, logreg (ridge for regression). Per-run reports and plots: "
             "`bench/results/quality/<data>_<noise>/`.", "",
             "| data | task | noise | method | F1 mean ± std | time per run (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        spread = "n/a" if r["f1_std"] is None else f"{r['f1_std']:.3f}"  # None: one run, no spread
        lines.append(f"| {r['data']} | {r['task']} | {r['noise']} | {r['method']} | {r['f1_mean']:.3f} ± "
                     f"{spread} | {r['time_mean_s']:.2f} |")
    lines += ["", "Averages over the data sets of each task, next to the paper's LossVal means (6 sets per task, "
                  "25 runs per rate; our sets are the 4 + 2 available offline, so expect differences):", "",
              "| task | noise | method | our mean F1 | paper (LossVal) |", "|---|---|---|---|---|"]
    keys = sorted({(r["task"], r["noise"], r["method"]) for r in rows})
    for task, noise, method in keys:
        values = [r["f1_mean"] for r in rows if (r["task"], r["noise"], r["method"]) == (task, noise, method)]
        paper = f"{PAPER[(task, noise)]:.3f}" if method == "LossVal" else ""
        lines.append(f"| {task} | {noise} | {method} | {np.mean(values):.3f} | {paper} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", default=",".join(CLASSIFICATION + REGRESSION))
    parser.add_argument("--noise", default="label,feature,mixed")
    args = parser.parse_args(argv)
    rows, machine = run(args.datasets.split(","), args.noise.split(","), args.runs, args.rate, args.seed)
    from lossval_fast._io import atomic_write
    with atomic_write(RESULTS / "quality.json") as f:   # whole files or none: an interrupt keeps the last report
        f.write(json.dumps({"runs": args.runs, "rate": args.rate, "rows": rows, "machine": machine}, indent=2) + "\n")
    with atomic_write(RESULTS / "quality.md") as f:
        f.write(summary_markdown(rows, args.runs, args.rate, machine))
    print((RESULTS / "quality.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
