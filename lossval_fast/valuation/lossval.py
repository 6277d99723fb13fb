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

import contextlib
import copy
import math
import numbers
import os
import time
import warnings

import numpy as np
import torch

from .. import ops
from ..base import Estimator, resolve_device
from ..progress import progress
from ..data import BatchPrefetcher, RowSource, open_rows
from ..models import paper_mlp
from ..ops.sinkhorn import auto_stored, epsilon_schedule
from . import state_file
from .optim import LAST_STEP, adam, lazy_steps, settle

TASKS = ("classification", "regression")


@contextlib.contextmanager
def _intra_op_threads(count):
    """Temporarily run torch's CPU ops on `count` threads (None: leave as is)."""
    if count is None or count == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_INT_DTYPES = (torch.int32, torch.int64, torch.int16, torch.uint8)
_NP_INT_DTYPES = tuple(np.dtype(t) for t in (np.int32, np.int64, np.int16, np.uint8))
_CHECKSUM_MOD = 1 << 64


def _is_float_dtype(dtype) -> bool:
    return dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.dtype(dtype).kind == "f"


def _is_numeric_dtype(dtype, *, target: bool = False) -> bool:
    """Features: floats and the integer types torch converts (as before); targets: any bool, int or float."""
    if isinstance(dtype, torch.dtype):
        if target:
            return not dtype.is_complex
        return dtype.is_floating_point or dtype in _INT_DTYPES
    kind = np.dtype(dtype).kind
    if target:
        return kind in "biuf"
    return kind == "f" or np.dtype(dtype) in _NP_INT_DTYPES


