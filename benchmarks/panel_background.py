"""How fast the panel's background work goes when the main thread holds the GIL between timer ticks.

Inside Slicer, PythonQt keeps the GIL on the main thread while its event loop waits, so a Python thread
runs only while a timer callback runs Python. This measures a model download of the shipped model's size
from a local HTTP server in another process, polled once per tick of the panel's timer with the GIL held
in between: ``weights.fetch`` in a thread (the panel's design before issue #32) against ``ModelDownload``
(a process of its own). Needs the slicer-core wheel (``pip install -e '.[test]'``); Linux (libc usleep).

    python benchmarks/panel_background.py [--megabytes 7.8] [--tick-ms 200]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPOSITORY / "Testing"), str(REPOSITORY / "CardiacUDA")]

from CardiacUDASlicerLib.models import ModelDownload  # noqa: E402
from model_server import model_entry, serving_folder_in_a_process, ticks_with_the_gil_held  # noqa: E402

from CardiacUDALib import weights  # noqa: E402


def in_a_thread(entry: weights.ModelEntry, cache: Path) -> object:
    """The earlier design: ``fetch`` in a Python thread; returns the poll the timer would call."""
    outcome: list[object] = []
    threading.Thread(target=lambda: outcome.append(weights.fetch(entry, cache)), daemon=True).start()
    return lambda: outcome[0] if outcome else None


def in_a_process(entry: weights.ModelEntry, cache: Path) -> object:
    download = ModelDownload(entry, cache)
    download.start()
    return download.poll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=7.8)
    parser.add_argument("--tick-ms", type=float, default=200.0)
    args = parser.parse_args()
    payload = random.Random(0).randbytes(int(args.megabytes * 2**20))
    chunks = -(-len(payload) // weights.CHUNK_BYTES)
    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder) / "files"
        files.mkdir()
        (files / "model.pt").write_bytes(payload)
        with serving_folder_in_a_process(files) as base:
            print(
                f"{len(payload) / 2**20:.1f} MB ({chunks} chunks), a poll every {args.tick_ms:.0f} ms, GIL held between"
            )
            for name, start in (("thread", in_a_thread), ("process", in_a_process)):
                cache = Path(folder) / name
                cache.mkdir()
                started = time.monotonic()
                poll = start(model_entry(f"{base}/model.pt", payload), cache)
                ticks = ticks_with_the_gil_held(poll, args.tick_ms / 1000, limit=10 * chunks)
                assert (cache / "test_model.pt").read_bytes() == payload, name
                print(f"{name:8s} {ticks:5d} ticks {time.monotonic() - started:7.1f} s")


if __name__ == "__main__":
    main()
