"""EcoVal over gloo processes: the values of one process."""
from __future__ import annotations

import os

import numpy as np
import torch

from lossval_fast import distributed


def _ecoval_data(seed=3, n=240):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] + 0.7 * rng.normal(size=n) > 0).astype(np.int64)
    Xv = rng.normal(size=(90, 5))
    yv = (Xv[:, 0] > 0).astype(np.int64)
    return X, y, Xv, yv


def _ecoval_ranks(folder):
    """On every rank: EcoVal over the ranks on the batched path (with a checkpoint) and the loop path."""
    from lossval_fast.valuation.ecoval import EcoVal
    from sklearn.linear_model import LogisticRegression

    X, y, Xv, yv = _ecoval_data()
    batched = distributed.fit(EcoVal(6, max_models_per_batch=4, verbose=False,
                                     checkpoint=os.path.join(folder, "eco.ckpt")), X, y, Xv, yv)
    loop = distributed.fit(EcoVal(4, LogisticRegression(max_iter=200), n_init=2, verbose=False), X, y, Xv, yv)
    files = sorted(os.listdir(folder))
    return (batched.values_, batched.n_trainings_, batched.utilities_, loop.values_, loop.n_trainings_, files,
            batched.cluster_labels_, batched.centroids_, batched.utility_points_)


def test_ecoval_over_two_gloo_processes_equals_one_process(tmp_path):
    """Each rank runs every other k-means restart (the best agreed over the ranks) and trains every other subset
    model; one all-gather merges utilities, LCO held-out outputs and
    models: the values of a single-process fit (bit for bit on the loop path; to rounding on the batched one,
    whose batches of models differ). Rank 0 leaves
    the merged checkpoint (the ranks' partial files are removed), which a single process resumes with no
    training; partial files of an interrupted run are merged on resume."""
    from lossval_fast.valuation.ecoval import EcoVal
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path / "run"
    folder.mkdir()
    values, trainings, utilities, loop_values, loop_trainings, files, labels, centroids, points = distributed.launch(
        2, _ecoval_ranks, str(folder))
    X, y, Xv, yv = _ecoval_data()
    single = EcoVal(6, max_models_per_batch=4, verbose=False).fit(X, y, Xv, yv)
    # k-means' 10 runs split 5 + 5 over the ranks: the run one process keeps
    assert np.array_equal(labels, single.cluster_labels_) and np.array_equal(centroids, single.centroids_)
    # the batches of models differ (each rank batches its own share): rounding only
    assert np.abs(values - single.values_).max() <= 1e-12 and np.abs(utilities - single.utilities_).max() <= 1e-12
    assert np.abs(points - single.utility_points_).max() <= 1e-12          # the per-validation-point record too
    assert trainings == single.n_trainings_ == 1 + 6 + 15
    loop = EcoVal(4, LogisticRegression(max_iter=200), n_init=2, verbose=False).fit(X, y, Xv, yv)
    assert np.array_equal(loop_values, loop.values_) and loop_trainings == loop.n_trainings_  # one fit at a time
    assert files == ["eco.ckpt"]
    resumed = EcoVal(6, max_models_per_batch=4, verbose=False, checkpoint=folder / "eco.ckpt").fit(X, y, Xv, yv)
    assert resumed.n_trainings_ == 0 and np.array_equal(resumed.values_, values)
    # an interrupted 2-rank run: rank 0's and rank 1's files each hold part of the trainings
    full = torch.load(folder / "eco.ckpt", weights_only=True)  # tensors and plain data only
    for rank, name in enumerate(["part.ckpt", "part.ckpt.rank1"]):
        share = {**full, "done": full["done"].clone()}
        share["done"][:, rank::2] = False
        torch.save(share, tmp_path / name)
    merged = EcoVal(6, max_models_per_batch=4, verbose=False, checkpoint=tmp_path / "part.ckpt").fit(X, y, Xv, yv)
    assert merged.n_trainings_ == 0 and np.array_equal(merged.values_, values)
