"""Data-parallel LossVal over gloo processes (the launcher and torchrun), a world of one rank, and a large
validation set in the online Sinkhorn mode."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lossval_fast import distributed, ops
from lossval_fast.valuation.knn_shapley import KNNShapley
from lossval_fast.valuation.lossval import LossVal
from scripts import run_script
from large_scale_data import Doubler, synthetic


def _parallel_cases(cases, folder):
    """Run on every rank: one data-parallel fit per case; rank 0 returns the values and loss histories."""
    out = []
    for params, options, task in cases:
        X, y, Xv, yv = synthetic(n=301, m=60, task=task)
        est = distributed.fit(LossVal(task=task, epochs=2, random_state=3, verbose=False, **params), X, y, Xv, yv,
                              **options)
        out.append(None if est.values_ is None else (est.values_, est.history_, est.n_steps_, est.fused_step_))
    return out


DIVERGENCES, POINTS, SHARDED = dict(split="divergences"), dict(split="points"), dict(shard_validation=True)
PARALLEL_CASES = [
    (dict(dtype=torch.float64), DIVERGENCES, "classification"),
    (dict(dtype=torch.float64), POINTS, "classification"),
    (dict(dtype=torch.float64, diameter="global"), SHARDED, "classification"),
    (dict(dtype=torch.float64, diameter="global", batch_size=5, normalize=True), SHARDED, "regression"),
    (dict(dtype=torch.float64, diameter="global", batch_size=5, normalize=True), dict(chunk_steps=7), "regression"),
    (dict(dtype=torch.float64, batch_size=3, model_output="logits",
          model=torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))), POINTS,
     "classification"),
    (dict(dtype=torch.float64, batch_size=3, model_output="logits", normalize=True,
          model=torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))),
     dict(chunk_steps=5), "classification"),
    (dict(dtype=torch.float64, batch_size=7, model=Doubler()), dict(chunk_steps=4), "classification"),
    (dict(dtype=torch.float32), POINTS, "regression"),
    (dict(dtype=torch.float32), DIVERGENCES, "regression"),
    (dict(dtype=torch.float32, diameter="global"), SHARDED, "classification"),
    (dict(dtype=torch.float32, diameter="global"), DIVERGENCES, "classification"),
]


def test_two_gloo_processes_equal_one_process(tmp_path):
    """301 points over 2 ranks (151 + 150), batches of 32, 7, 5 and 3 (many batches hold no point of one rank),
    both splits (the divergences of chunks of steps spread over the ranks, with the C++ model step or a model it
    does not cover; the model run on each rank's own rows with the divergence whole on each rank or split over the
    validation points): the values of a single-process fit over the same global batch order, to 1e-9 (float64)
    and 1e-4 (float32)."""
    results = distributed.launch(2, _parallel_cases, PARALLEL_CASES, str(tmp_path))
    for (params, options, task), (values, history, steps, fused) in zip(PARALLEL_CASES, results):
        X, y, Xv, yv = synthetic(n=301, m=60, task=task)
        single = LossVal(task=task, epochs=2, random_state=3, verbose=False, **params).fit(X, y, Xv, yv)
        tol = 1e-9 if params["dtype"] == torch.float64 else 1e-4
        assert np.abs(values - single.values_).max() <= tol, (params, options)
        assert np.allclose(history, single.history_, rtol=tol), (params, options)
        assert steps == single.n_steps_ and not np.allclose(values, 1.0)
        # the C++ model step runs for the MLPs it covers when the divergences are split
        assert fused == (options.get("split", "divergences") == "divergences" and "shard_validation" not in options
                         and not isinstance(params.get("model"), Doubler))


def _three_ranks(folder):
    X, y, Xv, yv = synthetic(n=11, m=7, d=3)
    a = distributed.fit(LossVal(epochs=3, batch_size=4, random_state=1, verbose=False, dtype=torch.float64,
                                diameter="global"), X, y, Xv, yv, shard_validation=True)
    # a checkpoint written by the ranks (full weights and Adam state, single-process format)
    distributed.fit(LossVal(epochs=2, batch_size=4, random_state=1, verbose=False, dtype=torch.float64,
                            checkpoint=os.path.join(folder, "ranks.pt")), X, y, Xv, yv)
    # one-step chunks (three per epoch, the pipeline two deep): stopped mid-epoch with collectives in flight,
    # then resumed by the ranks
    params = dict(epochs=3, batch_size=2, random_state=4, verbose=False, dtype=torch.float64,
                  checkpoint=os.path.join(folder, "stopped.pt"))
    distributed.fit(LossVal(**params, max_steps=8), X, y, Xv, yv, chunk_steps=1)
    resumed = distributed.fit(LossVal(**params), X, y, Xv, yv, chunk_steps=1)
    return a.values_, resumed.values_, resumed.n_steps_


def test_three_ranks_uneven_shards_and_a_checkpoint_resumed_by_one_process(tmp_path):
    values, resumed, resumed_steps = distributed.launch(3, _three_ranks, str(tmp_path))
    X, y, Xv, yv = synthetic(n=11, m=7, d=3)  # shards of 3, 4, 4 rows; validation slices of 2, 2, 3
    whole = LossVal(epochs=3, batch_size=2, random_state=4, verbose=False, dtype=torch.float64).fit(X, y, Xv, yv)
    assert resumed_steps == 3 * 6 - 8 and np.abs(resumed - whole.values_).max() <= 1e-9
    single = LossVal(epochs=3, batch_size=4, random_state=1, verbose=False, dtype=torch.float64,
                     diameter="global").fit(X, y, Xv, yv)
    assert np.abs(values - single.values_).max() <= 1e-9
    resumed = LossVal(epochs=4, batch_size=4, random_state=1, verbose=False, dtype=torch.float64,
                      checkpoint=tmp_path / "ranks.pt").fit(X, y, Xv, yv)
    full = LossVal(epochs=4, batch_size=4, random_state=1, verbose=False, dtype=torch.float64).fit(X, y, Xv, yv)
    assert resumed.n_steps_ == 2 * 3
    assert np.abs(resumed.values_ - full.values_).max() <= 1e-9


def test_torchrun_with_out_of_core_data(tmp_path):
    X, y, Xv, yv = synthetic(n=200, m=40)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "Xv.npy", Xv)
    np.save(tmp_path / "yv.npy", yv)
    script = tmp_path / "value.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np, torch, torch.distributed as dist
        from lossval_fast import distributed
        from lossval_fast.valuation.lossval import LossVal
        folder = {str(tmp_path)!r}
        est = distributed.fit(LossVal(epochs=2, random_state=2, verbose=False, diameter="global"),
                              folder + "/X.npy", folder + "/y.npy", np.load(folder + "/Xv.npy"),
                              np.load(folder + "/yv.npy"), shard_validation=True)
        if est.values_ is not None:
            np.save(folder + "/values.npy", est.values_)
        assert not dist.is_initialized()  # fit created the env:// group, so it also destroyed it
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(distributed._free_port("127.0.0.1")), str(script)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    single = LossVal(epochs=2, random_state=2, verbose=False, diameter="global").fit(X, y, Xv, yv)
    assert np.abs(np.load(tmp_path / "values.npy") - single.values_).max() <= 1e-4


def test_launch_reraises_a_rank_error():
    X, y, Xv, yv = synthetic(n=50)
    X[40, 0] = np.nan  # in rank 1's shard: the merged checks fail on every rank alike
    with pytest.raises(ValueError, match="X contains 1 NaN or inf"):
        distributed.launch(2, distributed.fit, LossVal(epochs=1, verbose=False), X, y, Xv, yv)
    with pytest.raises(ValueError, match="nproc must be an integer >= 1"):
        distributed.launch(0, distributed.fit)
    with pytest.raises(RuntimeError, match="no torch.distributed process group"):
        distributed.fit(LossVal(), X, y, Xv, yv)


# ---------------------------------------------------------------------------------------------- large validation
def test_a_100k_point_validation_set_runs_online_without_a_batch_by_validation_matrix():
    """32 x 100,000 x d = 8, gradients for the weights and the points, with the validation side cached (as
    LossVal's diameter='global' does): "auto" picks the online mode, and the peak resident memory the call adds
    (VmHWM after a reset through /proc/self/clear_refs, in a fresh process) is O((N + M) d) -- the same for 32
    and 1024 batch rows -- where a stored or materialised cost would add 12 MB at 32 rows and 400 MB at 1024."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("/proc/self/clear_refs is not writable here")
    result = run_script("""
        import sys, torch
        from lossval_fast import ops
        torch.set_num_threads(1)
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
        g = torch.Generator().manual_seed(0)
        M, d = 100_000, 8
        y = torch.randn(M, d, generator=g); b = torch.ones(M)
        warm = ops.sinkhorn_divergence(torch.ones(4, requires_grad=True), torch.randn(4, d, requires_grad=True),
                                       torch.ones(50), torch.randn(50, d), cost="online")
        warm.backward()
        for N in (32, 1024):
            x = torch.randn(N, d, generator=g).requires_grad_(); a = torch.ones(N, requires_grad=True)
            diameter = 1.1 * ops.max_diameter(x.detach(), y)
            eps = ops.epsilon_schedule(2, diameter, 0.05, 0.5)
            cache = ops.SinkhornCache()
            cache.put(b[None], y[None], eps, torch.zeros(1, M))  # GB: computed once per run in LossVal
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = status("VmRSS:")
            S = ops.sinkhorn_divergence(a, x, b, y, diameter=diameter, cache=cache)
            S.backward()
            assert cache.hits == 1 and torch.isfinite(S) and torch.isfinite(a.grad).all()
            assert torch.isfinite(x.grad).all()
            print(N, status("VmHWM:") - before)
            del S, x, a
    """, timeout=300)
    assert result.returncode == 0, result.stderr
    growth = dict(map(int, line.split()) for line in result.stdout.split("\n") if line.strip())
    one_matrix = 32 * 100_000 * 4
    assert growth[32] < 3 * one_matrix  # O((N + M) d) buffers: potentials, barycentres, centred copies
    assert growth[1024] - growth[32] < 8 << 20  # 32 times the rows, no more memory
    assert growth[1024] < 1024 * 100_000 * 4 / 10


@pytest.fixture
def one_rank_group():
    """A world of one rank in this process (gloo over an in-memory store)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_world_of_one_rank_equals_the_estimator(one_rank_group, tmp_path):
    X, y, Xv, yv = synthetic(n=100, m=30)
    for params, options in ((dict(diameter="global"), SHARDED), (dict(batch_size=9), POINTS),
                            (dict(batch_size=9), dict(chunk_steps=2)), (dict(batch_size=9), {})):
        params = dict(epochs=2, random_state=6, verbose=False, dtype=torch.float64, **params)
        ranks = distributed.fit(LossVal(**params), X, y, Xv, yv, **options)
        single = LossVal(**params).fit(X, y, Xv, yv)
        assert np.abs(ranks.values_ - single.values_).max() <= 1e-9
    path = tmp_path / "one.pt"
    params = dict(epochs=2, batch_size=16, random_state=6, verbose=False, checkpoint=path)
    distributed.fit(LossVal(**params, checkpoint_every=3, max_steps=10), X, y, Xv, yv)
    assert torch.load(path, weights_only=True)["partial"]["position"] == 3  # 7 + 3 steps: epoch 2, position 3
    resumed = distributed.fit(LossVal(**params), X, y, Xv, yv)
    assert resumed.n_steps_ == 4 and np.abs(resumed.values_ - LossVal(**{**params, "checkpoint": None}).fit(
        X, y, Xv, yv).values_).max() <= 1e-6
    with pytest.raises(ValueError, match="needs a fixed diameter"):
        distributed.fit(LossVal(epochs=1, verbose=False), X, y, Xv, yv, shard_validation=True)
    with pytest.raises(ValueError, match="shard_validation must be True or False"):
        distributed.fit(LossVal(epochs=1, verbose=False), X, y, Xv, yv, shard_validation="auto")
    with pytest.raises(ValueError, match="split must be 'divergences' or 'points', got 'rows'"):
        distributed.fit(LossVal(epochs=1, verbose=False), X, y, Xv, yv, split="rows")
    with pytest.raises(ValueError, match="shard_validation=True .* needs split='points'"):
        distributed.fit(LossVal(epochs=1, verbose=False, diameter="global"), X, y, Xv, yv, split="divergences",
                        shard_validation=True)
    with pytest.raises(ValueError, match="chunk_steps must be an integer >= 1, got 0"):
        distributed.fit(LossVal(epochs=1, verbose=False), X, y, Xv, yv, chunk_steps=0)
    with pytest.raises(ValueError, match=r"estimator must be one whose method runs over processes \(LossVal, "
                                         r"EcoVal\), got object"):
        distributed.fit(object(), X, y, Xv, yv)
    with pytest.raises(ValueError, match="runs over processes .*got KNNShapley"):
        distributed.fit(KNNShapley(), X, y, Xv, yv)


def test_a_normalized_global_run_reuses_the_cached_validation_side(monkeypatch):
    """normalize=True with a fixed diameter: the masses are normalised before the op, so its cache recognises the
    validation side every step (normalised inside the op, a fresh copy each call, it would be recomputed).
    This is the generic (autograd) step; the C++ step is compared with it in test_lossval.py."""
    from lossval_fast.valuation import lossval as module

    monkeypatch.setattr(module.STEP_OPTIONS, "fused_step", False)

    caches = []
    init = module.Divergence.__init__

    def keep(self, *args):
        init(self, *args)
        caches.append(self.cache)
    monkeypatch.setattr(module.Divergence, "__init__", keep)
    X, y, Xv, yv = synthetic(n=160, m=40)
    params = dict(epochs=1, batch_size=16, random_state=2, verbose=False, normalize=True, dtype=torch.float64)
    est = LossVal(diameter="global", **params).fit(X, y, Xv, yv)
    # the warm-up's miss, the lookup that hands GB to the C++ step, then every step a hit
    assert caches[0].hits == 11 and caches[0].misses == 1
    # the same values as the op normalising itself with the validation side recomputed each step
    monkeypatch.setattr(module.Divergence, "__init__", init)
    diameter = est._fixed_diameter(est._check_data(X, y, Xv, yv))
    plain = LossVal(diameter=diameter, **params)
    monkeypatch.setattr(module.Divergence, "__call__", lambda self, wb, xb: ops.sinkhorn_divergence(
        wb, xb, torch.ones(len(Xv), dtype=torch.float64), self.X_val, diameter=diameter, normalize=True))
    assert np.abs(plain.fit(X, y, Xv, yv).values_ - est.values_).max() <= 1e-9
