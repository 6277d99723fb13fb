"""LossVal (Wibiral et al., arXiv 2412.04158): one importance weight per training point, learned inside training.

    loss = (Σ_i w_i l_i over the minibatch) · S(w_b, x_b; 1_M, X_val)²

with S the debiased Sinkhorn divergence of geomloss (lossval_fast.ops.sinkhorn_divergence, one C++ call per step
on CPU). The faithful defaults reproduce the authors' code (lossval_fast.reference.lossval) exactly: one Adam over
the model and the dense weight vector, L_w a sum over the batch, per-batch diameter 1.1·max|x_b - x_val|, a new
shuffle every epoch with the last partial batch kept, and the same random stream (a seeded run of both gives the
same values).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import warnings

import numpy as np
import torch

from .. import ops
from ..models import paper_mlp

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


def _resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_tensor(value, name, dtype=None):
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be array-like (numpy or torch), got {type(value).__name__}") from error
    return t if dtype is None else t.to(dtype)


def _check_features(t, name):
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (points x features), got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise ValueError(f"{name} must be numeric, got dtype {t.dtype}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t.double())
    if bool(bad.any()):
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or inf value(s); expected finite numbers")


class LossVal:
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
    verbose : progress bar per epoch (only on a terminal).
    checkpoint : path or None. After every epoch the model, weights, optimiser and RNG state are saved there
        (atomically); a later fit with the same configuration resumes after the last finished epoch and ends
        with the same values as an uninterrupted run.

    Attributes (after fit)
    ----------------------
    values_ : ndarray (n,), the final raw weights in input order (low = likely harmful or noisy).
    model_ : the trained model.  history_ : list of mean minibatch losses per epoch.
    classes_ : number of classes (classification).  n_steps_ : optimisation steps run in this fit.
    """

    def __init__(self, task: str = "classification", model: torch.nn.Module | None = None, epochs: int = 30,
                 batch_size: int = 32, lr: float = 0.01, blur: float = 0.05, scaling: float = 0.5,
                 normalize: bool = False, device="auto", random_state: int | None = None, verbose: bool = True,
                 checkpoint: str | os.PathLike | None = None, *, model_output: str = "probabilities",
                 diameter="batch", dtype: torch.dtype = torch.float32):
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

    # ------------------------------------------------------------------------------------------ validation
    def _check_params(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite positive number, got {self.lr!r}")
        if self.model_output not in ("probabilities", "logits"):
            raise ValueError(f"model_output must be 'probabilities' or 'logits', got {self.model_output!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype!r}")
        if not (self.diameter in ("batch", "global") or (isinstance(self.diameter, (int, float))
                                                          and not isinstance(self.diameter, bool)
                                                          and math.isfinite(self.diameter) and self.diameter > 0)):
            raise ValueError(f"diameter must be 'batch', 'global' or a positive number, got {self.diameter!r}")
        if self.model is not None and not isinstance(self.model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module or None, got {type(self.model).__name__}")

    def _check_data(self, X, y, X_val, y_val):
        X, X_val = _as_tensor(X, "X"), _as_tensor(X_val, "X_val")
        y, y_val = _as_tensor(y, "y"), _as_tensor(y_val, "y_val")
        _check_features(X, "X")
        if X_val.dim() == 2 and X_val.shape[0] == 0:
            raise ValueError("X_val is empty: the validation set must hold at least one row")
        _check_features(X_val, "X_val")
        if X_val.shape[1] != X.shape[1]:
            raise ValueError(f"X_val must have the same number of features as X: X has {X.shape[1]}, "
                             f"X_val has {X_val.shape[1]}")
        for target, name, rows, xname in ((y, "y", X.shape[0], "X"), (y_val, "y_val", X_val.shape[0], "X_val")):
            if target.dim() == 0 or target.shape[0] != rows:
                raise ValueError(f"{name} must have one entry per row of {xname} ({rows}), got shape "
                                 f"{tuple(target.shape)}")
            if not torch.isfinite(target.double()).all():
                raise ValueError(f"{name} contains NaN or inf values; expected finite numbers")
        if self.task == "classification":
            y, y_val, classes = self._check_labels(y, y_val)
        else:
            classes = None
            for target, name in ((y, "y"), (y_val, "y_val")):
                if not target.is_floating_point():
                    raise ValueError(f"{name} must hold float targets for regression, got dtype {target.dtype} "
                                     "(integer labels suggest task='classification')")
            y = y.reshape(X.shape[0], -1)
            y_val = y_val.reshape(X_val.shape[0], -1)
            if y.shape[1] != y_val.shape[1]:
                raise ValueError(f"y and y_val must have the same number of outputs, got {y.shape[1]} and "
                                 f"{y_val.shape[1]}")
        return X, y, X_val, y_val, classes

    @staticmethod
    def _check_labels(y, y_val):
        for target, name in ((y, "y"), (y_val, "y_val")):
            if target.dim() != 1:
                raise ValueError(f"{name} must be a 1-D vector of class labels, got shape {tuple(target.shape)}")
            if target.is_floating_point() and not torch.equal(target, target.round()):
                raise ValueError(f"{name} holds non-integer values: classification labels must be 0..C-1")
        y, y_val = y.long(), y_val.long()
        classes = int(y.max()) + 1
        if int(y.min()) < 0:
            raise ValueError(f"y labels must be in 0..C-1, got a minimum of {int(y.min())}")
        missing = sorted(set(range(classes)) - set(y.unique().tolist()))
        if missing:
            raise ValueError(f"y labels must cover 0..{classes - 1}; class(es) {missing} are missing from the "
                             "training set")
        if int(y_val.min()) < 0 or int(y_val.max()) >= classes:
            raise ValueError(f"y_val labels must be in 0..{classes - 1} (the classes of y), got values in "
                             f"{int(y_val.min())}..{int(y_val.max())}")
        return y, y_val, classes

    # ------------------------------------------------------------------------------------------ training
    def _fingerprint(self, X, y, classes):
        return {"n": int(X.shape[0]), "d": int(X.shape[1]), "task": self.task, "classes": classes,
                "batch_size": self.batch_size, "lr": float(self.lr), "blur": float(self.blur),
                "scaling": float(self.scaling), "normalize": bool(self.normalize), "diameter": str(self.diameter),
                "random_state": self.random_state, "dtype": str(self.dtype),
                "data_sum": float(X.double().sum()) + float(y.double().sum())}

    def _load_checkpoint(self, fingerprint):
        if self.checkpoint is None or not os.path.exists(self.checkpoint):
            return None
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"checkpoint {os.fspath(self.checkpoint)!r} belongs to a different configuration or "
                             "data set; delete it or pass another path")
        return state

    def _save_checkpoint(self, state):
        path = os.fspath(self.checkpoint)
        tmp = path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a crash mid-save never leaves a truncated checkpoint

    def fit(self, X, y, X_val, y_val) -> "LossVal":
        """Learn one weight per training point. X (n, d), y (n,) labels 0..C-1 or (n,)/(n, K) float targets,
        X_val (m, d), y_val alike (the validation features enter the divergence; labels are only checked)."""
        self._check_params()
        X, y, X_val, y_val, classes = self._check_data(X, y, X_val, y_val)
        device, dtype = _resolve_device(self.device), self.dtype
        X, X_val = X.to(device=device, dtype=dtype), X_val.to(device=device, dtype=dtype)
        y = y.to(device) if self.task == "classification" else y.to(device=device, dtype=dtype)
        n = X.shape[0]
        outputs = classes if self.task == "classification" else y.shape[1]
        fingerprint = self._fingerprint(X, y, classes)
        state = self._load_checkpoint(fingerprint)

        # A minibatch step is a chain of tiny ops (32 x 100 distances, 100-wide layers): on a CPU, fanning each
        # out to a thread pool costs more than the op, and on a busy machine a barrier can wait for a whole time
        # slice. Small steps therefore run on one thread (the Sinkhorn kernel itself is serial at this size).
        small_step = device.type == "cpu" and self.batch_size * X_val.shape[0] <= (1 << 20)
        with torch.random.fork_rng(devices=[]), _intra_op_threads(1 if small_step else None):
            seed = self.random_state if self.random_state is not None else int(torch.randint(0, 2**62, ()).item())
            torch.manual_seed(seed)
            model = paper_mlp(X.shape[1], outputs, self.task) if self.model is None else copy.deepcopy(self.model)
            model = model.to(device=device, dtype=dtype)
            weights = torch.nn.Parameter(torch.ones(n, dtype=dtype, device=device))
            optimizer = torch.optim.Adam([weights, *model.parameters()], lr=self.lr)
            history, start = [], 0
            if state is not None:
                model.load_state_dict(state["model"])
                with torch.no_grad():
                    weights.copy_(state["weights"].to(device))
                optimizer.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["rng"])
                history, start = list(state["history"]), state["epoch"] + 1
            step = _StepRunner(self, model, weights, X, y, X_val, classes)
            epochs = range(start, self.epochs)
            bar = None
            if self.verbose and sys.stderr.isatty() and len(epochs):
                from tqdm.auto import tqdm
                bar = tqdm(total=self.epochs, initial=start, desc="LossVal", unit="epoch")
            self.n_steps_ = 0
            for epoch in epochs:
                order = _epoch_order(n, device)
                total = 0.0
                batches = torch.split(order, self.batch_size)
                for idx in batches:
                    optimizer.zero_grad(set_to_none=True)
                    loss = step(idx)
                    loss.backward()
                    optimizer.step()
                    total += loss.item()
                self.n_steps_ += len(batches)
                history.append(total / max(len(batches), 1))
                if self.checkpoint is not None:
                    self._save_checkpoint({"fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                                           "weights": weights.detach().cpu(), "optimizer": optimizer.state_dict(),
                                           "rng": torch.get_rng_state(), "history": history})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{history[-1]:.4g}")
            if bar is not None:
                bar.close()
        if history and not math.isfinite(history[-1]):
            warnings.warn("the LossVal loss became non-finite; values_ may be meaningless (try a smaller lr)",
                          RuntimeWarning, stacklevel=2)
        self.model_ = model
        self.values_ = weights.detach().cpu().numpy().copy()
        self.history_ = history
        self.classes_ = classes
        self.random_state_ = seed
        return self


