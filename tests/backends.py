"""One test body, every backend (POT's style): parameters, devices and skip reasons in one place."""
from __future__ import annotations

import pytest
import torch

import lossval_fast
from lossval_fast._extension import HAS_EXTENSION, has_cuda_kernels, has_triton

CUDA = torch.cuda.is_available()
INTERPRETED_TRITON = has_triton() and not CUDA


def cpu_capabilities() -> list[str]:
    if not HAS_EXTENSION:
        return []
    order = ["generic", "avx2", "avx512"]
    best = torch.ops.lossval_fast.best_cpu_capability()
    return order[: order.index(best) + 1]


def backend_params(include_torch: bool = False) -> list:
    """cpp once per instruction set this CPU has, then triton, cuda (and the torch reference if asked)."""
    params = [pytest.param(("cpp", cap), id=f"cpp-{cap}") for cap in cpu_capabilities()]
    if not HAS_EXTENSION:
        params.append(pytest.param(("cpp", None), id="cpp", marks=pytest.mark.skip(reason="extension not built")))
    params.append(pytest.param(("triton", None), id="triton", marks=pytest.mark.skipif(
        not has_triton(), reason="triton cannot run: no GPU and TRITON_INTERPRET is not set")))
    params.append(pytest.param(("cuda", None), id="cuda", marks=pytest.mark.skipif(
        not (CUDA and has_cuda_kernels()),
        reason="no CUDA GPU here" if not CUDA else "extension built without CUDA kernels")))
    if include_torch:
        params.append(pytest.param(("torch", None), id="torch"))
    return params


def activate(param) -> tuple[str, torch.device]:
    """Select the backend (and CPU instruction set); return (backend name, device its tensors live on)."""
    backend, capability = param
    if backend == "cpp":
        torch.ops.lossval_fast.set_cpu_capability(capability or "auto")
        return "cpp", torch.device("cpu")
    if backend == "triton":
        return "triton", torch.device("cuda" if CUDA else "cpu")
    if backend == "cuda":
        return "cuda", torch.device("cuda")
    return "torch", torch.device("cpu")


def is_slow_backend(backend: str) -> bool:
    """The Triton interpreter runs one program at a time with numpy: only small shapes there."""
    return backend == "triton" and INTERPRETED_TRITON


__all__ = ["backend_params", "activate", "is_slow_backend", "lossval_fast", "CUDA"]
