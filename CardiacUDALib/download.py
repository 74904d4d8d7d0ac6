"""A model download in a process of its own: ``python -m CardiacUDALib.download DOWNLOAD.json``.

The Slicer panel runs it so that the download goes on whatever its own Python threads may do (Slicer's
main thread holds the GIL between timer ticks). It prints job-protocol events: ``progress`` in bytes,
then ``result`` with the file's path, or ``error``; ``stopped`` when the ``STOP`` file beside the job
file appeared; ``done`` last. Torch-free, as :mod:`CardiacUDALib.weights`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from CardiacUDALib.errors import CheckpointError, InputDataError
from CardiacUDALib.events import print_event
from CardiacUDALib.json_files import read_json_file
from CardiacUDALib.runfolder import STOP_FILE_NAME
from CardiacUDALib.weights import DownloadCancelled, ModelEntry, entry_from_dict, fetch


def download_job(entry: ModelEntry, cache: Path | None, timeout: float) -> dict[str, Any]:
    """What :func:`main` reads: the manifest entry itself (it may come from any manifest), cache, timeout."""
    return {
        "entry": dataclasses.asdict(entry),
        "cache": None if cache is None else str(cache),
        "timeout": timeout,
    }


def main(argv: list[str] | None = None) -> int:
    """Fetch the model of the job file ``argv[0]``; exit code 0 when the file is there, 1 otherwise."""
    args = sys.argv[1:] if argv is None else argv
    stop_file = Path(args[0]).with_name(STOP_FILE_NAME) if args else Path(STOP_FILE_NAME)
    stopped, code = False, 1
    try:
        if len(args) != 1:
            raise InputDataError("usage: python -m CardiacUDALib.download DOWNLOAD.json")
        job = read_json_file(args[0], "download job file")
        entry = entry_from_dict(job["entry"], 0)
        path = fetch(
            entry,
            None if job["cache"] is None else Path(job["cache"]),
            lambda done, total: print_event({"event": "progress", "step": done, "total": total}),
            stop_file.exists,
            float(job["timeout"]),
        )
        # Here, not at import: the Slicer process imports this module, and only this process needs torch.
        from CardiacUDALib.checkpoint import check_manifest_entry

        check_manifest_entry(path, entry)
    except DownloadCancelled as error:
        stopped = True
        print_event({"event": "stopped", "message": str(error)})
        print_event({"event": "error", "message": str(error)})
    except (CheckpointError, InputDataError, OSError, ValueError, KeyError, TypeError) as error:
        print_event({"event": "error", "message": str(error) or type(error).__name__})
    else:
        print_event({"event": "result", "path": str(path)})
        code = 0
    print_event({"event": "done", "stopped": stopped})
    return code


if __name__ == "__main__":
    sys.exit(main())