def _plain(value):
    """A numpy scalar as the Python number it holds, so that messages say 1 rather than np.int64(1)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_int(value, name: str, minimum: int, alternative: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be {alternative}an integer >= {minimum}, got {_plain(value)!r}")
    return int(value)


def _check_positive(value, name: str, largest: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {_plain(value)!r}")
    if value > largest:
        raise ValueError(f"{name} must be at most {largest:g}, got {_plain(value)!r}")


def _check_magnitude(stats: dict, name: str, d: int, dtype: torch.dtype) -> None:
    """Finite features can still overflow the squared distances of the divergence (or the dtype itself, 1e308 in
    float32): refuse them by name rather than report them later as NaN or inf."""
    largest = float(np.max(np.maximum(np.abs(stats["min"]), np.abs(stats["max"])), initial=0.0))
    limit = math.sqrt(torch.finfo(dtype).max / max(d, 1)) / 2  # |x - y|² over d features stays finite below it
    if largest > limit:
        raise ValueError(f"{name} holds a value of magnitude {largest:.3g}; in {str(dtype).replace('torch.', '')} the "
                         f"squared distances overflow above about {limit:.3g}: standardise the features (z-score) "
                         "first")


def _check_feature_shape(src: RowSource, name: str):
    if src.ndim != 2:
        raise ValueError(f"{name} must be 2-D (points x features), got shape {src.shape}")
    if not _is_numeric_dtype(src.dtype):
        raise ValueError(f"{name} must be numeric, got dtype {src.dtype}")
    if src.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got shape {src.shape}")


def _checksum(chunk: np.ndarray, first_row: int) -> int:
    """Σ_k bits_k · (2k + 1) modulo 2**64 over the float64 bit patterns, k an element's position in the whole
    array (the chunk starts at row first_row): independent of how the rows are chunked or sharded, but not of
    their order (a checkpoint must not resume on permuted rows)."""
    bits = np.ascontiguousarray(chunk, dtype=np.float64).reshape(len(chunk), -1).view(np.uint64)
    start = first_row * bits.shape[1]
    k = np.arange(start, start + bits.size, dtype=np.uint64).reshape(bits.shape)
    return int((bits * (k * np.uint64(2) + np.uint64(1))).sum(dtype=np.uint64))


def _feature_stats(src: RowSource, lo: int = 0, hi: int | None = None) -> dict:
    """NaN/inf count, per-column min and max (float64) and checksum of rows lo..hi-1, read in chunks."""
    d = src.shape[1]
    stats = {"bad": 0, "min": np.full(d, np.inf), "max": np.full(d, -np.inf), "checksum": 0}
    row = 0 if lo is None else lo
    for chunk in src.chunks(lo, hi):
        c = np.asarray(chunk, dtype=np.float64)
        finite = np.isfinite(c)
        bad = c.size - int(np.count_nonzero(finite))
        stats["bad"] += bad
        if bad == 0 and c.shape[0]:
            stats["min"] = np.minimum(stats["min"], c.min(0))
            stats["max"] = np.maximum(stats["max"], c.max(0))
        stats["checksum"] = (stats["checksum"] + _checksum(c, row)) % _CHECKSUM_MOD
        row += len(c)
    return stats


def _target_stats(src: RowSource, classification: bool, lo: int = 0, hi: int | None = None) -> dict:
    """NaN/inf count, checksum and, for class labels, non-integer count, min, max and the set of labels."""
    stats = {"bad": 0, "checksum": 0, "nonint": 0, "min": math.inf, "max": -math.inf, "labels": set()}
    row = 0 if lo is None else lo
    for chunk in src.chunks(lo, hi):
        c = np.asarray(chunk, dtype=np.float64)
        finite = np.isfinite(c)
        bad = c.size - int(np.count_nonzero(finite))
        stats["bad"] += bad
        stats["checksum"] = (stats["checksum"] + _checksum(c, row)) % _CHECKSUM_MOD
        row += len(c)
        if classification and bad == 0 and c.size:
            stats["nonint"] += int(np.count_nonzero(c != np.round(c)))
            stats["min"] = min(stats["min"], float(c.min()))
            stats["max"] = max(stats["max"], float(c.max()))
            stats["labels"].update(np.unique(c.astype(np.int64)).tolist())
    return stats


def merge_stats(parts: list[dict]) -> dict:
    """Combine the statistics of disjoint row ranges (what each process of a distributed fit computed)."""
    out = {}
    for key in parts[0]:
        items = [p[key] for p in parts]
        if key in ("X", "y"):
            out[key] = merge_stats(items)
        elif key == "checksum":
            out[key] = sum(items) % _CHECKSUM_MOD
        elif key == "bad" or key == "nonint":
            out[key] = sum(items)
        elif key == "min":
            out[key] = np.minimum.reduce(items) if isinstance(items[0], np.ndarray) else min(items)
        elif key == "max":
            out[key] = np.maximum.reduce(items) if isinstance(items[0], np.ndarray) else max(items)
        elif key == "labels":
            out[key] = set().union(*items)
        else:
            raise KeyError(key)
    return out


def _to_tensor(src: RowSource) -> torch.Tensor:
    """The whole source as a tensor (in-memory inputs, and the validation set, which is always held in memory)."""
    if src.kind == "tensor":
        return src.data
    array = src.data if src.kind == "numpy" and src.in_memory else src.read(0, len(src))
    try:
        # a view with negative strides (X[::-1]) cannot be shared with torch: copied in order instead
        return torch.as_tensor(np.ascontiguousarray(array))
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot convert an array of dtype {array.dtype} to a tensor") from error


class _Data:
    """Checked inputs of a fit: in-memory device tensors (X, y) or row sources (X_src, y_src) streamed by the
    loader; the validation set on the device; the statistics the checks gathered."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @property
    def streamed(self) -> bool:
        return self.X is None


def gather_rows(data: _Data, task: str, idx: np.ndarray):
    """(x, y) of the rows idx (numpy int64), converted as the in-memory path converts the whole arrays."""
    xb = data.X_src.take(idx).to(data.dtype)
    yb = data.y_src.take(idx)
    if task == "classification":
        yb = yb.long()
    else:
        yb = yb.to(data.dtype).reshape(len(idx), -1)
    return xb, yb


