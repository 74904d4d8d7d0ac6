"""From MRML nodes to library jobs and back: the Qt-free logic that the panel and the batch script share.

A run lives in one folder::

    run.json                  what was asked (mode, method, label map, cases) and what came out
    inputs/                   the nodes as NRRD files (exact geometry), cropped to the ROI where one was given:
                              source_<case>.nrrd + source_<case>_label.nrrd per source pair, <case>.nrrd
                              (+ <case>_reference.nrrd) per target
    jobs/main.json            the train / segment job; jobs/evaluate.json when reference segmentations exist;
                              beside each, its worker's events (.out) and log (.err)
    work/                     the library's out_dir: checkpoints/, segmentations/, translations/, STOP
    evaluation/metrics.json   per-volume Dice / ASSD / HD95

Running the same ``jobs/main.json`` again resumes a stopped training (the library resumes from
``work/checkpoints/last.pt``), and :func:`import_results` loads the results of any finished run again,
reading the target volumes from ``inputs/`` when they are no longer in the scene.

A training reads every source pair; the first one is also translated (methods with a generator), to
show side by side what the method made of the source.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import slicer

from CardiacUDALib.atomic import write_json_atomic
from CardiacUDALib.cases import SEGMENTATION_TAG, TRANSLATION_TAG, VolumeCase, case_name_of_output
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LabelMap, check_label_not_empty, write_image
from CardiacUDALib.jobs import EvaluateJob, SegmentJob, TrainJob, parse_job
from CardiacUDASlicerLib.catalog import CheckpointInfo, describe_checkpoint
from CardiacUDASlicerLib.segmentations import (
    label_image_from_segmentation,
    label_map_from_segmentation,
    segmentation_from_label_image,
)
from CardiacUDASlicerLib.sources import SourcePair
from CardiacUDASlicerLib.tables import metrics_table_node
from CardiacUDASlicerLib.volumes import (
    add_box_roi,
    add_volume_node,
    check_volume_values,
    crop_image_to_roi,
    image_from_volume_node,
    read_image_file,
)

MANIFEST_NAME = "run.json"
WORK_DIR = Path("work")  # the library's output folder, relative to the run folder


class RunMode(enum.Enum):
    """What a run does with the method and the weights."""

    TRAIN = "train"  # train the method (or resume it), then segment the targets and translate the source
    ADAPT = "adapt"  # adapt trained weights to the targets without training (AdaBN), then segment
    REFINE = "refine"  # train a method that starts from the weights (self-training), then segment
    SEGMENT = "segment"  # segment (and translate) with trained weights as they are


@dataclass
class AdaptationInputs:
    """The nodes a run reads: the labelled source pairs (each volume with its segmentation, see
    :mod:`CardiacUDASlicerLib.sources`) and the targets; a reference segmentation per target (by node ID)
    enables the Dice table."""

    sources: list[SourcePair] = field(default_factory=list)
    target_volumes: list[slicer.vtkMRMLScalarVolumeNode] = field(default_factory=list)
    reference_segmentations: dict[str, slicer.vtkMRMLSegmentationNode] = field(default_factory=dict)
    roi: slicer.vtkMRMLMarkupsROINode | None = None


def job_for_mode(mode: RunMode, job: TrainJob) -> TrainJob | SegmentJob:
    """The job a run of ``mode`` runs, from the train job the user set up (its ``initial_checkpoint``: the
    chosen weights); outputs go to :data:`WORK_DIR` and the cases are the run's (see :func:`prepare_run`)."""
    if mode is RunMode.SEGMENT:
        amp = bool(job.overrides.get("amp", True))  # the user's --set amp=false holds for segmenting too
        return SegmentJob(
            job.initial_checkpoint,
            [],
            WORK_DIR / "segmentations",
            job.device,
            amp,
            largest_component=job.largest_component,
            flip_averaging=job.flip_averaging,
            empty_without_heart=job.empty_without_heart,
        )
    if mode is RunMode.ADAPT:  # the method's stages (AdaBN) on the weights, no training step
        return dataclasses.replace(job, out_dir=WORK_DIR, overrides={**job.overrides, "iterations": 0})
    if mode is RunMode.REFINE:  # trains, starting from the weights
        return dataclasses.replace(job, out_dir=WORK_DIR)
    return dataclasses.replace(job, out_dir=WORK_DIR, initial_checkpoint=None)


def needs_source(mode: RunMode) -> bool:
    """Training (from scratch or from weights) reads the labelled sources; AdaBN from weights
    (``iterations=0``) and segmenting need targets alone."""
    return mode in (RunMode.TRAIN, RunMode.REFINE)


