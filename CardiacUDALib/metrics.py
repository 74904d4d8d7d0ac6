"""Per-volume 3D segmentation metrics per structure, in millimetres, and their summary over volumes.

Every published MR<->CT number is a **per-volume 3D** score per foreground structure, then a mean
and standard deviation over test volumes, and a "Mean" over structures (research notes §1.4). The
released scripts differ in ways that change the numbers, so the definitions used here are fixed:

* **Dice** ``2|P∩R| / (|P| + |R|)`` on the whole 3D volume of one structure (not per slice).
* **Surface** of a mask: its voxels with at least one 6-neighbour (face neighbour) outside the mask.
  The outside of the field of view counts as background, so a structure cut by the image border
  still has a surface there.
* **Surface distances** from each surface voxel of one mask to the nearest surface voxel of the
  other, with the voxel spacing honoured (``distance_transform_edt(..., sampling=spacing)``): MRI
  slices are 5-12 mm thick, so distances in voxels would not be comparable across axes or data sets.
* **ASSD** is the mean of the distances of *both* directions pooled, i.e.
  ``(Σ d(p, R) + Σ d(r, P)) / (|∂P| + |∂R|)`` (Heimann et al. 2009). medpy's ``assd`` used by
  SIFA / PnP-AdaNet / CISFA averages the two directed means instead, and in voxels; the two agree
  when both surfaces have about as many voxels.
* **HD95** is the 95th percentile (linear interpolation) of the same pooled distances, as medpy's
  ``hd95``; MONAI instead takes the larger of the two directed 95th percentiles.

Empty structures, where the released scripts crash or silently differ:

* both prediction and reference empty: Dice 1.0, ASSD 0.0, HD95 0.0 — nothing to find, nothing found;
* exactly one empty: Dice 0.0, ASSD and HD95 **NaN** — a distance to nothing is undefined. NaN
  distances are left out of the distance means and standard deviations and are **counted** per
  structure (``undefined_distance_cases``) so that a method cannot look better by missing structures.

Aggregation is an explicit (volume x structure) table, never a reshape of a flat list (the SIFA and
CISFA evaluation bugs, research notes §12). In the JSON export undefined values are written as
``null`` (strict JSON that any reader accepts); in the CSV export they are written as ``nan``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CardiacUDALib.atomic import atomic_path, write_json_atomic
from CardiacUDALib.errors import CardiacUDAError

METRIC_NAMES = ("dice", "assd_mm", "hd95_mm")
GEOMETRY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class StructureScore:
    """Scores of one structure in one volume; the voxel counts tell an empty structure apart."""

    dice: float
    assd_mm: float
    hd95_mm: float
    reference_voxels: int
    predicted_voxels: int


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask.

    ``border_value=0`` treats everything beyond the array as background, which is the same as
    padding the volume: an object touching the border gets a surface on the border.
    """
    face_neighbours = ndimage.generate_binary_structure(mask.ndim, 1)
    interior = ndimage.binary_erosion(mask, structure=face_neighbours, border_value=0)
    return mask & ~interior


