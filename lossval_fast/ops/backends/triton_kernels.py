"""The Triton kernels (lossval_fast/triton): `auto`'s choice on a GPU. On a CPU they run only under the Triton
interpreter (TRITON_INTERPRET=1 before triton is imported: the tests), so `auto` never picks them there; an explicit
backend="triton" runs wherever Triton can."""
from __future__ import annotations

import types

from ..._extension import has_triton
from .registry import OPS, Backend, register


def _unavailable():
    raise RuntimeError("backend='triton' requested but Triton cannot run here: install triton and use a GPU, or set "
                       "TRITON_INTERPRET=1 before importing lossval_fast (CPU interpreter)")


def _load() -> types.SimpleNamespace:
    from ... import triton as kernels   # imported lazily: TRITON_INTERPRET must be set before
    table = vars(kernels.ops()).copy()
    table.update(vars(kernels.weighted_loss_ops()))
    return types.SimpleNamespace(**table)


BACKEND = register(Backend(
    name="triton", runs_on=("*",), where="any", auto_on=("cuda",), priority={op: 20 for op in OPS},
    available=has_triton, unavailable=_unavailable, load=_load, describe="Triton kernel"))
