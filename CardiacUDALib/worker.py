"""The worker process: ``python -m CardiacUDALib.worker JOB.json``.

It runs one job and prints one JSON object per line on standard output (DESIGN.md §2.2):
``status``, ``warning`` (message: an input that is used but looks wrong), ``progress`` (step, total, losses, eta_s), ``validation``, ``checkpoint``, ``stopped``,
``result`` (output paths; for segmentations also ``heart_regions``: by case, the network's window
around the heart found, ``PreparedVolume.window_box``, where it is not the whole slice), ``error`` (a
message a user can act on), and ``done`` last.

Cancel: a file named ``STOP`` in the job's ``out_dir`` (or SIGTERM) makes a training job save
``last.pt`` and exit with code 0 after ``stopped``; running the same job again resumes from it.
Exit codes: 0 done (or stopped), 1 an error the user can fix (an unreadable or malformed job file, a
missing, unknown or mistyped field, bad input data), 2 an unexpected failure. ``done`` is printed
last whatever happened, after ``error`` when there was one.
"""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from CardiacUDALib.atomic import check_writable_folder
from CardiacUDALib.engine import run_job
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.events import print_event
from CardiacUDALib.jobs import Job, parse_job
from CardiacUDALib.json_files import read_json_file
from CardiacUDALib.runfolder import STOP_FILE_NAME

EXIT_DONE = 0
EXIT_ERROR = 1
EXIT_UNEXPECTED = 2


class StopRequest:
    """True once SIGTERM arrived or the stop file exists."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.signalled = False

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or self.stop_file.exists()


def _finite(value: Any) -> Any:
    """NaN is not JSON: report undefined numbers (e.g. a distance to an empty structure) as null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _stop_request(job: Job) -> StopRequest:
    """Stops on SIGTERM, and on the stop file in the job's output folder (checked to be one first)."""
    stop = StopRequest(check_writable_folder(job.out_dir, "the output folder") / STOP_FILE_NAME)
    if stop.stop_file.is_file():
        stop.stop_file.unlink()  # a stop file left by an earlier cancel must not stop the resumed run
    signal.signal(signal.SIGTERM, stop.on_signal)
    return stop


def run(args: list[str]) -> tuple[int, bool]:
    """Run the job named by ``args``, printing its events; returns (exit code, stopped)."""
    if len(args) != 1:
        print_event({"event": "error", "message": "usage: python -m CardiacUDALib.worker JOB.json"})
        return EXIT_ERROR, False
    try:
        job = parse_job(read_json_file(args[0], "job file"))
        result = run_job(job, lambda event: print_event(_finite(event)), _stop_request(job))
    except CardiacUDAError as error:
        print_event({"event": "error", "message": str(error)})
        return EXIT_ERROR, False
    except Exception as error:  # noqa: BLE001  (the GUI must get a message, never a silent death)
        print_event(
            {"event": "error", "message": f"unexpected failure: {error}", "detail": traceback.format_exc()}
        )
        return EXIT_UNEXPECTED, False
    print_event({"event": "result", **_finite(result)})
    return EXIT_DONE, bool(result.get("stopped", False))


def main(argv: list[str] | None = None) -> int:
    code, stopped = run(sys.argv[1:] if argv is None else argv)
    print_event({"event": "done", "stopped": stopped})
    return code


if __name__ == "__main__":
    sys.exit(main())
