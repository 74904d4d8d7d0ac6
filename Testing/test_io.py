"""Reading volumes and label maps through real files, and the label value maps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacUDALib import io
from CardiacUDALib.atomic import check_writable_folder
from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import (
    LABEL_MAPS,
    LabelMap,
    check_label_not_empty,
    check_same_geometry,
    classes_to_values,
    load_case,
    parse_label_map,
    read_image,
    read_label,
    write_image,
)

MSCMRSEG = LABEL_MAPS["mscmrseg"]
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (10.0, -5.0, 3.0)
OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def volume(array: np.ndarray, direction: tuple[float, ...] = OBLIQUE) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(direction)
    return image


def file_labels() -> np.ndarray:
    """A (z, y, x) label array with every MS-CMRSeg value and background."""
    values = np.zeros((4, 6, 5), dtype=np.float64)
    values[1, 1:3, 1:3] = 200
    values[2, 2:5, 1:4] = 500
    values[3, 0, :] = 600
    return values


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def assert_same_geometry(image: sitk.Image, expected: sitk.Image) -> None:
    assert image.GetSize() == expected.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)


# ---- label maps ------------------------------------------------------------------------------------


def test_named_label_maps() -> None:
    assert MSCMRSEG.values == (200, 500, 600) and MSCMRSEG.class_names == ("MYO", "LV", "RV")
    assert MSCMRSEG.num_classes == 4
    mmwhs = parse_label_map("MMWHS")
    assert mmwhs.values == (205, 420, 500, 820) and mmwhs.class_names == ("MYO", "LA", "LV", "AA")
    assert mmwhs.num_classes == 5


def test_user_label_map_keeps_written_order_and_round_trips_through_json() -> None:
    label_map = parse_label_map(" 600:RV, 200:MYO ,500:LV")
    assert label_map.values == (600, 200, 500)
    assert label_map.class_names == ("RV", "MYO", "LV")
    assert LabelMap.from_dict(json.loads(json.dumps(label_map.to_dict()))) == label_map


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "nonsense",
        "200",
        "200:MYO,500",
        "200:MYO,x:LV",
        "200:",
        "0:BG",
        "-5:MYO",
        "200:MYO,200:LV",
        "200:A,500:A",
    ],
)
def test_bad_label_map_specs_raise_with_an_example(spec: str) -> None:
    with pytest.raises(InputDataError, match="200:MYO,500:LV,600:RV"):
        parse_label_map(spec)


def test_label_map_from_incomplete_dict_raises() -> None:
    with pytest.raises(InputDataError, match="label map"):
        LabelMap.from_dict({"name": "x", "values": [1, 2]})


# ---- read_label ------------------------------------------------------------------------------------


def test_float64_label_file_maps_values_to_classes(tmp_path: Path) -> None:
    values = file_labels()
    values[values == 500] += 4e-4  # float rounding noise of a resampled release must be accepted
    path = write(volume(values), tmp_path / "case_manual.nii.gz")
    classes = read_label(path, MSCMRSEG)
    assert classes.GetPixelID() == sitk.sitkUInt8
    expected = np.select([values == 0, values < 300, values < 550], [0, 1, 2], default=3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(classes), expected)


def test_unknown_label_value_names_file_value_and_map(tmp_path: Path) -> None:
    values = file_labels()
    values[0, 0, 0] = 300
    path = write(volume(values.astype(np.int16)), tmp_path / "bad_label.nrrd")
    with pytest.raises(InputDataError, match=r"bad_label\.nrrd.*\[300\].*\[200, 500, 600\]"):
        read_label(path, MSCMRSEG)


def test_non_integral_label_value_raises(tmp_path: Path) -> None:
    values = file_labels()
    values[0, 0, 0] = 200.25
    path = write(volume(values), tmp_path / "blurred.nii.gz")
    with pytest.raises(InputDataError, match=r"blurred\.nii\.gz.*200\.25"):
        read_label(path, MSCMRSEG)


def test_classes_to_values_round_trips_exactly(tmp_path: Path) -> None:
    values = file_labels()
    path = write(volume(values), tmp_path / "label.mha")
    restored = classes_to_values(read_label(path, MSCMRSEG), MSCMRSEG)
    assert restored.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), values)
    assert_same_geometry(restored, volume(values))
    with pytest.raises(ValueError, match="class 4"):
        classes_to_values(sitk.GetImageFromArray(np.full((2, 2, 2), 4, np.uint8)), MSCMRSEG)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda image: image[:, :, :3], r"size \(5,6,3\) vs image \(5,6,4\)"),
        (lambda image: image.SetSpacing((0.8, 0.9, 3.0)), "spacing"),
        (lambda image: image.SetOrigin((10.0, -5.0, 4.0)), "origin"),
        (lambda image: image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)), "direction"),
    ],
)
def test_label_off_the_image_grid_raises_naming_what_differs(tmp_path: Path, change, named: str) -> None:
    reference = volume(np.zeros((4, 6, 5), np.float32))
    label = volume(file_labels())
    label = change(label) or label
    path = write(label, tmp_path / "label.nii.gz")
    with pytest.raises(InputDataError, match=named):
        read_label(path, MSCMRSEG, reference=reference)


def test_geometry_within_tolerance_is_accepted() -> None:
    image = volume(np.zeros((4, 6, 5), np.float32))
    nudged = volume(np.zeros((4, 6, 5), np.float32))
    nudged.SetOrigin(tuple(v + 1e-6 for v in ORIGIN))
    check_same_geometry(image, nudged, "nudged")


def test_empty_label_is_refused() -> None:
    with pytest.raises(InputDataError, match="empty_label.nii.gz contains no labelled voxel"):
        check_label_not_empty(sitk.Image(4, 4, 2, sitk.sitkUInt8), "label map empty_label.nii.gz")
    check_label_not_empty(sitk.GetImageFromArray(np.ones((2, 4, 4), np.uint8)), "label map labelled.nii.gz")


def test_load_case_reads_image_and_label_on_its_grid(tmp_path: Path) -> None:
    image_path = write(volume(np.random.default_rng(0).normal(size=(4, 6, 5))), tmp_path / "p1_image.nii.gz")
    label_path = write(volume(file_labels()), tmp_path / "p1_label.nii.gz")
    image, label = load_case(VolumeCase("p1", image_path, label_path), MSCMRSEG)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert label is not None and sorted(np.unique(sitk.GetArrayFromImage(label))) == [0, 1, 2, 3]
    assert load_case(VolumeCase("p1", image_path), MSCMRSEG)[1] is None


# ---- read_image ------------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd", ".mha"])
def test_read_image_keeps_geometry_and_values(tmp_path: Path, extension: str) -> None:
    array = np.random.default_rng(1).integers(-100, 100, size=(1, 6, 5)).astype(np.int16)
    original = volume(array)
    image = read_image(write(original, tmp_path / f"single_slice{extension}"))
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetSize() == (5, 6, 1)
    assert_same_geometry(image, original)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str) -> None:
    """One file per slice with the tags a scanner writes, so GDCM orders them into one series."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:g}" for v in image.GetDirection()[0::3] + image.GetDirection()[1::3])
    for index in range(image.GetDepth()):
        plane = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        for tag, value in (
            ("0008|0060", "MR"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.7"),
            ("0020|000e", series_uid),
            ("0020|0037", orientation),
            ("0020|0032", "\\".join(f"{v:g}" for v in position)),
            ("0020|0013", str(index + 1)),
            ("0018|0050", f"{image.GetSpacing()[2]:g}"),
        ):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}_{index}.dcm"))
        writer.Execute(plane)


