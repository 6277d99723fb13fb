"""EcoVal's subset trainings: the utility U on the validation set, and the R x S subset models, trained as batched
models (built-in learners, ``lossval_fast.valuation.learners.LEARNERS``) or one by one (loop path: any
scikit-learn-style learner, or a built-in learner's single model). Each LCO model also gives the held-out output
of its cluster's points (p(y_k | x_k), or the prediction in regression)."""
from __future__ import annotations

import copy
import os
import sys
import warnings

import numpy as np
import torch

from ...ops.memory import default_memory_budget, release_freed_memory
from ...progress import progress
from .. import learners as _learners
from ...base import resolve_device

LOG_FLOOR = 1e-12      # log-likelihood floor, mean_v log max(p, 1e-12)


def logreg_solver() -> str:
    """The built-in "logreg" solver: LOGREG_SOLVER as lossval_fast.valuation.ecoval holds it at call time."""
    return sys.modules[__package__].LOGREG_SOLVER


class _Utility:
    """U on the validation set from class probabilities (m, C) or predictions (m,)."""

    def __init__(self, metric, classification, y_val, y_val_code=None):
        self.metric, self.classification = metric, classification
        self.y_val, self.code = y_val, y_val_code
        if classification:
            self.known = y_val_code >= 0
            self.index = np.where(self.known, y_val_code, 0)
        else:
            ss = float(np.sum((y_val - y_val.mean()) ** 2))
            self.ss_tot = ss

    def true_proba(self, proba: np.ndarray) -> np.ndarray:
        return np.where(self.known, proba[np.arange(len(self.index)), self.index], 0.0)

    def __call__(self, out: np.ndarray) -> float:
        out = np.asarray(out, dtype=np.float64)
        if callable(self.metric):
            return float(self.metric(self.y_val, out))
        if self.metric == "r2":
            return 1.0 - float(np.sum((self.y_val - out) ** 2)) / self.ss_tot
        if self.metric == "accuracy":
            return float(np.mean(self.known & (out.argmax(1) == self.index)))
        p = self.true_proba(out)
        if self.metric == "expected_accuracy":
            return float(np.mean(p))
        return float(np.mean(np.log(np.maximum(p, LOG_FLOOR))))

    def points(self, out: np.ndarray) -> np.ndarray | None:
        """Per-validation-point utilities (m,) whose mean is U (None for a callable metric): log max(p, 1e-12),
        0/1 correct, p, or 1 - m (y_v - yhat_v)^2 / SS_tot (r2)."""
        if callable(self.metric):
            return None
        out = np.asarray(out, dtype=np.float64)
        if self.metric == "r2":
            return 1.0 - len(self.y_val) * (self.y_val - out) ** 2 / self.ss_tot
        if self.metric == "accuracy":
            return (self.known & (out.argmax(1) == self.index)).astype(np.float64)
        p = self.true_proba(out)
        if self.metric == "expected_accuracy":
            return p
        return np.log(np.maximum(p, LOG_FLOOR))

    def batch(self, out: torch.Tensor) -> np.ndarray:
        """(T, m, C) probabilities or (T, m) predictions -> (T,)."""
        if callable(self.metric):
            return np.array([self(o) for o in out.double().cpu().numpy()])
        out = out.double()
        if self.metric == "r2":
            y = torch.as_tensor(self.y_val, dtype=torch.float64, device=out.device)
            return (1.0 - ((y - out) ** 2).sum(1) / self.ss_tot).cpu().numpy()
        known = torch.as_tensor(self.known, device=out.device)
        index = torch.as_tensor(self.index, device=out.device)
        if self.metric == "accuracy":
            return ((out.argmax(2) == index) & known).double().mean(1).cpu().numpy()
        p = torch.where(known, out.gather(2, index[None, :, None].expand(out.shape[0], -1, 1))[..., 0], 0.0)
        if self.metric == "expected_accuracy":
            return p.mean(1).cpu().numpy()
        return torch.log(p.clamp(min=LOG_FLOOR)).mean(1).cpu().numpy()

    def batch_points(self, out: torch.Tensor) -> np.ndarray | None:
        """(T, m, C) probabilities or (T, m) predictions -> (T, m) per-point utilities (None: callable metric)."""
        if callable(self.metric):
            return None
        out = out.double()
        if self.metric == "r2":
            y = torch.as_tensor(self.y_val, dtype=torch.float64, device=out.device)
            return (1.0 - len(self.y_val) * (y - out) ** 2 / self.ss_tot).cpu().numpy()
        known = torch.as_tensor(self.known, device=out.device)
        index = torch.as_tensor(self.index, device=out.device)
        if self.metric == "accuracy":
            return ((out.argmax(2) == index) & known).double().cpu().numpy()
        p = torch.where(known, out.gather(2, index[None, :, None].expand(out.shape[0], -1, 1))[..., 0], 0.0)
        if self.metric == "expected_accuracy":
            return p.cpu().numpy()
        return torch.log(p.clamp(min=LOG_FLOOR)).cpu().numpy()


