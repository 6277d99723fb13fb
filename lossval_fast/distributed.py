"""Data-parallel LossVal with torch.distributed (gloo on CPU, NCCL on GPUs).

Each rank owns a contiguous shard of the training points' weights and of their Adam state. Every rank draws the
same global epoch order. Two ways to split a step's work (``fit(split=...)``):

split="divergences" (the default). Within an epoch the divergence of a step, S(w_b, x_b; 1, X_val), does not depend
on the model: the batch's points enter the epoch once, and until their step their weights move only through
Adam's momentum (a zero-gradient update, a function of the weight's own state and the step count). So the
divergences of a chunk of steps (``chunk_steps``, within one epoch) are computed before the chunk, spread over the
ranks: each rank fast-forwards its own weights of the chunk's batches through the zero-gradient updates (the same
fused Adam kernel, bit for bit), one all-reduce gives every rank every batch weight, each rank computes the
divergences of every world-th step (whole: the validation set is replicated, any diameter), a second all-reduce
shares them (S and dS/dw per step). Then every rank runs the chunk's model steps on the whole batches (forward,
weighted loss, backward, Adam: the replicated model takes the same steps everywhere, so its gradient needs no
all-reduce) and steps its own weight shard. Two collectives per chunk instead of several per step: the LossVal
model is small and the divergence is most of a step, so this splits nearly all the work.

split="points". For each global minibatch a rank reads only the rows it owns and computes their losses; an
all-reduce (each rank fills its own rows) gives every rank the batch's points and weights, a second one
L_w = Σ w_i l_i, so every rank computes the same divergence S: whole on each (the validation set is replicated;
the per-batch diameter works as in one process), or, with a cached validation side and shard_validation=True,
split over the validation points (each rank runs the validation side of the Sinkhorn loop for its slice; one
all-gather per ε step combines the batch side's log-sum-exps). Model gradients are all-reduced (sum); the
gradients of a rank's own weights stay local. The collectives overlap work that does not need them: the next
batch's points and weights are all-reduced while the model takes its step, L_w while S is computed, the model's
gradient while the weight shard takes its step. It pays for a model whose step costs more than the divergence.

Either way Adam, elementwise, updates each weight shard exactly as the single process does (the whole shard every
step: the faithful Adam also moves weights outside the batch through its momentum), and the values equal those of
a single-process fit over the same global batch order up to the rounding of the sums.

Use:
    torchrun --nproc_per_node 2 script.py        # script calls lossval_fast.distributed.fit(LossVal(...), ...)
    lossval_fast.distributed.launch(2, lossval_fast.distributed.fit, LossVal(...), "X.npy", "y.npy", Xv, yv)
"""
from __future__ import annotations

import datetime
import gc
import os
import socket
import time

import numpy as np
import torch
import torch.distributed as dist

from . import ops
from .data import BatchPrefetcher
from .ops import backends
from .ops.memory import default_memory_budget
from .ops.sinkhorn import debiasing_potential
from .sinkhorn_loop import epsilon_schedule, log_weights, self_potential, sinkhorn_loop
from .valuation import methods
from .valuation.lossval import Data, Divergence, gather_rows, weighted_batch_loss
from .valuation.lossval.chunked import ChunkedStep, SplitAdam
from .valuation.lossval.protocols import DataParallel, StepRunner, TrainingContext, shard_bounds
from .valuation.optim import LAST_STEP

__all__ = ["fit", "launch", "shard_bounds", "init_from_env", "ProcessGroupRanks", "WorkerError"]


def init_from_env(backend: str | None = None, timeout: datetime.timedelta | None = None) -> bool:
    """Initialise the default process group from the environment (env://, as torchrun sets it) unless one
    exists. Returns True when this call created it."""
    if dist.is_initialized():
        return False
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("no torch.distributed process group: run under torchrun, or through "
                           "lossval_fast.distributed.launch, or call torch.distributed.init_process_group first")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, init_method="env://", **kwargs)
    return True


