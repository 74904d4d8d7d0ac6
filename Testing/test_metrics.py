"""Known-answer tests of the per-volume metrics, their spacing handling and the evaluation table."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import cdist

from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.metrics import (
    EvaluationTable,
    StructureScore,
    score_images,
    score_structure,
    score_volume,
)


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _slab(shape: tuple[int, int, int], thin_axis: int, position: int) -> np.ndarray:
    """A one-voxel-thick plate normal to ``thin_axis``, one voxel away from the other borders."""
    mask = np.zeros(shape, dtype=bool)
    region = [slice(1, size - 1) for size in shape]
    region[thin_axis] = slice(position, position + 1)
    mask[tuple(region)] = True
    return mask


def _brute_force_surface_distances(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Pooled surface distances from explicit 6-neighbour checks on a padded volume and all point pairs."""

    def surface_points_mm(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        has_outside_neighbour = np.zeros_like(padded)
        for axis in range(3):
            for step in (-1, 1):
                has_outside_neighbour |= ~np.roll(padded, step, axis=axis)
        surface = (padded & has_outside_neighbour)[1:-1, 1:-1, 1:-1]
        return np.argwhere(surface) * np.asarray(spacing)

    predicted_points, reference_points = surface_points_mm(prediction), surface_points_mm(reference)
    pairwise = cdist(predicted_points, reference_points)
    return np.concatenate([pairwise.min(axis=1), pairwise.min(axis=0)])


def test_identical_masks_score_perfectly() -> None:
    ball = _ball((16, 16, 16), (8, 8, 8), 5)
    score = score_structure(ball, ball, (2.0, 1.0, 1.0))
    assert score == StructureScore(1.0, 0.0, 0.0, int(ball.sum()), int(ball.sum()))


@pytest.mark.parametrize("centre", [(10.0, 10.0, 9.0), (10.0, 2.0, 9.0)], ids=["inside", "cut-by-border"])
def test_shifted_ball_matches_independent_counts_and_distances(centre: tuple[float, float, float]) -> None:
    spacing = (2.5, 1.0, 0.7)
    shape = (20, 20, 22)
    reference = _ball(shape, centre, 4.5)
    prediction = _ball(shape, (centre[0], centre[1], centre[2] + 2), 4.5)
    score = score_structure(prediction, reference, spacing)

    overlap = np.count_nonzero(prediction & reference)
    assert score.dice == pytest.approx(2 * overlap / (prediction.sum() + reference.sum()))
    distances = _brute_force_surface_distances(prediction, reference, spacing)
    assert score.assd_mm == pytest.approx(distances.mean())
    assert score.hd95_mm == pytest.approx(np.percentile(distances, 95))
    # Every surface voxel has its shifted copy on the other surface, 2 voxels of 0.7 mm away.
    assert 0 < score.assd_mm <= score.hd95_mm <= 2 * 0.7 + 1e-9


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_displaced_slab_distance_is_displacement_times_spacing(axis: int) -> None:
    spacing = (8.0, 1.5, 0.5)
    shape = (9, 10, 11)
    displacement = 3
    reference = _slab(shape, axis, 2)
    prediction = _slab(shape, axis, 2 + displacement)
    score = score_structure(prediction, reference, spacing)
    assert score.dice == 0.0
    assert score.assd_mm == pytest.approx(displacement * spacing[axis])
    assert score.hd95_mm == pytest.approx(displacement * spacing[axis])


def test_thick_slices_scale_distances_along_z() -> None:
    reference = _slab((9, 10, 11), 0, 2)
    prediction = _slab((9, 10, 11), 0, 4)
    thin = score_structure(prediction, reference, (1.0, 1.0, 1.0))
    thick = score_structure(prediction, reference, (8.0, 1.0, 1.0))
    assert thick.assd_mm == pytest.approx(8 * thin.assd_mm)
    assert thick.hd95_mm == pytest.approx(8 * thin.hd95_mm)


def test_disjoint_cubes_have_zero_dice_and_finite_distance() -> None:
    reference = np.zeros((10, 10, 20), dtype=bool)
    prediction = np.zeros_like(reference)
    reference[2:6, 2:6, 2:6] = True
    prediction[2:6, 2:6, 12:16] = True
    score = score_structure(prediction, reference, (1.0, 1.0, 1.0))
    assert score.dice == 0.0
    assert score.assd_mm > 0 and math.isfinite(score.hd95_mm)


def test_empty_structures() -> None:
    empty = np.zeros((5, 5, 5), dtype=bool)
    cube = empty.copy()
    cube[1:3, 1:3, 1:3] = True
    assert score_structure(empty, empty, (1.0, 1.0, 1.0)) == StructureScore(1.0, 0.0, 0.0, 0, 0)
    for prediction, reference in ((empty, cube), (cube, empty)):
        score = score_structure(prediction, reference, (1.0, 1.0, 1.0))
        assert score.dice == 0.0 and math.isnan(score.assd_mm) and math.isnan(score.hd95_mm)
        assert (score.predicted_voxels, score.reference_voxels) == (prediction.sum(), reference.sum())


def test_score_volume_maps_class_indices_to_names_and_checks_shapes() -> None:
    reference = np.zeros((6, 6, 6), dtype=np.int16)
    reference[1:3, 1:3, 1:3] = 1
    reference[3:5, 3:5, 3:5] = 2
    prediction = reference.copy()
    prediction[3:5, 3:5, 3:5] = 0
    scores = score_volume(prediction, reference, (1.0, 1.0, 1.0), ["LV", "MYO", "RV"])
    assert list(scores) == ["LV", "MYO", "RV"]
    assert scores["LV"].dice == 1.0
    assert scores["MYO"].dice == 0.0 and scores["MYO"].reference_voxels == 8
    assert scores["RV"] == StructureScore(1.0, 0.0, 0.0, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        score_volume(prediction[:-1], reference, (1.0, 1.0, 1.0), ["LV"])


def _label_image(array: np.ndarray, spacing_xyz: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    return image


def test_score_images_takes_spacing_from_the_images_in_xyz_order() -> None:
    reference = _slab((9, 10, 11), 0, 2).astype(np.uint8)
    prediction = _slab((9, 10, 11), 0, 3).astype(np.uint8)
    spacing_xyz = (0.5, 1.0, 8.0)
    scores = score_images(
        _label_image(prediction, spacing_xyz), _label_image(reference, spacing_xyz), ["MYO"]
    )
    assert scores["MYO"].assd_mm == pytest.approx(8.0)


@pytest.mark.parametrize(
    "change, differing",
    [
        (lambda image: image.SetSpacing((1.0, 1.0, 2.0)), "spacing"),
        (lambda image: image.SetOrigin((0.0, 0.0, 1.0)), "origin"),
        (lambda image: image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)), "direction"),
    ],
)
def test_score_images_rejects_other_grids(change, differing: str) -> None:
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    reference = _label_image(array, (1.0, 1.0, 1.0))
    prediction = _label_image(array, (1.0, 1.0, 1.0))
    prediction.SetOrigin((0.0, 0.0, 5e-5))  # within tolerance: still the same grid
    assert score_images(prediction, reference, ["LV"])["LV"].dice == 1.0
    change(prediction)
    with pytest.raises(CardiacUDAError, match=differing):
        score_images(prediction, reference, ["LV"])


def test_score_images_rejects_other_size() -> None:
    reference = _label_image(np.zeros((4, 5, 6)), (1.0, 1.0, 1.0))
    prediction = _label_image(np.zeros((4, 5, 7)), (1.0, 1.0, 1.0))
    with pytest.raises(CardiacUDAError, match="size"):
        score_images(prediction, reference, ["LV"])


def _score(dice: float, distance: float) -> StructureScore:
    """A score whose HD95 is twice its ASSD, so both columns are checked with one hand-computed series."""
    return StructureScore(dice, distance, 2 * distance, reference_voxels=10, predicted_voxels=10)


def _constructed_table() -> EvaluationTable:
    table = EvaluationTable(("LV", "MYO"))
    table.add("case1", {"LV": _score(0.8, 1.0), "MYO": _score(0.6, 2.0)})
    table.add("case2", {"LV": _score(0.9, 3.0), "MYO": _score(0.0, math.nan)})
    table.add("case3", {"LV": _score(0.7, 2.0), "MYO": _score(0.7, 4.0)})
    return table


def test_summary_means_stds_and_undefined_counts() -> None:
    summary = _constructed_table().summary()
    assert summary["cases"] == 3
    lv, myo = summary["structures"]["LV"], summary["structures"]["MYO"]
    assert lv["dice_mean"] == pytest.approx(0.8)
    assert lv["dice_std"] == pytest.approx(math.sqrt((0.0 + 0.01 + 0.01) / 3))
    assert (lv["assd_mm_mean"], lv["hd95_mm_mean"]) == pytest.approx((2.0, 4.0))
    assert lv["assd_mm_std"] == pytest.approx(math.sqrt(2 / 3))
    assert lv["hd95_mm_std"] == pytest.approx(math.sqrt(8 / 3))
    assert lv["undefined_distance_cases"] == 0

    myo_dice_mean = 1.3 / 3
    assert myo["dice_mean"] == pytest.approx(myo_dice_mean)
    expected_myo_dice_std = math.sqrt(sum((d - myo_dice_mean) ** 2 for d in (0.6, 0.0, 0.7)) / 3)
    assert myo["dice_std"] == pytest.approx(expected_myo_dice_std)
    # The NaN of case2 is skipped (mean of 2 and 4) and counted.
    assert (myo["assd_mm_mean"], myo["assd_mm_std"]) == pytest.approx((3.0, 1.0))
    assert (myo["hd95_mm_mean"], myo["hd95_mm_std"]) == pytest.approx((6.0, 2.0))
    assert myo["undefined_distance_cases"] == 1

    assert summary["mean"]["dice"] == pytest.approx((0.8 + myo_dice_mean) / 2)
    assert summary["mean"]["assd_mm"] == pytest.approx(2.5)
    assert summary["mean"]["hd95_mm"] == pytest.approx(5.0)


def test_summary_of_all_undefined_distances_is_nan_and_left_out_of_the_mean() -> None:
    table = EvaluationTable(("LV", "MYO"))
    table.add("case1", {"LV": _score(0.5, 1.0), "MYO": _score(0.0, math.nan)})
    summary = table.summary()
    assert math.isnan(summary["structures"]["MYO"]["assd_mm_mean"])
    assert math.isnan(summary["structures"]["MYO"]["hd95_mm_std"])
    assert summary["mean"]["assd_mm"] == 1.0
    assert summary["mean"]["dice"] == 0.25
    empty_summary = EvaluationTable(("LV",)).summary()
    assert empty_summary["cases"] == 0 and math.isnan(empty_summary["mean"]["dice"])


def test_add_rejects_other_structures_and_repeated_cases() -> None:
    table = _constructed_table()
    with pytest.raises(ValueError, match="expects"):
        table.add("case4", {"LV": _score(0.8, 1.0)})
    with pytest.raises(ValueError, match="already"):
        table.add("case1", {"LV": _score(0.8, 1.0), "MYO": _score(0.8, 1.0)})


def test_write_csv(tmp_path) -> None:
    path = _constructed_table().write_csv(tmp_path / "scores.csv")
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == [
        "case",
        "LV_dice",
        "LV_assd_mm",
        "LV_hd95_mm",
        "MYO_dice",
        "MYO_assd_mm",
        "MYO_hd95_mm",
    ]
    assert [row["case"] for row in rows] == ["case1", "case2", "case3"]
    assert float(rows[0]["MYO_hd95_mm"]) == 4.0
    assert math.isnan(float(rows[1]["MYO_assd_mm"]))
    assert list(tmp_path.iterdir()) == [path]


def test_write_json_is_strict_json_with_null_for_undefined(tmp_path) -> None:
    table = _constructed_table()
    path = table.write_json(tmp_path / "scores.json")

    def refuse_nan(constant: str) -> None:
        raise AssertionError(f"{constant} is not strict JSON")

    written = json.loads(path.read_text(), parse_constant=refuse_nan)
    assert [entry["case"] for entry in written["per_case"]] == ["case1", "case2", "case3"]
    assert written["per_case"][1]["structures"]["MYO"] == {
        "dice": 0.0,
        "assd_mm": None,
        "hd95_mm": None,
        "reference_voxels": 10,
        "predicted_voxels": 10,
    }
    assert written["summary"] == table.summary()


def test_markdown_table() -> None:
    text = _constructed_table().markdown("MR to CT")
    assert text.startswith("### MR to CT\n")
    assert "| LV | 80.0 ± 8.2 | 2.00 ± 0.82 | 4.00 ± 1.63 |" in text
    assert "| MYO | 43.3 ± 30.9 | 3.00 ± 1.00 | 6.00 ± 2.00 |" in text
    assert "| Mean | 61.7 | 2.50 | 5.00 |" in text
    assert "MYO 1 of 3 volumes" in text
