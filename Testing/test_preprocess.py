"""Volumes to network slices and back: exact geometry whatever the orientation and slice axis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacUDALib.errors import InputDataError
from CardiacUDALib.preprocess import (
    PreprocessConfig,
    prepare_volume,
    resolve_slice_axis,
    restore_intensity,
    restore_labels,
)

ANISOTROPIC = (1.3, 0.7, 8.0)
SIZE = 32


def rotation(axis: int, degrees: float) -> np.ndarray:
    cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    first, second = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[first, first] = matrix[second, second] = cos
    matrix[first, second], matrix[second, first] = -sin, sin
    return matrix


OBLIQUE = tuple((rotation(2, 20) @ rotation(0, 30)).ravel())


def volume(array: np.ndarray, spacing: tuple[float, ...] = ANISOTROPIC) -> sitk.Image:
    """``array`` (z, y, x) on an oblique, anisotropic grid."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(OBLIQUE)
    return image


def geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def centred_crop_mask(shape: tuple[int, ...], slice_axis: int, size: int) -> np.ndarray:
    """Voxels (z, y, x) that a centre crop of every slice to ``size`` keeps."""
    mask = np.zeros(shape, dtype=bool)
    window = []
    for array_axis, length in enumerate(shape):
        start = 0 if array_axis == 2 - slice_axis or length <= size else (length - size) // 2
        window.append(slice(start, start + min(length, size) if array_axis != 2 - slice_axis else length))
    mask[tuple(window)] = True
    return mask


