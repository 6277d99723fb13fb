"""Fuzzing the command line and the public API with malformed files and arguments (hypothesis).

The contract: the command either succeeds or ends with exactly one error line on stderr and exit status 1 or 2
(warnings, one line each, may come before it), never a traceback and never an "internal error"; the API either
works or raises ValueError or TypeError. The commands run in-process (lossval_fast.cli.main) on small inputs, so
the whole file takes well under a minute.
"""
import gzip
import io
import math
import os
import string
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossval_fast import LossVal, SinkhornLoss, cli
from lossval_fast.valuation import EcoVal, KNNShapley

# FUZZ_EXAMPLES=1000 for a longer hunt; 100 each keeps the file near 20 s
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 100)), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FAST = ["--method", "knn-shapley", "--quiet"]  # the command's whole path, with the quickest method

WORK = Path(tempfile.mkdtemp(prefix="lossval-fuzz-"))


def check_command(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 0:
        return code
    lines = err.strip().splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert code in (1, 2), (code, err)
    assert len(errors) == 1 and lines[-1] == errors[0] and lines[-1].startswith("lossval-fast"), err
    assert all(line.startswith("lossval-fast: warning: ") for line in lines[:-1]), err
    return code


# ------------------------------------------------------------------------------------------------ files
cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 5).map(str),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "-1e308", "1e-320", "abc", '"q,uoted"', '"', "0x10",
                     "١٢", "1,5", "\t7"]),
    st.text(string.printable, max_size=6),
)


@st.composite
def csv_texts(draw):
    columns = draw(st.integers(1, 4))
    header = draw(st.one_of(
        st.just(["a", "b", "c", "d"][: columns - 1] + ["target"]),
        st.lists(st.sampled_from(["a", "target", "", "b", "a"]), min_size=1, max_size=4)))
    rows = draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header) + draw(st.integers(0, 1))),
                         max_size=30))
    if draw(st.booleans()):  # mostly numeric rows, so that the later checks are reached too
        rows += [[str(draw(st.integers(0, 9)) if name != "target" else draw(st.integers(0, 1))) for name in header]
                 for _ in range(draw(st.integers(0, 40)))]
    return ",".join(header) + "\n" + "".join(",".join(row) + "\n" for row in rows)


@st.composite
def damaged_files(draw):
    """(file name, bytes): CSV text, gzip CSV (whole, truncated or with flipped bytes), NPZ (odd arrays, truncated),
    or random bytes under any of those names."""
    kind = draw(st.sampled_from(["csv", "gz", "gz-cut", "gz-flip", "npz", "npz-cut", "bytes"]))
    if kind == "csv":
        return "data.csv", draw(csv_texts()).encode()
    if kind.startswith("gz"):
        raw = gzip.compress(draw(csv_texts()).encode() * 3)
        if kind == "gz-cut":
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif kind == "gz-flip":
            raw = bytearray(raw)
            for position in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
                raw[position] ^= 0xFF
            raw = bytes(raw)
        return "data.csv.gz", raw
    if kind.startswith("npz"):
        n = draw(st.integers(0, 30))
        arrays = {}
        if draw(st.booleans()):
            shape = draw(st.sampled_from([(n, 3), (n,), (n, 2, 2), (n + 1, 3), (n, 0)]))
            arrays["X"] = draw(st.sampled_from([np.float64, np.float32, np.int8, np.bool_, np.complex64, "U3"]))
            arrays["X"] = np.zeros(shape, dtype=arrays["X"]) if arrays["X"] != "U3" else np.full(shape, "a")
            if arrays["X"].dtype.kind == "f" and arrays["X"].size:
                arrays["X"].flat[0] = draw(st.sampled_from([0.0, np.nan, np.inf, 1e300, -1e308]))
        if draw(st.booleans()):
            arrays["y"] = draw(st.sampled_from([np.arange(n) % 2, np.arange(n) * 0.5, np.array(["a"] * n),
                                                np.zeros((n, 2))]))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        raw = buffer.getvalue()
        if kind == "npz-cut":
            raw = raw[: draw(st.integers(0, len(raw)))]
        return "data.npz", raw
    name = draw(st.sampled_from(["data.csv", "data.csv.gz", "data.npz", "data.txt"]))
    return name, draw(st.binary(max_size=200))


@FUZZ
@given(file=damaged_files(), as_validation=st.booleans())
def test_command_on_damaged_files(file, as_validation, capsys):
    name, raw = file
    path = WORK / name
    path.write_bytes(raw)
    good = WORK / "good.csv"
    if not good.exists():
        rng = np.random.default_rng(0)
        good.write_text("a,b,target\n" + "".join(f"{a:.4f},{b:.4f},{int(a > 0)}\n" for a, b in rng.normal(size=(40, 2))))
    data = ["value", good, "--val", path] if as_validation else ["value", path]
    check_command(data + FAST + ["--out", WORK / "values.csv"], capsys)


# ------------------------------------------------------------------------------------------------ arguments
numbers = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["0", "1e20", "nan", "inf", "-1", "1.5", "", "x",
                                                                  "100000000000000000000", "0x1", " 2", "1_0"]))
OPTIONS = {
    "value": ["--val-size", "--show", "--k", "--seed", "--threads", "--nproc", "--epochs", "--lr", "--batch-size",
              "--clusters", "--target", "--task", "--method", "--device", "--learner", "--diameter"],
    "evaluate": ["--rate", "--runs", "--train", "--valid", "--test", "--removal-max", "--methods", "--seed", "--k",
                 "--noise", "--task", "--target"],
}


