"""Scans as a scanner writes them: the heart anywhere in a field of view larger than the network's window."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from CardiacUDALib.inference import TrainedModel
from CardiacUDALib.io import read_image
from CardiacUDALib.metrics import dice_coefficient
from CardiacUDALib.preprocess import PreprocessConfig, _crop_or_pad_regions, prepare_volume

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
    wide = sitk.GetArrayFromImage(model.segment_image(placed_in_a_larger_field_of_view(image, 3, corner)))
    inside = wide[:, corner[0] : corner[0] + rows, corner[1] : corner[1] + columns]
    assert np.count_nonzero(inside) >= 0.98 * np.count_nonzero(wide)  # next to nothing labelled elsewhere
    for label in range(1, label_map.num_classes):
        assert (alone == label).any()
        assert dice_coefficient(inside == label, alone == label) >= SAME_LABELS_DICE, label_map.class_names[
            label - 1
        ]
