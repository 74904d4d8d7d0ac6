"""The job runner: events without blocking, graceful cancel with a checkpoint, no orphan process, resume."""

from __future__ import annotations

from slicer_fixtures import mrml_fixture  # noqa: F401  (the mrml fixture; puts CardiacUDA/ on sys.path)

# isort: split
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CardiacUDASlicerLib.adaptation import (
    WORK_DIR,
    AdaptationInputs,
    AdaptationRun,
    RunMode,
    import_results,
    prepare_run,
)
from CardiacUDASlicerLib.execution import RunExecution
from CardiacUDASlicerLib.jobrunner import STOP_FILE_NAME, WorkerJob, seconds_per_step
from CardiacUDASlicerLib.segmentations import load_segmentation_file
from CardiacUDASlicerLib.sources import SourcePair
from CardiacUDASlicerLib.volumes import crop_image_to_roi, load_volume_file
from test_whole_scans import placed_in_a_larger_field_of_view

from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.io import read_image, write_image
from CardiacUDALib.jobs import TrainJob, TranslateJob
from CardiacUDALib.preprocess import PreprocessConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find orphans")
TIMEOUT_S = 120


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def poll_until(job, condition, timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Poll without blocking, as the panel's timer does, until ``condition(events so far)``."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while not condition(events):
        assert time.monotonic() < deadline, f"timed out; events so far: {events[-5:]}"
        events += job.poll()
        time.sleep(0.05)
    return events


def test_the_job_runner_loads_without_torch():
    """The module panel imports the runner at startup: the worker protocol's names must not pull in torch."""
    probe = "import sys, CardiacUDASlicerLib.jobrunner; print('torch' in sys.modules)"
    module_dir = Path(__file__).resolve().parents[1] / "CardiacUDA"
    output = subprocess.run(
        [sys.executable, "-c", probe], cwd=module_dir, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "False"


def test_seconds_per_step_comes_from_training_progress_only():
    assert (
        seconds_per_step(
            {"event": "progress", "step": 10, "total": 110, "losses": {"loss": 1.0}, "eta_s": 50.0}
        )
        == 0.5
    )
    assert (
        seconds_per_step(
            {"event": "progress", "step": 1, "total": 2, "losses": {}, "eta_s": None, "case": "x"}
        )
        is None
    )


def test_cancel_keeps_a_checkpoint_leaves_no_process_and_the_run_resumes(mrml, tiny_phantom, tmp_path):
    source = load_volume_file(mrml.scene, tiny_phantom.source[0].image, "bSSFP")
    labels = load_segmentation_file(tiny_phantom.source[0].label, source, mrml.segmentations_logic)
    target = load_volume_file(mrml.scene, tiny_phantom.target[0].image, "LGE")
    job = TrainJob(
        "source_only",
        WORK_DIR,
        preset="fast",
        preprocess=PreprocessConfig(size=64),
        overrides={"iterations": 100, "batch_size": 2, "validate_every": 1000, "checkpoint_every": 1000},
    )
    run = prepare_run(
        AdaptationInputs([SourcePair(source, labels)], [target]),
        job,
        RunMode.TRAIN,
        tmp_path / "run",
        mrml.segmentations_logic,
    )
    execution = RunExecution(run)
    execution.start()
    worker_pid = execution.current.process.pid
    poll_until(execution, lambda events: any(e["event"] == "progress" and e["step"] >= 2 for e in events))
    execution.request_stop()
    events: list[dict] = []
    outcome = execution.wait(events.append)
    assert outcome.stopped and outcome.error is None and not outcome.killed and outcome.exit_code == 0
    stopped_step = next(e["step"] for e in events if e["event"] == "stopped")
    assert load_checkpoint(run.job.out_dir / "checkpoints" / "last.pt").step == stopped_step >= 2
    assert not process_alive(worker_pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(worker_pid, 0)  # nothing is left in the worker's process group

    reloaded = AdaptationRun.load(run.root)
    reloaded.job.overrides["iterations"] = stopped_step + 1  # finish quickly
    reloaded.save()
    resumed = RunExecution(reloaded)
    resumed.start()
    events = []
    outcome = resumed.wait(events.append)
    assert outcome.error is None and not outcome.stopped
    training_steps = [e["step"] for e in events if e["event"] == "progress" and "case" not in e]
    assert training_steps == [stopped_step + 1]
    imported = import_results(reloaded, mrml.scene, mrml.segmentations_logic, {"LGE": target})
    assert imported.segmentations["LGE"].GetSegmentation().GetNumberOfSegments() == 3


STUBBORN_WORKER = textwrap.dedent(
    """
    import json, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(json.dumps({"event": "status", "message": str(child.pid)}), flush=True)
    print("a line that is not JSON", flush=True)
    time.sleep(600)
    """
)


def test_a_worker_that_ignores_the_stop_is_killed_with_its_children(tmp_path):
    job = WorkerJob(
        TranslateJob(Path("x.pt"), [], tmp_path),
        tmp_path / "job.json",
        [sys.executable, "-c", STUBBORN_WORKER],
        stop_grace_s=0.5,
    )
    job.start()
    events = poll_until(job, lambda events: len(events) >= 2)
    assert events[1] == {"event": "log", "message": "a line that is not JSON"}
    grandchild = int(events[0]["message"])
    assert process_alive(grandchild)
    job.request_stop()
    assert (tmp_path / STOP_FILE_NAME).exists()
    poll_until(job, lambda events: job.outcome() is not None)
    outcome = job.outcome()
    assert outcome.killed and outcome.stopped and "killed" in outcome.error
    deadline = time.monotonic() + 10
    while process_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(grandchild)


SPLIT_LINE_WORKER = textwrap.dedent(
    """
    import sys, time
    sys.stdout.write('{"event": "status", "message": "one"}\\n{"event": "sta')
    sys.stdout.flush()
    time.sleep(0.5)
    sys.stdout.write('tus", "message": "two"}')
    sys.stderr.write("a warning\\n")
    """
)


def test_events_come_whole_from_the_output_files_which_stay_as_the_jobs_log(tmp_path):
    """No reader thread (Slicer's main thread holds the GIL between timer ticks): poll reads the output
    files; a line half written is kept for the next poll, and a last line without newline still counts."""
    job = WorkerJob(
        TranslateJob(Path("x.pt"), [], tmp_path),
        tmp_path / "job.json",
        [sys.executable, "-c", SPLIT_LINE_WORKER],
    )
    job.start()
    events = poll_until(job, lambda events: job.outcome() is not None)
    assert events[0] == {"event": "status", "message": "one"}
    assert sorted(events[1:], key=str) == [
        {"event": "log", "message": "a warning"},
        {"event": "status", "message": "two"},
    ]
    assert job.poll() == []
    out, err = job.output_files
    assert (out, err) == (tmp_path / "job.out", tmp_path / "job.err") and err.read_text() == "a warning\n"
    again = WorkerJob(job.job, job.job_file, job.command)  # the same job once more, as a resume does
    again.start()
    assert len(poll_until(again, lambda events: again.outcome() is not None)) == 3  # its own events only
    assert err.read_text() == "a warning\n" * 2  # the first attempt's log stays


def test_segmenting_a_wide_field_of_view_shows_the_region_the_heart_was_found_in(
    mrml, tiny_model, tiny_phantom, tmp_path
):
    """The panel's segment run on a target three times as wide as the model's window: the window the heart
    was found in comes back as an ROI node beside the segmentation, on the grid of its labels."""
    image = read_image(tiny_phantom.target[0].image)
    wide_file = write_image(placed_in_a_larger_field_of_view(image, 3, (100, 20)), tmp_path / "wide.nii.gz")
    target = load_volume_file(mrml.scene, wide_file, "LGE")
    job = TrainJob(  # the tiny model's labels are no heart by the ring rule: kept, they show where it looked
        "source_only",
        WORK_DIR,
        initial_checkpoint=tiny_model,
        preprocess=PreprocessConfig(size=64),
        empty_without_heart=False,
    )
    run = prepare_run(
        AdaptationInputs([], [target]), job, RunMode.SEGMENT, tmp_path / "run", mrml.segmentations_logic
    )
    execution = RunExecution(run)
    execution.start()
    outcome = execution.wait(lambda event: None)
    assert outcome.error is None, outcome.error
    run = AdaptationRun.load(run.root)
    imported = import_results(run, mrml.scene, mrml.segmentations_logic, {"LGE": target})
    region = imported.heart_regions["LGE"]
    assert region.GetName() == "LGE heart region (source_only)"
    segmented = sitk.ReadImage(run.results["segmentations"][0])
    inside = crop_image_to_roi(segmented, region, "the segmentation")
    assert inside.GetSize()[:2] == (64, 64)
    assert (
        0
        < np.count_nonzero(sitk.GetArrayViewFromImage(inside))
        == np.count_nonzero(sitk.GetArrayViewFromImage(segmented))
    )
