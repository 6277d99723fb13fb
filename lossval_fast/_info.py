"""lossval_fast.info(): what was built and which backend each op uses on each device. It sits above the extension
loader and the dispatch rules, which it reads (the loader knows nothing of the ops)."""
from __future__ import annotations

import platform

import torch

from ._extension import _LOAD_ERROR, HAS_EXTENSION
from .ops.backends import OPS, auto, get, names

__all__ = ["info"]


def _describe(backend: str, reason: str) -> str:
    if backend == "cpp":
        reason += ", " + torch.ops.lossval_fast.cpu_capability()
    return f"{backend} ({reason})"


def info() -> dict:
    """What was built and which backend each op uses on each device, with the reason.

    Returns a dict (also pretty-printable) with the package and torch versions, the build record, the CPU
    instruction set in use, and per device the backend ``backend="auto"`` picks for every op.
    """
    from . import __version__

    try:
        from . import _build_info as build
        build_record = {k: getattr(build, k) for k in
                        ("torch_version", "torch_cuda", "with_cuda", "cuda_archs", "commit", "compiler")}
    except ImportError:
        build_record = None
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    result = {
        "version": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # threads the compiled kernels really split their work over (1 with more torch threads = a build
        # without OpenMP)
        "kernel_threads": (torch.ops.lossval_fast.parallel_threads(64) if HAS_EXTENSION else None),
        "extension": "loaded" if HAS_EXTENSION else _LOAD_ERROR,
        "build": build_record,
        "backends_built": {name: get(name).available() for name in names()[1:]},
        "cpu_capability": (torch.ops.lossval_fast.cpu_capability() if HAS_EXTENSION else None),
        "best_cpu_capability": (torch.ops.lossval_fast.best_cpu_capability() if HAS_EXTENSION else None),
        "dispatch": {dev: {op: _describe(*auto(op, torch.device(dev))) for op in OPS}
                     for dev in devices},
        # whole-algorithm steps in C++ that the estimators use on CPU when they apply
        "cpu_steps": {
            "LossVal step of an MLP (lossval_mlp_step)": _step_state("lossval_mlp_step"),
            "bounded Lloyd pass (kmeans_bounded_step)": _step_state("kmeans_bounded_step"),
        },
    }
    return result


def _step_state(op: str) -> str:
    if not HAS_EXTENSION:
        return "not built (the estimators use their torch paths)"
    return "built" if hasattr(torch.ops.lossval_fast, op) else "missing from this build"
