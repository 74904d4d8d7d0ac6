"""Pretrained models: the versioned manifest, the download cache, fetching and offline import.

The manifest (``CardiacUDALib/models/manifest.json`` by default) lists each model with its label map,
preprocessing, measured scores, size, SHA-256 and download locations. A model file is used from the
cache (``$CARDIAC_UDA_CACHE`` or ``~/.cache/cardiac-uda``, outside the extension folder) or, when it
ships with the package, from the packaged ``models`` folder; either copy is used only when its SHA-256
matches the manifest.

:func:`fetch` streams a file with ``requests`` into ``<cache>/<file>.part``, resuming a partial file
with an HTTP Range request, and moves it into the cache with :func:`~CardiacUDALib.atomic.atomic_path`
only after its size and SHA-256 match: a wrong file leaves nothing in the cache. Downloads go over
https only (plain http to the loopback host is allowed for tests); the scheme of every location is
checked before any network access. Torch-free: the Slicer panel lists models before PyTorch exists.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from CardiacUDALib.atomic import atomic_path, file_sha256, write_json_atomic
from CardiacUDALib.errors import CheckpointError, InputDataError
from CardiacUDALib.events import StopCheck, never_stop
from CardiacUDALib.json_files import read_json_file
from CardiacUDALib.typed_values import REQUIRED, check_known_fields, checked_field, field_types

MANIFEST_VERSION = 1
PACKAGED_MODELS = Path(__file__).resolve().with_name("models")
PACKAGED_MANIFEST = PACKAGED_MODELS / "manifest.json"
CACHE_VARIABLE = "CARDIAC_UDA_CACHE"
PARTIAL_SUFFIX = ".part"
CACHE_INDEX = ".cardiac-uda-cache.json"  # the files the cache wrote itself: all that remove / clear delete
CHUNK_BYTES = 64 * 1024
_LOOPBACK_NAMES = {"localhost"}
_RESUME_HINT = "run the same command again to resume"

Progress = Callable[[int, int], None]


def ignore_progress(done: int, total: int) -> None:
    """The default progress callback."""


class DownloadError(CheckpointError):
    """A model file could not be downloaded or did not match its manifest entry."""


class DownloadCancelled(DownloadError):
    """The download stopped on request; the partial file stays for the next fetch to resume."""


@dataclass(frozen=True)
class ModelEntry:
    """One pretrained model of the manifest."""

    id: str
    title: str
    method: str
    source_modality: str
    target_modality: str
    label_map: dict  # LabelMap.to_dict() form
    preprocessing: dict  # PreprocessConfig.to_dict() form
    file_name: str
    size_bytes: int
    sha256: str
    urls: tuple[str, ...]  # download locations, tried in order
    licence: str
    training_data: str
    measured: dict  # e.g. dataset, test_set, mean_dice, dice per structure, command, checkpoint
    bundled: str | None = None  # file name inside the packaged models folder, when the file ships


@dataclass(frozen=True)
class Manifest:
    version: int
    models: tuple[ModelEntry, ...]

    def entry(self, model_id: str) -> ModelEntry:
        for model in self.models:
            if model.id == model_id:
                return model
        known = ", ".join(model.id for model in self.models) or "none"
        raise InputDataError(f"no model {model_id!r} in the manifest; known models: {known}")


# ---- the manifest --------------------------------------------------------------------------------


def _plain_file_name(name: str, what: str) -> str:
    """Refuse a name that would leave its folder (``../x``, ``/x``, ``a/b``): names come from data."""
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise InputDataError(f"{what} must be a plain file name, not {name!r}")
    return name


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_download_url(url: str) -> str:
    """``url`` if it may be downloaded: https, or http to the loopback host; otherwise a clear error."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and _is_loopback(host):
        return url
    raise DownloadError(
        f"refusing to download from {url!r}: only https locations are allowed "
        "(plain http only to this computer, 127.0.0.1 / localhost)"
    )


