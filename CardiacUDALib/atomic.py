"""Atomic file writes: a crash or a cancel never leaves a truncated output file.

Every writer of the library goes through :func:`atomic_path`: it hands out a temporary path in the
destination folder (same file system, same extension so that SimpleITK picks the right format) and
moves it over the destination with :func:`os.replace` only when the block finished without error.
A process killed outright (SIGKILL) leaves its temporary behind; the next write of the same file
removes it. :func:`check_writable_folder` refuses an output folder that cannot be one before any
work starts.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from CardiacUDALib.errors import InputDataError

_HASH_CHUNK_BYTES = 1 << 20

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


def _temporary_affixes(destination: Path) -> tuple[str, str]:
    """The name prefix and suffix of :func:`atomic_path`'s temporaries of ``destination``."""
    return f".{destination.name}.", f".tmp{full_suffix(destination)}"


def remove_leftover_temporaries(destination: Path) -> None:
    """Remove what a killed writer of ``destination`` left behind (SIGKILL skips every cleanup).

    One writer writes a given file at a time (a run folder belongs to one job), so a temporary of
    ``destination`` that exists when a new write starts is a leftover.
    """
    prefix, suffix = _temporary_affixes(destination)
    for leftover in destination.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_leftover_temporaries(destination)
    prefix, suffix = _temporary_affixes(destination)
    handle, temporary_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=destination.parent)
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


def check_writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse an output folder that is a file or cannot be created or written, before any work starts.

    Nothing is created here: the folder appears with the first file written into it, so a job that
    fails on its inputs leaves nothing behind.
    """
    if not str(path).strip():
        raise InputDataError(f"{what} is empty: give a folder (write '.' for the current one)")
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        blocker = "is a file" if existing == folder else f"lies under {existing}, which is a file"
        raise InputDataError(f"{what} {folder} {blocker}: give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputDataError(f"{what} {folder} cannot be written: no write permission in {existing}")
    return folder


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks so that large weights files need little memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
