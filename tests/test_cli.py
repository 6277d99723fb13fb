"""The `lossval-fast` command end to end on small files made here: value, evaluate, bench, info, demo, and every
user mistake ending in one line on stderr with a non-zero exit (never a traceback)."""
import gzip
import shutil
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lossval_fast import cli
from lossval_fast.evaluation import (MethodOptions, infer_task, removal_curves, removal_fractions, removal_model,
                                     value_rows)
from lossval_fast.valuation import KNNShapley

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--epochs", "2", "--clusters", "4"]  # small method settings: each fit takes a fraction of a second


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_png(path):
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def assert_one_line_error(code, err, expected_code, *needles):
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lossval-fast") and "error:" in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_csv(path, header, rows, compress=False):
    text = ",".join(header) + "\n" + "".join(",".join(str(c) for c in row) + "\n" for row in rows)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        Path(path).write_text(text)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small data files: classification CSV (120 rows), regression CSV.GZ (120 rows), NPZ images (100 rows),
    a validation CSV, text columns, a single-class target, NaN, too few rows."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = (X[:, 0] + 0.3 * rng.normal(size=120) > 0).astype(int)
    f = {"dir": d}
    f["cls"] = write_csv(d / "cls.csv", ["a", "b", "c", "d", "target"],
                         [[f"{v:.6f}" for v in X[i]] + [y[i]] for i in range(120)])
    Xv = rng.normal(size=(30, 4))
    f["cls_val"] = write_csv(d / "cls_val.csv", ["a", "b", "c", "d", "target"],
                             [[f"{v:.6f}" for v in Xv[i]] + [int(Xv[i, 0] > 0)] for i in range(30)])
    Xr = rng.normal(size=(120, 3))
    yr = Xr @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=120)
    f["reg"] = write_csv(d / "reg.csv.gz", ["x1", "x2", "x3", "target"],
                         [[f"{v:.6f}" for v in Xr[i]] + [f"{yr[i]:.6f}"] for i in range(120)], compress=True)
    np.savez(d / "img.npz", X=rng.integers(0, 255, size=(100, 3, 3)).astype(np.uint8),
             y=rng.integers(0, 3, size=100))
    f["img"] = d / "img.npz"
    f["text"] = write_csv(d / "text.csv", ["size", "color", "shape", "target"],
                          [[i, ["red", "blue"][i % 2], ["sq", "ci", "tr"][i % 3], i % 2] for i in range(40)])
    f["labels"] = write_csv(d / "labels.csv", ["a", "b", "target"],
                            [[f"{v:.4f}" for v in X[i, :2]] + [["yes", "no"][y[i]]] for i in range(120)])
    f["one_class"] = write_csv(d / "one_class.csv", ["a", "target"], [[i, 1] for i in range(30)])
    f["nan"] = write_csv(d / "nan.csv", ["a", "b", "target"], [[i, "nan" if i == 3 else i, i % 2] for i in range(30)])
    f["tiny"] = write_csv(d / "tiny.csv", ["a", "target"], [[i, i % 2] for i in range(3)])
    f["header_only"] = write_csv(d / "header_only.csv", ["a", "target"], [])
    f["other_cols"] = write_csv(d / "other_cols.csv", ["p", "q", "target"], [[1, 2, 0], [2, 3, 1], [3, 1, 0]])
    return f


