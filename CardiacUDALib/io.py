"""Reading and writing volumes and label maps, and the label value maps of the public data sets.

Label files store the value the data set chose for each structure (MS-CMRSeg: 200/500/600, MMWHS:
205/420/500/820). The networks need contiguous classes 0..N, so labels are mapped on read and mapped
back on write with a :class:`LabelMap`, which also travels inside checkpoints so that a prediction is
always written with the values of the data the model was trained on.

Every check here fails with an :class:`~CardiacUDALib.errors.InputDataError` naming the file and the
offending value, because these are the errors a user hits first and can fix themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CardiacUDALib.atomic import atomic_path
from CardiacUDALib.cases import VolumeCase, check_utf8
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.stored_data import check_written, stored_non_finite_voxels
from CardiacUDALib.typed_values import checked

WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
MAX_LABEL_VALUE = 65535  # segmentations are written as uint16
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit also accepts '²'
_INTEGRAL_TOLERANCE = 1e-3
_GEOMETRY_TOLERANCE = 1e-4
_USER_MAP_EXAMPLE = '"200:MYO,500:LV,600:RV"'


@dataclass(frozen=True)
class LabelMap:
    """Which file label value is which foreground class; class ``i`` (1-based) is ``values[i - 1]``."""

    name: str
    values: tuple[int, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = _label_map_problem(self.values, self.class_names)
        if problem:
            raise InputDataError(f"label map {self.name!r}: {problem}")

    @property
    def num_classes(self) -> int:
        """Foreground classes plus background, i.e. the number of network outputs."""
        return len(self.values) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": list(self.values), "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, data: Any) -> LabelMap:
        if not isinstance(data, dict) or not {"name", "values", "class_names"} <= set(data):
            raise InputDataError(
                f"not a label map description: {data!r} (an object with 'name', 'values' and 'class_names')"
            )
        return cls(
            name=checked(data["name"], str, "the label map's 'name'"),
            values=checked(data["values"], tuple[int, ...], "the label map's 'values'"),
            class_names=checked(data["class_names"], tuple[str, ...], "the label map's 'class_names'"),
        )


def _label_map_problem(values: tuple[int, ...], class_names: tuple[str, ...]) -> str | None:
    """Why ``values``/``class_names`` cannot describe a label map, or None if they can."""
    if not values:
        return "it has no foreground class"
    if len(values) != len(class_names):
        return f"{len(values)} values but {len(class_names)} class names"
    if any(v <= 0 for v in values):
        return f"label values must be positive (0 is the background), got {list(values)}"
    if any(v > MAX_LABEL_VALUE for v in values):
        return f"label values must be at most {MAX_LABEL_VALUE} (segmentations are written as uint16), got {list(values)}"
    if len(set(values)) != len(values):
        return f"duplicate label values in {list(values)}"
    if len(values) > 255:
        return f"{len(values)} classes; at most 255 fit the uint8 class images"
    if any(not n for n in class_names) or len(set(class_names)) != len(class_names):
        return f"class names must be unique and not empty, got {list(class_names)}"
    return None


LABEL_MAPS: dict[str, LabelMap] = {
    "mscmrseg": LabelMap("mscmrseg", (200, 500, 600), ("MYO", "LV", "RV")),
    "mmwhs": LabelMap("mmwhs", (205, 420, 500, 820), ("MYO", "LA", "LV", "AA")),
}


def parse_label_map(spec: str) -> LabelMap:
    """A named map (a key of :data:`LABEL_MAPS`) or a user map ``"value:NAME,..."`` in class order."""
    text = spec.strip()
    if text.lower() in LABEL_MAPS:
        return LABEL_MAPS[text.lower()]
    syntax = f"use one of {', '.join(LABEL_MAPS)} or value:name pairs such as {_USER_MAP_EXAMPLE}"
    values: list[int] = []
    names: list[str] = []
    for pair in text.split(","):
        value, separator, name = pair.partition(":")
        if not separator or not _INTEGER.fullmatch(value.strip()) or not name.strip():
            raise InputDataError(f"cannot read label map {spec!r} at {pair.strip()!r}: {syntax}")
        values.append(int(value))
        names.append(name.strip())
    problem = _label_map_problem(tuple(values), tuple(names))
    if problem:
        raise InputDataError(f"label map {spec!r}: {problem}; {syntax}")
    return LabelMap("custom", tuple(values), tuple(names))


def _dicom_series_ids(folder: Path) -> tuple[str, ...]:
    """The DICOM series IDs in ``folder``, found without ITK's warnings.

    ITK prints "No Series were found" on stderr for every plain folder, which breaks into the CLI's
    progress output; the callers say themselves what is wrong with a folder.
    """
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_series_folder(folder: Path) -> sitk.Image:
    """The one DICOM series in ``folder``; several series are ambiguous, so the user must pick one."""
    series_ids = _dicom_series_ids(folder)
    if not series_ids:
        raise InputDataError(
            f"{folder} is a folder without a DICOM series; give an image file or a DICOM folder"
        )
    if len(series_ids) > 1:
        raise InputDataError(
            f"{folder} holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
            "put each series in its own folder"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    return reader.Execute()


def _read_volume(path: str | Path) -> sitk.Image:
    """A scalar 3D image from a file or DICOM folder, in the pixel type of the file."""
    source = Path(check_utf8(str(path)))
    if not source.exists():
        raise InputDataError(f"{source} does not exist")
    if source.is_file():
        check_image_values(np.zeros(0), str(source), stored_non_finite_voxels(source))
    try:
        image = _read_series_folder(source) if source.is_dir() else sitk.ReadImage(str(source))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
        raise InputDataError(
            f"cannot read {source} as an image (NIfTI, NRRD, MHA/MHD or a DICOM folder): {reason}"
        ) from error
    if image.GetDimension() != 3:
        size = "x".join(str(s) for s in image.GetSize())
        raise InputDataError(
            f"{source} is a {image.GetDimension()}D image (size {size}); a 3D volume is needed"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputDataError(
            f"{source} has {image.GetNumberOfComponentsPerPixel()} components per voxel (a vector or colour "
            "image); a scalar volume is needed"
        )
    return image


def read_spacing(path: str | Path) -> tuple[float, ...]:
    """A volume's voxel spacing (mm), from the file's header alone where the format allows."""
    source = Path(path)
    if source.is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(source))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            pass  # read whole below: _read_volume says what is wrong with the file
        else:
            if reader.GetDimension() == 3:
                return tuple(reader.GetSpacing())
    return _read_volume(source).GetSpacing()


def read_image(path: str | Path) -> sitk.Image:
    """A 3D float32 image; non-finite voxels and constant images are refused.

    Non-finite voxels poison every normalisation; a constant image (all zeros, say, or an all-NaN NIfTI
    file, which ITK reads as zeros) holds nothing to segment, and a network would still label it.
    """
    image = sitk.Cast(_read_volume(path), sitk.sitkFloat32)
    check_image_values(sitk.GetArrayViewFromImage(image), str(path))
    return image


def check_image_values(values: np.ndarray, what: str, stored_non_finite: int = 0) -> None:
    """Refuse NaN or infinite voxels (``stored_non_finite``: those a reader already replaced) and constant images."""
    non_finite = max(int(np.count_nonzero(~np.isfinite(values))), stored_non_finite)
    if non_finite:
        raise InputDataError(f"{what} has {non_finite} NaN or infinite voxel(s); fix or mask them first")
    if values.size and float(values.min()) == float(values.max()):
        raise InputDataError(
            f"{what} is constant (every voxel is {float(values.min()):g}): there is no image to segment"
        )


def _vector_text(values: tuple[float, ...]) -> str:
    return "(" + ",".join(f"{v:g}" for v in values) + ")"


def check_same_geometry(image: sitk.Image, other: sitk.Image, what: str) -> None:
    """Refuse ``other`` (described by ``what``) unless it lies on the voxel grid of ``image``."""
    differences = []
    if other.GetSize() != image.GetSize():
        differences.append(f"size {_vector_text(other.GetSize())} vs image {_vector_text(image.GetSize())}")
    for aspect, getter in (
        ("spacing", sitk.Image.GetSpacing),
        ("origin", sitk.Image.GetOrigin),
        ("direction", sitk.Image.GetDirection),
    ):
        mine, theirs = getter(image), getter(other)
        if len(mine) != len(theirs) or not np.allclose(
            theirs, mine, rtol=_GEOMETRY_TOLERANCE, atol=_GEOMETRY_TOLERANCE
        ):
            differences.append(f"{aspect} {_vector_text(theirs)} vs image {_vector_text(mine)}")
    if differences:
        raise InputDataError(f"{what} does not lie on the image grid: " + "; ".join(differences))


def _integral_label_array(label: sitk.Image, path: str | Path) -> np.ndarray:
    """The label voxels as int64; float files must hold whole numbers (up to rounding noise)."""
    values = sitk.GetArrayFromImage(label)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    rounded = np.rint(values)
    not_integral = ~np.isfinite(values) | (np.abs(values - rounded) > _INTEGRAL_TOLERANCE)
    if np.any(not_integral):
        example = float(values[not_integral].flat[0])
        raise InputDataError(
            f"{path} is not a label map: it holds non-integer values such as {example:g} "
            f"({int(np.count_nonzero(not_integral))} voxels)"
        )
    return rounded.astype(np.int64)


def read_label(
    path: str | Path, label_map: LabelMap, reference: sitk.Image | None = None, what: str = ""
) -> sitk.Image:
    """Classes 0..N (uint8) from a label file holding ``label_map``'s values; optionally on ``reference``'s grid.

    ``what`` names the file in messages (default: "label map <path>").
    """
    label = _read_volume(path)
    if reference is not None:
        check_same_geometry(reference, label, what or f"label map {path}")
    values = _integral_label_array(label, path)
    found = np.unique(values)
    unknown = [int(v) for v in found if v != 0 and v not in label_map.values]
    if unknown:
        raise InputDataError(
            f"{path} holds label value(s) {unknown} that are not in label map {label_map.name!r} "
            f"(values {list(label_map.values)} for {list(label_map.class_names)}); choose the right map "
            f"or give one such as {_USER_MAP_EXAMPLE}"
        )
    classes = np.zeros(values.shape, dtype=np.uint8)
    for class_index, value in enumerate(label_map.values, start=1):
        classes[values == value] = class_index
    result = sitk.GetImageFromArray(classes)
    result.CopyInformation(label)
    return result


def classes_to_values(classes: sitk.Image, label_map: LabelMap) -> sitk.Image:
    """Contiguous classes back to the file label values (uint16, enough for every known data set)."""
    class_array = sitk.GetArrayViewFromImage(classes)
    if class_array.size and int(class_array.max()) >= label_map.num_classes:
        raise ValueError(
            f"class {int(class_array.max())} found but label map {label_map.name!r} has {label_map.num_classes} classes"
        )
    lookup = np.array((0, *label_map.values), dtype=np.uint16)
    result = sitk.GetImageFromArray(lookup[class_array.astype(np.intp)])
    result.CopyInformation(classes)
    return result


def check_label_not_empty(label: sitk.Image, what: str) -> None:
    """A source label with no structure teaches the segmenter nothing, and usually means a wrong file."""
    if not np.any(sitk.GetArrayViewFromImage(label)):
        raise InputDataError(f"{what} contains no labelled voxel; check that it belongs to its image")


def write_image(image: sitk.Image, path: str | Path) -> Path:
    """Write atomically (no truncated file after a crash), compressed, format chosen by the extension."""
    destination = Path(check_utf8(str(path)))
    if not destination.name.lower().endswith(WRITE_EXTENSIONS):
        raise InputDataError(
            f"cannot write {destination}: use one of the extensions {', '.join(WRITE_EXTENSIONS)}"
        )
    with atomic_path(destination) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
        check_written(temporary, image.GetSize())
    return destination


def load_case(case: VolumeCase, label_map: LabelMap) -> tuple[sitk.Image, sitk.Image | None]:
    """The image of ``case`` and, if it has one, its label as classes on the image grid."""
    image = read_image(case.image)
    label = read_label(case.label, label_map, image) if case.label is not None else None
    return image, label


def check_readable(cases: list[VolumeCase], label_map: LabelMap) -> None:
    """Read every case once, so that a bad volume among many is found before the first output is written
    (or the first step trained), not after the good ones before it."""
    for case in cases:
        load_case(case, label_map)


def is_dicom_series_folder(path: Path) -> bool:
    """A folder that holds a DICOM series (and is therefore one image, not a folder of cases)."""
    return path.is_dir() and bool(_dicom_series_ids(path))
