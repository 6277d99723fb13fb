"""Loaders: the bundled demo set and CSV/CSV.GZ/NPZ files with a `target` column."""
from __future__ import annotations

import csv
import errno
import gzip
import os
import re
import zipfile
import zlib
from importlib import resources

import numpy as np


def load_bundled_pol() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 4,000-row subset of `pol` (48 features, binary target); see lossval_fast/data/README.md."""
    import gzip

    with resources.files("lossval_fast.data").joinpath("pol_4000.csv.gz").open("rb") as raw:
        with gzip.open(raw, "rt") as text:
            header = text.readline().strip().split(",")
            table = np.loadtxt(text, delimiter=",", dtype=np.float64)
    target = header.index("target")
    features = np.delete(table, target, axis=1).astype(np.float32)
    return features, table[:, target].astype(np.int64)


# The offline copies in shared/data (see its README): file name and task of each OpenDataVal/LossVal benchmark set.
SHARED_DATASETS = {
    "2dplanes": ("2dplanes.csv.gz", "classification"),
    "pol": ("pol.csv.gz", "classification"),
    "electricity": ("electricity.csv.gz", "classification"),
    "adult": ("adult.csv.gz", "classification"),
    "kin8nm": ("kin8nm.csv.gz", "regression"),
    "cpu_activity": ("cpu_activity.csv.gz", "regression"),
    "mnist": ("mnist.npz", "classification"),
    "fashion_mnist": ("fashion_mnist.npz", "classification"),
}

_INTEGER = re.compile(r"[+-]?\d+\Z")


def openml_task(name: str) -> str:
    """The task, "classification" or "regression", of a shared data set (case-insensitive; "-" is read as "_").

    Known names: 2dplanes, pol, electricity, adult, mnist, fashion_mnist (classification); kin8nm, cpu_activity
    (regression). Any other name raises ValueError listing them.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in SHARED_DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(SHARED_DATASETS)}")
    return SHARED_DATASETS[key][1]


def _open_text(path: str):
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return open(path, newline="", encoding="utf-8")


def _read_csv(path: str) -> tuple[list[str], list[tuple[str, ...]]]:
    """Header and columns (tuples of stripped strings) of a CSV or gzip CSV file."""
    with _open_text(path) as text:
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header row")
        header = [name.strip() for name in header]
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise ValueError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
            rows.append([cell.strip() for cell in row])
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ValueError(f"{path}: duplicated column names: {', '.join(duplicated)}")
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return header, list(zip(*rows))


def _numeric(column: tuple[str, ...]):
    """The column as float64, or None when some cell is not a number."""
    try:
        return np.array(column, dtype=np.float64)
    except ValueError:
        return None


def _load_csv(path: str, target: str, encode_categorical: bool, dtype):
    header, columns = _read_csv(path)
    if target not in header:
        raise ValueError(f"{path}: no target column {target!r}; columns: {', '.join(header)}")
    for name, column in zip(header, columns):
        empty = sum(1 for cell in column if cell == "")
        if empty:
            raise ValueError(f"{path}: column {name!r} has {empty} empty cells (missing values are not supported)")

    y_column = columns[header.index(target)]
    y = _numeric(y_column)
    if y is None:
        y = np.array(y_column)
    elif all(_INTEGER.match(cell) for cell in y_column):
        y = np.array([int(cell) for cell in y_column], dtype=np.int64)

    numeric, categorical = [], []
    for name, column in zip(header, columns):
        if name == target:
            continue
        values = _numeric(column)
        if values is None:
            categorical.append((name, column))
        else:
            numeric.append((name, values))
    if categorical and not encode_categorical:
        names = ", ".join(name for name, _ in categorical)
        raise ValueError(f"{path}: non-numeric feature columns: {names}. Pass encode_categorical=True to one-hot "
                         f"encode them")
    blocks = [values[:, None] for _, values in numeric]
    feature_names = [name for name, _ in numeric]
    for name, column in categorical:
        cells = np.array(column)
        categories, codes = np.unique(cells, return_inverse=True)
        blocks.append(np.eye(len(categories))[codes.reshape(-1)])
        feature_names += [f"{name}_{category}" for category in categories.tolist()]
    n = len(y_column)
    X = np.hstack(blocks).astype(dtype, copy=False) if blocks else np.zeros((n, 0), dtype=dtype)
    return X, y, feature_names


def _plain_labels(y: np.ndarray) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        return y.astype(np.float64)
    return y