# ---- exact inverse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize(
    "image_size", [(12, 20, 9), (45, 40, 38), (45, 10, 7)], ids=["fits", "cropped", "mixed"]
)
def test_label_round_trip_is_exact_on_the_input_grid(
    slice_axis: int, image_size: tuple[int, int, int]
) -> None:
    rng = np.random.default_rng(slice_axis)
    shape = tuple(reversed(image_size))
    labels = rng.integers(0, 4, size=shape, dtype=np.uint8)
    image = volume(rng.normal(size=shape).astype(np.float32))
    label = volume(labels)
    prepared = prepare_volume(image, PreprocessConfig(slice_axis=slice_axis, size=SIZE), label)

    assert (
        prepared.slices.shape == (image_size[slice_axis], SIZE, SIZE) and prepared.slices.dtype == np.float32
    )
    assert prepared.labels is not None and prepared.labels.dtype == np.uint8
    restored = restore_labels(prepared, prepared.labels)
    assert restored.GetPixelID() == sitk.sitkUInt8
    assert geometry(restored) == geometry(image)
    kept = centred_crop_mask(shape, slice_axis, SIZE)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), np.where(kept, labels, 0))


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slices_are_cut_along_the_slice_axis(slice_axis: int) -> None:
    shape = (5, 7, 6)
    coordinate = np.indices(shape)[2 - slice_axis].astype(np.float32)
    config = PreprocessConfig(slice_axis=slice_axis, size=16, intensity="minmax", clip_percentiles=(0, 100))
    prepared = prepare_volume(volume(coordinate), config)
    count = shape[2 - slice_axis]
    in_plane = [n for axis, n in enumerate(shape) if axis != 2 - slice_axis]
    start = [(16 - n) // 2 for n in in_plane]
    for index in range(count):
        plane = prepared.slices[index, start[0] : start[0] + in_plane[0], start[1] : start[1] + in_plane[1]]
        np.testing.assert_allclose(plane, index / (count - 1))


def test_intensity_round_trip_and_fill_outside_the_crop() -> None:
    shape = (3, 40, 20)
    values = np.random.default_rng(3).uniform(10, 20, size=shape).astype(np.float32)
    image = volume(values)
    config = PreprocessConfig(slice_axis=2, size=SIZE, intensity="minmax", clip_percentiles=(0, 100))
    prepared = prepare_volume(image, config)
    assert np.all(prepared.slices[:, :, : (SIZE - 20) // 2] == 0.0), "padding is the minimum of the volume"
    restored = restore_intensity(prepared, prepared.slices)
    assert restored.GetPixelID() == sitk.sitkFloat32 and geometry(restored) == geometry(image)
    kept = centred_crop_mask(shape, 2, SIZE)
    expected = np.where(kept, (values - values.min()) / (values.max() - values.min()), prepared.slices.min())
    np.testing.assert_allclose(sitk.GetArrayFromImage(restored), expected, atol=1e-6)


def test_restore_refuses_slices_of_the_wrong_shape() -> None:
    prepared = prepare_volume(volume(np.zeros((4, 5, 6), np.float32)), PreprocessConfig(size=16))
    with pytest.raises(ValueError, match="shape"):
        restore_labels(prepared, np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        restore_intensity(prepared, np.zeros((4, 16, 17), np.float32))


def test_label_off_the_image_grid_is_refused() -> None:
    image = volume(np.zeros((4, 5, 6), np.float32))
    with pytest.raises(InputDataError, match="size"):
        prepare_volume(image, PreprocessConfig(size=16), volume(np.zeros((4, 5, 7), np.uint8)))


# ---- slice axis and resampling ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        ((1.3, 8.0, 0.7), 1),
        ((8.0, 1.3, 0.7), 0),
        ((1.0, 1.0, 1.0), 2),
        ((2.0, 2.0, 1.0), 1),
        ((1.3, 0.7, 8.0), 2),
    ],
)
def test_auto_slice_axis_is_the_largest_spacing(spacing: tuple[float, ...], expected: int) -> None:
    assert resolve_slice_axis(spacing, "auto") == expected
    prepared = prepare_volume(volume(np.zeros((3, 4, 5), np.float32), spacing), PreprocessConfig(size=16))
    assert prepared.slice_axis == expected
    assert prepared.slices.shape[0] == (5, 4, 3)[expected]


def blob(image_size: tuple[int, int, int], spacing: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """A ball in the middle of the volume, as (z, y, x) classes."""
    index = np.indices(tuple(reversed(image_size)), dtype=np.float64)
    centre = [(n - 1) / 2 for n in reversed(image_size)]
    squared = sum(((index[a] - centre[a]) * s) ** 2 for a, s in enumerate(reversed(spacing)))
    return (squared <= radius_mm**2).astype(np.uint8)


@pytest.mark.parametrize("in_plane_spacing", [0.5, 1.0, 1.7])
def test_resampled_round_trip_keeps_geometry_and_the_blob(in_plane_spacing: float) -> None:
    image_size = (50, 70, 12)
    classes = blob(image_size, ANISOTROPIC, radius_mm=22.0)
    image = volume(classes.astype(np.float32) * 100)
    config = PreprocessConfig(in_plane_spacing=in_plane_spacing, size=128)
    prepared = prepare_volume(image, config, volume(classes))
    assert prepared.slice_axis == 2 and prepared.labels is not None
    restored = restore_labels(prepared, prepared.labels)
    assert geometry(restored) == geometry(image)
    restored_classes = sitk.GetArrayFromImage(restored)
    dice = 2 * np.sum(restored_classes & classes) / (restored_classes.sum() + classes.sum())
    assert dice > 0.95
    intensity = restore_intensity(prepared, prepared.slices)
    assert geometry(intensity) == geometry(image)
    assert np.all(np.isfinite(sitk.GetArrayFromImage(intensity)))


@pytest.mark.parametrize("in_plane_spacing", [0.3, 0.9, 1.7, 2.9])
def test_resampling_covers_every_input_voxel(in_plane_spacing: float) -> None:
    """The resampled grid must reach the edge voxels both ways, or the restored border turns background."""
    full = np.ones((5, 13, 11), np.uint8)
    config = PreprocessConfig(in_plane_spacing=in_plane_spacing, size=64)
    prepared = prepare_volume(volume(full.astype(np.float32)), config, volume(full))
    assert prepared.labels is not None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(restore_labels(prepared, prepared.labels)), full)


# ---- 2.5D context ----------------------------------------------------------------------------------


def test_context_replicates_edge_slices() -> None:
    values = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 4, 4), np.float32)
    config = PreprocessConfig(slice_axis=2, size=16, intensity="minmax", clip_percentiles=(0, 100))
    prepared = prepare_volume(volume(values), config)
    first, middle, last = prepared.slices
    stacks = prepared.with_context(3)
    assert stacks.shape == (3, 3, 16, 16) and stacks.dtype == np.float32
    np.testing.assert_array_equal(stacks[0], [first, first, middle])
    np.testing.assert_array_equal(stacks[1], [first, middle, last])
    np.testing.assert_array_equal(stacks[2], [middle, last, last])
    np.testing.assert_array_equal(prepared.with_context(5)[0], [first, first, first, middle, last])
    np.testing.assert_array_equal(prepared.with_context(1)[:, 0], prepared.slices)
    with pytest.raises(ValueError, match="odd"):
        prepared.with_context(2)


