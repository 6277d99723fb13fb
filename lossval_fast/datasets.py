"""Loaders: the bundled demo set and CSV/CSV.GZ/NPZ files with a `target` column."""
from __future__ import annotations

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
