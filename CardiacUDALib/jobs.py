"""Jobs: one typed description per kind of work, the only thing that carries settings (DESIGN.md §2.2).

The panel, the batch script, the CLI, the benchmark and the demo build these objects; the worker reads
them from a JSON file with :func:`parse_job`; :func:`CardiacUDALib.engine.run_job` runs them. In JSON a
job is an object with a ``task`` (``train``, ``segment``, ``translate``, ``evaluate``) and the fields
of its class below: paths as strings, cases as ``{"name", "image", "label"}`` objects
(:meth:`VolumeCase.to_dict`), a label map as an object or a name (``"mscmrseg"``).

Torch-free: the Slicer process writes jobs without importing torch (a test checks it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from CardiacUDALib.cases import VolumeCase, cases_from_dicts
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LabelMap, parse_label_map
from CardiacUDALib.preprocess import MEDIAN_SOURCE_SPACING, PreprocessConfig
from CardiacUDALib.typed_values import REQUIRED, check_known_fields, checked_field, field_types

TASK_KEY = "task"
MAX_SEED = 2**32 - 1


class _JobFields:
    """What every job type shares: its JSON object."""

    task: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The job's JSON object (``task`` first), which :func:`parse_job` reads back to an equal job."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return {TASK_KEY: self.task, **{item.name: _to_json(getattr(self, item.name)) for item in fields}}


@dataclass
class TrainJob(_JobFields):
    """Train ``method`` (resuming ``out_dir`` if it holds a run), then segment / translate with its model."""

    task: ClassVar[str] = "train"
    method: str
    out_dir: Path
    source: list[VolumeCase] = field(default_factory=list)
    target: list[VolumeCase] = field(default_factory=list)
    validation: list[VolumeCase] = field(default_factory=list)  # labelled: checkpoint selection
    label_map: LabelMap | None = None  # None: the starting checkpoint's
    preprocess: PreprocessConfig = field(
        default_factory=lambda: PreprocessConfig(in_plane_spacing=MEDIAN_SOURCE_SPACING)
    )  # what a new model is trained at; one started from a checkpoint keeps the checkpoint's
    preset: str = "paper"
    overrides: dict[str, Any] = field(default_factory=dict)  # method settings, as the CLI's --set
    device: str = "auto"
    seed: int = 0
    resume: bool = True
    initial_checkpoint: Path | None = None  # start from these weights (a trained source model, say)
    stages: list[str] = field(default_factory=list)  # post-training stages beyond the method's own
    segment: list[VolumeCase] = field(default_factory=list)  # segmented with the selected checkpoint
    largest_component: bool = True  # post-processing of those segmentations, as in SegmentJob
    flip_averaging: bool = True
    empty_without_heart: bool = True
    translate: list[VolumeCase] = field(default_factory=list)  # translated, by methods with a generator

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:  # what numpy's and torch's generators take
            raise InputDataError(f"the seed must be a whole number from 0 to {MAX_SEED}, got {self.seed}")


@dataclass
class _CheckpointJob(_JobFields):
    """What the jobs that apply a trained checkpoint to volumes share."""

    checkpoint: Path
    cases: list[VolumeCase]
    out_dir: Path
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast where the device computes it natively (device.bfloat16_autocast)


@dataclass
class SegmentJob(_CheckpointJob):
    """Segment ``cases`` with a trained checkpoint into ``out_dir/<case>_seg<ext>``."""

    task: ClassVar[str] = "segment"
    largest_component: bool = True  # keep each structure's largest 3D connected component
    # average the probabilities over test-time flips; on by default, chosen on MS-CMRSeg LGE 1-5
    # (benchmarks/RESULTS.md, post-processing)
    flip_averaging: bool = True
    # labels that are not a heart (inference.missing_heart) are dropped, with a warning
    empty_without_heart: bool = True


@dataclass
class TranslateJob(_CheckpointJob):
    """Translate ``cases`` with a trained checkpoint's generator into ``out_dir/<case>_translated<ext>``."""

    task: ClassVar[str] = "translate"


@dataclass
class EvaluateJob(_JobFields):
    """Score ``predictions`` against the labels of ``references`` (same order) into ``out_dir``."""

    task: ClassVar[str] = "evaluate"
    predictions: list[Path]
    references: list[VolumeCase]
    label_map: LabelMap
    out_dir: Path


Job = TrainJob | SegmentJob | TranslateJob | EvaluateJob
JOB_TYPES: dict[str, type[Job]] = {
    kind.task: kind for kind in (TrainJob, SegmentJob, TranslateJob, EvaluateJob)
}


def label_map_from_json(value: dict[str, Any] | str) -> LabelMap:
    return LabelMap.from_dict(value) if isinstance(value, dict) else parse_label_map(value)


# How each field type is written to JSON: (the JSON form's annotation, JSON -> value given what it is).
_JSON_FORMS: dict[Any, tuple[Any, Any]] = {
    Path: (str, lambda value, what: Path(value)),
    Path | None: (str | None, lambda value, what: None if value is None else Path(value)),
    list[Path]: (list[str], lambda value, what: [Path(item) for item in value]),
    list[VolumeCase]: (list, cases_from_dicts),
    LabelMap: (dict | str, lambda value, what: label_map_from_json(value)),
    LabelMap | None: (
        dict | str | None,
        lambda value, what: None if value is None else label_map_from_json(value),
    ),
    PreprocessConfig: (dict, lambda value, what: PreprocessConfig.from_dict(value)),
}


def _to_json(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (VolumeCase, LabelMap, PreprocessConfig)):
        return value.to_dict()
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return dict(value)
    return value


def parse_job(data: Any) -> Job:
    """The job a JSON object describes; unknown tasks and unknown, missing or mistyped fields are refused by name."""
    if not isinstance(data, dict):
        raise InputDataError(
            f"a job must be a JSON object with a {TASK_KEY!r}, not {type(data).__name__} {data!r:.80}"
        )
    kind = JOB_TYPES.get(data.get(TASK_KEY))
    if kind is None:
        raise InputDataError(f"unknown job task {data.get(TASK_KEY)!r}; one of {', '.join(JOB_TYPES)}")
    what = f"the {kind.task} job"
    types = field_types(kind)
    check_known_fields(data, {TASK_KEY, *types}, what)
    values = {}
    for item in dataclasses.fields(kind):
        default = REQUIRED
        if item.default is not dataclasses.MISSING:
            default = _to_json(item.default)
        elif item.default_factory is not dataclasses.MISSING:
            default = _to_json(item.default_factory())
        json_form, convert = _JSON_FORMS.get(types[item.name], (types[item.name], None))
        value = checked_field(data, item.name, json_form, what, default)
        values[item.name] = value if convert is None else convert(value, f"{what}'s {item.name!r}")
    return kind(**values)