# ---- intensities -----------------------------------------------------------------------------------


def skewed_volume() -> np.ndarray:
    """(z, y, x) values filling a whole 16 x 16 slice, so no voxel of the slices is padding."""
    return np.random.default_rng(4).gamma(2.0, 50.0, size=(6, 16, 16)).astype(np.float32)


def test_percentile_zscore_has_zero_mean_unit_std_within_the_clip() -> None:
    values = skewed_volume()
    slices = prepare_volume(volume(values), PreprocessConfig(size=16)).slices
    assert abs(float(slices.mean())) < 1e-4 and abs(float(slices.std()) - 1) < 1e-4
    low, high = np.percentile(values, (0.5, 99.5))
    clipped = np.clip(values, low, high)
    assert float(slices.max()) == pytest.approx((high - clipped.mean()) / clipped.std(), rel=1e-4)


def test_minmax_spans_zero_to_one() -> None:
    slices = prepare_volume(volume(skewed_volume()), PreprocessConfig(size=16, intensity="minmax")).slices
    assert float(slices.min()) == 0.0 and float(slices.max()) == pytest.approx(1.0)


def test_ct_window_maps_window_edges_to_zero_and_one() -> None:
    level, width = 100.0, 600.0
    values = np.array([-1000.0, level - width / 2, level, level + width / 2, 3000.0], dtype=np.float32)
    config = PreprocessConfig(slice_axis=0, size=16, intensity="ct_window", ct_window=(level, width))
    slices = prepare_volume(volume(values[None, None, :] * np.ones((1, 2, 1), np.float32)), config).slices
    np.testing.assert_allclose(slices[:, 7, 7], [0.0, 0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("intensity", ["percentile_zscore", "minmax", "ct_window"])
def test_constant_image_gives_finite_slices(intensity: str) -> None:
    config = PreprocessConfig(size=16, intensity=intensity, in_plane_spacing=0.9)
    slices = prepare_volume(volume(np.full((3, 5, 6), 42.0, np.float32)), config).slices
    assert np.all(np.isfinite(slices))


# ---- configuration ---------------------------------------------------------------------------------


def test_config_round_trips_through_json() -> None:
    config = PreprocessConfig(
        slice_axis=1, in_plane_spacing=1.25, size=128, clip_percentiles=(1, 99), context_slices=3
    )
    restored = PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and restored.clip_percentiles == (1.0, 99.0)
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()


@pytest.mark.parametrize(
    "settings",
    [
        {"context_slices": 2},
        {"context_slices": 0},
        {"intensity": "histogram"},
        {"size": 8},
        {"in_plane_spacing": -1.0},
        {"in_plane_spacing": 0},
        {"slice_axis": 3},
        {"slice_axis": "z"},
        {"slice_axis": True},
        {"clip_percentiles": (99.5, 0.5)},
        {"clip_percentiles": (0, 101)},
        {"clip_percentiles": (1.0,)},
        {"ct_window": (40.0, 0.0)},
    ],
)
def test_invalid_config_raises(settings: dict) -> None:
    with pytest.raises(InputDataError, match="preprocessing"):
        PreprocessConfig(**settings)


def test_unknown_config_key_raises() -> None:
    with pytest.raises(InputDataError, match="spacing_mm"):
        PreprocessConfig.from_dict({"spacing_mm": 1.0})
