"""The CUDA C++ kernels (csrc/cuda; built only with a CUDA torch, docs/build.md). The same dispatch-key ops as the
C++ CPU backend, on CUDA tensors; no weighted-loss kernels. `auto` prefers Triton on a GPU except for the ops in
CUDA_PREFERRED, to be set from the GPU run's measurement (bench/gpu_run.py, `make gpu`)."""
from __future__ import annotations

from ..._extension import has_cuda_kernels
from .registry import Backend, register

# ops whose CUDA C++ kernel beats its Triton twin on the GPU (none measured yet)
CUDA_PREFERRED: frozenset = frozenset()
_OPS = ("softmin", "softmin_barycenter", "plan_colsum", "nearest", "softmin_stored")


def _unavailable():
    raise RuntimeError("backend='cuda' requested but the extension was built without CUDA kernels (the installed "
                       "torch had no CUDA at build time)")


def _load():
    from . import cpp
    return cpp._load()   # the dispatch-key ops: CUDA tensors reach the CUDA kernels


BACKEND = register(Backend(
    name="cuda", runs_on=("cuda",), where="CUDA", auto_on=("cuda",),
    priority={op: (30 if op in CUDA_PREFERRED else 10) for op in _OPS},
    available=has_cuda_kernels, unavailable=_unavailable, load=_load, describe="CUDA C++ kernel"))