class LossVal(Estimator):
    """LossVal data valuation, scikit-learn style.

    Parameters
    ----------
    task : "classification" | "regression"
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
    classes_ : number of classes (classification).  n_steps_ : optimisation steps run in this fit.
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
        if not (isinstance(self.task, str) and self.task in TASKS):
            raise ValueError(f"task must be one of {TASKS}, got {_plain(self.task)!r}")
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

    def _check_data(self, X, y, X_val, y_val, *, rows=None, reduce=None) -> _Data:
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
        classification = self.task == "classification"
        lo, hi = (0, len(Xs)) if rows is None else rows
        stats = {"X": _feature_stats(Xs, lo, hi), "y": _target_stats(ys, classification, lo, hi)}
        if reduce is not None:
            stats = reduce(stats)
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
                if not _is_float_dtype(target.dtype):
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
        return _Data(device=device, dtype=dtype, n=len(Xs), d=Xs.shape[1], classes=classes, outputs=outputs,
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
    def _fingerprint(self, data: _Data):
        """Everything a resumed fit must share with the checkpoint: every parameter that changes the values
        (epochs apart: a fit may go on for more epochs than the checkpoint's, see _load_checkpoint) and the
        identity of the data (shapes, dtype and order-sensitive checksums of X, y, X_val and y_val). The device,
        checkpoint_every and max_steps do not change the trajectory and stay out."""
        return {"n": int(data.n), "d": int(data.d), "task": self.task, "classes": data.classes,
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
    def fit(self, X, y, X_val, y_val) -> "LossVal":
        """Learn one weight per training point. X (n, d), y (n,) labels 0..C-1 or (n,)/(n, K) float targets,
        X_val (m, d), y_val alike (the validation features enter the divergence; labels are only checked).
        X and y may be out of core (a .npy path, a numpy.memmap, an array-like over index arrays)."""
        self._check_params()
        started = time.perf_counter()
        data = self._check_data(X, y, X_val, y_val)
        return self._train(data, None, checks_seconds=time.perf_counter() - started)

    def _fixed_diameter(self, data: _Data):
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

    def _chunked(self, data: _Data, threads: int, small_step: bool) -> bool:
        """Whether a single-process fit computes its divergences ahead on helper threads: on CPU with threads to
        spare, when each divergence is serial work (small_step) worth a thread (batch x validation points >=
        65,536: ~1 ms and more) and an epoch holds at least four chunks."""
        return (CHUNKED_STEPS and data.device.type == "cpu" and threads >= 2 and small_step
                and self.batch_size * data.X_val.shape[0] >= CHUNKED_MIN_PAIRS
                and -(-data.n // self.batch_size) >= 4 * CHUNK_STEPS)

    def _train(self, data: _Data, ctx, *, checks_seconds: float = 0.0) -> "LossVal":
        """The training loop, one process (ctx None) or one rank of a data-parallel fit (ctx from
        lossval_fast.distributed: the weights, their Adam state and the data are sharded)."""
        device, dtype, n = data.device, data.dtype, data.n
        lo, hi = (0, n) if ctx is None else ctx.shard
        fingerprint = self._fingerprint(data)
        state = self._load_checkpoint(fingerprint)
        writer = ctx is None or ctx.rank == 0
        timings = {"checks": checks_seconds, "validation_side": 0.0, "training": 0.0}

        # A minibatch step is a chain of tiny ops (32 x 100 distances, 100-wide layers): on a CPU, fanning each
        # out to a thread pool costs more than the op, and on a busy machine a barrier can wait for a whole time
        # slice. Small steps therefore run on one thread (the Sinkhorn kernel itself is serial at this size).
        small_step = device.type == "cpu" and self.batch_size * data.X_val.shape[0] <= (1 << 20)
        threads = torch.get_num_threads()  # the C++ step may still run its Sinkhorn's y-y loop on a second one
        with torch.random.fork_rng(devices=[]), _intra_op_threads(1 if small_step else None):
            seed = self.random_state if self.random_state is not None else int(torch.randint(0, 2**62, ()).item())
            if ctx is not None:
                seed = ctx.agree(seed)  # every rank must draw the same model and the same epoch orders
            # the CPU generator only (what the model's initialisation and the epoch orders draw from): torch.manual_seed
            # would also reseed the caller's CUDA generators, which fork_rng(devices=[]) does not restore
            torch.default_generator.manual_seed(seed)
            model = paper_mlp(data.d, data.outputs, self.task) if self.model is None else copy.deepcopy(self.model)
            model = model.to(device=device, dtype=dtype)
            weights = torch.nn.Parameter(torch.ones(hi - lo, dtype=dtype, device=device))
            chunked = ctx is None and self._chunked(data, threads, small_step)
            if chunked:
                from .chunked import SplitAdam
                optimizer = SplitAdam(weights, model, self.lr)
            elif ctx is None:
                optimizer = adam([weights, *model.parameters()], self.lr)
            else:
                optimizer = ctx.optimizer(weights, model, self.lr)
            history, start, partial = [], 0, None
            if state is not None:
                model.load_state_dict(state["model"])
                with torch.no_grad():
                    weights.copy_(state["weights"][lo:hi].to(device))
                optimizer.load_state_dict(_shard_optimizer_state(state["optimizer"], lo, hi))
                torch.set_rng_state(state["rng"])
                history, start = list(state["history"]), state["epoch"] + 1
                partial = state.get("partial")
            fixed_diameter = self._fixed_diameter(data)
            began = time.perf_counter()
            if chunked:
                from .chunked import ChunkedStep, LocalContext
                step = ChunkedStep(LocalContext(n, CHUNK_STEPS, device), self, model, weights, data, fixed_diameter,
                                   optimizer, helpers=threads - 1)
            elif ctx is None:
                step = _StepRunner(self, model, weights, data, fixed_diameter, optimizer, threads)
            else:
                step = ctx.step_runner(self, model, weights, data, fixed_diameter, optimizer, threads)
            timings["validation_side"] = time.perf_counter() - began
            weights_adam = getattr(optimizer, "weights", optimizer)  # SplitAdam's, or the one Adam's
            if not getattr(step, "lazy", False):  # a checkpoint of a lazy run, resumed by a dense step
                settle(weights_adam, weights)

            def save(epoch_done, position=None, rng_epoch=None, total=0.0):
                if self.checkpoint is None:
                    return
                full = (weights, optimizer.state_dict()) if ctx is None else ctx.gather_state(weights, optimizer)
                if writer:
                    self._save_checkpoint({
                        "fingerprint": fingerprint, "epoch": epoch_done, "model": model.state_dict(),
                        "weights": full[0].detach().cpu(), "optimizer": full[1], "rng": torch.get_rng_state(),
                        "history": history, "partial": None if position is None else
                        {"position": position, "rng_epoch": rng_epoch, "total": total}})
                if ctx is not None:  # the file is on disk before any rank goes on (a next fit may resume it)
                    ctx.barrier()

            epochs = range(start, self.epochs)
            bar = None
            if self.verbose and writer and len(epochs):  # a bar on a terminal, lines with rate and ETA elsewhere
                bar = progress(self.epochs, "LossVal", "epoch", initial=start)
            self.n_steps_ = 0
            budget = math.inf if self.max_steps is None else self.max_steps
            began = time.perf_counter()
            try:
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
                    count = -(-n // self.batch_size)
                    stopped = False
                    stream = step.batches(order, position)
                    for position, item in enumerate(stream, start=position):
                        if self.n_steps_ >= budget:
                            stopped = True
                            break
                        if getattr(step, "fused", None) is None:  # the C++ step keeps its gradients to itself
                            optimizer.zero_grad(set_to_none=True)
                        loss = step(item, optimizer)  # forward, backward and the optimiser's step
                        total += float(loss)
                        self.n_steps_ += 1
                        done = position + 1
                        if (self.checkpoint_every is not None and done % self.checkpoint_every == 0
                                and done < count):
                            save(epoch - 1, done, rng_epoch, total)
                    else:
                        position = count
                    if hasattr(stream, "close"):  # a stopped stream releases its loader thread and chunks now
                        stream.close()
                    if stopped or (position < count):
                        save(epoch - 1, position, rng_epoch, total)
                        break
                    history.append(total / max(count, 1))
                    save(epoch)
                    if bar is not None:
                        bar.set_postfix(loss=f"{history[-1]:.4g}")  # first: a progress line shows this epoch's
                        bar.update(1)
            finally:  # helper threads of the chunked step stop even when the fit fails
                if hasattr(step, "close"):
                    step.close()
            if bar is not None:
                bar.close()
            if hasattr(step, "finish"):
                step.finish()
            settle(weights_adam, weights)  # the weights as the dense Adam has them after the last step
            timings["training"] = time.perf_counter() - began
        self.model_ = model
        if ctx is None:
            self.values_ = weights.detach().cpu().numpy().copy()
        else:
            gathered = ctx.gather_values(weights)
            self.values_ = None if gathered is None else gathered.numpy().copy()
        diverged = self.values_ is not None and not np.all(np.isfinite(self.values_))
        if (history and not math.isfinite(history[-1])) or diverged:
            warnings.warn(f"the LossVal loss or weights became non-finite (lr={_plain(self.lr)!r}); values_ may be "
                          "meaningless (try a smaller lr)", RuntimeWarning, stacklevel=3)
        self.history_ = history
        self.classes_ = data.classes
        self.random_state_ = seed
        self.timings_ = timings
        self.fused_step_ = getattr(step, "fused", None) is not None
        return self


def _model_identity(model) -> str:
    """The paper's MLP, or the class, the structure (repr) and a digest of the initial parameters and buffers of
    the given module (a differently initialised copy of the same architecture is another model)."""
    if model is None:
        return "paper_mlp"
    import hashlib
    h = hashlib.sha1(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{type(model).__qualname__}:{h.hexdigest()}"


def _shard_optimizer_state(state_dict, lo, hi):
    """The optimiser state with the weight vector's entries (parameter 0) cut to rows lo..hi-1."""
    state = {key: dict(value) for key, value in state_dict["state"].items()}
    if 0 in state:
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", LAST_STEP):
            if key in state[0] and state[0][key].dim() == 1:
                state[0][key] = state[0][key][lo:hi].clone()
    return {"state": state, "param_groups": state_dict["param_groups"]}


def _epoch_order(n: int) -> torch.Tensor:
    """The order a DataLoader(shuffle=True) visits the rows in (on the CPU), drawn from the (forked) global RNG
    exactly as torch does it: one draw for the loader's base seed, one to seed the sampler's generator."""
    torch.empty((), dtype=torch.int64).random_()
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator)