def missing_inputs(inputs: AdaptationInputs, mode: RunMode, weights: Path | None) -> list[str]:
    """What the user still has to choose, in words: the Apply buttons' tooltips and the batch's error."""
    missing = []
    if needs_source(mode) and not inputs.sources:
        missing.append("at least one labelled source (a source volume with its segmentation)")
    if not inputs.target_volumes:
        missing.append("at least one target volume (an unlabelled image of the other domain)")
    if mode is not RunMode.TRAIN and weights is None:
        missing.append("a trained model (Pretrained: a checkpoint file)")
    return missing


def choose_mode(method: str, checkpoint: CheckpointInfo | None) -> RunMode:
    """The batch script's rule: no weights -> train; the weights' own method -> segment; AdaBN -> adapt them;
    a method that refines trained weights (self-training) -> train it from them."""
    if checkpoint is None:
        return RunMode.TRAIN
    if method == checkpoint.method:
        return RunMode.SEGMENT
    if method in checkpoint.adapts_with:
        return RunMode.ADAPT
    if method in checkpoint.refined_by:
        return RunMode.REFINE
    others = (*checkpoint.adapts_with, *checkpoint.refined_by)
    adapt = f", or {' / '.join(others)} to adapt it" if others else ""
    raise InputDataError(
        f"{checkpoint.path} is a {checkpoint.method} model, so method '{method}' cannot use it: "
        f"choose method {checkpoint.method} to segment with it{adapt}, or leave out the weights to train {method}"
    )


@dataclass
class RunCase:
    """One volume of a run: its case name in the job files, the node it came from, and its files."""

    name: str
    node_name: str
    image: str
    label: str | None = None  # source: its labels; target: its reference segmentation, if any

    def volume_case(self, with_label: bool = False) -> VolumeCase:
        """The case as jobs name it; a target's reference labels go only to the evaluation job."""
        return VolumeCase(
            self.name, Path(self.image), Path(self.label) if with_label and self.label else None
        )


def case_names(node_names: list[str]) -> list[str]:
    """File-safe, unique case names (``Case 1 (LGE)`` -> ``Case_1_LGE``)."""
    names: list[str] = []
    for node_name in node_names:
        base = re.sub(r"[^A-Za-z0-9-]+", "_", node_name).strip("_") or "volume"
        name, index = base, 2
        while name in names:
            name, index = f"{base}_{index}", index + 1
        names.append(name)
    return names


def _source_cases(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's source cases; run folders kept in the cache from before many sources have one."""
    if "sources" in document:
        return document["sources"]
    return [] if document.get("source") is None else [document["source"]]


@dataclass
class AdaptationRun:
    """A run folder's manifest; see the module docstring."""

    root: Path
    mode: RunMode
    method: str
    label_map: LabelMap
    targets: list[RunCase]
    job: TrainJob | SegmentJob  # the main job, with the run's cases and output folder
    sources: list[RunCase] = field(default_factory=list)  # empty when the mode reads no source
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def main_job_file(self) -> Path:
        return self.root / "jobs" / "main.json"

    @property
    def evaluate_job_file(self) -> Path:
        return self.root / "jobs" / "evaluate.json"

    def save(self) -> None:
        document = {
            "mode": self.mode.value,
            "method": self.method,
            "label_map": self.label_map.to_dict(),
            "sources": [asdict(case) for case in self.sources],
            "targets": [asdict(case) for case in self.targets],
            "job": self.job.to_dict(),
            "results": self.results,
        }
        write_json_atomic(self.root / MANIFEST_NAME, document)

    @classmethod
    def load(cls, root: str | Path) -> AdaptationRun:
        path = Path(root) / MANIFEST_NAME
        if not path.is_file():
            raise InputDataError(f"{root} is not a CardiacUDA run folder (it has no {MANIFEST_NAME})")
        document = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            root=Path(root),
            mode=RunMode(document["mode"]),
            method=document["method"],
            label_map=LabelMap.from_dict(document["label_map"]),
            sources=[RunCase(**case) for case in _source_cases(document)],
            targets=[RunCase(**case) for case in document["targets"]],
            job=parse_job(document["job"]),
            results=document.get("results", {}),
        )

    def evaluation_job(self, segmentations: list[str]) -> EvaluateJob | None:
        """Scores of the segmentations against the targets' reference segmentations, if any were given."""
        by_case = {case_name_of_output(Path(path), SEGMENTATION_TAG): path for path in segmentations}
        pairs = [(by_case[case.name], case) for case in self.targets if case.label and case.name in by_case]
        if not pairs:
            return None
        return EvaluateJob(
            predictions=[Path(prediction) for prediction, _ in pairs],
            references=[case.volume_case(with_label=True) for _, case in pairs],
            label_map=self.label_map,
            out_dir=self.root / "evaluation",
        )

    def record(self, result: dict[str, Any]) -> None:
        """Keep a job's result (paths) in the manifest, so the run can be imported again later."""
        self.results.update({key: value for key, value in result.items() if key != "stopped"})
        self.save()