def _epoch_order(n: int, device) -> torch.Tensor:
    """The order a DataLoader(shuffle=True) visits the rows in, drawn from the (forked) global RNG exactly as
    torch does it: one draw for the loader's base seed, one to seed the sampler's generator."""
    torch.empty((), dtype=torch.int64).random_()
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator).to(device)


class _StepRunner:
    """One LossVal minibatch loss: the fused weighted loss times the squared Sinkhorn divergence."""

    def __init__(self, est: LossVal, model, weights, X, y, X_val, classes):
        self.model, self.weights, self.X, self.y, self.X_val = model, weights, X, y, X_val
        self.classification = est.task == "classification"
        self.from_logits = est.model_output == "logits"
        self.blur, self.scaling, self.normalize = est.blur, est.scaling, est.normalize
        self.val_weights = torch.ones(X_val.shape[0], dtype=X.dtype, device=X.device)
        self.cache = None
        if est.diameter == "batch":
            self.fixed_diameter = None
        else:
            if est.diameter == "global":
                both = torch.cat([X, X_val])
                self.fixed_diameter = 1.1 * float((both.max(0).values - both.min(0).values).norm())
            else:
                self.fixed_diameter = float(est.diameter)
            self.cache = ops.SinkhornCache()  # the validation side is the same every step

    def __call__(self, idx):
        xb = self.X.index_select(0, idx)
        yb = self.y.index_select(0, idx)
        wb = self.weights.index_select(0, idx)
        pred = self.model(xb)
        if self.classification:
            train_loss = ops.weighted_cross_entropy(pred, yb, wb, from_logits=self.from_logits, validate=False)
        else:
            train_loss = ops.weighted_mse(pred.reshape(yb.shape), yb, wb, validate=False)
        if self.fixed_diameter is None:
            diameter = torch.cdist(xb, self.X_val, p=2).max().item() * 1.1
        else:
            diameter = self.fixed_diameter
        divergence = ops.sinkhorn_divergence(wb, xb, self.val_weights, self.X_val, blur=self.blur,
                                             scaling=self.scaling, diameter=diameter, normalize=self.normalize,
                                             cache=self.cache, validate=False)
        return train_loss * divergence.square()
