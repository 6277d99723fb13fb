"""Which backend runs an op: `backend="auto"` picks by device; explicit names are checked for availability.

Backends: "cpp" (C++ CPU kernels), "cuda" (CUDA C++ kernels), "triton" (Triton kernels: on GPU, or on CPU under
TRITON_INTERPRET=1 for tests), "torch" (the materialised pure-PyTorch reference).
"""
from __future__ import annotations

import torch

from .._extension import HAS_EXTENSION, has_cuda_kernels, has_triton

BACKENDS = ("auto", "cpp", "cuda", "triton", "torch")
OPS = ("softmin", "softmin_barycenter", "plan_colsum", "nearest", "softmin_stored", "weighted_cross_entropy",
       "weighted_mse")
# ops that have a CUDA C++ kernel and are preferred to their Triton twin on GPU
CUDA_PREFERRED: frozenset = frozenset()


def auto_backend(op: str, device: torch.device) -> tuple[str, str]:
    """(backend, reason) that backend="auto" uses for `op` on `device`."""
    if device.type == "cpu":
        if HAS_EXTENSION:
            return "cpp", "C++ CPU kernel"
        return "torch", "compiled extension missing: pure-torch reference"
    if device.type == "cuda":
        if op in CUDA_PREFERRED and has_cuda_kernels():
            return "cuda", "CUDA C++ kernel (faster than Triton here)"
        if has_triton():
            return "triton", "Triton kernel"
        if has_cuda_kernels():
            return "cuda", "CUDA C++ kernel (Triton not installed)"
        return "torch", "no GPU kernels available: pure-torch reference"
    return "torch", f"no kernels for device type {device.type!r}: pure-torch reference"


def resolve(backend: str, op: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return auto_backend(op, device)[0]
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
        if not HAS_EXTENSION:
            from .._extension import require_extension
            require_extension()
    elif backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' runs on CUDA tensors, got tensors on {device}")
        if not has_cuda_kernels():
            raise RuntimeError("backend='cuda' requested but the extension was built without CUDA kernels "
                               "(the installed torch had no CUDA at build time)")
    elif backend == "triton":
        if not has_triton():
            raise RuntimeError("backend='triton' requested but Triton cannot run here: install triton and use a "
                               "GPU, or set TRITON_INTERPRET=1 before importing lossval_fast (CPU interpreter)")
    return backend
