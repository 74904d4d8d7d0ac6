"""The panel's model menu without Qt: the manifest's models, a download in a background thread, and what a run
does with a chosen model.

The download runs :func:`CardiacUDALib.weights.fetch` in a thread; the panel reads its progress
(``done``/``total`` bytes) and its outcome on a timer, and cancels it through a flag that ``fetch`` checks
between chunks (a cancelled download keeps its partial file, and the next download resumes it). A chosen
model is used in one of three ways (:class:`ModelAction`); :func:`job_for_model` turns one into the job and
the mode that :func:`~CardiacUDASlicerLib.adaptation.prepare_run` runs.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from dataclasses import dataclass
from pathlib import Path

from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.weights import (
    DownloadCancelled,
    DownloadError,
    Manifest,
    ModelEntry,
    entry_for_file,
    fetch,
    import_file,
    model_path,
)
from CardiacUDASlicerLib.adaptation import RunMode

MEGABYTE = 2**20


class ModelAction(enum.Enum):
    """What a run does with a chosen model; the value is the method it runs, where it runs one of its own."""

    SEGMENT = "segment"  # segment the targets with the model as it is
    ADABN = "adabn"  # re-estimate its BatchNorm statistics on the targets (seconds; no source needed)
    SELF_TRAINING = "self_training"  # self-train it on the targets (minutes; reads the labelled sources)


ACTION_MODES = {
    ModelAction.SEGMENT: RunMode.SEGMENT,
    ModelAction.ADABN: RunMode.ADAPT,
    ModelAction.SELF_TRAINING: RunMode.REFINE,
}


def job_for_model(model: Path, action: ModelAction, job: TrainJob) -> tuple[TrainJob, RunMode]:
    """The user's job (preset, iterations, device) starting from ``model``'s weights, with the method of
    ``action``, and the mode that :func:`~CardiacUDASlicerLib.adaptation.prepare_run` makes its main job of
    (:func:`~CardiacUDASlicerLib.adaptation.job_for_mode`); a model that ``action`` cannot use is refused
    there, with advice."""
    method = job.method if action is ModelAction.SEGMENT else action.value
    return dataclasses.replace(job, method=method, initial_checkpoint=Path(model)), ACTION_MODES[action]


def model_label(entry: ModelEntry, local: Path | None) -> str:
    """The model's line in the menu: its title, its measured mean Dice, and whether it is here yet."""
    dice = entry.measured.get("mean_dice")
    scores = f", mean Dice {dice:.2f}" if isinstance(dice, (int, float)) else ""
    where = "downloaded" if local is not None else f"{entry.size_bytes / MEGABYTE:.1f} MB to download"
    return f"{entry.title} ({entry.method}{scores}; {where})"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the menu: the manifest's model and its verified local file, if there is one."""

    entry: ModelEntry
    local: Path | None

    @property
    def label(self) -> str:
        return model_label(self.entry, self.local)


def model_choices(manifest: Manifest, cache: Path | None = None) -> list[ModelChoice]:
    """Every model of the manifest, in its order, with its local file (checked against its SHA-256)."""
    return [ModelChoice(entry, model_path(entry, cache)) for entry in manifest.models]


def import_model_file(path: Path, manifest: Manifest, cache: Path | None = None) -> ModelChoice:
    """Copy a model file obtained elsewhere into the cache, as the manifest's model it is (by SHA-256)."""
    entry = entry_for_file(manifest, Path(path))
    if entry is None:
        known = ", ".join(model.id for model in manifest.models) or "none"
        raise DownloadError(
            f"{path} is none of the listed models ({known}): its SHA-256 matches none of them. To use a "
            "checkpoint of your own, choose it as the trained model file instead"
        )
    return ModelChoice(entry, import_file(Path(path), entry, cache))


@dataclass(frozen=True)
class DownloadOutcome:
    """How a download ended: its file, or an error (``cancelled`` when it stopped on request)."""

    path: Path | None = None
    error: str | None = None
    cancelled: bool = False


class ModelDownload:
    """Fetch one model in a background thread: ``start()``, then read ``done``/``total`` and ``outcome``
    (None while it runs), and ``cancel()`` it; ``wait()`` blocks (scripts, tests)."""

    def __init__(self, entry: ModelEntry, cache: Path | None = None, timeout: float = 30.0) -> None:
        self.entry = entry
        self.cache = cache
        self.timeout = timeout
        self.done = 0
        self.total = entry.size_bytes
        self.outcome: DownloadOutcome | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fetch, name=f"CardiacUDA download {entry.id}", daemon=True
        )

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Ask the download to stop after the chunk it is reading (at most ``timeout`` on a stalled server)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> DownloadOutcome | None:
        self._thread.join(timeout)
        return self.outcome

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def _fetch(self) -> None:
        try:
            path = fetch(self.entry, self.cache, self._progress, self._stop.is_set, self.timeout)
        except DownloadCancelled as error:
            self.outcome = DownloadOutcome(error=str(error), cancelled=True)
        except Exception as error:  # noqa: BLE001  (the thread must always end with an outcome the panel shows)
            self.outcome = DownloadOutcome(error=str(error) or type(error).__name__)
        else:
            self.outcome = DownloadOutcome(path=path)
