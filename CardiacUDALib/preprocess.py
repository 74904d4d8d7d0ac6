"""From a 3D volume to normalised 2D slices for a 2D network, and the exact way back.

The forward path is: pick the slice axis, resample the two in-plane axes to the model's spacing
(a trained model records it: ``--spacing``, or the median of its source volumes; a configuration
without one keeps each volume's own), move the slice axis first, crop every slice to a ``size x size`` window (centred on the
image, or on a given point: where the heart was found) or pad it to that size, and normalise
intensities with the statistics of the voxels inside that window (the same for every slice), so that
what lies outside it (chest wall, arms, another field of view) does not change them.
:class:`PreparedVolume` remembers each step so that :func:`restore_labels` and :func:`restore_intensity`
can undo them and hand back an image with exactly the input's size, spacing, origin and direction,
whatever its orientation: outputs are compared voxel by voxel with the input in Slicer and the metrics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import check_same_geometry

INTENSITY_PRESETS = ("percentile_zscore", "minmax", "ct_window")
SLICE_AXES = ("auto", 0, 1, 2)
MEDIAN_SOURCE_SPACING = "median_source"  # in_plane_spacing decided when training starts (resolve_spacing)
PLAUSIBLE_IN_PLANE_SPACING_MM = (0.2, 5.0)  # clinical cardiac MRI and CT lie well inside
MIN_SIZE = 16
_SCALE_FLOOR = 1e-6
_SPACING_TIE_TOLERANCE = 1e-3
RESAMPLING_TOLERANCE = (
    0.05  # relative: a spacing this close to the model's is used as it is (training scales far more)
)


@dataclass
class PreprocessConfig:
    """How volumes become network slices; stored in checkpoints so inference repeats training exactly."""

    slice_axis: str | int = "auto"
    in_plane_spacing: float | str | None = None  # mm; None: no resampling; MEDIAN_SOURCE_SPACING
    size: int = 192
    intensity: str = "percentile_zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    ct_window: tuple[float, float] = (150.0, 700.0)
    context_slices: int = 1

    def __post_init__(self) -> None:
        self.clip_percentiles = _pair(self.clip_percentiles, "clip_percentiles")
        self.ct_window = _pair(self.ct_window, "ct_window")
        problem = self._problem()
        if problem:
            raise InputDataError(f"invalid preprocessing setting: {problem}")

    def _problem(self) -> str | None:
        """Why this configuration cannot be used, or None."""
        if isinstance(self.slice_axis, bool) or self.slice_axis not in SLICE_AXES:
            return f"slice_axis must be one of {SLICE_AXES}, got {self.slice_axis!r}"
        if self.in_plane_spacing not in (None, MEDIAN_SOURCE_SPACING) and not _is_positive_number(
            self.in_plane_spacing
        ):
            return (
                f"in_plane_spacing must be a positive number of mm, {MEDIAN_SOURCE_SPACING!r} or None, "
                f"got {self.in_plane_spacing!r}"
            )
        if not isinstance(self.size, int) or self.size < MIN_SIZE:
            return f"size must be an integer of at least {MIN_SIZE}, got {self.size!r}"
        if self.intensity not in INTENSITY_PRESETS:
            return f"intensity must be one of {INTENSITY_PRESETS}, got {self.intensity!r}"
        low, high = self.clip_percentiles
        if not 0 <= low < high <= 100:
            return f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}"
        if not self.ct_window[1] > 0:
            return f"ct_window width must be positive, got {self.ct_window}"
        if (
            not isinstance(self.context_slices, int)
            or self.context_slices < 1
            or self.context_slices % 2 == 0
        ):
            return f"context_slices must be a positive odd integer (1, 3, 5...), got {self.context_slices!r}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: pairs become lists, :meth:`from_dict` turns them back into tuples."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputDataError(
                f"unknown preprocessing setting(s) {unknown}; known ones are {sorted(known)}"
            )
        return cls(**data)


def _is_positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as error:
        raise InputDataError(
            f"invalid preprocessing setting: {name} must be two numbers, got {value!r}"
        ) from error
    return low, high


@dataclass(frozen=True)
class _Grid:
    """A voxel grid in SimpleITK index order (x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> _Grid:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def place(self, array: np.ndarray) -> sitk.Image:
        """``array`` (numpy order z, y, x, shaped like this grid) as an image lying on this grid."""
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def resample(self, image: sitk.Image, interpolator: int, default_value: float) -> sitk.Image:
        """``image`` sampled at the voxel centres of this grid."""
        resampler = sitk.ResampleImageFilter()
        resampler.SetSize(self.size)
        resampler.SetOutputSpacing(self.spacing)
        resampler.SetOutputOrigin(self.origin)
        resampler.SetOutputDirection(self.direction)
        resampler.SetInterpolator(interpolator)
        resampler.SetDefaultPixelValue(default_value)
        return resampler.Execute(image)


@dataclass(frozen=True)
class _SliceLayout:
    """Everything the inverse needs: both grids, the slice axis and where the crop / pad window lies."""

    input_grid: _Grid
    working_grid: _Grid
    slice_axis: int
    working_region: tuple[slice, slice]
    network_region: tuple[slice, slice]

    @property
    def resampled(self) -> bool:
        return self.working_grid != self.input_grid

    @property
    def working_slices_shape(self) -> tuple[int, int, int]:
        """Shape of the working volume with the slice axis first, before crop / pad."""
        return _slices_first_shape(self.working_grid.size, self.slice_axis)


@dataclass
class PreparedVolume:
    """Network-ready slices of one volume, and the layout that maps them back onto its grid."""

    slices: np.ndarray
    labels: np.ndarray | None
    _layout: _SliceLayout

    @property
    def slice_axis(self) -> int:
        """The image axis (SimpleITK order, x=0 y=1 z=2) the slices were cut along."""
        return self._layout.slice_axis

    @property
    def window_fits(self) -> bool:
        """True when the network's window holds all of every working slice (nothing was cropped)."""
        rows, columns = self._layout.working_region
        return (rows.stop - rows.start, columns.stop - columns.start) == self._layout.working_slices_shape[1:]

    def working_position(self, row: float, column: float) -> tuple[float, float]:
        """A position in the network slices as (row, column) of the working slices (the ``centre`` of
        :func:`prepare_volume`)."""
        (rows, columns), (network_rows, network_columns) = (
            self._layout.working_region,
            self._layout.network_region,
        )
        return row - network_rows.start + rows.start, column - network_columns.start + columns.start

    def window_box(self) -> dict[str, list[float]]:
        """The network's window over all slices in the input's physical space (LPS, mm): its ``centre``,
        its ``size`` along the image axes and their ``direction`` (row-major 3 x 3, as SimpleITK's)."""
        layout, grid = self._layout, self._layout.working_grid
        low, high = [-0.5] * 3, [size - 0.5 for size in grid.size]  # voxel edges, in index units
        in_plane = [axis for axis in (2, 1, 0) if axis != layout.slice_axis]  # of the rows, the columns
        for axis, region in zip(in_plane, layout.working_region):
            low[axis], high[axis] = region.start - 0.5, region.stop - 0.5
        spacing, direction = np.asarray(grid.spacing), np.asarray(grid.direction).reshape(3, 3)
        centre = np.asarray(grid.origin) + direction @ (np.add(low, high) / 2 * spacing)
        size = np.subtract(high, low) * spacing
        return {"centre": centre.tolist(), "size": size.tolist(), "direction": list(grid.direction)}

    def whole_slices(self) -> int:
        """The network size that takes whole working slices (the larger in-plane side)."""
        return max(self._layout.working_slices_shape[1:])

    def with_context(self, context_slices: int) -> np.ndarray:
        """``[S, k, size, size]``: each slice with its k // 2 neighbours on each side (2.5D input).

        Slices beyond the volume are the edge slice repeated, so every slice gets a full stack.
        """
        if context_slices < 1 or context_slices % 2 == 0:
            raise ValueError(f"context_slices must be a positive odd integer, got {context_slices}")
        half = context_slices // 2
        count = self.slices.shape[0]
        neighbours = np.arange(count)[:, None] + np.arange(-half, half + 1)[None, :]
        return self.slices[np.clip(neighbours, 0, count - 1)]


def _close_to(spacing: float, model_spacing: float) -> bool:
    return abs(spacing - model_spacing) <= RESAMPLING_TOLERANCE * model_spacing


def in_plane_spacing_of(spacing: tuple[float, ...], slice_axis_setting: str | int) -> float:
    """The mean of a volume's two in-plane spacings (mm) for this slice-axis setting."""
    slice_axis = resolve_slice_axis(spacing, slice_axis_setting)
    return float(np.mean([value for axis, value in enumerate(spacing) if axis != slice_axis]))


def resolve_spacing(config: PreprocessConfig, source_spacings: list[tuple[float, ...]]) -> PreprocessConfig:
    """``config`` with :data:`MEDIAN_SOURCE_SPACING` replaced by the median in-plane spacing of the
    source volumes (rounded to 0.01 mm): the scale the model is trained at and records."""
    if config.in_plane_spacing != MEDIAN_SOURCE_SPACING:
        return config
    if not source_spacings:
        raise InputDataError("the median source spacing needs source volumes: give them, or a spacing")
    median = float(np.median([in_plane_spacing_of(s, config.slice_axis) for s in source_spacings]))
    return replace(config, in_plane_spacing=round(median, 2))


def spacing_problem(spacing: tuple[float, ...], slice_axis_setting: str | int) -> str | None:
    """Why a volume's spacing looks lost or wrong (all 1 mm: a format that does not store it; in-plane
    outside :data:`PLAUSIBLE_IN_PLANE_SPACING_MM`), or None."""
    if all(value == 1.0 for value in spacing):
        return "every spacing is exactly 1 mm, as when a file format did not store it"
    in_plane = in_plane_spacing_of(spacing, slice_axis_setting)
    low, high = PLAUSIBLE_IN_PLANE_SPACING_MM
    if not low <= in_plane <= high:
        return f"an in-plane spacing of {in_plane:g} mm is outside {low:g}-{high:g} mm"
    return None


def spacing_warning(image: sitk.Image, config: PreprocessConfig) -> str | None:
    """The warning for a volume whose spacing looks lost or wrong (its spacing, and what it is resampled
    to), or None when it looks right."""
    spacing = image.GetSpacing()
    problem = spacing_problem(spacing, config.slice_axis)
    if problem is None:
        return None
    used = " x ".join(f"{value:g}" for value in spacing)
    model = (
        f", resampled in-plane to the model's {config.in_plane_spacing:g} mm"
        if isinstance(config.in_plane_spacing, (int, float))
        else ""
    )
    return f"{problem}; the spacing is used as stored, {used} mm{model}: check the file's header"


def resolve_slice_axis(spacing: tuple[float, ...], setting: str | int) -> int:
    """The slice axis: as set, or for "auto" the most coarsely sampled axis (ties go to the later axis, z first)."""
    if setting != "auto":
        return int(setting)
    largest = max(spacing)
    return max(axis for axis, value in enumerate(spacing) if value >= largest * (1 - _SPACING_TIE_TOLERANCE))


def _slices_first_shape(size: tuple[int, ...], slice_axis: int) -> tuple[int, int, int]:
    shape = list(reversed(size))
    return (shape.pop(2 - slice_axis), *shape)


def _to_slices_first(array: np.ndarray, slice_axis: int) -> np.ndarray:
    """numpy arrays are (z, y, x), so image axis ``a`` is array axis ``2 - a``."""
    return np.moveaxis(array, 2 - slice_axis, 0)


def _from_slices_first(array: np.ndarray, slice_axis: int) -> np.ndarray:
    return np.moveaxis(array, 0, 2 - slice_axis)


def _in_plane_grid(image: sitk.Image, slice_axis: int, spacing: float) -> _Grid:
    """The grid with ``spacing`` in plane that covers the same extent as ``image``, centred on it.

    The size is rounded up, so the new grid overhangs the old extent by less than one new voxel,
    split evenly on both sides: every new voxel centre lies inside the old extent and every old
    centre inside the new one, so neither direction of resampling falls off the edge.
    """
    old_spacing = image.GetSpacing()
    size = list(image.GetSize())
    new_spacing = list(old_spacing)
    shift = [0.0, 0.0, 0.0]
    for axis in range(3):
        if axis == slice_axis:
            continue
        extent = size[axis] * old_spacing[axis]
        size[axis] = max(1, math.ceil(extent / spacing - 1e-6))
        shift[axis] = (extent - size[axis] * spacing) / 2 + (spacing - old_spacing[axis]) / 2
        new_spacing[axis] = spacing
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) + direction @ np.asarray(shift)
    return _Grid(tuple(size), tuple(new_spacing), tuple(float(v) for v in origin), image.GetDirection())