@FUZZ
@given(command=st.sampled_from(sorted(OPTIONS)), picks=st.lists(st.tuples(st.integers(0, 15), numbers), max_size=3),
       flag=st.sampled_from([[], ["--one-hot"], ["--bogus"], ["--val", "missing.csv"]]))
def test_command_with_malformed_arguments(command, picks, flag, capsys):
    good = WORK / "args.csv"
    if not good.exists():
        rng = np.random.default_rng(1)
        good.write_text("a,b,target\n" + "".join(f"{a:.4f},{b:.4f},{int(a > 0)}\n" for a, b in rng.normal(size=(40, 2))))
    argv = [command, good, "--quiet", "--out", WORK / f"{command}-out"]
    if command == "value":
        argv += ["--method", "knn-shapley"]
    else:
        argv += ["--methods", "random", "--train", "20", "--valid", "5"]
    options = OPTIONS[command]
    for index, value in picks:
        argv += [options[index % len(options)], value]
    if command == "evaluate" and flag[:1] == ["--val"]:
        flag = []
    check_command(argv + flag, capsys)


# ------------------------------------------------------------------------------------------------ API
odd_values = st.one_of(st.integers(-2, 2), st.sampled_from([0.0, -1.0, 1.0, 0.5, math.nan, math.inf, None, "x", True,
                                                            np.int64(1), np.float32(0.5), 1e300, [1]]))


@FUZZ
@given(name=st.sampled_from(["epochs", "batch_size", "lr", "blur", "scaling", "diameter", "task", "dtype",
                             "model_output", "max_steps"]),
       value=odd_values, reverse=st.booleans())
def test_lossval_parameters(name, value, reverse):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 2)), np.arange(12) % 2
    if reverse:
        X, y = X[::-1], y[::-1]
    kwargs = {"epochs": 1, name: value} if name != "epochs" or (isinstance(value, int) and value < 3) else {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = LossVal(verbose=False, random_state=0, **kwargs).fit(X, y, X[:4], y[:4]).values_
    except (ValueError, TypeError) as error:
        assert "np." not in str(error), error
        return
    assert values.shape == (12,)
    # a diverged fit (a huge lr) is said so, never silent
    assert np.all(np.isfinite(values)) or any("non-finite" in str(w.message) for w in caught)


arrays = st.one_of(
    st.just(np.zeros((0, 2))), st.just(np.zeros((5, 0))), st.just(np.ones(5)), st.just(np.full((5, 2), np.nan)),
    st.just(np.array([["a", "b"]] * 5)), st.just(np.ones((5, 2, 1))), st.just(np.ones((4, 2))),
    st.just(np.random.default_rng(0).normal(size=(10, 2))[::-1]), st.just([[1, 2]] * 5), st.just(None),
    st.just(np.full((5, 2), 1e308)), st.just(torch.ones(5, 2)))


@pytest.mark.filterwarnings("ignore::UserWarning")  # EcoVal raising a too small n_clusters, dropping empty clusters
@FUZZ
@given(method=st.sampled_from(["lossval", "ecoval", "knn"]), X=arrays, labels=st.sampled_from(
    [np.arange(10) % 2, np.arange(5) % 2, np.ones(10), np.array(["a", "b"] * 5), np.arange(10) * 0.5, None]))
def test_estimators_with_malformed_arrays(method, X, labels):
    rng = np.random.default_rng(0)
    X_val, y_val = rng.normal(size=(6, 2)), np.arange(6) % 2
    estimator = {"lossval": lambda: LossVal(epochs=1, verbose=False, random_state=0),
                 "ecoval": lambda: EcoVal(n_clusters=2, random_state=0, verbose=False),
                 "knn": lambda: KNNShapley(k=2)}[method]()
    try:
        estimator.fit(X, labels, X_val, y_val)
    except (ValueError, TypeError):
        return
    # accepted: one finite value per training row (nothing silently NaN)
    values = np.asarray(estimator.values_, dtype=np.float64)
    assert values.shape == (len(X),) and np.isfinite(values).all()


@FUZZ
@given(shape_x=st.sampled_from([(0, 5, 2), (2, 0, 2), (4, 2), (4, 0), (1, 4, 2), (4,), (4, 3)]),
       blur=st.sampled_from([0.05, 0, -1, math.nan, 1e5, 1e12, "x", None, np.float64(0.1)]),
       scaling=st.sampled_from([0.5, 1.0, 0, -0.5, math.nan, np.float32(0.9)]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.int64]),
       scale=st.sampled_from([1.0, 1e13, 1e25, 1e-30]), geomloss=st.booleans())
def test_sinkhorn_loss_with_malformed_inputs(shape_x, blur, scaling, dtype, scale, geomloss):
    x = (torch.randn(shape_x, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale).to(dtype)
    y = x.flip(-2) + 1 if x.dim() >= 2 and x.shape[-2] else x
    try:
        loss = SinkhornLoss("sinkhorn", p=2, blur=blur, scaling=scaling) if geomloss else \
            SinkhornLoss(blur=blur, scaling=scaling)
        value = loss(x, y)
    except (ValueError, TypeError):
        return
    assert torch.isfinite(value).all(), value
