"""The worker process: ``python -m CardiacUDALib.worker JOB.json``.

It runs one job and prints one JSON object per line on standard output (DESIGN.md §2.2):
``status``, ``progress`` (step, total, losses, eta_s), ``validation``, ``checkpoint``, ``stopped``,
``result`` (output paths), ``error`` (a message a user can act on), and ``done`` last.

Cancel: a file named ``STOP`` in the job's ``out_dir`` (or SIGTERM) makes a training job save
``last.pt`` and exit with code 0 after ``stopped``; running the same job again resumes from it.
Exit codes: 0 done (or stopped), 1 an error the user can fix, 2 an unexpected failure.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from CardiacUDALib.engine import Event
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.jobs import run_job
from CardiacUDALib.runfolder import STOP_FILE_NAME


def print_event(event: Event) -> None:
    sys.stdout.write(json.dumps(event, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


class StopRequest:
    """True once SIGTERM arrived or the stop file exists."""

    def __init__(self, stop_file: Path | None) -> None:
        self.stop_file = stop_file
        self.signalled = False

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or (self.stop_file is not None and self.stop_file.exists())


def _finite(value: Any) -> Any:
    """NaN is not JSON: report undefined numbers (e.g. a distance to an empty structure) as null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print_event({"event": "error", "message": "usage: python -m CardiacUDALib.worker JOB.json"})
        return 1
    try:
        job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        print_event({"event": "error", "message": f"cannot read job file {args[0]}: {error}"})
        return 1
    out_dir = job.get("out_dir")
    stop = StopRequest(Path(out_dir) / STOP_FILE_NAME if out_dir else None)
    if stop.stop_file is not None and stop.stop_file.exists():
        stop.stop_file.unlink()  # a stop file left by an earlier cancel must not stop the resumed run
    signal.signal(signal.SIGTERM, stop.on_signal)
    try:
        result = run_job(job, lambda event: print_event(_finite(event)), stop)
    except CardiacUDAError as error:
        print_event({"event": "error", "message": str(error)})
        return 1
    except Exception as error:  # noqa: BLE001  (the GUI must get a message, never a silent death)
        print_event(
            {"event": "error", "message": f"unexpected failure: {error}", "detail": traceback.format_exc()}
        )
        return 2
    print_event({"event": "result", **_finite(result)})
    print_event({"event": "done", "stopped": bool(result.get("stopped", False))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
