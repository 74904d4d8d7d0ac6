"""The panel's model menu logic: the manifest's models, a background download from a real HTTP server on
127.0.0.1 (progress, cancel), offline import, and the run each model action makes."""

from __future__ import annotations

from slicer_fixtures import mrml_fixture  # noqa: F401  (the mrml fixture)

# isort: split
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from CardiacUDASlicerLib.adaptation import WORK_DIR, AdaptationInputs, RunMode, choose_mode, prepare_run
from CardiacUDASlicerLib.catalog import describe_checkpoint
from CardiacUDASlicerLib.models import (
    ModelAction,
    ModelDownload,
    import_model_file,
    job_for_model,
    model_choices,
)
from CardiacUDASlicerLib.segmentations import segmentation_from_label_image
from CardiacUDASlicerLib.sources import SourcePair
from CardiacUDASlicerLib.volumes import add_volume_node, image_on_volume_grid
from model_server import (
    PAYLOAD,
    ModelFileHandler,
    checkpoint_bytes,
    manifest_json,
    model_entry,
    serving,
    serving_folder_in_a_process,
    ticks_with_the_gil_held,
    write_manifest,
)

from CardiacUDALib import weights
from CardiacUDALib.checkpoint import Checkpoint, save_checkpoint
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LABEL_MAPS
from CardiacUDALib.jobs import SegmentJob, TrainJob
from CardiacUDALib.weights import DownloadError, load_manifest

SLOW_PAUSE_S = 0.2  # between chunks: the whole payload takes over a second, a cancel is seen within one pause


class SlowModelFileHandler(ModelFileHandler):
    """Serves the payload one chunk per :data:`SLOW_PAUSE_S`, as a slow connection would."""

    def do_GET(self) -> None:
        payload = self.server.state.payload
        self.server.state.requests.append({"path": self.path, "range": self.headers.get("Range")})
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            for start in range(0, len(payload), weights.CHUNK_BYTES):
                self.wfile.write(payload[start : start + weights.CHUNK_BYTES])
                self.wfile.flush()
                time.sleep(SLOW_PAUSE_S)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: the cancel under test


@pytest.fixture(params=[ModelFileHandler, SlowModelFileHandler], ids=["fast", "slow"])
def server(request):
    with serving(request.param) as httpd:
        yield httpd


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_VARIABLE, str(folder))
    return folder


def test_a_model_downloads_in_the_background_with_progress_and_shows_as_downloaded(server, cache, tmp_path):
    manifest = load_manifest(
        write_manifest(tmp_path / "manifest.json", manifest_json(model_entry(server.url())))
    )
    (choice,) = model_choices(manifest)
    assert (
        choice.local is None
        and choice.label == "A test model (source_only, mean Dice 0.50; 0.3 MB to download)"
    )
    download = ModelDownload(choice.entry)
    download.start()
    outcome = download.wait(30)
    assert outcome.path == cache / "test_model.pt" and outcome.error is None and not outcome.cancelled
    assert outcome.path.read_bytes() == PAYLOAD and (download.done, download.total) == (len(PAYLOAD),) * 2
    (choice,) = model_choices(manifest)
    assert choice.local == outcome.path and choice.label.endswith("; downloaded)")


@pytest.mark.parametrize("server", [SlowModelFileHandler], indirect=True, ids=["slow"])
def test_cancel_stops_a_slow_download_and_the_outcome_says_cancelled(server, cache):
    download = ModelDownload(model_entry(server.url()))
    started = time.monotonic()
    download.start()
    while download.poll() is None and download.done == 0 and time.monotonic() - started < 10:
        time.sleep(0.01)  # polled as the panel's timer does
    download.cancel()
    outcome = download.wait(10)
    assert outcome.cancelled and outcome.path is None and "stopped at" in outcome.error
    assert 0 < download.done < len(PAYLOAD)  # stopped before the end
    assert not (cache / "test_model.pt").exists() and (cache / "test_model.pt.part").is_file()


