"""The engine: :func:`run_job` runs any job (:mod:`CardiacUDALib.jobs`) the same way for every front end.

It dispatches on the job's type to training (:mod:`~CardiacUDALib.training`), inference
(:mod:`~CardiacUDALib.inference`) and evaluation (:mod:`~CardiacUDALib.evaluation`), reports progress
through events and returns the ``result`` dictionary (output paths). It names no method: methods are
reached through the registry, post-training steps through the stages a method or a job names.
"""

from __future__ import annotations

from typing import Any

from CardiacUDALib import distributed
from CardiacUDALib.atomic import check_writable_folder
from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.evaluation import evaluate_cases
from CardiacUDALib.events import EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.inference import TrainedModel, segment_cases, translate_cases
from CardiacUDALib.io import check_readable
from CardiacUDALib.jobs import EvaluateJob, Job, SegmentJob, TrainJob, TranslateJob, parse_job
from CardiacUDALib.training import train


def _run_train(job: TrainJob, emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    if job.label_map is not None:  # the volumes to segment at the end, checked before any training
        check_readable([VolumeCase(case.name, case.image) for case in job.segment], job.label_map)
    outcome = train(job, emit, should_stop)
    result: dict[str, Any] = {
        # a run stopped before its first checkpoint has none; one without training steps has no last
        "best_checkpoint": str(outcome.best_checkpoint) if outcome.best_checkpoint.exists() else None,
        "last_checkpoint": str(outcome.last_checkpoint) if outcome.last_checkpoint.exists() else None,
        "steps": outcome.steps_done,
        "stopped": outcome.stopped,
        "selection": outcome.selection,
    }
    if outcome.stopped or not distributed.this_process().is_main:  # under torchrun rank 0 segments
        return result
    model = TrainedModel.load(outcome.best_checkpoint, job.device)
    if job.segment:
        emit({"event": "status", "message": f"segmenting {len(job.segment)} volume(s)"})
        result["heart_regions"] = {}
        paths = segment_cases(
            model,
            job.segment,
            job.out_dir / "segmentations",
            emit,
            job.largest_component,
            should_stop,
            job.flip_averaging,
            job.empty_without_heart,
            result["heart_regions"],
        )
        result["segmentations"] = [str(p) for p in paths]
        result["stopped"] = len(paths) < len(job.segment)
    if job.translate and model.can_translate and not result["stopped"]:
        emit({"event": "status", "message": f"translating {len(job.translate)} volume(s)"})
        paths = translate_cases(model, job.translate, job.out_dir / "translations", emit, should_stop)
        result["translations"] = [str(p) for p in paths]
        result["stopped"] = len(paths) < len(job.translate)
    return result


def _run_segment(job: SegmentJob, emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    model = TrainedModel.load(job.checkpoint, job.device, amp=job.amp)
    emit({"event": "status", "message": model.precision})
    regions: dict[str, Any] = {}
    paths = segment_cases(
        model,
        job.cases,
        job.out_dir,
        emit,
        job.largest_component,
        should_stop,
        job.flip_averaging,
        job.empty_without_heart,
        regions,
    )
    return {
        "segmentations": [str(p) for p in paths],
        "heart_regions": regions,
        "label_map": model.label_map.to_dict(),
        "stopped": len(paths) < len(job.cases),
    }


def _run_translate(job: TranslateJob, emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    model = TrainedModel.load(job.checkpoint, job.device, amp=job.amp)
    emit({"event": "status", "message": model.precision})
    paths = translate_cases(model, job.cases, job.out_dir, emit, should_stop)
    return {"translations": [str(p) for p in paths], "stopped": len(paths) < len(job.cases)}


def _run_evaluate(job: EvaluateJob, emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    out_dir = check_writable_folder(job.out_dir, "the output folder")
    table = evaluate_cases(job.predictions, job.references, job.label_map)
    return {
        "csv": str(table.write_csv(out_dir / "metrics.csv")),
        "json": str(table.write_json(out_dir / "metrics.json")),
        "summary": table.summary(),
    }


_RUNNERS: dict[type, Any] = {
    TrainJob: _run_train,
    SegmentJob: _run_segment,
    TranslateJob: _run_translate,
    EvaluateJob: _run_evaluate,
}


def run_job(
    job: Job | dict[str, Any], emit: EventSink = ignore_event, should_stop: StopCheck = never_stop
) -> dict[str, Any]:
    """Run one job (or its JSON object); raises :class:`~CardiacUDALib.errors.CardiacUDAError` with a
    user-facing message on bad input."""
    typed = job if type(job) in _RUNNERS else parse_job(job)
    return _RUNNERS[type(typed)](typed, emit, should_stop)