def _in_roi(image: Any, roi: slicer.vtkMRMLMarkupsROINode | None, what: str) -> Any:
    return image if roi is None else crop_image_to_roi(image, roi, what)


def _source_files(
    pair: SourcePair,
    name: str,
    label_map: LabelMap,
    inputs_dir: Path,
    logic: slicer.vtkSlicerSegmentationsModuleLogic,
) -> tuple[RunCase, dict[Path, Any]]:
    """A source volume and its labels (with ``label_map``'s values) on its own grid, checked, and the NRRD
    files they go to."""
    volume = pair.volume
    labels = label_image_from_segmentation(pair.segmentation, volume, label_map, logic)
    check_label_not_empty(labels, f"segmentation '{pair.segmentation.GetName()}'")
    image_path, label_path = inputs_dir / f"source_{name}.nrrd", inputs_dir / f"source_{name}_label.nrrd"
    files = {image_path: check_volume_values(volume, image_from_volume_node(volume)), label_path: labels}
    return RunCase(name, volume.GetName(), str(image_path), str(label_path)), files


def _target_files(
    inputs: AdaptationInputs,
    node: slicer.vtkMRMLScalarVolumeNode,
    name: str,
    label_map: LabelMap,
    inputs_dir: Path,
    logic: slicer.vtkSlicerSegmentationsModuleLogic,
) -> tuple[RunCase, dict[Path, Any]]:
    """A target volume (cropped to the ROI), checked, with its reference segmentation when one was given,
    and the NRRD files they go to."""
    what = f"target volume '{node.GetName()}'"
    image_path = inputs_dir / f"{name}.nrrd"
    files = {image_path: check_volume_values(node, _in_roi(image_from_volume_node(node), inputs.roi, what))}
    reference = inputs.reference_segmentations.get(node.GetID())
    label_path = None
    if reference is not None:
        labels = label_image_from_segmentation(reference, node, label_map, logic, require_every_class=False)
        label_path = inputs_dir / f"{name}_reference.nrrd"
        files[label_path] = _in_roi(labels, inputs.roi, what)
    return RunCase(
        name, node.GetName(), str(image_path), None if label_path is None else str(label_path)
    ), files


def _distinct_files(file_sets: list[dict[Path, Any]]) -> dict[Path, Any]:
    """All files of the inputs, refusing two inputs whose names would write the same file."""
    merged: dict[Path, Any] = {}
    for files in file_sets:
        for path, image in files.items():
            if path in merged:
                raise InputDataError(f"two inputs would be written to {path.name}: rename one of the volumes")
            merged[path] = image
    return merged


def prepare_run(
    inputs: AdaptationInputs,
    job: TrainJob,
    mode: RunMode,
    root: Path,
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic,
) -> AdaptationRun:
    """Check the inputs, write them as files and the run's manifest with its main job.

    ``job`` is what the user set up: method, preset, settings, and the chosen weights as its
    ``initial_checkpoint``; :func:`job_for_mode` makes the mode's job of it, and this run fills in its
    cases and output folder.

    The ROI restricts the *targets* (training images and segmentation): the sources are used whole, their
    labels already say where the heart is. The first source pair's segmentation names the classes (the
    label map) unless the weights have one; every other pair must have a segment for each class.
    """
    weights = job.initial_checkpoint
    missing = missing_inputs(inputs, mode, weights)
    if missing:
        raise InputDataError("missing: " + "; ".join(missing))
    checkpoint = None if weights is None else describe_checkpoint(weights)
    if (mode is RunMode.ADAPT and job.method not in checkpoint.adapts_with) or (
        mode is RunMode.REFINE and job.method not in checkpoint.refined_by
    ):
        choose_mode(job.method, checkpoint)  # raises with the advice
    method = checkpoint.method if mode is RunMode.SEGMENT else job.method
    label_map = (
        checkpoint.label_map if checkpoint else label_map_from_segmentation(inputs.sources[0].segmentation)
    )
    inputs_dir = root / "inputs"
    # Every input is exported and checked in memory first: a bad one is refused before any file is written.
    names = case_names([node.GetName() for node in inputs.target_volumes])
    exported_targets = [
        _target_files(inputs, node, name, label_map, inputs_dir, segmentations_logic)
        for name, node in zip(names, inputs.target_volumes)
    ]
    source_pairs = inputs.sources if needs_source(mode) else []
    source_names = case_names([pair.volume.GetName() for pair in source_pairs])
    exported_sources = [
        _source_files(pair, name, label_map, inputs_dir, segmentations_logic)
        for name, pair in zip(source_names, source_pairs)
    ]
    files = _distinct_files([files for _, files in [*exported_sources, *exported_targets]])
    for path, image in files.items():
        write_image(image, path)
    sources = [case for case, _ in exported_sources]
    targets = [case for case, _ in exported_targets]
    main = job_for_mode(mode, job)
    target_cases = [case.volume_case() for case in targets]
    if isinstance(main, SegmentJob):
        main = dataclasses.replace(main, cases=target_cases, out_dir=root / main.out_dir)
    else:
        main = dataclasses.replace(
            main,
            out_dir=root / main.out_dir,
            source=[case.volume_case(with_label=True) for case in sources],
            target=target_cases,
            label_map=label_map,
            segment=target_cases,
            translate=[case.volume_case() for case in sources[:1]],
        )
    run = AdaptationRun(
        root=root, mode=mode, method=method, label_map=label_map, sources=sources, targets=targets, job=main
    )
    run.save()
    return run


