"""The panel's model menu without Qt: the manifest's models, a download in a background process, and what a
run does with a chosen model.

The download runs :func:`CardiacUDALib.weights.fetch` in a process of its own (``python -m
CardiacUDALib.download``; a thread would stall inside Slicer, whose main thread holds the GIL between timer
ticks); the panel polls its events on a timer (``done``/``total`` bytes, then its outcome), and cancels
it with a stop file that ``fetch`` checks between chunks (a cancelled download keeps its partial file,
and the next download resumes it). A chosen
model is used in one of three ways (:class:`ModelAction`); :func:`job_for_model` turns one into the job and
the mode that :func:`~CardiacUDASlicerLib.adaptation.prepare_run` runs.
"""

from __future__ import annotations

import dataclasses
import enum
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from CardiacUDALib.atomic import write_json_atomic
from CardiacUDALib.download import download_job
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.runfolder import STOP_FILE_NAME
from CardiacUDALib.weights import (
    DownloadError,
    Manifest,
    ModelEntry,
    entry_for_file,
    import_file,
    model_path,
)
from CardiacUDASlicerLib.adaptation import RunMode
from CardiacUDASlicerLib.jobrunner import WorkerProcess, worker_interpreter

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
    """Fetch one model in a background process: ``start()``, then ``poll()`` on a timer and read
    ``done``/``total`` and ``outcome`` (None while it runs); ``cancel()`` or ``kill()`` it; ``wait()``
    blocks (scripts, tests). Its job and output files live in a temporary folder, removed once it has ended."""

    DOWNLOAD_MODULE = "CardiacUDALib.download"

    def __init__(self, entry: ModelEntry, cache: Path | None = None, timeout: float = 30.0) -> None:
        self.entry = entry
        self.cache = cache
        self.timeout = timeout
        self.done = 0
        self.total = entry.size_bytes
        self.outcome: DownloadOutcome | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="cardiac-uda-download-"))
        job_file = self.folder / "download.json"
        self.process = WorkerProcess(
            [worker_interpreter(), "-m", self.DOWNLOAD_MODULE, str(job_file)],
            self.folder / "download",
            self.folder / STOP_FILE_NAME,
        )
        self._job_file = job_file

    def start(self) -> None:
        write_json_atomic(self._job_file, download_job(self.entry, self.cache, self.timeout))
        self.process.start()

    def cancel(self) -> None:
        """Ask the download to stop after the chunk it is reading (at most ``timeout`` on a stalled server)."""
        self.process.request_stop()

    def kill(self) -> None:
        """Stop it now (the module is closing); its partial file stays for the next download to resume."""
        self.process.kill()

    def poll(self) -> DownloadOutcome | None:
        """Take the events written since the last call (never waits); the outcome once it has ended."""
        for event in self.process.poll():
            if event.get("event") == "progress":
                self.done, self.total = int(event["step"]), int(event["total"])
        ended = self.process.outcome()
        if ended is not None and self.outcome is None:
            path = (ended.result or {}).get("path")
            self.outcome = (
                DownloadOutcome(path=Path(path))
                if ended.error is None and path
                else DownloadOutcome(error=ended.error, cancelled=ended.stopped)
            )
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.outcome

    def wait(self, timeout: float | None = None, interval_s: float = 0.05) -> DownloadOutcome | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(interval_s)
        return self.outcome
