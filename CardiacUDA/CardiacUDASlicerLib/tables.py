"""Per-volume Dice / ASSD / HD95 (the library's ``metrics.json``) -> a ``vtkMRMLTableNode``.

One row per (volume, structure), then one "mean" row per structure over the volumes: the layout of the
library's reports, readable in the Tables module and exportable to CSV from Slicer.
:func:`fill_table_node` builds any such table of text and number columns (also the agreement table of
:mod:`CardiacUDASlicerLib.compare`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import slicer
from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkStringArray

TABLE_CLASS = "vtkMRMLTableNode"
TEXT_COLUMNS = ("Volume", "Structure")
NUMBER_COLUMNS = (("Dice", "dice", ""), ("ASSD", "assd_mm", "mm"), ("HD95", "hd95_mm", "mm"))
MEAN_ROW_NAME = "mean over volumes"


def _number(value: Any) -> float:
    """Metrics JSON writes an undefined distance (structure empty on one side) as null: show it as NaN."""
    return math.nan if value is None else float(value)


def _rows(metrics: dict[str, Any]) -> list[tuple[str, str, list[float]]]:
    rows = [
        (case["case"], structure, [_number(scores[key]) for _, key, _ in NUMBER_COLUMNS])
        for case in metrics["per_case"]
        for structure, scores in case["structures"].items()
    ]
    for structure, summary in metrics["summary"]["structures"].items():
        rows.append(
            (MEAN_ROW_NAME, structure, [_number(summary[f"{key}_mean"]) for _, key, _ in NUMBER_COLUMNS])
        )
    return rows


def fill_table_node(
    scene: slicer.vtkMRMLScene,
    name: str,
    text_columns: Sequence[str],
    number_columns: Sequence[tuple[str, str]],
    rows: Sequence[tuple[Sequence[str], Sequence[float]]],
    table_node: slicer.vtkMRMLTableNode | None = None,
) -> slicer.vtkMRMLTableNode:
    """Fill ``table_node`` (or a new one named ``name``) with text columns, then number columns.

    ``number_columns`` are (title, unit) pairs (unit ``""``: none); each row is (texts, numbers) in
    column order.
    """
    node = table_node if table_node is not None else scene.AddNewNodeByClass(TABLE_CLASS, name)
    table = node.GetTable()
    table.Initialize()
    columns = []
    for title in text_columns:
        column = vtkStringArray()
        column.SetName(title)
        columns.append(column)
    for title, _ in number_columns:
        column = vtkDoubleArray()
        column.SetName(title)
        columns.append(column)
    for texts, numbers in rows:
        for column, value in zip(columns, [*texts, *numbers]):
            column.InsertNextValue(value)
    for column in columns:
        table.AddColumn(column)
    for title, unit in number_columns:
        if unit:
            node.SetColumnUnitLabel(title, unit)
    node.Modified()
    return node


def metrics_table_node(
    scene: slicer.vtkMRMLScene,
    metrics: dict[str, Any],
    name: str,
    table_node: slicer.vtkMRMLTableNode | None = None,
) -> slicer.vtkMRMLTableNode:
    """Fill ``table_node`` (or a new one) with the scores of ``metrics`` (the content of ``metrics.json``)."""
    rows = [((volume, structure), numbers) for volume, structure, numbers in _rows(metrics)]
    number_columns = [(title, unit) for title, _, unit in NUMBER_COLUMNS]
    return fill_table_node(scene, name, TEXT_COLUMNS, number_columns, rows, table_node)