def _distances_to_surface(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """Distance in mm from every voxel of ``from_surface`` to the nearest voxel of ``to_surface``."""
    distance_map = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_map[from_surface]


def _require_same_shape(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction shape {prediction.shape} differs from reference shape {reference.shape}"
        )


def dice_coefficient(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice ``2|P∩R| / (|P| + |R|)`` of two masks of one structure; 1.0 when both are empty."""
    predicted_mask = np.asarray(prediction, dtype=bool)
    reference_mask = np.asarray(reference, dtype=bool)
    _require_same_shape(predicted_mask, reference_mask)
    voxels = int(np.count_nonzero(predicted_mask)) + int(np.count_nonzero(reference_mask))
    if voxels == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(predicted_mask & reference_mask)) / voxels


def score_structure(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]
) -> StructureScore:
    """Dice, ASSD and HD95 of one structure; masks and ``spacing`` in numpy order (z, y, x)."""
    predicted_mask = np.asarray(prediction, dtype=bool)
    reference_mask = np.asarray(reference, dtype=bool)
    _require_same_shape(predicted_mask, reference_mask)
    if len(spacing) != predicted_mask.ndim:
        raise ValueError(
            f"spacing {tuple(spacing)} has not one value per axis of shape {predicted_mask.shape}"
        )
    predicted_voxels = int(np.count_nonzero(predicted_mask))
    reference_voxels = int(np.count_nonzero(reference_mask))
    if predicted_voxels == 0 and reference_voxels == 0:
        return StructureScore(1.0, 0.0, 0.0, reference_voxels, predicted_voxels)
    if predicted_voxels == 0 or reference_voxels == 0:
        return StructureScore(0.0, math.nan, math.nan, reference_voxels, predicted_voxels)
    dice = dice_coefficient(predicted_mask, reference_mask)
    # Cropping to the bounding box of both masks changes no distance (all surface voxels lie inside it)
    # and keeps the distance transforms cheap for small structures in large volumes.
    union_box = ndimage.find_objects((predicted_mask | reference_mask).astype(np.uint8))[0]
    predicted_surface = _surface(predicted_mask[union_box])
    reference_surface = _surface(reference_mask[union_box])
    distances = np.concatenate(
        [
            _distances_to_surface(predicted_surface, reference_surface, spacing),
            _distances_to_surface(reference_surface, predicted_surface, spacing),
        ]
    )
    return StructureScore(
        dice=dice,
        assd_mm=float(distances.mean()),
        hd95_mm=float(np.percentile(distances, 95)),
        reference_voxels=reference_voxels,
        predicted_voxels=predicted_voxels,
    )


def score_volume(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    class_names: Sequence[str],
) -> dict[str, StructureScore]:
    """Scores of every foreground class of two class-index arrays; class ``i`` is ``class_names[i - 1]``."""
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    _require_same_shape(prediction, reference)
    return {
        name: score_structure(prediction == index, reference == index, spacing_zyx)
        for index, name in enumerate(class_names, start=1)
    }


def _geometry_differences(prediction: sitk.Image, reference: sitk.Image) -> list[str]:
    """What differs between the grids of two images, one phrase per property."""
    if prediction.GetSize() != reference.GetSize():
        return [f"size {prediction.GetSize()} vs {reference.GetSize()}"]
    properties = {
        "spacing": sitk.Image.GetSpacing,
        "origin": sitk.Image.GetOrigin,
        "direction": sitk.Image.GetDirection,
    }
    return [
        f"{name} {get(prediction)} vs {get(reference)}"
        for name, get in properties.items()
        if not np.allclose(get(prediction), get(reference), rtol=0.0, atol=GEOMETRY_TOLERANCE)
    ]


def score_images(
    prediction: sitk.Image, reference: sitk.Image, class_names: Sequence[str]
) -> dict[str, StructureScore]:
    """Scores of two 3D class-index label images that must share one grid (spacing taken from the images)."""
    dimensions = (prediction.GetDimension(), reference.GetDimension())
    if dimensions != (3, 3):
        raise CardiacUDAError(
            f"3D label images are needed, got prediction {dimensions[0]}D and reference {dimensions[1]}D"
        )
    differences = _geometry_differences(prediction, reference)
    if differences:
        raise CardiacUDAError(
            "the prediction and the reference label image are not on the same grid ("
            + "; ".join(differences)
            + "): resample the prediction onto the reference grid with nearest-neighbour interpolation"
        )
    spacing_zyx = tuple(reversed(reference.GetSpacing()))  # SimpleITK is (x, y, z), its arrays are [z, y, x]
    return score_volume(
        sitk.GetArrayViewFromImage(prediction),
        sitk.GetArrayViewFromImage(reference),
        spacing_zyx,
        class_names,
    )


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (ddof 0) of the defined (non-NaN) values; NaN when none is defined."""
    array = np.asarray(values, dtype=float)
    defined = array[~np.isnan(array)]
    if defined.size == 0:
        return math.nan, math.nan
    return float(defined.mean()), float(defined.std())


def _nan_to_none(value: Any) -> Any:
    """Replace NaN by ``None`` in nested dicts and lists, so that the JSON export is strict JSON."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _format_statistic(mean: float, std: float | None, scale: float, decimals: int) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean * scale:.{decimals}f}"
    return text if std is None or math.isnan(std) else f"{text} ± {std * scale:.{decimals}f}"


@dataclass
class EvaluationTable:
    """Scores of every (volume, structure) pair, added one volume at a time, and their summaries."""

    class_names: tuple[str, ...]
    rows: list[tuple[str, dict[str, StructureScore]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)

    def add(self, case: str, scores: dict[str, StructureScore]) -> None:
        """Add one volume; it must be scored on exactly the table's structures and not be there already."""
        if set(scores) != set(self.class_names):
            raise ValueError(
                f"case {case!r} has scores for {sorted(scores)}, the table expects {list(self.class_names)}"
            )
        if any(existing == case for existing, _ in self.rows):
            raise ValueError(f"case {case!r} is already in the table")
        self.rows.append((case, dict(scores)))

    def _structure_summary(self, name: str) -> dict[str, float | int]:
        scores = [case_scores[name] for _, case_scores in self.rows]
        summary: dict[str, float | int] = {}
        for metric in METRIC_NAMES:
            summary[f"{metric}_mean"], summary[f"{metric}_std"] = _mean_std(
                [getattr(s, metric) for s in scores]
            )
        summary["undefined_distance_cases"] = sum(
            math.isnan(s.assd_mm) or math.isnan(s.hd95_mm) for s in scores
        )
        return summary

    def summary(self) -> dict[str, Any]:
        """Mean and std over volumes per structure, and the mean over structures of those means."""
        structures = {name: self._structure_summary(name) for name in self.class_names}
        over_structures = {
            metric: _mean_std([structure[f"{metric}_mean"] for structure in structures.values()])[0]
            for metric in METRIC_NAMES
        }
        return {"cases": len(self.rows), "structures": structures, "mean": over_structures}

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per volume: ``case`` then ``<structure>_dice``, ``_assd_mm``, ``_hd95_mm`` per structure."""
        header = ["case"] + [f"{name}_{metric}" for name in self.class_names for metric in METRIC_NAMES]
        with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            for case, scores in self.rows:
                values = [
                    getattr(scores[name], metric) for name in self.class_names for metric in METRIC_NAMES
                ]
                writer.writerow([case, *values])
        return Path(path)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """``{"per_case": [{"case", "structures": {name: scores}}], "summary": summary()}``, NaN as null."""
        per_case = [
            {
                "case": case,
                "structures": {name: dataclasses.asdict(scores[name]) for name in self.class_names},
            }
            for case, scores in self.rows
        ]
        return write_json_atomic(path, _nan_to_none({"per_case": per_case, "summary": self.summary()}))

    def markdown(self, title: str | None = None) -> str:
        """A report table: mean ± std over volumes per structure (Dice in %), a Mean row, undefined counts."""
        summary = self.summary()
        lines = [f"### {title}", ""] if title else []
        lines += [
            f"{summary['cases']} volumes; mean ± population std over volumes.",
            "",
            "| Structure | Dice % mean ± std | ASSD mm mean ± std | HD95 mm mean ± std |",
            "|---|---:|---:|---:|",
        ]
        scale_and_decimals = {"dice": (100.0, 1), "assd_mm": (1.0, 2), "hd95_mm": (1.0, 2)}
        for name, structure in summary["structures"].items():
            cells = [
                _format_statistic(
                    structure[f"{metric}_mean"], structure[f"{metric}_std"], *scale_and_decimals[metric]
                )
                for metric in METRIC_NAMES
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        mean_cells = [
            _format_statistic(summary["mean"][m], None, *scale_and_decimals[m]) for m in METRIC_NAMES
        ]
        lines.append("| Mean | " + " | ".join(mean_cells) + " |")
        undefined = {name: s["undefined_distance_cases"] for name, s in summary["structures"].items()}
        if any(undefined.values()):
            counts = ", ".join(f"{name} {count}" for name, count in undefined.items() if count)
            lines += [
                "",
                f"ASSD/HD95 undefined (structure empty in exactly one of prediction and reference), "
                f"left out of the distance statistics: {counts} of {summary['cases']} volumes.",
            ]
        return "\n".join(lines) + "\n"