@pytest.mark.parametrize("server", [ModelFileHandler], indirect=True, ids=["fast"])
def test_a_failed_download_ends_with_its_error(server, cache):
    download = ModelDownload(model_entry(server.url("/files/elsewhere.pt")))
    download.start()
    outcome = download.wait(30)
    assert outcome.path is None and not outcome.cancelled and "HTTP 404" in outcome.error


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="holds the GIL with libc's usleep")
def test_a_download_runs_on_while_the_main_thread_holds_the_gil_between_timer_ticks(cache, tmp_path):
    """As in Slicer: the panel polls every 200 ms and its thread keeps the GIL in between. A download in a
    thread got a few chunks per tick there (7.8 MB: 27 ticks against 5 in a process, benchmarks/
    panel_background.py); in a process of its own it takes the time the transfer takes."""
    payload = checkpoint_bytes(512 * weights.CHUNK_BYTES, seed=1)
    files = tmp_path / "files"
    files.mkdir()
    (files / "model.pt").write_bytes(payload)
    with serving_folder_in_a_process(files) as base:
        download = ModelDownload(model_entry(f"{base}/model.pt", payload))
        download.start()
        ticks = ticks_with_the_gil_held(download.poll, tick_s=0.2, limit=512 // 16)
    assert ticks <= 512 // 16, "the download did not finish within 32 ticks (6.4 s) for 512 chunks"
    assert download.outcome.path == cache / "test_model.pt" and download.outcome.path.read_bytes() == payload
    assert (download.done, download.total) == (len(payload), len(payload))
    assert not download.folder.exists()  # its job and output files go with it


def test_a_model_file_from_elsewhere_is_imported_as_the_manifest_model_it_is(cache, tmp_path):
    manifest_file = tmp_path / "manifest.json"
    manifest = load_manifest(
        write_manifest(manifest_file, manifest_json(model_entry("https://example.org/m.pt")))
    )
    copy = tmp_path / "from_a_usb_stick.pt"
    copy.write_bytes(PAYLOAD)
    choice = import_model_file(copy, manifest)
    assert choice.entry.id == "test_model" and choice.local == cache / "test_model.pt"
    assert choice.local.read_bytes() == PAYLOAD and model_choices(manifest)[0].local == choice.local
    other = tmp_path / "other.pt"
    other.write_bytes(b"not a listed model")
    with pytest.raises(DownloadError, match="none of the listed models \\(test_model\\)"):
        import_model_file(other, manifest)


# ---- what a run does with the model --------------------------------------------------------------

SHAPE = (5, 16, 18)
MSCMRSEG = LABEL_MAPS["mscmrseg"]


def volume(mrml, name: str):
    image = sitk.GetImageFromArray(np.random.default_rng(len(name)).normal(size=SHAPE).astype(np.float32))
    return add_volume_node(mrml.scene, image, name)


@pytest.fixture
def source_only_model(tmp_path):
    """A source_only checkpoint header (its networks are not needed to prepare a run)."""
    return save_checkpoint(
        Checkpoint("source_only", {}, MSCMRSEG.to_dict(), {}, {"networks": {}}), tmp_path / "model.pt"
    )


@pytest.fixture
def inputs(mrml) -> AdaptationInputs:
    source = volume(mrml, "bSSFP")
    labels = np.zeros(SHAPE, np.uint16)
    labels[1:4, 3:10, 4:12], labels[1:4, 5:8, 6:10], labels[2:5, 10:14, 12:16] = 200, 500, 600
    segmentation = segmentation_from_label_image(
        image_on_volume_grid(labels, source), MSCMRSEG, source, "bSSFP_manual", mrml.segmentations_logic
    )
    return AdaptationInputs([SourcePair(source, segmentation)], [volume(mrml, "LGE")])


def user_job() -> TrainJob:
    return TrainJob("varda", WORK_DIR, preset="fast", overrides={"iterations": 30}, device="cpu")


def test_segment_with_a_model_is_a_segment_job_on_the_targets(mrml, inputs, source_only_model, tmp_path):
    job, mode = job_for_model(source_only_model, ModelAction.SEGMENT, user_job())
    assert mode is RunMode.SEGMENT
    run = prepare_run(inputs, job, mode, tmp_path / "run", mrml.segmentations_logic)
    assert isinstance(run.job, SegmentJob) and run.job.checkpoint == source_only_model
    assert [case.name for case in run.job.cases] == ["LGE"] and run.method == "source_only"
    assert run.sources == []


def test_adabn_from_a_model_trains_nothing_and_reads_no_source(mrml, inputs, source_only_model, tmp_path):
    job, mode = job_for_model(source_only_model, ModelAction.ADABN, user_job())
    run = prepare_run(inputs, job, mode, tmp_path / "run", mrml.segmentations_logic)
    assert mode is RunMode.ADAPT and isinstance(run.job, TrainJob)
    assert (run.job.method, run.job.initial_checkpoint, run.job.overrides["iterations"]) == (
        "adabn",
        source_only_model,
        0,
    )
    assert run.job.source == [] and [case.name for case in run.job.target] == ["LGE"]


def test_self_training_from_a_model_trains_from_its_weights_on_sources_and_targets(
    mrml, inputs, source_only_model, tmp_path
):
    job, mode = job_for_model(source_only_model, ModelAction.SELF_TRAINING, user_job())
    run = prepare_run(inputs, job, mode, tmp_path / "run", mrml.segmentations_logic)
    assert mode is RunMode.REFINE and isinstance(run.job, TrainJob)
    assert (run.job.method, run.job.initial_checkpoint, run.job.overrides) == (
        "self_training",
        source_only_model,
        {"iterations": 30},
    )
    assert [case.name for case in run.job.source] == ["bSSFP"] and run.job.source[0].label.is_file()
    assert run.job.out_dir == tmp_path / "run" / WORK_DIR


def test_the_batch_rule_self_trains_a_model_when_asked_for_self_training(source_only_model):
    checkpoint = describe_checkpoint(source_only_model)
    assert "self_training" in checkpoint.refined_by
    assert choose_mode("self_training", checkpoint) is RunMode.REFINE
    assert choose_mode("adabn", checkpoint) is RunMode.ADAPT
    assert choose_mode("source_only", checkpoint) is RunMode.SEGMENT


def test_a_model_that_an_action_cannot_use_is_refused_with_advice(mrml, inputs, tmp_path):
    varda = save_checkpoint(
        Checkpoint("varda", {}, MSCMRSEG.to_dict(), {}, {"networks": {}}), tmp_path / "v.pt"
    )
    job, mode = job_for_model(varda, ModelAction.ADABN, user_job())
    with pytest.raises(InputDataError, match="is a varda model, so method 'adabn' cannot use it"):
        prepare_run(inputs, job, mode, tmp_path / "run", mrml.segmentations_logic)


def test_self_training_needs_the_labelled_sources(mrml, inputs, source_only_model, tmp_path):
    inputs.sources = []
    job, mode = job_for_model(source_only_model, ModelAction.SELF_TRAINING, user_job())
    with pytest.raises(InputDataError, match="missing: at least one labelled source"):
        prepare_run(inputs, job, mode, tmp_path / "run", mrml.segmentations_logic)
