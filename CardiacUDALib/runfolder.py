"""The files of one training run, without importing torch (the Slicer module reads them at startup).

``checkpoints/last.pt`` (resume point, with optimiser state), ``checkpoints/best.pt`` (the selected
model, weights only), ``history.json`` (losses and validation scores), and ``STOP``: a file whose
appearance asks the running worker to save ``last.pt`` and exit cleanly. ``.lock`` is held while a
process trains in the folder (:func:`locked`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from CardiacUDALib.errors import InputDataError

STOP_FILE_NAME = "STOP"
LOCK_FILE_NAME = ".lock"


def _lock_without_waiting(handle: object) -> None:
    """An exclusive lock on the open file, released by the system when the process ends; OSError when
    another process holds it."""
    if os.name == "nt":
        import msvcrt

        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold ``root``'s lock while a process trains in it: a second process is refused, naming the first.

    The folder is made for the lock; if it was made here and holds nothing else at the end (a run that
    failed on its inputs), it goes again. A crashed holder's lock is freed by the system."""
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    lock_file = root / LOCK_FILE_NAME
    handle = open(lock_file, "a+", encoding="utf-8")  # noqa: SIM115 (held across the yield)
    try:
        _lock_without_waiting(handle)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError):
            handle.seek(0)
            holder = handle.read().strip()
        handle.close()
        raise InputDataError(
            f"the run folder {root} is in use by {holder or 'another process'}: wait until it ends, or "
            "give another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        handle.close()
        if created and not any(root.iterdir()):
            root.rmdir()


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def stop_file(self) -> Path:
        return self.root / STOP_FILE_NAME
