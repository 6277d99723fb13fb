"""The LossVal training loop with the divergences computed ahead, a chunk of steps at a time, in parallel.

Within an epoch the divergence of a step, S(w_b, x_b; 1, X_val), does not depend on the model: the batch's points
enter the epoch once, and until their step their weights move only through Adam's momentum (a zero-gradient
update: a function of the weight's own state and of the step count). So the divergences of a chunk of steps (a
chunk never crosses an epoch) can be computed before the chunk, all at once: the chunk's weights are
fast-forwarded through the zero-gradient updates (the same fused Adam kernel on a gathered copy, bit for bit),
then each divergence is an independent task. The model's steps stay sequential and use the precomputed S and
dS/dw_b.

The tasks are shared out two ways, combined:
- over the ranks of a data-parallel fit (lossval_fast.distributed, split="divergences"): each rank computes every
  world-th divergence; one all-reduce gives every rank every batch weight (each rank fast-forwards its own shard's),
  a second one every divergence; the model's steps run whole on every rank;
- over threads of one process: helper threads take tasks from the chunks ahead while the calling thread runs the
  model's steps (and takes tasks between them). A 32 x 10,000 divergence is serial work of ~4 ms against a
  ~0.4 ms model step, so a LossVal fit over millions of points uses every core this way, where a single step
  cannot (it is too small to split).

Pipelined: while chunk c's model steps run, the tasks of chunk c + 2 are computed (their weights were shared
during chunk c - 1) and chunk c + 3 is started; the divergences' all-reduce has all of chunk c + 1 to arrive, so a
rank or thread slowed for a moment rarely makes the others wait. An epoch's first two chunks are prepared before
its first step (their weights depend on the previous epoch's last steps).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from ...data import BatchPrefetcher
from ...ops.sinkhorn import auto_stored
from ..optim import adam, lazy_rows, lazy_steps
from .data import gather_rows
from .protocols import StepRunner
from .steps import STEP_OPTIONS, Divergence, mlp_structure, weighted_batch_loss

__all__ = ["SplitAdam", "ChunkedStep"]


class SplitAdam:
    """Adam over the weight vector (or a rank's shard of it) and Adam over the model, stepped separately (a
    data-parallel fit all-reduces the model's gradient while the weights are updated; the chunked step
    fast-forwards the weights' state on its own). Adam is elementwise and per parameter, so this is the single
    process's one Adam over both; state_dict() and load_state_dict() use its format."""

    def __init__(self, weights, model, lr):
        self.weights = adam([weights], lr)
        self.model = adam(model.parameters(), lr)

    def zero_grad(self, set_to_none: bool = True):
        self.weights.zero_grad(set_to_none=set_to_none)
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.weights.step()
        self.model.step()

    def state_dict(self):
        w, m = self.weights.state_dict(), self.model.state_dict()
        state = {}
        if 0 in w["state"]:
            state[0] = w["state"][0]
        state.update({1 + i: value for i, value in m["state"].items()})
        group = {**w["param_groups"][0], "params": list(range(1 + len(m["param_groups"][0]["params"])))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict):
        group = state_dict["param_groups"][0]
        count = len(group["params"])
        states = state_dict["state"]
        self.weights.load_state_dict({"state": {0: states[0]} if 0 in states else {},
                                      "param_groups": [{**group, "params": [0]}]})
        self.model.load_state_dict({"state": {i - 1: v for i, v in states.items() if i > 0},
                                    "param_groups": [{**group, "params": list(range(count - 1))}]})


class Chunk:
    """The rows of a chunk of consecutive steps of one epoch: the global indices (flat, batch after batch), the
    batch offsets, x and y; once started (ChunkedStep.start) this rank's rows (positions in the flat chunk, their
    indices in the shard, the range of each batch's), every step's batch weights wb, this rank's tasks (the steps
    whose divergence it computes), and when ready S and dS = dS/dw_b of every step."""

    def __init__(self, idx, offsets, x, y):
        self.idx, self.offsets, self.x, self.y = idx, offsets, x, y
        self.own = self.local = self.own_bounds = None
        self.wb = self.wb_work = None  # the batch weights, and their all-reduce while in flight
        self.shared = self.shared_work = None  # [S of each step, dS of each row], and its all-reduce
        self.tasks = []
        self.claimed = self.finished = 0  # tasks taken by a thread, tasks done (under `lock`)
        self.lock = threading.Condition()
        self.error = None  # an exception raised by a helper thread's task, re-raised by the caller
        self.S = self.dS = None
        self.issued = False  # the divergences' all-reduce was issued (share)

    def __len__(self):
        return len(self.offsets) - 1


class ChunkedStep(StepRunner):
    """The step runner of LossVal._train with the divergences computed ahead (see the module docstring).

    ctx: the TrainingContext (lossval_fast.distributed's, or context.OneProcess) with its chunk_steps; helpers: threads that take divergence
    tasks in the background (0: the calling thread does them between model steps)."""

    def __init__(self, ctx, est, model, weights, data, fixed_diameter, optimizer, helpers: int = 0):
        self.ctx, self.model, self.weights, self.data = ctx, model, weights, data
        self.task, self.batch_size, self.chunk_steps = data.task, est.batch_size, ctx.chunk_steps
        self.classification = data.task == "classification"
        self.from_logits = est.model_output == "logits"
        self.lo, self.hi = ctx.shard
        self.divergence = Divergence(est, data.X_val, fixed_diameter)
        # with a cached validation side on CPU, each divergence is one C++ call (no Python between the threads)
        self.direct = None
        if (self.divergence.gb is not None and data.device.type == "cpu"
                and hasattr(torch.ops.lossval_fast, "sinkhorn_potentials")):
            self.direct = (self.divergence.val_weights[None], self.divergence.X_val[None], {})
        self.optimizer = optimizer
        self.weight_state = optimizer.weights.fused_state()  # ([weights], [m], [v], [step]) of the shard's Adam
        self.ahead = None  # the chunk whose divergences are computed during the current chunk's steps
        self.window = []  # the current chunk and the three after it
        self.pool = ThreadPoolExecutor(helpers, thread_name_prefix="lossval-divergence") if helpers > 0 else None
        self.helpers = helpers
        self.fused = None
        structure = mlp_structure(model, data.task, est.model_output == "logits")
        model_state = optimizer.model.fused_state()
        if (STEP_OPTIONS.fused_step and structure is not None and model_state is not None and data.device.type == "cpu"
                and hasattr(torch.ops.lossval_fast, "lossval_mlp_model_step")):
            self.fused = structure
            self.adam_state = tuple([*w, *m] for w, m in zip(self.weight_state, model_state))
        # the C++ model step updates the weights' Adam lazily: only the batch's entries (optim.lazy_steps)
        self.last = lazy_steps(optimizer.weights, weights) if self.fused is not None and STEP_OPTIONS.lazy_adam else None
        self.lazy = self.last is not None
        # the dense Adam's gradient (zero outside the batch; touched at the batch's rows only); the lazy one needs none
        self.weight_grad = weights.new_empty(0) if self.lazy else torch.zeros_like(weights)

    # ---------------------------------------------------------------------------------------------- loader
    def batches(self, order, position):
        """(chunk, j) per step from `position` on. The chunks' rows (every batch row, not only this rank's) come
        from the background loader; the three chunks after the current one are loaded and started ahead."""
        parts = torch.split(order, self.batch_size)[position:]
        K = self.chunk_steps
        groups = [parts[i:i + K] for i in range(0, len(parts), K)]
        data = self.data

        def gather(c):
            idx = torch.cat(groups[c])
            offsets = [0]
            for part in groups[c]:
                offsets.append(offsets[-1] + len(part))
            if data.streamed:
                xb, yb = gather_rows(data, self.task, idx.numpy())
            else:
                xb, yb = data.X.index_select(0, idx.to(data.device)), data.y.index_select(0, idx.to(data.device))
            return idx, offsets, xb, yb

        loader = iter(BatchPrefetcher(range(len(groups)), gather, data.device))
        window = self.window = []
        for item in loader:
            window.append(Chunk(*item))
            if len(window) == 4:
                break
        # the epoch's first two chunks, prepared now (each rank its share, then the collectives); the third's
        # weights are shared while the first runs
        for k, chunk in enumerate(window[:3]):
            self.start(chunk, skip=sum(len(c) for c in window[:k]))
            if k < 2:
                self.share(chunk)
        while window:
            chunk = window[0]
            self.ahead = window[2] if len(window) > 2 else None
            if len(window) > 3:  # its first step comes after the three chunks before it
                self.start(window[3], skip=sum(len(c) for c in window[:3]))
            for j in range(len(chunk)):
                yield chunk, j
            window.pop(0)
            item = next(loader, None)
            if item is not None:
                window.append(Chunk(*item))
        self.ahead = None

    # ------------------------------------------------------------------------------------ chunk preparation
    def _fast_forward(self, chunk: Chunk, skip: int) -> torch.Tensor:
        """This rank's weights of the chunk's batches as each batch's step will see them: from the shard's state
        now, the zero-gradient Adam updates of the `skip` steps before the chunk and of the chunk's steps before
        the batch's: with the lazy Adam, the same kernel the model step runs on these entries (bit for bit); else
        the fused kernel on a gathered copy (the dense step's arithmetic, bit for bit)."""
        (w,), (m,), (v,), (count,) = self.weight_state
        local = chunk.local.to(w.device)
        bounds = chunk.own_bounds  # own rows are in batch order: batch j's are bounds[j]:bounds[j + 1]
        if self.lazy:  # batch j's entries brought to the step before batch j's: from their own state, one call
            steps = torch.tensor([bounds[j + 1] - bounds[j] for j in range(len(chunk))])
            target = int(count.item()) + skip + torch.repeat_interleave(torch.arange(len(chunk)), steps)
            return lazy_rows(self.optimizer.weights, self.weights, local, target)
        wbuf, mbuf, vbuf = (t.detach().index_select(0, local) for t in (w, m, v))
        gbuf = torch.zeros_like(wbuf)
        counter = count.clone()
        group = self.optimizer.weights.param_groups[0]
        beta1, beta2 = group["betas"]

        def update(start):  # one zero-gradient step of the entries from `start` on
            counter.add_(1)
            if start < wbuf.numel():
                torch._fused_adam_([wbuf[start:]], [gbuf[start:]], [mbuf[start:]], [vbuf[start:]], [], [counter],
                                   lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
                                   amsgrad=False, maximize=False)

        for _ in range(skip):
            update(0)
        snapshot = torch.empty_like(wbuf)
        for j in range(len(chunk)):
            snapshot[bounds[j]:bounds[j + 1]] = wbuf[bounds[j]:bounds[j + 1]]
            if j + 1 < len(chunk):
                update(bounds[j + 1])
        return snapshot

    def start(self, chunk: Chunk, skip: int):
        """This rank's weights of the chunk's batches, fast-forwarded, into the all-reduce that gives every rank
        all of them (issued, not waited for); the chunk's divergences this rank will compute, handed to the
        helper threads."""
        rank, world = self.ctx.rank, self.ctx.world
        dtype, device = self.data.dtype, self.data.device
        mine = (chunk.idx >= self.lo) & (chunk.idx < self.hi)
        chunk.own = torch.nonzero(mine).reshape(-1)
        chunk.local = chunk.idx.index_select(0, chunk.own) - self.lo
        chunk.own_bounds = torch.searchsorted(chunk.own, torch.tensor(chunk.offsets, dtype=chunk.own.dtype)).tolist()
        wb = torch.zeros(chunk.idx.numel(), dtype=dtype, device=device)
        if chunk.own.numel():
            wb.index_copy_(0, chunk.own.to(device), self._fast_forward(chunk, skip))
        chunk.wb = wb.to(self.ctx.comm_device)
        chunk.wb_work = self.ctx.all_reduce(chunk.wb)  # one rank's value plus zeros: exact
        chunk.tasks = list(range(rank, len(chunk), world))
        chunk.shared = torch.zeros(len(chunk) + chunk.idx.numel(), dtype=dtype, device=device)
        chunk.own, chunk.local = chunk.own.to(device), chunk.local.to(device)
        if self.pool is not None:
            for _ in range(min(self.helpers, len(chunk.tasks))):
                self.pool.submit(self._drain, chunk)

    def _weights(self, chunk: Chunk):
        """The chunk's batch weights, waiting for their all-reduce the first time (any thread)."""
        with chunk.lock:
            if chunk.wb_work is not None:
                chunk.wb_work.wait()
                chunk.wb_work = None
            chunk.wb = chunk.wb.to(self.data.device)
        return chunk.wb

    def _run_task(self, chunk: Chunk) -> bool:
        """Claim the chunk's next task and compute it; False when none is left to claim."""
        with chunk.lock:
            if chunk.claimed >= len(chunk.tasks) or chunk.error is not None:
                return False
            j = chunk.tasks[chunk.claimed]
            chunk.claimed += 1
        try:
            wb = self._weights(chunk)
            a, b = chunk.offsets[j], chunk.offsets[j + 1]
            S, dS = self._divergence(wb[a:b], chunk.x[a:b])
            chunk.shared[j] = S
            chunk.shared[len(chunk) + a:len(chunk) + b] = dS
        except BaseException as error:
            with chunk.lock:
                chunk.error = error
                chunk.lock.notify_all()
            raise
        with chunk.lock:
            chunk.finished += 1
            chunk.lock.notify_all()
        return True

    def _drain(self, chunk: Chunk):  # a helper thread's job: tasks until none is left
        try:
            while self._run_task(chunk):
                pass
        except BaseException:
            pass  # kept in chunk.error, re-raised by the calling thread

    def work(self, chunk: Chunk, upto: int):
        """Take the chunk's tasks on this thread until `upto` of them are claimed (by any thread)."""
        self._weights(chunk)
        while chunk.claimed < min(upto, len(chunk.tasks)) and self._run_task(chunk):
            pass

    def share(self, chunk: Chunk):
        """Finish the chunk's tasks (this thread takes what no helper has), then issue the all-reduce that gives
        every rank every divergence of the chunk."""
        self.work(chunk, len(chunk.tasks))
        with chunk.lock:
            while chunk.finished < len(chunk.tasks) and chunk.error is None:
                chunk.lock.wait()
        if chunk.error is not None:
            raise chunk.error
        chunk.shared = chunk.shared.to(self.ctx.comm_device)
        chunk.shared_work = self.ctx.all_reduce(chunk.shared)
        chunk.issued = True

    def _ready(self, chunk: Chunk):
        if chunk.S is None:
            if chunk.shared_work is not None:
                chunk.shared_work.wait()
            shared = chunk.shared.to(self.data.device)
            chunk.S, chunk.dS = shared[:len(chunk)], shared[len(chunk):]
            chunk.shared = chunk.shared_work = None

    def _divergence(self, wb, xb):
        """(S, dS/dw_b) of one step, the gradient by the op's envelope theorem: with a cached validation side on
        CPU one C++ call as the C++ step makes it (no Python between the threads), else through the op."""
        div = self.divergence
        if self.direct is not None:
            b, y, cost_modes = self.direct
            batch = xb.shape[0]
            if batch not in cost_modes:  # the op's "auto" choice (stored costs when they fit and d >= 8)
                cost_modes[batch] = int(auto_stored(batch, y.shape[1], y.shape[2], xb.element_size(), True,
                                                           xb.device))
            a = wb / wb.sum() if div.normalize else wb
            out = torch.ops.lossval_fast.sinkhorn_potentials(a[None], xb[None], b, y, div.eps_list, True, False,
                                                             cost_modes[batch], div.gb, 1)
            S, dS = out[0][0], out[1][0]
            if div.normalize:  # through a = w / Σ w
                dS = (dS - (a * dS).sum()) / wb.sum()
            return S, dS
        w = wb.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            value = self.divergence(w, xb)
            (grad,) = torch.autograd.grad(value, w)
        return value.detach(), grad

    # ------------------------------------------------------------------------------------------------ step
    def _loss(self, pred, yb, wb):
        return weighted_batch_loss(self.classification, self.from_logits, pred, yb, wb)

    def __call__(self, item, optimizer) -> float:
        chunk, j = item
        self._ready(chunk)
        loss = self._model_step(chunk, j, optimizer)
        ahead = self.ahead
        if ahead is not None and not ahead.issued:
            # spread the chunk-after-next's divergences over this chunk's steps (its weights' all-reduce was
            # issued a chunk ago), then start their all-reduce
            self.work(ahead, -(-len(ahead.tasks) * (j + 1) // len(chunk)))
            if j == len(chunk) - 1:
                self.share(ahead)
        return loss

    def _model_step(self, chunk: Chunk, j: int, optimizer) -> float:
        a, b = chunk.offsets[j], chunk.offsets[j + 1]
        xb, yb, wb, S, dS = chunk.x[a:b], chunk.y[a:b], chunk.wb[a:b], chunk.S[j], chunk.dS[a:b]
        # this rank's rows of the batch: positions in the batch and indices in the shard
        lo_own, hi_own = chunk.own_bounds[j], chunk.own_bounds[j + 1]
        pos, local = chunk.own[lo_own:hi_own] - a, chunk.local[lo_own:hi_own]
        if self.fused is not None:
            activations, activation_params, head = self.fused
            params, exp_avgs, exp_avg_sqs, steps = self.adam_state
            group = optimizer.weights.param_groups[0]
            beta1, beta2 = group["betas"]
            with torch.no_grad():
                return torch.ops.lossval_fast.lossval_mlp_model_step(
                    params, exp_avgs, exp_avg_sqs, steps, self.weight_grad, group["lr"], beta1, beta2,
                    group["eps"], activations, activation_params, head, xb, yb, wb, S, dS, pos, local, self.last).item()
        w = wb.detach().clone().requires_grad_(True)
        train_loss = self._loss(self.model(xb), yb, w)
        square = S * S
        # d/dθ: S² Σ w_i ∂l_i/∂θ; d/dw_i: S² l_i + L_w · 2S ∂S/∂w_i (S and dS are constants here)
        (train_loss * square + train_loss.detach() * 2 * S * (dS * w).sum()).backward()
        with torch.no_grad():
            self.weight_grad.index_add_(0, local, w.grad.index_select(0, pos))
        self.weights.grad = self.weight_grad
        optimizer.step()
        with torch.no_grad():
            self.weight_grad.index_fill_(0, local, 0)
        self.weights.grad = None
        return float(train_loss.detach() * square)

    def close(self):
        """Stop the helper threads (no new task is claimed; running ones end). Always called by the fit, also
        when it fails."""
        for chunk in self.window:
            with chunk.lock:
                chunk.claimed = len(chunk.tasks)
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def finish(self):
        """At the end of a fit that ran normally: stop the helpers and wait for the collectives issued ahead for
        steps that will not run (a time-boxed fit)."""
        self.close()
        pending, self.window, self.ahead = self.window, [], None
        for chunk in pending:
            if chunk.wb_work is not None:
                chunk.wb_work.wait()
            if chunk.shared_work is not None:
                chunk.shared_work.wait()
            chunk.wb_work = chunk.shared_work = None  # no collective's handle outlives the fit
