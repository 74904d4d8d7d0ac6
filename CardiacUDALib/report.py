"""Figures and tables shared by the demo and benchmark reports.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so that no window or global
backend state is touched when the library runs inside Slicer or a worker process, and every PNG is
written through :func:`~CardiacUDALib.atomic.atomic_path` like every other output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from CardiacUDALib.atomic import atomic_path
from CardiacUDALib.io import LabelMap, check_same_geometry
from CardiacUDALib.metrics import _format_statistic

# Class i (1-based) is drawn with STRUCTURE_COLOURS[(i - 1) % len]: the same structure keeps its colour
# in every panel and every report.
STRUCTURE_COLOURS = ("#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22")
OVERLAY_ALPHA = 0.45
_DISPLAY_PERCENTILES = (1.0, 99.0)
_MISSING = "—"


def _save_figure(figure: Figure, path: str | Path) -> Path:
    destination = Path(path)
    FigureCanvasAgg(figure)  # render with Agg: no GUI backend, no pyplot state
    with atomic_path(destination) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    return destination


# ---- training curve ------------------------------------------------------------------------------


def _set_loss_scale(axes: Axes, values: Sequence[float]) -> None:
    """Log scale shows the late, small changes of a loss; adversarial losses can be <= 0, then symlog."""
    if values and min(values) > 0:
        axes.set_yscale("log")
    else:
        axes.set_yscale("symlog", linthresh=1e-2)


def plot_training_curve(history: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Losses (left) and validation Dice (right) against the step, with the selected (best) step marked.

    ``history`` is the engine's: ``{"losses": [{"step", <loss>: value}], "validation": [{"step",
    <structure>: dice, ..., "mean"}]}``; the best step is the one with the highest ``mean``, which is
    how the engine picks ``best.pt``.
    """
    figure = Figure(figsize=(11, 4))
    loss_axes, dice_axes = figure.subplots(1, 2)
    losses = list(history.get("losses", []))
    loss_names = sorted({name for entry in losses for name in entry if name != "step"})
    all_loss_values = []
    for name in loss_names:
        points = [(entry["step"], entry[name]) for entry in losses if name in entry]
        steps, values = zip(*points)
        all_loss_values += list(values)
        loss_axes.plot(steps, values, label=name)
    _set_loss_scale(loss_axes, all_loss_values)
    loss_axes.set(xlabel="step", ylabel="loss", title="training losses")
    if loss_names:
        loss_axes.legend(fontsize="small")

    validation = list(history.get("validation", []))
    if validation:
        steps = [entry["step"] for entry in validation]
        structures = [name for name in validation[0] if name not in ("step", "mean")]
        for name in structures:
            dice_axes.plot(steps, [entry[name] for entry in validation], ".-", label=name, alpha=0.7)
        dice_axes.plot(steps, [entry["mean"] for entry in validation], "k.-", linewidth=2, label="mean")
        best = max(validation, key=lambda entry: entry["mean"])
        dice_axes.axvline(best["step"], color="grey", linestyle="--")
        dice_axes.plot(
            [best["step"]], [best["mean"]], "k*", markersize=14, label=f"selected (step {best['step']})"
        )
        dice_axes.set_ylim(0, 1)
        dice_axes.legend(fontsize="small")
    else:
        dice_axes.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=dice_axes.transAxes)
    dice_axes.set(xlabel="step", ylabel="Dice", title="validation Dice")
    figure.suptitle(title)
    return _save_figure(figure, path)


# ---- overlays ------------------------------------------------------------------------------------


def slice_axis(image: sitk.Image) -> int:
    """The numpy axis of the largest spacing: the through-plane axis of a short-axis stack."""
    return image.GetDimension() - 1 - int(np.argmax(image.GetSpacing()))


