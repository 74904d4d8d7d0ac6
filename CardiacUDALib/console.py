"""The console side of the CLI: engine events as a tqdm bar and lines, Ctrl-C as a clean stop."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, TextIO

from tqdm import tqdm

from CardiacUDALib.errors import CardiacUDAError

RESUME_HINT = "the last checkpoint is saved: run the same command again to resume"


# Characters of loss terms in the bar's postfix: the bar, its count and elapsed<remaining time still fit
# an 80-column terminal. Terms past the budget are left out of the bar (all of them are in history.json).
POSTFIX_WIDTH = 24


def losses_postfix(losses: Mapping[str, float], width: int = POSTFIX_WIDTH) -> str:
    """``loss=0.516, dice=0.335``: the total ``loss`` first, then the other terms while they fit ``width``."""
    names = sorted(losses, key=lambda name: name != "loss")
    terms = [f"{name}={losses[name]:.3g}" for name in names]
    shown = terms[:1]
    for term in terms[1:]:
        if len(", ".join([*shown, term])) > width:
            break
        shown.append(term)
    return ", ".join(shown)


class ProgressPrinter:
    """Shows engine events: a tqdm bar (with the remaining time) for progress, whole lines for the rest.

    Status, validation and result lines go through ``tqdm.write``, so an open bar is cleared and drawn
    again below them; a bar that reaches its total is closed at once, so the lines of the next stage
    come after it instead of under a stale bar. ``stream`` defaults to stderr; ``ncols`` (default: the
    terminal's width) fixes the bar's width.
    """

    def __init__(self, stream: TextIO | None = None, ncols: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.ncols = ncols
        self.bar: tqdm | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._progress(event)
        elif kind == "status":
            self.line(str(event["message"]))
        elif kind == "warning":
            self.line(f"warning: {event['message']}")
        elif kind == "validation":
            scores = ", ".join(f"{name} {value:.3f}" for name, value in event["dice"].items())
            after = f" after {event['after']}" if event.get("after") else ""
            self.line(f"validation Dice at step {event['step']}{after}: {scores}")
        elif kind == "trained":
            self.close()
            self.line(f"trained: {event['selection']}")

    def line(self, text: str) -> None:
        """``text`` on a line of its own, above the open bar if there is one."""
        tqdm.write(text, file=self.stream)

    def _progress(self, event: dict[str, Any]) -> None:
        total, step = int(event["total"]), int(event["step"])
        if self.bar is None or self.bar.total != total or step < self.bar.n:
            self.close()
            # Steps done before the first event are not timed: starting the bar there keeps them out
            # of the rate, and so out of the remaining time.
            self.bar = tqdm(
                total=total,
                initial=step,
                file=self.stream,
                ncols=self.ncols,
                unit="step" if event.get("losses") else "volume",
            )
        self.bar.update(step - self.bar.n)
        if event.get("case"):
            self.bar.set_description(str(event["case"]), refresh=False)
        if event.get("losses"):
            self.bar.set_postfix_str(losses_postfix(event["losses"]), refresh=False)
        self.bar.refresh()
        if step >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class InterruptToStop:
    """Ctrl-C or SIGTERM asks the engine to stop after the current step (saving ``last.pt``); a second
    Ctrl-C aborts. Under torchrun every signal only asks to stop: torchrun passes a Ctrl-C on to the
    ranks that the terminal already interrupted, and ends them itself if they take too long."""

    def __init__(self) -> None:
        self.requested = False
        self.abort_on_second = int(os.environ.get("WORLD_SIZE", "1")) == 1

    def __enter__(self) -> InterruptToStop:
        self.previous = {
            number: signal.signal(number, self._on_signal) for number in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT and self.abort_on_second:
            raise KeyboardInterrupt
        if not self.requested:
            tqdm.write(
                "stopping after this step and saving the last checkpoint (Ctrl-C again aborts at once)",
                file=sys.stderr,
            )
        self.requested = True

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