def entry_from_dict(data: Any, index: int) -> ModelEntry:
    """One manifest entry, every field checked; errors name the entry."""
    from CardiacUDALib.io import LabelMap
    from CardiacUDALib.preprocess import PreprocessConfig

    if not isinstance(data, dict):
        raise InputDataError(f"manifest model {index} must be an object, not {data!r}")
    what = f"manifest model {data.get('id', index)}"
    types = field_types(ModelEntry)
    check_known_fields(data, set(types), what)
    values = {
        key: checked_field(data, key, annotation, what, None if key == "bundled" else REQUIRED)
        for key, annotation in types.items()
    }
    try:
        LabelMap.from_dict(values["label_map"])
        PreprocessConfig.from_dict(values["preprocessing"])
        _plain_file_name(values["file_name"], "'file_name'")
        if values["bundled"] is not None:
            _plain_file_name(values["bundled"], "'bundled'")
        for url in values["urls"]:
            check_download_url(url)
    except (InputDataError, DownloadError) as error:
        raise InputDataError(f"{what}: {error}") from error
    if not values["id"]:
        raise InputDataError(f"manifest model {index} has an empty 'id'")
    if values["size_bytes"] <= 0:
        raise InputDataError(f"{what}: 'size_bytes' must be positive, not {values['size_bytes']}")
    sha256 = values["sha256"].lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise InputDataError(f"{what}: 'sha256' must be 64 hexadecimal digits, not {values['sha256']!r}")
    return ModelEntry(**{**values, "sha256": sha256})


def load_manifest(path: Path | None = None) -> Manifest:
    """The manifest at ``path`` (default: the packaged one); a newer version or a bad entry is refused."""
    path = PACKAGED_MANIFEST if path is None else Path(path)
    data = read_json_file(path, "the model manifest")
    if not isinstance(data, dict):
        raise InputDataError(f"the model manifest {path} must be a JSON object with 'version' and 'models'")
    what = f"the model manifest {path}"
    check_known_fields(data, {"version", "models"}, what)
    version = checked_field(data, "version", int, what)
    if version > MANIFEST_VERSION:
        raise InputDataError(
            f"{what} has version {version}; this CardiacUDA reads up to version {MANIFEST_VERSION}: "
            "update CardiacUDA"
        )
    models = tuple(
        entry_from_dict(item, index) for index, item in enumerate(checked_field(data, "models", list, what))
    )
    ids = [model.id for model in models]
    duplicates = sorted({model_id for model_id in ids if ids.count(model_id) > 1})
    if duplicates:
        raise InputDataError(f"{what} lists these model ids more than once: {', '.join(duplicates)}")
    return Manifest(version, models)


# ---- the cache -----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The download cache: ``$CARDIAC_UDA_CACHE`` or ``~/.cache/cardiac-uda`` (read from where it exists;
    :func:`writable_cache_dir` before writing)."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "cardiac-uda").expanduser()


def writable_cache_dir(cache: Path | None = None) -> Path:
    """``cache`` (default :func:`cache_dir`), created when missing; a cache that cannot be written (a file,
    a read-only folder) is refused with what to do, only when something must be written into it."""
    folder = cache or cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputDataError(
            f"the model cache {folder} cannot be written ({error.strerror or error}): point {CACHE_VARIABLE} "
            "at a writable folder"
        ) from None
    return folder


def _mismatch(path: Path, entry: ModelEntry) -> str | None:
    """Why the file at ``path`` is not ``entry``'s file, or None when size and SHA-256 match."""
    size = path.stat().st_size
    if size != entry.size_bytes:
        return f"it has {size} bytes, the manifest says {entry.size_bytes}"
    digest = file_sha256(path)
    if digest != entry.sha256:
        return f"its SHA-256 is {digest}, the manifest says {entry.sha256}"
    return None


def _verified(path: Path, entry: ModelEntry) -> Path | None:
    return path if path.is_file() and _mismatch(path, entry) is None else None


