"""One method on one split: a ``train`` job that also segments the test volumes, then their scores.

The job trains (the same path as the worker and the Slicer module), segments every test volume with
the checkpoint chosen on the labelled validation set, and the segmentations are scored per volume in
3D. Test labels are read only after the checkpoint is chosen; test and target images never carry their
labels into the job.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from CardiacUDALib.benchmark.splits import without_labels
from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.engine import run_job
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.evaluation import evaluate_cases
from CardiacUDALib.events import Event, EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.metrics import EvaluationTable, _nan_to_none
from CardiacUDALib.runfolder import RunFolder


class RunStopped(CardiacUDAError):
    """Training was asked to stop; ``last.pt`` is saved and the same command resumes it."""


class _EventTimer:
    """Passes events on and notes when training ended and how fast the progress steps went."""

    def __init__(self, emit: EventSink) -> None:
        self.emit = emit
        self.started = time.monotonic()
        self.trained_at: float | None = None
        self.progress: list[tuple[float, int]] = []

    def __call__(self, event: Event) -> None:
        if event.get("event") == "progress" and self.trained_at is None:
            self.progress.append((time.monotonic(), int(event["step"])))
        if event.get("event") == "trained":
            self.trained_at = time.monotonic()
        self.emit(event)

    def steps_per_second(self) -> float | None:
        """Between the first and last progress event of this invocation (validation time included)."""
        if len(self.progress) < 2:
            return None
        (first_time, first_step), (last_time, last_step) = self.progress[0], self.progress[-1]
        return (last_step - first_step) / max(last_time - first_time, 1e-9)


@dataclass
class MethodRun:
    """What one method produced on a split: its checkpoint, timings and per-volume scores per test set."""

    key: str
    run_dir: Path
    train_result: dict[str, Any]
    history: dict[str, Any]
    train_wall_s: float
    steps_per_s: float | None
    inference_s_per_volume: float
    segmentations: dict[str, list[Path]] = field(default_factory=dict)
    tables: dict[str, EvaluationTable] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The method's entry of ``summary.json`` (NaN written as null)."""
        scores = {name: table.summary() for name, table in self.tables.items()}
        first = next(iter(scores.values()))
        return _nan_to_none(
            {
                "mean_dice": first["mean"]["dice"],
                "structures": first["structures"],
                "test_sets": scores,
                "wall_s": round(self.train_wall_s, 1),
                "training_steps_per_s": self.steps_per_s,
                "inference_s_per_volume": round(self.inference_s_per_volume, 3),
                "steps": self.train_result["steps"],
                "checkpoint": self.train_result["best_checkpoint"],
                "selection": self.train_result["selection"],
            }
        )


def _read_history(path: Path) -> dict[str, Any]:
    """The run's losses and validation scores; a run with no training step (AdaBN alone) has none."""
    if not path.exists():
        return {"losses": [], "validation": []}
    return json.loads(path.read_text(encoding="utf-8"))


def run_method(
    job: TrainJob,
    test_sets: Mapping[str, list[VolumeCase]],
    emit: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> MethodRun:
    """Run ``job`` (resuming its run folder if it holds a run), segment and score every test set.

    The job segments the test images (labels stripped) with the chosen checkpoint; the test labels are
    read only afterwards, by the evaluation.
    """
    if job.label_map is None:
        raise CardiacUDAError("a benchmark run needs the data set's label map in its job")
    test_cases = [case for cases in test_sets.values() for case in cases]
    job = dataclasses.replace(job, segment=without_labels(test_cases))
    timer = _EventTimer(emit)
    result = run_job(job, timer, should_stop)
    if (
        result["stopped"] or timer.trained_at is None or should_stop()
    ):  # a stop may also cut segmentation short
        raise RunStopped(
            f"training of {job.method!r} stopped at step {result['steps']} ({result['last_checkpoint']})"
        )
    finished = time.monotonic()
    run = MethodRun(
        key=job.method,
        run_dir=job.out_dir,
        train_result=result,
        history=_read_history(RunFolder(job.out_dir).history),
        train_wall_s=timer.trained_at - timer.started,
        steps_per_s=timer.steps_per_second(),
        inference_s_per_volume=(finished - timer.trained_at) / max(len(test_cases), 1),
    )
    paths = iter(Path(p) for p in result["segmentations"])
    for name, cases in test_sets.items():
        run.segmentations[name] = [next(paths) for _ in cases]
        run.tables[name] = evaluate_cases(run.segmentations[name], cases, job.label_map)
        run.tables[name].write_csv(job.out_dir / f"per_volume_{name}.csv")
        run.tables[name].write_json(job.out_dir / f"per_volume_{name}.json")
    return run