def fit(estimator, X, y, X_val, y_val, *, split: str | None = None, chunk_steps: int = 64,
        shard_validation: bool = False):
    """Fit `estimator` over the ranks of the default process group (initialised from the environment under torchrun
    when needed): any estimator whose method runs over processes (valuation.methods: LossVal data-parallel, EcoVal
    with its k-means restarts and subset trainings spread). Every rank calls this with the same arguments; X and y
    may be out of core for LossVal (a .npy path or memmap: each rank reads the rows it needs); EcoVal loads a path.
    The estimator's fit gets the ranks explicitly (fit(..., ranks=...)).

    LossVal's options (EcoVal ignores them):
    split : "divergences" (default; the divergences of each chunk of `chunk_steps` steps spread over the ranks,
        the model's steps run whole on every rank) or "points" (each rank runs the model on its own rows of every
        batch, the model's gradient is all-reduced each step); see the module docstring. None picks
        "divergences", or "points" when shard_validation=True.
    chunk_steps : steps per chunk with split="divergences" (a chunk never crosses an epoch): larger chunks mean
        fewer collectives; each rank holds the chunk's rows (chunk_steps x batch_size x d values).
    shard_validation : (split="points" only) False (default): every rank computes the divergence whole (the validation set is
        replicated; one C++ call per step on CPU). True (needs diameter="global" or a number): the validation
        points are split over the ranks, each runs the Sinkhorn loop's validation side for its slice, and one
        all-gather per ε step combines the batch side; the cached validation potential is also computed split
        (O(M²/ranks)). It pays when the validation side dominates (hundreds of thousands of validation points,
        GPUs with NCCL); on CPU with gloo its ~15 collectives and Python-level loop per step measured slower than
        the replicated divergence at 2 processes up to 20,000 validation points.

    Returns the estimator. LossVal: values_ (all n values, input order) is gathered on rank 0 only (None
    elsewhere); model_, history_, n_steps_, classes_ and timings_ are set on every rank; checkpoints are written by
    rank 0 in the single-process format (full weights and Adam state), so a run can resume with any number of
    processes. EcoVal: every rank ends with every value.
    """
    method = methods.of(estimator)
    if method is None or not method.over_processes:
        able = ", ".join(m.estimator for m in methods.METHODS.values() if m.over_processes)
        raise ValueError(f"estimator must be one whose method runs over processes ({able}), got "
                         f"{type(estimator).__name__}")
    ranks = ProcessGroupRanks(split=split, chunk_steps=chunk_steps, shard_validation=shard_validation)
    created = init_from_env()
    try:
        ranks.join()
        estimator.fit(X, y, X_val, y_val, ranks=ranks)
        if created:
            _quiesce()
        return estimator
    finally:
        if created:
            dist.destroy_process_group()


def _quiesce():
    """Before a group is torn down: free unreachable objects that may hold collective handles (a gloo work and its
    tensors released later, during interpreter finalisation, aborts the process), then wait until every rank is
    past its last collective (a rank that destroys its gloo context while a peer still talks to it makes the
    peer's gloo thread abort the process)."""
    gc.collect()
    dist.barrier()


class ProcessGroupRanks(DataParallel):
    """The ranks of the default torch.distributed process group, as the estimators' fit(ranks=...) takes them
    (base.Ranks: barrier, all_gather, broadcast; EcoVal and k-means use those), with LossVal's data-parallel
    options (protocols.DataParallel: its check and its TrainingContext, _Context below)."""

    def __init__(self, *, split: str | None = None, chunk_steps: int = 64, shard_validation: bool = False):
        if not isinstance(shard_validation, bool):
            raise ValueError(f"shard_validation must be True or False, got {shard_validation!r}")
        if split is None:
            split = "points" if shard_validation else "divergences"
        if split not in ("divergences", "points"):
            raise ValueError(f"split must be 'divergences' or 'points', got {split!r}")
        if shard_validation and split != "points":
            raise ValueError("shard_validation=True splits the validation side of each step's divergence: it needs "
                             "split='points'")
        if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
            raise ValueError(f"chunk_steps must be an integer >= 1, got {chunk_steps!r}")
        self.split, self.chunk_steps, self.shard_validation = split, chunk_steps, shard_validation
        self.rank, self.world = 0, 1

    def join(self) -> "ProcessGroupRanks":
        """Take this process's rank and the world size from the (initialised) default group."""
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        return self

    def barrier(self) -> None:
        dist.barrier()

    def all_gather(self, obj) -> list:
        parts = [None] * self.world
        dist.all_gather_object(parts, obj)
        return parts

    def broadcast(self, obj, src: int):
        holder = [obj if self.rank == src else None]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def check(self, est) -> None:
        if self.shard_validation and est.diameter == "batch":
            raise ValueError("shard_validation=True needs a fixed diameter (diameter='global' or a number): the "
                             "per-batch diameter recomputes the validation side every step")

    def training_context(self, est, data) -> "_Context":
        return _Context(data, self.rank, self.world, self.shard_validation, self.split, self.chunk_steps)


