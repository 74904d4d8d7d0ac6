"""Runs a run's jobs one after the other: the main job, then the evaluation when references were given.

The same object serves the panel (``poll`` on a timer, never blocking) and the batch script and tests
(``wait``). A failed or stopped job ends the chain; its outcome says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from CardiacUDALib.jobs import Job
from CardiacUDASlicerLib.adaptation import AdaptationRun
from CardiacUDASlicerLib.jobrunner import DEFAULT_STOP_GRACE_S, Event, JobOutcome, WorkerJob


class RunExecution:
    """See the module docstring; ``worker_command`` replaces the worker's command line (tests)."""

    def __init__(
        self,
        run: AdaptationRun,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        worker_command: Callable[[Path], list[str]] | None = None,
    ) -> None:
        self.run = run
        self.stop_grace_s = stop_grace_s
        self.worker_command = worker_command
        self.current: WorkerJob | None = None
        self.outcome: JobOutcome | None = None
        self.stop_requested = False

    def _start(self, job: Job, job_file: Path) -> None:
        command = None if self.worker_command is None else self.worker_command(job_file)
        self.current = WorkerJob(job, job_file, command, self.stop_grace_s)
        self.current.start()

    def start(self) -> None:
        self._start(self.run.job, self.run.main_job_file)

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def poll(self) -> list[Event]:
        """New events of the running job; starts the evaluation once the main job succeeded."""
        if self.current is None or self.finished:
            return []
        events = self.current.poll()
        ended = self.current.outcome()
        if ended is None:
            return events
        if ended.result is not None:
            self.run.record(ended.result)
        evaluation = None
        if ended.error is None and not ended.stopped and self.current.job_file == self.run.main_job_file:
            evaluation = self.run.evaluation_job(self.run.results.get("segmentations", []))
        if evaluation is None or self.stop_requested:
            self.outcome = ended
        else:
            events.append({"event": "status", "message": "scoring the segmentations against the references"})
            self._start(evaluation, self.run.evaluate_job_file)
        return events

    def request_stop(self) -> None:
        """Graceful cancel: the running job saves its checkpoint and stops; nothing after it starts."""
        self.stop_requested = True
        if self.current is not None:
            self.current.request_stop()

    def kill(self) -> None:
        self.stop_requested = True
        if self.current is not None:
            self.current.kill()

    def wait(
        self, on_event: Callable[[Event], None] = lambda event: None, interval_s: float = 0.1
    ) -> JobOutcome:
        """Blocking mode: pass every event to ``on_event`` until the last job has ended."""
        while True:
            for event in self.poll():
                on_event(event)
            if self.outcome is not None:
                return self.outcome
            time.sleep(interval_s)
