"""The files of one training run, without importing torch (the Slicer module reads them at startup).

``checkpoints/last.pt`` (resume point, with optimiser state), ``checkpoints/best.pt`` (the selected
model, weights only), ``history.json`` (losses and validation scores), and ``STOP``: a file whose
appearance asks the running worker to save ``last.pt`` and exit cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STOP_FILE_NAME = "STOP"


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
