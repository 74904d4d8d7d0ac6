"""A model file server on 127.0.0.1 for the download tests (a thread in the test, real HTTP), and the
manifest entries that point at it."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from CardiacUDALib import weights
from CardiacUDALib.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from CardiacUDALib.io import LABEL_MAPS
from CardiacUDALib.preprocess import PreprocessConfig
from CardiacUDALib.weights import ModelEntry


def checkpoint_bytes(size: int, seed: int = 0) -> bytes:
    """A real checkpoint file of about ``size`` bytes that :func:`model_entry` describes: no weights,
    random text in its metadata for the size."""
    padding = "".join(random.Random(seed).choices("abcdefghijklmnopqrstuvwxyz", k=size))
    checkpoint = Checkpoint("source_only", {}, LABEL_MAPS["mscmrseg"].to_dict(), PreprocessConfig(size=64).to_dict(),
                            {}, metadata={"padding": padding})  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        return save_checkpoint(checkpoint, Path(folder) / "model.pt").read_bytes()


PAYLOAD = checkpoint_bytes(5 * weights.CHUNK_BYTES + 1234)  # several chunks, a ragged end
FILE_PATH = "/files/model.pt"


@dataclasses.dataclass
class ServerState:
    """What the server serves, how it misbehaves, and every request it saw."""

    payload: bytes = PAYLOAD
    requests: list[dict[str, str | None]] = dataclasses.field(default_factory=list)
    close_after: int | None = None  # send this many body bytes, then close the connection (once)
    stall_after: int | None = None  # send this many body bytes, then wait without sending (once)
    ignore_range: bool = False  # answer a Range request with the whole file (200)
    release: threading.Event = dataclasses.field(default_factory=threading.Event)


class ModelFileHandler(BaseHTTPRequestHandler):
    """Serves ``ServerState.payload`` at :data:`FILE_PATH`, honouring ``Range: bytes=N-``; 404 elsewhere."""

    server: ModelFileServer

    def do_GET(self) -> None:
        state = self.server.state
        requested_range = self.headers.get("Range")
        state.requests.append({"path": self.path, "range": requested_range})
        if self.path != FILE_PATH:
            self.send_error(404, "Not Found")
            return
        payload = state.payload
        start = 0
        if requested_range and not state.ignore_range:
            start = int(requested_range.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(payload) - start))
        self.end_headers()
        body = payload[start:]
        if state.close_after is not None:
            body, state.close_after = body[: state.close_after], None
        elif state.stall_after is not None:
            self.wfile.write(body[: state.stall_after])
            self.wfile.flush()
            state.stall_after = None
            state.release.wait(10)
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read ``ServerState.requests``."""


class ModelFileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ModelFileHandler)
        self.state = ServerState()

    def url(self, path: str = FILE_PATH) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler] = ModelFileHandler) -> Iterator[ModelFileServer]:
    """A :class:`ModelFileServer` answering with ``handler`` in a thread, shut down afterwards."""
    httpd = ModelFileServer()
    httpd.RequestHandlerClass = handler
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def model_entry(url: str, payload: bytes = PAYLOAD, **changes: object) -> ModelEntry:
    entry = ModelEntry(
        id="test_model",
        title="A test model",
        method="source_only",
        source_modality="bSSFP",
        target_modality="LGE",
        label_map=LABEL_MAPS["mscmrseg"].to_dict(),
        preprocessing=PreprocessConfig(size=64).to_dict(),
        file_name="test_model.pt",
        size_bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        urls=(url,),
        licence="CC-BY-4.0",
        training_data="synthetic phantom",
        measured={"dataset": "phantom", "mean_dice": 0.5},
    )
    return dataclasses.replace(entry, **changes)


def checkpoint_entry(url: str, checkpoint: Path, **changes: object) -> ModelEntry:
    """The entry of a real checkpoint file: its bytes, method, label map and preprocessing."""
    saved = load_checkpoint(checkpoint)
    described = {"method": saved.method, "label_map": saved.label_map, "preprocessing": saved.preprocess}
    return model_entry(url, checkpoint.read_bytes(), **{**described, **changes})


def manifest_json(*entries: ModelEntry, version: int = weights.MANIFEST_VERSION) -> dict:
    return {"version": version, "models": [dataclasses.asdict(entry) for entry in entries]}


def write_manifest(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@contextlib.contextmanager
def serving_folder_in_a_process(folder: Path) -> Iterator[str]:
    """``folder``'s files over HTTP from another process (``python -m http.server``); yields its base URL.

    For tests that hold the GIL in this process, as Slicer's main thread does: a server thread here would
    stall with the code under test."""
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = re.search(r"port (\d+)", server.stdout.readline())[1]  # "Serving HTTP on 127.0.0.1 port N ..."
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


def ticks_with_the_gil_held(poll: Callable[[], object], tick_s: float, limit: int) -> int:
    """Call ``poll`` once per tick until it returns something other than None, holding the GIL between
    calls as Slicer's main thread does while its event loop waits for the next timer (PythonQt never
    releases it there): a C call through ``ctypes.PyDLL`` keeps the GIL. Returns the ticks it took."""
    hold = ctypes.PyDLL(None).usleep
    for tick in range(1, limit + 1):
        if poll() is not None:
            return tick
        hold(int(tick_s * 1e6))
    return limit + 1
