"""Jobs: the JSON description of one unit of work, run the same way by the CLI, the worker and Slicer.

A job is a dictionary with a ``task`` and its inputs (DESIGN.md §2.2):

* ``train``: the fields of :class:`~CardiacUDALib.engine.TrainRequest`, plus optional
  ``segment`` (cases to segment with the selected checkpoint afterwards) and ``translate`` (cases to
  translate, for methods with a generator);
* ``segment``: ``checkpoint``, ``cases`` (``[{"name", "image"}]``), ``out_dir``, optional ``device``,
  ``largest_component``;
* ``translate``: ``checkpoint``, ``cases``, ``out_dir``, optional ``device``;
* ``evaluate``: ``predictions`` (paths), ``references`` (cases with labels), ``label_map``, ``out_dir``.

:func:`run_job` returns the ``result`` dictionary (output paths) and reports progress through events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.engine import (
    EventSink,
    StopCheck,
    TrainedModel,
    TrainRequest,
    evaluate_cases,
    ignore_event,
    never_stop,
    segment_cases,
    train,
    translate_cases,
)
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LabelMap, parse_label_map

TASKS = ("train", "segment", "translate", "evaluate")


def cases_from_json(items: list[dict[str, Any]], what: str) -> list[VolumeCase]:
    if not isinstance(items, list):
        raise InputDataError(f"'{what}' must be a list of {{'name', 'image', 'label'}} objects")
    cases = []
    for item in items:
        if "image" not in item:
            raise InputDataError(f"an entry of '{what}' has no 'image': {item}")
        image = Path(item["image"])
        label = item.get("label")
        cases.append(
            VolumeCase(
                item.get("name") or image.name.split(".")[0], image, None if label is None else Path(label)
            )
        )
    return cases


def label_map_from_json(value: Any) -> LabelMap:
    if isinstance(value, dict):
        return LabelMap.from_dict(value)
    if isinstance(value, str):
        return parse_label_map(value)
    raise InputDataError(
        "'label_map' must be a name ('mscmrseg', 'mmwhs'), a spec '200:MYO,...' or an object"
    )


def _required(job: dict[str, Any], key: str) -> Any:
    if key not in job:
        raise InputDataError(f"the {job.get('task')!r} job has no {key!r}")
    return job[key]


def _run_train(job: dict[str, Any], emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    fields = {key: value for key, value in job.items() if key not in ("task", "segment", "translate")}
    if isinstance(fields.get("label_map"), str):
        fields["label_map"] = parse_label_map(fields["label_map"]).to_dict()
    request = TrainRequest.from_dict(fields)
    outcome = train(request, emit, should_stop)
    result: dict[str, Any] = {
        "best_checkpoint": str(outcome.best_checkpoint),
        "last_checkpoint": str(outcome.last_checkpoint),
        "steps": outcome.steps_done,
        "stopped": outcome.stopped,
        "selection": outcome.selection,
    }
    if outcome.stopped:
        return result
    model = TrainedModel.load(outcome.best_checkpoint, request.device)
    to_segment = cases_from_json(job.get("segment", []), "segment")
    if to_segment:
        emit({"event": "status", "message": f"segmenting {len(to_segment)} volume(s)"})
        paths = segment_cases(
            model, to_segment, request.out_dir / "segmentations", emit, should_stop=should_stop
        )
        result["segmentations"] = [str(p) for p in paths]
        result["stopped"] = len(paths) < len(to_segment)
    to_translate = cases_from_json(job.get("translate", []), "translate")
    if to_translate and model.can_translate and not result["stopped"]:
        emit({"event": "status", "message": f"translating {len(to_translate)} volume(s)"})
        paths = translate_cases(model, to_translate, request.out_dir / "translations", emit, should_stop)
        result["translations"] = [str(p) for p in paths]
        result["stopped"] = len(paths) < len(to_translate)
    return result


def _run_segment(job: dict[str, Any], emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    model = TrainedModel.load(_required(job, "checkpoint"), job.get("device", "auto"))
    cases = cases_from_json(_required(job, "cases"), "cases")
    paths = segment_cases(
        model, cases, _required(job, "out_dir"), emit, job.get("largest_component", True), should_stop
    )
    return {
        "segmentations": [str(p) for p in paths],
        "label_map": model.label_map.to_dict(),
        "stopped": len(paths) < len(cases),
    }


def _run_translate(job: dict[str, Any], emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    model = TrainedModel.load(_required(job, "checkpoint"), job.get("device", "auto"))
    cases = cases_from_json(_required(job, "cases"), "cases")
    paths = translate_cases(model, cases, _required(job, "out_dir"), emit, should_stop)
    return {"translations": [str(p) for p in paths], "stopped": len(paths) < len(cases)}


def _run_evaluate(job: dict[str, Any], emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    label_map = label_map_from_json(_required(job, "label_map"))
    references = cases_from_json(_required(job, "references"), "references")
    table = evaluate_cases([Path(p) for p in _required(job, "predictions")], references, label_map)
    out_dir = Path(_required(job, "out_dir"))
    return {
        "csv": str(table.write_csv(out_dir / "metrics.csv")),
        "json": str(table.write_json(out_dir / "metrics.json")),
        "summary": table.summary(),
    }


_RUNNERS = {
    "train": _run_train,
    "segment": _run_segment,
    "translate": _run_translate,
    "evaluate": _run_evaluate,
}


def run_job(
    job: dict[str, Any], emit: EventSink = ignore_event, should_stop: StopCheck = never_stop
) -> dict[str, Any]:
    """Run one job; raises :class:`~CardiacUDALib.errors.CardiacUDAError` with a user-facing message on bad input."""
    task = job.get("task")
    if task not in _RUNNERS:
        raise InputDataError(f"unknown job task {task!r}; one of {', '.join(TASKS)}")
    return _RUNNERS[task](job, emit, should_stop)
