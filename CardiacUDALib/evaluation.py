"""Scores: validation during training (prepared volumes) and evaluation of prediction files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from CardiacUDALib.cases import VolumeCase, check_unique_names
from CardiacUDALib.data import LoadedVolume
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.inference import predict_slices
from CardiacUDALib.io import LabelMap, load_case, read_label
from CardiacUDALib.methods import AdaptationMethod
from CardiacUDALib.metrics import EvaluationTable, score_images, score_volume


def validate(
    method: AdaptationMethod, volumes: Sequence[LoadedVolume], label_map: LabelMap, context_slices: int
) -> dict[str, float]:
    """Mean per-volume 3D Dice per structure (and their mean) on prepared, labelled volumes."""
    per_structure: dict[str, list[float]] = {name: [] for name in label_map.class_names}
    for volume in volumes:
        predicted = predict_slices(method, volume.prepared.with_context(context_slices))
        scores = score_volume(predicted, volume.prepared.labels, (1.0, 1.0, 1.0), label_map.class_names)
        for name, score in scores.items():
            per_structure[name].append(score.dice)
    result = {name: float(np.mean(values)) for name, values in per_structure.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result


def evaluate_cases(
    predictions: Sequence[Path], references: Sequence[VolumeCase], label_map: LabelMap
) -> EvaluationTable:
    """Per-volume 3D Dice / ASSD / HD95 (mm) of prediction files against the cases' reference labels."""
    if len(predictions) != len(references):
        raise InputDataError(f"{len(predictions)} predictions for {len(references)} reference cases")
    check_unique_names(list(references), "the reference cases")
    table = EvaluationTable(tuple(label_map.class_names), [])
    for prediction_path, case in zip(predictions, references):
        if case.label is None:
            raise InputDataError(f"case {case.name} has no reference label map to evaluate against")
        reference_image, reference = load_case(case, label_map)
        predicted = read_label(prediction_path, label_map, reference_image, f"prediction {prediction_path}")
        table.add(case.name, score_images(predicted, reference, label_map.class_names))
    return table
