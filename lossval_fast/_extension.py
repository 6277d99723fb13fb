"""Loading the compiled extension and describing what was built (``lossval_fast.info()``)."""
from __future__ import annotations

import importlib
import os
import platform
import warnings

import torch

_LOAD_ERROR: str | None = None


def _load() -> bool:
    global _LOAD_ERROR
    try:
        importlib.import_module("lossval_fast._C")
        return True
    except ImportError as error:  # keep the package importable: the torch backend still works
        try:
            from . import _build_info as build
            built = f"built against torch {build.torch_version} (CUDA {build.torch_cuda or 'none'})"
        except ImportError:
            built = "no build record found (the package was installed without compiling the extension?)"
        _LOAD_ERROR = (f"lossval_fast._C failed to load: {error}. It was {built}; the running torch is "
                       f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}). Rebuild with "
                       "`pip install --no-build-isolation .` against the installed torch.")
        return False


HAS_EXTENSION = _load()
if not HAS_EXTENSION:  # never a silent fallback: the plain torch paths are many times slower
    warnings.warn(_LOAD_ERROR + " Falling back to the plain torch backend.", RuntimeWarning, stacklevel=2)


def require_extension() -> None:
    """Raise a RuntimeError with the versions involved when the compiled kernels are missing."""
    if not HAS_EXTENSION:
        raise RuntimeError(_LOAD_ERROR)


def has_cuda_kernels() -> bool:
    return HAS_EXTENSION and bool(torch.ops.lossval_fast.has_cuda_kernels())


def has_triton() -> bool:
    """Triton kernels can run: a GPU driver is present, or the CPU interpreter is switched on."""
    try:
        from torch.utils._triton import has_triton_package
    except ImportError:  # pragma: no cover - very old torch
        return False
    if not has_triton_package():
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


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
    from .ops._dispatch import OPS, auto_backend

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
        "backends_built": {
            "cpp": HAS_EXTENSION,
            "cuda": has_cuda_kernels(),
            "triton": has_triton(),
            "torch": True,
        },
        "cpu_capability": (torch.ops.lossval_fast.cpu_capability() if HAS_EXTENSION else None),
        "best_cpu_capability": (torch.ops.lossval_fast.best_cpu_capability() if HAS_EXTENSION else None),
        "dispatch": {dev: {op: _describe(*auto_backend(op, torch.device(dev))) for op in OPS}
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
