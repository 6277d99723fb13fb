"""The backends, one module each (cpp, cuda, triton_kernels, plain_torch), registered in the order `names()` lists
them; registry.py holds the rules every op's dispatch reads."""
# each registers itself, in the order backend names are listed: cpp, cuda, triton, torch
from . import cpp  # noqa: F401
from . import cuda  # noqa: F401
from . import triton_kernels  # noqa: F401
from . import plain_torch  # noqa: F401
from .registry import OPS, Backend, auto, get, names, op_table, register, resolve

__all__ = ["OPS", "Backend", "auto", "get", "names", "op_table", "register", "resolve"]
