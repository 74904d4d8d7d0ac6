"""Scans as a scanner writes them: the heart anywhere in a field of view larger than the network's window."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import tiny_request

from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.data import LoadedVolume, SlicePool, load_volumes
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.inference import TrainedModel, missing_heart, segment_cases
from CardiacUDALib.io import load_case, read_image, write_image
from CardiacUDALib.metrics import dice_coefficient
from CardiacUDALib.preprocess import (
    MEDIAN_SOURCE_SPACING,
    PreprocessConfig,
    _crop_or_pad_regions,
    _in_plane_grid,
    in_plane_spacing_of,
    prepare_volume,
    resolve_spacing,
    spacing_problem,
)
from CardiacUDALib.run_settings import run_settings
from CardiacUDALib.runfolder import RunFolder
from CardiacUDALib.training import train

REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPOSITORY / "CardiacUDALib/models/mscmrseg_c0_lge_gin_self_training.pt"
LGE_VOLUME = next(
    (
        path
        for path in (
            REPOSITORY.parent / "shared/data/mscmrseg19_c0_lge_192/LGE/patient20_LGE.nii.gz",
            Path("/work/shared/data/mscmrseg19_c0_lge_192/LGE/patient20_LGE.nii.gz"),
        )
        if path.exists()
    ),
    None,
)
# Labels of a phantom target volume, and of the same volume placed in a corner of a field of view three
# times as wide: the least Dice per structure.
SAME_LABELS_DICE = 0.9


def placed_in_a_larger_field_of_view(image: sitk.Image, factor: int, corner: tuple[int, int]) -> sitk.Image:
    """``image`` (z, y, x) inside a ``factor`` times wider and taller field of view at in-plane offset
    ``corner`` (rows, columns), the rest at the image's lowest value, on a grid of the same spacing."""
    array = sitk.GetArrayFromImage(image)
    slices, rows, columns = array.shape
    larger = np.full((slices, rows * factor, columns * factor), array.min(), dtype=array.dtype)
    larger[:, corner[0] : corner[0] + rows, corner[1] : corner[1] + columns] = array
    placed = sitk.GetImageFromArray(larger)
    placed.SetSpacing(image.GetSpacing())
    placed.SetDirection(image.GetDirection())
    placed.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((-corner[1], -corner[0], 0)))
    return placed


def test_the_window_follows_a_given_centre_and_stays_inside_the_slice():
    centred = ((slice(100, 200), slice(100, 200)), (slice(0, 100), slice(0, 100)))
    assert _crop_or_pad_regions((300, 300), 100) == centred
    (rows, columns), _ = _crop_or_pad_regions((300, 400), 100, centre=(40.0, 380.0))
    assert (rows, columns) == (slice(0, 100), slice(300, 400))  # pushed back inside at both edges
    (rows, columns), _ = _crop_or_pad_regions((300, 400), 100, centre=(150.0, 200.0))
    assert (rows, columns) == (slice(100, 200), slice(150, 250))
    (rows, columns), network = _crop_or_pad_regions((60, 400), 100, centre=(30.0, 200.0))
    assert rows == slice(0, 60) and network[0] == slice(20, 80)  # a short side is padded as before


def test_intensities_are_normalised_with_what_the_window_sees():
    """Whatever lies outside the window (another field of view, bright arms) does not change the slices."""
    rng = np.random.default_rng(0)
    heart = rng.normal(100.0, 20.0, size=(3, 32, 32)).astype(np.float32)
    image = sitk.GetImageFromArray(heart)
    larger = sitk.GetArrayFromImage(placed_in_a_larger_field_of_view(image, 3, (0, 0)))
    larger[:, 40:, 40:] = 5000.0  # far brighter than the heart, outside its window
    wide = sitk.GetImageFromArray(larger)
    config = PreprocessConfig(size=32, intensity="minmax")
    near = prepare_volume(image, config).slices
    far = prepare_volume(wide, config, centre=(15.5, 15.5)).slices
    np.testing.assert_allclose(far, near, atol=1e-6)


def test_a_heart_in_a_corner_of_a_wide_field_of_view_gets_the_labels_it_gets_alone(
    trained_source_model, phantom, label_map, tmp_path
):
    model = TrainedModel.load(trained_source_model.best_checkpoint, "cpu")
    image = read_image(phantom.source[9].image)  # held out of its training: labels it gets right
    rows, columns = sitk.GetArrayViewFromImage(image).shape[1:]
    corner = (2 * rows - 4, 2 * columns - 10)  # the bottom right corner, off the middle by a window
    alone = sitk.GetArrayFromImage(model.segment_image(image))
    regions = []
    wide_image = placed_in_a_larger_field_of_view(image, 3, corner)
    wide = sitk.GetArrayFromImage(model.segment_image(wide_image, on_heart_region=regions.append))
    inside = wide[:, corner[0] : corner[0] + rows, corner[1] : corner[1] + columns]
    assert np.count_nonzero(inside) >= 0.98 * np.count_nonzero(wide)  # next to nothing labelled elsewhere
    (region,) = regions  # the window the heart was found in holds every labelled voxel
    labelled = [
        wide_image.TransformIndexToPhysicalPoint([int(i) for i in kji[::-1]]) for kji in np.argwhere(wide)
    ]
    along_axes = (np.asarray(labelled) - region["centre"]) @ np.reshape(region["direction"], (3, 3))
    assert np.all(np.abs(along_axes) <= np.asarray(region["size"]) / 2)
    for label in range(1, label_map.num_classes):
        assert (alone == label).any()
        assert dice_coefficient(inside == label, alone == label) >= SAME_LABELS_DICE, label_map.class_names[
            label - 1
        ]


