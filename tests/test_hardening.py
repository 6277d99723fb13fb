"""Hostile inputs and faults (issue 15): damaged files, huge but finite numbers, bad parameters, dead workers,
interrupted or impossible writes, closed pipes, Sinkhorn at extreme scales, and geomloss' calling conventions.
Every failure is one line and a non-zero exit (the command) or a ValueError/TypeError naming the argument, what
was seen and what was expected (the API); never a traceback, a NaN or a wrong number."""
import gzip
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from geomloss import SamplesLoss

from lossval_fast import LossVal, SinkhornLoss, cli, distributed, ops
from lossval_fast._io import atomic_write
from lossval_fast.datasets import load_table
from lossval_fast.evaluation import MethodOptions, value_rows
from lossval_fast.valuation.splits import zscore

HERE = Path(__file__).resolve().parent


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, expected_code, *needles):
    assert code == expected_code, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_table(path, X, y, compress=False):
    text = "a,b,c,target\n" + "".join(",".join(repr(float(v)) for v in row) + f",{t}\n"
                                      for row, t in zip(X.tolist(), y.tolist()))
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    f = {"dir": d, "X": X, "y": y}
    f["ok"] = write_table(d / "ok.csv", X, y)
    raw = bytearray(gzip.compress(f["ok"].read_bytes() * 20))
    for k in range(200, 208):
        raw[k] ^= 0xFF                                            # a damaged deflate stream: zlib.error
    (d / "corrupt.csv.gz").write_bytes(bytes(raw))
    f["corrupt"] = d / "corrupt.csv.gz"
    np.savez(d / "ok.npz", X=X, y=y)
    whole = (d / "ok.npz").read_bytes()
    (d / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    (d / "garbage.npz").write_bytes(b"hello, this is not a zip archive" * 4)
    (d / "zipgarbage.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    f.update(truncated=d / "truncated.npz", garbage=d / "garbage.npz", zipgarbage=d / "zipgarbage.npz")
    f["long"] = d / "long.csv"
    f["long"].write_text("a,target\n" + "1" * 140_000 + ",0\n")
    big = X.copy()
    big[0, 1] = 1e300
    f["big"] = write_table(d / "big.csv", big, y)
    huge = X.copy()
    huge[:, 2] = np.sign(huge[:, 2]) * 1e308
    f["huge"] = write_table(d / "huge.csv", huge, y)
    f["bigy"] = write_table(d / "bigy.csv", X, X[:, 0] * 1e300)
    f["one_class"] = write_table(d / "one_class.csv", X, np.ones(60, dtype=int))
    return f


# ------------------------------------------------------------------------------------------------ damaged files
@pytest.mark.parametrize("args,needle", [
    (["{corrupt}"], "corrupt gzip data"),
    (["{ok}", "--val", "{corrupt}"], "corrupt gzip data"),
    (["{truncated}"], "not an .npz"),
    (["{zipgarbage}"], "not an .npz"),
    (["{garbage}"], "not an .npz (zip) archive"),
    (["{long}"], "longer than 131,072 characters"),
])
def test_damaged_files_are_one_line(data, capsys, args, needle):
    fill = {k: str(v) for k, v in data.items()}
    code, _, err = run(capsys, "value", *[a.format(**fill) for a in args], "--quiet", "--out",
                       data["dir"] / "never.csv")
    assert_one_line(code, err, 1, needle)
    assert not (data["dir"] / "never.csv").exists()


def test_damaged_files_raise_value_error_naming_the_file(data):
    for key in ("corrupt", "truncated", "garbage", "zipgarbage", "long"):
        with pytest.raises(ValueError, match=str(data[key].name)):
            load_table(data[key])


# ------------------------------------------------------------------------------------------------ outputs
def test_atomic_write_keeps_the_previous_file_on_an_interrupt(tmp_path):
    target = tmp_path / "values.csv"
    target.write_text("previous\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as f:
            f.write("row,value\n" + "0,1.0\n" * 1000)
            raise KeyboardInterrupt
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["values.csv"]        # no temporary file left
    with atomic_write(target) as f:
        f.write("new\n")
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_interrupted_value_leaves_the_previous_output(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "values.csv"
    out.write_text("previous\n")
    real = atomic_write

    class Interrupted(KeyboardInterrupt):
        pass

    def failing(path, *args, **kwargs):
        class Writer:
            def __enter__(self):
                self.inner = real(path, *args, **kwargs)
                self.f = self.inner.__enter__()
                return self

            def write(self, text):
                self.f.write(text)
                if text.startswith("30,"):
                    raise Interrupted

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)
        return Writer()

    monkeypatch.setattr(cli, "atomic_write", failing)
    code, _, err = run(capsys, "value", data["ok"], "--method", "knn-shapley", "--out", out, "--quiet")
    assert code == 130 and "interrupted" in err
    assert out.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["values.csv"]


def test_bad_output_path_fails_before_the_fit(data, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("lossval_fast.evaluation.value_rows", lambda *a, **k: calls.append(1))
    blocker = tmp_path / "file"
    blocker.write_text("")
    for option in ("--out", "--plot"):
        code, _, err = run(capsys, "value", data["ok"], option, blocker / "v.csv", "--quiet")
        assert_one_line(code, err, 1, f"{option} {blocker / 'v.csv'}", "cannot write there")
    code, _, err = run(capsys, "value", data["ok"], "--out", tmp_path, "--quiet")
    assert_one_line(code, err, 1, "is a folder")
    code, _, err = run(capsys, "evaluate", data["ok"], "--out", blocker, "--quiet")
    assert_one_line(code, err, 1, "is a file, expected a folder")
    assert calls == []


def test_evaluate_writes_every_output_through_the_temporary_file(data, tmp_path, capsys, monkeypatch):
    import lossval_fast.evaluation as evaluation

    written = []
    real = evaluation.atomic_write

    def spy(path, *args, **kwargs):
        written.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(evaluation, "atomic_write", spy)
    code, _, err = run(capsys, "evaluate", data["ok"], "--train", "30", "--valid", "10", "--runs", "1",
                       "--methods", "random", "--out", tmp_path / "r", "--quiet")
    assert code == 0, err
    assert sorted(written) == ["discovery.png", "removal.png", "report.md", "results.json"]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(written)


def test_piping_into_head_exits_quietly(data, tmp_path):
    rows = np.random.default_rng(1).normal(size=(3000, 3))
    path = write_table(tmp_path / "many.csv", rows, (rows[:, 0] > 0).astype(int))
    command = (f"{sys.executable} -m lossval_fast value {path} --method knn-shapley --show 3000 --quiet "
               f"--out {tmp_path / 'v.csv'} | head -n 2")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=300,
                          cwd=HERE)
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 2
    assert proc.returncode in (0, 141)


# ------------------------------------------------------------------------------------------------ dead workers
def _die_on_rank_one():
    import torch.distributed as dist

    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()
    return 1


def test_killed_worker_names_its_rank():
    with pytest.raises(distributed.WorkerError, match=r"rank 1 of 2 .* killed by SIGKILL") as failure:
        distributed.launch(2, _die_on_rank_one)
    assert failure.value.rank == 1 and failure.value.signal_name == "SIGKILL"


def test_killed_worker_is_one_line_and_nothing_is_written(data, tmp_path, capsys, monkeypatch):
    def dies(nproc, fn, *args, **kwargs):
        raise distributed.WorkerError(1, nproc, 4242, -9, "SIGKILL")

    monkeypatch.setattr(distributed, "launch", dies)
    out = tmp_path / "values.csv"
    code, _, err = run(capsys, "value", data["ok"], "--nproc", "2", "--epochs", "1", "--out", out, "--quiet")
    assert_one_line(code, err, 1, "rank 1 of 2", "SIGKILL", "nothing was written")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ numbers
def test_a_huge_cell_does_not_zero_its_column():
    X = np.random.default_rng(0).normal(size=(50, 2))
    plain = zscore(X)
    X[0, 1] = 1e300
    z = zscore(X)
    assert np.all(np.isfinite(z)) and np.array_equal(z[:, 0], plain[:, 0])     # other columns: the same bits
    assert z[0, 1] == pytest.approx(7.0, rel=1e-6)          # one outlier among 50: (1 - 1/50) / sqrt(49) * 50 = 7
    assert np.std(z[:, 1]) == pytest.approx(1.0, rel=1e-6)
    column = X[:, 1] / 1e300                                 # in range; the 1e-8 / 1e300 is below rounding
    np.testing.assert_allclose(z[:, 1], (column - column.mean()) / column.std(), rtol=1e-12)


@pytest.mark.parametrize("key,method", [("big", "knn-shapley"), ("huge", "lossval"), ("bigy", "ecoval")])
def test_huge_finite_numbers_are_valued(data, tmp_path, capsys, key, method):
    extra = ["--task", "regression"] if key == "bigy" else []
    code, _, err = run(capsys, "value", data[key], "--method", method, "--epochs", "1", "--clusters", "3", *extra,
                       "--out", tmp_path / "v.csv", "--quiet")
    assert code == 0, err
    assert "NaN" not in err
    values = np.array([float(line.split(",")[2]) for line in (tmp_path / "v.csv").read_text().splitlines()[1:]])
    assert len(values) == 60 and np.all(np.isfinite(values)) and np.ptp(values) > 0


def test_regression_target_near_1e300_is_not_a_constant(data):
    y = data["X"][:, 0] * 1e300
    result = value_rows(data["X"], y, task="regression", method="lossval", val_size=6,
                        options=MethodOptions(epochs=1))
    assert np.all(np.isfinite(result["values"])) and np.ptp(result["values"]) > 0


def test_lossval_refuses_finite_features_that_overflow_by_name():
    X = np.random.default_rng(0).normal(size=(20, 2))
    y = np.arange(20) % 2
    X[3, 1] = 1e30
    with pytest.raises(ValueError, match=r"X holds a value of magnitude 1e\+30; in float32 .* standardise"):
        LossVal(epochs=1, verbose=False).fit(X, y, X[:5] * 0, y[:5])


# ------------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("kwargs,needle", [
    (dict(blur=-1), "blur must be a finite number > 0, got -1"),
    (dict(blur=0), "blur must be a finite number > 0, got 0"),
    (dict(blur=float("nan")), "blur must be a finite number > 0, got nan"),
    (dict(scaling=1.0), "scaling must be a number in the open interval (0, 1)"),
    (dict(scaling=0), "scaling must be a number in the open interval (0, 1)"),
    (dict(epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(epochs=np.int64(0)), "epochs must be an integer >= 1, got 0"),
    (dict(batch_size=np.int64(0)), "batch_size must be an integer >= 1, got 0"),
    (dict(lr=np.float64(-1)), "lr must be a finite number > 0, got -1.0"),
])
def test_lossval_parameters_are_checked_by_name(kwargs, needle):
    X = np.random.default_rng(0).normal(size=(12, 2))
    y = np.arange(12) % 2
    with pytest.raises(ValueError) as error:
        LossVal(verbose=False, **kwargs).fit(X, y, X, y)
    assert needle in str(error.value) and "np." not in str(error.value)


def test_numpy_integers_are_integers():
    X = np.random.default_rng(0).normal(size=(12, 2))
    y = np.arange(12) % 2
    est = LossVal(epochs=np.int64(1), batch_size=np.int32(4), verbose=False, random_state=0).fit(X, y, X, y)
    plain = LossVal(epochs=1, batch_size=4, verbose=False, random_state=0).fit(X, y, X, y)
    assert est.n_steps_ == plain.n_steps_ == 3
    np.testing.assert_array_equal(est.values_, plain.values_)


def test_negative_strides_are_copied_not_refused():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(24, 3)), np.arange(24) % 2
    forward = LossVal(epochs=2, verbose=False, random_state=0).fit(X[::-1].copy(), y[::-1].copy(), X, y).values_
    reverse = LossVal(epochs=2, verbose=False, random_state=0).fit(X[::-1], y[::-1], X[:, ::-1][:, ::-1], y).values_
    np.testing.assert_array_equal(forward, reverse)


def test_seed_out_of_range_is_a_usage_error(data, capsys):
    for seed in ("1e20", "100000000000000000000", "-1"):
        code, _, err = run(capsys, "value", data["ok"], "--seed", seed)
        assert_one_line(code, err, 2, "argument --seed", "0..4294967295")
    code, _, err = run(capsys, "evaluate", data["ok"], "--seed", "4294967295", "--runs", "2")
    assert_one_line(code, err, 2, "argument --seed", "at most 4294967294")


def test_messages_print_plain_numbers(data, capsys):
    code, _, err = run(capsys, "value", data["one_class"], "--quiet")
    assert_one_line(code, err, 1, "single class (1)")
    assert "np." not in err


# ------------------------------------------------------------------------------------------------ Sinkhorn
def two_clouds(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = torch.randn(60, 3, generator=g, dtype=torch.float64) + 0.2
    return x.to(dtype), y.to(dtype)


def test_empty_batch_is_a_clear_error():
    x = torch.zeros(0, 5, 2)
    with pytest.raises(ValueError, match=r"at least one problem \(B >= 1\), got shapes \(0, 5, 2\)"):
        SinkhornLoss()(x, x)


@pytest.mark.parametrize("cost", ["online", "stored"])
def test_huge_scale_float64_gives_the_torch_value_not_nan(cost):
    x, y = two_clouds()
    expected = SinkhornLoss(blur=0.05, backend="torch")(x * 3e13, y * 3e13).item()
    ours = SinkhornLoss(blur=0.05, backend="cpp", cost=cost)(x * 3e13, y * 3e13).item()
    assert np.isfinite(ours) and ours == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("blur", [1e3, 1e5])
def test_large_blur_in_float32_gives_the_float64_value(backend, blur):
    x, y = two_clouds()
    exact = SamplesLoss("sinkhorn", p=2, blur=blur, backend="tensorized")(x, y).item()
    limit = 0.5 * float(((x.mean(0) - y.mean(0)) ** 2).sum())
    assert exact == pytest.approx(limit, rel=1e-4)           # the large-blur limit, ½|mean x - mean y|²
    x32, y32 = x.float().requires_grad_(), y.float()
    value = SinkhornLoss(blur=blur, backend=backend)(x32, y32)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(exact, rel=3e-5)  # float64 resolution
    value.backward()
    assert x32.grad.dtype == torch.float32 and torch.isfinite(x32.grad).all()


def test_blur_beyond_float64_resolution_is_refused():
    x, y = two_clouds()
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(ValueError, match=r"blur=1e\+10 is .* times the diameter .* use blur <="):
            SinkhornLoss(blur=1e10)(x.to(dtype), y.to(dtype))


def test_overflowing_costs_are_an_error_not_nan():
    x, y = two_clouds(torch.float32)
    with pytest.raises(ValueError, match="not finite for finite points"):
        SinkhornLoss(blur=0.05)(x * 1e25, y * 1e25)


# ------------------------------------------------------------------------------------------------ geomloss users
def test_geomloss_spelling_with_the_loss_name():
    x, y = two_clouds()
    expected = SamplesLoss("sinkhorn", p=2, blur=0.1, scaling=0.7, backend="tensorized")(x, y)
    for loss in (SinkhornLoss("sinkhorn", p=2, blur=0.1, scaling=0.7), SinkhornLoss("sinkhorn", 2, 0.1, scaling=0.7),
                 SinkhornLoss(0.1, 0.7)):
        assert loss(x, y).item() == pytest.approx(expected.item(), rel=1e-10)
    with pytest.raises(ValueError, match="loss must be 'sinkhorn'.*got 'energy'"):
        SinkhornLoss("energy", blur=0.1)
    with pytest.raises(ValueError, match="reach=1.0 is not supported"):
        SinkhornLoss("sinkhorn", p=2, blur=0.1, reach=1.0)
    with pytest.raises(ValueError, match="p must be 2"):
        SinkhornLoss("sinkhorn", p=1, blur=0.1)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        SinkhornLoss("sinkhorn", bluur=0.1)


@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
def test_a_callable_cost_is_refused_not_ignored(backend):
    x, y = two_clouds()
    with pytest.raises(ValueError, match="custom cost functions are not supported"):
        SinkhornLoss("sinkhorn", p=2, blur=0.1, cost=lambda a, b: ((a[:, None] - b[None]) ** 2).sum(-1),
                     backend=backend)
    with pytest.raises(ValueError, match="custom cost functions are not supported"):
        ops.sinkhorn_divergence(torch.ones(50, dtype=torch.float64) / 50, x, torch.ones(60, dtype=torch.float64) / 60,
                                y, cost=lambda a, b: a @ b.T, backend=backend)


@pytest.mark.parametrize("debias", [True, False])
def test_double_backward_is_refused_by_the_compiled_backend(debias):
    x, y = two_clouds()
    x.requires_grad_()
    value = SinkhornLoss(blur=0.1, debias=debias, backend="cpp")(x, y)
    (grad,) = torch.autograd.grad(value, x)                             # a plain gradient still works
    value = SinkhornLoss(blur=0.1, debias=debias, backend="cpp")(x, y)
    with pytest.raises(RuntimeError, match="double backward .* not supported .* use backend='torch'"):
        torch.autograd.grad(value, x, create_graph=True)


@pytest.mark.parametrize("debias", [True, False])
def test_double_backward_with_the_torch_backend_matches_geomloss(debias):
    x, y = two_clouds()
    v = torch.randn_like(x)

    def hvp(loss):
        xr = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss(xr, y), xr, create_graph=True)
        (h,) = torch.autograd.grad((grad * v).sum(), xr)
        return grad.detach(), h

    ours = hvp(SinkhornLoss("sinkhorn", p=2, blur=0.1, debias=debias, backend="torch"))
    theirs = hvp(SamplesLoss("sinkhorn", p=2, blur=0.1, debias=debias, backend="tensorized"))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
