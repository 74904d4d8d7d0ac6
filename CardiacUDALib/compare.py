"""Methods side by side: where the results of several models on the same target volume agree.

Two label-free measures, for K >= 2 results (label maps) of one target on one voxel grid:

* **Reliability map** (per voxel): the fraction of the K results that differ from the voxel's majority
  label, ``d(v) = (K - max_l |{k : L_k(v) = l}|) / K``. It is 0 where every result gives the same label;
  1/3 where two of three results agree and the third differs; 1/2 where two results differ; at most
  ``(K - 1) / K`` (every result a different label). Background is a label like any other, so one result
  calling a voxel LV and another leaving it background is a disagreement. Which of two equally frequent
  labels counts as the majority does not matter: the count of the most frequent label is the same. The
  map holds labels only: inference writes argmax label maps and keeps no class probabilities, so no
  predictive entropy is computed.
* **Agreement table** (per volume): the Dice (:func:`~CardiacUDALib.metrics.dice_coefficient`) of every
  pair of results per structure, and its mean over structures. A structure that both results of a pair
  leave empty agrees fully (Dice 1). Per volume it also counts the disagreeing voxels (``d > 0``) and the
  labelled voxels (some result labels a structure there).

:func:`compare_segmentation_files` compares segmentation files already written (torch-free, also used
by the Slicer module through :class:`AgreementTable`); :func:`segment_and_compare` first segments the
targets with each checkpoint through the engine's segment job, as ``cardiac-uda segment`` does.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CardiacUDALib.atomic import atomic_path, check_writable_folder, write_json_atomic, write_text_atomic
from CardiacUDALib.cases import (
    SEGMENTATION_TAG,
    VolumeCase,
    check_outputs_spare_inputs,
    check_unique_names,
    output_path,
)
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.events import EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.io import LabelMap, check_same_geometry, read_image, read_label, write_image
from CardiacUDALib.metrics import _format_statistic, _mean_std, dice_coefficient

RELIABILITY_TAG = "_reliability"
TABLE_STEM = "agreement"
MIN_RESULTS = 2


def disagreement_map(label_arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The reliability map of K >= 2 label arrays of one shape (see the module docstring), as float32."""
    if len(label_arrays) < MIN_RESULTS:
        raise ValueError(f"a disagreement needs at least {MIN_RESULTS} results, got {len(label_arrays)}")
    shapes = {np.shape(array) for array in label_arrays}
    if len(shapes) != 1:
        raise ValueError(f"the results have different shapes: {sorted(shapes)}")
    stacked = np.stack([np.asarray(array) for array in label_arrays])
    most_frequent = np.zeros(stacked.shape[1:], dtype=np.int64)
    for label in np.unique(stacked):
        np.maximum(most_frequent, np.count_nonzero(stacked == label, axis=0), out=most_frequent)
    results = len(label_arrays)
    return ((results - most_frequent) / results).astype(np.float32)


def reliability_image(target: sitk.Image, results: Mapping[str, sitk.Image]) -> sitk.Image:
    """The reliability map of ``results`` (label images named by result) on ``target``'s grid (float32)."""
    for name, result in results.items():
        check_same_geometry(target, result, f"result {name!r}")
    reliability = sitk.GetImageFromArray(
        disagreement_map([sitk.GetArrayViewFromImage(result) for result in results.values()])
    )
    reliability.CopyInformation(target)
    return reliability


@dataclass(frozen=True)
class PairAgreement:
    """Dice per structure of two results (``first``, ``second``) of one volume."""

    case: str
    first: str
    second: str
    dice: dict[str, float]

    @property
    def mean_dice(self) -> float:
        return float(np.mean(list(self.dice.values())))


@dataclass(frozen=True)
class CaseDisagreement:
    """How much of one volume the results disagree on."""

    case: str
    disagreeing_voxels: int  # reliability > 0
    labelled_voxels: int  # some result labels a structure there

    @property
    def disagreeing_fraction(self) -> float:
        """Disagreeing voxels over labelled voxels (0 when nothing is labelled)."""
        return self.disagreeing_voxels / self.labelled_voxels if self.labelled_voxels else 0.0