class _Context(TrainingContext):
    """What the training loop needs to know about the ranks: the weight shard, the agreed seed, the step, and
    the gathers for checkpoints and values."""

    def __init__(self, data: Data, rank: int, world: int, shard_validation, split="points", chunk_steps=64):
        self.rank, self.world = rank, world
        self.bounds = shard_bounds(data.n, world)
        self.shard = self.bounds[rank]
        self.shard_validation = shard_validation
        self.split, self.chunk_steps = split, chunk_steps
        # gloo works on CPU tensors; NCCL on the rank's GPU
        self.comm_device = data.device if dist.get_backend() == "nccl" else torch.device("cpu")

    @staticmethod
    def barrier():
        dist.barrier()

    @staticmethod
    def all_reduce(tensor):
        """Sum over the ranks, issued asynchronously: returns the work to wait for."""
        return dist.all_reduce(tensor, async_op=True)

    def agree(self, seed: int) -> int:
        t = torch.tensor([seed], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def optimizer(self, weights, model, lr):
        return SplitAdam(weights, model, lr)

    def step_runner(self, est, model, weights, data, fixed_diameter, optimizer, threads=1):
        fused_state = getattr(optimizer.weights, "fused_state", None)
        if self.split == "divergences" and fused_state is not None and fused_state() is not None:
            # the rank's threads beyond the one a step runs on compute divergences in the background
            return ChunkedStep(self, est, model, weights, data, fixed_diameter, optimizer,
                               helpers=max(0, threads - 1) if data.device.type == "cpu" else 0)
        m = data.X_val.shape[0]
        shard = self.shard_validation
        if shard and m < self.world:
            raise ValueError(f"shard_validation=True needs at least one validation point per rank ({m} for "
                             f"{self.world} ranks)")
        return _ShardedStep(self, est, model, weights, data, fixed_diameter, bool(shard))

    def _gather_shards(self, vector: torch.Tensor):
        """The full vector from every rank's shard, on rank 0 (None elsewhere)."""
        longest = max(hi - lo for lo, hi in self.bounds)
        padded = torch.zeros(longest, dtype=vector.dtype, device=self.comm_device)
        padded[:vector.numel()] = vector.detach().to(self.comm_device)
        parts = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(padded, parts, dst=0)
        if self.rank != 0:
            return None
        return torch.cat([p[:hi - lo] for p, (lo, hi) in zip(parts, self.bounds)]).cpu()

    def gather_values(self, weights):
        return self._gather_shards(weights)

    def gather_state(self, weights, optimizer):
        """(full weights, full optimiser state dict) on rank 0, (None, None) elsewhere; collective."""
        full_weights = self._gather_shards(weights)
        state = optimizer.state_dict()
        own = state["state"].get(0, {})
        gathered = {key: self._gather_shards(own[key]) for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", LAST_STEP)
                    if key in own and own[key].dim() == 1}
        if self.rank != 0:
            return None, None
        states = dict(state["state"])
        states[0] = {**own, **gathered}  # a copy: the optimiser's own per-parameter dict must stay intact
        return full_weights, {"state": states, "param_groups": state["param_groups"]}


# torch >= 2.13 names it all_gather_single (all_gather_into_tensor warns there)
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _ShardedStep(StepRunner):
    """One data-parallel LossVal step on this rank (see the module docstring).

    Three collectives per step, each overlapped with work that does not need its result: the batch's points and
    weights for step t+1 are all-reduced while the model takes step t and computes step t+1's local losses; L_w
    while the divergence is computed; the model's gradient while the weight shard takes its Adam step. On a busy
    machine a collective waits for the peer to be scheduled, which the overlap hides."""

    def __init__(self, ctx: _Context, est, model, weights, data: Data, fixed_diameter, shard_validation: bool):
        self.ctx, self.model, self.weights, self.data = ctx, model, weights, data
        self.task, self.batch_size = data.task, est.batch_size
        self.classification = data.task == "classification"
        self.from_logits = est.model_output == "logits"
        self.normalize = est.normalize
        self.d = data.d
        self.lo, self.hi = ctx.shard
        self._upcoming = None
        self._pending = None  # (item, work, buffer) of the batch all-reduce issued ahead
        self.engine = self.replicated = None
        if shard_validation:
            self.engine = _ShardedSinkhorn(ctx, data, est, fixed_diameter)
        else:
            self.replicated = Divergence(est, data.X_val, fixed_diameter)

    def batches(self, order, position):
        """Per global minibatch from `position` on: (positions in the batch of this rank's points, their local
        indices, their rows, batch size), gathered by the background loader; the next item is known one step
        ahead (its all-reduce is issued early)."""
        parts = torch.split(order, self.batch_size)[position:]
        lo, hi, d, data = self.lo, self.hi, self.d, self.data

        def gather(k):
            idx = parts[k].numpy()
            pos = np.flatnonzero((idx >= lo) & (idx < hi))
            own = idx[pos]
            if len(own):
                xb, yb = gather_rows(data, self.task, own)
            else:
                xb = torch.empty(0, d, dtype=data.dtype)
                yb = torch.empty(0, dtype=torch.int64)
            return (torch.from_numpy(pos), torch.from_numpy(own - lo), xb, yb, len(idx))

        stream = iter(BatchPrefetcher(range(len(parts)), gather, data.device))
        current = next(stream, None)
        while current is not None:
            self._upcoming = next(stream, None)
            yield current
            current = self._upcoming
        self._upcoming = None

    def _issue(self, item):
        """Start the all-reduce that gives every rank the batch's points and weights (each fills its own rows)."""
        pos, local, xb_own, _, size = item
        d = self.d
        buffer = torch.zeros(size * (d + 1), dtype=self.data.dtype, device=self.data.device)
        if pos.numel():
            with torch.no_grad():
                buffer[:size * d].view(size, d).index_copy_(0, pos, xb_own)
                buffer[size * d:].index_copy_(0, pos, self.weights.index_select(0, local))
        buffer = buffer.to(self.ctx.comm_device)
        return item, dist.all_reduce(buffer, async_op=True), buffer

    def _loss(self, pred, yb, wb):
        return weighted_batch_loss(self.classification, self.from_logits, pred, yb, wb)

    def __call__(self, item, optimizer: SplitAdam) -> float:
        pos, local, xb_own, yb_own, size = item
        data, d = self.data, self.d
        pending = self._pending if self._pending is not None and self._pending[0] is item else self._issue(item)
        self._pending = None
        mine = pos.numel() > 0
        if mine:
            w_own = self.weights.index_select(0, local)
            local_loss = self._loss(self.model(xb_own), yb_own, w_own)
            partial = local_loss.detach().reshape(1)
        else:
            partial = torch.zeros(1, dtype=data.dtype, device=data.device)
        pending[1].wait()
        reduced = pending[2].to(data.device)
        xb = reduced[:size * d].view(size, d)
        wb = reduced[size * d:]
        total_loss = partial.to(self.ctx.comm_device)
        loss_work = dist.all_reduce(total_loss, async_op=True)
        if mine:  # the rank's own weights enter the divergence with their gradient, the others as constants
            wb = wb.index_put((pos,), w_own)
        divergence = self._divergence(wb, xb)
        square = divergence.square()
        loss_work.wait()
        total_loss = total_loss.to(data.device)[0]
        if mine:
            # d/dθ: S² Σ_own w_i ∂l_i/∂θ (summed over ranks below); d/dw_i: S² l_i + L_w · 2S ∂S/∂w_i
            (local_loss * square.detach() + total_loss * square).backward()
        if self.weights.grad is None:  # Adam must still step the whole shard (momentum)
            self.weights.grad = torch.zeros_like(self.weights)
        params = list(self.model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        flat = flat.to(self.ctx.comm_device)
        grad_work = dist.all_reduce(flat, async_op=True)
        optimizer.weights.step()
        if self._upcoming is not None:
            self._pending = self._issue(self._upcoming)
        grad_work.wait()
        flat = flat.to(data.device)
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        optimizer.model.step()
        return float(total_loss * square.detach())

    def finish(self):
        """Wait for an all-reduce issued ahead for a step that will not run (end of a time-boxed fit)."""
        if self._pending is not None:
            self._pending[1].wait()
            self._pending = None

    def _divergence(self, wb, xb):
        if self.engine is None:
            return self.replicated(wb, xb)
        return _ShardedDivergence.apply(wb / wb.sum() if self.normalize else wb, xb, self.engine)


class _ShardedSinkhorn:
    """The debiased Sinkhorn divergence S(a, x; b, Y) with Y split over the ranks and GB (the Y-Y potential)
    cached: the package's one loop (lossval_fast.sinkhorn_loop: geomloss' symmetric updates, ε schedule and final
    extrapolation, potentials in double, biases shifted before they are rounded to the kernel's precision), with
    the x-side log-sum-exps over Y combined across ranks by one all-gather per pass. FA, the x-x potential, is
    small (batch x batch) and computed whole on every rank."""

    def __init__(self, ctx: _Context, data: Data, est, diameter: float):
        self.ctx = ctx
        X_val = data.X_val
        m = X_val.shape[0]
        self.dtype, self.device = data.dtype, data.device
        if diameter <= 0:  # as the op does: every point identical
            diameter = est.blur
        self.eps_list = epsilon_schedule(2, diameter, est.blur, est.scaling)
        b = torch.ones(m, dtype=data.dtype, device=data.device)
        if est.normalize:
            b = b / b.sum()
        bounds = shard_bounds(m, ctx.world)
        vlo, vhi = bounds[ctx.rank]
        self.y = X_val[vlo:vhi].contiguous()
        self.b = b[vlo:vhi].double()
        self.b_log = log_weights(b[vlo:vhi])
        self.center = X_val.mean(0)
        self.backend = backends.resolve("auto", "softmin", data.device)
        self.kernels = backends.op_table(self.backend)
        self.gb = self._validation_potential(b, X_val, bounds)
        itemsize = torch.finfo(data.dtype).bits // 8
        # stored costs (the batch x slice matrix and its transpose) as the op's "auto" picks them on CPU
        self.stored = (data.device.type == "cpu" and data.d >= 8
                       and 2 * est.batch_size * (vhi - vlo) * itemsize <= default_memory_budget(data.device))

    def _validation_potential(self, b, y, bounds):
        """This rank's rows of GB, the final Y-Y potential (the setup's only O(M²) work), with the rows split over
        the ranks: each updates its rows against all of Y (online, O(M d) memory) and one all-gather per pass
        assembles the potential."""
        world = self.ctx.world
        vlo, vhi = bounds[self.ctx.rank]
        rows, b_log = y[vlo:vhi], log_weights(b)
        longest = max(hi - lo for lo, hi in bounds)
        kernel = self.kernels.softmin

        def update(h, eps):
            return self._softmin(lambda biased, e: kernel(rows, y, biased, e), h, eps)

        def assemble(part):
            send = torch.zeros(longest, dtype=torch.float64, device=part.device)
            send[:part.numel()] = part
            send = send.to(self.ctx.comm_device)
            out = torch.empty(world * longest, dtype=torch.float64, device=send.device)
            _all_gather(out, send)
            out = out.to(part.device)
            return torch.cat([out[r * longest:r * longest + hi - lo] for r, (lo, hi) in enumerate(bounds)])

        return self_potential(lambda h, eps: assemble(update(h, eps)), b_log, self.eps_list, final=update)

    def _combine(self, partial: torch.Tensor, eps: float, extra: torch.Tensor | None = None):
        """-eps log Σ_ranks exp(-partial_r / eps): the x <- Y softmin from each rank's x <- slice softmin; `extra`
        (a scalar per rank) rides along and is summed."""
        n = partial.numel()
        send = partial if extra is None else torch.cat([partial, extra.reshape(1)])
        send = send.to(self.ctx.comm_device)
        out = torch.empty(self.ctx.world * send.numel(), dtype=send.dtype, device=send.device)
        _all_gather(out, send)
        parts = out.view(self.ctx.world, -1).to(self.device)
        f = torch.logsumexp(parts[:, :n] * (-1.0 / eps), dim=0) * (-eps)
        return f if extra is None else (f, parts[:, n].sum())

    def _softmin(self, kernel, h: torch.Tensor, eps: float) -> torch.Tensor:
        # h is finite here (log-weights are >= -1e5, potentials finite): its max is a safe shift
        shift = h.max()
        return kernel((h - shift).to(self.dtype), eps).double() - eps * shift

    def forward(self, a: torch.Tensor, x: torch.Tensor):
        """(S, dS/da) for the full batch (a, x), identical on every rank: the package's one loop with a sharded
        softmin (x <- Y combines the ranks' partial log-sum-exps) and the cached GB."""
        k = self.kernels
        if self.stored:
            cost = ops.half_sqdist(x, self.y, self.center)
            cost_t = cost.T.contiguous()
            kernels = {"xy": lambda h, eps: k.softmin_stored(cost, h, eps),
                       "yx": lambda h, eps: k.softmin_stored(cost_t, h, eps)}
        else:
            y = self.y
            kernels = {"xy": lambda h, eps: k.softmin(x, y, h, eps), "yx": lambda h, eps: k.softmin(y, x, h, eps)}
        # FA (batch x batch) is small and computed whole on every rank, by the compiled loop where there is one
        fa = debiasing_potential(a, x, self.eps_list, self.backend)

        def softmin(kind, h, eps):
            partial = self._softmin(kernels[kind], h, eps)
            return self._combine(partial, eps) if kind == "xy" else partial

        ride = {}

        def final(kind, h, eps):
            # the loop calls "yx" before "xy": this rank's part of <b, G - GB> rides along F's all-gather
            if kind == "yx":
                G = self._softmin(kernels["yx"], h, eps)
                ride["y_term"] = (self.b * (G - self.gb)).sum()
                return G
            if kind == "xy":
                F, ride["y_total"] = self._combine(self._softmin(kernels["xy"], h, eps), eps, ride["y_term"])
                return F
            raise ValueError(f"the sharded loop is given FA and GB: no final {kind!r} pass")

        F, _, FA, _ = sinkhorn_loop(softmin, log_weights(a), self.b_log, self.eps_list, debias=True, fa=fa,
                                    gb=self.gb, final=final)
        dF = F - FA
        value = (a.double() * dF).sum() + ride["y_total"]
        return value.to(self.dtype), dF.to(self.dtype)


class _ShardedDivergence(torch.autograd.Function):
    """S with the envelope-theorem gradient dS/da = F - FA (x needs none: the batch points are data)."""

    @staticmethod
    def forward(ctx, a, x, engine):
        value, dF = engine.forward(a.detach(), x.detach())
        ctx.save_for_backward(dF)
        return value

    @staticmethod
    def backward(ctx, grad):
        (dF,) = ctx.saved_tensors
        return grad * dF, None, None


# ------------------------------------------------------------------------------------------------ launcher
def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _worker(rank, nproc, backend, host, port, threads, fn, args, kwargs, channels):
    os.environ.update({"MASTER_ADDR": host, "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)})
    if threads is not None:
        torch.set_num_threads(threads)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=nproc)
    channel = channels[rank]
    try:
        result = fn(*args, **kwargs)
        if rank == 0:
            channel.send(("result", result))
        _quiesce()  # see there (a rank aborted at teardown ~1 run in 25 without it)
    except BaseException as error:
        try:  # the caller re-raises the original exception, not only its text
            channel.send(("error", error))
        except Exception:
            pass
        raise
    finally:
        channel.close()
        dist.destroy_process_group()


class WorkerError(RuntimeError):
    """A process of `launch` ended without a result and without a Python exception (killed by a signal, such as
    the kernel's OOM killer, or an exit of its own); the others were stopped. Attributes: rank, nproc, pid,
    exit_code, signal_name (None when it exited)."""

    def __init__(self, rank: int, nproc: int, pid: int, exit_code: int, signal_name: str | None = None):
        self.rank, self.nproc, self.pid, self.exit_code, self.signal_name = rank, nproc, pid, exit_code, signal_name
        how = f"was killed by {signal_name}" if signal_name else f"exited with status {exit_code}"
        hint = " (out of memory?)" if signal_name == "SIGKILL" else ""
        super().__init__(f"worker process of rank {rank} of {nproc} (pid {pid}) {how}{hint}; the other ranks were "
                         "stopped and the fit has no result")


def _receive(readers: dict, messages: dict, timeout: float = 0.0) -> None:
    """Read the messages waiting in the ranks' pipes (a rank that died mid-message leaves none)."""
    from multiprocessing.connection import wait
    for conn in wait(list(readers), timeout):
        rank = readers.pop(conn)
        try:
            messages[rank] = conn.recv()
        except Exception:  # EOF (nothing sent), or an object that cannot be rebuilt here
            pass
        conn.close()


def launch(nproc: int, fn, *args, backend: str | None = None, threads: int | None = 1,
           master_addr: str = "127.0.0.1", master_port: int | None = None, **kwargs):
    """Run ``fn(*args, **kwargs)`` on `nproc` processes (torch.multiprocessing spawn), each with the default
    process group initialised (env://; gloo, or NCCL with one GPU per rank when CUDA is available and `backend`
    is None) and `threads` intra-op threads. Returns rank 0's return value; an exception in a rank is re-raised
    here. `fn` and the arguments must be picklable (module-level functions; paths rather than large arrays, which
    every process would receive a copy of).

        launch(2, lossval_fast.distributed.fit, LossVal(diameter="global"), "X.npy", "y.npy", X_val, y_val)
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    port = _free_port(master_addr) if master_port is None else int(master_port)
    # The result and a failed rank's exception come back over a pipe per rank from the processes spawned here,
    # as spawn sends them their arguments: no file is ever unpickled
    context = torch.multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(nproc)]
    readers = {reader: rank for rank, (reader, _) in enumerate(pipes)}
    messages = {}
    try:
        processes = torch.multiprocessing.spawn(
            _worker, args=(nproc, backend, master_addr, port, threads, fn, args, kwargs, [w for _, w in pipes]),
            nprocs=nproc, join=False)
        for _, writer in pipes:  # the children hold theirs: a rank that exits closes its pipe
            writer.close()
        try:
            while not processes.join(timeout=0.05):
                _receive(readers, messages)
        except torch.multiprocessing.ProcessExitedException as failure:  # killed (OOM killer, a signal) or exit()
            raise WorkerError(failure.error_index, nproc, failure.error_pid, failure.exit_code,
                              failure.signal_name) from failure
        except torch.multiprocessing.ProcessRaisedException as failure:
            deadline = time.monotonic() + 5.0
            while failure.error_index not in messages and readers and time.monotonic() < deadline:
                _receive(readers, messages, timeout=0.1)
            kind, error = messages.get(failure.error_index, (None, None))
            if kind == "error" and isinstance(error, BaseException):
                raise error from failure
            raise
        while readers:  # what the ranks sent just before they exited
            _receive(readers, messages, timeout=1.0)
    finally:
        for conn in list(readers):
            conn.close()
    if 0 not in messages or messages[0][0] != "result":
        raise RuntimeError("rank 0 finished but its return value did not come back (it must be picklable)")
    return messages[0][1]

