"""Engine behaviour: training, checkpoint selection, resume, stop, errors, inference geometry."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import tiny_request

from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.engine import run_job
from CardiacUDALib.errors import CardiacUDAError, CheckpointError, InputDataError
from CardiacUDALib.evaluation import evaluate_cases
from CardiacUDALib.inference import (
    FLIP_AXES,
    TrainedModel,
    keep_largest_components,
    predict_slices,
    segment_cases,
)
from CardiacUDALib.io import load_case, read_image, read_label
from CardiacUDALib.memory import check_training_fits, training_bytes
from CardiacUDALib.methods import get_method
from CardiacUDALib.methods.source_only import SourceOnly
from CardiacUDALib.preprocess import prepare_volume
from CardiacUDALib.runfolder import LOCK_FILE_NAME, locked
from CardiacUDALib.training import train


def test_training_writes_checkpoints_history_and_selects_on_validation(tiny_phantom, label_map, tmp_path):
    events = []
    outcome = train(tiny_request(tiny_phantom, label_map, tmp_path), events.append)
    kinds = [event["event"] for event in events]
    assert kinds.count("validation") == 2 and "checkpoint" in kinds and kinds[-1] == "trained"
    progress = [event for event in events if event["event"] == "progress"]
    assert progress[-1]["step"] == 6 and progress[-1]["total"] == 6 and progress[-1]["eta_s"] == 0
    assert set(progress[-1]["losses"]) == {"loss", "cross_entropy", "dice"}
    best_validation = max(outcome.history["validation"], key=lambda entry: entry["mean"])
    best = load_checkpoint(outcome.best_checkpoint, expected_method="source_only")
    assert best.step == best_validation["step"]
    assert "optimizers" not in best.state  # the deliverable carries weights only
    assert load_checkpoint(outcome.last_checkpoint).step == 6
    assert json.loads((tmp_path / "history.json").read_text())["validation"] == outcome.history["validation"]
    assert "validation" in outcome.selection and "step" in outcome.selection


def test_stopped_run_resumes_at_the_step_it_stopped_and_matches_an_uninterrupted_run(
    tiny_phantom, label_map, tmp_path
):
    uninterrupted = train(tiny_request(tiny_phantom, label_map, tmp_path / "straight"))
    steps_seen = []

    def stop_after_four() -> bool:
        return len(steps_seen) >= 4

    def record(event):
        if event["event"] == "progress":
            steps_seen.append(event["step"])

    stopped = train(tiny_request(tiny_phantom, label_map, tmp_path / "resumed"), record, stop_after_four)
    assert stopped.stopped and stopped.steps_done == 4
    assert load_checkpoint(stopped.last_checkpoint).step == 4
    resumed_events = []
    resumed = train(tiny_request(tiny_phantom, label_map, tmp_path / "resumed"), resumed_events.append)
    first_progress = next(event for event in resumed_events if event["event"] == "progress")
    assert first_progress["step"] == 5 and resumed.steps_done == 6
    # batches are a function of (seed, step), so the resumed run ends with the same weights
    straight = load_checkpoint(uninterrupted.last_checkpoint).state["networks"]["segmenter"]
    after_resume = load_checkpoint(resumed.last_checkpoint).state["networks"]["segmenter"]
    for name, tensor in straight.items():
        assert torch.allclose(tensor.float(), after_resume[name].float(), atol=1e-5), name


def test_resume_refuses_a_checkpoint_of_another_method(tiny_phantom, label_map, tmp_path):
    train(tiny_request(tiny_phantom, label_map, tmp_path))
    with pytest.raises(CheckpointError, match="source_only"):
        train(tiny_request(tiny_phantom, label_map, tmp_path, method="adabn"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source": []}, "no labelled source"),
        ({"label_map": None}, "no label map"),
        ({"method": "adabn", "target": []}, "target images"),
        ({"method": "nosuchmethod"}, "unknown method"),
        ({"overrides": {"nosuchsetting": 1}}, "unknown setting"),
        ({"preset": "turbo"}, "no preset"),
        (
            {"device": "cuda"} if not torch.cuda.is_available() else {"overrides": {"iterations": 0}},
            "cuda|iterations=0",
        ),
    ],
)
def test_bad_requests_give_clear_errors(tiny_phantom, label_map, tmp_path, changes, message):
    with pytest.raises(CardiacUDAError, match=message):
        train(tiny_request(tiny_phantom, label_map, tmp_path, **changes))


def test_empty_source_label_map_is_refused_by_name(tiny_phantom, label_map, tmp_path):
    label = read_label(tiny_phantom.source[0].label, label_map)
    empty = sitk.Image(label.GetSize(), sitk.sitkUInt16)
    empty.CopyInformation(label)
    empty_path = tmp_path / "empty_label.nii.gz"
    sitk.WriteImage(empty, str(empty_path))
    case = dataclasses.replace(tiny_phantom.source[0], label=empty_path)
    with pytest.raises(InputDataError, match="empty_label"):
        train(tiny_request(tiny_phantom, label_map, tmp_path / "run", source=[case]))


def test_out_of_gpu_memory_suggests_a_smaller_batch_or_the_cpu(
    tiny_phantom, label_map, tmp_path, monkeypatch
):
    def exhausted(self, source, target):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SourceOnly, "train_step", exhausted)
    with pytest.raises(CardiacUDAError, match=r"batch_size=2.*--device cpu"):
        train(tiny_request(tiny_phantom, label_map, tmp_path))


def test_diverging_training_stops_with_advice_and_keeps_the_last_checkpoint(
    tiny_phantom, label_map, tmp_path, monkeypatch
):
    train(tiny_request(tiny_phantom, label_map, tmp_path))
    monkeypatch.setattr(SourceOnly, "train_step", lambda self, source, target: {"loss": float("nan")})
    longer = {"iterations": 8, "validate_every": 3, "checkpoint_every": 3, "batch_size": 4}  # only longer
    with pytest.raises(CardiacUDAError, match="diverged at step 7.*learning rate"):
        train(tiny_request(tiny_phantom, label_map, tmp_path, overrides=longer))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt").step == 6


def test_segmentation_lands_on_the_input_grid_with_file_label_values(tiny_phantom, label_map, tmp_path):
    outcome = train(tiny_request(tiny_phantom, label_map, tmp_path / "run"))
    model = TrainedModel.load(outcome.best_checkpoint, "cpu")
    paths = segment_cases(model, tiny_phantom.target[:2], tmp_path / "segs")
    for path, case in zip(paths, tiny_phantom.target[:2]):
        image, segmentation = read_image(case.image), sitk.ReadImage(str(path))
        assert segmentation.GetSize() == image.GetSize()
        assert segmentation.GetSpacing() == pytest.approx(image.GetSpacing())
        assert segmentation.GetOrigin() == pytest.approx(image.GetOrigin())
        assert segmentation.GetDirection() == pytest.approx(image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(segmentation))) <= {0, 200, 500, 600}
    table = evaluate_cases(paths, tiny_phantom.target[:2], label_map)
    assert [name for name, _ in table.rows] == [case.name for case in tiny_phantom.target[:2]]


def test_largest_component_keeps_one_blob_per_structure():
    classes = np.zeros((4, 10, 10), np.uint8)
    classes[1:3, 1:5, 1:5] = 2  # 32 voxels
    classes[0, 8, 8] = 2  # a stray voxel of the same structure
    classes[3, 0, 9] = 1  # a lone structure stays
    cleaned = keep_largest_components(classes, 4)
    assert (cleaned == 2).sum() == 32 and cleaned[0, 8, 8] == 0 and cleaned[3, 0, 9] == 1


def test_every_registered_method_builds_from_both_presets():
    for key in ("source_only", "adabn"):
        method = get_method(key)
        assert set(method.presets) >= {"paper", "fast"} and method.description


def test_weighted_cross_entropy_is_finite_on_an_all_background_batch_and_weights_rare_classes():
    from CardiacUDALib.losses.segmentation import class_fraction_weights, weighted_cross_entropy

    logits = torch.randn(2, 4, 8, 8)
    background = torch.zeros(2, 8, 8, dtype=torch.long)
    assert weighted_cross_entropy(logits, background).item() == 0.0  # w_background = 1 - 1
    labels = background.clone()
    labels[:, :2, :2] = 3  # 8 of 128 pixels
    assert class_fraction_weights(labels, 4).tolist() == pytest.approx([8 / 128, 1.0, 1.0, 1 - 8 / 128])


def test_a_stop_during_segmentation_after_training_is_reported_as_stopped(tiny_phantom, label_map, tmp_path):
    request = tiny_request(tiny_phantom, label_map, tmp_path / "run")
    job = {
        "task": "train",
        **request.to_dict(),
        "segment": [{"name": c.name, "image": str(c.image)} for c in tiny_phantom.target],
    }
    segmented: list[str] = []

    def record(event: dict) -> None:
        if event["event"] == "progress" and "case" in event:
            segmented.append(event["case"])

    result = run_job(job, record, should_stop=lambda: len(segmented) >= 2)
    assert result["stopped"] is True and result["steps"] == 6
    assert [p.split("/")[-1] for p in result["segmentations"]] == ["case000_seg.nii.gz", "case001_seg.nii.gz"]


def test_flip_averaging_makes_the_prediction_flip_equivariant(tiny_model, tiny_phantom):
    model = TrainedModel.load(tiny_model, "cpu")
    image, _ = load_case(tiny_phantom.target[0], model.label_map)
    slices = prepare_volume(image, model.preprocess).with_context(1)
    plain = predict_slices(model.method, slices)
    averaged = predict_slices(model.method, slices, flip_averaging=True)
    assert len(np.unique(averaged)) > 1  # a prediction with structure, so equivariance says something
    for axes in FLIP_AXES[1:]:
        flipped = predict_slices(model.method, np.flip(slices, axes).copy(), flip_averaging=True)
        assert (flipped == np.flip(averaged, axes)).mean() > 0.999  # ties of the argmax aside
    plain_flipped = predict_slices(model.method, np.flip(slices, -1).copy())
    assert not np.array_equal(plain_flipped, np.flip(plain, -1))  # without averaging it is not


@pytest.mark.parametrize(
    "appearance",
    [
        {"appearance": "gin_ipa"},
        {"appearance": "slaug", "intensity": "minmax", "deform": True},
    ],
    ids=["gin_ipa", "slaug_deform"],
)
def test_appearance_augmentation_resumes_exactly(appearance, tiny_phantom, label_map, tmp_path):
    """GIN and SLAug draw from torch's per-step seed, the deformation from the step's numpy generator:
    a stopped and resumed run equals an uninterrupted one."""
    settings = {
        **appearance,
        "norm": "instance",
        "iterations": 4,
        "checkpoint_every": 2,
        "batch_size": 2,
    }
    whole = train(tiny_request(tiny_phantom, label_map, tmp_path / "whole", overrides=settings))
    stops = iter([False, False, True])
    train(
        tiny_request(tiny_phantom, label_map, tmp_path / "split", overrides=settings),
        should_stop=lambda: next(stops, False),
    )
    resumed = train(tiny_request(tiny_phantom, label_map, tmp_path / "split", overrides=settings))
    assert whole.history["losses"] == resumed.history["losses"]
    assert ("consistency" in whole.history["losses"][-1]) == (appearance["appearance"] == "gin_ipa")
    for name, tensor in load_checkpoint(whole.last_checkpoint).state["networks"]["segmenter"].items():
        torch.testing.assert_close(
            tensor, load_checkpoint(resumed.last_checkpoint).state["networks"]["segmenter"][name]
        )


def test_a_run_folder_is_locked_while_a_process_trains_in_it(tmp_path):
    folder = tmp_path / "run"
    with locked(folder):
        assert (folder / LOCK_FILE_NAME).read_text().startswith(f"process {os.getpid()} on ")
        with pytest.raises(
            InputDataError, match=f"the run folder {folder} is in use by process {os.getpid()}"
        ):
            with locked(folder):
                pass
        (folder / "history.json").write_text("{}")
    assert sorted(path.name for path in folder.iterdir()) == ["history.json"]  # the lock went, the run stays
    with locked(tmp_path / "failed"):
        pass
    assert not (tmp_path / "failed").exists()  # a folder made only for the lock goes again


def test_resuming_with_other_settings_is_refused_with_the_differences_named(
    tiny_phantom, label_map, tmp_path
):
    train(tiny_request(tiny_phantom, label_map, tmp_path, overrides={"iterations": 2, "batch_size": 4}))
    other = tiny_request(tiny_phantom, label_map, tmp_path, overrides={"iterations": 2, "batch_size": 2})
    other.preprocess = dataclasses.replace(other.preprocess, size=48)
    with pytest.raises(
        InputDataError, match=r"other settings: batch_size 4 \(asked: 2\); size 64 \(asked: 48\)"
    ):
        train(other)
    longer = train(
        tiny_request(tiny_phantom, label_map, tmp_path, overrides={"iterations": 3, "batch_size": 4})
    )
    assert longer.steps_done == 3  # only the length may change


def test_a_size_far_beyond_memory_is_refused_before_anything_is_allocated():
    method_class = get_method("source_only")
    config = method_class.config_class(batch_size=2)
    weights, outputs = training_bytes(method_class, config, 4, 64)
    assert weights == sum(
        p.numel() for p in SourceOnly(config, 4, torch.device("cpu")).segmenter.parameters()
    )
    assert training_bytes(method_class, config, 4, 128)[1] == 4 * outputs  # layer outputs grow with the area
    check_training_fits(method_class, config, 4, 192, torch.device("cpu"))  # a real size fits
    with pytest.raises(InputDataError, match="slices of 100000 x 100000"):
        check_training_fits(method_class, config, 4, 100_000, torch.device("cpu"))