def test_read_dicom_series_folder(tmp_path: Path) -> None:
    array = np.random.default_rng(2).integers(0, 1000, size=(4, 6, 5)).astype(np.int16)
    original = volume(array, direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    write_dicom_series(original, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.7.1")
    image = read_image(tmp_path / "series")
    assert_same_geometry(image, original)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)


def test_folder_with_two_dicom_series_lists_them(tmp_path: Path) -> None:
    original = volume(np.zeros((2, 6, 5), np.int16), direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for uid in ("1.2.3.1", "1.2.3.2"):
        write_dicom_series(original, tmp_path / "mixed", uid)
    with pytest.raises(InputDataError, match=r"2 DICOM series \(1\.2\.3\.1, 1\.2\.3\.2\)"):
        read_image(tmp_path / "mixed")


def test_folder_without_dicom_raises(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputDataError, match="without a DICOM series"):
        read_image(tmp_path)
    assert not io.is_dicom_series_folder(tmp_path)
    assert "No Series were found" not in capfd.readouterr().err  # ITK's warning stays off the console
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # and ITK's other warnings are shown again


def test_2d_and_4d_images_are_refused(tmp_path: Path) -> None:
    flat = write(sitk.Image(5, 6, sitk.sitkFloat32), tmp_path / "flat.nii.gz")
    with pytest.raises(InputDataError, match=r"flat\.nii\.gz is a 2D image"):
        read_image(flat)
    movie = write(sitk.Image([3, 3, 3, 2], sitk.sitkFloat32), tmp_path / "movie.nii.gz")
    with pytest.raises(InputDataError, match=r"movie\.nii\.gz is a 4D image"):
        read_image(movie)
    with pytest.raises(InputDataError, match="4D"):
        read_label(movie, MSCMRSEG)


def test_vector_image_is_refused(tmp_path: Path) -> None:
    path = write(sitk.Image([3, 3, 3], sitk.sitkVectorFloat32, 3), tmp_path / "rgb.mha")
    with pytest.raises(InputDataError, match=r"rgb\.mha has 3 components"):
        read_image(path)


@pytest.mark.parametrize("extension", [".mha", ".nrrd", ".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_voxels_are_counted_in_every_format(tmp_path: Path, extension: str, dtype) -> None:
    """NIfTI too, although ITK's NIfTI reader turns them into 0: its file bytes are read for them."""
    array = np.arange(18, dtype=dtype).reshape(2, 3, 3)
    array[0, 0, 0] = np.nan
    array[1, 2, 2] = np.inf
    path = write(volume(array), tmp_path / f"holes{extension}")
    with pytest.raises(InputDataError, match=rf"holes{re.escape(extension)} has 2 NaN or infinite"):
        read_image(path)


@pytest.mark.parametrize("fill", [0.0, 7.5, np.nan])
def test_constant_images_are_refused(tmp_path: Path, fill: float) -> None:
    """All zeros, one grey value, or all NaN (which ITK reads from NIfTI as all zeros)."""
    path = write(volume(np.full((2, 3, 3), fill, np.float32)), tmp_path / "blank.nii.gz")
    with pytest.raises(InputDataError, match=r"blank\.nii\.gz (is constant|has 18 NaN)"):
        read_image(path)


def test_missing_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"absent\.nii\.gz does not exist"):
        read_image(tmp_path / "absent.nii.gz")
    text = tmp_path / "x.nii.gz"
    text.write_text("not an image")
    with pytest.raises(InputDataError, match=r"cannot read .*x\.nii\.gz as an image"):
        read_image(text)


# ---- write_image -----------------------------------------------------------------------------------


def test_write_image_creates_folders_and_round_trips(tmp_path: Path) -> None:
    original = volume(np.arange(30, dtype=np.uint8).reshape(2, 3, 5))
    path = write_image(original, tmp_path / "deep" / "out.nii.gz")
    assert path == tmp_path / "deep" / "out.nii.gz"
    assert_same_geometry(sitk.ReadImage(str(path)), original)
    with pytest.raises(InputDataError, match=r"\.png.*\.nii\.gz"):
        write_image(original, tmp_path / "out.png")


def test_a_write_removes_what_a_killed_write_of_the_same_file_left_and_nothing_else(tmp_path: Path) -> None:
    leftovers = [tmp_path / ".out.nii.gz.a1b2.tmp.nii.gz", tmp_path / ".out.nii.gz.zz9.tmp.nii.gz"]
    others = [
        tmp_path / ".other.nii.gz.a1b2.tmp.nii.gz",
        tmp_path / "out.nii.gz.backup",
        tmp_path / ".out.nii.gz",
    ]
    for path in leftovers + others:
        path.write_bytes(b"half a file")
    write_image(volume(np.arange(8, dtype=np.float32).reshape(2, 2, 2)), tmp_path / "out.nii.gz")
    assert sorted(tmp_path.iterdir()) == sorted([*others, tmp_path / "out.nii.gz"])


def test_an_output_folder_that_is_a_file_or_lies_under_one_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputDataError, match="a_file is a file: give a folder"):
        check_writable_folder(tmp_path / "a_file", "--out")
    with pytest.raises(InputDataError, match=r"lies under .*a_file, which is a file"):
        check_writable_folder(tmp_path / "a_file" / "run", "--out")
    assert check_writable_folder(tmp_path / "new" / "run", "--out") == tmp_path / "new" / "run"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]  # nothing created