def read_values(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    return header, rows


# ------------------------------------------------------------------------------------------------ value
def test_value_csv_writes_one_value_per_input_row_and_a_plot(files, tmp_path, capsys):
    out, plot = tmp_path / "v" / "values.csv", tmp_path / "v.png"
    code, stdout, err = run(capsys, "value", files["cls"], *FAST, "--out", out, "--plot", plot, "--show", "4")
    assert code == 0, err
    header, rows = read_values(out)
    assert header == ["row", "target", "value", "lower_2means", "fit"]
    assert len(rows) == 120
    assert [int(r[0]) for r in rows] == list(range(120))           # input order
    labels = [line.split(",")[-1] for line in Path(files["cls"]).read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == labels
    values = np.array([float(r[2]) for r in rows])
    assert np.all(np.isfinite(values))
    # default validation: 10 % of the rows held out, valued by the second fit
    assert sorted({r[4] for r in rows}) == ["1", "2"] and sum(r[4] == "2" for r in rows) == 12
    assert "lowest-valued rows" in stdout and "wrote" in stdout
    shown = stdout.split("lowest-valued rows")[1].splitlines()[2:6]
    lowest = np.argsort(values, kind="stable")[:4]
    assert [int(line.split()[0]) for line in shown] == lowest.tolist()
    assert "task classification" in err and "fit 2/2" in err       # progress on stderr
    assert_png(plot)


def test_value_with_a_validation_file_and_a_regression_target(files, tmp_path, capsys):
    # A gzip CSV regression set against a validation file that is itself the same set (values only need a
    # validation set with the same columns).
    out = tmp_path / "reg_values.csv"
    code, stdout, err = run(capsys, "value", files["reg"], "--val", files["reg"], "--method", "ecoval", "--clusters",
                            "4", "--out", out, "--quiet")
    assert code == 0, err
    assert err == ""
    _, rows = read_values(out)
    assert len(rows) == 120 and {r[4] for r in rows} == {"1"}
    assert "EcoVal (4 clusters, ridge)" in stdout


@pytest.mark.parametrize("method", ["lossval", "ecoval"])
def test_value_over_two_processes_matches_one(files, tmp_path, capsys, method):
    """--nproc 2 runs each fit over two gloo processes (lossval_fast.distributed): the values of one process."""
    options = ["--epochs", "2"] if method == "lossval" else ["--method", "ecoval", "--clusters", "4"]
    values = {}
    for nproc in ("1", "2"):
        out = tmp_path / f"{method}_{nproc}.csv"
        code, _, err = run(capsys, "value", files["cls"], "--val", files["cls_val"], *options, "--nproc", nproc,
                           "--out", out, "--quiet")
        assert code == 0, err
        values[nproc] = np.array([float(r[2]) for r in read_values(out)[1]])
    assert len(values["2"]) == 120 and not np.allclose(values["2"], values["2"][0])
    assert np.abs(values["1"] - values["2"]).max() <= 1e-5
    code, _, err = run(capsys, "value", files["cls"], "--method", "knn-shapley", "--nproc", "2")
    assert code != 0 and "--nproc applies to lossval and ecoval" in err


def test_value_checkpoint_resumes_a_killed_run_with_the_same_values(files, tmp_path, capsys, monkeypatch):
    """--checkpoint PATH: a run killed in its second fit (after that fit's second epoch was saved) resumes from
    PATH and PATH.fit2 and writes the values of an uninterrupted run; a finished checkpoint reproduces them at
    once; another --epochs is refused naming the field; an existing --out is reported as replaced."""
    from lossval_fast.valuation import lossval as module

    base = ["value", files["cls"], "--epochs", "4"]
    code, _, err = run(capsys, *base, "--quiet", "--out", tmp_path / "full.csv")
    assert code == 0, err
    ckpt = tmp_path / "run.ckpt"
    save = module.LossVal._save_checkpoint

    def save_then_die(self, state):
        save(self, state)
        if str(self.checkpoint).endswith(".fit2") and state["epoch"] == 1:
            raise KeyboardInterrupt  # what a kill in the middle of the second fit leaves behind
    monkeypatch.setattr(module.LossVal, "_save_checkpoint", save_then_die)
    code, _, err = run(capsys, *base, "--quiet", "--checkpoint", ckpt, "--out", tmp_path / "killed.csv")
    assert code == 130 and not (tmp_path / "killed.csv").exists()
    assert ckpt.exists() and Path(f"{ckpt}.fit2").exists()
    monkeypatch.setattr(module.LossVal, "_save_checkpoint", save)
    code, _, err = run(capsys, *base, "--checkpoint", ckpt, "--out", tmp_path / "resumed.csv")
    assert code == 0, err
    assert f"resuming from checkpoint {ckpt}" in err and f"resuming from checkpoint {ckpt}.fit2" in err
    assert read_values(tmp_path / "resumed.csv") == read_values(tmp_path / "full.csv")
    code, _, err = run(capsys, *base, "--quiet", "--checkpoint", ckpt, "--out", tmp_path / "resumed.csv")
    assert code == 0 and read_values(tmp_path / "resumed.csv") == read_values(tmp_path / "full.csv")
    assert err.strip() == f"lossval-fast value: note: {tmp_path / 'resumed.csv'} existed and was replaced (pass " \
                          "--out to keep both)"
    code, _, err = run(capsys, "value", files["cls"], "--epochs", "2", "--checkpoint", ckpt, "--quiet")
    assert_one_line_error(code, err, 1, "epochs: checkpoint has 4 finished epoch(s), this fit has epochs=2")
    code, _, err = run(capsys, "value", files["cls"], "--method", "knn-shapley", "--checkpoint", ckpt)
    assert_one_line_error(code, err, 2, "argument --checkpoint: applies to --method lossval and ecoval")


def test_value_npz_with_knn_shapley_matches_the_direct_fits(files, tmp_path, capsys):
    out = tmp_path / "img_values.csv"
    code, _, err = run(capsys, "value", files["img"], "--method", "knn-shapley", "--val-size", "20", "--out", out,
                       "--quiet", "--k", "5")
    assert code == 0, err
    _, rows = read_values(out)
    values = np.array([float(r[2]) for r in rows])
    assert len(values) == 100
    # Check the two-fit bookkeeping against direct KNN-Shapley fits on the same z-scored data.
    with np.load(files["img"]) as archive:
        X = archive["X"].reshape(100, -1).astype(np.float64)
        y = archive["y"]
    Z = (X - X.mean(0)) / (X.std(0) + 1e-8)
    order = np.random.RandomState(0).permutation(100)
    first, second = order[:20], order[20:40]
    train1 = np.setdiff1d(np.arange(100), first)
    train2 = np.setdiff1d(np.arange(100), second)
    v1 = KNNShapley(k=5).fit(Z[train1], y[train1], Z[first], y[first]).values_
    v2 = KNNShapley(k=5).fit(Z[train2], y[train2], Z[second], y[second]).values_
    np.testing.assert_allclose(values[train1], v1, rtol=1e-15, atol=0)
    np.testing.assert_allclose(values[first], v2[np.searchsorted(train2, first)], rtol=1e-15, atol=0)
    assert {int(r[4]) for r in rows if int(r[0]) in set(first.tolist())} == {2}


def test_value_text_labels_and_one_hot_features(files, tmp_path, capsys):
    code, stdout, err = run(capsys, "value", files["labels"], "--method", "knn-shapley", "--out",
                            tmp_path / "a.csv", "--quiet")
    assert code == 0, err
    _, rows = read_values(tmp_path / "a.csv")
    assert {r[1] for r in rows} == {"yes", "no"}
    code, _, err = run(capsys, "value", files["text"], "--one-hot", "--method", "knn-shapley", "--val-size", "5",
                       "--out", tmp_path / "b.csv", "--quiet")
    assert code == 0, err
    assert len(read_values(tmp_path / "b.csv")[1]) == 40


def test_value_warns_in_one_line_about_options_the_method_does_not_use(files, tmp_path, capsys):
    code, _, err = run(capsys, "value", files["cls"], "--method", "knn-shapley", "--epochs", "3", "--out",
                       tmp_path / "v.csv", "--quiet")
    assert code == 0
    assert err.strip() == "lossval-fast: warning: --epochs does not apply to --method knn-shapley; ignored"


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_writes_report_json_and_plots(files, tmp_path, capsys):
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "evaluate", files["cls"], "--train", "60", "--valid", "20", "--runs", "2",
                            *FAST, "--seed", "3", "--out", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    for key in ("data", "rows", "features", "task", "noise", "rate", "runs", "seed", "split", "noisy_train_points",
                "discovery_fractions", "removal", "machine", "methods", "wall_time_s"):
        assert key in results
    assert results["split"] == {"train": 60, "valid": 20, "test": 40}
    assert results["noise"] == "label" and results["rate"] == 0.1 and results["runs"] == 2 and results["seed"] == 3
    assert list(results["methods"]) == ["lossval", "ecoval", "knn-shapley", "random"]
    for record in results["methods"].values():
        assert len(record["f1"]) == 2 and len(record["time_s"]) == 2
        assert record["f1_mean"] == pytest.approx(np.mean(record["f1"]))
        assert record["f1_std"] == pytest.approx(np.std(record["f1"], ddof=1))
        assert all(0 <= f <= 1 for f in record["f1"])
        assert len(record["auc"]) == 2 and record["auc_mean"] == pytest.approx(np.mean(record["auc"]))
        assert all(0 <= a <= 1 for a in record["auc"])
        assert len(record["discovery"]["mean"]) == 21 and record["discovery"]["mean"][-1] == 1.0
        for key in ("lowest_first", "highest_first"):
            assert len(record["removal"][key]["mean"]) == len(results["removal"]["fractions"]) == 11
    report = (out / "report.md").read_text()
    assert "| method | settings | noisy-point F1 (mean ± std) | AUC (mean ± std) | time per run (s) |" in report
    for label in ("LossVal", "EcoVal", "KNN-Shapley", "random values"):
        assert f"| {label} |" in report
    assert "cls.csv" in report and "60 / 20 / 40" in report and "Machine:" in report and "| 3 |" in report
    assert_png(out / "discovery.png")
    assert_png(out / "removal.png")
    assert "| LossVal |" in stdout and str(out / "discovery.png") in stdout
    assert "run 2/2" in err


def test_evaluate_regression_mixed_noise_and_default_output_folder(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "evaluate", files["reg"], "--train", "60", "--valid", "20", "--runs", "1",
                            "--noise", "mixed", "--rate", "0.2", *FAST, "--removal-max", "0.3", "--quiet")
    assert code == 0, err
    out = tmp_path / "report-reg-mixed-20"
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "regression" and results["removal"]["metric"] == "R^2"
    assert list(results["methods"]) == ["lossval", "ecoval", "random"]     # KNN-Shapley is classification only
    assert results["removal"]["fractions"] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert "mixed noise at 20%" in (out / "report.md").read_text()


def test_evaluate_bundled_data_set(tmp_path, capsys):
    code, stdout, err = run(capsys, "evaluate", "bundled:pol", "--train", "100", "--valid", "20", "--test", "200",
                            "--runs", "1", "--methods", "knn-shapley,random", "--out", tmp_path, "--quiet")
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["rows"] == 4000 and results["features"] == 48 and results["split"]["test"] == 200
    # one run measures no spread: no "± 0.000" in the table, the report or results.json
    assert "±" not in stdout.split("| method |")[1].split("\n\n")[0].replace("(mean ± std)", "")
    assert "(1 run, no spread)" in stdout and "(1 run, no spread)" in (tmp_path / "report.md").read_text()
    assert results["methods"]["random"]["f1_std"] is None


# ------------------------------------------------------------------------------------------------ errors
ERRORS = [
    # (arguments, exit code, text the one line must contain)
    (["value", "{dir}/missing.csv"], 1, "data file not found: {dir}/missing.csv"),
    (["evaluate", "{dir}/missing.csv", "--quiet"], 1, "data file not found"),
    (["value", "{dir}"], 1, "is a directory"),
    (["value", "{cls}", "--target", "label"], 1, "no target column 'label'"),
    (["value", "{text}"], 1, "non-numeric feature columns: color, shape"),
    (["value", "{cls}", "--val-size", "70"], 1, "too few for --val-size 70"),
    (["value", "{tiny}"], 1, "too few"),
    (["value", "{tiny}", "--val", "{tiny}"], 1, "too few"),
    (["evaluate", "{cls}", "--quiet"], 1, "too few for the split 1000 train + 100 valid"),
    (["evaluate", "{cls}", "--train", "60", "--valid", "20", "--test", "50", "--quiet"], 1, "too few"),
    (["evaluate", "{cls}", "--train", "8", "--valid", "5", "--rate", "0.01", "--quiet"], 1, "no training point"),
    (["value", "{one_class}"], 1, "single class"),
    (["value", "{nan}"], 1, "NaN"),
    (["value", "{header_only}"], 1, "no data rows"),
    (["value", "{reg}", "--method", "knn-shapley"], 1, "classification only"),
    (["evaluate", "{reg}", "--methods", "knn-shapley", "--quiet"], 1, "classification only"),
    (["value", "{cls}", "--val", "{other_cols}", "--quiet"], 1, "feature columns differ"),
    (["value", "{cls}", "--val", "{dir}/nothing.csv", "--quiet"], 1, "validation file not found"),
    (["value", "{labels}", "--task", "regression", "--quiet"], 1, "numeric target"),
    (["value", "{cls}", "--epochs", "0"], 2, "argument --epochs: expected an integer >= 1, got 0"),
    (["value", "{cls}", "--epochs", "x"], 2, "argument --epochs"),
    (["value", "{cls}", "--lr", "-1"], 2, "argument --lr"),
    (["value", "{cls}", "--lr", "nan"], 2, "argument --lr"),
    (["value", "{cls}", "--method", "shapley"], 2, "argument --method: invalid choice"),
    (["value", "{cls}", "--val", "{cls}", "--val-size", "3"], 2, "not allowed with argument"),
    (["value", "{cls}", "--device", "gpu"], 2, "argument --device"),
    (["value", "{cls}", "--task", "ranking"], 2, "argument --task"),
    (["evaluate", "{cls}", "--rate", "1.5"], 2, "argument --rate: expected a fraction in (0, 1)"),
    (["evaluate", "{cls}", "--rate", "0"], 2, "argument --rate"),
    (["evaluate", "{cls}", "--runs", "0"], 2, "argument --runs"),
    (["evaluate", "{cls}", "--methods", "lossval,foo"], 2, "unknown method(s) foo"),
    (["evaluate", "{cls}", "--methods", "random,random"], 2, "listed twice"),
    (["evaluate", "{cls}", "--noise", "gaussian"], 2, "argument --noise"),
    (["evaluate", "{cls}", "--removal-max", "0.99"], 2, "argument --removal-max"),
    (["evaluate"], 2, "required: DATA"),
    (["frobnicate"], 2, "invalid choice"),
    ([], 2, "required: COMMAND"),
    (["bench", "--bench-dir", "{dir}/no_suites"], 1, "no benchmark suites there"),
]


@pytest.mark.parametrize("args,code,needle", ERRORS, ids=[" ".join(a[:3]) or "(none)" for a, _, _ in ERRORS])
def test_user_mistakes_end_in_one_line_and_a_nonzero_exit(files, capsys, args, code, needle):
    fill = {k: str(v) for k, v in files.items()}
    got, out, err = run(capsys, *[a.format(**fill) for a in args])
    assert_one_line_error(got, err, code, needle.format(**fill))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_one_line_error(files, capsys):
    code, _, err = run(capsys, "value", files["cls"], "--device", "cuda")
    assert_one_line_error(code, err, 2, "no CUDA device")


def test_errors_from_a_real_process_have_no_traceback(files):
    for args, expected in ((["value", str(files["dir"] / "missing.csv")], 1),
                           (["evaluate", str(files["cls"]), "--rate", "2"], 2)):
        proc = subprocess.run([sys.executable, "-m", "lossval_fast", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == expected
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_debug_environment_variable_shows_the_traceback(files, monkeypatch):
    monkeypatch.setenv("LOSSVAL_FAST_DEBUG", "1")
    with pytest.raises(cli.CommandError, match="data file not found"):
        cli.main(["value", str(files["dir"] / "missing.csv")])


def test_unwritable_output_is_a_one_line_error(files, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "value", files["cls"], "--method", "knn-shapley", "--out", blocker / "v.csv",
                       "--quiet")
    assert_one_line_error(code, err, 1)


# ------------------------------------------------------------------------------------------------ bench
FAKE_SUITE = '''
import os
from pathlib import Path

def test_writes_a_report():
    results = Path(os.environ["LOSSVAL_FAST_BENCH_OUT"])  # where bench/conftest.py writes
    results.mkdir(parents=True, exist_ok=True)
    quick = os.environ.get("LOSSVAL_FAST_BENCH_QUICK", "0")
    threads = os.environ.get("LOSSVAL_FAST_BENCH_THREADS", "-")
    (results / "fake_cpu.md").write_text(
        f"# fake suite (quick={quick}, threads={threads})\\n\\n"
        "| case | ours (ms) | peer (ms) | speed-up |\\n|---|---|---|---|\\n"
        "| 32x100 | 1.0 | 2.5 | **2.5x** |\\n| 64x100 | 1.0 | 4.0 | 4.0x / 3.5x |\\n\\n"
        "Speed-up per epoch against the reference loop: **3.0x**.\\n")
'''
OLD_REPORT = "# old suite\n\n| shape | vs peer |\n|---|---|\n| 8x8 | 1.5x |\n"


@pytest.fixture
def fake_bench(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "test_fake.py").write_text(textwrap.dedent(FAKE_SUITE))
    committed = bench / "results"  # the committed reports, which a run must leave alone unless asked
    committed.mkdir()
    (committed / "old_cpu.md").write_text(OLD_REPORT)
    os.utime(committed / "old_cpu.md", (1e9, 1e9))
    return bench


def test_bench_runs_the_suites_and_collects_the_ratios(fake_bench, tmp_path, capfd):
    out = tmp_path / "collected"
    out.mkdir()
    (out / "old_cpu.md").write_text(OLD_REPORT)
    os.utime(out / "old_cpu.md", (1e9, 1e9))  # from an earlier run into the same folder
    code = cli.main(["bench", "--bench-dir", str(fake_bench), "--quick", "--threads", "1", "--out", str(out)])
    stdout, err = capfd.readouterr()
    assert code == 0, err
    table = (out / "ratios.md").read_text()
    assert "| [fake_cpu.md](fake_cpu.md) | 32x100 | speed-up | 2.5x |" in table
    assert "| [fake_cpu.md](fake_cpu.md) | 64x100 | speed-up | 4.0x / 3.5x |" in table
    assert "Speed-up per epoch against the reference loop | 3x |" in table
    assert [r["ratio"] for r in cli.collect_ratios(out)] == [2.5, 4.0, 3.0, 1.5]
    assert "| [old_cpu.md](old_cpu.md) * | 8x8 | vs peer | 1.5x |" in table  # not rewritten by this run
    assert "fake suite (quick=1, threads=1)" in table
    assert "2.5x" in stdout and "ratios.md" in stdout
    assert sorted(p.name for p in (fake_bench / "results").iterdir()) == ["old_cpu.md"]  # left alone


def test_bench_writes_a_fresh_folder_unless_asked_to_update_the_results(fake_bench, capfd):
    committed = fake_bench / "results"
    assert cli.main(["bench", "--bench-dir", str(fake_bench)]) == 0
    runs = list((fake_bench / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "fake_cpu.md").exists() and (runs[0] / "ratios.md").exists()
    assert sorted(p.name for p in committed.iterdir()) == ["old_cpu.md"]
    assert os.stat(committed / "old_cpu.md").st_mtime == 1e9
    assert cli.main(["bench", "--bench-dir", str(fake_bench), "--update-results"]) == 0
    assert {"fake_cpu.md", "ratios.md", "old_cpu.md"} <= {p.name for p in committed.iterdir()}
    capfd.readouterr()


def test_bench_conftest_writes_each_suite_as_it_finishes_and_quick_leaves_out_the_million_points(tmp_path):
    """The real bench/conftest.py: a suite's report is on disk when the next file starts (an interrupted run
    keeps it); --quick deselects the 1,000,000-point cases."""
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy(ROOT / "bench" / "conftest.py", bench / "conftest.py")
    (bench / "test_a.py").write_text(textwrap.dedent('''
        import pytest
        from conftest import record, markdown
        @pytest.mark.parametrize("n", [1000, 1000000], ids=lambda n: f"{n}x8")
        def test_case(n):
            record("a_cpu", n=n)
        def test_report():
            markdown("a_cpu", lambda payload: f"# a: {[r['n'] for r in payload['rows']]}\\n")
    '''))
    (bench / "test_b.py").write_text(textwrap.dedent('''
        import os
        from pathlib import Path
        def test_a_is_already_written():
            assert (Path(os.environ["LOSSVAL_FAST_BENCH_OUT"]) / "a_cpu.md").read_text() == "# a: [1000]\\n"
    '''))
    out = tmp_path / "out"
    env = {**os.environ, "LOSSVAL_FAST_BENCH_OUT": str(out), "LOSSVAL_FAST_BENCH_QUICK": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=bench, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 deselected" in result.stdout
    assert json.loads((out / "a_cpu.json").read_text())["rows"] == [{"n": 1000}]


def _collect_bench(tmp_path, quick: bool) -> list[str]:
    """The node ids the checkout's bench/ runs (pytest --collect-only, after the conftest's selection)."""
    pytest.importorskip("pytest_benchmark")
    env = {**os.environ, "LOSSVAL_FAST_BENCH_OUT": str(tmp_path / "out"), "LOSSVAL_FAST_BENCH_THREADS": "2"}
    env.pop("LOSSVAL_FAST_BENCH_QUICK", None)
    if quick:
        env["LOSSVAL_FAST_BENCH_QUICK"] = "1"
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT / "bench", env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.strip().removeprefix("bench/") for line in result.stdout.splitlines() if "::" in line]


def test_bench_quick_runs_every_suite_with_its_peers_and_leaves_out_the_long_cases(tmp_path):
    """`bench --quick` (<= 3 minutes on 2 cores): every suite with ours and the peers side by side, smaller;
    without the 1,000,000-point cases and the quality harness' own run. The full bench keeps them."""
    quick, full = _collect_bench(tmp_path, quick=True), _collect_bench(tmp_path, quick=False)
    files = {node.split("::")[0] for node in quick}
    assert files == {node.split("::")[0] for node in full} - {"test_scale.py"}
    assert not any("1000000" in node or node.startswith("test_scale.py") for node in quick)
    assert "test_ecoval_quality.py::test_quick_configuration_writes_the_report" not in quick
    assert "test_ecoval_quality.py::test_quick_configuration_writes_the_report" in full
    assert any("1000000" in node for node in full) and any(node.startswith("test_scale.py") for node in full)
    for suite, cases in {  # ours and the peers, in the same run
            "test_ecoval.py": ["lbfgs-batched-2thr", "lbfgs-loop-2thr", "newton-batched-2thr", "newton-loop-2thr",
                               "test_sklearn_loop_context", "test_solver_accuracy"],
            "test_kmeans.py": ["100000x32-K64-ours-cpp", "100000x32-K64-sklearn-lloyd", "paired_ratio[100000x32"],
            "test_lazy_adam.py": ["lazy (ours)-100000", "dense fused Adam (torch)-100000"],
            "test_lossval.py": ["epoch[ours]", "epoch[reference-geomloss]"],
            "test_sinkhorn.py": ["2048x2048x32-ours-fwd+bwd", "2048x2048x32-geomloss-fwd+bwd",
                                 "2048x2048x32-naive-torch-fwd+bwd", "128x2000x32-pot-fwd"],
            "test_softmin.py": ["4096x4096-d64-ours-online", "4096x4096-d64-torch-logsumexp-stored"]}.items():
        for case in cases:
            assert any(node.startswith(suite) and case in node for node in quick), (suite, case)
        assert f"{suite}::test_report" in quick
    # smaller: one thread setting for EcoVal, no 4096 x 4096 Sinkhorn, POT not at 2048 x 2048 (17 s a call)
    assert not any("1thr" in node or "4096x4096" in node and "sinkhorn" in node or "2048x2048x32-pot" in node
                   for node in quick)
    assert all(any(case in node for node in full) for case in ("lbfgs-loop-1thr", "4096x4096x64-ours-fwd",
                                                               "2048x2048x32-pot-fwd", "16384x16384x64"))


def test_bench_with_a_selection_that_matches_nothing(fake_bench, capfd):
    code = cli.main(["bench", "--bench-dir", str(fake_bench), "--select", "no_such_benchmark"])
    err = capfd.readouterr().err
    assert code == 1 and err.strip().endswith("no benchmark matches --select 'no_such_benchmark'")


def test_bench_without_the_source_checkout_says_so(monkeypatch, capsys):
    monkeypatch.setattr(cli, "find_bench_dir", lambda explicit=None: None)
    code, _, err = run(capsys, "bench")
    assert_one_line_error(code, err, 1, "come with the source checkout")


def test_bench_finds_the_checkouts_suites():
    assert cli.find_bench_dir() == ROOT / "bench" or cli.find_bench_dir().resolve() == (ROOT / "bench").resolve()


# ------------------------------------------------------------------------------------------------ info, demo
def test_info_prints_versions_backends_and_threads(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    info = json.loads(out)
    import lossval_fast
    assert info["version"] == lossval_fast.__version__ and "threads" in info and "torch" in info


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("lossval-fast ")


def test_demo_runs_evaluate_on_the_bundled_data(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--runs", "1", "--epochs", "2", "--no-speed", "--out", tmp_path,
                         "--quiet")
    assert code == 0, err
    assert "| LossVal |" in out and "| KNN-Shapley |" in out and "| random values |" in out
    assert str(tmp_path / "discovery.png") in out and str(tmp_path / "report.md") in out
    assert_png(tmp_path / "removal.png")
    assert json.loads((tmp_path / "results.json").read_text())["split"] == {"train": 1000, "valid": 100,
                                                                            "test": 2900}


def test_console_script_entry_point_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    entry = dict(line.replace(" ", "").split("=", 1) for line in section.strip().splitlines())
    module, _, name = entry["lossval-fast"].strip('"').partition(":")
    assert module == "lossval_fast.cli" and getattr(cli, name) is cli.main


# ------------------------------------------------------------------------------------------------ library pieces
@pytest.mark.parametrize("y,task", [
    (np.array([0, 1, 1, 0]), "classification"),
    (np.array([0.0, 1.0, 2.0]), "classification"),
    (np.array(["a", "b"]), "classification"),
    (np.array([True, False]), "classification"),
    (np.arange(25), "regression"),                   # more than 20 distinct integers
    (np.array([0.5, 1.0, 2.0]), "regression"),
])
def test_infer_task(y, task):
    assert infer_task(y) == task


def test_removal_curves_fall_back_to_the_packages_learners_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)   # import fails as if not installed
    factory, name, metric = removal_model("classification")
    assert name.startswith("lossval_fast") and metric == "accuracy"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    values = np.where(np.arange(60) < 6, -1.0, 1.0) + 0.01 * rng.random(60)
    low, high = removal_curves(values, X[:60], y[:60], X[60:], y[60:], task="classification",
                               fractions=removal_fractions(0.2), factory=factory)
    assert low.shape == high.shape == (5,) and low[0] == high[0] and np.all((0 <= low) & (low <= 1))


def test_value_rows_rejects_bad_arguments():
    X, y = np.zeros((10, 2)), np.arange(10) % 2
    with pytest.raises(ValueError, match="too few"):
        value_rows(X, y, task="classification", method="knn-shapley", val_size=6)
    with pytest.raises(ValueError, match="classification only"):
        value_rows(X, y.astype(float), task="regression", method="knn-shapley", val_size=2)
    with pytest.raises(ValueError, match="epochs"):
        MethodOptions(epochs=0)
    X, y = np.random.default_rng(0).normal(size=(40, 2)), np.arange(40) % 2
    with pytest.raises(ValueError, match="nproc must be an integer >= 1, got 0"):
        value_rows(X, y, task="classification", method="lossval", val_size=5, nproc=0)
    with pytest.raises(ValueError, match="knn-shapley runs in one process"):
        value_rows(X, y, task="classification", method="knn-shapley", val_size=5, nproc=2)


def test_collect_ratios_reads_ratio_cells_with_a_note(tmp_path):
    (tmp_path / "suite_cpu.md").write_text(
        "# a suite\n\n| shape | min / median | paired runs | inertia |\n|---|---|---|---|\n"
        "| 100x3 | 2.36x / 2.26x | 2.20x (1.94-2.38, 7 pairs) | 2.3e-06 |\n")
    ratios = cli.collect_ratios(tmp_path)
    assert [(r["comparison"], r["ratio"]) for r in ratios] == [("min / median", 2.36), ("paired runs", 2.2)]