class _Standardize:
    """data.standardize's operations on torch row blocks, (rows - mu) / sigma in float64: the same bits; into()
    writes them into a float64 block in place."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor):
        self.mu, self.sigma = mu, sigma

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows.to(torch.float64) - self.mu) / self.sigma

    def into(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return out.copy_(rows).sub_(self.mu).div_(self.sigma)


class Trainings:
    """The subset models of one fit. entry: the built-in learner (registry entry), or None for the learner object
    ``learner``; path "batched" (built-in learners unless backend="loop") or "loop". A training task is
    (repeat r, subset j); a state (see ``checkpoint``) collects U[r, j], the per-validation-point utilities
    Uv[r, j] (built-in metrics), the LCO held-out outputs and models."""

    def __init__(self, data, labels, members, entry, learner, seeds, *, device, backend, keep_models,
                 max_models_per_batch, n_jobs, verbose, ranks=None, checkpointing=False):
        self.data, self.labels, self.members = data, labels, members
        self.checkpointing = checkpointing   # states are saved during the trainings (a checkpoint file)
        self.entry, self.learner, self.seeds = entry, learner, seeds
        self.path = "batched" if entry is not None and backend != "loop" else "loop"
        self.device = resolve_device(device)
        self.keep_models, self.max_models_per_batch = keep_models, max_models_per_batch
        self.n_jobs, self.verbose, self.ranks = n_jobs, verbose, ranks
        self.classification = data.classification
        self.freq = np.bincount(data.y_code, minlength=data.C) / len(data.y_code) if data.classification else None
        self.count = 0              # trainings run by this process
        self.converged = True       # every built-in fit reached its tolerance
        self._trainer = None

    def describe(self) -> str:
        if self.path == "batched":
            return f"batched {self.entry.name} on {self.device}"
        name = self.entry.name if self.entry is not None else type(self.learner).__name__
        return f"loop {name} on {self.device if self.entry is not None else 'cpu'} (n_jobs={self.n_jobs})"

    def constant_utility(self, utility) -> float:
        """u0: the constant predictor of the training class frequencies (regression: 0 for R^2, else the metric
        of the mean)."""
        m = self.data.X_val.shape[0]
        if self.classification:
            return utility(np.tile(self.freq, (m, 1)))
        return 0.0 if utility.metric == "r2" else utility(np.full(m, self.data.y.mean()))

    def constant_points(self, utility) -> np.ndarray | None:
        """u0's per-validation-point utilities (r2: those of the validation mean, whose R^2 is u0 = 0)."""
        m = self.data.X_val.shape[0]
        if self.classification:
            return utility.points(np.tile(self.freq, (m, 1)))
        mean = self.data.y_val.mean() if utility.metric == "r2" else self.data.y.mean()
        return utility.points(np.full(m, mean))

    # ------------------------------------------------------------------------------------------ shared
    def my_share(self, tasks):
        """This rank's share of the remaining (repeat, subset) trainings: every world-th (all in one process)."""
        if self.ranks is None:
            return tasks
        return tasks[self.ranks.rank::self.ranks.world]

    def to_output_scale(self, out):
        """Built-in regression models predict standardised targets."""
        if self.classification:
            return out
        return self.data.y_mu + self.data.y_sigma * out

    def heldout_of(self, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per-point held-out output: the class probabilities (len(rows), C) (classification) or the prediction."""
        return out

    def constant_heldout(self, rows):
        if self.classification:
            return np.tile(self.freq, (len(rows), 1))
        return np.full(len(rows), float(self.data.y.mean()))

    def _progress(self, total):
        if not (self.verbose and total):
            return None
        return progress(total, "EcoVal", "fit")  # a bar on a terminal, lines with rate and ETA elsewhere

    def run(self, state, removed, skip, utility, save):
        """Train this process's share of the subsets `state` has not done; save(state, force) checkpoints."""
        R, S = state["U"].shape
        tasks = self.my_share([(r, j) for r in range(R) for j in range(S) if not skip[j] and not state["done"][r, j]])
        try:
            if self.path == "batched":
                self._train_batched(state, removed, tasks, utility, save)
            else:
                self._train_loop(state, removed, tasks, utility, save)
        finally:
            self._trainer = None   # its copy of the features goes (a refit for value() builds it again)

    # ------------------------------------------------------------------------------------------ batched
    def trainer(self):
        """The batched trainer (built on first use, freed after the trainings): on X standardised row block by
        row block (no standardised copy of X), class codes or standardised targets."""
        if self._trainer is not None:
            return self._trainer
        dev, data = self.device, self.data
        with warnings.catch_warnings():   # a read-only input (np.load(mmap_mode="r")) is only read here
            warnings.simplefilter("ignore", UserWarning)
            X = torch.from_numpy(np.ascontiguousarray(data.X)).to(dev)   # the input itself on the CPU (no copy)
        standardize = _Standardize(torch.as_tensor(data.mu, dtype=torch.float64, device=dev),
                                   torch.as_tensor(data.sigma, dtype=torch.float64, device=dev))
        cl = torch.as_tensor(self.labels, device=dev)
        if self.classification:
            y = torch.as_tensor(data.y_code, device=dev)
        else:
            y = torch.as_tensor(data.targets(), dtype=torch.float64, device=dev)
        self._trainer = self.entry.make_batched(X, y, cl, n_classes=data.C, n_clusters=len(self.members),
                                                classification=self.classification, solver=logreg_solver(),
                                                transform=standardize)
        return self._trainer

    def chunk_size(self) -> int:
        if self.max_models_per_batch is not None:
            return int(self.max_models_per_batch)
        n, d = self.data.X.shape
        per_model = self.entry.bytes_per_model(n, d, max(self.data.C, 2), self.data.X_val.shape[0])
        return max(1, int(default_memory_budget(self.device) // 2 // max(per_model, 1)))

    def _train_batched(self, state, removed, tasks, utility, save):
        trainer = self.trainer()
        p = len(self.members)
        chunk = self.chunk_size()
        Xv = torch.as_tensor(self.data.Xs_val, dtype=torch.float64, device=self.device)
        bar = self._progress(len(tasks))
        # the LCO models' held-out outputs, (R, n, C) float64: made per chunk when a checkpoint saves the state
        # after each chunk, else once all chunks are trained, so that the table (on lazy zero pages) and the
        # outputs' temporaries are not held beside the chunks' (T, n) arrays (the same bits either way)
        deferred = None if self.checkpointing else []
        try:
            for start in range(0, len(tasks), chunk):
                part = tasks[start:start + chunk]
                rem = torch.as_tensor(removed[[j for _, j in part]], device=self.device)
                params = trainer.fit(rem, [self.seeds[r] for r, _ in part])
                if not bool(params["converged"].all()):
                    self.converged = False
                out = trainer.predict(params, Xv)
                if not self.classification:
                    out = self.to_output_scale(out)
                U = utility.batch(out)
                Uv = utility.batch_points(out)
                for t, (r, j) in enumerate(part):
                    if 1 <= j <= p:
                        i = j - 1
                        one = {k: v.detach().cpu() for k, v in trainer.select(params, [t]).items()}
                        if deferred is None:
                            self._heldout_batched(state, r, i, one)
                        else:
                            deferred.append((r, i, one))
                        if self.keep_models:
                            state["models"][(r, i)] = one
                    state["U"][r, j] = U[t]
                    if Uv is not None:
                        state["Uv"][r, j] = Uv[t]
                    state["done"][r, j] = True
                self.count += len(part)
                del params, out
                release_freed_memory()   # this chunk's temporaries, before the next chunk's (T, n) arrays
                save(state, force=True)
                if bar is not None:
                    bar.update(len(part))
            del trainer
            self._trainer = None   # the trainer's layout of X goes before the held-out outputs are made
            for r, i, one in deferred or ():
                self._heldout_batched(state, r, i, one)
        finally:
            if bar is not None:
                bar.close()
        if not self.converged:
            warnings.warn("some built-in subset fits stopped before reaching their tolerance (see converged_)",
                          RuntimeWarning, stacklevel=4)

    def _heldout_batched(self, state, r, i, one):
        """The held-out outputs of LCO model (r, i) (its parameters `one`) on its cluster's rows, into the state."""
        rows = self.members[i]
        pred = self.entry.predict(one, 0, self.data.standardized(rows), self.classification)
        state["heldout"][r, rows] = self.heldout_of(self.to_output_scale(pred), rows)

    # ------------------------------------------------------------------------------------------ loop
    def new_learner(self, r):
        """A fresh learner for repeat r: a built-in single model, or a clone of the given object with
        random_state=seed_r when it takes one."""
        seed = self.seeds[r]
        if self.entry is not None:
            return self.entry.make_single(classification=self.classification, n_classes=self.data.C, seed=seed,
                                          device=self.device, solver=logreg_solver())
        learner = self.learner
        try:
            from sklearn.base import clone
            model = clone(learner) if hasattr(learner, "get_params") else copy.deepcopy(learner)
        except ImportError:
            model = copy.deepcopy(learner)
        params = model.get_params() if hasattr(model, "get_params") else {}
        if "random_state" in params:
            model.set_params(random_state=seed)
        elif hasattr(model, "random_state") and not hasattr(model, "get_params"):
            model.random_state = seed
        return model

    def fit_one(self, r, keep_rows):
        """Train one subset model on the loop path -> (model, validation output)."""
        model = self.new_learner(r)
        data, entry = self.data, self.entry
        if entry is not None:
            target = data.targets()
            if entry.fits_rows:
                model.fit(data.standardized(dtype=entry.features), target, rows=keep_rows)
            else:
                model.fit(data.standardized(keep_rows), target[keep_rows])
            params = entry.params(model)
            out = entry.validation_output(model, params, data.Xs_val, self.classification)
            return params, self.to_output_scale(np.asarray(out, dtype=np.float64))
        model.fit(data.raw(keep_rows), data.y[keep_rows])
        return model, self.learner_output(model, data.X_val)

    def learner_output(self, model, X):
        if not self.classification:
            return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)
        C, classes = self.data.C, self.data.classes
        proba = np.asarray(model.predict_proba(X), dtype=np.float64)
        seen = getattr(model, "classes_", None)
        out = np.zeros((X.shape[0], C), dtype=np.float64)
        if seen is None:
            if proba.shape[1] != C:
                raise ValueError(f"learner.predict_proba returned {proba.shape[1]} columns and the learner has no "
                                 f"classes_ to map them to the {C} classes")
            return proba
        seen = np.asarray(seen)
        cols = np.searchsorted(classes, seen).clip(0, C - 1)
        ok = classes[cols] == seen
        out[:, cols[ok]] = proba[:, ok]
        return out

    def predict_model(self, model, X_raw, Xs_rows):
        """Output of a stored LCO model on rows (raw X for objects, standardised for built-ins); None is the
        constant predictor."""
        if model is None:
            m = len(Xs_rows)
            if self.classification:
                return np.tile(self.freq, (m, 1))
            return np.full(m, float(self.data.y.mean()))
        if self.entry is not None:
            return self.to_output_scale(self.entry.predict(model, 0, Xs_rows, self.classification))
        return self.learner_output(model, X_raw)

    def _train_loop(self, state, removed, tasks, utility, save):
        p = len(self.members)
        data = self.data
        bar = self._progress(len(tasks))

        def run(task):
            r, j = task
            keep = np.flatnonzero(~removed[j][self.labels])
            model, out = self.fit_one(r, keep)
            U, Uv = utility(out), utility.points(out)
            held = None
            if 1 <= j <= p:
                rows = self.members[j - 1]
                held = self.heldout_of(self.predict_model(model, data.raw(rows), data.standardized(rows)), rows)
            return task, U, Uv, held, model

        def record(result):
            (r, j), U, Uv, held, model = result
            if held is not None:
                state["heldout"][r, self.members[j - 1]] = held
                if self.keep_models:
                    state["models"][(r, j - 1)] = model
            state["U"][r, j] = U
            if Uv is not None:
                state["Uv"][r, j] = Uv
            state["done"][r, j] = True
            self.count += 1
            if bar is not None:
                bar.update(1)
            save(state)

        try:
            if self.n_jobs == 1:
                for task in tasks:
                    record(run(task))
            else:
                # threads: the fits spend their time in numpy/BLAS/torch, which release the GIL, and nothing
                # (data, estimator) has to be pickled; results are recorded in task order
                from concurrent.futures import ThreadPoolExecutor
                workers = (os.cpu_count() or 1) if self.n_jobs < 0 else self.n_jobs
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for result in pool.map(run, tasks):
                        record(result)
        finally:
            if bar is not None:
                bar.close()

    # ------------------------------------------------------------------------------------------ refits
    def refit(self, removed_row: np.ndarray, repeats: int) -> list:
        """The models of one subset (removal mask (p,)) in every repeat, trained again (value() without
        keep_models)."""
        if self.path == "batched":
            trainer = self.trainer()
            rem = torch.as_tensor(np.repeat(removed_row[None], repeats, 0), device=self.device)
            params = trainer.fit(rem, self.seeds)
            return [{k: v.detach().cpu() for k, v in trainer.select(params, [rr]).items()} for rr in range(repeats)]
        keep = np.flatnonzero(~removed_row[self.labels])
        return [self.fit_one(rr, keep)[0] for rr in range(repeats)]