def _validation_warmup(sinkhorn_kwargs, val_weights, X_val, cache):
    """Fill `cache` with the validation side GB (it depends only on the validation set and the ε schedule).
    The M x M problem runs with stored costs only while they take at most 64 MiB, else online: a 10,000-point
    validation set would otherwise allocate a 400 MB cost matrix in the first step."""
    dummy = X_val[:1]
    with torch.no_grad():
        ops.sinkhorn_divergence(torch.ones(1, dtype=X_val.dtype, device=X_val.device), dummy, val_weights, X_val,
                                cache=cache, memory_budget=64 << 20, validate=False, **sinkhorn_kwargs)


class _Divergence:
    """S(w_b, x_b; 1_M, X_val) of one step: with the per-batch diameter (faithful), or a fixed one with the
    validation side computed once and cached. With normalize=True and a cache the masses are normalised here, not
    by the op: the op normalises a fresh copy of the validation weights every call, which its cache cannot
    recognise (GB would be recomputed every step)."""

    def __init__(self, est: LossVal, X_val, fixed_diameter):
        self.X_val, self.fixed_diameter = X_val.contiguous(), fixed_diameter
        self.blur, self.scaling, self.normalize = est.blur, est.scaling, est.normalize
        self.val_weights = torch.ones(X_val.shape[0], dtype=X_val.dtype, device=X_val.device)
        self.cache = self.eps_list = self.gb = None
        if fixed_diameter is not None:
            if self.normalize:
                self.val_weights = self.val_weights / self.val_weights.sum()
            self.cache = ops.SinkhornCache()  # the validation side is the same every step
            _validation_warmup(dict(blur=self.blur, scaling=self.scaling, diameter=fixed_diameter, normalize=False),
                               self.val_weights, self.X_val, self.cache)
            self.eps_list = epsilon_schedule(2, fixed_diameter if fixed_diameter > 0 else self.blur, self.blur,
                                             self.scaling)
            # GB for the C++ step (the op keyed it on the batched (1, M) views it works on)
            self.gb = self.cache.get(self.val_weights[None], self.X_val[None], self.eps_list)

    def __call__(self, wb, xb):
        normalize = self.normalize
        if self.fixed_diameter is None:
            diameter = torch.cdist(xb, self.X_val, p=2).max().item() * 1.1
        else:
            diameter = self.fixed_diameter
            if normalize:
                wb, normalize = wb / wb.sum(), False
        return ops.sinkhorn_divergence(wb, xb, self.val_weights, self.X_val, blur=self.blur, scaling=self.scaling,
                                       diameter=diameter, normalize=normalize, cache=self.cache, validate=False)


