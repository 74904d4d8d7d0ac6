"""Jobs: the JSON description of one unit of work, run the same way by the CLI, the worker and Slicer.

A job is a dictionary with a ``task`` and its inputs (DESIGN.md §2.2):

* ``train``: the fields of :class:`~CardiacUDALib.training.TrainRequest`, plus optional
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

from CardiacUDALib.atomic import check_writable_folder
from CardiacUDALib.cases import cases_from_dicts
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.evaluation import evaluate_cases
from CardiacUDALib.events import EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.inference import TrainedModel, segment_cases, translate_cases
from CardiacUDALib.io import LabelMap, parse_label_map
from CardiacUDALib.training import TrainRequest, train
from CardiacUDALib.typed_values import REQUIRED, check_known_fields, checked_field

TASKS = ("train", "segment", "translate", "evaluate")
_FIELDS = {
    "segment": {"task", "checkpoint", "cases", "out_dir", "device", "largest_component"},
    "translate": {"task", "checkpoint", "cases", "out_dir", "device"},
    "evaluate": {"task", "predictions", "references", "label_map", "out_dir"},
}
_TRAIN_EXTRAS = ("segment", "translate")  # the train job's fields beyond those of TrainRequest


def label_map_from_json(value: Any) -> LabelMap:
    if isinstance(value, dict):
        return LabelMap.from_dict(value)
    if isinstance(value, str):
        return parse_label_map(value)
    raise InputDataError(
        "'label_map' must be a name ('mscmrseg', 'mmwhs'), a spec '200:MYO,...' or an object"
    )


def _field(job: dict[str, Any], key: str, annotation: Any, default: Any = REQUIRED) -> Any:
    return checked_field(job, key, annotation, f"the {job['task']} job", default)


def _run_train(job: dict[str, Any], emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    fields = {key: value for key, value in job.items() if key not in ("task", *_TRAIN_EXTRAS)}
    if isinstance(fields.get("label_map"), str):
        fields["label_map"] = parse_label_map(fields["label_map"]).to_dict()
    request = TrainRequest.from_dict(fields)
    to_segment = cases_from_dicts(job.get("segment", []), "the train job's 'segment'")
    to_translate = cases_from_dicts(job.get("translate", []), "the train job's 'translate'")
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
    if to_segment:
        emit({"event": "status", "message": f"segmenting {len(to_segment)} volume(s)"})
        paths = segment_cases(
            model, to_segment, request.out_dir / "segmentations", emit, should_stop=should_stop
        )
        result["segmentations"] = [str(p) for p in paths]
        result["stopped"] = len(paths) < len(to_segment)
    if to_translate and model.can_translate and not result["stopped"]:
        emit({"event": "status", "message": f"translating {len(to_translate)} volume(s)"})
        paths = translate_cases(model, to_translate, request.out_dir / "translations", emit, should_stop)
        result["translations"] = [str(p) for p in paths]
        result["stopped"] = len(paths) < len(to_translate)
    return result


def _run_segment(job: dict[str, Any], emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    check_known_fields(job, _FIELDS["segment"], "the segment job")
    cases = cases_from_dicts(_field(job, "cases", list), "the segment job's 'cases'")
    out_dir = _field(job, "out_dir", str)
    largest_component = _field(job, "largest_component", bool, True)
    model = TrainedModel.load(_field(job, "checkpoint", str), _field(job, "device", str, "auto"))
    paths = segment_cases(model, cases, out_dir, emit, largest_component, should_stop)
    return {
        "segmentations": [str(p) for p in paths],
        "label_map": model.label_map.to_dict(),
        "stopped": len(paths) < len(cases),
    }


def _run_translate(job: dict[str, Any], emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    check_known_fields(job, _FIELDS["translate"], "the translate job")
    cases = cases_from_dicts(_field(job, "cases", list), "the translate job's 'cases'")
    out_dir = _field(job, "out_dir", str)
    model = TrainedModel.load(_field(job, "checkpoint", str), _field(job, "device", str, "auto"))
    paths = translate_cases(model, cases, out_dir, emit, should_stop)
    return {"translations": [str(p) for p in paths], "stopped": len(paths) < len(cases)}


def _run_evaluate(job: dict[str, Any], emit: EventSink, should_stop: StopCheck) -> dict[str, Any]:
    check_known_fields(job, _FIELDS["evaluate"], "the evaluate job")
    label_map = label_map_from_json(_field(job, "label_map", dict | str))
    references = cases_from_dicts(_field(job, "references", list), "the evaluate job's 'references'")
    predictions = [Path(p) for p in _field(job, "predictions", list[str])]
    out_dir = check_writable_folder(_field(job, "out_dir", str), "the output folder")
    table = evaluate_cases(predictions, references, label_map)
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


def run_job(job: Any, emit: EventSink = ignore_event, should_stop: StopCheck = never_stop) -> dict[str, Any]:
    """Run one job; raises :class:`~CardiacUDALib.errors.CardiacUDAError` with a user-facing message on bad input."""
    if not isinstance(job, dict):
        raise InputDataError(
            f"a job must be a JSON object with a 'task', not {type(job).__name__} {job!r:.80}"
        )
    task = job.get("task")
    if task not in _RUNNERS:
        raise InputDataError(f"unknown job task {task!r}; one of {', '.join(TASKS)}")
    return _RUNNERS[task](job, emit, should_stop)
