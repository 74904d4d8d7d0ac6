"""Scores: validation during training (prepared volumes) and evaluation of prediction files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from CardiacUDALib.cases import SEGMENTATION_TAG, VolumeCase, case_name_of_output, check_unique_names
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
    """Per-volume 3D Dice / ASSD / HD95 (mm) of prediction files against the cases' reference labels.

    Each prediction is scored against the reference case it is named after (``<case>_seg<ext>`` or
    ``<case><ext>``), whatever the order of the two lists: a job file that lists them in another order
    must not score one patient's labels against another's. The table keeps the references' order."""
    if len(predictions) != len(references):
        raise InputDataError(f"{len(predictions)} predictions for {len(references)} reference cases")
    check_unique_names(list(references), "the reference cases")
    prediction_of = {case_name_of_output(Path(path), SEGMENTATION_TAG): Path(path) for path in predictions}
    unmatched = sorted(set(prediction_of) - {case.name for case in references})
    if unmatched or len(prediction_of) != len(predictions):
        raise InputDataError(
            f"the predictions must be named <case>{SEGMENTATION_TAG}<ext> after the reference cases, one "
            f"each ({', '.join(case.name for case in references)}); these match none or repeat one: "
            f"{', '.join(unmatched) or 'a case named twice'}"
        )
    unlabelled = [case.name for case in references if case.label is None]
    if unlabelled:
        raise InputDataError(
            f"{len(unlabelled)} of {len(references)} reference cases have no label file to evaluate "
            f"against ({', '.join(unlabelled)}); give references with labels (<case>_manual.nii.gz or "
            "<case>_label.nii.gz beside each image)"
        )
    table = EvaluationTable(tuple(label_map.class_names), [])
    for case in references:
        prediction_path = prediction_of[case.name]
        reference_image, reference = load_case(case, label_map)
        predicted = read_label(prediction_path, label_map, reference_image, f"prediction {prediction_path}")
        table.add(case.name, score_images(predicted, reference, label_map.class_names))
    return table