# The whole step of an MLP model in one C++ call on CPU (csrc/cpu/lossval_step_cpu.cpp); tests switch it off to
# compare with the generic path (autograd through the model).
FUSED_STEP = True

# Single-process fits over many points with a fixed diameter compute the divergences of chunks of steps ahead, on
# the threads a step cannot use (lossval_fast/valuation/chunked.py); tests switch it off or on.
CHUNKED_STEPS = True
CHUNK_STEPS = 32  # steps per chunk

# The C++ steps update the weight vector's Adam lazily (optim.lazy_steps): O(batch) work per step instead of O(n)
LAZY_ADAM = True
CHUNKED_MIN_PAIRS = 65_536  # batch x validation points from which a divergence (~1 ms and more) is worth a thread


def _activation_code(module):
    """(code, parameter) of an activation the C++ step implements, or None."""
    kind = type(module)
    if kind is torch.nn.ReLU:
        return 0, 0.0
    if kind is torch.nn.Tanh:
        return 1, 0.0
    if kind is torch.nn.Sigmoid:
        return 2, 0.0
    if kind is torch.nn.LeakyReLU:
        return 3, float(module.negative_slope)
    if kind is torch.nn.GELU:
        return {"none": (4, 0.0), "tanh": (5, 0.0)}.get(module.approximate)
    if kind is torch.nn.Identity:
        return 6, 0.0
    return None


