"""The pretrained-model catalog: manifest, cache, downloads from a real HTTP server on 127.0.0.1, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import pytest
from model_server import PAYLOAD, checkpoint_entry, manifest_json, model_entry, serving, write_manifest
from test_slicer_packaging import cmake_list

from CardiacUDALib import cli, weights
from CardiacUDALib.checkpoint import check_manifest_entry
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LABEL_MAPS
from CardiacUDALib.weights import (
    CACHE_VARIABLE,
    PACKAGED_MODELS,
    DownloadCancelled,
    DownloadError,
    clear,
    fetch,
    import_file,
    load_manifest,
    model_path,
    remove,
    resolve_model,
)

REPOSITORY = Path(__file__).resolve().parents[1]
REMOVED = object()  # a manifest field left out


@pytest.fixture
def server():
    with serving() as httpd:
        yield httpd


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test's cache is its own folder: no test touches ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_VARIABLE, str(folder))
    return folder


def files_in(folder: Path) -> list[str]:
    """The files of ``folder`` but the cache's own index."""
    names = (path.name for path in folder.iterdir()) if folder.exists() else ()
    return sorted(name for name in names if name != weights.CACHE_INDEX)


# ---- downloads -----------------------------------------------------------------------------------


def test_fetch_downloads_into_the_cache_with_progress(server, cache):
    entry = model_entry(server.url())
    seen: list[tuple[int, int]] = []
    path = fetch(entry, progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "test_model.pt" and path.read_bytes() == PAYLOAD
    assert files_in(cache) == ["test_model.pt"]
    done = [step for step, _ in seen]
    assert len(seen) > 3 and done == sorted(done) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert {total for _, total in seen} == {len(PAYLOAD)}
    assert model_path(entry) == path
    assert fetch(entry) == path and len(server.state.requests) == 1  # a verified copy: no new request


def test_a_file_with_the_wrong_hash_is_refused_and_nothing_stays(server, cache):
    entry = model_entry(server.url(), sha256=hashlib.sha256(b"another file").hexdigest())
    with pytest.raises(DownloadError, match="SHA-256"):
        fetch(entry)
    assert files_in(cache) == []
    assert model_path(entry) is None


def test_a_file_longer_than_the_manifest_says_is_refused_and_nothing_stays(server, cache):
    entry = model_entry(server.url(), size_bytes=len(PAYLOAD) - 100)
    with pytest.raises(DownloadError, match="more than"):
        fetch(entry)
    assert files_in(cache) == []


def test_a_broken_download_resumes_with_a_range_request(server, cache):
    server.state.close_after = 2 * weights.CHUNK_BYTES + 100
    entry = model_entry(server.url())
    with pytest.raises(DownloadError, match="resume"):
        fetch(entry)
    part = cache / "test_model.pt.part"
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and not (cache / "test_model.pt").exists()
    assert part.read_bytes() == PAYLOAD[:kept]
    seen: list[int] = []
    path = fetch(entry, progress=lambda done, total: seen.append(done))
    assert server.state.requests[-1]["range"] == f"bytes={kept}-"
    assert seen[0] == kept and path.read_bytes() == PAYLOAD and files_in(cache) == ["test_model.pt"]


def test_a_server_that_ignores_range_restarts_the_file(server, cache):
    server.state.close_after = weights.CHUNK_BYTES + 10
    entry = model_entry(server.url())
    with pytest.raises(DownloadError):
        fetch(entry)
    assert (cache / "test_model.pt.part").stat().st_size > 0
    server.state.ignore_range = True
    assert fetch(entry).read_bytes() == PAYLOAD
    assert server.state.requests[-1]["range"] is not None and files_in(cache) == ["test_model.pt"]


def test_a_missing_file_is_an_error_naming_404(server, cache):
    with pytest.raises(DownloadError, match="404"):
        fetch(model_entry(server.url("/files/missing.pt")))
    assert files_in(cache) == []


def test_a_stalled_server_hits_the_timeout(server, cache):
    server.state.stall_after = weights.CHUNK_BYTES // 2
    started = time.monotonic()
    with pytest.raises(DownloadError, match="(?i)timed out"):
        fetch(model_entry(server.url()), timeout=0.5)
    assert time.monotonic() - started < 5
    assert not (cache / "test_model.pt").exists()


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/hostname",
        "ftp://127.0.0.1/files/model.pt",
        "http://example.com/files/model.pt",
        "https:///files/model.pt",
    ],
)
def test_locations_other_than_https_or_loopback_http_are_refused_before_any_request(server, cache, url):
    entry = model_entry(server.url(), urls=(server.url(), url))
    with pytest.raises(DownloadError, match="only https"):
        fetch(entry)
    assert server.state.requests == [] and files_in(cache) == []


