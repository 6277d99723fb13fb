"""Output files written whole or not at all, and output paths checked before the work that fills them.

Every output (the values CSV, reports, plots, results.json, the benchmark ratios) goes through `atomic_write`: the
bytes land in a temporary file next to the target, which `os.replace` renames over it only once complete, so an
interrupt or a full disk leaves the previous file (or none), never a truncated one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "check_writable", "check_writable_dir"]


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs):
    """`with atomic_write(path) as f: ...` writes f to a temporary file in path's folder (created), then renames it
    to path; on an exception the temporary file is removed and path is untouched."""
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    # same folder: os.replace is then a rename within one file system (atomic)
    fd, tmp = tempfile.mkstemp(dir=path.parent if path.parent != Path("") else ".", prefix=f".{path.name}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _default_mode() -> int:
    # mkstemp creates 0600; give the file the permissions open() would have
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _probe(folder: Path, shown: str) -> None:
    """Create and remove a file in `folder`: the only check that also holds for root and read-only mounts."""
    if not folder.is_dir():
        raise OSError(f"{shown}: cannot write there: {folder} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lossval-write-check.")
    except OSError as error:
        raise OSError(f"{shown}: cannot write there: {error.strerror or error} ({folder})") from None
    os.close(fd)
    os.unlink(tmp)


def check_writable(path, what: str = "--out") -> None:
    """Raise OSError (naming `what` and the path) unless a file can be written at `path` (its missing folders would
    be created): checked before a long computation, so that a bad path fails in a second, not after the fit."""
    path = Path(path)
    shown = f"{what} {path}"
    if path.is_dir():
        raise OSError(f"{shown}: is a folder, expected a file name")
    _probe(_nearest_existing(path.parent if path.parent != Path("") else Path(".")), shown)


def check_writable_dir(path, what: str = "--out") -> None:
    """Like check_writable for an output folder (created later if missing)."""
    path = Path(path)
    shown = f"{what} {path}"
    if path.exists() and not path.is_dir():
        raise OSError(f"{shown}: is a file, expected a folder")
    _probe(_nearest_existing(path), shown)
