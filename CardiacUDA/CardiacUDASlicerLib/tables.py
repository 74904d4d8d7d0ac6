"""Per-volume Dice / ASSD / HD95 (the library's ``metrics.json``) -> a ``vtkMRMLTableNode``.

One row per (volume, structure), then one "mean" row per structure over the volumes: the layout of the
library's reports, readable in the Tables module and exportable to CSV from Slicer.
"""

from __future__ import annotations

import math
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


def metrics_table_node(
    scene: slicer.vtkMRMLScene,
    metrics: dict[str, Any],
    name: str,
    table_node: slicer.vtkMRMLTableNode | None = None,
) -> slicer.vtkMRMLTableNode:
    """Fill ``table_node`` (or a new one) with the scores of ``metrics`` (the content of ``metrics.json``)."""
    node = table_node if table_node is not None else scene.AddNewNodeByClass(TABLE_CLASS, name)
    rows = _rows(metrics)
    table = node.GetTable()
    table.Initialize()
    columns = []
    for title in TEXT_COLUMNS:
        column = vtkStringArray()
        column.SetName(title)
        columns.append(column)
    for title, _, _ in NUMBER_COLUMNS:
        column = vtkDoubleArray()
        column.SetName(title)
        columns.append(column)
    for volume, structure, numbers in rows:
        columns[0].InsertNextValue(volume)
        columns[1].InsertNextValue(structure)
        for column, number in zip(columns[2:], numbers):
            column.InsertNextValue(number)
    for column in columns:
        table.AddColumn(column)
    for title, _, unit in NUMBER_COLUMNS:
        if unit:
            node.SetColumnUnitLabel(title, unit)
    node.Modified()
    return node