def test_a_stopped_download_keeps_its_part_and_the_next_fetch_resumes(server, cache):
    entry = model_entry(server.url())
    seen: list[int] = []
    with pytest.raises(DownloadCancelled, match="resume"):
        fetch(entry, progress=lambda done, total: seen.append(done), should_stop=lambda: seen[-1] > 0)
    kept = (cache / "test_model.pt.part").stat().st_size
    assert 0 < kept < len(PAYLOAD) and kept == seen[-1] and not (cache / "test_model.pt").exists()
    assert fetch(entry).read_bytes() == PAYLOAD
    assert server.state.requests[-1]["range"] == f"bytes={kept}-"


def test_resolve_model_uses_a_local_copy_else_fetches(server, cache, tmp_path):
    entry = model_entry(server.url())
    manifest = weights.Manifest(weights.MANIFEST_VERSION, (entry,))
    assert resolve_model("test_model", manifest).read_bytes() == PAYLOAD
    assert resolve_model("test_model", manifest) == cache / "test_model.pt"
    assert len(server.state.requests) == 1
    with pytest.raises(InputDataError, match="known models: test_model"):
        resolve_model("other", manifest)


# ---- offline import, remove, clear, packaged files -----------------------------------------------


def test_import_checks_the_hash_and_copies_into_the_cache(cache, tmp_path):
    entry = model_entry("https://example.org/test_model.pt")
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(DownloadError, match="SHA-256"):
        import_file(wrong, entry)
    assert files_in(cache) == [] and model_path(entry) is None
    right = tmp_path / "downloaded elsewhere.pt"
    right.write_bytes(PAYLOAD)
    assert import_file(right, entry) == cache / "test_model.pt" == model_path(entry)
    assert right.read_bytes() == PAYLOAD  # a copy: the file given stays


def test_remove_and_clear(cache, tmp_path):
    entry = model_entry("https://example.org/test_model.pt")
    source = tmp_path / "model.pt"
    source.write_bytes(PAYLOAD)
    import_file(source, entry)
    assert remove(entry) is True and model_path(entry) is None and remove(entry) is False
    import_file(source, entry)
    (cache / "other.pt.part").write_bytes(b"partial")  # named like the cache's files, not written by it
    (cache / "notes.txt").write_text("not a model")
    assert clear() == 1 and files_in(cache) == ["notes.txt", "other.pt.part"]


