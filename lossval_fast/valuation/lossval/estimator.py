"""LossVal (Wibiral et al., arXiv 2412.04158): one importance weight per training point, learned inside training.

    loss = (Σ_i w_i l_i over the minibatch) · S(w_b, x_b; 1_M, X_val)²

with S the debiased Sinkhorn divergence of geomloss (lossval_fast.ops.sinkhorn_divergence). On CPU, an MLP
model's whole step (forward, weighted loss, divergence, backward, Adam) is one C++ call
(csrc/cpu/lossval_step_cpu.cpp, `mlp_structure` says which models); other models go through autograd. The faithful defaults reproduce the authors' code (lossval_fast.reference.lossval) exactly: one Adam over
the model and the dense weight vector, L_w a sum over the batch, per-batch diameter 1.1·max|x_b - x_val|, a new
shuffle every epoch with the last partial batch kept, and the same random stream (a seeded run of both gives the
same values).

Large scale (docs/large_scale.md): X and y may be out of core (a .npy path, a memmap, an array-like over index
arrays), read by a background loader and checked in chunks, with the values of the in-memory fit; checkpoints can
also be taken inside an epoch (checkpoint_every) and a fit time-boxed (max_steps); lossval_fast.distributed runs
the same loop data-parallel over processes.
"""
from __future__ import annotations

import copy
import math
import numbers
import os
import time
import warnings

import numpy as np
import torch

from ...base import MAX_AUTO_CLASSES, Estimator, resolve_device, task_from
from ...progress import progress
from ...data import open_rows
from ...models import paper_mlp
from .. import state_file
from ..optim import settle
from .data import TASKS, Data, merge_stats, _check_feature_shape, _check_int, _check_magnitude, _check_positive, _feature_stats, _intra_op_threads, _is_float_dtype, _is_numeric_dtype, _plain, _target_stats, _to_tensor
from .context import OneProcess
from .protocols import DataParallel, StepRunner, TrainingContext, shard_bounds
from .steps import STEP_OPTIONS, _epoch_order, _model_identity, _shard_optimizer_state

