"""Adam with torch's fused kernel, called without torch.optim's per-step Python bookkeeping.

A LossVal step on CPU is ~1 ms, and ``torch.optim.Adam(fused=True).step()`` spends ~0.3 ms of it in Python
(grouping tensors by device and dtype, state look-ups, profiler hooks) around a ~50 µs kernel. `adam` returns an
Adam whose ``step`` calls the same fused kernel with lists built once, so the update is bit for bit the fused
Adam's; ``state_dict``/``load_state_dict`` are torch's own (checkpoints are plain Adam state).

The C++ LossVal steps update the weight vector's Adam lazily (`lazy_steps`, csrc/cpu/lazy_adam.h): only the
batch's entries each step, the other entries' zero-gradient updates deferred to when they are next needed. The
state then carries each entry's step number (checkpoints too); `settle` turns it back into the dense state.
"""
from __future__ import annotations

import torch


class LeanAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) whose step skips torch.optim's per-step overhead when it can: one parameter
    group, every parameter on one device with one dtype and a gradient, no amsgrad/maximize/weight decay options
    beyond plain Adam's. Anything else falls back to the parent's step."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr, fused=True)
        self._lists = None

    def load_state_dict(self, state_dict):
        # torch casts every tensor of a floating parameter's state to its dtype: the lazy step numbers stay int64
        lazy = {key: value[LAST_STEP] for key, value in state_dict["state"].items() if LAST_STEP in value}
        if lazy:
            state_dict = {**state_dict, "state": {key: {k: v for k, v in value.items() if k != LAST_STEP}
                                                  for key, value in state_dict["state"].items()}}
        super().load_state_dict(state_dict)
        for key, last in lazy.items():
            self.state[self.param_groups[0]["params"][key]][LAST_STEP] = last.to(torch.int64).clone()
        self._lists = None  # the state tensors were replaced

    def _build(self):
        group = self.param_groups[0]
        params = group["params"]
        if (len(self.param_groups) != 1 or group["amsgrad"] or group["maximize"] or group.get("capturable")
                or group.get("decoupled_weight_decay") or isinstance(group["lr"], torch.Tensor)
                or len({(p.device, p.dtype) for p in params}) != 1
                or any(p not in self.state or "exp_avg" not in self.state[p] for p in params)):
            return False
        states = [self.state[p] for p in params]
        self._lists = (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                       [s["step"] for s in states])
        return True

    def fused_state(self):
        """(params, exp_avgs, exp_avg_sqs, steps) of the single group for a caller that runs the fused update
        itself (the C++ LossVal step), creating the zero state torch's first step would create; None when the
        lean path does not apply."""
        for p in self.param_groups[0]["params"]:
            if not self.state.get(p):
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if self._lists is None and not self._build():
            return None
        return self._lists

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None or self._lists is None and not self._build():
            out = super().step(closure)
            self._lists = None
            return out
        params, exp_avgs, exp_avg_sqs, steps = self._lists
        grads = [p.grad for p in params]
        if any(g is None for g in grads):  # torch skips such parameters; keep its semantics
            self._lists = None
            return super().step()
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False, grad_scale=None, found_inf=None)
        return None


# Lazy Adam over a weight vector (csrc/cpu/lazy_adam.h): the state of the entries is current at the step numbers
# kept under this key of the parameter's Adam state (absent: every entry is current)
LAST_STEP = "last_step"


def lazy_steps(optimizer, param) -> torch.Tensor | None:
    """The step numbers of `param`'s lazily updated entries, created (every entry current) when absent; None when
    the lazy kernel does not apply (no fused state, a dtype or device it does not take)."""
    if (not isinstance(optimizer, LeanAdam) or param.device.type != "cpu"
            or param.dtype not in (torch.float32, torch.float64) or param.dim() != 1
            or not hasattr(torch.ops.lossval_fast, "lazy_adam") or optimizer.fused_state() is None):
        return None
    state = optimizer.state[param]
    if LAST_STEP not in state:
        state[LAST_STEP] = torch.full(param.shape, int(state["step"].item()), dtype=torch.int64)
    return state[LAST_STEP]


def lazy_rows(optimizer, param, idx, target, write: bool = False) -> torch.Tensor:
    """`param`'s entries idx brought to step(s) `target` (int64, one or one per entry) by their zero-gradient
    updates: returned (write=False) or also stored (write=True)."""
    state, group = optimizer.state[param], optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    return torch.ops.lossval_fast.lazy_adam(param.data, state["exp_avg"], state["exp_avg_sq"], state[LAST_STEP], idx,
                                            target, None, group["lr"], beta1, beta2, group["eps"], write)


def settle(optimizer, param) -> None:
    """Apply `param`'s pending lazy updates (every entry brought to the current step) and drop its step numbers:
    the parameter and its Adam state are then the dense Adam's."""
    state = optimizer.state.get(param)
    if not state or LAST_STEP not in state:
        return
    step = torch.tensor([int(state["step"].item())], dtype=torch.int64)
    with torch.no_grad():
        lazy_rows(optimizer, param, torch.arange(param.numel()), step, write=True)
    del state[LAST_STEP]


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for these parameters (CPU, CUDA; floating dtypes), else
    the plain torch.optim.Adam. Same update as the per-parameter loop up to the last bits."""
    params = list(params)
    try:
        return LeanAdam(params, lr)
    except (RuntimeError, ValueError):  # a device or dtype without a fused Adam
        return torch.optim.Adam(params, lr=lr)