def test_clear_deletes_only_what_the_cache_wrote_never_by_name(cache, tmp_path, monkeypatch):
    """A cache variable pointing into a run's checkpoints/ folder: `models clear` said "removed 2
    file(s)" and best.pt and last.pt were gone. The cache keeps an index of what it wrote."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (checkpoints / name).write_bytes(b"a training checkpoint")
    monkeypatch.setenv(weights.CACHE_VARIABLE, str(checkpoints))
    entry = model_entry("https://example.org/test_model.pt")
    source = tmp_path / "model.pt"
    source.write_bytes(PAYLOAD)
    import_file(source, entry)
    assert clear() == 1 and files_in(checkpoints) == ["best.pt", "last.pt"]
    assert clear() == 0 and remove(dataclasses.replace(entry, file_name="best.pt")) is False
    assert files_in(checkpoints) == ["best.pt", "last.pt"]


def test_a_bundled_file_is_used_when_the_cache_has_none(cache, tmp_path, monkeypatch):
    packaged = tmp_path / "packaged"
    packaged.mkdir()
    monkeypatch.setattr(weights, "PACKAGED_MODELS", packaged)
    entry = model_entry("https://example.org/test_model.pt", bundled="shipped.pt")
    assert model_path(entry) is None
    (packaged / "shipped.pt").write_bytes(PAYLOAD[::-1])  # a damaged copy is not used
    assert model_path(entry) is None
    (packaged / "shipped.pt").write_bytes(PAYLOAD)
    assert model_path(entry) == packaged / "shipped.pt"


def test_the_packaged_manifest_loads_and_ships_with_pip_and_cmake():
    manifest = load_manifest()
    assert manifest.version == weights.MANIFEST_VERSION
    shipped = {
        str(path.relative_to(REPOSITORY))
        for path in weights.PACKAGED_MODELS.iterdir()
        if path.suffix in (".json", ".pt")
    }
    assert shipped == cmake_list(REPOSITORY / "CardiacUDALib/CMakeLists.txt", "LIBRARY_DATA_FILES")
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert 'CardiacUDALib = ["models/*.json", "models/*.pt"]' in pyproject
    for entry in manifest.models:
        assert entry.bundled is None or (weights.PACKAGED_MODELS / entry.bundled).is_file()


# ---- the manifest --------------------------------------------------------------------------------


def test_a_manifest_round_trips_its_entries(tmp_path):
    entry = model_entry("https://example.org/test_model.pt")
    manifest = load_manifest(write_manifest(tmp_path / "manifest.json", manifest_json(entry)))
    assert manifest.entry("test_model") == entry
    with pytest.raises(InputDataError, match="no model 'nope'.*known models: test_model"):
        manifest.entry("nope")


def test_a_newer_manifest_version_is_refused(tmp_path):
    path = write_manifest(tmp_path / "manifest.json", manifest_json(version=weights.MANIFEST_VERSION + 1))
    with pytest.raises(InputDataError, match="version 2.*update CardiacUDA"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": REMOVED}, "test_model has no 'sha256'"),
        ({"size_bytes": "big"}, "'size_bytes' must be an integer"),
        ({"sha256": "abc"}, "64 hexadecimal"),
        ({"file_name": "../outside.pt"}, "plain file name"),
        ({"urls": ["ftp://example.org/x.pt"]}, "only https"),
        ({"label_map": {"name": "x"}}, "label map"),
        ({"preprocessing": {"size": 2}}, "size must be an integer of at least"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_a_malformed_entry_is_refused_by_name(tmp_path, change, message):
    data = manifest_json(model_entry("https://example.org/test_model.pt"))
    entry = {**data["models"][0], **change}
    data["models"][0] = {key: value for key, value in entry.items() if value is not REMOVED}
    with pytest.raises(InputDataError, match=message) as refused:
        load_manifest(write_manifest(tmp_path / "manifest.json", data))
    assert "test_model" in str(refused.value)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"version": 1}', '{"version": "1", "models": []}'])
def test_a_malformed_manifest_is_refused(tmp_path, text):
    path = tmp_path / "manifest.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputDataError, match="manifest"):
        load_manifest(path)


def test_duplicate_ids_are_refused(tmp_path):
    entry = model_entry("https://example.org/test_model.pt")
    with pytest.raises(InputDataError, match="more than once: test_model"):
        load_manifest(write_manifest(tmp_path / "manifest.json", manifest_json(entry, entry)))


# ---- the command ---------------------------------------------------------------------------------


def test_models_list_fetch_path_import_remove_through_the_command(
    server, cache, tmp_path, tiny_model, capsys
):
    server.state.payload = tiny_model.read_bytes()
    entry = checkpoint_entry(server.url(), tiny_model)
    manifest = str(write_manifest(tmp_path / "manifest.json", manifest_json(entry)))
    assert cli.main(["models", "path", "test_model", "--manifest", manifest]) == 1
    assert "cardiac-uda models fetch test_model" in capsys.readouterr().err
    assert cli.main(["models", "list", "--manifest", manifest]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:3] == ["id", "title", "method"]
    assert listed[1].startswith("test_model") and "bSSFP -> LGE" in listed[1] and "0.500" in listed[1]
    assert listed[1].endswith("no")
    assert cli.main(["models", "fetch", "test_model", "--manifest", manifest]) == 0
    fetched = capsys.readouterr()
    assert fetched.out.strip() == str(cache / "test_model.pt") and "test_model" in fetched.err  # the bar
    assert cli.main(["models", "path", "test_model", "--manifest", manifest]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "test_model.pt")
    assert cli.main(["models", "list", "--manifest", manifest]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("yes")
    assert cli.main(["models", "remove", "test_model", "--manifest", manifest]) == 0
    copy = tmp_path / "copy.pt"
    copy.write_bytes(server.state.payload)
    assert cli.main(["models", "import", str(copy), "--manifest", manifest]) == 0  # found by its SHA-256
    assert capsys.readouterr().out.strip().endswith(str(cache / "test_model.pt"))
    copy.write_bytes(b"not a model")
    assert cli.main(["models", "import", str(copy), "--manifest", manifest]) == 1
    assert "give --id" in capsys.readouterr().err
    assert cli.main(["models", "clear"]) == 0 and files_in(cache) == []
    assert "removed 1 file(s)" in capsys.readouterr().out


def test_segment_with_a_model_id_fetches_it(server, cache, tmp_path, tiny_model, tiny_phantom, capsys):
    server.state.payload = tiny_model.read_bytes()
    entry = checkpoint_entry(server.url(), tiny_model)
    manifest = str(write_manifest(tmp_path / "manifest.json", manifest_json(entry)))
    image = tiny_phantom.target[0].image
    out = tmp_path / "segmented"
    arguments = ["segment", "--images", str(image), "--out", str(out), "--device", "cpu"]
    assert cli.main([*arguments, "--model", "test_model", "--manifest", manifest]) == 0
    assert (cache / "test_model.pt").read_bytes() == server.state.payload
    assert [path.name for path in out.iterdir()] == [f"{tiny_phantom.target[0].name}_seg.nii.gz"]
    with pytest.raises(SystemExit):
        cli.main([*arguments, "--model", "test_model", "--checkpoint", str(tiny_model)])
    capsys.readouterr()


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"method": "varda"}, "method: the manifest says varda, the file source_only"),
        ({"label_map": LABEL_MAPS["mmwhs"].to_dict()}, "label map: the manifest says"),
    ],
)
def test_a_manifest_entry_that_misdescribes_its_file_is_refused(
    server, cache, tmp_path, tiny_model, tiny_phantom, capsys, change, differs
):
    """The SHA-256 matches (it is the entry's file), but the entry says another method or label map."""
    server.state.payload = tiny_model.read_bytes()
    entry = checkpoint_entry(server.url(), tiny_model, **change)
    manifest = str(write_manifest(tmp_path / "manifest.json", manifest_json(entry)))
    out = tmp_path / "segmented"
    arguments = ["segment", "--images", str(tiny_phantom.target[0].image), "--out", str(out)]
    assert cli.main([*arguments, "--model", "test_model", "--manifest", manifest]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        error.startswith("error: model 'test_model' is not what its manifest entry says") and differs in error
    )
    assert not out.exists()
    assert cli.main(["models", "import", str(tiny_model), "--manifest", manifest]) == 1
    assert differs in capsys.readouterr().err


def test_the_shipped_manifest_describes_its_files():
    for entry in load_manifest().models:
        if entry.bundled is not None:
            check_manifest_entry(PACKAGED_MODELS / entry.bundled, entry)


def test_a_cache_that_cannot_be_written_still_gives_the_bundled_model(tmp_path, monkeypatch):
    """A cache variable pointing at a file (or a read-only folder) breaks only what must write there."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    monkeypatch.setenv(CACHE_VARIABLE, str(blocker))
    entry = load_manifest().entry("mscmrseg-c0-lge-gin-st")
    assert model_path(entry) == PACKAGED_MODELS / entry.bundled
    with pytest.raises(InputDataError, match=f"the model cache {blocker} is a file, not a folder"):
        clear()
    assert blocker.read_text() == "not a folder\n"
    with pytest.raises(InputDataError, match=f"the model cache {blocker} cannot be written"):
        import_file(PACKAGED_MODELS / entry.bundled)
