"""The job types: one per kind of work, JSON round trips, and refusals that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LABEL_MAPS
from CardiacUDALib.jobs import EvaluateJob, SegmentJob, TrainJob, TranslateJob, parse_job
from CardiacUDALib.preprocess import MEDIAN_SOURCE_SPACING, PreprocessConfig

SOURCE = VolumeCase("p1_C0", Path("data/p1_C0.nii.gz"), Path("data/p1_C0_manual.nii.gz"))
TARGET = VolumeCase("p1_LGE", Path("data/p1_LGE.nii.gz"))

JOBS = [
    TrainJob(
        "adabn",
        Path("runs/a"),
        source=[SOURCE],
        target=[TARGET],
        validation=[SOURCE],
        label_map=LABEL_MAPS["mscmrseg"],
        preprocess=PreprocessConfig(size=64, intensity="minmax"),
        preset="fast",
        overrides={"iterations": 3, "learning_rate": 1e-3},
        device="cpu",
        seed=7,
        resume=False,
        initial_checkpoint=Path("runs/s/checkpoints/best.pt"),
        stages=["adabn"],
        segment=[TARGET],
        translate=[VolumeCase(SOURCE.name, SOURCE.image)],
    ),
    SegmentJob(Path("best.pt"), [TARGET], Path("out"), "cuda:1", largest_component=False),
    TranslateJob(Path("best.pt"), [TARGET], Path("out")),
    EvaluateJob([Path("out/p1_LGE_seg.nii.gz")], [SOURCE], LABEL_MAPS["mmwhs"], Path("scores")),
]


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.task)
def test_every_job_survives_a_trip_through_a_json_file(job):
    written = json.dumps(job.to_dict())
    assert json.loads(written)["task"] == job.task
    assert parse_job(json.loads(written)) == job


def test_omitted_fields_take_the_defaults_and_a_label_map_may_be_a_name():
    job = parse_job({"task": "train", "method": "source_only", "out_dir": "o", "label_map": "mscmrseg"})
    assert job == TrainJob("source_only", Path("o"), label_map=LABEL_MAPS["mscmrseg"])
    assert job.preprocess == PreprocessConfig(in_plane_spacing=MEDIAN_SOURCE_SPACING)  # resolved in training
    assert job.stages == [] and job.resume is True


@pytest.mark.parametrize(
    "data, message",
    [
        ([1, 2], "a job must be a JSON object with a 'task', not list"),
        ({"task": "dance"}, "unknown job task 'dance'; one of train, segment, translate, evaluate"),
        ({"method": "x"}, "unknown job task None"),
        ({"task": "train", "out_dir": "o"}, "the train job has no 'method'"),
        (
            {"task": "train", "method": "x", "out_dir": "o", "colour": 1},
            "the train job has unknown field(s) colour",
        ),
        (
            {"task": "train", "method": "x", "out_dir": "o", "stages": "adabn"},
            "'stages' must be a list of a string",
        ),
        (
            {"task": "train", "method": "x", "out_dir": "o", "seed": 1.5},
            "the train job's 'seed' must be an integer",
        ),
        ({"task": "train", "method": "x", "out_dir": "o", "preprocess": {"size": "big"}}, "size"),
        (
            {"task": "segment", "checkpoint": "c", "cases": [], "out_dir": "o", "largest_component": "no"},
            "the segment job's 'largest_component' must be true or false, not the string 'no'",
        ),
        (
            {"task": "translate", "checkpoint": None, "cases": [], "out_dir": "o"},
            "'checkpoint' must be a string",
        ),
        ({"task": "evaluate", "predictions": ["a"], "references": [], "out_dir": "o"}, "has no 'label_map'"),
        (
            {
                "task": "evaluate",
                "predictions": [3],
                "references": [],
                "label_map": "mscmrseg",
                "out_dir": "o",
            },
            "the evaluate job's 'predictions' must be a list of a string",
        ),
        (
            {
                "task": "evaluate",
                "predictions": [],
                "references": [],
                "label_map": "unknown_map",
                "out_dir": "o",
            },
            "unknown_map",
        ),
    ],
)
def test_a_bad_job_is_refused_with_a_message_naming_the_field(data, message):
    with pytest.raises(InputDataError) as raised:
        parse_job(data)
    assert message in str(raised.value)
