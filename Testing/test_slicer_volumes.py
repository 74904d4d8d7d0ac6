"""Volume nodes <-> SimpleITK images: exact geometry (RAS vs LPS), files, ROI crops."""

from __future__ import annotations

from slicer_fixtures import mrml_fixture  # noqa: F401  (the mrml fixture; puts CardiacUDA/ on sys.path)

# isort: split
import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from CardiacUDASlicerLib.volumes import (
    add_box_roi,
    add_volume_node,
    crop_image_to_roi,
    ijk_to_ras,
    image_from_volume_node,
)

from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import write_image
from CardiacUDALib.preprocess import PreprocessConfig, prepare_volume

SPACING = (0.7, 1.3, 8.0)  # anisotropic, like a short-axis MRI stack
ORIGIN_LPS = (12.5, -40.25, 61.0)


def oblique_direction() -> np.ndarray:
    """A rotation about two axes, so that no axis of the grid is a world axis."""
    a, b = np.deg2rad(27.0), np.deg2rad(-14.0)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return about_z @ about_x


def oblique_image(dtype=np.float32) -> sitk.Image:
    voxels = np.random.default_rng(7).normal(size=(9, 11, 13)).astype(dtype)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    image.SetDirection(oblique_direction().ravel().tolist())
    return image


def assert_same_image(actual: sitk.Image, expected: sitk.Image) -> None:
    """Bit-exact voxels and geometry: no tolerance at all."""
    assert actual.GetSpacing() == expected.GetSpacing()
    assert actual.GetOrigin() == expected.GetOrigin()
    assert actual.GetDirection() == expected.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))


def test_oblique_anisotropic_volume_round_trips_exactly(mrml):
    image = oblique_image()
    node = add_volume_node(mrml.scene, image, "oblique")
    assert_same_image(image_from_volume_node(node), image)
    # and the node itself is in RAS: the first two world axes flipped
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ oblique_direction() @ np.diag(SPACING)
    expected[:3, 3] = [-ORIGIN_LPS[0], -ORIGIN_LPS[1], ORIGIN_LPS[2]]
    np.testing.assert_allclose(ijk_to_ras(node), expected, atol=1e-12)


def test_written_file_is_read_back_by_slicers_own_reader_on_the_same_grid(mrml, tmp_path):
    """An independent check of the RAS/LPS handling: Slicer's NRRD reader must agree with the node."""
    node = add_volume_node(mrml.scene, oblique_image(np.int16), "oblique")
    path = write_image(image_from_volume_node(node), tmp_path / "oblique.nrrd")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    mrml.scene.AddNode(storage)
    storage.SetFileName(str(path))
    reloaded = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "reloaded")
    reloaded.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(reloaded) == 1
    np.testing.assert_allclose(ijk_to_ras(reloaded), ijk_to_ras(node), atol=1e-12)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(reloaded), slicer.util.arrayFromVolume(node))


def test_roi_crop_is_a_sub_grid_of_the_volume(mrml):
    image = oblique_image()
    node = add_volume_node(mrml.scene, image, "oblique")
    roi = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "heart box")
    centre_ijk = np.array([6.0, 5.0, 4.0, 1.0])
    roi.SetXYZ((ijk_to_ras(node) @ centre_ijk)[:3].tolist())
    roi.SetSize(3.0, 3.0, 10.0)
    cropped = crop_image_to_roi(image, roi, "the test volume")
    lower = cropped.TransformPhysicalPointToIndex(cropped.GetOrigin())
    first_voxel = image.TransformPhysicalPointToIndex(cropped.GetOrigin())
    assert lower == (0, 0, 0) and all(
        0 < size < full for size, full in zip(cropped.GetSize(), image.GetSize())
    )
    i, j, k = first_voxel
    box = sitk.GetArrayFromImage(image)[
        k : k + cropped.GetSize()[2], j : j + cropped.GetSize()[1], i : i + cropped.GetSize()[0]
    ]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cropped), box)
    assert cropped.GetDirection() == image.GetDirection() and cropped.GetSpacing() == image.GetSpacing()
    roi.SetXYZ(1000.0, 1000.0, 1000.0)
    with pytest.raises(InputDataError, match="does not overlap the test volume"):
        crop_image_to_roi(image, roi, "the test volume")


def test_a_transformed_volume_is_refused_with_advice(mrml):
    node = add_volume_node(mrml.scene, oblique_image(), "moved")
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputDataError, match="Harden transform"):
        image_from_volume_node(node)


@pytest.mark.parametrize("slice_axis", ["auto", 0])
def test_a_heart_region_becomes_an_roi_that_holds_exactly_the_networks_window(mrml, slice_axis):
    """The region the library reports (the window it found the heart in, off the middle of the slice) is
    shown as an ROI; cropping the volume to that ROI gives the very slices the network saw."""
    image = sitk.GetImageFromArray(np.random.default_rng(3).normal(size=(5, 30, 40)).astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    image.SetDirection(oblique_direction().ravel().tolist())
    config = PreprocessConfig(size=16, slice_axis=slice_axis, intensity="minmax")
    prepared = prepare_volume(image, config, centre=(21.0, 9.0))
    assert not prepared.window_fits
    roi = add_box_roi(mrml.scene, prepared.window_box(), "heart region")
    cropped = crop_image_to_roi(image, roi, "the test volume")
    assert cropped.GetSize() == {"auto": (16, 16, 5), 0: (40, 16, 5)}[slice_axis]  # (x, y, z), slices whole
    np.testing.assert_array_equal(prepare_volume(cropped, config).slices, prepared.slices)