@dataclass
class ImportedResults:
    """The nodes made from a run's files."""

    segmentations: dict[str, slicer.vtkMRMLSegmentationNode] = field(default_factory=dict)  # by case name
    translations: dict[str, slicer.vtkMRMLScalarVolumeNode] = field(default_factory=dict)  # by source case
    metrics_table: slicer.vtkMRMLTableNode | None = None
    # by case name: the box the heart was found in (the network's window), where it is not the whole slice
    heart_regions: dict[str, slicer.vtkMRMLMarkupsROINode] = field(default_factory=dict)


def _target_node(
    scene: slicer.vtkMRMLScene, case: RunCase, targets_in_scene: dict[str, slicer.vtkMRMLScalarVolumeNode]
) -> slicer.vtkMRMLScalarVolumeNode:
    """The target the segmentation belongs to: the node in the scene, or the run's copy of its image.

    The run's copy is the (ROI-cropped) grid the prediction lies on, so it is also used when cropping
    made the scene's node a different grid.
    """
    node = targets_in_scene.get(case.name)
    image = read_image_file(Path(case.image))
    if node is not None and node.GetImageData().GetDimensions() == image.GetSize():
        return node
    return add_volume_node(scene, image, f"{case.node_name} (CardiacUDA input)")


def import_results(
    run: AdaptationRun,
    scene: slicer.vtkMRMLScene,
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic,
    targets_in_scene: dict[str, slicer.vtkMRMLScalarVolumeNode] | None = None,
) -> ImportedResults:
    """Segmentation nodes, translated volumes and the Dice table from the files a run has written.

    ``targets_in_scene`` maps case names to the target nodes of the scene (see :func:`target_nodes_by_case`).
    """
    targets_in_scene = targets_in_scene or {}
    imported = ImportedResults()
    cases = {case.name: case for case in run.targets}
    for path in run.results.get("segmentations", []):
        case = cases[case_name_of_output(Path(path), SEGMENTATION_TAG)]
        reference = _target_node(scene, case, targets_in_scene)
        imported.segmentations[case.name] = segmentation_from_label_image(
            read_image_file(Path(path)),
            run.label_map,
            reference,
            f"{case.node_name} segmentation ({run.method})",
            segmentations_logic,
        )
    for name, box in run.results.get("heart_regions", {}).items():
        imported.heart_regions[name] = add_box_roi(
            scene, box, f"{cases[name].node_name} heart region ({run.method})"
        )
    sources = {case.name: case for case in run.sources}
    for path in run.results.get("translations", []):
        case = sources[case_name_of_output(Path(path), TRANSLATION_TAG)]
        imported.translations[case.name] = add_volume_node(
            scene, read_image_file(Path(path)), f"{case.node_name} translated ({run.method})"
        )
    if run.results.get("json"):
        metrics = json.loads(Path(run.results["json"]).read_text(encoding="utf-8"))
        imported.metrics_table = metrics_table_node(scene, metrics, f"CardiacUDA scores ({run.method})")
    return imported


def target_nodes_by_case(run: AdaptationRun, nodes: list[slicer.vtkMRMLScalarVolumeNode]) -> dict[str, Any]:
    """The run's case names -> the scene's target nodes, in the order they were given."""
    return {case.name: node for case, node in zip(run.targets, nodes)}