def model_path(entry: ModelEntry, cache: Path | None = None) -> Path | None:
    """The verified local file of ``entry``: the cache's copy, else the packaged one; None when neither."""
    cached = _verified((cache or cache_dir()) / entry.file_name, entry)
    if cached is not None or entry.bundled is None:
        return cached
    return _verified(PACKAGED_MODELS / entry.bundled, entry)


def _written_here(folder: Path) -> set[str]:
    """The names of the files the cache wrote into ``folder`` (its index), as far as it can tell."""
    try:
        names = json.loads((folder / CACHE_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return (
        {name for name in names if isinstance(name, str) and Path(name).name == name}
        if isinstance(names, list)
        else set()
    )


def _record_written(folder: Path, *names: str) -> None:
    """Add ``names`` to the cache's index before the files are written: a crash leaves nothing unlisted."""
    write_json_atomic(folder / CACHE_INDEX, sorted(_written_here(folder) | set(names)))


def _install(entry: ModelEntry, destination: Path, place: Callable[[Path], None], source: str) -> Path:
    """Put the file into ``destination`` atomically with ``place(temporary)``, only when it is ``entry``'s."""
    _record_written(destination.parent, destination.name)
    with atomic_path(destination) as temporary:
        place(temporary)
        problem = _mismatch(temporary, entry)
        if problem is not None:
            raise DownloadError(f"refused {source} as model {entry.id!r}: {problem}")
    return destination


def import_file(path: Path, entry: ModelEntry | None = None, cache: Path | None = None) -> Path:
    """Copy a model file into the cache without network; checked against ``entry`` when one is given."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"cannot import {path}: no such file")
    folder = writable_cache_dir(cache)
    if entry is None:
        _record_written(folder, path.name)
        with atomic_path(folder / path.name) as temporary:
            shutil.copyfile(path, temporary)
        return folder / path.name
    return _install(
        entry, folder / entry.file_name, lambda temporary: shutil.copyfile(path, temporary), str(path)
    )


def entry_for_file(manifest: Manifest, path: Path) -> ModelEntry | None:
    """The manifest entry whose SHA-256 is that of the file at ``path``, if any."""
    digest = file_sha256(Path(path))
    return next((model for model in manifest.models if model.sha256 == digest), None)


def _delete_written(folder: Path, names: set[str]) -> int:
    """Delete those of ``names`` that the cache wrote into ``folder`` (its index); the number deleted."""
    written = _written_here(folder)
    if not names & written:
        return 0
    writable_cache_dir(folder)
    count = 0
    for name in sorted(names & written):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
            count += 1
    left = written - names
    if left:
        write_json_atomic(folder / CACHE_INDEX, sorted(left))
    else:
        (folder / CACHE_INDEX).unlink(missing_ok=True)
    return count


def remove(entry: ModelEntry, cache: Path | None = None) -> bool:
    """Delete ``entry``'s cached file and partial download; True when there was one."""
    return _delete_written(cache or cache_dir(), {entry.file_name, entry.file_name + PARTIAL_SUFFIX}) > 0


def clear(cache: Path | None = None) -> int:
    """Delete every file the cache wrote (model files, partial downloads); the number of files removed.

    Only the files of the cache's own index go, never files found by their names: a cache variable
    pointing at a folder of other files (a run's ``checkpoints/`` with its ``best.pt``) leaves them alone.
    """
    folder = cache or cache_dir()
    if folder.exists() and not folder.is_dir():
        raise InputDataError(
            f"the model cache {folder} is a file, not a folder: it holds nothing to clear; point "
            f"{CACHE_VARIABLE} at a folder"
        )
    return _delete_written(folder, _written_here(folder))


# ---- downloading ---------------------------------------------------------------------------------


def _body_start(response: requests.Response, part: Path, offset: int) -> int:
    """Where the response's body starts in the file: ``offset`` for a matching 206, 0 when Range was ignored.

    An answer that cannot continue the partial file (refused or other range) deletes it: the next
    fetch starts afresh.
    """
    check_download_url(response.url)  # where the redirects ended
    if response.status_code >= 400:
        if response.status_code == 416:
            part.unlink(missing_ok=True)
        raise DownloadError(f"{response.url} answered HTTP {response.status_code} {response.reason}")
    if not offset or response.status_code != 206:
        return 0
    if not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
        part.unlink()
        raise DownloadError(f"{response.url} answered the resume at byte {offset} with another range")
    return offset


def _download(
    url: str, part: Path, entry: ModelEntry, progress: Progress, should_stop: StopCheck, timeout: float
) -> None:
    """Stream ``url`` into ``part``, appending to what it holds when the server honours a Range request."""
    offset = part.stat().st_size if part.is_file() else 0
    if offset > entry.size_bytes:
        part.unlink()
        offset = 0
    if offset == entry.size_bytes:
        return
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        done = _body_start(response, part, offset)
        progress(done, entry.size_bytes)
        with part.open("ab" if done else "wb") as stream:
            for chunk in response.iter_content(CHUNK_BYTES):
                stream.write(chunk)
                done += len(chunk)
                progress(done, entry.size_bytes)
                if done > entry.size_bytes:
                    raise DownloadError(f"{url} sent more than the manifest's {entry.size_bytes} bytes")
                if should_stop():
                    stopped_at = f"{done} of {entry.size_bytes} bytes"
                    raise DownloadCancelled(
                        f"download of {entry.id!r} stopped at {stopped_at}; {_RESUME_HINT}"
                    )
    if done < entry.size_bytes:
        raise DownloadError(f"{url} closed the connection after {done} of {entry.size_bytes} bytes")


def fetch(
    entry: ModelEntry,
    cache: Path | None = None,
    progress: Progress | None = None,
    should_stop: StopCheck = never_stop,
    timeout: float = 30.0,
) -> Path:
    """Download ``entry``'s file into the cache (tried at each location in turn) and return its path.

    ``progress(bytes_done, bytes_total)`` follows the download; ``timeout`` (seconds) bounds the
    connection and every wait for data. A failed or stopped download keeps ``<file>.part`` for the next
    call to resume; a file of the wrong size or SHA-256 is deleted, the partial file with it.
    """
    for url in entry.urls:
        check_download_url(url)
    destination = (cache or cache_dir()) / entry.file_name
    if _verified(destination, entry) is not None:
        return destination
    folder = writable_cache_dir(cache)
    if not entry.urls:
        raise DownloadError(
            f"model {entry.id!r} has no download location; import its file with "
            f"`cardiac-uda models import FILE --id {entry.id}`"
        )
    part = folder / (entry.file_name + PARTIAL_SUFFIX)
    _record_written(folder, part.name)
    failures = []
    for url in entry.urls:
        try:
            _download(url, part, entry, progress or ignore_progress, should_stop, timeout)
            return _install(entry, destination, lambda temporary: os.replace(part, temporary), url)
        except DownloadCancelled:
            raise
        except DownloadError as error:
            failures.append(str(error))
        except requests.RequestException as error:
            failures.append(f"{url}: {error}")
        if part.is_file() and part.stat().st_size > entry.size_bytes:
            part.unlink()
    resume = f"; {_RESUME_HINT}" if part.is_file() else ""
    raise DownloadError(f"could not download model {entry.id!r}: {'; '.join(failures)}{resume}")


def resolve_model(
    model_id: str,
    manifest: Manifest | None = None,
    cache: Path | None = None,
    progress: Progress | None = None,
    should_stop: StopCheck = never_stop,
    timeout: float = 30.0,
) -> Path:
    """The local file of the manifest's model ``model_id``, downloaded first when there is none."""
    entry = (manifest or load_manifest()).entry(model_id)
    return model_path(entry, cache) or fetch(entry, cache, progress, should_stop, timeout)
