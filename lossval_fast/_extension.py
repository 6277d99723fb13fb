"""Loading the compiled extension and describing what was built (``lossval_fast.info()``)."""
from __future__ import annotations

import importlib
import os
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