def most_labelled_slice(class_arrays: Sequence[np.ndarray], axis: int) -> int:
    """The slice along ``axis`` with the most labelled voxels over ``class_arrays`` (the middle one if none)."""
    other_axes = tuple(a for a in range(class_arrays[0].ndim) if a != axis)
    areas = sum(np.count_nonzero(array, axis=other_axes) for array in class_arrays)
    return int(np.argmax(areas)) if np.any(areas) else class_arrays[0].shape[axis] // 2


def _display_aspect(image: sitk.Image, axis: int) -> float:
    """Row over column spacing of the slices across numpy ``axis``: square pixels on screen are mm."""
    row_spacing, column_spacing = (image.GetSpacing()[::-1][a] for a in range(3) if a != axis)
    return row_spacing / column_spacing


def _classes(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.intp)


def _display_window(slice_pixels: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(slice_pixels, _DISPLAY_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def _colour_table(num_classes: int) -> np.ndarray:
    """RGBA per class; class 0 (background) fully transparent."""
    table = np.zeros((num_classes, 4))
    for index in range(1, num_classes):
        table[index] = to_rgba(STRUCTURE_COLOURS[(index - 1) % len(STRUCTURE_COLOURS)], OVERLAY_ALPHA)
    return table


def _show_panel(
    axes: Axes,
    pixels: np.ndarray,
    window: tuple[float, float],
    classes: np.ndarray | None,
    colours: np.ndarray,
    aspect: float,
    title: str,
) -> None:
    axes.imshow(pixels, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
    if classes is not None:
        axes.imshow(colours[classes], aspect=aspect, interpolation="nearest")
    axes.set_title(title, fontsize="medium")
    axes.set_axis_off()


@dataclass(frozen=True)
class OverlayRow:
    """One row of an overlay grid: a volume, its reference and predictions (classes on the image grid).

    ``titles`` gives the panel title of ``"reference"`` and of each prediction name (default: the name);
    the image panel is titled with ``name`` and the slice shown.
    """

    name: str
    image: sitk.Image
    reference: sitk.Image | None
    predictions: Mapping[str, sitk.Image]
    titles: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _OverlaySlice:
    """The slice of a row that its panels show: grey pixels, their display, and each label image's classes."""

    index: int
    pixels: np.ndarray
    aspect: float
    window: tuple[float, float]
    classes: dict[str, np.ndarray]


def _overlay_slice(row: OverlayRow) -> _OverlaySlice:
    """The slice with the largest reference area (largest predicted area without a reference) of ``row``."""
    for name, labels in [("reference", row.reference), *row.predictions.items()]:
        if labels is not None:
            check_same_geometry(row.image, labels, f"the {name} label image of the overlay")
    axis = slice_axis(row.image)
    label_volumes = {"reference": row.reference} if row.reference is not None else {}
    label_volumes.update(row.predictions)
    if not label_volumes:
        raise ValueError("an overlay needs a reference or at least one prediction")
    class_arrays = {name: _classes(labels) for name, labels in label_volumes.items()}
    chosen_by = [class_arrays["reference"]] if row.reference is not None else list(class_arrays.values())
    index = most_labelled_slice(chosen_by, axis)
    pixels = np.take(sitk.GetArrayViewFromImage(row.image), index, axis=axis)
    return _OverlaySlice(
        index,
        pixels,
        _display_aspect(row.image, axis),
        _display_window(pixels),
        {name: np.take(array, index, axis=axis) for name, array in class_arrays.items()},
    )


def _show_overlay_row(
    panels: Sequence[Axes], shown: _OverlaySlice, colours: np.ndarray, titles: Sequence[str]
) -> None:
    """The grey slice alone, then the slice under each label image of ``shown``; ``titles`` in that order."""
    for axes, classes, title in zip(panels, [None, *shown.classes.values()], titles):
        _show_panel(axes, shown.pixels, shown.window, classes, colours, shown.aspect, title)


def _add_structure_legend(figure: Figure, colours: np.ndarray, label_map: LabelMap) -> None:
    legend = [
        Patch(facecolor=colours[index], edgecolor="none", label=name)
        for index, name in enumerate(label_map.class_names, start=1)
    ]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), frameon=False)


def overlay_png(
    image: sitk.Image,
    reference: sitk.Image | None,
    predictions: Mapping[str, sitk.Image],
    label_map: LabelMap,
    path: str | Path,
    title: str,
) -> Path:
    """One slice of ``image`` with the reference and each method's prediction drawn over it.

    All label images hold classes (0..N, as ``read_label`` / ``segment_image`` return them) on the
    image's grid. The slice is the one with the largest reference area, or the largest predicted area
    when there is no reference, so that the figure shows the heart rather than an empty apex.
    """
    shown = _overlay_slice(OverlayRow(title, image, reference, predictions))
    colours = _colour_table(label_map.num_classes)
    figure = Figure(figsize=(3.2 * (1 + len(shown.classes)), 3.8))
    panels = np.atleast_1d(figure.subplots(1, 1 + len(shown.classes)))
    _show_overlay_row(panels, shown, colours, ["image", *shown.classes])
    _add_structure_legend(figure, colours, label_map)
    figure.suptitle(f"{title}, slice {shown.index}")
    return _save_figure(figure, path)


def overlay_grid_png(rows: Sequence[OverlayRow], label_map: LabelMap, path: str | Path, title: str) -> Path:
    """One row per volume: its image, then its reference and predictions drawn over the same slice.

    Every row must have the same label images (reference or not, the same prediction names), so that
    each column shows one kind of label image.
    """
    if not rows:
        raise ValueError("an overlay grid needs at least one row")
    shown = [_overlay_slice(row) for row in rows]
    columns = list(shown[0].classes)
    if any(list(row_slice.classes) != columns for row_slice in shown):
        raise ValueError(f"every row of an overlay grid needs the label images {columns}")
    colours = _colour_table(label_map.num_classes)
    height = 3.65 * len(rows) + 1.1  # inches: square panels with two title lines, suptitle, legend
    figure = Figure(figsize=(3.2 * (1 + len(columns)), height))
    figure.subplots_adjust(
        left=0.01, right=0.99, top=1 - 1.2 / height, bottom=0.5 / height, hspace=0.2, wspace=0.05
    )
    panel_rows = np.atleast_2d(figure.subplots(len(rows), 1 + len(columns)))
    for panels, row, row_slice in zip(panel_rows, rows, shown):
        titles = [f"{row.name}, slice {row_slice.index}", *(row.titles.get(name, name) for name in columns)]
        _show_overlay_row(panels, row_slice, colours, titles)
    _add_structure_legend(figure, colours, label_map)
    figure.suptitle(title)
    return _save_figure(figure, path)


@dataclass(frozen=True)
class TranslationExample:
    """One row of a translation grid: a source volume, its translation (same grid) and a target volume.

    ``source_label`` / ``target_label`` (classes on their image's grid) choose the slice shown, the one
    with the largest labelled area; without a target label the target's middle slice is shown.
    """

    source_name: str
    source: sitk.Image
    source_label: sitk.Image
    translated: sitk.Image
    target_name: str
    target: sitk.Image
    target_label: sitk.Image | None


def _labelled_slice(image: sitk.Image, label: sitk.Image | None) -> tuple[np.ndarray, float, int]:
    """The most labelled slice of ``image`` (middle slice without a label), its display aspect and index."""
    axis = slice_axis(image)
    if label is None:
        index = image.GetSize()[::-1][axis] // 2
    else:
        check_same_geometry(image, label, "the label image of the translation grid")
        index = most_labelled_slice([_classes(label)], axis)
    return np.take(sitk.GetArrayViewFromImage(image), index, axis=axis), _display_aspect(image, axis), index


def translation_grid_png(examples: Sequence[TranslationExample], path: str | Path, title: str) -> Path:
    """Rows of source / translated source / target slices: what the generator does to the source.

    Each panel has its own 1-99 percentile grey window (the three live on different intensity scales:
    raw source, normalised translation, raw target), so the grid compares contrast, not absolute values.
    """
    if not examples:
        raise ValueError("a translation grid needs at least one example")
    figure = Figure(figsize=(9.6, 3.4 * len(examples)))
    rows = np.atleast_2d(figure.subplots(len(examples), 3))
    no_colours = np.zeros((1, 4))
    for panels, example in zip(rows, examples):
        check_same_geometry(example.source, example.translated, "the translated image")
        source_pixels, aspect, index = _labelled_slice(example.source, example.source_label)
        translated_pixels = np.take(
            sitk.GetArrayViewFromImage(example.translated), index, axis=slice_axis(example.source)
        )
        target_pixels, target_aspect, target_index = _labelled_slice(example.target, example.target_label)
        for axes, pixels, panel_aspect, panel_title in (
            (panels[0], source_pixels, aspect, f"source {example.source_name}, slice {index}"),
            (panels[1], translated_pixels, aspect, "translated source"),
            (panels[2], target_pixels, target_aspect, f"target {example.target_name}, slice {target_index}"),
        ):
            _show_panel(axes, pixels, _display_window(pixels), None, no_colours, panel_aspect, panel_title)
    figure.suptitle(title)
    return _save_figure(figure, path)


# ---- comparison table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AnchorRow:
    """Published mean Dice (%) per structure, shown beside our rows so a reader can place them."""

    name: str
    dice_percent: Mapping[str, float]
    source: str


def comparison_markdown(
    rows: Mapping[str, Mapping[str, Any]], anchors: Sequence[AnchorRow] | None = None
) -> str:
    """Methods x structures: Dice % (mean ± std over volumes) and ASSD mm, one row per method.

    ``rows`` maps a method name to its ``EvaluationTable.summary()``. Anchor rows (paper numbers)
    follow, marked as such; they have Dice only, since the papers' ASSD is not computed like ours.
    """
    if not rows:
        raise ValueError("comparison_markdown needs at least one method row")
    structures = list(next(iter(rows.values()))["structures"])
    header = (
        ["Method"]
        + [f"{name} Dice %" for name in structures]
        + ["Mean Dice %"]
        + [f"{name} ASSD mm" for name in structures]
        + ["Mean ASSD mm"]
    )
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method, summary in rows.items():
        per_structure = [summary["structures"][name] for name in structures]
        cells = (
            [_format_statistic(s["dice_mean"], s["dice_std"], 100.0, 1) for s in per_structure]
            + [_format_statistic(summary["mean"]["dice"], None, 100.0, 1)]
            + [_format_statistic(s["assd_mm_mean"], s["assd_mm_std"], 1.0, 2) for s in per_structure]
            + [_format_statistic(summary["mean"]["assd_mm"], None, 1.0, 2)]
        )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for anchor in anchors or []:
        dice = [anchor.dice_percent.get(name) for name in structures]
        mean = f"{np.mean(dice):.1f}" if None not in dice else _MISSING
        cells = [_MISSING if value is None else f"{value:.1f}" for value in dice] + [mean]
        cells += [_MISSING] * (len(structures) + 1)
        lines.append(f"| {anchor.name} (paper: {anchor.source}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + _undefined_distances_note(rows)


def _undefined_distances_note(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Say where ASSD left volumes out, so that a method cannot look better by missing a structure."""
    counts = [
        f"{method} {name} {structure['undefined_distance_cases']}/{summary['cases']}"
        for method, summary in rows.items()
        for name, structure in summary["structures"].items()
        if structure.get("undefined_distance_cases")
    ]
    if not counts:
        return ""
    return (
        "\nASSD undefined (structure empty in exactly one of prediction and reference) and left out of "
        f"the ASSD statistics for: {', '.join(counts)} volumes; their Dice counts as 0.\n"
    )