def _open_npz(path: str):
    with open(path, "rb") as raw:
        magic = raw.read(4)
    if magic[:2] != b"PK":  # np.load would try it as a .npy, or speak of pickles
        raise ValueError(f"{path}: cannot read the file: not an .npz (zip) archive (it starts with {magic!r}, "
                         "expected b'PK')")
    return np.load(path, allow_pickle=False)


def _load_npz(path: str, dtype):
    with _open_npz(path) as archive:
        names = set(archive.files)

        def read(name):
            try:
                return archive[name]
            except ValueError as error:  # object arrays (pickles), a damaged member
                raise ValueError(f"{path}: cannot read array {name!r}: {' '.join(str(error).split())}") from None

        if {"X", "y"} <= names:
            X, y = read("X"), read("y")
        elif {"x_train", "y_train", "x_test", "y_test"} <= names:
            X = np.concatenate([read("x_train"), read("x_test")])
            y = np.concatenate([read("y_train"), read("y_test")])
        else:
            raise ValueError(f"{path}: expected arrays 'X' and 'y', or 'x_train', 'y_train', 'x_test' and 'y_test'; "
                             f"found: {', '.join(sorted(names)) or 'none'}")
    for name, array in (("X", X), ("y", y)):
        if array.dtype.kind not in "biuf" and not (name == "y" and array.dtype.kind == "U"):
            raise ValueError(f"{path}: array {name!r} has dtype {array.dtype}, expected numbers"
                             + (" or text labels" if name == "y" else ""))
    if X.ndim < 1 or y.ndim < 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{path}: features and labels disagree in length: shapes {X.shape} and {y.shape}")
    X = X.reshape(X.shape[0], -1).astype(dtype)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    return X, _plain_labels(y), [f"x{i}" for i in range(X.shape[1])]


def load_table(path, target: str = "target", *, encode_categorical: bool = False, dtype=np.float64):
    """Read a data table: returns (X, y, feature_names).

    Formats, by file name: `.csv` or `.csv.gz` (gzip is detected from the content, not the name), `.npz`.

    CSV (first row is the header; cells are stripped of surrounding blanks; blank lines are skipped):
      - `target` names the label column; every other column is a feature, in file order.
      - y: int64 if every target cell is an integer literal ("0", "-3"), float64 if every cell is a number,
        otherwise the strings (a numpy str array).
      - X: dtype (float64 by default) of shape (n, n_features). A column is numeric when every cell parses as a
        float. Non-numeric feature columns are never encoded silently: they raise ValueError listing their names,
        unless encode_categorical=True, which one-hot encodes each of them (0/1 columns, categories in sorted
        order, named "<column>_<category>"), with the layout of pandas.get_dummies as OpenDataVal's adult loader
        uses it: the numeric columns first, in file order, then each categorical column's indicators in file order.
    NPZ: arrays `X` and `y`, or `x_train, y_train, x_test, y_test` concatenated (train rows first). Features are
      flattened to (n, prod(feature_shape)) (images: pixels row-major) and named x0, x1, ...; integer labels become
      int64, float labels float64. `target` and `encode_categorical` do not apply.

    Raises FileNotFoundError (with the path) when the file does not exist; ValueError for a missing target column
    (naming it and listing the columns), non-numeric feature columns without encode_categorical, empty cells,
    rows with the wrong number of fields, duplicated column names, a file without data rows, NPZ files without
    the expected arrays, and file names of other formats.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "data file not found", path)
    lower = path.lower()
    if lower.endswith(".npz"):
        reader = lambda: _load_npz(path, dtype)
    elif lower.endswith(".csv") or lower.endswith(".csv.gz"):
        reader = lambda: _load_csv(path, target, encode_categorical, dtype)
    else:
        raise ValueError(f"{path}: unsupported file type; expected .csv, .csv.gz or .npz")
    try:
        return reader()
    except _CORRUPT as error:
        raise ValueError(f"{path}: cannot read the file: {_corruption(error)}") from error


# What a damaged file raises from the readers' depths (zlib, zipfile, csv, the decoders), each turned into one
# ValueError naming the file; a message ValueError of our own passes through unchanged.
_CORRUPT = (zlib.error, zipfile.BadZipFile, csv.Error, EOFError, UnicodeDecodeError, gzip.BadGzipFile)


def _corruption(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, zlib.error):
        return f"corrupt gzip data ({text})"
    if isinstance(error, (zipfile.BadZipFile, EOFError)):
        return f"truncated or not an .npz (zip) archive ({text or type(error).__name__})"
    if isinstance(error, csv.Error) and "field larger than field limit" in text:
        return (f"a field is longer than {csv.field_size_limit():,} characters, the CSV reader's limit "
                "(is it a CSV file, with matching quotes?)")
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text ({text})"
    return f"{type(error).__name__}: {text}"
