"""Reading the JSON a user hands us (job files, model manifests): strictly, with messages a user can act on.

One reader for every such file, so that each kind of fault is handled once: a UTF-8 byte-order mark (as
Windows editors write) is accepted; text that is not UTF-8 or not JSON, a key given twice in one object
(JSON keeps the last one silently) and nesting too deep to read are refused, naming the file.
Torch-free: the Slicer process reads job files too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from CardiacUDALib.errors import InputDataError


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise InputDataError(f"the key(s) {', '.join(map(repr, repeated))} appear twice in one object")
    return dict(pairs)


def parse_json_text(text: str, what: str) -> Any:
    """``text`` as JSON; ``what`` names it in the error (``job file x.json``)."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as error:
        raise InputDataError(f"{what} is not valid JSON: {error}") from error
    except InputDataError as error:
        raise InputDataError(f"{what}: {error}: give each key once") from error
    except RecursionError as error:
        raise InputDataError(f"{what} is nested too deeply to read") from error


def read_json_file(path: str | Path, what: str) -> Any:
    """The JSON document of the file at ``path`` (UTF-8, with or without a byte-order mark)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputDataError(f"cannot read {what} {path}: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputDataError(
            f"{what} {path} is not UTF-8 text (byte {error.start}): write it as UTF-8 JSON"
        ) from error
    return parse_json_text(text, f"{what} {path}")