class LossVal(Estimator):
    """LossVal data valuation, scikit-learn style.

    Parameters
    ----------
    task : "classification" (default) | "regression" | "auto" (the package's rule, lossval_fast.base.task_from:
        1-D integer labels with at most 20 distinct values are classes, anything else regression; task_ says which)
    model : torch.nn.Module or None. None builds the paper's MLP (classification: 5 x 100 ReLU with a softmax
        output; regression: 3 x 90 Tanh). Any module mapping (batch, d) to (batch, C) or (batch, K) works; it is
        deep-copied, the original is never trained.
    model_output : "probabilities" (the paper's MLP; loss -log(p + 1e-8)) or "logits" (stable log-softmax).
    epochs, batch_size, lr : training schedule (paper: 30 epochs, batch 32, lr 0.01; Adam).
    blur, scaling : Sinkhorn parameters (ε = blur², geomloss' annealing ratio).
    normalize : False (faithful: the batch carries mass Σ w_b, the validation set M) or True (probabilities).
    diameter : "batch" (faithful: 1.1 · max distance between the batch and the validation set, every step),
        "global" (one diameter for the whole run, 1.1 · the bounding-box diagonal of X ∪ X_val: the validation
        side of the divergence is then computed once and cached, what makes million-point runs affordable), or a
        positive number.
    device : "auto" | "cpu" | "cuda" | torch.device.
    dtype : torch.float32 (default) or torch.float64.
    random_state : int or None; seeds the model initialisation and the shuffles (the caller's global RNG state
        is left untouched).
    verbose : progress per epoch: a bar on a terminal, else a line with rate and ETA every ~10 s or 10 %.
    checkpoint : path or None. After every epoch the model, weights, optimiser and RNG state are saved there
        (atomically); a later fit with the same configuration resumes after the last saved point and ends with
        the same values as an uninterrupted run (a run killed mid-epoch redoes that epoch from the checkpoint).
    checkpoint_every : int or None. Also save every that many steps inside an epoch (with the position in the
        epoch's order and the random state, so that a resumed run continues exactly there).
    max_steps : int or None. Stop after that many optimisation steps in this fit (checkpointing the position
        when `checkpoint` is set): time-boxed runs that a later fit continues, and fixed-work benchmarks.

    Inputs of ``fit`` may be out of core: X (and y) as a path to a ``.npy`` file (memory-mapped), a
    ``numpy.memmap``, or any array-like with ``__len__`` and ``__getitem__`` over an index array. Minibatches are
    then gathered by a background thread (lossval_fast.data.BatchPrefetcher), the checks stream over the rows,
    and memory stays O(batch + validation set + weights); the values equal those of the in-memory fit.
    Data-parallel fits over several processes: lossval_fast.distributed.

    Attributes (after fit)
    ----------------------
    values_ : ndarray (n,), the final raw weights in input order (low = likely harmful or noisy).
    model_ : the trained model.  history_ : list of mean minibatch losses per epoch.
    classes_ : number of classes (classification).  task_ : the task fitted.  n_steps_ : optimisation steps run
        in this fit.
    timings_ : seconds spent checking the data, computing the cached validation side and training.
    fused_step_ : True when every step ran as one C++ call (CPU, an nn.Sequential MLP of Linear layers with
        ReLU, Tanh, Sigmoid, LeakyReLU, GELU or Identity between them and the paper's heads, see
        ``mlp_structure``); False for the generic autograd path.
    """

    def __init__(self, task: str = "classification", model: torch.nn.Module | None = None, epochs: int = 30,
                 batch_size: int = 32, lr: float = 0.01, blur: float = 0.05, scaling: float = 0.5,
                 normalize: bool = False, device="auto", random_state: int | None = None, verbose: bool = True,
                 checkpoint: str | os.PathLike | None = None, *, model_output: str = "probabilities",
                 diameter="batch", dtype: torch.dtype = torch.float32, checkpoint_every: int | None = None,
                 max_steps: int | None = None):
        self.task = task
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.blur = blur
        self.scaling = scaling
        self.normalize = normalize
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint = checkpoint
        self.model_output = model_output
        self.diameter = diameter
        self.dtype = dtype
        self.checkpoint_every = checkpoint_every
        self.max_steps = max_steps

    # ------------------------------------------------------------------------------------------ validation
    def _check_params(self):
        if not (isinstance(self.task, str) and self.task in ("auto",) + TASKS):
            raise ValueError(f"task must be one of {('auto',) + TASKS}, got {_plain(self.task)!r}")
        # numpy integers are integers (stored as int: torch's split and range want Python ints)
        self.batch_size = _check_int(self.batch_size, "batch_size", 1)
        self.epochs = _check_int(self.epochs, "epochs", 1)
        _check_positive(self.lr, "lr")
        _check_positive(self.blur, "blur", 1e150)  # ε = blur² must be finite
        scaling = self.scaling
        if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real) or not 0 < float(scaling) < 1:
            raise ValueError(f"scaling must be a number in the open interval (0, 1) (the ratio of successive blurs), "
                             f"got {_plain(scaling)!r}")
        if not (isinstance(self.model_output, str) and self.model_output in ("probabilities", "logits")):
            raise ValueError(f"model_output must be 'probabilities' or 'logits', got {_plain(self.model_output)!r}")
        if not (isinstance(self.dtype, torch.dtype) and self.dtype in (torch.float32, torch.float64)):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {_plain(self.dtype)!r}")
        diameter = self.diameter
        if not ((isinstance(diameter, str) and diameter in ("batch", "global"))
                or (isinstance(diameter, numbers.Real) and not isinstance(diameter, bool)
                    and math.isfinite(diameter) and 0 < diameter <= 1e150)):
            raise ValueError(f"diameter must be 'batch', 'global' or a number in (0, 1e150] (it enters squared), got "
                             f"{_plain(diameter)!r}")
        if self.model is not None and not isinstance(self.model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module or None, got {type(self.model).__name__}")
        for name in ("checkpoint_every", "max_steps"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _check_int(value, name, 1, "None or "))

    def _check_data(self, X, y, X_val, y_val, *, rows=None, reduce=None) -> Data:
        """Check the inputs and gather what the fit needs, streaming over X and y in chunks (nothing loads
        them whole). `rows` = (lo, hi) limits the pass to those rows of X and y, `reduce` merges the statistics
        of all processes (a distributed fit)."""
        Xs, ys, Vs, vys = open_rows(X, "X"), open_rows(y, "y"), open_rows(X_val, "X_val"), open_rows(y_val, "y_val")
        _check_feature_shape(Xs, "X")
        if Vs.ndim == 2 and Vs.shape[0] == 0:
            raise ValueError("X_val is empty: the validation set must hold at least one row")
        _check_feature_shape(Vs, "X_val")
        if Vs.shape[1] != Xs.shape[1]:
            raise ValueError(f"X_val must have the same number of features as X: X has {Xs.shape[1]}, "
                             f"X_val has {Vs.shape[1]}")
        for target, name, count, xname in ((ys, "y", len(Xs), "X"), (vys, "y_val", len(Vs), "X_val")):
            if target.ndim == 0 or target.shape[0] != count:
                raise ValueError(f"{name} must have one entry per row of {xname} ({count}), got shape "
                                 f"{target.shape}")
            if not _is_numeric_dtype(target.dtype, target=True):
                raise ValueError(f"{name} must be numeric, got dtype {target.dtype}")
        task = self.task
        lo, hi = (0, len(Xs)) if rows is None else rows
        # task="auto" gathers the label statistics too (at most MAX_AUTO_CLASSES + 1 distinct labels kept)
        stats = {"X": _feature_stats(Xs, lo, hi),
                 "y": _target_stats(ys, task != "regression", lo, hi,
                                    max_labels=MAX_AUTO_CLASSES + 1 if task == "auto" else None)}
        if reduce is not None:
            stats = reduce(stats)
        if task == "auto":   # the package's rule (base.task_from); LossVal's class labels are 1-D
            y_stats = stats["y"]
            task = "regression" if ys.ndim != 1 else task_from(
                ys.dtype.kind, y_stats["bad"] == 0 and y_stats["nonint"] == 0, len(y_stats["labels"]))
        classification = task == "classification"
        val = {"X": _feature_stats(Vs), "y": _target_stats(vys, classification)}
        for part, name in ((stats, "X"), (val, "X_val")):
            if part["X"]["bad"]:
                raise ValueError(f"{name} contains {part['X']['bad']} NaN or inf value(s); expected finite numbers")
            _check_magnitude(part["X"], name, Xs.shape[1], self.dtype)
        for part, name in ((stats, "y"), (val, "y_val")):
            if part["y"]["bad"]:
                raise ValueError(f"{name} contains NaN or inf values; expected finite numbers")
        if classification:
            classes = self._check_labels(ys, vys, stats["y"], val["y"])
            outputs = classes
        else:
            classes = None
            for target, name in ((ys, "y"), (vys, "y_val")):
                if not _is_float_dtype(target.dtype) and self.task != "auto":   # auto: many integers are targets
                    raise ValueError(f"{name} must hold float targets for regression, got dtype {target.dtype} "
                                     "(integer labels suggest task='classification')")
            outputs = int(np.prod(ys.shape[1:], dtype=np.int64))
            val_outputs = int(np.prod(vys.shape[1:], dtype=np.int64))
            if outputs != val_outputs:
                raise ValueError(f"y and y_val must have the same number of outputs, got {outputs} and "
                                 f"{val_outputs}")

        device, dtype = resolve_device(self.device), self.dtype
        X_val_t = _to_tensor(Vs).to(device=device, dtype=dtype)
        in_memory = Xs.in_memory and ys.in_memory and reduce is None
        X_t = y_t = None
        if in_memory:
            X_t = _to_tensor(Xs).to(device=device, dtype=dtype)
            y_t = _to_tensor(ys)
            y_t = y_t.long().to(device) if classification else y_t.reshape(len(Xs), -1).to(device=device, dtype=dtype)
        return Data(device=device, dtype=dtype, n=len(Xs), d=Xs.shape[1], classes=classes, outputs=outputs, task=task,
                     X=X_t, y=y_t, X_src=Xs, y_src=ys, X_val=X_val_t, x_min=stats["X"]["min"],
                     x_max=stats["X"]["max"], checksum=(stats["X"]["checksum"], stats["y"]["checksum"]),
                     val_checksum=(val["X"]["checksum"], val["y"]["checksum"]), x_dtype=str(Xs.dtype))

    @staticmethod
    def _check_labels(ys, vys, stats, val):
        for target, name in ((ys, "y"), (vys, "y_val")):
            if target.ndim != 1:
                raise ValueError(f"{name} must be a 1-D vector of class labels, got shape {target.shape}")
        for part, name in ((stats, "y"), (val, "y_val")):
            if part["nonint"]:
                raise ValueError(f"{name} holds non-integer values: classification labels must be 0..C-1")
        classes = int(stats["max"]) + 1
        if int(stats["min"]) < 0:
            raise ValueError(f"y labels must be in 0..C-1, got a minimum of {int(stats['min'])}")
        if len(stats["labels"]) != classes:
            missing = sorted(set(range(classes)) - stats["labels"]) if classes <= 1_000_000 else "several"
            raise ValueError(f"y labels must cover 0..{classes - 1}; class(es) {missing} are missing from the "
                             "training set")
        if int(val["min"]) < 0 or int(val["max"]) >= classes:
            raise ValueError(f"y_val labels must be in 0..{classes - 1} (the classes of y), got values in "
                             f"{int(val['min'])}..{int(val['max'])}")
        return classes

    # ------------------------------------------------------------------------------------------ checkpoints
    def _fingerprint(self, data: Data):
        """Everything a resumed fit must share with the checkpoint: every parameter that changes the values
        (epochs apart: a fit may go on for more epochs than the checkpoint's, see _load_checkpoint) and the
        identity of the data (shapes, dtype and order-sensitive checksums of X, y, X_val and y_val). The device,
        checkpoint_every and max_steps do not change the trajectory and stay out."""
        return {"n": int(data.n), "d": int(data.d), "task": data.task, "classes": data.classes,
                "outputs": int(data.outputs), "model": _model_identity(self.model),
                "model_output": self.model_output, "batch_size": self.batch_size, "lr": float(self.lr),
                "blur": float(self.blur), "scaling": float(self.scaling), "normalize": bool(self.normalize),
                "diameter": str(self.diameter), "random_state": self.random_state, "dtype": str(self.dtype),
                "x_dtype": data.x_dtype, "m": int(data.X_val.shape[0]), "checksum": list(data.checksum),
                "val_checksum": list(data.val_checksum)}

    def _load_checkpoint(self, fingerprint):
        if self.checkpoint is None or not os.path.exists(self.checkpoint):
            return None
        path = os.fspath(self.checkpoint)
        state = state_file.load(path)
        saved = state.get("fingerprint") if isinstance(state, dict) else None
        if saved is None:
            raise ValueError(f"checkpoint {path!r} holds no LossVal fingerprint; expected a file written by "
                             "LossVal(checkpoint=...): delete it or pass another path")
        differ = state_file.mismatch(saved, fingerprint)
        if differ:
            raise ValueError(f"checkpoint {path!r} belongs to a different configuration or data set ({differ}); "
                             "delete it or pass another path")
        finished = state["epoch"] + 1
        partial = state.get("partial") is not None
        if finished + partial > self.epochs:  # it would end with the checkpoint's values, not this fit's
            raise ValueError(f"checkpoint {path!r} has gone further than this fit (epochs: checkpoint has "
                             f"{finished} finished epoch(s){' and part of the next' if partial else ''}, this fit "
                             f"has epochs={self.epochs}); delete it, pass another path or ask for more epochs")
        return state

    def _save_checkpoint(self, state):
        state_file.save(state, self.checkpoint)  # atomic: a crash mid-save never leaves a truncated checkpoint

    # ------------------------------------------------------------------------------------------ training
    def fit(self, X, y, X_val, y_val, *, ranks: DataParallel | None = None) -> "LossVal":
        """Learn one weight per training point. X (n, d), y (n,) labels 0..C-1 or (n,)/(n, K) float targets,
        X_val (m, d), y_val alike (the validation features enter the divergence; labels are only checked).
        X and y may be out of core (a .npy path, a numpy.memmap, an array-like over index arrays).

        ranks: None (one process) or the ranks of a data-parallel fit (a protocols.DataParallel;
        lossval_fast.distributed.fit makes one from a process group): every rank calls fit with the same
        arguments, checks and holds its shard's rows and weights, and values_ is gathered on rank 0 only."""
        self._check_params()
        started = time.perf_counter()
        if ranks is None:
            data = self._check_data(X, y, X_val, y_val)
            return self._train(data, None, checks_seconds=time.perf_counter() - started)
        if not isinstance(ranks, DataParallel):
            raise ValueError(f"ranks must be None or the ranks of a data-parallel fit (a DataParallel, as "
                             f"lossval_fast.distributed.fit makes), got {type(ranks).__name__}")
        ranks.check(self)
        lo, hi = shard_bounds(len(open_rows(X, "X")), ranks.world)[ranks.rank]
        data = self._check_data(X, y, X_val, y_val, rows=(lo, hi),
                                reduce=lambda stats: merge_stats(ranks.all_gather(stats)))
        return self._train(data, ranks.training_context(self, data), checks_seconds=time.perf_counter() - started)

    def _fixed_diameter(self, data: Data):
        if self.diameter == "batch":
            return None
        if self.diameter != "global":
            return float(self.diameter)
        # 1.1 · the bounding-box diagonal of X ∪ X_val in the working dtype, from the streamed per-column extremes
        # (rounding is monotone, so these equal the extremes of the converted rows)
        lo = torch.as_tensor(data.x_min, dtype=torch.float64).to(device=data.device, dtype=data.dtype)
        hi = torch.as_tensor(data.x_max, dtype=torch.float64).to(device=data.device, dtype=data.dtype)
        lo = torch.minimum(lo, data.X_val.min(0).values)
        hi = torch.maximum(hi, data.X_val.max(0).values)
        return 1.1 * float((hi - lo).norm())

    def _chunked(self, data: Data, threads: int, small_step: bool) -> bool:
        """Whether a single-process fit computes its divergences ahead on helper threads: on CPU with threads to
        spare, when each divergence is serial work (small_step) worth a thread (batch x validation points >=
        65,536: ~1 ms and more) and an epoch holds at least four chunks."""
        return (STEP_OPTIONS.chunked_steps and data.device.type == "cpu" and threads >= 2 and small_step
                and self.batch_size * data.X_val.shape[0] >= STEP_OPTIONS.chunked_min_pairs
                and -(-data.n // self.batch_size) >= 4 * STEP_OPTIONS.chunk_steps)

    def _train(self, data: Data, ctx: TrainingContext | None, *, checks_seconds: float = 0.0) -> "LossVal":
        """The training loop in a TrainingContext: one process (ctx None: context.OneProcess) or one rank of a
        data-parallel fit (the weights, their Adam state and the data are then sharded)."""
        device = data.device
        fingerprint = self._fingerprint(data)
        state = self._load_checkpoint(fingerprint)
        timings = {"checks": checks_seconds, "validation_side": 0.0, "training": 0.0}

        # A minibatch step is a chain of tiny ops (32 x 100 distances, 100-wide layers): on a CPU, fanning each
        # out to a thread pool costs more than the op, and on a busy machine a barrier can wait for a whole time
        # slice. Small steps therefore run on one thread (the Sinkhorn kernel itself is serial at this size).
        small_step = device.type == "cpu" and self.batch_size * data.X_val.shape[0] <= (1 << 20)
        threads = torch.get_num_threads()  # the C++ step may still run its Sinkhorn's y-y loop on a second one
        if ctx is None:
            chunked = self._chunked(data, threads, small_step)
            ctx = OneProcess(data.n, device, STEP_OPTIONS.chunk_steps if chunked else None)
        lo, hi = ctx.shard
        with torch.random.fork_rng(devices=[]), _intra_op_threads(1 if small_step else None):
            seed = self.random_state if self.random_state is not None else int(torch.randint(0, 2**62, ()).item())
            seed = ctx.agree(seed)  # every rank must draw the same model and the same epoch orders
            # the CPU generator only (what the model's initialisation and the epoch orders draw from): torch.manual_seed
            # would also reseed the caller's CUDA generators, which fork_rng(devices=[]) does not restore
            torch.default_generator.manual_seed(seed)
            model = paper_mlp(data.d, data.outputs, data.task) if self.model is None else copy.deepcopy(self.model)
            model = model.to(device=device, dtype=data.dtype)
            weights = torch.nn.Parameter(torch.ones(hi - lo, dtype=data.dtype, device=device))
            optimizer = ctx.optimizer(weights, model, self.lr)
            history, start, partial = self._restore(state, model, weights, optimizer, lo, hi)
            began = time.perf_counter()
            step = ctx.step_runner(self, model, weights, data, self._fixed_diameter(data), optimizer, threads)
            timings["validation_side"] = time.perf_counter() - began
            weights_adam = getattr(optimizer, "weights", optimizer)  # SplitAdam's, or the one Adam's
            if not step.lazy:  # a checkpoint of a lazy run, resumed by a dense step
                settle(weights_adam, weights)

            def save(epoch_done, position=None, rng_epoch=None, total=0.0):
                if self.checkpoint is None:
                    return
                full = ctx.gather_state(weights, optimizer)
                if ctx.rank == 0:
                    self._save_checkpoint({
                        "fingerprint": fingerprint, "epoch": epoch_done, "model": model.state_dict(),
                        "weights": full[0].detach().cpu(), "optimizer": full[1], "rng": torch.get_rng_state(),
                        "history": history, "partial": None if position is None else
                        {"position": position, "rng_epoch": rng_epoch, "total": total}})
                ctx.barrier()  # the file is on disk before any rank goes on (a next fit may resume it)

            began = time.perf_counter()
            try:
                self._run_epochs(step, optimizer, data.n, history, start, partial, save, ctx.rank == 0)
            finally:  # helper threads of the chunked step stop even when the fit fails
                step.close()
            step.finish()
            settle(weights_adam, weights)  # the weights as the dense Adam has them after the last step
            timings["training"] = time.perf_counter() - began
        gathered = ctx.gather_values(weights)
        self.values_ = None if gathered is None else gathered.numpy().copy()
        diverged = self.values_ is not None and not np.all(np.isfinite(self.values_))
        if (history and not math.isfinite(history[-1])) or diverged:
            warnings.warn(f"the LossVal loss or weights became non-finite (lr={_plain(self.lr)!r}); values_ may be "
                          "meaningless (try a smaller lr)", RuntimeWarning, stacklevel=3)
        self.model_, self.history_, self.classes_, self.task_ = model, history, data.classes, data.task
        self.random_state_, self.timings_ = seed, timings
        self.fused_step_ = step.fused is not None
        return self

    @staticmethod
    def _restore(state, model, weights, optimizer, lo, hi):
        """Load a checkpoint's model, weight shard, optimiser and RNG state: (history, first epoch, the partial
        epoch's position or None); a fresh start without one."""
        if state is None:
            return [], 0, None
        model.load_state_dict(state["model"])
        with torch.no_grad():
            weights.copy_(state["weights"][lo:hi].to(weights.device))
        optimizer.load_state_dict(_shard_optimizer_state(state["optimizer"], lo, hi))
        torch.set_rng_state(state["rng"])
        return list(state["history"]), state["epoch"] + 1, state.get("partial")

    def _run_epochs(self, step: StepRunner, optimizer, n, history, start, partial, save, writer):
        """The epochs from `start` (inside one when `partial`), checkpointed by save(); stops early after
        max_steps steps (saving where it stopped)."""
        epochs = range(start, self.epochs)
        bar = None
        if self.verbose and writer and len(epochs):  # a bar on a terminal, lines with rate and ETA elsewhere
            bar = progress(self.epochs, "LossVal", "epoch", initial=start)
        self.n_steps_ = 0
        budget = math.inf if self.max_steps is None else self.max_steps
        count = -(-n // self.batch_size)
        for epoch in epochs:
            if partial is not None:  # resume inside this epoch: redraw its order, then continue the stream
                resumed_rng = torch.get_rng_state()
                torch.set_rng_state(partial["rng_epoch"])
            rng_epoch = torch.get_rng_state()
            order = _epoch_order(n)
            position, total = 0, 0.0
            if partial is not None:
                torch.set_rng_state(resumed_rng)
                position, total, partial = partial["position"], partial["total"], None
            stopped = False
            stream = step.batches(order, position)
            for position, item in enumerate(stream, start=position):
                if self.n_steps_ >= budget:
                    stopped = True
                    break
                if step.fused is None:  # the C++ step keeps its gradients to itself
                    optimizer.zero_grad(set_to_none=True)
                total += float(step(item, optimizer))  # forward, backward and the optimiser's step
                self.n_steps_ += 1
                done = position + 1
                if self.checkpoint_every is not None and done % self.checkpoint_every == 0 and done < count:
                    save(epoch - 1, done, rng_epoch, total)
            else:
                position = count
            if hasattr(stream, "close"):  # a stopped generator releases its loader thread and chunks now
                stream.close()
            if stopped or (position < count):
                save(epoch - 1, position, rng_epoch, total)
                break
            history.append(total / max(count, 1))
            save(epoch)
            if bar is not None:
                bar.set_postfix(loss=f"{history[-1]:.4g}")  # first: a progress line shows this epoch's
                bar.update(1)
        if bar is not None:
            bar.close()
