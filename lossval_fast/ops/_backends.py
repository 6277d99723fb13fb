"""The op set of each backend, behind one interface: softmin, softmin_barycenter, plan_colsum, nearest,
softmin_stored (same signatures as the torch.library schemas in csrc/ops.cpp)."""
from __future__ import annotations

import types

import torch

from . import _library


def _cpp():
    _library.register_cpp()
    ops = torch.ops.lossval_fast
    return types.SimpleNamespace(softmin=ops.softmin, softmin_barycenter=ops.softmin_barycenter,
                                 plan_colsum=ops.plan_colsum, nearest=ops.nearest,
                                 softmin_stored=ops.softmin_stored)


def _triton():
    from .. import triton as triton_backend  # imported lazily: TRITON_INTERPRET must be set before
    return triton_backend.ops()


def _torch():
    from .. import reference
    return types.SimpleNamespace(softmin=reference.softmin, softmin_barycenter=reference.softmin_barycenter,
                                 plan_colsum=reference.plan_colsum, nearest=reference.nearest,
                                 softmin_stored=reference.softmin_stored)


_CACHE: dict = {}


def get(backend: str):
    """Op set of a resolved backend name ("cpp" and "cuda" share the dispatch-key ops)."""
    key = "cpp" if backend == "cuda" else backend
    if key not in _CACHE:
        _CACHE[key] = {"cpp": _cpp, "triton": _triton, "torch": _torch}[key]()
    return _CACHE[key]
