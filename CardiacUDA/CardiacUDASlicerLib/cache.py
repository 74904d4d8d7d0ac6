"""The folder where CardiacUDA keeps runs (inputs, checkpoints, results) and weights files.

It lives outside the extension (updating the extension keeps it) and can be moved: the
``CARDIACUDA_CACHE`` environment variable wins, then the folder a user chose in the panel, then
``<Slicer cache>/CardiacUDA``. The panel can open and clear it, since runs and weights are large.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

CACHE_ENVIRONMENT_VARIABLE = "CARDIACUDA_CACHE"


def cache_folder(application_cache: str | Path, chosen: str | None = None) -> Path:
    """Where runs and weights go (see the module docstring for the order of precedence)."""
    folder = os.environ.get(CACHE_ENVIRONMENT_VARIABLE) or chosen or Path(application_cache) / "CardiacUDA"
    return Path(folder)


def new_run_folder(cache: Path, method: str) -> Path:
    """``<cache>/runs/<date-time>_<method>``: sorted by start time, named after what ran."""
    folder = cache / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}_{method}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def folder_size_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def clear_cache(cache: Path, keep: Path | None = None) -> int:
    """Delete every run and weights file in ``cache`` except ``keep`` (a running run); returns bytes freed."""
    freed = 0
    for group in ("runs", "weights"):
        for entry in sorted((cache / group).glob("*")) if (cache / group).is_dir() else []:
            if keep is not None and entry.resolve() == Path(keep).resolve():
                continue
            if entry.is_dir():
                freed += folder_size_bytes(entry)
                shutil.rmtree(entry)
            else:
                freed += entry.stat().st_size
                entry.unlink()
    return freed
