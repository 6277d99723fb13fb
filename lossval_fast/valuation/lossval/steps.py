"""LossVal's steps: the divergence of a step, the C++ whole-step of an MLP, the generic step runner, and the
options that choose between them."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ... import ops
from ...data import BatchPrefetcher
from ...ops.sinkhorn import auto_stored, epsilon_schedule
from ..optim import LAST_STEP, lazy_steps
from .data import Data, gather_rows
from .protocols import StepRunner

if TYPE_CHECKING:   # annotations only: the estimator imports this module
    from .estimator import LossVal


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


class Divergence:
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


# How the steps run; the values do not depend on it beyond rounding (tested). Tests switch its fields.
@dataclasses.dataclass
class StepOptions:
    """fused_step: an MLP model's whole step in one C++ call on CPU (csrc/cpu/lossval_step_cpu.cpp); off, the
    generic path (autograd through the model). chunked_steps: single-process fits over many points with a fixed
    diameter compute the divergences of chunks of chunk_steps steps ahead on the threads a step cannot use
    (chunked.py), from chunked_min_pairs batch x validation points (a divergence of ~1 ms and more is worth a
    thread). lazy_adam: the C++ steps update the weight vector's Adam lazily (optim.lazy_steps): O(batch) work per
    step instead of O(n)."""

    fused_step: bool = True
    chunked_steps: bool = True
    chunk_steps: int = 32
    lazy_adam: bool = True
    chunked_min_pairs: int = 65_536


STEP_OPTIONS = StepOptions()


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
        self.last = lazy_steps(optimizer, weights) if STEP_OPTIONS.lazy_adam else None  # the weights' lazy Adam
        self.lazy = self.last is not None
        # the dense Adam's gradient buffer (zero outside the batch); the lazy Adam needs none
        self.weight_grad = weights.new_empty(0) if self.lazy else torch.zeros_like(weights)
        self.b = divergence.val_weights
        if est.normalize and divergence.fixed_diameter is None:
            self.b = self.b / self.b.sum()  # the op's normalisation of the validation masses
        self.cost_modes = {}

    @classmethod
    def build(cls, est, model, weights, optimizer, data, divergence, threads):
        if not STEP_OPTIONS.fused_step or data.device.type != "cpu" or not hasattr(optimizer, "fused_state"):
            return None
        if not hasattr(torch.ops.lossval_fast, "lossval_mlp_step"):
            return None
        structure = mlp_structure(model, data.task, est.model_output == "logits")
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


class SingleStep(StepRunner):
    """One LossVal minibatch loss: the fused weighted loss times the squared Sinkhorn divergence (the C++ whole
    step of an MLP on CPU, else autograd)."""

    def __init__(self, est: LossVal, model, weights, data: Data, fixed_diameter, optimizer=None, threads=1):
        self.model, self.weights, self.X, self.y = model, weights, data.X, data.y
        self.data, self.task = data, data.task
        self.batch_size = est.batch_size
        self.classification = data.task == "classification"
        self.from_logits = est.model_output == "logits"
        self.divergence = Divergence(est, data.X_val, fixed_diameter)
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
