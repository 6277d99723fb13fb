"""`ranks=` passed explicitly (base.Ranks): k-means' restarts and EcoVal's trainings spread over ranks give the
result of one process. The ranks here are threads of this process (a barrier and a shared slot per rank), so the
protocol is tested without a process group; test_ecoval_ranks and test_data_parallel run it over gloo."""
from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from lossval_fast import ops
from lossval_fast.base import Ranks
from lossval_fast.ops.kmeans import KMeans
from lossval_fast.valuation.ecoval import EcoVal
from lossval_fast.valuation.lossval import LossVal


class ThreadRanks(Ranks):
    """Rank `rank` of `world` threads; objects cross as copies, as they would pickled."""

    def __init__(self, rank, world, shared):
        self.rank, self.world, self.shared = rank, world, shared

    def barrier(self):
        self.shared["barrier"].wait(timeout=120)

    def all_gather(self, obj):
        self.shared["calls"][self.rank] += 1
        self.shared["slots"][self.rank] = copy.deepcopy(obj)
        self.barrier()
        parts = [copy.deepcopy(p) for p in self.shared["slots"]]
        self.barrier()
        return parts

    def broadcast(self, obj, src):
        return self.all_gather(obj)[src]


def _on_ranks(world, job):
    """job(ranks) on `world` threads; their results in rank order (the first error re-raised)."""
    shared = {"barrier": threading.Barrier(world), "slots": [None] * world, "calls": [0] * world}
    results, errors = [None] * world, []

    def run(rank):
        try:
            results[rank] = job(ThreadRanks(rank, world, shared))
        except BaseException as error:  # noqa: BLE001 (re-raised below)
            errors.append(error)
            shared["barrier"].abort()
    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, shared["calls"]


@pytest.mark.parametrize("world", [2, 3])
def test_kmeans_restarts_over_ranks_give_the_run_one_process_keeps(world):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(301, 3)))
    single = ops.kmeans(x, 7, n_init=5, random_state=11)
    results, calls = _on_ranks(world, lambda ranks: ops.kmeans(x, 7, n_init=5, random_state=11, ranks=ranks))
    for r in results:
        assert torch.equal(r.centroids, single.centroids) and torch.equal(r.labels, single.labels)
        assert r.inertia == single.inertia
    assert calls == [2] * world   # one all-gather and one broadcast each: the runs were spread, then agreed


def test_kmeans_groups_and_the_estimator_take_ranks_too():
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(200, 2)))
    g = torch.arange(200) % 2
    single = ops.kmeans(x, [3, 4], groups=g, n_init=4, random_state=5)
    results, _ = _on_ranks(2, lambda ranks: ops.kmeans(x, [3, 4], groups=g, n_init=4, random_state=5, ranks=ranks))
    assert all(torch.equal(r.labels, single.labels) for r in results)
    one = KMeans(5, n_init=3, random_state=2).fit(x.numpy())
    fitted, _ = _on_ranks(2, lambda ranks: KMeans(5, n_init=3, random_state=2).fit(x.numpy(), ranks=ranks))
    assert all(np.array_equal(f.labels_, one.labels_) and f.inertia_ == one.inertia_ for f in fitted)


def test_ecoval_over_thread_ranks_equals_one_process(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(160, 4))
    y = (X[:, 0] + 0.7 * rng.normal(size=160) > 0).astype(np.int64)
    Xv = rng.normal(size=(50, 4))
    yv = (Xv[:, 0] > 0).astype(np.int64)
    single = EcoVal(6, n_init=3, verbose=False, random_state=4).fit(X, y, Xv, yv)
    np.save(tmp_path / "X.npy", X)
    results, calls = _on_ranks(2, lambda ranks: EcoVal(6, n_init=3, verbose=False, random_state=4).fit(
        str(tmp_path / "X.npy"), y, Xv, yv, ranks=ranks))   # a path is loaded
    for est in results:
        assert np.array_equal(est.cluster_labels_, single.cluster_labels_)
        assert np.abs(est.values_ - single.values_).max() <= 1e-12
        assert est.n_trainings_ == single.n_trainings_
        assert est._ranks is None   # the ranks are the fit's, not kept
    assert min(calls) >= 2


