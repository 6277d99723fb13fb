"""EcoVal's built-in learners (docs/ecoval.md §2), each in two forms.

Single models, scikit-learn style (fit / predict_proba / predict, get_params / set_params, so sklearn.base.clone
works): ``LogReg``, ``Ridge``, ``MLP``. They run on EcoVal's loop path and are the peers of the parity tests.

Batched trainers: ``BatchedLogReg``, ``BatchedRidge``, ``BatchedMLP`` train T subset models of one data set at
once. Model s sees the rows whose cluster it keeps (the 0/1 mask M[s, k] = 1 - removed[s, c(k)], gathered on the
fly) and minimises exactly the objective of fitting those rows alone:

- logreg: multinomial logistic regression, (1/n_s) sum_k M[s,k] CE_k + (l2/2) ||W_s||^2 (intercept included, so
  every subset problem, also one that misses a class, has one finite minimiser). The optimum has rows of W summing
  to zero over the classes, so W = V Q^T with Q an orthonormal basis of the sum-zero space (C - 1 columns; binary
  problems get one weight vector). Two solvers, each with an Armijo line search per model and each model frozen
  (and dropped from the working set) once ||grad_W||_inf <= tol:
  - "lbfgs" (the batched default): an iteration costs two GEMMs over all models, the predictors of the
    directions D F^T and the gradients R F at the unit step, in one pass over F's row blocks (made from X per
    block on the CPU, never stored), plus a few elementwise passes over (T, n); the two-loop recursion,
    the backtracking and the stopping test run on (T, ·) arrays (``_LogRegObjective`` has the layout; more than
    two classes iterate on W itself, which stays sum-zero). tol 1e-8: L-BFGS stops just below tol, and the
    parameters then lie within about ||grad|| / l2 of the optimum.
  - "newton": the exact Hessian and a batched Cholesky; the Hessians of all models are one GEMM of the (T, n)
    curvature weights with the packed outer products x_k x_k^T (n, D(D+1)/2), the same O(n D^2) flops per model
    as a separate fit, so batching only removes call overhead. tol 1e-6 (quadratic convergence lands far below).
  ``LogReg(solver=...)`` runs the same iterations on one model (its default is "newton", the fastest single fit).
- ridge: (1/n_s) sum ½(y - x·w - b)^2 + (l2/2)||w||^2, intercept unpenalised: per-cluster Gram sums, then T
  batched Cholesky solves, independent of n.
- mlp: 1 x 100 ReLU, Adam 1e-3, batch 128, 30 epochs, weights stacked as (T, d, h) and (T, h, C). Every model of a
  repeat starts from the same initialisation and walks the shared epoch order restricted to its rows, in batches
  of b with the last partial batch kept (what ``MLP.fit(X, y, rows=...)`` does alone); a model whose epoch is over
  skips the step and its Adam state stays put.

``exact_predict`` evaluates one stored model row by row in float64 numpy with elementwise operations only and
Python's math.exp: a row's result then never depends on which other rows are in the call, so EcoVal's in-sample
and out-of-sample values agree bit for bit.

``LEARNERS`` is the registry EcoVal reads (one ``Learner`` entry per built-in learner: its tasks, batched trainer,
single model, parameter layout, bytes per model and exact predictions); a new built-in learner is one more entry.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from typing import Callable

import numpy as np
import torch

L2 = 1e-3
TOL = 1e-6                 # Newton: quadratic convergence leaves the final gradient far below this
NEWTON_MAX_ITER = 100
# L-BFGS stops when the gradient is just below tol, and the parameters then sit up to ||grad|| / l2 from the optimum
# (l2 = 1e-3 is the smallest curvature): 1e-8 keeps them within ~1e-5 of Newton's, the utilities within ~1e-6.
LBFGS_TOL = 1e-8
LBFGS_MAX_ITER = 1000
# pairs kept: on pol (p = 20) 10 take 78 iterations on average, 30 take 49, 60 take 43; the two-loop grows with it
LBFGS_MEMORY = 30
FEATURE_BLOCK = 8192        # L-BFGS on the CPU: rows of F made at a time for a GEMM (~2 MiB at d = 32: in cache)
SOLVERS = ("lbfgs", "newton")


# --------------------------------------------------------------------------------------------------- helpers
class _Params:
    """get_params / set_params from the __init__ signature (what sklearn.base.clone needs)."""

    def get_params(self, deep: bool = True) -> dict:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params):
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; valid: {sorted(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _device(device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _features(X, dtype, device) -> torch.Tensor:
    t = X.detach() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.dim() != 2:
        raise ValueError(f"X must be 2-D (points x features), got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


def sum_zero_basis(n_classes: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(C, C-1) orthonormal columns orthogonal to the all-ones vector (Helmert contrasts)."""
    Q = torch.zeros(n_classes, n_classes - 1, dtype=torch.float64)
    for j in range(1, n_classes):
        Q[:j, j - 1] = 1.0
        Q[j, j - 1] = -float(j)
        Q[:, j - 1] /= math.sqrt(j * (j + 1))
    return Q.to(dtype=dtype, device=device)


