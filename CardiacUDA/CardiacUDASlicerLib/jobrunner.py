"""Runs a library process (a job's worker, a model download) in the background and reads its events.

The process (``python -m CardiacUDALib.worker JOB.json``) prints one JSON object per line. Its standard
output and error go to two files beside the job file, and :meth:`WorkerProcess.poll` reads the lines
added since its last call, on the caller's thread (the GUI's timer, or :meth:`wait` in batch mode):
so only that thread ever touches MRML, and nothing depends on a Python thread getting the GIL. (Inside
Slicer the main thread holds the GIL whenever it is not running Python, so a reader thread there
advances only while a timer callback runs; the files also keep the worker's log for the user.)

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
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer

from CardiacUDALib.atomic import write_json_atomic  # torch-free: safe at module load
from CardiacUDALib.jobs import Job
from CardiacUDALib.runfolder import STOP_FILE_NAME

Event = dict[str, Any]
WORKER_MODULE = "CardiacUDALib.worker"
DEFAULT_STOP_GRACE_S = 60.0


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


class OutputFile:
    """The complete lines appended to a file since the last call (the last, unended line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0  # what an earlier attempt wrote stays
        self.unended = b""

    def new_lines(self, ended: bool = False) -> list[str]:
        """Lines added since the last call; ``ended`` (the writer has exited) returns an unended last line too."""
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as stream:
            stream.seek(self.offset)
            data = stream.read()
            self.offset += len(data)
            self.unended += data
        *lines, self.unended = self.unended.split(b"\n")
        if ended and self.unended:
            lines.append(self.unended)
            self.unended = b""
        return [
            text for line in lines if (text := line.decode("utf-8", errors="replace").rstrip("\r")).strip()
        ]


class WorkerProcess:
    """One background process printing job-protocol events; see the module docstring.

    ``output_stem`` names its output files (``<stem>.out``: events, ``<stem>.err``: its log) and
    ``stop_file`` the file whose existence asks it to stop.
    """

    def __init__(
        self,
        command: list[str],
        output_stem: Path,
        stop_file: Path,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        self.command = command
        self.output_stem = Path(output_stem)
        self.stop_file = Path(stop_file)
        self.stop_grace_s = stop_grace_s
        self.process: subprocess.Popen | None = None
        self.kill_deadline: float | None = None
        self.killed = False
        self._outputs: list[tuple[OutputFile, Callable[[str], Event]]] = []
        self._ended = False  # the process has exited and its output files are read to the end
        self._result: dict[str, Any] | None = None
        self._error: str | None = None
        self._stopped = False

    @property
    def output_files(self) -> tuple[Path, Path]:
        return self.output_stem.with_name(self.output_stem.name + ".out"), self.output_stem.with_name(
            self.output_stem.name + ".err"
        )

    def start(self) -> None:
        """Start the process with its output appended to the output files (a resumed job's log keeps the
        earlier attempts'); returns at once."""
        platform_options: dict[str, Any] = (
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
            if sys.platform == "win32"
            else {"start_new_session": True}
        )
        stdout_path, stderr_path = self.output_files
        stdout_path.parent.mkdir(parents=True, exist_ok=True)
        self._outputs = [
            (OutputFile(stdout_path), self._parse_event),
            (OutputFile(stderr_path), self._log_line),
        ]
        with stdout_path.open("ab") as stdout, stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                self.command,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=worker_environment(),
                **platform_options,
            )

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
        """True until the process has exited and :meth:`poll` has read its output to the end."""
        return self.process is not None and not self._ended

    def poll(self) -> list[Event]:
        """Every event written since the last call (never waits); kills the tree once a cancel times out."""
        if self.process is None or self._ended:
            return []
        if self.kill_deadline is not None and time.monotonic() > self.kill_deadline and not self.killed:
            self.kill()
        exited = self.process.poll() is not None  # before reading: what it wrote before exiting is read now
        arrived = [parse(line) for output, parse in self._outputs for line in output.new_lines(ended=exited)]
        for event in arrived:
            self._remember(event)
        self._ended = exited
        return arrived

    def _remember(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "result":
            self._result = {key: value for key, value in event.items() if key != "event"}
        elif kind == "error":
            self._error = str(event.get("message", "the worker failed"))
        elif kind in ("stopped", "done"):
            self._stopped = self._stopped or kind == "stopped" or bool(event.get("stopped"))

    def request_stop(self) -> None:
        """Ask the process to stop cleanly; its tree is killed if it is still alive after the grace."""
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()
        if self.kill_deadline is None:
            self.kill_deadline = time.monotonic() + self.stop_grace_s

    def kill(self) -> None:
        """Kill the process's whole tree now."""
        if self.process is not None and self.process.poll() is None:
            self.killed = True
            kill_process_tree(self.process)

    def outcome(self) -> JobOutcome | None:
        """How the process ended, or None while it runs (or its output is not read to the end)."""
        if self.process is None or self.running:
            return None
        exit_code = self.process.returncode
        error = self._error
        if error is None and self.killed:
            error = "the job was cancelled and its worker killed (it did not stop in time)"
        elif error is None and (exit_code != 0 or self._result is None):
            error = f"the worker ended unexpectedly (exit code {exit_code}); see {self.output_files[1]}"
        return JobOutcome(
            self._result if error is None else None,
            error,
            self._stopped or self.killed,
            exit_code,
            self.killed,
        )


class WorkerJob(WorkerProcess):
    """One job file run by ``python -m CardiacUDALib.worker``; its output files sit beside the job file."""

    def __init__(
        self,
        job: Job,
        job_file: Path,
        command: list[str] | None = None,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        self.job = job
        self.job_file = Path(job_file)
        super().__init__(
            command or [], self.job_file.with_suffix(""), job.out_dir / STOP_FILE_NAME, stop_grace_s
        )

    def start(self) -> None:
        """Write the job file and start the worker; returns at once."""
        write_json_atomic(self.job_file, self.job.to_dict())
        self.command = self.command or [worker_interpreter(), "-m", WORKER_MODULE, str(self.job_file)]
        super().start()
