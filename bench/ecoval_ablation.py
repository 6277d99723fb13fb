"""EcoVal ablations (docs/ecoval.md §7): each ingredient of the additive propagation switched off or varied, on the
shared data sets, with the quality protocol of bench/test_ecoval_quality.py (1000 / 100 / rest splits, z-scored,
10 % label noise on train and valid, 5 runs).

    python bench/ecoval_ablation.py [--runs 5] [--datasets pol,2dplanes,...] [--variants default,multiplicative]
                                    [--out bench/results]

Per variant and data set: noisy-point AUC (of -values) and 2-means F1, and the test score after dropping the
lowest- and the highest-valued 10 % against dropping a random 10 % (mean of 5 random draws per run). Regression
sets are also scored with an MLP refit (scikit-learn MLPRegressor), since a linear refit cannot use what a noise
detector removes there (docs/ecoval.md §8). Writes ecoval_ablation.md and .json (temporary file, then rename).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lossval_fast.datasets import SHARED_DATASETS, load_table
from lossval_fast.evaluation import describe_machine, machine_info, removal_model
from lossval_fast.valuation import noisify_split, noisy_detection_f1, standardize_split
from lossval_fast.valuation.ecoval import EcoVal

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
CLASSIFICATION = ["2dplanes", "pol", "electricity", "adult"]
REGRESSION = ["kin8nm", "cpu_activity"]
VARIANTS = {
    "default": {},
    "intrinsic_weight=1": {"intrinsic_weight": 1.0},
    "intrinsic_weight=10": {"intrinsic_weight": 10.0},
    "intrinsic_weight=1000": {"intrinsic_weight": 1000.0},
    "intrinsic=lco_proba": {"intrinsic": "lco_proba"},
    "intrinsic=knn_agreement": {"intrinsic": "knn_agreement"},
    "intrinsic=uniform": {"intrinsic": "uniform"},
    "shrinkage=False": {"shrinkage": False},
    "lam=0 (LCO only)": {"lam": 0.0},
    "pairs=5": {"pairs": 5},
    "stratify_by_label=False": {"stratify_by_label": False},
    "multiplicative (EcoVal-R v1)": {"propagation": "multiplicative"},
    "learner=mlp": {"learner": "mlp"},
}
TEST_CAP = 5000
FRACTION = 0.1


def auc(values, positive) -> float:
    """P(a positive's value < a negative's), ties half (Mann-Whitney on the ranks)."""
    from scipy.stats import rankdata
    ranks = rankdata(-np.asarray(values))
    n_pos = int(positive.sum())
    n_neg = len(values) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def refit_score(factory, task, x, y, x_test, y_test) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "classification" and len(np.unique(y)) < 2:
            return float(np.mean(y_test == y[0]))
        pred = factory().fit(x, y).predict(x_test)
    if task == "classification":
        return float(np.mean(pred == y_test))
    return 1.0 - float(np.sum((y_test - pred) ** 2) / np.sum((y_test - y_test.mean()) ** 2))


def refit_models(task):
    models = {"linear": removal_model(task)[0]}
    if task == "regression":
        from sklearn.neural_network import MLPRegressor
        models["mlp"] = lambda: MLPRegressor(hidden_layer_sizes=(100,), max_iter=300, random_state=0)
    return models


def load(name):
    file, task = SHARED_DATASETS[name]
    X, y, _ = load_table(DATA / file, encode_categorical=(name == "adult"), dtype=np.float32)
    return X, y, task


def run(datasets, variants, runs, seed):
    rows = []
    for name in datasets:
        if not (DATA / SHARED_DATASETS[name][0]).exists():
            print(f"skip {name}: not in {DATA}", file=sys.stderr)
            continue
        X, y, task = load(name)
        models = refit_models(task)
        for r in range(runs):
            rs = np.random.RandomState(seed + r)
            split = standardize_split(X, y, n_train=1000, n_valid=100, n_test=len(X) - 1100, task=task,
                                      random_state=rs)
            noisy, mask, _ = noisify_split(split, "label", 0.1, random_state=rs)
            x, yy = noisy.x_train, noisy.y_train
            xt, yt = split.x_test[:TEST_CAP], split.y_test[:TEST_CAP]
            n, k = len(x), int(round(FRACTION * len(x)))
            rng = np.random.default_rng(seed + r)
            draws = [np.sort(rng.permutation(n)[k:]) for _ in range(5)]
            random_score = {m: float(np.mean([refit_score(f, task, x[d], yy[d], xt, yt) for d in draws]))
                            for m, f in models.items()}
            for variant in variants:
                kwargs = VARIANTS[variant]
                start = time.perf_counter()
                est = EcoVal(n_clusters=20, task=task, random_state=seed + r, verbose=False, **kwargs)
                values = est.fit(x, yy, noisy.x_valid, noisy.y_valid).values_
                seconds = time.perf_counter() - start
                order = np.argsort(values, kind="stable")
                record = {"data": name, "task": task, "run": r, "variant": variant, "seconds": seconds,
                          "auc": auc(values, mask), "f1": noisy_detection_f1(values, mask)}
                for m, f in models.items():
                    record[f"{m}_low"] = refit_score(f, task, x[np.sort(order[k:])], yy[np.sort(order[k:])], xt, yt)
                    record[f"{m}_high"] = refit_score(f, task, x[np.sort(order[:n - k])], yy[np.sort(order[:n - k])],
                                                      xt, yt)
                    record[f"{m}_random"] = random_score[m]
                rows.append(record)
                print(f"{name} run {r} {variant:30s} AUC {record['auc']:.3f} F1 {record['f1']:.3f} "
                      f"{seconds:6.1f} s", file=sys.stderr, flush=True)
    return rows


def summarize(rows):
    out = {}
    for row in rows:
        out.setdefault((row["data"], row["variant"]), []).append(row)
    return {key: {field: float(np.mean([r[field] for r in group])) for field in group[0]
                  if isinstance(group[0][field], float)} for key, group in out.items()}


def markdown(rows, runs, machine) -> str:
    summary = summarize(rows)
    datasets = list(dict.fromkeys(r["data"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [f"# EcoVal ablations ({runs} runs per cell, 10 % label noise)", "",
             f"Machine: {describe_machine(machine)}. Protocol: 1000 / 100 / rest splits (test capped at {TEST_CAP}), "
             "z-scored, noise on train and valid, p = 20, float64. `low` / `high`: test score after dropping the "
             "lowest / highest-valued 10 %, `rand`: after dropping a random 10 % (mean of 5 draws per run). "
             "Classification refit: LogisticRegression (accuracy); regression: Ridge and an MLPRegressor (R²). "
             "Produced by `python bench/ecoval_ablation.py`.", ""]
    for task in ("classification", "regression"):
        sets = [d for d in datasets if SHARED_DATASETS[d][1] == task]
        if not sets:
            continue
        lines += [f"## {task}", "", "| variant | " + " | ".join(f"{d} AUC / F1" for d in sets) + " | mean AUC | mean F1 |",
                  "|---|" + "---|" * (len(sets) + 2)]
        for v in variants:
            cells = [summary.get((d, v)) for d in sets]
            if any(c is None for c in cells):
                continue
            lines.append(f"| {v} | " + " | ".join(f"{c['auc']:.3f} / {c['f1']:.3f}" for c in cells) +
                         f" | {np.mean([c['auc'] for c in cells]):.3f} | {np.mean([c['f1'] for c in cells]):.3f} |")
        models = ["linear"] + (["mlp"] if task == "regression" else [])
        for m in models:
            lines += ["", f"Removal, {m} refit: low / rand / high (✓: low ≥ rand and high < rand)", "",
                      "| variant | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
            for v in variants:
                cells = [summary.get((d, v)) for d in sets]
                if any(c is None for c in cells):
                    continue
                text = []
                for c in cells:
                    ok = "✓" if c[f"{m}_low"] >= c[f"{m}_random"] and c[f"{m}_high"] < c[f"{m}_random"] else "✗"
                    text.append(f"{c[f'{m}_low']:.4f} / {c[f'{m}_random']:.4f} / {c[f'{m}_high']:.4f} {ok}")
                lines.append(f"| {v} | " + " | ".join(text) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", default=",".join(CLASSIFICATION + REGRESSION))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    torch.set_num_threads(1)
    rows = run(args.datasets.split(","), variants, args.runs, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info("cpu")
    write_atomic(out / "ecoval_ablation.json", json.dumps({"runs": args.runs, "rows": rows, "machine": machine},
                                                          indent=1) + "\n")
    write_atomic(out / "ecoval_ablation.md", markdown(rows, args.runs, machine))
    print((out / "ecoval_ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
