"""The worker process: JSON events on stdout, stop file / SIGTERM -> checkpoint and clean exit, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_request

from CardiacUDALib.checkpoint import load_checkpoint


def write_job(path: Path, job: dict) -> Path:
    path.write_text(json.dumps(job))
    return path


def start_worker(job_file: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "CardiacUDALib.worker", str(job_file)], stdout=subprocess.PIPE, text=True
    )


def read_events(process: subprocess.Popen, until=lambda event: False) -> list[dict]:
    """Every stdout line must be one JSON object; stop reading early when ``until`` says so."""
    events = []
    for line in process.stdout:
        events.append(json.loads(line))
        if until(events[-1]):
            break
    return events


def train_job(tiny_phantom, label_map, out_dir: Path, iterations: int) -> dict:
    request = tiny_request(tiny_phantom, label_map, out_dir)
    request.overrides = {
        "iterations": iterations,
        "validate_every": 1000,
        "checkpoint_every": 1000,
        "batch_size": 2,
    }
    return {
        "task": "train",
        **request.to_dict(),
        "segment": [{"name": "t0", "image": str(tiny_phantom.target[0].image)}],
    }


@pytest.mark.parametrize("how", ["stop_file", "sigterm"])
def test_cancel_saves_a_checkpoint_exits_cleanly_and_the_run_resumes(tiny_phantom, label_map, tmp_path, how):
    out_dir = tmp_path / "run"
    job_file = write_job(
        tmp_path / "job.json", train_job(tiny_phantom, label_map, out_dir, iterations=10_000)
    )
    worker = start_worker(job_file)
    read_events(worker, until=lambda event: event["event"] == "progress" and event["step"] >= 50)
    if how == "stop_file":
        (out_dir / "STOP").touch()
    else:
        worker.send_signal(signal.SIGTERM)
    rest = read_events(worker)
    assert worker.wait(timeout=60) == 0
    stopped = next(event for event in rest if event["event"] == "stopped")
    assert rest[-1] == {"event": "done", "stopped": True}
    assert load_checkpoint(out_dir / "checkpoints" / "last.pt").step == stopped["step"] >= 50

    # the same job, extended to two more steps, resumes where it stopped and finishes the whole job
    job = train_job(tiny_phantom, label_map, out_dir, iterations=stopped["step"] + 2)
    resumed = start_worker(write_job(tmp_path / "job2.json", job))
    events = read_events(resumed)
    assert resumed.wait(timeout=60) == 0
    progress_steps = [
        event["step"] for event in events if event["event"] == "progress" and "case" not in event
    ]
    assert progress_steps[0] == stopped["step"] + 1 and progress_steps[-1] == stopped["step"] + 2
    result = next(event for event in events if event["event"] == "result")
    assert result["stopped"] is False and Path(result["segmentations"][0]).exists()
    assert events[-1] == {"event": "done", "stopped": False}


def test_bad_job_gives_an_error_event_and_exit_code_1(tiny_phantom, label_map, tmp_path):
    job = train_job(tiny_phantom, label_map, tmp_path / "run", iterations=2)
    job["source"] = [
        {"name": "x", "image": str(tmp_path / "missing.nii.gz"), "label": str(tmp_path / "m.nii.gz")}
    ]
    worker = start_worker(write_job(tmp_path / "job.json", job))
    events = read_events(worker)
    assert worker.wait(timeout=60) == 1
    assert events[-2]["event"] == "error" and "missing.nii.gz" in events[-2]["message"]
    assert events[-1] == {"event": "done", "stopped": False}


def test_unreadable_job_file_and_unknown_task(tmp_path):
    worker = start_worker(tmp_path / "nope.json")
    assert read_events(worker)[-2]["event"] == "error" and worker.wait(timeout=60) == 1
    worker = start_worker(write_job(tmp_path / "job.json", {"task": "dance"}))
    events = read_events(worker)
    assert worker.wait(timeout=60) == 1 and "unknown job task" in events[-2]["message"]


def test_sigkill_during_training_leaves_whole_files_and_the_run_resumes_from_the_last_checkpoint(
    tiny_phantom, label_map, tmp_path
):
    """SIGKILL runs no handler: only atomic writes keep ``last.pt`` and ``history.json`` whole."""
    out_dir = tmp_path / "run"
    job = train_job(tiny_phantom, label_map, out_dir, iterations=10_000)
    job["overrides"]["checkpoint_every"] = 1  # a save at every step: the kill most likely lands in one
    worker = start_worker(write_job(tmp_path / "job.json", job))
    read_events(worker, until=lambda event: event["event"] == "checkpoint" and event["step"] >= 5)
    worker.kill()
    worker.wait(timeout=60)
    checkpoints = out_dir / "checkpoints"
    killed_at = load_checkpoint(checkpoints / "last.pt").step  # loads, and its digest matches
    assert killed_at >= 5
    assert set(json.loads((out_dir / "history.json").read_text())) == {"losses", "validation"}
    leftover = checkpoints / ".last.pt.k1ll3d.tmp.pt"  # what a kill in the middle of a save leaves
    leftover.write_bytes(b"PK\x03\x04 half a checkpoint")

    job = train_job(tiny_phantom, label_map, out_dir, iterations=killed_at + 2)
    resumed = start_worker(write_job(tmp_path / "job2.json", job))
    events = read_events(resumed)
    assert resumed.wait(timeout=60) == 0
    steps = [event["step"] for event in events if event["event"] == "progress" and "case" not in event]
    assert steps[0] == killed_at + 1 and steps[-1] == killed_at + 2
    assert sorted(path.name for path in checkpoints.iterdir()) == ["best.pt", "last.pt"]  # leftovers removed
    assert load_checkpoint(checkpoints / "last.pt").step == killed_at + 2


def test_an_evaluate_job_scores_each_prediction_against_the_case_it_is_named_after(
    tiny_phantom, label_map, tmp_path
):
    """Perfect predictions listed in another order than their references scored MYO 0.0 (paired by
    position); each is scored against its own case now, as the CLI does."""
    import shutil

    cases = tiny_phantom.target[:2]
    predictions = []
    for case in cases:
        predictions.append(tmp_path / f"{case.name}_seg.nii.gz")
        shutil.copy(case.label, predictions[-1])
    job = {
        "task": "evaluate",
        "predictions": [str(path) for path in reversed(predictions)],
        "references": [case.to_dict() for case in cases],
        "label_map": label_map.to_dict(),
        "out_dir": str(tmp_path / "scores"),
    }
    events = read_events(start_worker(write_job(tmp_path / "evaluate.json", job)))
    result = next(event for event in events if event["event"] == "result")
    assert result["summary"]["mean"]["dice"] == 1.0
    rows = json.loads(Path(result["json"]).read_text())
    assert [row["case"] for row in rows["per_case"]] == [case.name for case in cases]
