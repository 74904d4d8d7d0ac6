"""Progress events: the dictionaries every long operation sends out (the job protocol, DESIGN.md §2.2).

The CLI, the worker and the Slicer module show the same events; this module is torch-free so that
the processes that only read events never import torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
EventSink = Callable[[Event], None]
StopCheck = Callable[[], bool]


def ignore_event(event: Event) -> None:
    """The default event sink."""


def never_stop() -> bool:
    return False


def print_event(event: Event) -> None:
    """One event as a JSON line on standard output: how a background process reports (DESIGN.md §2.2)."""
    sys.stdout.write(json.dumps(event, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()
