"""Report figures and tables: training curve and overlay PNGs, the methods x structures table."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import load_case
from CardiacUDALib.metrics import EvaluationTable, StructureScore
from CardiacUDALib.report import (
    AnchorRow,
    OverlayRow,
    TranslationExample,
    comparison_markdown,
    most_labelled_slice,
    overlay_grid_png,
    overlay_png,
    plot_training_curve,
    slice_axis,
    translation_grid_png,
)

HISTORY = {
    "losses": [{"step": step, "loss": 2.0 / step, "adversarial": -0.1 * step} for step in range(5, 105, 5)],
    "validation": [
        {
            "step": step,
            "MYO": 0.3 + 0.001 * step,
            "LV": 0.5,
            "RV": 0.4,
            "mean": 0.4 + 0.002 * step - 1e-5 * step**2,
        }
        for step in range(20, 120, 20)
    ],
}


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_training_curve_is_a_png_with_both_panels(tmp_path):
    width, height = _png_size(plot_training_curve(HISTORY, tmp_path / "curve.png", "source_only"))
    assert 700 < width < 2000 and 250 < height < 800  # two panels side by side
    width_without_validation, _ = _png_size(
        plot_training_curve({"losses": HISTORY["losses"], "validation": []}, tmp_path / "no_val.png", "x")
    )
    assert width_without_validation > 700
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left behind


def test_slice_axis_is_the_largest_spacing_and_slice_the_most_labelled():
    image = sitk.Image(10, 12, 5, sitk.sitkFloat32)
    image.SetSpacing((1.2, 1.2, 8.0))
    assert slice_axis(image) == 0  # numpy order: (slices, rows, columns)
    labels = np.zeros((5, 12, 10), np.uint8)
    labels[1, 2:4, 2:4] = 1
    labels[3, 2:8, 2:8] = 2
    assert most_labelled_slice([labels], axis=0) == 3
    assert most_labelled_slice([np.zeros_like(labels)], axis=0) == 2  # nothing labelled: the middle


def test_overlay_has_one_column_per_label_image_and_refuses_another_grid(tiny_phantom, label_map, tmp_path):
    image, reference = load_case(tiny_phantom.target[0], label_map)
    shifted = sitk.BinaryDilate(reference, [1, 1, 0])
    two = _png_size(overlay_png(image, reference, {"a": shifted}, label_map, tmp_path / "two.png", "case"))
    three = _png_size(
        overlay_png(
            image, reference, {"a": shifted, "b": reference}, label_map, tmp_path / "three.png", "case"
        )
    )
    assert three[0] > two[0] + 150 and two[1] > 200  # a panel more, same height
    assert (
        _png_size(overlay_png(image, None, {"a": shifted}, label_map, tmp_path / "no_ref.png", "case"))[0]
        > 300
    )
    other_grid = sitk.Image(reference)
    other_grid.SetOrigin([value + 5.0 for value in reference.GetOrigin()])
    with pytest.raises(InputDataError, match="does not lie on the image grid"):
        overlay_png(image, reference, {"a": other_grid}, label_map, tmp_path / "bad.png", "case")


def test_overlay_grid_has_a_row_per_volume_and_refuses_rows_with_other_label_images(
    tiny_phantom, label_map, tmp_path
):
    image, reference = load_case(tiny_phantom.target[0], label_map)
    shifted = sitk.BinaryDilate(reference, [1, 1, 0])
    row = OverlayRow("t0", image, reference, {"a": shifted}, {"a": "a, Dice %\nMYO 50.0"})
    one = _png_size(overlay_grid_png([row], label_map, tmp_path / "one.png", "grid"))
    two = _png_size(overlay_grid_png([row, row], label_map, tmp_path / "two.png", "grid"))
    assert one[0] > 3 * 200 and two[0] == one[0]  # image, reference, prediction side by side
    assert two[1] > one[1] + 200  # a row more
    without_reference = OverlayRow("t1", image, None, {"a": shifted})
    with pytest.raises(ValueError, match="every row of an overlay grid needs the label images"):
        overlay_grid_png([row, without_reference], label_map, tmp_path / "bad.png", "grid")
    with pytest.raises(ValueError, match="at least one row"):
        overlay_grid_png([], label_map, tmp_path / "empty.png", "grid")


def test_translation_grid_has_three_panels_per_row_and_refuses_a_translation_off_the_source_grid(
    tiny_phantom, label_map, tmp_path
):
    source, source_label = load_case(tiny_phantom.source[0], label_map)
    target, target_label = load_case(tiny_phantom.target[0], label_map)
    translated = sitk.RescaleIntensity(sitk.Cast(source, sitk.sitkFloat32), 0.0, 1.0)
    example = TranslationExample("s0", source, source_label, translated, "t0", target, target_label)
    one_row = _png_size(translation_grid_png([example], tmp_path / "one.png", "grid"))
    unlabelled_target = TranslationExample("s0", source, source_label, translated, "t0", target, None)
    two_rows = _png_size(translation_grid_png([example, unlabelled_target], tmp_path / "two.png", "grid"))
    assert one_row[0] > 3 * 150 and two_rows[0] == one_row[0]  # three panels side by side
    assert two_rows[1] > one_row[1] + 150  # a row more
    shifted = sitk.Image(translated)
    shifted.SetOrigin([value + 5.0 for value in translated.GetOrigin()])
    moved = TranslationExample("s0", source, source_label, shifted, "t0", target, target_label)
    with pytest.raises(InputDataError, match="does not lie on the image grid"):
        translation_grid_png([moved], tmp_path / "bad.png", "grid")


def _summary(dice: float) -> dict:
    table = EvaluationTable(("MYO", "LV", "RV"), [])
    for case in ("a", "b"):
        scores = {name: StructureScore(dice, 1.5, 4.0, 100, 100) for name in ("MYO", "LV", "RV")}
        table.add(case, scores)
    return table.summary()


def test_comparison_table_has_one_row_per_method_and_marks_paper_rows():
    anchors = [AnchorRow("VarDA", {"MYO": 68.4, "LV": 84.4, "RV": 72.6}, "UDA-VAE++ 2022")]
    text = comparison_markdown({"source_only": _summary(0.5), "adabn": _summary(0.75)}, anchors)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "source_only",
        "adabn",
        "VarDA (paper: UDA-VAE++ 2022)",
    ]
    assert "| 50.0 ± 0.0 |" in rows[0] and "| 75.0 |" in rows[1] and "| 1.50 ± 0.00 |" in rows[1]
    assert "75.1" in rows[2]  # mean of the three published values
