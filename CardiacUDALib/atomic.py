"""Atomic file writes: a crash or a cancel never leaves a truncated output file.

Every writer of the library goes through :func:`atomic_path`: it hands out a temporary path in the
destination folder (same file system, same extension so that SimpleITK picks the right format) and
moves it over the destination with :func:`os.replace` only when the block finished without error.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_DOUBLE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".tar.gz")


def full_suffix(path: Path) -> str:
    """The extension that decides the file format, e.g. ``.nii.gz`` rather than ``.gz``."""
    name = path.name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix) :]
    return path.suffix


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=f".tmp{full_suffix(destination)}", dir=destination.parent
    )
    os.close(handle)
    temporary = Path(temporary_name)
    # mkstemp creates the file readable by its owner only; give the output the usual umask mode.
    os.chmod(temporary, 0o666 & ~_current_umask())
    try:
        yield temporary
        os.replace(temporary, destination)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