def test_lossval_ranks_must_be_a_data_parallel_group():
    X = np.zeros((8, 2), np.float32)
    y = np.zeros(8, np.int64)
    with pytest.raises(ValueError, match="ranks must be None or the ranks of a data-parallel fit .*got ThreadRanks"):
        LossVal(epochs=1, verbose=False).fit(X, y, X, y, ranks=ThreadRanks(0, 1, {}))


def test_ecoval_spreads_the_knn_expert_blocks_over_the_ranks(monkeypatch):
    """The additive values' kNN expert (a search per training row) is made block by block; over ranks each rank
    searches every world-th block and one all-gather orders them: the outputs of one process bit for bit."""
    from lossval_fast.valuation.ecoval import propagation

    monkeypatch.setattr(propagation, "ROW_BLOCK", 24)
    monkeypatch.setattr(propagation, "NEIGHBOUR_BLOCK_BYTES", 8 * 12 * 150)   # 12 query rows per step (150 ref.)
    calls = []
    search = propagation.knn_expert

    def counted(est, Z, self_rows):
        calls.append(len(Z))
        return search(est, Z, self_rows)
    monkeypatch.setattr(propagation, "knn_expert", counted)
    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=150) > 0).astype(np.int64)
    Xv = rng.normal(size=(40, 3))
    yv = (Xv[:, 0] > 0).astype(np.int64)
    make = lambda: EcoVal(4, n_init=1, verbose=False, random_state=1, backend="loop")   # noqa: E731
    single = make().fit(X, y, Xv, yv)
    blocks = len(calls)
    assert "knn" in propagation.EXPERTS[single.intrinsic_kind_] and blocks == 7   # ceil(150 / 24) blocks
    calls.clear()
    results, _ = _on_ranks(2, lambda ranks: make().fit(X, y, Xv, yv, ranks=ranks))
    assert sorted(calls) == sorted([24] * 6 + [6]) and len(calls) == blocks   # each block searched once, somewhere
    assert np.abs(single.relevance_).max() > 0   # the validation votes' search ran over the ranks too (7 blocks)
    for est in results:
        assert np.array_equal(est.evidence_, single.evidence_) and np.array_equal(est.relevance_, single.relevance_)
        assert np.array_equal(est.values_, single.values_)   # the loop path: every training as in one process


@pytest.mark.parametrize("world", [2, 3])
def test_the_blocked_neighbour_search_over_ranks_is_one_process_search(world):
    """Reference blocks spread over the ranks, the ranks' top-k merged: the same indices and distances as one
    process (duplicated rows in other blocks, queries that are rows), also with a rank that has no block."""
    from lossval_fast.valuation.ecoval import propagation

    rng = np.random.default_rng(2)
    Z = np.round(rng.normal(size=(70, 3)), 1)
    Z[40:50] = Z[:10]                                   # exact ties across blocks
    Q = np.concatenate([Z[:5], rng.normal(size=(12, 3))])
    rows = propagation.TrainingRows(array=Z)
    idx, d2 = propagation.neighbours_in_blocks(Q, rows, 6, ref_block=16)
    results, _ = _on_ranks(world, lambda ranks: propagation.neighbours_in_blocks(Q, rows, 6, ref_block=16,
                                                                                 ranks=ranks))
    for i, d in results:
        assert np.array_equal(i, idx) and np.array_equal(d, d2)
    few, _ = _on_ranks(6, lambda ranks: propagation.neighbours_in_blocks(Q, rows, 6, ref_block=16, ranks=ranks))
    assert all(np.array_equal(i, idx) for i, _ in few)  # 5 blocks over 6 ranks: one rank has none