def resampled_in_plane(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` on a grid of ``spacing`` mm in plane (its slice spacing kept) over the same extent."""
    return _in_plane_grid(image, 2, spacing).resample(
        image, sitk.sitkLinear, float(np.min(sitk.GetArrayViewFromImage(image)))
    )


@pytest.mark.skipif(LGE_VOLUME is None, reason="needs ../shared/data/mscmrseg19_c0_lge_192")
@pytest.mark.parametrize("spacing", [0.5, 1.5])
def test_a_volume_at_another_spacing_gets_the_labels_it_gets_at_the_models_spacing(label_map, spacing):
    """The shipped model (0.75 mm) on a real LGE volume at 0.75 mm and the same volume at 0.5 and 1.5 mm."""
    model = TrainedModel.load(SHIPPED_MODEL, "cpu")
    image = read_image(LGE_VOLUME)
    native = sitk.GetArrayFromImage(model.segment_image(image))
    other = model.segment_image(resampled_in_plane(image, spacing))
    back = sitk.GetArrayFromImage(sitk.Resample(other, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    for label in range(1, label_map.num_classes):
        assert (native == label).any()
        assert dice_coefficient(back == label, native == label) >= SAME_LABELS_DICE, label_map.class_names[
            label - 1
        ]


def test_training_records_the_median_source_spacing_and_inference_resamples_to_it(
    tiny_phantom, label_map, tmp_path
):
    request = tiny_request(tiny_phantom, label_map, tmp_path / "run", overrides={"iterations": 1})
    request.preprocess = dataclasses.replace(request.preprocess, in_plane_spacing=MEDIAN_SOURCE_SPACING)
    outcome = train(request)
    spacings = [
        in_plane_spacing_of(read_image(case.image).GetSpacing(), "auto") for case in tiny_phantom.source
    ]
    recorded = load_checkpoint(outcome.best_checkpoint).preprocess["in_plane_spacing"]
    assert recorded == round(float(np.median(spacings)), 2)
    model = TrainedModel.load(outcome.best_checkpoint, "cpu")
    coarse = resampled_in_plane(read_image(tiny_phantom.target[0].image), 2 * recorded)
    prepared = prepare_volume(coarse, model.preprocess)
    assert prepared.whole_slices() == pytest.approx(coarse.GetSize()[0] * 2, abs=1)  # at the model's scale
    assert model.segment_image(coarse).GetSize() == coarse.GetSize()  # and back on the input's grid


def test_targets_at_another_scale_than_the_median_source_spacing_get_a_warning(
    tiny_phantom, label_map, tmp_path
):
    """The model is trained at the sources' spacing; targets 2 times coarser (or a source header that lies
    about its pixels) are named in a warning when the run's settings are decided."""
    target = read_image(tiny_phantom.target[0].image)
    coarse = write_image(resampled_in_plane(target, 2 * target.GetSpacing()[0]), tmp_path / "coarse.nii.gz")
    warnings = []
    for targets in ([tiny_phantom.target[0]], [VolumeCase("coarse", coarse)]):
        request = tiny_request(tiny_phantom, label_map, tmp_path / "run")
        request.preprocess = dataclasses.replace(request.preprocess, in_plane_spacing=MEDIAN_SOURCE_SPACING)
        request.target = targets
        events = []
        run_settings(request, None, None, RunFolder(tmp_path / "run"), events.append)
        warnings.append([event["message"] for event in events if event["event"] == "warning"])
    assert warnings[0] == []
    (warning,) = warnings[1]
    assert "times coarser: every target is resampled to" in warning and "--spacing native" in warning


def test_spacing_is_the_median_source_one_unless_given():
    config = PreprocessConfig(in_plane_spacing=MEDIAN_SOURCE_SPACING)
    spacings = [(1.25, 1.25, 10.0), (0.5, 0.5, 8.0), (1.0, 1.0, 9.0)]
    assert resolve_spacing(config, spacings).in_plane_spacing == 1.0
    assert resolve_spacing(PreprocessConfig(in_plane_spacing=0.8), spacings).in_plane_spacing == 0.8
    assert resolve_spacing(PreprocessConfig(), spacings).in_plane_spacing is None  # native stays native
    with pytest.raises(InputDataError, match="decided when training starts"):
        prepare_volume(sitk.Image(8, 8, 2, sitk.sitkFloat32), config)


def test_a_spacing_that_looks_lost_is_named_with_the_file_and_the_spacing_used(
    tiny_model, tiny_phantom, tmp_path
):
    image = read_image(tiny_phantom.target[0].image)
    image.SetSpacing((1.0, 1.0, 1.0))
    path = write_image(image, tmp_path / "lost.nii.gz")
    events = []
    segment_cases(
        TrainedModel.load(tiny_model, "cpu"), [VolumeCase("lost", path)], tmp_path / "out", events.append
    )
    [warning] = [
        event["message"]
        for event in events
        if event["event"] == "warning" and "1 x 1 x 1" in event["message"]
    ]
    assert str(path) in warning and "1 x 1 x 1 mm" in warning
    assert spacing_problem((0.7, 0.7, 8.0), "auto") is None
    assert "outside" in spacing_problem((12.0, 12.0, 20.0), "auto")


def ring_labels(ringed: bool) -> np.ndarray:
    """One 3-slice (z, y, x) label map: LV (2) in a disc, MYO (1) ringing it or lying beside it."""
    rows, columns = np.mgrid[:40, :40]
    distance = np.hypot(rows - 20, columns - 20)
    slice_ = np.zeros((40, 40), dtype=np.uint8)
    if ringed:
        slice_[distance < 12] = 1
    else:
        slice_[(distance < 12) & (columns > 30)] = 1
    slice_[distance < 8] = 2
    return np.repeat(slice_[None], 3, axis=0)


def test_labels_without_a_myocardial_ring_are_not_a_heart(label_map):
    assert missing_heart(ring_labels(True), label_map, slice_axis=2) is None
    assert "not ringed by myocardium" in missing_heart(ring_labels(False), label_map, slice_axis=2)
    assert "nothing" in missing_heart(np.zeros((3, 40, 40), np.uint8), label_map, slice_axis=2)
    # the same heart cut along another axis: the ring is looked for in that axis' planes
    assert missing_heart(np.moveaxis(ring_labels(True), 0, 2), label_map, slice_axis=0) is None


def test_a_volume_without_a_heart_gives_an_empty_segmentation_and_a_warning(
    tiny_model, tiny_phantom, tmp_path
):
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.normal(size=(6, 64, 64)).astype(np.float32))
    noise.CopyInformation(read_image(tiny_phantom.target[0].image)[:, :, :6])
    path = write_image(noise, tmp_path / "noise.nii.gz")
    events = []
    [written] = segment_cases(
        TrainedModel.load(tiny_model, "cpu"), [VolumeCase("noise", path)], tmp_path / "out", events.append
    )
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(written))).any()
    assert any(event["event"] == "warning" and "no heart was found" in event["message"] for event in events)


def test_a_shifted_pool_moves_each_window_and_its_labels_together():
    labels = np.zeros((8, 40, 40), np.uint8)
    labels[:, 16:24, 16:24] = 1
    label = sitk.GetImageFromArray(labels)
    image = sitk.GetImageFromArray(labels.astype(np.float32) * 10)  # the label, as an image
    prepared = prepare_volume(image, PreprocessConfig(size=32, intensity="minmax"), label)
    pool = SlicePool([LoadedVolume(VolumeCase("a", Path("a")), prepared)], context_slices=1, shift=8)
    assert pool.images.shape[-2:] == (16, 16)  # a window of 32 - 2 x 8
    np.testing.assert_array_equal(pool.batch(0, 0, 8, augment=False).images.numpy(), pool.images[:8])
    moved = pool.batch(0, 0, 8, augment=True)
    images, moved_labels = moved.images.numpy()[:, 0], moved.labels.numpy()
    np.testing.assert_array_equal(images > images.min(axis=(1, 2), keepdims=True) + 0.5, moved_labels == 1)
    centres = {tuple(np.argwhere(slice_).mean(axis=0).round(1)) for slice_ in moved_labels if slice_.any()}
    assert len(centres) > 2  # the square sits elsewhere in different slices' windows


def test_a_shifted_pools_middle_windows_are_the_slices_the_network_sees_at_inference(tiny_phantom, label_map):
    """Pools store windows 2 x shift wider; their intensities are normalised with the statistics of the
    network's window, so the middle of a stored window is exactly what inference prepares there."""
    cases = tiny_phantom.source[:2]
    config = PreprocessConfig(size=32, intensity="percentile_zscore")
    wide = dataclasses.replace(config, size=config.size + 2 * 8)
    pool = SlicePool(load_volumes(cases, label_map, wide, True, statistics_size=config.size), 1, shift=8)
    network = [prepare_volume(load_case(case, label_map)[0], config).slices for case in cases]
    np.testing.assert_allclose(pool.images[:, 0], np.concatenate(network), atol=1e-5)