def exact_linear(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b + X W, accumulated feature by feature with elementwise numpy operations: each row's result is independent
    of the other rows (a GEMM's rounding may depend on the matrix shape)."""
    X = np.asarray(X, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    out = np.empty((X.shape[0], W.shape[1]), dtype=np.float64)
    out[:] = np.asarray(b, dtype=np.float64)
    for a in range(X.shape[1]):
        out += X[:, a:a + 1] * W[a]
    return out


def exact_softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax with Python's math.exp (vectorised exp kernels round tails differently from full vectors)."""
    rows = []
    for row in np.asarray(logits, dtype=np.float64).tolist():
        top = max(row)
        e = [math.exp(z - top) for z in row]
        total = 0.0
        for v in e:
            total += v
        rows.append([v / total for v in e])
    return np.asarray(rows, dtype=np.float64).reshape(np.shape(logits))


def _labels(y, n_classes, device) -> tuple[torch.Tensor, int]:
    t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if t.dim() != 1:
        raise ValueError(f"y must be a 1-D vector of class codes, got shape {tuple(t.shape)}")
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError("y must hold integer class codes 0..C-1")
    t = t.long().to(device)
    C = int(t.max()) + 1 if n_classes is None else int(n_classes)
    if int(t.min()) < 0 or int(t.max()) >= C:
        raise ValueError(f"y must hold class codes in 0..{C - 1}, got values in {int(t.min())}..{int(t.max())}")
    return t, C


# --------------------------------------------------------------------------------------------------- logreg
class _NewtonLogReg:
    """Batched Newton for L2-regularised multinomial logistic regression on one feature matrix (see module doc).

    Arrays keep the model axis last, (·, n, T): the logits and gradients of all T models are single GEMMs against
    the shared X, and reductions over the (few) classes run as elementwise operations over whole (n, T) slices.
    Parameters are V (C-1, d+1, T) in the sum-zero basis Q; W = Q V."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, tol: float, max_iter: int,
                 memory_budget: int = 256 << 20):
        self.Xbar = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1).contiguous()
        self.XbarT = self.Xbar.T.contiguous()
        y = y.long()
        self.y, self.C, self.l2, self.tol, self.max_iter = y, n_classes, float(l2), float(tol), int(max_iter)
        n, D1 = self.Xbar.shape
        self.Q = sum_zero_basis(n_classes, X.dtype, X.device)
        self.Cp = Cp = n_classes - 1
        self.Y = torch.nn.functional.one_hot(y, n_classes).T.to(X.dtype)[:, :, None].contiguous()  # (C, n, 1)
        self.first = self.Y[0]                                             # (n, 1): 1 where y = 0
        self.sign = 2.0 * self.first - 1.0                                 # +1 for class 0, -1 for class 1
        self.pairs = [(a, b) for a in range(Cp) for b in range(a, Cp)]
        self.iu = torch.triu_indices(D1, D1, device=X.device)
        F = self.iu.shape[1]
        E = len(self.pairs)
        # where each entry of the (Cp*D1)^2 Hessian sits in the packed (E, F) products: one gather unpacks it
        packed_of = torch.full((D1, D1), -1, dtype=torch.long)
        packed_of[self.iu[0].cpu(), self.iu[1].cpu()] = torch.arange(F)
        packed_of = torch.maximum(packed_of, packed_of.T)
        pair_of = {(a, b): e for e, (a, b) in enumerate(self.pairs)}
        unpack = torch.empty(Cp, D1, Cp, D1, dtype=torch.long)
        for a in range(Cp):
            for b in range(Cp):
                unpack[a, :, b, :] = pair_of[(min(a, b), max(a, b))] * F + packed_of
        self.unpack = unpack.reshape(-1).to(X.device)
        # packed outer products x_k x_k^T, (n, F): stored when they fit the budget, else rebuilt per row block
        self.row_block = max(1, min(n, memory_budget // max(1, 8 * F)))
        self.outer = self._outer(0, n) if self.row_block >= n else None

    def _outer(self, start, stop):
        x = self.Xbar[start:stop]
        return x[:, self.iu[0]] * x[:, self.iu[1]]

    def _rotate(self, A: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Q A over the leading axis ((Cp, ...) -> (C, ...)), or Q^T A when transpose; few classes, so a sum."""
        Q = self.Q.T if transpose else self.Q
        out = None
        for k in range(Q.shape[1]):
            term = Q[:, k].reshape((-1,) + (1,) * (A.dim() - 1)) * A[k]
            out = term if out is None else out + term
        return out

    # Binary problems (C = 2, Q = (1, -1)/sqrt 2) run on (n, T) arrays: Z is the logit difference
    # s = z_0 - z_1 = sqrt 2 x.v and the auxiliary array is p_0 = sigmoid(s); otherwise Z (C, n, T) and log-sum-exp.
    def logits(self, V: torch.Tensor) -> torch.Tensor:
        """V (Cp, D1, T) -> Z (C, n, T), or the logit difference (n, T) for two classes."""
        if self.Cp == 1:
            return math.sqrt(2.0) * (self.Xbar @ V[0])
        return self._rotate(torch.matmul(self.Xbar, V))

    def loss(self, Z: torch.Tensor, coef: torch.Tensor, V: torch.Tensor):
        """Objective (T,) and the auxiliary array (n, T): log-sum-exp, or p_0 for two classes."""
        if self.Cp == 1:
            r = self.sign * Z                                              # z_y - z_other
            ce = torch.clamp(-r, min=0.0) + torch.log1p(torch.exp(-r.abs()))
            return (coef * ce).sum(0) + 0.5 * self.l2 * V.square().sum((0, 1)), torch.sigmoid(Z)
        top = Z.amax(0)
        lse = top + torch.log(torch.exp(Z - top).sum(0))
        zy = Z.gather(0, self.y[None, :, None].expand(1, -1, Z.shape[2]))[0]
        f = (coef * (lse - zy)).sum(0) + 0.5 * self.l2 * V.square().sum((0, 1))
        return f, lse

    def hessian(self, P: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """(T, Cp*D1, Cp*D1) from P (C, n, T) (two classes: p_0 (n, T)); parameter order (class, feature)."""
        n, T = coef.shape
        D1 = self.Xbar.shape[1]
        if self.Cp == 1:
            W = (2.0 * P * (1.0 - P) * coef).T                             # (T, n): Q^T (diag p - p p^T) Q = 2 p0 p1
        else:
            C, Q = self.C, self.Q
            u = self._rotate(P, transpose=True)                            # (Cp, n, T)
            weights = []
            for a, b in self.pairs:
                diag = None
                for c in range(C):
                    term = (Q[c, a] * Q[c, b]) * P[c]
                    diag = term if diag is None else diag + term
                weights.append((diag - u[a] * u[b]) * coef)
            W = torch.stack(weights, 0).permute(0, 2, 1).reshape(-1, n)  # (E*T, n)
        if self.outer is not None:
            packed = W @ self.outer
        else:
            packed = None
            for start in range(0, n, self.row_block):
                stop = min(n, start + self.row_block)
                part = W[:, start:stop] @ self._outer(start, stop)
                packed = part if packed is None else packed + part
        E = len(self.pairs)
        packed = packed.view(E, T, -1).transpose(0, 1).reshape(T, -1)      # (T, E*F)
        H = packed.index_select(1, self.unpack).view(T, self.Cp * D1, self.Cp * D1)
        H.diagonal(dim1=1, dim2=2).add_(self.l2)
        return H

    def gradient(self, Z, lse, coef, V):
        """V-space gradient (Cp, D1, T), its W-space sup norm (T,) and the probabilities (C, n, T) (p_0 (n, T))."""
        if self.Cp == 1:
            GV = (self.XbarT @ (coef * (math.sqrt(2.0) * (lse - self.first)))).unsqueeze(0) + self.l2 * V
            return GV, GV.abs().amax((0, 1)) / math.sqrt(2.0), lse
        P = torch.exp(Z - lse)
        R = coef * (P - self.Y)
        GV = torch.matmul(self.XbarT, self._rotate(R, transpose=True)) + self.l2 * V
        return GV, self._rotate(GV).abs().amax((0, 1)), P

    def fit(self, masks: torch.Tensor, V0: torch.Tensor | None = None):
        """masks (T, n) 0/1, V0 (Cp, D1, T) start (zeros) -> W (T, D1, C) (last row: intercepts), V (Cp, D1, T),
        Newton steps (T,), converged (T,). The models still running form a work set, compacted only when some
        converge."""
        T, n = masks.shape
        D1, Cp = self.Xbar.shape[1], self.Cp
        dev, dtype = self.Xbar.device, self.Xbar.dtype
        V_out = torch.zeros(Cp, D1, T, dtype=dtype, device=dev) if V0 is None else V0.clone()
        steps = torch.zeros(T, dtype=torch.long)
        converged = torch.zeros(T, dtype=torch.bool)
        ids = torch.arange(T, device=dev)                                  # work set -> model index
        coef = (masks / masks.sum(1, keepdim=True)).T.contiguous()        # (n, T): 1/n_s on the kept rows
        V = V_out.clone()
        Z = self.logits(V)
        f, lse = self.loss(Z, coef, V)
        for it in range(self.max_iter + 1):
            GV, sup, P = self.gradient(Z, lse, coef, V)
            done = sup <= self.tol
            if bool(done.any()):
                converged[ids[done].cpu()] = True
                V_out[..., ids[done]] = V[..., done]
            if it == self.max_iter or bool(done.all()):
                V_out[..., ids[~done]] = V[..., ~done]
                break
            if bool(done.any()):  # compact the work set
                keep = ~done
                ids, V, Z, lse, f, coef, GV, P = (ids[keep], V[..., keep], Z[..., keep], lse[:, keep], f[keep],
                                                  coef[:, keep], GV[..., keep], P[..., keep])
            Ta = ids.numel()
            g = GV.permute(2, 0, 1).reshape(Ta, Cp * D1)
            H = self.hessian(P, coef)
            L, info = torch.linalg.cholesky_ex(H)
            if bool((info > 0).any()):  # only with l2 = 0 on degenerate data: a tiny ridge restores definiteness
                H = H + 1e-10 * torch.eye(H.shape[1], dtype=H.dtype, device=dev)
                L = torch.linalg.cholesky(H)
            step = -torch.cholesky_solve(g[..., None], L)[..., 0]         # (Ta, Cp*D1)
            Dv = step.T.reshape(Cp, D1, Ta)
            slope = (g * step).sum(1)
            # Armijo backtracking, per model: the full step for everybody first, halvings for the rest
            Vt = V + Dv
            Zt = self.logits(Vt)
            ft, lt = self.loss(Zt, coef, Vt)
            ok = ft <= f + 1e-4 * slope
            V, Z = torch.where(ok, Vt, V), torch.where(ok, Zt, Z)
            lse, f = torch.where(ok, lt, lse), torch.where(ok, ft, f)
            steps[ids[ok].cpu()] += 1
            pending = (~ok).nonzero()[:, 0]
            t = 1.0
            for _ in range(60):
                if pending.numel() == 0:
                    break
                t *= 0.5
                Vt = V[..., pending] + t * Dv[..., pending]
                Zt = self.logits(Vt)
                ft, lt = self.loss(Zt, coef[:, pending], Vt)
                ok = ft <= f[pending] + 1e-4 * t * slope[pending]
                rows = pending[ok]
                V[..., rows], Z[..., rows], lse[:, rows], f[rows] = Vt[..., ok], Zt[..., ok], lt[:, ok], ft[ok]
                steps[ids[rows].cpu()] += 1
                pending = pending[~ok]
            if pending.numel():  # no decrease left at rounding level: the tolerance is out of reach for these
                V_out[..., ids[pending]] = V[..., pending]
                keep = torch.ones(ids.numel(), dtype=torch.bool, device=dev)
                keep[pending] = False
                ids, V, Z, lse, f, coef = ids[keep], V[..., keep], Z[..., keep], lse[:, keep], f[keep], coef[:, keep]
                if ids.numel() == 0:
                    break
        W = self._rotate(V_out).permute(2, 1, 0).contiguous()              # (T, D1, C)
        return W, V_out, steps, converged


class _LogRegObjective:
    """The logreg objective of T models on one feature matrix, in the layout both L-BFGS versions use (the single
    model is T = 1, so the single and the batched solver evaluate the same formulas).

    Model axis first: parameters V (T, K, D1), linear predictors A (T, K, n), row weights coef (T, n) = mask / n_s.
    A = V F^T is one GEMM over all models, the gradient one more, R F; on the CPU both run over F's row blocks,
    made from X when needed (``trial`` does the direction's predictors, the objective and the gradient at the unit
    step in one pass), so the memory is X itself plus about two (T, K, n) float64 arrays (A and the direction's
    AD), the class of each row (1 byte) and the row weights (BatchedLogReg on the CPU: made per block from the kept
    clusters, no (T, n) mask); on a GPU F^T is stored once. Dropping models from the working set is a row gather.
    - Two classes, K = 1: V is the sum-zero coordinate (W = Q V) and F = -sign * sqrt 2 * Xbar (sign +1 for class
      0), so A is minus the margin of the true class, the cross-entropy softplus(A), its derivative sigmoid(A):
      one transcendental pass each, accurate in both tails.
    - More classes, K = C: V = W^T itself. Started at 0, the iterates stay sum-zero over the classes (the
      cross-entropy gradient sums to zero over them, and L-BFGS combines gradients), which is the Q-basis
      iteration in other coordinates (Q is orthonormal), without rotating (T, C, n) arrays."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, block: int | None = None,
                 transform=None):
        """transform: applied to each row block of X (e.g. standardisation of raw features), so that no
        transformed copy of the whole X is needed (one with a method into(out, rows) writes the float64 block into
        out in place); None: X as float64. On the CPU F is never stored: every GEMM
        makes F's rows block by block from X (a float32 X: no float64 copy of it at all; the blocks stay in cache,
        so this costs about what streaming a stored float64 F^T from memory does); on a GPU F^T (D1, n) is stored
        once, filled in row blocks."""
        n, d = X.shape
        self._transform = transform
        self.C, self.l2 = n_classes, float(l2)
        self.K = 1 if n_classes == 2 else n_classes
        self.n, self.D1 = n, d + 1
        self.dtype, self.device = torch.float64, X.device
        self.block = int(block) if block is not None else (FEATURE_BLOCK if X.device.type == "cpu" else 1 << 15)
        if self.K == 1:
            # F's row scale -sqrt 2 * sign (sign +1 for class 0, -1 for class 1), made per block from a byte a row
            self._class1 = (y == 1)
            self._scale = torch.tensor([-math.sqrt(2.0), math.sqrt(2.0)], dtype=self.dtype, device=X.device)
            self.Q = sum_zero_basis(2, self.dtype, X.device)
        else:
            self._scale = None
            self.y = y.long()
            self.Y = torch.nn.functional.one_hot(self.y, n_classes).T.to(self.dtype)[None].contiguous()  # (1, C, n)
        self.X, self.FT = X, None
        if X.device.type != "cpu":
            FT = torch.empty(self.D1, n, dtype=self.dtype, device=X.device)
            for lo, hi in self._ranges():
                FT[:, lo:hi] = self._features(lo, hi).T
            self.FT, self.X = FT, None

    def _ranges(self):
        return [(lo, min(self.n, lo + self.block)) for lo in range(0, self.n, self.block)]

    def _features(self, lo: int, hi: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """F's rows lo:hi (hi - lo, D1) float64: the transformed X rows (times -sqrt 2 sign, two classes) and the
        intercept column."""
        d = self.D1 - 1
        F = torch.empty(hi - lo, self.D1, dtype=self.dtype, device=self.device) if out is None else out[:hi - lo]
        Fd, rows = F[:, :d], self.X[lo:hi]
        if self._transform is None:
            Fd.copy_(rows)
        elif hasattr(self._transform, "into"):   # in place: no temporaries per block
            self._transform.into(Fd, rows)
        else:
            Fd.copy_(self._transform(rows))
        if self._scale is None:
            F[:, d] = 1.0
        else:
            scale = self._scale.index_select(0, self._class1[lo:hi].long())
            Fd.mul_(scale[:, None])
            F[:, d] = scale
        return F

    def _blocks(self):
        """(lo, hi, F^T's columns lo:hi (D1, hi - lo)): the stored F^T, or blocks made from X in one buffer."""
        if self.FT is not None:
            yield 0, self.n, self.FT
            return
        buffer = torch.empty(min(self.block, self.n), self.D1, dtype=self.dtype, device=self.device)
        for lo, hi in self._ranges():
            yield lo, hi, self._features(lo, hi, buffer).T

    def _ranges_of_work(self):
        """Row ranges of the elementwise passes: F's blocks on the CPU (no (T, n) temporary), all rows on a GPU."""
        return self._ranges() if self.FT is None else [(0, self.n)]

    @staticmethod
    def _at(A, AD, t, lo, hi, rows=None):
        """Columns lo:hi of the predictors A + t AD (AD None: A; t None: 1) of the models `rows` (None: all), made
        per block as a new contiguous array (A(t) is not stored; every model's elementwise passes then see the same
        layout, whichever path made its block)."""
        Ab = A[..., lo:hi] if rows is None else A[..., lo:hi].index_select(0, rows)
        if AD is None:
            return Ab.contiguous() if rows is None else Ab
        ADb = AD[..., lo:hi] if rows is None else AD[..., lo:hi].index_select(0, rows)
        return Ab + ADb if t is None else Ab + ADb * t[:, None, None]

    def step(self, A: torch.Tensor, AD: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A + t AD in place, block by block (t = 1: A + AD; t = 0: A): no (T, K, n) temporary."""
        for lo, hi in self._ranges_of_work():
            A[..., lo:hi].add_(AD[..., lo:hi] * t[:, None, None])
        return A

    def _cross_entropy(self, Ab: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """(T, hi - lo) cross-entropies of a block of predictors (T, K, hi - lo)."""
        if self.K == 1:
            # threshold 40: above it softplus(a) = a to within exp(-40) relative, below it log1p(exp(a))
            return torch.nn.functional.softplus(Ab[:, 0], threshold=40.0)
        return torch.logsumexp(Ab, 1) - Ab.gather(1, self.y[lo:hi].expand(Ab.shape[0], 1, -1))[:, 0]

    def _residuals(self, Ab: torch.Tensor, coef_b: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """(T K, hi - lo) weighted residuals of a block: the cross-entropy's derivative in the predictors."""
        if self.K == 1:
            return torch.sigmoid(Ab[:, 0]).mul_(coef_b)                                  # (T, hi - lo)
        R = torch.softmax(Ab, 1).sub_(self.Y[..., lo:hi]).mul_(coef_b[:, None])           # (T, C, hi - lo)
        return R.reshape(-1, hi - lo)

    def objective(self, A: torch.Tensor, V: torch.Tensor, coef: torch.Tensor, AD: torch.Tensor | None = None,
                  t: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(T,): sum_k coef[s, k] CE_k + (l2/2)||V_s||^2 at the predictors A + t AD of the models `rows` (see
        ``_at``; V and coef: those models' already)."""
        total = None
        for lo, hi in self._ranges_of_work():
            part = torch.linalg.vecdot(coef.block(lo, hi), self._cross_entropy(self._at(A, AD, t, lo, hi, rows), lo,
                                                                                hi), dim=-1)
            total = part if total is None else total.add_(part)
        return total + self._penalty(V)

    def _penalty(self, V: torch.Tensor) -> torch.Tensor:
        Vm = V.reshape(V.shape[0], -1)
        return (0.5 * self.l2) * torch.linalg.vecdot(Vm, Vm, dim=-1)

    def gradient(self, A: torch.Tensor, V: torch.Tensor, coef: torch.Tensor,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        """(T, K, D1) gradient in V at the predictors A of the models `rows` (None: all; V and coef: theirs); the
        residuals are made per block of F (no (T, K, n) temporary on the CPU)."""
        T = V.shape[0]
        G = torch.zeros(T * self.K, self.D1, dtype=self.dtype, device=self.device)
        for lo, hi, FTb in self._blocks():
            G.addmm_(self._residuals(self._at(A, None, None, lo, hi, rows), coef.block(lo, hi), lo, hi), FTb.T)
        return G.view(T, self.K, self.D1) + self.l2 * V

    def trial(self, A: torch.Tensor, V1: torch.Tensor, coef: torch.Tensor, D: torch.Tensor):
        """The unit step of every model along its direction D (T, K, D1), in ONE pass over F: the direction's
        predictors AD = D F^T (T, K, n), and at A + AD (parameters V1 = V + D) the objective (T,) and the gradient
        (T, K, D1), which hold once the step is accepted (most iterations); each block of F is made once."""
        T = D.shape[0]
        Dm = D.reshape(T * self.K, self.D1)
        AD = torch.empty(T * self.K, self.n, dtype=self.dtype, device=self.device)
        AD3 = AD.view(T, self.K, self.n)
        G = torch.zeros(T * self.K, self.D1, dtype=self.dtype, device=self.device)
        total = None
        for lo, hi, FTb in self._blocks():
            torch.mm(Dm, FTb, out=AD[:, lo:hi])
            Ab = self._at(A, AD3, None, lo, hi)
            coef_b = coef.block(lo, hi)
            part = torch.linalg.vecdot(coef_b, self._cross_entropy(Ab, lo, hi), dim=-1)
            total = part if total is None else total.add_(part)
            G.addmm_(self._residuals(Ab, coef_b, lo, hi), FTb.T)
        return AD3, total + self._penalty(V1), G.view(T, self.K, self.D1) + self.l2 * V1

    def sup_norm(self, G: torch.Tensor) -> torch.Tensor:
        """(T,) ||grad_W||_inf, the stopping measure of both solvers (two classes: grad_W = Q grad_V)."""
        return G.abs().amax((1, 2)) / (math.sqrt(2.0) if self.K == 1 else 1.0)

    def weights(self, V: torch.Tensor) -> torch.Tensor:
        """V (T, K, D1) -> W (T, D1, C) (last row: intercepts)."""
        if self.K == 1:
            return torch.einsum("ck,tkd->tdc", self.Q, V).contiguous()
        return V.transpose(1, 2).contiguous()


class _RowWeights:
    """The row weights coef (T, n) = mask / n_s of T models, stored as the mask (1 byte a row) and 1 / n_s;
    block(lo, hi) makes coef's columns lo:hi with the bits of the float64 weights (mask * (1 / n_s))."""

    def __init__(self, keep: torch.Tensor, w: torch.Tensor):
        self.keep, self.w = keep, w

    @classmethod
    def of(cls, masks: torch.Tensor) -> "_RowWeights":
        keep = masks.bool() if masks.dtype != torch.bool else masks
        counts = keep.sum(1).to(torch.float64)
        return cls(keep, torch.ones_like(counts).div_(counts))

    def block(self, lo: int, hi: int) -> torch.Tensor:
        return self.keep[:, lo:hi].to(self.w.dtype).mul_(self.w[:, None])

    def index_select(self, dim: int, index: torch.Tensor) -> "_RowWeights":
        return _RowWeights(self.keep.index_select(dim, index), self.w.index_select(dim, index))


class _ClusterRowWeights(_RowWeights):
    """_RowWeights of models that keep whole clusters: the mask of a row is its cluster's, made per block from the
    (T, p) kept clusters and the rows' clusters (no (T, n) mask), with the same n_s and the same bits."""

    def __init__(self, weights: torch.Tensor, cluster_of: torch.Tensor, w: torch.Tensor):
        self.weights, self.cluster_of, self.w = weights, cluster_of, w   # weights (T, p): mask * (1 / n_s)

    @classmethod
    def of_clusters(cls, kept: torch.Tensor, cluster_of: torch.Tensor) -> "_ClusterRowWeights":
        sizes = torch.bincount(cluster_of, minlength=kept.shape[1])
        counts = (kept.long() * sizes).sum(1).to(torch.float64)
        w = torch.ones_like(counts).div_(counts)
        return cls(kept.to(w.dtype).mul_(w[:, None]), cluster_of, w)

    @property
    def shape(self):
        return (self.weights.shape[0], self.cluster_of.shape[0])

    def block(self, lo: int, hi: int) -> torch.Tensor:
        return self.weights.index_select(1, self.cluster_of[lo:hi])

    def index_select(self, dim: int, index: torch.Tensor) -> "_ClusterRowWeights":
        return _ClusterRowWeights(self.weights.index_select(dim, index), self.cluster_of,
                                  self.w.index_select(dim, index))


def _two_loop(G: torch.Tensor, S: torch.Tensor, Yh: torch.Tensor, rho: torch.Tensor, gamma: torch.Tensor,
              count: int, newest: int) -> torch.Tensor:
    """L-BFGS two-loop recursion for every model at once: H G, with G (T, P), the ring buffers S, Yh (m, T, P) and
    rho (m, T) (0 for a skipped pair), count stored pairs ending at slot `newest`, and H_0 = gamma I. The history
    is unbound once and the scalars updated in place: the loop is a chain of small ops, so per-op overhead counts."""
    m = S.shape[0]
    Sl, Yl, Rl = S.unbind(0), Yh.unbind(0), rho.unbind(0)
    order = [(newest - i) % m for i in range(count)]                          # newest to oldest
    q = G.clone()
    alphas = []
    for j in order:
        a = torch.linalg.vecdot(Sl[j], q, dim=-1).mul_(Rl[j])
        q.addcmul_(Yl[j], a.unsqueeze(1), value=-1.0)
        alphas.append(a)
    r = q.mul_(gamma.unsqueeze(1))
    for j, a in zip(reversed(order), reversed(alphas)):                       # oldest to newest
        b = torch.linalg.vecdot(Yl[j], r, dim=-1).mul_(Rl[j])
        r.addcmul_(Sl[j], a.sub_(b).unsqueeze(1))
    return r


ARMIJO_C, MAX_BACKTRACKS = 1e-4, 60


def _backtrack(obj: _LogRegObjective, A, AD, V, D, coef, f, slope, f1, rows=None):
    """Armijo backtracking for the models (first axis) whose unit step failed, f1 = f(1) > f + c slope. Each next
    trial minimises the quadratic through f, the slope and the model's last trial, kept within [0.1 t, 0.5 t];
    a model keeps its step once f(t) <= f + c t slope. One code path for one model and for many, so the single and
    the batched solver take the same steps. rows: the models of A and AD that backtrack (None: all; V, D, coef, f,
    slope and f1 are theirs already); the trial predictors A + t AD are made per block inside the objective, never
    stored. -> t, V(t), f(t), found (False: no decrease within 60 trials)."""
    t = torch.ones_like(f)
    ft = f1
    found = torch.zeros_like(f, dtype=torch.bool)
    for _ in range(MAX_BACKTRACKS):
        quad = (-slope) * t * t / (2.0 * (ft - f - slope * t))
        t = torch.where(found, t, torch.minimum(torch.maximum(quad, 0.1 * t), 0.5 * t))
        Vt = V + D * t[:, None, None]
        ft = obj.objective(A, Vt, coef, AD, t, rows)   # models already placed recompute the same value at the same t
        found = ft <= f + ARMIJO_C * t * slope
        if bool(found.all()):
            break
    return t, Vt, ft, found


def _secant_update(S, Yh, rho, gamma, newest, count, s, yv):
    """Store every model's pair (s, y) (T, P) in the ring buffers: rho = 1 / s.y when s.y > 0, else 0 (the pair
    is skipped); a kept pair sets H_0 = (s.y / y.y) I. -> newest, count, gamma."""
    m = S.shape[0]
    sy = torch.linalg.vecdot(s, yv, dim=-1)
    valid = sy > 0
    newest = (newest + 1) % m
    S[newest], Yh[newest] = s, yv
    rho[newest] = torch.where(valid, 1.0 / torch.where(valid, sy, 1.0), 0.0)
    gamma = torch.where(valid, sy / torch.where(valid, torch.linalg.vecdot(yv, yv, dim=-1), 1.0), gamma)
    return newest, min(count + 1, m), gamma


class _LbfgsLogReg:
    """Batched L-BFGS for T logistic regressions on one feature matrix (see the module doc).

    Every iteration of the working set costs two GEMMs over all its models (the direction's predictor D F^T and
    the gradient R F at the unit step, one pass over F; models that backtrack get their gradient from one more)
    and a few elementwise passes over (T, n); the two-loop recursion, the line search and the
    stopping test are per model but vectorised over the models. The rules (also ``LogReg(solver="lbfgs")``'s):
    start at 0 with H_0 = I; each iteration takes the two-loop direction d and the unit step when
    f(1) <= f + 1e-4 g.d, else backtracks (``_backtrack``; a model without decrease stops, not converged); the
    pair (s, y) updates the memory (``_secant_update``); a model stops once ||grad_W||_inf <= tol. Models that
    stop leave the working set (a row gather), so late iterations only touch the slow ones."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, tol: float, max_iter: int,
                 memory: int, transform=None):
        self.obj = _LogRegObjective(X, y, n_classes, l2, transform=transform)
        self.tol, self.max_iter, self.memory = float(tol), int(max_iter), int(memory)

    def fit(self, masks: torch.Tensor):
        """masks (T, n) 0/1 (bool or float; kept as bool with the weights 1/n_s), or the row weights themselves
        (a _RowWeights) -> W (T, D1, C), V (T, K, D1), iterations (T,), converged (T,)."""
        obj = self.obj
        T, n = masks.shape
        D1, K, m = obj.D1, obj.K, self.memory
        dev, dtype = obj.device, obj.dtype
        P = K * D1
        coef = masks if isinstance(masks, _RowWeights) else _RowWeights.of(masks)   # (T, n): 1/n_s on kept rows
        V_out = torch.zeros(T, K, D1, dtype=dtype, device=dev)
        steps = torch.zeros(T, dtype=torch.long)
        converged = torch.zeros(T, dtype=torch.bool)
        ids = torch.arange(T, device=dev)                                     # working set -> model index
        V = torch.zeros(T, K, D1, dtype=dtype, device=dev)
        A = torch.zeros(T, K, n, dtype=dtype, device=dev)
        f = obj.objective(A, V, coef)
        G = obj.gradient(A, V, coef)
        S = torch.zeros(m, T, P, dtype=dtype, device=dev)
        Yh = torch.zeros(m, T, P, dtype=dtype, device=dev)
        rho = torch.zeros(m, T, dtype=dtype, device=dev)
        gamma = torch.ones(T, dtype=dtype, device=dev)
        stalled = torch.zeros(T, dtype=torch.bool, device=dev)
        count, newest = 0, -1
        for it in range(self.max_iter + 1):
            done = obj.sup_norm(G) <= self.tol
            leave = done | stalled
            if it == self.max_iter:
                leave = torch.ones_like(leave)
            if bool(leave.any()):  # record the leavers, compact the working set
                out = ids[leave]
                V_out[out] = V[leave]
                converged[out.cpu()] = done[leave].cpu()
                steps[out.cpu()] = it - stalled[leave].long().cpu()
                keep = (~leave).nonzero()[:, 0]
                if keep.numel() == 0:
                    break
                ids, V, A, f, G, coef, gamma, stalled = (x.index_select(0, keep) for x in
                                                         (ids, V, A, f, G, coef, gamma, stalled))
                S, Yh, rho = S.index_select(1, keep), Yh.index_select(1, keep), rho.index_select(1, keep)
            Ta = ids.numel()
            Gm = G.view(Ta, P)
            D = _two_loop(Gm, S, Yh, rho, gamma, count, newest).neg_().view(Ta, K, D1)
            slope = torch.linalg.vecdot(Gm, D.view(Ta, P), dim=-1)
            V_new = V + D
            AD, f_new, G_new = obj.trial(A, V_new, coef, D)   # the unit step: objective and gradient, one pass
            ok = f_new <= f + ARMIJO_C * slope
            t = torch.ones_like(f)
            pend = None
            if not bool(ok.all()):
                pend = (~ok).nonzero()[:, 0]
                V_p, f_p = V.index_select(0, pend), f.index_select(0, pend)
                tp, Vt, ft, found = _backtrack(obj, A, AD, V_p, D.index_select(0, pend), coef.index_select(0, pend),
                                               f_p, slope.index_select(0, pend), f_new.index_select(0, pend), pend)
                # a model without decrease (rounding level) stays where it is (t = 0) and leaves, not converged
                t.index_copy_(0, pend, torch.where(found, tp, 0.0))
                V_new.index_copy_(0, pend, torch.where(found[:, None, None], Vt, V_p))
                f_new.index_copy_(0, pend, torch.where(found, ft, f_p))
                stalled.index_copy_(0, pend, ~found)
            # A + t AD in place (the old predictors are not needed again): no third (T, K, n) array. A is the only
            # name of the predictors: a second one (A_new = A) would keep the working set's old predictors alive
            # through the next iteration's trial once a compaction rebinds A (old T + new T + AD: +38 MiB at
            # 10^6 points, 7 -> 6 models)
            obj.step(A, AD, t)
            del AD
            if pend is not None:   # the backtracked models' gradients, at their step
                G_new.index_copy_(0, pend, obj.gradient(A, V_new.index_select(0, pend),
                                                        coef.index_select(0, pend), pend))
            newest, count, gamma = _secant_update(S, Yh, rho, gamma, newest, count, (V_new - V).view(Ta, P),
                                                  (G_new - G).view(Ta, P))
            V, f, G = V_new, f_new, G_new
        return obj.weights(V_out), V_out, steps, converged


def _lbfgs_single(obj: _LogRegObjective, tol: float, max_iter: int, memory: int):
    """``_LbfgsLogReg``'s iterations for one model (obj built on that model's rows): the same code on T = 1, the
    decisions taken on the host. -> V (1, K, D1), iterations, converged."""
    n, D1, K, m = obj.n, obj.D1, obj.K, int(memory)
    dev, dtype = obj.device, obj.dtype
    P = K * D1
    coef = _RowWeights(torch.ones(1, n, dtype=torch.bool, device=dev), torch.full((1,), 1.0 / n, dtype=dtype,
                                                                                 device=dev))
    V = torch.zeros(1, K, D1, dtype=dtype, device=dev)
    A = torch.zeros(1, K, n, dtype=dtype, device=dev)
    f = obj.objective(A, V, coef)
    G = obj.gradient(A, V, coef)
    S = torch.zeros(m, 1, P, dtype=dtype, device=dev)
    Yh = torch.zeros(m, 1, P, dtype=dtype, device=dev)
    rho = torch.zeros(m, 1, dtype=dtype, device=dev)
    gamma = torch.ones(1, dtype=dtype, device=dev)
    count, newest = 0, -1
    for it in range(max_iter + 1):
        if bool(obj.sup_norm(G) <= tol):
            return V, it, True
        if it == max_iter:
            return V, it, False
        Gm = G.view(1, P)
        D = _two_loop(Gm, S, Yh, rho, gamma, count, newest).neg_().view(1, K, D1)
        slope = torch.linalg.vecdot(Gm, D.view(1, P), dim=-1)
        V_new = V + D
        AD, f_new, G_new = obj.trial(A, V_new, coef, D)       # the unit step: objective and gradient, one pass
        t = torch.ones_like(f)
        backtracked = not bool(f_new <= f + ARMIJO_C * slope)
        if backtracked:
            t, V_new, f_new, found = _backtrack(obj, A, AD, V, D, coef, f, slope, f_new)
            if not bool(found):
                return V, it, False  # no decrease left at rounding level
        A_new = obj.step(A, AD, t)   # in place: the old predictors are not needed again
        del AD
        if backtracked:
            G_new = obj.gradient(A_new, V_new, coef, torch.zeros(1, dtype=torch.long, device=dev))
        newest, count, gamma = _secant_update(S, Yh, rho, gamma, newest, count, (V_new - V).view(1, P),
                                              (G_new - G).view(1, P))
        A, V, f, G = A_new, V_new, f_new, G_new
    return V, max_iter, False


def _solver_settings(solver, tol, max_iter, memory) -> tuple[str, float, int, int]:
    """Validated (solver, tol, max_iter, memory), with each solver's defaults for None."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    default_tol, default_iter = (LBFGS_TOL, LBFGS_MAX_ITER) if solver == "lbfgs" else (TOL, NEWTON_MAX_ITER)
    tol = default_tol if tol is None else float(tol)
    max_iter = default_iter if max_iter is None else int(max_iter)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter!r}")
    if int(memory) < 1:
        raise ValueError(f"memory must be >= 1, got {memory!r}")
    return solver, tol, max_iter, int(memory)


class LogReg(_Params):
    """Multinomial logistic regression: mean cross-entropy + (l2/2)||W||^2 (intercept included), solved to
    ||grad_W||_inf <= tol. solver="newton" (default: the fastest for one model, a handful of steps) or "lbfgs"
    (the iterations ``BatchedLogReg(solver="lbfgs")`` runs for each of its models; ``memory`` pairs). tol and
    max_iter default per solver (None): Newton 1e-6 and 100, L-BFGS 1e-8 and 1000. ``n_classes`` fixes C
    (codes 0..C-1) so a subset that misses a class still gets all C columns; None takes max(y) + 1.
    Attributes: coef_ (d, C), intercept_ (C,), classes_, n_iter_, converged_, solver_."""

    def __init__(self, l2: float = L2, tol: float | None = None, max_iter: int | None = None,
                 n_classes: int | None = None, device=None, solver: str = "newton", memory: int = LBFGS_MEMORY):
        self.l2, self.tol, self.max_iter, self.n_classes, self.device = l2, tol, max_iter, n_classes, device
        self.solver, self.memory = solver, memory

    def fit(self, X, y):
        solver, tol, max_iter, memory = _solver_settings(self.solver, self.tol, self.max_iter, self.memory)
        dev = _device(self.device)
        X = _features(X, torch.float64, dev)
        y, C = _labels(y, self.n_classes, dev)
        if C < 2:
            raise ValueError(f"LogReg needs at least 2 classes, got n_classes={C}")
        self.solver_ = solver
        if solver == "lbfgs":
            obj = _LogRegObjective(X, y, C, float(self.l2))
            V, self.n_iter_, self.converged_ = _lbfgs_single(obj, tol, max_iter, memory)
            if not self.converged_:
                warnings.warn(f"LogReg stopped after {self.n_iter_} L-BFGS iterations with ||grad||_inf > "
                              f"tol={tol}", RuntimeWarning, stacklevel=2)
            W = obj.weights(V)[0]
        else:
            W = self._newton(X, y, C, tol, max_iter)
        self.coef_ = W[:-1].cpu().numpy()
        self.intercept_ = W[-1].cpu().numpy()
        self.classes_ = np.arange(C)
        return self

    def _newton(self, X, y, C, tol, max_iter):
        dev = X.device
        n, d = X.shape
        Xbar = torch.cat([X, torch.ones(n, 1, dtype=X.dtype, device=dev)], 1)
        Q = sum_zero_basis(C, X.dtype, dev)
        Cp = C - 1
        Y = torch.nn.functional.one_hot(y, C).to(X.dtype)
        QQ = (Q[:, :, None] * Q[:, None, :]).reshape(C, Cp * Cp)
        V = torch.zeros(d + 1, Cp, dtype=X.dtype, device=dev)
        l2, root2 = float(self.l2), math.sqrt(2.0)
        sign = 1.0 - 2.0 * y.to(X.dtype)                                  # two classes: +1 for class 0

        def objective(V):
            """Objective, logits (two classes: s = z_0 - z_1) and log-sum-exp (two classes: p_0)."""
            if Cp == 1:
                Z = root2 * (Xbar @ V[:, 0])
                r = sign * Z
                ce = torch.clamp(-r, min=0.0) + torch.log1p(torch.exp(-r.abs()))
                return ce.mean() + 0.5 * l2 * V.square().sum(), Z, torch.sigmoid(Z)
            Z = Xbar @ V @ Q.T
            lse = torch.logsumexp(Z, 1)
            return (lse - Z.gather(1, y[:, None])[:, 0]).mean() + 0.5 * l2 * V.square().sum(), Z, lse

        f, Z, lse = objective(V)
        self.converged_, self.n_iter_ = False, 0
        while True:
            if Cp == 1:
                g = Xbar.T @ (root2 / n * (lse - Y[:, 0])) + l2 * V[:, 0]
                done = float(g.abs().max()) / root2 <= tol
            else:
                P = torch.exp(Z - lse[:, None])
                GW = Xbar.T @ (P - Y) / n + l2 * (V @ Q.T)
                done = float(GW.abs().max()) <= tol
                g = (GW @ Q).T.reshape(-1)
            if done:
                self.converged_ = True
                break
            if self.n_iter_ >= max_iter:
                break
            if Cp == 1:
                H = (Xbar.T * (2.0 / n * lse * (1.0 - lse))) @ Xbar
            else:
                u = P @ Q
                B = (P @ QQ).view(n, Cp, Cp) - u[:, :, None] * u[:, None, :]
                H = torch.zeros(Cp, d + 1, Cp, d + 1, dtype=X.dtype, device=dev)
                for a in range(Cp):
                    for b in range(a, Cp):
                        block = (Xbar.T * (B[:, a, b] / n)) @ Xbar
                        H[a, :, b, :] = block
                        H[b, :, a, :] = block
                H = H.view(Cp * (d + 1), Cp * (d + 1))
            H = H + l2 * torch.eye(Cp * (d + 1), dtype=X.dtype, device=dev)
            step = torch.cholesky_solve(-g[:, None], torch.linalg.cholesky(H))[:, 0]
            slope, t = float(g @ step), 1.0
            Dv = step.view(Cp, d + 1).T
            for _ in range(60):
                ft, Zt, lt = objective(V + t * Dv)
                if float(ft) <= float(f) + 1e-4 * t * slope:
                    break
                t *= 0.5
            else:
                break  # no decrease left at rounding level
            V, f, Z, lse = V + t * Dv, ft, Zt, lt
            self.n_iter_ += 1
        if not self.converged_:
            warnings.warn(f"LogReg stopped after {self.n_iter_} Newton steps with ||grad||_inf > tol={tol}",
                          RuntimeWarning, stacklevel=3)
        return V @ Q.T

    def decision_function(self, X) -> np.ndarray:
        X = _features(X, torch.float64, torch.device("cpu")).numpy()
        return X @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


class BatchedLogReg:
    """T logistic regressions on the masked rows of one (n, d) matrix; see the module doc. solver="lbfgs"
    (default) or "newton"; tol, max_iter (None: the solver's defaults, as in ``LogReg``) and memory as in
    ``LogReg``, whose fit with the same settings runs the same iterations on one model. transform: applied to
    row blocks of X to give the features (e.g. standardisation of the raw input; L-BFGS then never holds a
    transformed copy of X); None: X as float64."""

    classification = True

    def __init__(self, X: torch.Tensor, y: torch.Tensor, cluster_of: torch.Tensor, n_classes: int, *, l2=L2,
                 tol=None, max_iter=None, solver: str = "lbfgs", memory: int = LBFGS_MEMORY,
                 memory_budget: int = 256 << 20, transform=None):
        self.solver, tol, max_iter, memory = _solver_settings(solver, tol, max_iter, memory)
        self.cluster_of = cluster_of.to(X.device)   # the solvers keep their own layout of X, not X itself
        self.n_classes = n_classes
        y = y.to(X.device)
        if self.solver == "lbfgs":
            self.optimizer = _LbfgsLogReg(X, y, n_classes, l2, tol, max_iter, memory, transform)
        else:
            X = X.to(torch.float64) if transform is None else transform(X)
            self.optimizer = _NewtonLogReg(X, y, n_classes, l2, tol, max_iter, memory_budget)

    @staticmethod
    def bytes_per_model(n: int, d: int, n_classes: int, m_val: int) -> int:
        """Working memory of one model, the larger of the two solvers' (chunks then fit either)."""
        Cp, D1 = n_classes - 1, d + 1
        E = Cp * n_classes // 2
        newton = n * (6 * n_classes + 3 * E + 4) + 4 * (D1 * Cp) ** 2 + D1 * (D1 + 1) // 2 * E
        K = 1 if n_classes == 2 else n_classes                           # L-BFGS predictors per model
        # A and the direction's AD (T, K, n) float64, the mask 1 byte a row (F's blocks are shared by the models)
        lbfgs = n * (2 * K + 1) + (2 * LBFGS_MEMORY + 10) * D1 * K
        return 8 * (max(newton, lbfgs) + 3 * m_val * n_classes)

    def fit(self, removed: torch.Tensor, seeds) -> dict:
        """removed (T, p) bool -> {"W": (T, d+1, C), "steps": (T,), "converged": (T,)}. Every model starts from
        zero, like a separate fit, and the repeat seeds are not used (a convex problem has one answer): the
        iterates are those of ``LogReg`` (same solver) on the model's rows, up to rounding."""
        kept = ~removed.to(self.cluster_of.device)
        if self.solver == "lbfgs" and self.cluster_of.device.type == "cpu":   # row blocks: no (T, n) mask
            W, _, steps, converged = self.optimizer.fit(_ClusterRowWeights.of_clusters(kept, self.cluster_of))
            return {"W": W, "steps": steps, "converged": converged}
        masks = kept[:, self.cluster_of]   # (T, n) bool
        W, _, steps, converged = self.optimizer.fit(masks if self.solver == "lbfgs" else masks.to(torch.float64))
        return {"W": W, "steps": steps, "converged": converged}

    @staticmethod
    def select(params: dict, idx) -> dict:
        return {"W": params["W"][idx]}

    def predict(self, params: dict, X: torch.Tensor) -> torch.Tensor:
        """(T, m, C) class probabilities (fast path: one GEMM)."""
        W = params["W"]
        T, D1, C = W.shape
        Xbar = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1).to(W.dtype)
        Z = (Xbar @ W.permute(1, 0, 2).reshape(D1, T * C)).view(-1, T, C).permute(1, 0, 2)
        return torch.softmax(Z, 2)

# --------------------------------------------------------------------------------------------------- ridge
class Ridge(_Params):
    """Ridge regression: mean ½(y - x·w - b)^2 + (l2/2)||w||^2, intercept unpenalised (normal equations,
    Cholesky). Attributes: coef_ (d,), intercept_."""

    def __init__(self, l2: float = L2, device=None):
        self.l2, self.device = l2, device

    def fit(self, X, y):
        dev = _device(self.device)
        X = _features(X, torch.float64, dev)
        y = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y), dtype=torch.float64,
                            device=dev).reshape(-1)
        n, d = X.shape
        Xbar = torch.cat([X, torch.ones(n, 1, dtype=X.dtype, device=dev)], 1)
        A = Xbar.T @ Xbar
        A.diagonal()[:d] += float(self.l2) * n
        theta = torch.cholesky_solve((Xbar.T @ y)[:, None], torch.linalg.cholesky(A))[:, 0]
        self.coef_ = theta[:-1].cpu().numpy()
        self.intercept_ = float(theta[-1])
        return self

    def predict(self, X) -> np.ndarray:
        return _features(X, torch.float64, torch.device("cpu")).numpy() @ self.coef_ + self.intercept_


class BatchedRidge:
    """T ridge regressions from per-cluster Gram sums: G_s = sum over kept clusters of Z_i^T Z_i (a (T, p) x
    (p, D^2) product, no cancellation), then one batched Cholesky solve. Cost independent of n after the sums.
    transform: applied to each cluster's rows of X to give its features (None: X as float64)."""

    classification = False

    def __init__(self, X: torch.Tensor, y: torch.Tensor, cluster_of: torch.Tensor, n_clusters: int, *, l2=L2,
                 transform=None):
        n, d = X.shape
        dev, dtype = X.device, torch.float64
        cluster_of = cluster_of.to(dev)
        D = d + 1
        self.gram = torch.zeros(n_clusters, D, D, dtype=dtype, device=dev)
        self.moment = torch.zeros(n_clusters, D, dtype=dtype, device=dev)
        self.count = torch.zeros(n_clusters, dtype=dtype, device=dev)
        y = y.to(device=dev, dtype=dtype).reshape(-1)
        for i in range(n_clusters):   # one cluster's rows (with the intercept's column) at a time
            rows = X[cluster_of == i]
            rows = rows.to(dtype) if transform is None else transform(rows)
            rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=dtype, device=dev)], 1)
            self.gram[i] = rows.T @ rows
            self.moment[i] = rows.T @ y[cluster_of == i]
            self.count[i] = rows.shape[0]
        self.penalty = torch.ones(D, dtype=dtype, device=dev)
        self.penalty[-1] = 0.0
        self.l2 = float(l2)

    @staticmethod
    def bytes_per_model(n: int, d: int, n_classes: int, m_val: int) -> int:
        return 8 * (3 * (d + 1) ** 2 + 3 * m_val)

    def fit(self, removed: torch.Tensor, seeds) -> dict:
        keep = (~removed.to(self.gram.device)).to(self.gram.dtype)
        p, D = self.gram.shape[0], self.gram.shape[1]
        G = (keep @ self.gram.reshape(p, D * D)).view(-1, D, D)
        h = keep @ self.moment
        n_s = keep @ self.count
        G = G + (self.l2 * n_s)[:, None, None] * torch.diag(self.penalty)
        theta = torch.cholesky_solve(h[..., None], torch.linalg.cholesky(G))[..., 0]
        return {"theta": theta, "steps": torch.ones(theta.shape[0], dtype=torch.long),
                "converged": torch.ones(theta.shape[0], dtype=torch.bool)}

    @staticmethod
    def select(params: dict, idx) -> dict:
        return {"theta": params["theta"][idx]}

    def predict(self, params: dict, X: torch.Tensor) -> torch.Tensor:
        theta = params["theta"]
        return (X.to(theta.dtype) @ theta[:, :-1].T).T + theta[:, -1:]