@dataclass
class AgreementTable:
    """Pairwise Dice and disagreement counts of K results, added one volume at a time.

    ``structures`` maps each structure's name to its voxel value in the label arrays (class indices
    for files read with :func:`~CardiacUDALib.io.read_label`, label values for Slicer exports).
    """

    structures: dict[str, int]
    results: tuple[str, ...] = ()
    pairs: list[PairAgreement] = field(default_factory=list)
    cases: list[CaseDisagreement] = field(default_factory=list)

    def add_case(self, case: str, results: Mapping[str, np.ndarray]) -> np.ndarray:
        """Score one volume's results (label arrays named by result); returns its reliability map."""
        if len(results) < MIN_RESULTS:
            raise InputDataError(f"compare at least {MIN_RESULTS} results, got {len(results)} for {case}")
        if self.results and tuple(results) != self.results:
            raise ValueError(f"case {case!r} has results {list(results)}, the table {list(self.results)}")
        if any(existing.case == case for existing in self.cases):
            raise ValueError(f"case {case!r} is already in the table")
        self.results = tuple(results)
        arrays = {name: np.asarray(array) for name, array in results.items()}
        reliability = disagreement_map(list(arrays.values()))
        labelled = np.zeros(reliability.shape, dtype=bool)
        for array in arrays.values():
            labelled |= np.isin(array, list(self.structures.values()))
        self.cases.append(
            CaseDisagreement(case, int(np.count_nonzero(reliability)), int(np.count_nonzero(labelled)))
        )
        for first, second in itertools.combinations(arrays, 2):
            dice = {
                name: dice_coefficient(arrays[first] == value, arrays[second] == value)
                for name, value in self.structures.items()
            }
            self.pairs.append(PairAgreement(case, first, second, dice))
        return reliability

    def result_pairs(self) -> list[tuple[str, str]]:
        return list(itertools.combinations(self.results, 2))

    def summary(self) -> list[dict[str, Any]]:
        """Per pair of results: Dice mean and population std over volumes per structure, and their mean."""
        summaries = []
        for first, second in self.result_pairs():
            rows = [row for row in self.pairs if (row.first, row.second) == (first, second)]
            structures = {}
            for name in self.structures:
                mean, std = _mean_std([row.dice[name] for row in rows])
                structures[name] = {"dice_mean": mean, "dice_std": std}
            mean_dice = _mean_std([row.mean_dice for row in rows])[0]
            summaries.append(
                {"first": first, "second": second, "structures": structures, "mean_dice": mean_dice}
            )
        return summaries

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per (volume, pair of results): ``case, first, second, <structure>_dice..., mean_dice``."""
        header = ["case", "first", "second", *(f"{name}_dice" for name in self.structures), "mean_dice"]
        with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            for row in self.pairs:
                writer.writerow(
                    [row.case, row.first, row.second, *(row.dice[n] for n in self.structures), row.mean_dice]
                )
        return Path(path)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """The results, the per-volume pairs and disagreement counts, and :meth:`summary`."""
        per_case = [
            {
                "case": case.case,
                "disagreeing_voxels": case.disagreeing_voxels,
                "labelled_voxels": case.labelled_voxels,
                "pairs": [
                    {"first": r.first, "second": r.second, "dice": r.dice, "mean_dice": r.mean_dice}
                    for r in self.pairs
                    if r.case == case.case
                ],
            }
            for case in self.cases
        ]
        return write_json_atomic(
            path,
            {
                "results": list(self.results),
                "structures": list(self.structures),
                "per_case": per_case,
                "summary": self.summary(),
            },
        )

    def markdown(self) -> str:
        """Pairwise Dice (mean ± std over volumes, in %) and the disagreeing voxels of each volume."""
        names = list(self.structures)
        lines = [
            f"{len(self.cases)} volume(s), {len(self.results)} results; Dice between each pair of results, "
            "mean ± population std over volumes.",
            "",
            "| Results | " + " | ".join(f"{name} Dice %" for name in names) + " | Mean Dice % |",
            "|---|" + "---:|" * (len(names) + 1),
        ]
        for pair in self.summary():
            cells = [
                _format_statistic(
                    pair["structures"][n]["dice_mean"], pair["structures"][n]["dice_std"], 100.0, 1
                )
                for n in names
            ]
            cells.append(_format_statistic(pair["mean_dice"], None, 100.0, 1))
            lines.append(f"| {pair['first']} vs {pair['second']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| Volume | Disagreeing voxels | Labelled voxels | Disagreeing % of labelled |",
            "|---|---:|---:|---:|",
        ]
        for case in self.cases:
            lines.append(
                f"| {case.case} | {case.disagreeing_voxels} | {case.labelled_voxels} | "
                f"{100.0 * case.disagreeing_fraction:.1f} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """``agreement.csv``, ``agreement.json`` and ``agreement.md`` in ``out_dir``."""
        folder = Path(out_dir)
        return {
            "csv": self.write_csv(folder / f"{TABLE_STEM}.csv"),
            "json": self.write_json(folder / f"{TABLE_STEM}.json"),
            "markdown": write_text_atomic(folder / f"{TABLE_STEM}.md", self.markdown()),
        }


def class_structures(label_map: LabelMap) -> dict[str, int]:
    """Structure name -> class index (1-based), the values of label images read with ``read_label``."""
    return {name: index for index, name in enumerate(label_map.class_names, start=1)}


def compare_segmentation_files(
    cases: Sequence[VolumeCase],
    result_folders: Mapping[str, Path],
    label_map: LabelMap,
    out_dir: str | Path,
) -> tuple[AgreementTable, list[Path]]:
    """Compare the ``<case>_seg<ext>`` files of each result folder; writes ``<case>_reliability<ext>``
    (float32, the target's grid) per case and the agreement table into ``out_dir``."""
    check_unique_names(list(cases), "the target volumes")
    check_writable_folder(out_dir, "the output folder")
    outputs = check_outputs_spare_inputs(
        [output_path(out_dir, case, RELIABILITY_TAG) for case in cases], list(cases)
    )
    table = AgreementTable(class_structures(label_map))
    written = []
    for case, output in zip(cases, outputs):
        target = read_image(case.image)
        results = {
            name: read_label(
                output_path(folder, case, SEGMENTATION_TAG),
                label_map,
                target,
                f"the {name} segmentation of {case.name}",
            )
            for name, folder in result_folders.items()
        }
        reliability = table.add_case(
            case.name, {name: sitk.GetArrayViewFromImage(image) for name, image in results.items()}
        )
        image = sitk.GetImageFromArray(reliability)
        image.CopyInformation(target)
        written.append(write_image(image, output))
    table.write(out_dir)
    return table, written


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats made unique by ``_2``, ``_3``... in the given order."""
    unique: list[str] = []
    for base in names:
        name, number = base, 1
        while name in unique:
            number += 1
            name = f"{base}_{number}"
        unique.append(name)
    return unique


def result_names(methods_and_files: Sequence[tuple[str, Path]]) -> list[str]:
    """``<method>_<file stem>`` per checkpoint, made unique (:func:`unique_names`)."""
    return unique_names([f"{method}_{Path(path).stem}" for method, path in methods_and_files])


def _same_label_maps(label_maps: Mapping[str, LabelMap]) -> LabelMap:
    """The one label map of all results; results with other classes or values cannot be compared."""
    first_name, first = next(iter(label_maps.items()))
    for name, label_map in label_maps.items():
        if (label_map.values, label_map.class_names) != (first.values, first.class_names):
            raise CardiacUDAError(
                f"results {first_name!r} and {name!r} label different structures "
                f"({dict(zip(first.values, first.class_names))} vs "
                f"{dict(zip(label_map.values, label_map.class_names))}): compare models of one label map"
            )
    return first


def segment_and_compare(
    checkpoints: Sequence[Path],
    cases: Sequence[VolumeCase],
    out_dir: str | Path,
    device: str = "auto",
    amp: bool = True,
    largest_component: bool = True,
    flip_averaging: bool = True,
    empty_without_heart: bool = True,
    emit: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> dict[str, Any]:
    """Segment ``cases`` with each checkpoint into ``out_dir/<result name>/``, then compare the results.

    Returns ``{"results": {name: folder}, "reliability": [paths], "table": AgreementTable | None,
    "stopped": bool}``; a stop ends after the current volume and compares nothing.
    """
    from CardiacUDALib.checkpoint import load_checkpoint  # torch: the rest of this module runs without it
    from CardiacUDALib.engine import run_job
    from CardiacUDALib.jobs import SegmentJob

    if len(checkpoints) < MIN_RESULTS:
        raise InputDataError(f"compare at least {MIN_RESULTS} models, got {len(checkpoints)}")
    folder = check_writable_folder(out_dir, "the output folder")
    check_outputs_spare_inputs([output_path(folder, case, RELIABILITY_TAG) for case in cases], list(cases))
    loaded = [load_checkpoint(path) for path in checkpoints]
    names = result_names([(checkpoint.method, path) for checkpoint, path in zip(loaded, checkpoints)])
    label_map = _same_label_maps(
        {name: LabelMap.from_dict(checkpoint.label_map) for name, checkpoint in zip(names, loaded)}
    )
    result_folders = {name: folder / name for name in names}
    outcome: dict[str, Any] = {"results": result_folders, "reliability": [], "table": None, "stopped": False}
    for (name, result_folder), checkpoint_path in zip(result_folders.items(), checkpoints):
        emit({"event": "status", "message": f"segmenting {len(cases)} volume(s) with {name}"})
        job = SegmentJob(
            Path(checkpoint_path),
            list(cases),
            result_folder,
            device,
            amp=amp,
            largest_component=largest_component,
            flip_averaging=flip_averaging,
            empty_without_heart=empty_without_heart,
        )
        if run_job(job, emit, should_stop)["stopped"]:
            outcome["stopped"] = True
            return outcome
    emit({"event": "status", "message": f"comparing {len(names)} results"})
    outcome["table"], outcome["reliability"] = compare_segmentation_files(
        cases, result_folders, label_map, folder
    )
    return outcome