def _crop_or_pad_regions(
    shape: tuple[int, int], size: int, centre: tuple[float, float] | None = None
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Matching windows in a slice of ``shape`` and in the ``size x size`` network slice: centred on the
    slice, or on ``centre`` (row, column of the slice) and moved inside the slice where it is larger."""
    source = []
    target = []
    for axis, length in enumerate(shape):
        kept = min(length, size)
        wanted = (length - size) // 2 if centre is None else math.floor(centre[axis] + 0.5 - size / 2)
        start_in_source = min(max(0, wanted), max(0, length - size))
        start_in_target = max(0, (size - length) // 2)
        source.append(slice(start_in_source, start_in_source + kept))
        target.append(slice(start_in_target, start_in_target + kept))
    return (source[0], source[1]), (target[0], target[1])


def _normalise(volume: np.ndarray, window: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """``volume`` to the preset's range (float32), with the statistics of ``window``'s voxels (the network's
    view of it); a constant window gives zeros."""
    values = volume.astype(np.float64)
    seen = window.astype(np.float64)
    if config.intensity == "ct_window":
        level, width = config.ct_window
        low, high = level - width / 2, level + width / 2
    else:
        low, high = (float(v) for v in np.percentile(seen, config.clip_percentiles))
    clipped = np.clip(values, low, high)
    if config.intensity == "percentile_zscore":
        seen_clipped = np.clip(seen, low, high)
        normalised = (clipped - seen_clipped.mean()) / max(float(seen_clipped.std()), _SCALE_FLOOR)
    else:
        normalised = (clipped - low) / max(high - low, _SCALE_FLOOR)
    return normalised.astype(np.float32)


def _label_classes(label: sitk.Image) -> np.ndarray:
    classes = sitk.GetArrayFromImage(label)
    if not np.issubdtype(classes.dtype, np.integer) or (
        classes.size and (classes.min() < 0 or classes.max() > 255)
    ):
        raise InputDataError(
            "the label image must hold classes 0..255 as integers, as read_label returns them"
        )
    return classes.astype(np.uint8)


def _to_network_slices(volume: np.ndarray, layout: _SliceLayout, size: int, fill: float) -> np.ndarray:
    """Working volume (z, y, x) to ``[S, size, size]`` slices, ``fill`` where the slice is padded."""
    slices_first = _to_slices_first(volume, layout.slice_axis)
    result = np.full((slices_first.shape[0], size, size), fill, dtype=volume.dtype)
    result[(slice(None), *layout.network_region)] = slices_first[(slice(None), *layout.working_region)]
    return result


def prepare_volume(
    image: sitk.Image,
    config: PreprocessConfig,
    label: sitk.Image | None = None,
    centre: tuple[float, float] | None = None,
    statistics_size: int | None = None,
) -> PreparedVolume:
    """Slices (and label slices) of ``image`` for the network, as ``config`` describes; the window is
    centred on ``centre`` (row, column of the working slices, see ``inference.heart_centre``) when given,
    normalised with the statistics of a ``statistics_size`` window about it (default: the window's own)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputDataError(
            f"a scalar 3D image is needed, got a {image.GetDimension()}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    if label is not None:
        check_same_geometry(image, label, "the label image")
    if config.in_plane_spacing == MEDIAN_SOURCE_SPACING:
        raise InputDataError("the median source spacing is decided when training starts (resolve_spacing)")
    input_grid = _Grid.of(image)
    slice_axis = resolve_slice_axis(input_grid.spacing, config.slice_axis)
    working_grid = input_grid
    image = sitk.Cast(image, sitk.sitkFloat32)
    if isinstance(config.in_plane_spacing, (int, float)) and not all(
        _close_to(value, config.in_plane_spacing)
        for axis, value in enumerate(input_grid.spacing)
        if axis != slice_axis
    ):
        working_grid = _in_plane_grid(image, slice_axis, float(config.in_plane_spacing))
        lowest = float(sitk.GetArrayViewFromImage(image).min())
        image = working_grid.resample(image, sitk.sitkLinear, lowest)
        if label is not None:
            label = working_grid.resample(label, sitk.sitkNearestNeighbor, 0)
    in_plane_shape = _slices_first_shape(working_grid.size, slice_axis)[1:]
    working_region, network_region = _crop_or_pad_regions(in_plane_shape, config.size, centre)
    layout = _SliceLayout(input_grid, working_grid, slice_axis, working_region, network_region)
    array = sitk.GetArrayViewFromImage(image)
    seen, _ = _crop_or_pad_regions(in_plane_shape, statistics_size or config.size, centre)
    window = _to_slices_first(array, slice_axis)[(slice(None), *seen)]
    volume = _normalise(array, window, config)
    slices = _to_network_slices(volume, layout, config.size, float(volume.min()))
    labels = None if label is None else _to_network_slices(_label_classes(label), layout, config.size, 0)
    return PreparedVolume(slices, labels, layout)


def _to_input_grid(
    prepared: PreparedVolume, network_slices: np.ndarray, fill: float, interpolator: int
) -> sitk.Image:
    """Undo crop / pad, the axis move and the resampling: ``network_slices`` on the input grid."""
    if network_slices.shape != prepared.slices.shape:
        raise ValueError(f"expected slices of shape {prepared.slices.shape}, got {network_slices.shape}")
    layout = prepared._layout
    working = np.full(layout.working_slices_shape, fill, dtype=network_slices.dtype)
    working[(slice(None), *layout.working_region)] = network_slices[(slice(None), *layout.network_region)]
    image = layout.working_grid.place(_from_slices_first(working, layout.slice_axis))
    if layout.resampled:
        image = layout.input_grid.resample(image, interpolator, fill)
    return image


def restore_labels(prepared: PreparedVolume, predicted: np.ndarray) -> sitk.Image:
    """Predicted classes ``[S, size, size]`` as a uint8 image on the input grid; 0 outside the crop."""
    classes = np.asarray(predicted)
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"predicted classes must be integers, got {classes.dtype}")
    return _to_input_grid(prepared, classes.astype(np.uint8), 0, sitk.sitkNearestNeighbor)


def restore_intensity(prepared: PreparedVolume, slices: np.ndarray) -> sitk.Image:
    """Float slices (normalised space) as a float32 image on the input grid; their minimum outside the crop."""
    values = np.asarray(slices, dtype=np.float32)
    fill = float(values.min()) if values.size else 0.0
    return _to_input_grid(prepared, values, fill, sitk.sitkLinear)