def mlp_structure(model, task: str, from_logits: bool):
    """(activation codes, activation parameters, head code) of the C++ step when `model` is a plain MLP it covers:
    an nn.Sequential of nn.Linear layers (with bias), each pair separated by one activation (ReLU, Tanh, Sigmoid,
    LeakyReLU, GELU or Identity), ending in a Linear, or in a Softmax over the last dimension for the probability
    output; None for anything else (the generic autograd path)."""
    if type(model) is not torch.nn.Sequential:
        return None
    mods = list(model.children())
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in [model, *mods]):
        return None
    if task == "regression":
        head = 2
    elif from_logits:
        head = 1
    else:
        if not mods or type(mods[-1]) is not torch.nn.Softmax or mods[-1].dim not in (-1, 1):
            return None
        head, mods = 0, mods[:-1]
    linear, acts = mods[0::2], mods[1::2]
    if not linear or len(linear) != len(acts) + 1:
        return None
    if any(type(m) is not torch.nn.Linear or m.bias is None for m in linear):
        return None
    codes = [_activation_code(m) for m in acts]
    if any(c is None for c in codes):
        return None
    return [c for c, _ in codes], [p for _, p in codes], head


class _FusedMLPStep:
    """A LossVal step of an MLP in one C++ call: forward, weighted loss, divergence, backward and Adam."""

    def __init__(self, est, structure, adam_state, weights, optimizer, data, divergence, threads):
        self.activations, self.activation_params, self.head = structure
        self.threads = threads
        self.data, self.div = data, divergence
        self.optimizer = optimizer
        self.adam_state = adam_state  # updated in place by the op (the fit never reloads the optimiser after this)
        self.last = lazy_steps(optimizer, weights) if LAZY_ADAM else None  # the weights' lazy Adam
        self.lazy = self.last is not None
        # the dense Adam's gradient buffer (zero outside the batch); the lazy Adam needs none
        self.weight_grad = weights.new_empty(0) if self.lazy else torch.zeros_like(weights)
        self.b = divergence.val_weights
        if est.normalize and divergence.fixed_diameter is None:
            self.b = self.b / self.b.sum()  # the op's normalisation of the validation masses
        self.cost_modes = {}

    @classmethod
    def build(cls, est, model, weights, optimizer, data, divergence, threads):
        if not FUSED_STEP or data.device.type != "cpu" or not hasattr(optimizer, "fused_state"):
            return None
        if not hasattr(torch.ops.lossval_fast, "lossval_mlp_step"):
            return None
        structure = mlp_structure(model, est.task, est.model_output == "logits")
        if structure is None:
            return None
        adam_state = optimizer.fused_state()
        if adam_state is None or [id(p) for p in adam_state[0]] != [id(p) for p in (weights, *model.parameters())]:
            return None
        return cls(est, structure, adam_state, weights, optimizer, data, divergence, threads)

    def cost_mode(self, batch: int) -> int:
        """The op's "auto" choice for this batch size (stored costs when the four matrices fit and d >= 8)."""
        if batch not in self.cost_modes:
            X_val = self.data.X_val
            self.cost_modes[batch] = int(auto_stored(batch, X_val.shape[0], X_val.shape[1], X_val.element_size(), True,
                                                     X_val.device))
        return self.cost_modes[batch]

    def __call__(self, idx, xb, yb):
        params, exp_avgs, exp_avg_sqs, steps = self.adam_state
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        div = self.div
        with torch.no_grad():
            return torch.ops.lossval_fast.lossval_mlp_step(
                params, exp_avgs, exp_avg_sqs, steps, self.weight_grad, group["lr"], beta1, beta2, group["eps"],
                self.activations, self.activation_params, self.head, xb, yb, idx, div.X_val, self.b,
                div.eps_list or [], div.blur, div.scaling, div.normalize, self.cost_mode(xb.shape[0]), div.gb,
                self.threads, self.last)


