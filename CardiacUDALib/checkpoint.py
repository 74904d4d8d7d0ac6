"""One self-describing file per model: weights plus everything needed to use them again.

A checkpoint names its method and holds the method's config, the label map (class names and label
values), the preprocessing, the network and optimiser states, the step and free metadata, so that
``segment`` and ``resume`` need nothing but the file. It is written with ``torch.save`` through
:func:`~CardiacUDALib.atomic.atomic_path` (a cancelled or crashed save never replaces a good
checkpoint with half a file) and read **only** with ``torch.load(weights_only=True)``: weights are
shared and downloaded, and a full unpickle would run whatever code a file asks for. Everything in
a checkpoint is therefore tensors, dicts, lists, tuples, strings and numbers.

Damage is caught at load: ``torch.load`` does not check the tensors' bytes, so flipped bytes inside a
weights record would load and segment confidently wrong. Every file therefore carries the SHA-256 of
its content (every field, every tensor's dtype, shape and bytes; :func:`content_sha256`), checked
before anything is used.

``FORMAT_VERSION`` is raised when the layout changes; a file from a newer CardiacUDA is refused
with a request to upgrade rather than misread. Format 1 files (before the digest) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from CardiacUDALib.atomic import atomic_path
from CardiacUDALib.errors import CheckpointError
from CardiacUDALib.io import LabelMap
from CardiacUDALib.preprocess import PreprocessConfig

if TYPE_CHECKING:
    from CardiacUDALib.weights import ModelEntry

FORMAT_VERSION = 2
FORMAT_MARKER = "cardiac-uda-checkpoint"
DIGEST_KEY = "content_sha256"
_FIRST_VERSION_WITH_DIGEST = 2
_JSON_FIELDS = ("method_config", "label_map", "preprocess", "metadata")
# What torch.load raises for bytes that are not a complete torch file, depending on which layer notices
# first (zip reader, legacy header, unpickler), and for a file that weights_only refuses to unpickle.
_UNREADABLE_FILE_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, LookupError, ValueError, TypeError)


@dataclass
class Checkpoint:
    """Everything one saved model needs; see the module docstring for what each part is for."""

    method: str
    method_config: dict
    label_map: dict
    preprocess: dict
    state: dict
    step: int = 0
    metadata: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def _require_json_able(checkpoint: Checkpoint) -> None:
    """Refuse at save time what would make the file unloadable later (e.g. a ``Path`` in a config)."""
    for name in _JSON_FIELDS:
        try:
            json.dumps(getattr(checkpoint, name))
        except (TypeError, ValueError) as error:
            raise ValueError(f"checkpoint field {name!r} must be JSON-able: {error}") from error


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically; the previous file stays intact if saving fails."""
    _require_json_able(checkpoint)
    payload = {item.name: getattr(checkpoint, item.name) for item in fields(Checkpoint)}
    payload["format"] = FORMAT_MARKER
    payload[DIGEST_KEY] = content_sha256(payload)
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def _load_weights_only(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` with its failures turned into messages a user can act on."""
    try:
        with warnings.catch_warnings():
            # Garbage bytes can look like a pickle of another protocol; the error below says it better.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except _UNREADABLE_FILE_ERRORS as error:
        # weights_only names the global it refused ("GLOBAL module.name"); torch's own advice to retry
        # without weights_only is exactly what must not be done, hence ``from None`` there.
        refused_global = re.search(r"GLOBAL (\S+)", str(error))
        if refused_global is not None:
            raise CheckpointError(
                f"{path} was refused: loading it would run code or build objects of '{refused_global.group(1)}', "
                "and CardiacUDA never executes code from checkpoint files. Use a checkpoint written by CardiacUDA."
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a CardiacUDA checkpoint") from error
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from error


def load_checkpoint(
    path: str | os.PathLike[str], expected_method: str | None = None, map_location: Any = "cpu"
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything else with a clear message."""
    checkpoint_path = Path(path)
    if not checkpoint_path.exists():
        raise CheckpointError(f"checkpoint {checkpoint_path} does not exist")
    payload = _load_weights_only(checkpoint_path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_MARKER:
        raise CheckpointError(
            f"{checkpoint_path} is not a CardiacUDA checkpoint (it has no CardiacUDA format marker)"
        )
    format_version = payload.get("format_version")
    if not isinstance(format_version, int):
        raise CheckpointError(
            f"{checkpoint_path} is corrupt: its format version {format_version!r} is not a number"
        )
    if format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{checkpoint_path} was written by a newer CardiacUDA (format {format_version}, "
            f"this version reads up to {FORMAT_VERSION}): upgrade CardiacUDA"
        )
    field_names = [item.name for item in fields(Checkpoint)]
    missing = [name for name in field_names if name not in payload]
    if format_version >= _FIRST_VERSION_WITH_DIGEST and DIGEST_KEY not in payload:
        missing.append(DIGEST_KEY)
    if missing:
        raise CheckpointError(f"{checkpoint_path} is corrupt or incomplete: it lacks {', '.join(missing)}")
    saved_digest = payload.pop(DIGEST_KEY, None)
    if saved_digest is not None and saved_digest != content_sha256(payload):
        raise CheckpointError(
            f"{checkpoint_path} is damaged: its content no longer matches the digest saved with it "
            "(a disk, copy or download error changed it); use an intact copy or train again"
        )
    checkpoint = Checkpoint(**{name: payload[name] for name in field_names})
    if expected_method is not None and checkpoint.method != expected_method:
        raise CheckpointError(
            f"{checkpoint_path} is a {checkpoint.method} checkpoint, not {expected_method}: "
            f"choose a {expected_method} checkpoint or the method {checkpoint.method}"
        )
    return checkpoint


def _description(method: str, label_map: dict, preprocess: dict) -> dict[str, Any]:
    """What a model is, in a form two sources of it compare in (defaults filled, pairs as lists)."""
    return {
        "method": method,
        "label map": LabelMap.from_dict(label_map).to_dict(),
        "preprocessing": PreprocessConfig.from_dict(preprocess).to_dict(),
    }


def check_manifest_entry(path: str | os.PathLike[str], entry: ModelEntry) -> None:
    """Refuse a manifest model whose file holds another method, label map or preprocessing than its entry
    says: the SHA-256 proves that the file is the one the entry names, not that the entry describes it."""
    checkpoint = load_checkpoint(path)
    said = _description(entry.method, entry.label_map, entry.preprocessing)
    held = _description(checkpoint.method, checkpoint.label_map, checkpoint.preprocess)
    differing = [name for name in said if said[name] != held[name]]
    if differing:
        details = "; ".join(
            f"{name}: the manifest says {said[name]}, the file {held[name]}" for name in differing
        )
        raise CheckpointError(
            f"model {entry.id!r} is not what its manifest entry says ({details}); correct the manifest, "
            f"or give the file itself with --checkpoint {path}"
        )


def _update_digest(digest: Any, value: Any) -> None:
    """Feed ``value`` to ``digest`` in a canonical order: dict keys sorted, tensors as dtype, shape and bytes."""
    if isinstance(value, dict):
        digest.update(b"{%d" % len(value))
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _update_digest(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(b"[%d" % len(value))
        for item in value:
            _update_digest(digest, item)
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {tensor.dtype} {tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    else:
        digest.update(f"{type(value).__name__} {value!r}".encode())


def content_sha256(payload: dict[str, Any]) -> str:
    """Hex SHA-256 of a checkpoint payload's content, independent of how ``torch.save`` laid it out."""
    digest = hashlib.sha256()
    _update_digest(digest, payload)
    return digest.hexdigest()
