"""The backend registry: every backend registers its op table, where it runs, whether it can run here and its
priority per op; `backend="auto"`, explicit backend names, the weighted losses and `info()` all read it. Adding a
backend is one module of this package (see cpp.py) plus a parameter in tests/backends.py."""
from __future__ import annotations

import dataclasses
import threading
import types
from typing import Callable

import torch

__all__ = ["Backend", "OPS", "register", "names", "get", "op_table", "auto", "resolve"]

OPS = ("softmin", "softmin_barycenter", "plan_colsum", "nearest", "softmin_stored", "weighted_cross_entropy",
       "weighted_mse")


@dataclasses.dataclass(frozen=True)
class Backend:
    """name: what `backend=` takes. runs_on: the device types it computes on ("*": any), with `where`, their name in
    an error. auto_on: the device types `backend="auto"` may pick it for. priority: op -> rank under "auto" (the
    highest available wins); an op not listed has no kernel in this backend. available(): built or installed and able
    to run here; unavailable(): raises the error an explicit request gets when it is not. load(): the op table (a
    namespace of callables with the signatures of the torch.library schemas in csrc/ops.cpp), built on first use.
    describe: what info() says when "auto" picks it."""

    name: str
    runs_on: tuple
    where: str
    auto_on: tuple
    priority: dict
    available: Callable[[], bool]
    unavailable: Callable[[], None]
    load: Callable[[], types.SimpleNamespace]
    describe: str


class _Registry(dict):
    """name -> Backend; `version` changes with every change of the mapping (the cache of "auto" keys on it)."""
    version = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.version += 1

    def __delitem__(self, key):
        super().__delitem__(key)
        self.version += 1


_REGISTRY: _Registry = _Registry()
_TABLES: dict[str, types.SimpleNamespace] = {}
_LOCK = threading.Lock()


def register(backend: Backend) -> Backend:
    if backend.name in _REGISTRY or backend.name == "auto":
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    unknown = set(backend.priority) - set(OPS)
    if unknown:
        raise ValueError(f"backend {backend.name!r} lists unknown ops {sorted(unknown)}; the ops are {OPS}")
    _REGISTRY[backend.name] = backend
    return backend


def names() -> tuple:
    """Every name `backend=` accepts: "auto" and the registered backends, in registration order."""
    return ("auto",) + tuple(_REGISTRY)


def get(name: str) -> Backend:
    return _REGISTRY[name]


def op_table(name: str) -> types.SimpleNamespace:
    """The op table of a resolved backend, loaded once (Triton's import must wait for TRITON_INTERPRET)."""
    table = _TABLES.get(name)
    if table is None:
        with _LOCK:
            if name not in _TABLES:
                _TABLES[name] = _REGISTRY[name].load()
            table = _TABLES[name]
    return table


def _runs_on(device_types: tuple, device: torch.device) -> bool:
    return "*" in device_types or device.type in device_types


_RANKED: dict = {}   # (registry state, op, device type) -> the candidates of "auto", best first


def _ranked(op: str, device: torch.device) -> tuple:
    key = (_REGISTRY.version, op, device.type)   # a changed registry is a new key
    ranked = _RANKED.get(key)
    if ranked is None:
        ranked = tuple(sorted((b for b in _REGISTRY.values() if op in b.priority and _runs_on(b.auto_on, device)),
                              key=lambda b: -b.priority[op]))
        if len(_RANKED) > 256:
            _RANKED.clear()
        _RANKED[key] = ranked
    return ranked


def auto(op: str, device: torch.device) -> tuple[str, str]:
    """(backend, reason) that backend="auto" uses for `op` on `device`: the available backend of highest priority
    for the op among those that may be picked on the device."""
    ranked = _ranked(op, device)
    if ranked and ranked[0].available():   # the common case, without building a reason
        return ranked[0].name, ranked[0].describe
    passed = []
    for backend in ranked:
        if backend.available():
            if passed:
                return backend.name, f"{backend.describe}; {', '.join(passed)} cannot run here"
            return backend.name, backend.describe
        passed.append(backend.name)
    raise RuntimeError(f"no registered backend runs {op} on {device}")


def resolve(requested: str, op: str, device: torch.device) -> str:
    """The backend that runs `op` on `device` for `backend=requested`; a clear error when it cannot."""
    if not isinstance(requested, str) or (requested != "auto" and requested not in _REGISTRY):
        raise ValueError(f"backend must be one of {names()}, got {requested!r}")
    if requested == "auto":
        ranked = _ranked(op, device)
        if ranked and ranked[0].available():
            return ranked[0].name
        return auto(op, device)[0]
    backend = _REGISTRY[requested]
    if not _runs_on(backend.runs_on, device):
        raise ValueError(f"backend={requested!r} runs on {backend.where} tensors, got tensors on {device}")
    if not backend.available():
        backend.unavailable()
    if op not in backend.priority:
        offered = [b.name for b in _REGISTRY.values() if op in b.priority]
        raise ValueError(f"backend={requested!r} has no {op} kernel; use 'auto' or one of {offered}")
    return requested