def weighted_batch_loss(classification: bool, from_logits: bool, pred, yb, wb):
    """L_w = Σ_i w_i l_i of a minibatch with the fused ops (cross-entropy of probabilities or logits, or MSE)."""
    if classification:
        return ops.weighted_cross_entropy(pred, yb, wb, from_logits=from_logits, validate=False)
    return ops.weighted_mse(pred.reshape(yb.shape), yb, wb, validate=False)


class _StepRunner:
    """One LossVal minibatch loss: the fused weighted loss times the squared Sinkhorn divergence."""

    def __init__(self, est: LossVal, model, weights, data: _Data, fixed_diameter, optimizer=None, threads=1):
        self.model, self.weights, self.X, self.y = model, weights, data.X, data.y
        self.data, self.task = data, est.task
        self.batch_size = est.batch_size
        self.classification = est.task == "classification"
        self.from_logits = est.model_output == "logits"
        self.divergence = _Divergence(est, data.X_val, fixed_diameter)
        self.fused = _FusedMLPStep.build(est, model, weights, optimizer, data, self.divergence, threads)
        self.lazy = self.fused is not None and self.fused.lazy

    def batches(self, order, position):
        """(idx, x, y) per minibatch from `position` on: gathered on the device for in-memory data, else by the
        background loader (the same rows, converted the same way)."""
        device = self.data.device
        idx_all = order.to(device)
        parts = torch.split(idx_all, self.batch_size)[position:]
        if not self.data.streamed:
            return ((idx, None, None) for idx in parts)
        cpu = torch.split(order, self.batch_size)[position:]

        def gather(k):
            return gather_rows(self.data, self.task, cpu[k].numpy())
        loader = BatchPrefetcher(range(len(cpu)), gather, device)
        return ((idx, *item) for idx, item in zip(parts, loader))

    def __call__(self, item, optimizer):
        idx, xb, yb = item
        if xb is None:
            xb = self.X.index_select(0, idx)
            yb = self.y.index_select(0, idx)
        if self.fused is not None:
            return self.fused(idx, xb, yb)
        wb = self.weights.index_select(0, idx)
        pred = self.model(xb)
        train_loss = weighted_batch_loss(self.classification, self.from_logits, pred, yb, wb)
        loss = train_loss * self.divergence(wb, xb).square()
        loss.backward()
        optimizer.step()
        return loss.detach()
