"""Atomic file writes: a crash or a cancel never leaves a truncated output file.

Every writer of the library goes through :func:`atomic_path`: it hands out a temporary path in the
destination folder (same file system, same extension so that SimpleITK picks the right format) and
moves it over the destination with :func:`os.replace` only when the block finished without error.
A process killed outright (SIGKILL) leaves its temporary behind; the next write of the same file
removes it. :func:`check_writable_folder` refuses an output folder that cannot be one before any
work starts. A write the file system refuses (full disk, quota, read-only, a name too long) becomes an
:class:`~CardiacUDALib.errors.OutputError` that names the file, whichever writer ran in the block.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from CardiacUDALib.errors import InputDataError, OutputError

_HASH_CHUNK_BYTES = 1 << 20

# The errors of a file system that refuses a write; any other OSError in a write block (a network
# error of a download, say) is not about the output and passes through unchanged.
_STORAGE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM", "ENAMETOOLONG", "EIO", "ENOTDIR")
    if hasattr(errno, name)
)
# Where the platform cannot say (no os.pathconf), the common limits of a file name and a path in bytes.
_DEFAULT_NAME_MAX = 255
_DEFAULT_PATH_MAX = 4096
# Bytes kept for the names written inside an output folder (``<case>_reliability.nii.gz`` and its temporary).
_INNER_NAME_BYTES = 255

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
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_leftover_temporaries(destination)
        prefix, suffix = _temporary_affixes(destination)
        handle, temporary_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=destination.parent)
        os.close(handle)
        temporary = Path(temporary_name)
        # mkstemp creates the file readable by its owner only; give the output the usual umask mode.
        os.chmod(temporary, 0o666 & ~_current_umask())
    except OSError as error:
        raise _write_refused(destination, error) from error
    try:
        try:
            yield temporary
            os.replace(temporary, destination)
        except OSError as error:
            if error.errno not in _STORAGE_ERRNOS:
                raise
            raise _write_refused(destination, error) from error
        except RuntimeError as error:
            # Writers in C++ (torch.save's zip writer, ITK) report a failed write as a RuntimeError.
            raise _write_refused(destination, error) from error
    finally:
        if temporary.exists():
            temporary.unlink()


def _write_refused(destination: Path, error: Exception) -> OutputError:
    """The message for a write of ``destination`` that failed: the system's reason and the free space."""
    # A C++ writer's own text (torch: "unexpected pos ...") says nothing to a user; the free space does.
    reason = error.strerror if isinstance(error, OSError) and error.strerror else "the write did not complete"
    try:
        free = (
            f"; {shutil.disk_usage(_nearest_existing(destination.parent)).free / 1e6:.1f} MB free on its disk"
        )
    except OSError:
        free = ""
    return OutputError(f"cannot write {destination}: {reason}{free}; nothing was replaced")


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
    _check_name_lengths(folder, what)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        blocker = "is a file" if existing == folder else f"lies under {existing}, which is a file"
        raise InputDataError(f"{what} {folder} {blocker}: give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputDataError(f"{what} {folder} cannot be written: no write permission in {existing}")
    return folder


def _nearest_existing(path: Path) -> Path:
    """``path`` itself, or its nearest ancestor that exists (what a folder not made yet would live in)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _limit(folder: Path, name: str, default: int) -> int:
    """The file system's limit ``name`` (``PC_NAME_MAX``, ``PC_PATH_MAX``) where ``folder`` would live."""
    try:
        return int(os.pathconf(_nearest_existing(folder.absolute()), name))
    except (AttributeError, OSError, ValueError):
        return default


def _check_name_lengths(folder: Path, what: str) -> None:
    """Refuse a folder whose name, or whose path with a file written in it, the file system cannot hold."""
    name_max = _limit(folder, "PC_NAME_MAX", _DEFAULT_NAME_MAX)
    for part in folder.parts:
        length = len(os.fsencode(part))
        if length > name_max:
            raise InputDataError(
                f"{what} has a name of {length} bytes ({part[:40]}...); the file system allows {name_max}"
            )
    length = len(os.fsencode(str(folder.absolute())))
    path_max = _limit(folder, "PC_PATH_MAX", _DEFAULT_PATH_MAX)
    if length + _INNER_NAME_BYTES >= path_max:
        raise InputDataError(
            f"{what} has a path of {length} bytes; with the files written into it, that is over the "
            f"file system's limit of {path_max}: choose a shorter path"
        )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks so that large weights files need little memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
