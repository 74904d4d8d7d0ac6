"""Runs one library job in a worker process and reads its JSON events without blocking.

The worker (``python -m CardiacUDALib.worker JOB.json``) prints one JSON object per line. Two reader
threads move its standard output and error into a queue; :meth:`WorkerJob.poll` drains that queue on
the caller's thread (the GUI's timer, or :meth:`WorkerJob.wait` in batch mode), so only that thread
ever touches MRML.

Cancel is graceful first: the stop file makes a training job save ``last.pt`` and exit 0, so the run can
be resumed. If the worker is still alive ``stop_grace_s`` seconds later, its whole process tree is
killed (inside Slicer the worker runs under the ``PythonSlicer`` launcher, so killing one process would
leave the other running).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import slicer

from CardiacUDALib.atomic import write_json_atomic  # torch-free: safe at module load
from CardiacUDALib.jobs import Job
from CardiacUDALib.runfolder import STOP_FILE_NAME

Event = dict[str, Any]
WORKER_MODULE = "CardiacUDALib.worker"
DEFAULT_STOP_GRACE_S = 60.0
_STREAM_CLOSED = object()


class WorkerUnavailableError(RuntimeError):
    """The worker cannot be started (no ``PythonSlicer`` next to Slicer, library not found)."""


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: ``result`` on success, ``error`` (a message for the user) otherwise."""

    result: dict[str, Any] | None
    error: str | None
    stopped: bool
    exit_code: int | None
    killed: bool


def worker_interpreter() -> str:
    """``PythonSlicer`` inside Slicer (its own executable is the application), the current Python elsewhere."""
    if not hasattr(slicer, "app"):
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found is None:
        raise WorkerUnavailableError("PythonSlicer was not found next to Slicer: reinstall Slicer")
    return found


def _library_parent() -> str:
    """The folder that holds the ``CardiacUDALib`` package, for the worker's ``PYTHONPATH``."""
    spec = importlib.util.find_spec("CardiacUDALib")
    if spec is None or not spec.submodule_search_locations:
        raise WorkerUnavailableError(
            "the CardiacUDALib package is not installed next to the CardiacUDA module"
        )
    return str(Path(list(spec.submodule_search_locations)[0]).parent)


def worker_environment() -> dict[str, str]:
    """Slicer's startup environment (the launcher sets its own paths again) plus the library's folder."""
    environment = dict(slicer.util.startupEnvironment()) if hasattr(slicer, "app") else dict(os.environ)
    paths = [_library_parent(), environment.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill the worker and everything it started (it leads its own process group / is a tree root)."""
    if process.poll() is not None:
        return
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def seconds_per_step(event: Event) -> float | None:
    """The worker's own estimate of seconds per training step, from a progress event with losses."""
    remaining = int(event.get("total", 0)) - int(event.get("step", 0))
    if (
        event.get("event") != "progress"
        or not event.get("losses")
        or event.get("eta_s") is None
        or remaining <= 0
    ):
        return None
    return float(event["eta_s"]) / remaining


class WorkerJob:
    """One job file run by one worker process; see the module docstring."""

    def __init__(
        self,
        job: Job,
        job_file: Path,
        command: list[str] | None = None,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        self.job = job
        self.job_file = Path(job_file)
        self.command = command
        self.stop_grace_s = stop_grace_s
        self.process: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self.kill_deadline: float | None = None
        self.killed = False
        self._open_streams = 0
        self._result: dict[str, Any] | None = None
        self._error: str | None = None
        self._stopped = False

    @property
    def stop_file(self) -> Path:
        return self.job.out_dir / STOP_FILE_NAME

    def start(self) -> None:
        """Write the job file and start the worker; returns at once."""
        write_json_atomic(self.job_file, self.job.to_dict())
        command = self.command or [worker_interpreter(), "-m", WORKER_MODULE, str(self.job_file)]
        platform_options: dict[str, Any] = (
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
            if sys.platform == "win32"
            else {"start_new_session": True}
        )
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=worker_environment(),
            **platform_options,
        )
        self._open_streams = 2
        for stream, parse in (
            (self.process.stdout, self._parse_event),
            (self.process.stderr, self._log_line),
        ):
            threading.Thread(target=self._read, args=(stream, parse), daemon=True).start()

    def _read(self, stream: IO[str], parse: Callable[[str], Event]) -> None:
        for line in stream:
            if line.strip():
                self.events.put(parse(line.rstrip("\n")))
        self.events.put(_STREAM_CLOSED)

    @staticmethod
    def _parse_event(line: str) -> Event:
        """An event line; anything else a library printed is passed on as a log line."""
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return {"event": "log", "message": line}
        return event if isinstance(event, dict) and "event" in event else {"event": "log", "message": line}

    @staticmethod
    def _log_line(line: str) -> Event:
        return {"event": "log", "message": line}

    @property
    def running(self) -> bool:
        """True until the process has exited and both of its output streams are read to the end."""
        return self.process is not None and (self.process.poll() is None or self._open_streams > 0)

    def poll(self) -> list[Event]:
        """Every event that arrived since the last call (never waits); kills the tree once a cancel times out."""
        if self.kill_deadline is not None and time.monotonic() > self.kill_deadline and not self.killed:
            self.kill()
        arrived = []
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return arrived
            if item is _STREAM_CLOSED:
                self._open_streams -= 1
                continue
            self._remember(item)
            arrived.append(item)

    def _remember(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "result":
            self._result = {key: value for key, value in event.items() if key != "event"}
        elif kind == "error":
            self._error = str(event.get("message", "the worker failed"))
        elif kind in ("stopped", "done"):
            self._stopped = self._stopped or kind == "stopped" or bool(event.get("stopped"))

    def request_stop(self) -> None:
        """Ask the worker to save its checkpoint and exit; the tree is killed if it is still alive after the grace."""
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()
        if self.kill_deadline is None:
            self.kill_deadline = time.monotonic() + self.stop_grace_s

    def kill(self) -> None:
        """Kill the worker's whole process tree now."""
        if self.process is not None and self.process.poll() is None:
            self.killed = True
            kill_process_tree(self.process)

    def outcome(self) -> JobOutcome | None:
        """How the job ended, or None while it runs."""
        if self.process is None or self.running:
            return None
        exit_code = self.process.returncode
        error = self._error
        if error is None and self.killed:
            error = "the job was cancelled and its worker killed (it did not stop in time)"
        elif error is None and (exit_code != 0 or self._result is None):
            error = f"the worker ended unexpectedly (exit code {exit_code}); see the log"
        return JobOutcome(
            self._result if error is None else None,
            error,
            self._stopped or self.killed,
            exit_code,
            self.killed,
        )