# --------------------------------------------------------------------------------------------------- mlp
HIDDEN, LR, BATCH, EPOCHS = 100, 1e-3, 128, 30
_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


def mlp_generator(seed: int) -> torch.Generator:
    """The repeat's stream: the initialisation is drawn first, then one permutation per epoch."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def mlp_initial_parameters(d: int, hidden: int, outputs: int, generator: torch.Generator):
    """W1 (d, h), b1 (h,), W2 (h, C), b2 (C,), each U(-1/sqrt(fan_in), 1/sqrt(fan_in)) like torch.nn.Linear."""
    k1, k2 = 1.0 / math.sqrt(d), 1.0 / math.sqrt(hidden)
    W1 = torch.empty(d, hidden).uniform_(-k1, k1, generator=generator)
    b1 = torch.empty(hidden).uniform_(-k1, k1, generator=generator)
    W2 = torch.empty(hidden, outputs).uniform_(-k2, k2, generator=generator)
    b2 = torch.empty(outputs).uniform_(-k2, k2, generator=generator)
    return W1, b1, W2, b2


class MLP(_Params):
    """One hidden layer (ReLU), Adam, minibatches with the last partial batch kept (torch.nn + torch.optim).

    task="classification": cross-entropy over ``n_classes`` logits; task="regression": one output, ½ squared error.
    ``fit(X, y, rows=None)`` trains on X[rows] and visits them, each epoch, in the order of a permutation of all
    len(X) rows restricted to them: the same order EcoVal's batched trainer gives a subset model, so the two agree.
    """

    def __init__(self, hidden: int = HIDDEN, lr: float = LR, batch_size: int = BATCH, epochs: int = EPOCHS,
                 task: str = "classification", n_classes: int | None = None, random_state: int | None = None,
                 device=None):
        self.hidden, self.lr, self.batch_size, self.epochs = hidden, lr, batch_size, epochs
        self.task, self.n_classes, self.random_state, self.device = task, n_classes, random_state, device

    def fit(self, X, y, rows=None):
        dev = _device(self.device)
        X = _features(X, torch.float32, dev)
        n, d = X.shape
        if self.task == "classification":
            y, C = _labels(y, self.n_classes, dev)
            outputs = C
            self.classes_ = np.arange(C)
        else:
            y = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y),
                                dtype=torch.float32).reshape(-1).to(dev)
            outputs = 1
        seed = self.random_state if self.random_state is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        g = mlp_generator(seed)
        W1, b1, W2, b2 = mlp_initial_parameters(d, self.hidden, outputs, g)
        self.model_ = torch.nn.Sequential(torch.nn.Linear(d, self.hidden), torch.nn.ReLU(),
                                          torch.nn.Linear(self.hidden, outputs)).to(dev)
        with torch.no_grad():
            self.model_[0].weight.copy_(W1.T)
            self.model_[0].bias.copy_(b1)
            self.model_[2].weight.copy_(W2.T)
            self.model_[2].bias.copy_(b2)
        optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.lr, betas=_BETAS, eps=_ADAM_EPS)
        member = torch.ones(n, dtype=torch.bool) if rows is None else torch.zeros(n, dtype=torch.bool)
        if rows is not None:
            member[torch.as_tensor(np.asarray(rows), dtype=torch.long)] = True
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=g)
            order = perm[member[perm]].to(dev)
            for idx in torch.split(order, self.batch_size):
                out = self.model_(X[idx])
                if self.task == "classification":
                    loss = torch.nn.functional.cross_entropy(out, y[idx])
                else:
                    loss = 0.5 * (out[:, 0] - y[idx]).square().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return self

    def parameters_(self):
        """W1 (d, h), b1, W2 (h, C), b2 as float32 tensors (the batched trainer's layout)."""
        m = self.model_
        return (m[0].weight.detach().T, m[0].bias.detach(), m[2].weight.detach().T, m[2].bias.detach())

    def _forward(self, X) -> torch.Tensor:
        with torch.no_grad():
            return self.model_(_features(X, torch.float32, next(self.model_.parameters()).device)).cpu()

    def predict_proba(self, X) -> np.ndarray:
        return torch.softmax(self._forward(X).double(), 1).numpy()

    def predict(self, X) -> np.ndarray:
        out = self._forward(X)
        return out.argmax(1).numpy() if self.task == "classification" else out[:, 0].double().numpy()


class BatchedMLP:
    """T one-hidden-layer MLPs trained at once (see the module doc). Float32, like the single MLP: it keeps a
    float32 copy of X, or of transform(row block of X) (e.g. standardisation of the raw input)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, cluster_of: torch.Tensor, outputs: int, *,
                 classification: bool = True, hidden=HIDDEN, lr=LR, batch_size=BATCH, epochs=EPOCHS,
                 transform=None, block: int = 1 << 15):
        if transform is None:
            self.X = X.to(torch.float32).contiguous()
        else:
            self.X = torch.empty(X.shape, dtype=torch.float32, device=X.device)
            for lo in range(0, X.shape[0], block):
                self.X[lo:lo + block] = transform(X[lo:lo + block])
        self.y = y.to(X.device).long() if classification else y.to(device=X.device, dtype=torch.float32).reshape(-1)
        self.cluster_of = cluster_of.to(X.device)
        self.outputs, self.classification = outputs, classification
        self.hidden, self.lr, self.batch_size, self.epochs = hidden, lr, batch_size, epochs

    @staticmethod
    def bytes_per_model(n: int, d: int, n_classes: int, m_val: int, hidden: int = HIDDEN,
                        batch_size: int = BATCH) -> int:
        params = d * hidden + hidden + hidden * n_classes + n_classes
        return 4 * (5 * params + 4 * batch_size * (d + hidden + n_classes) + 2 * n + 2 * m_val * (hidden + n_classes))

    def initial_parameters(self, seeds) -> tuple:
        """Stacked initial parameters: models with the same seed start from identical weights."""
        d = self.X.shape[1]
        cache = {}
        for s in seeds:
            if int(s) not in cache:
                cache[int(s)] = mlp_initial_parameters(d, self.hidden, self.outputs, mlp_generator(int(s)))
        stacked = [torch.stack([cache[int(s)][i] for s in seeds]).to(self.X.device) for i in range(4)]
        return tuple(stacked)

    def fit(self, removed: torch.Tensor, seeds) -> dict:
        dev = self.X.device
        seeds = [int(s) for s in seeds]
        T = len(seeds)
        n, d = self.X.shape
        masks = (~removed.to(dev))[:, self.cluster_of]
        n_s = masks.sum(1)
        gens, groups = {}, {}
        for j, s in enumerate(seeds):
            groups.setdefault(s, []).append(j)
        for s in groups:  # each repeat's stream: initialisation first, then the epoch permutations
            gens[s] = mlp_generator(s)
            mlp_initial_parameters(d, self.hidden, self.outputs, gens[s])
        params = [p.clone().requires_grad_(True) for p in self.initial_parameters(seeds)]
        W1, b1, W2, b2 = params
        m_state = [torch.zeros_like(p) for p in params]
        v_state = [torch.zeros_like(p) for p in params]
        step_count = torch.zeros(T, dtype=torch.float64, device=dev)
        beta1, beta2 = _BETAS
        b = self.batch_size
        for _ in range(self.epochs):
            order = torch.empty(T, n, dtype=torch.long, device=dev)
            for s, members in groups.items():
                perm = torch.randperm(n, generator=gens[s]).to(dev)
                idx = torch.as_tensor(members, device=dev)
                inside = masks[idx][:, perm]
                first = torch.argsort((~inside).to(torch.uint8), dim=1, stable=True)   # kept rows first, in order
                order[idx] = perm[first]
            steps = int(math.ceil(int(n_s.max()) / b))
            for t in range(steps):
                start = t * b
                idx = order[:, start:start + b]                                       # (T, b')
                valid = (start + torch.arange(idx.shape[1], device=dev))[None, :] < n_s[:, None]
                count = valid.sum(1)
                active = count > 0
                xb = self.X[idx]                                                     # (T, b', d)
                hid = torch.relu(torch.baddbmm(b1[:, None, :], xb, W1))
                out = torch.baddbmm(b2[:, None, :], hid, W2)
                if self.classification:
                    per_row = torch.nn.functional.cross_entropy(out.reshape(-1, self.outputs), self.y[idx].reshape(-1),
                                                                reduction="none").view(idx.shape)
                else:
                    per_row = 0.5 * (out[..., 0] - self.y[idx]).square()
                weight = valid.to(per_row.dtype) / count.clamp(min=1)[:, None].to(per_row.dtype)
                total = (per_row * weight).sum()
                grads = torch.autograd.grad(total, params)
                with torch.no_grad():
                    step_count += active.to(step_count.dtype)
                    bc1 = (1 - beta1 ** step_count).clamp(min=1e-300)
                    bc2_sqrt = (1 - beta2 ** step_count).sqrt().clamp(min=1e-300)
                    for p, g_, m_, v_ in zip(params, grads, m_state, v_state):
                        shape = (T,) + (1,) * (p.dim() - 1)
                        act = active.view(shape)
                        m_new = m_.lerp(g_, 1 - beta1)
                        v_new = v_ * beta2 + (1 - beta2) * g_ * g_
                        step_size = (self.lr / bc1).to(p.dtype).view(shape)
                        denom = v_new.sqrt() / bc2_sqrt.to(p.dtype).view(shape) + _ADAM_EPS
                        p_new = p - step_size * m_new / denom
                        m_.copy_(torch.where(act, m_new, m_))
                        v_.copy_(torch.where(act, v_new, v_))
                        p.copy_(torch.where(act, p_new, p))
        out = {k: v.detach() for k, v in zip(("W1", "b1", "W2", "b2"), params)}
        out["steps"] = step_count.long().cpu()
        out["converged"] = torch.ones(T, dtype=torch.bool)
        return out

    @staticmethod
    def select(params: dict, idx) -> dict:
        return {k: params[k][idx] for k in ("W1", "b1", "W2", "b2")}

    def predict(self, params: dict, X: torch.Tensor) -> torch.Tensor:
        """(T, m, C) probabilities (classification) or (T, m) outputs (regression)."""
        X = X.to(torch.float32)
        hid = torch.relu(torch.einsum("md,tdh->tmh", X, params["W1"]) + params["b1"][:, None, :])
        out = torch.baddbmm(params["b2"][:, None, :], hid, params["W2"])
        return torch.softmax(out.double(), 2) if self.classification else out[..., 0].double()

def _exact_logreg(params: dict, j: int, X: np.ndarray, classification: bool = True) -> np.ndarray:
    W = params["W"][j].double().cpu().numpy()
    return exact_softmax(exact_linear(X, W[:-1], W[-1]))


def _exact_ridge(params: dict, j: int, X: np.ndarray, classification: bool = False) -> np.ndarray:
    theta = params["theta"][j].double().cpu().numpy()
    return exact_linear(X, theta[:-1, None], theta[-1:])[:, 0]


def _exact_mlp(params: dict, j: int, X: np.ndarray, classification: bool) -> np.ndarray:
    W1, b1, W2, b2 = (params[k][j].double().cpu().numpy() for k in ("W1", "b1", "W2", "b2"))
    out = exact_linear(np.maximum(exact_linear(X, W1, b1), 0.0), W2, b2)
    return exact_softmax(out) if classification else out[:, 0]


def exact_predict(params: dict, j: int, X: np.ndarray, classification: bool) -> np.ndarray:
    """Model j of stacked built-in parameters on the rows of X (float64), row by row (see the module doc):
    class probabilities (m, C) for classification, outputs (m,) for regression. The learner is the registry
    entry whose parameter names the dict holds."""
    for entry in LEARNERS.values():
        if entry.param_names[0] in params:
            return entry.predict(params, j, X, classification)
    raise ValueError(f"no built-in learner has the parameters {sorted(params)}")


# --------------------------------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Learner:
    """A built-in learner as EcoVal uses it: one entry of ``LEARNERS``.

    tasks: the tasks it fits. batched: the batched trainer class (fit(removed, seeds), select, predict and the
    static bytes_per_model(n, d, n_classes, m_val)). make_batched(X, y, cluster_of, n_classes=, n_clusters=,
    classification=, solver=, transform=) builds it on the features transform(row block of X) (EcoVal: raw X and
    its standardisation; y: class codes, or standardised targets).
    make_single(classification=, n_classes=, seed=, device=, solver=) a single model (the loop path);
    fits_rows: its fit takes the full X and rows= (the MLP's epoch order) instead of X[rows]. params(model): a
    fitted single model as stacked parameters (T = 1) in the batched layout, whose names are param_names.
    predict(params, j, X, classification): model j of stacked parameters, row by row (``exact_predict``).
    validation_output(model, params, X, classification): the single model's validation output on the loop path.
    features: the dtype its trainers compute in (EcoVal hands them the standardised features in it, no wider).
    """

    name: str
    tasks: tuple
    batched: type
    make_batched: Callable
    make_single: Callable
    fits_rows: bool
    params: Callable
    param_names: tuple
    predict: Callable
    validation_output: Callable
    features: type = np.float64

    def bytes_per_model(self, n: int, d: int, n_classes: int, m_val: int) -> int:
        return self.batched.bytes_per_model(n, d, n_classes, m_val)


def _single_output(model, params, X, classification):
    return model.predict_proba(X) if classification else model.predict(X)


LEARNERS: dict = {learner.name: learner for learner in (
    Learner("logreg", ("classification",), BatchedLogReg,
            make_batched=lambda X, y, cluster_of, *, n_classes, n_clusters, classification, solver, transform:
                BatchedLogReg(X, y, cluster_of, n_classes, solver=solver, transform=transform),
            make_single=lambda *, classification, n_classes, seed, device, solver:
                LogReg(n_classes=n_classes, device=device, solver=solver),
            fits_rows=False,
            params=lambda model: {"W": torch.as_tensor(np.vstack([model.coef_, model.intercept_[None, :]]),
                                                       dtype=torch.float64)[None]},
            param_names=("W",), predict=_exact_logreg, validation_output=_single_output),
    Learner("ridge", ("regression",), BatchedRidge,
            make_batched=lambda X, y, cluster_of, *, n_classes, n_clusters, classification, solver, transform:
                BatchedRidge(X, y, cluster_of, n_clusters, transform=transform),
            make_single=lambda *, classification, n_classes, seed, device, solver: Ridge(device=device),
            fits_rows=False,
            params=lambda model: {"theta": torch.as_tensor(np.append(model.coef_, model.intercept_),
                                                           dtype=torch.float64)[None]},
            param_names=("theta",), predict=_exact_ridge,
            validation_output=lambda model, params, X, classification: _exact_ridge(params, 0, X)),
    Learner("mlp", ("classification", "regression"), BatchedMLP,
            make_batched=lambda X, y, cluster_of, *, n_classes, n_clusters, classification, solver, transform:
                BatchedMLP(X, y, cluster_of, n_classes if classification else 1, classification=classification,
                           transform=transform),
            make_single=lambda *, classification, n_classes, seed, device, solver:
                MLP(task="classification" if classification else "regression",
                    n_classes=n_classes if classification else None, random_state=seed, device=device),
            fits_rows=True,
            params=lambda model: dict(zip(("W1", "b1", "W2", "b2"),
                                          (t.detach().cpu()[None] for t in model.parameters_()))),
            param_names=("W1", "b1", "W2", "b2"), predict=_exact_mlp, validation_output=_single_output,
            features=np.float32),
)}
DEFAULT_LEARNERS = {"classification": "logreg", "regression": "ridge"}
