"""The C++ CPU kernels (csrc/cpu): the fastest on a CPU, so `auto` picks them there when the extension is built."""
from __future__ import annotations

import types

import torch

from ..._extension import HAS_EXTENSION, require_extension
from .registry import OPS, Backend, register


def _load() -> types.SimpleNamespace:
    from ... import op_autograd
    op_autograd.register_cpp()
    ops = torch.ops.lossval_fast
    table = {name: getattr(ops, name) for name in ("softmin", "softmin_barycenter", "plan_colsum", "nearest",
                                                   "softmin_stored")}
    # the weighted losses (autograd in C++; their data checks inside the pass), with the table's signature
    if hasattr(ops, "weighted_cross_entropy"):
        table["weighted_cross_entropy"] = (lambda input, target, weight, from_logits, eps, need_grad:
                                           ops.weighted_cross_entropy(input, target, weight, from_logits, eps, True,
                                                                      need_grad))
    if hasattr(ops, "weighted_mse"):
        table["weighted_mse"] = (lambda pred, target, weight, need_grad:
                                 ops.weighted_mse(pred, target, weight, True, need_grad))
    return types.SimpleNamespace(**table)


BACKEND = register(Backend(
    name="cpp", runs_on=("cpu",), where="CPU", auto_on=("cpu",), priority={op: 30 for op in OPS},
    available=lambda: HAS_EXTENSION, unavailable=require_extension, load=_load, describe="C++ CPU kernel"))
