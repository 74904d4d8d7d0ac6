"""The console side of the CLI: engine events as a tqdm bar and lines, Ctrl-C as a clean stop."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from tqdm import tqdm

from CardiacUDALib.errors import CardiacUDAError

RESUME_HINT = "the last checkpoint is saved: run the same command again to resume"


class ProgressPrinter:
    """Shows engine events: a tqdm bar for progress, lines above it for status and validation."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._progress(event)
        elif kind == "status":
            tqdm.write(str(event["message"]), file=sys.stderr)
        elif kind == "validation":
            scores = ", ".join(f"{name} {value:.3f}" for name, value in event["dice"].items())
            after = f" after {event['after']}" if event.get("after") else ""
            tqdm.write(f"validation Dice at step {event['step']}{after}: {scores}", file=sys.stderr)
        elif kind == "trained":
            self.close()
            tqdm.write(f"trained: {event['selection']}", file=sys.stderr)

    def _progress(self, event: dict[str, Any]) -> None:
        total, step = int(event["total"]), int(event["step"])
        if self.bar is None or self.bar.total != total or step < self.bar.n:
            self.close()
            self.bar = tqdm(total=total, file=sys.stderr, unit="step" if event.get("losses") else "volume")
        self.bar.update(step - self.bar.n)
        if event.get("case"):
            self.bar.set_description(str(event["case"]))
        if event.get("losses"):
            self.bar.set_postfix({name: f"{value:.3g}" for name, value in event["losses"].items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class InterruptToStop:
    """The first Ctrl-C asks the engine to stop after the current step (saving ``last.pt``); a second aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> InterruptToStop:
        self.previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "stopping after this step and saving the last checkpoint (Ctrl-C again aborts at once)",
            file=sys.stderr,
        )

    def __call__(self) -> bool:
        return self.requested


class StoppedByUser(CardiacUDAError):
    """Training stopped on Ctrl-C with its last checkpoint saved."""


def run_stoppable(
    work: Callable[[Callable[[dict[str, Any]], None], Callable[[], bool]], Any], stopped_message: str
) -> Any:
    """Run ``work(emit, should_stop)`` with the progress bar, turning Ctrl-C into a clean stop.

    A run that ends after Ctrl-C (with a result or with the engine's "stopped" error) raises
    :class:`StoppedByUser` with ``stopped_message``, so the command exits with 130 and says what to do.
    """
    printer = ProgressPrinter()
    with InterruptToStop() as stop:
        try:
            result = work(printer, stop)
        except CardiacUDAError as error:
            if stop.requested:
                raise StoppedByUser(f"{error}; {stopped_message}") from error
            raise
        finally:
            printer.close()
    if stop.requested:
        raise StoppedByUser(f"stopped on Ctrl-C; {stopped_message}")
    return result
