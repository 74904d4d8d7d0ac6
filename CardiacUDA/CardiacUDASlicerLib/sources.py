"""The labelled source of a run: (volume, segmentation) pairs, chosen by hand, found in the scene, or loaded.

A labelled source domain is usually a set of volumes (MS-CMRSeg: 35 bSSFP subjects), each with its own
segmentation. The panel keeps a list of pairs; this module finds pairs among the nodes of a scene by their
names, and loads a folder of labelled cases (the library's :func:`~CardiacUDALib.cases.find_cases`).

**Which segmentation belongs to which volume (by name).** A segmentation node belongs to a volume node when
its name is the volume's name, or starts with it followed by a separator (space, ``_``, ``-`` or ``.``):
``patient1_C0_manual``, ``patient1_C0 segmentation``, ``patient1_C0_gt`` and ``patient1_C0-label`` all belong
to ``patient1_C0``, while ``patient10_C0_manual`` does not (``0`` is no separator). When several volume names
fit, the longest wins: ``patient1_C0_manual`` belongs to ``patient1_C0``, not to a volume ``patient1``. Then:

* a volume with exactly one segmentation makes a pair;
* a volume without a segmentation is skipped (a target image, say);
* a volume with several segmentations, or a segmentation that fits several volumes of the same name, is
  ambiguous: it is skipped and reported, and the user adds the right pair by hand.

Label-map volumes are not candidates, and the volumes given as ``exclude`` (the run's targets) keep the
segmentations that belong to them (their references) but never become sources.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from CardiacUDALib.cases import find_cases
from CardiacUDASlicerLib.segmentations import SEGMENTATION_CLASS, load_segmentation_file
from CardiacUDASlicerLib.volumes import LABELMAP_VOLUME_CLASS, SCALAR_VOLUME_CLASS, load_volume_file

NAME_SEPARATORS = frozenset(" _-.")


@dataclass(frozen=True)
class SourcePair:
    """One labelled source volume: an image of the source domain and its segmentation."""

    volume: slicer.vtkMRMLScalarVolumeNode
    segmentation: slicer.vtkMRMLSegmentationNode


def segmentation_name_fits(segmentation_name: str, volume_name: str) -> bool:
    """The naming rule of the module docstring: the same name, or the volume's name, a separator, more."""
    if not volume_name or not segmentation_name.startswith(volume_name):
        return False
    rest = segmentation_name[len(volume_name) :]
    return not rest or rest[0] in NAME_SEPARATORS


@dataclass
class ScenePairs:
    """What :func:`find_source_pairs` found: the pairs, and the volumes it skipped, with why."""

    pairs: list[SourcePair] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)  # names of volumes without a segmentation
    ambiguous: list[str] = field(default_factory=list)  # one sentence per skipped ambiguous match

    def summary(self) -> str:
        """One line for the panel's log."""
        parts = [f"found {len(self.pairs)} source pair(s)"]
        if self.unlabelled:
            parts.append(f"skipped {len(self.unlabelled)} volume(s) without a segmentation")
        parts.extend(self.ambiguous)
        return "; ".join(parts)


def nodes_of_class(scene: slicer.vtkMRMLScene, class_name: str) -> list[slicer.vtkMRMLNode]:
    """The scene's nodes of ``class_name`` (and its subclasses), in scene order."""
    return [
        scene.GetNthNodeByClass(index, class_name)
        for index in range(scene.GetNumberOfNodesByClass(class_name))
    ]


def _source_candidate_volumes(scene: slicer.vtkMRMLScene) -> list[slicer.vtkMRMLScalarVolumeNode]:
    return [
        node for node in nodes_of_class(scene, SCALAR_VOLUME_CLASS) if not node.IsA(LABELMAP_VOLUME_CLASS)
    ]


def _owners(
    segmentation_name: str, volumes: list[slicer.vtkMRMLScalarVolumeNode]
) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """The volumes with the longest name that ``segmentation_name`` fits (several: volumes of one name)."""
    fitting = [node for node in volumes if segmentation_name_fits(segmentation_name, node.GetName())]
    longest = max((len(node.GetName()) for node in fitting), default=0)
    return [node for node in fitting if len(node.GetName()) == longest]


def find_source_pairs(
    scene: slicer.vtkMRMLScene, exclude: Iterable[slicer.vtkMRMLScalarVolumeNode] = ()
) -> ScenePairs:
    """Every (volume, segmentation) pair of ``scene`` by the naming rule of the module docstring, in
    scene order; the volumes in ``exclude`` (targets) are never sources."""
    volumes = _source_candidate_volumes(scene)
    excluded = {node.GetID() for node in exclude}
    segmentations_of: dict[str, list[slicer.vtkMRMLSegmentationNode]] = {node.GetID(): [] for node in volumes}
    found = ScenePairs()
    contested: set[str] = set()  # volumes sharing a name: their segmentations were reported as ambiguous
    for segmentation in nodes_of_class(scene, SEGMENTATION_CLASS):
        owners = _owners(segmentation.GetName(), volumes)
        if len(owners) > 1:
            contested.update(node.GetID() for node in owners)
            found.ambiguous.append(
                f"segmentation '{segmentation.GetName()}' fits {len(owners)} volumes named "
                f"'{owners[0].GetName()}'"
            )
        elif owners:
            segmentations_of[owners[0].GetID()].append(segmentation)
    for volume in volumes:
        if volume.GetID() in excluded or volume.GetID() in contested:
            continue
        segmentations = segmentations_of[volume.GetID()]
        if len(segmentations) == 1:
            found.pairs.append(SourcePair(volume, segmentations[0]))
        elif not segmentations:
            found.unlabelled.append(volume.GetName())
        else:
            names = ", ".join(f"'{node.GetName()}'" for node in segmentations)
            found.ambiguous.append(
                f"volume '{volume.GetName()}' has several segmentations ({names}): add its pair by hand"
            )
    return found


def with_pairs_added(pairs: list[SourcePair], new: Iterable[SourcePair]) -> list[SourcePair]:
    """``pairs`` followed by the ``new`` pairs whose volume is not listed yet (a volume is a source once)."""
    listed = {pair.volume.GetID() for pair in pairs}
    added = list(pairs)
    for pair in new:
        if pair.volume.GetID() not in listed:
            listed.add(pair.volume.GetID())
            added.append(pair)
    return added


def load_source_pair(
    scene: slicer.vtkMRMLScene,
    image: Path,
    segmentation: Path,
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic,
    name: str | None = None,
) -> SourcePair:
    """A volume node from ``image`` and a segmentation node from ``segmentation`` (``.seg.nrrd`` or a label
    image on the volume's grid)."""
    volume = load_volume_file(scene, image, name)
    return SourcePair(volume, load_segmentation_file(segmentation, volume, segmentations_logic))


def load_source_folder(
    scene: slicer.vtkMRMLScene, folder: Path, segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic
) -> list[SourcePair]:
    """A pair per case of ``folder`` (``<case>.<ext>`` + ``<case>_manual.<ext>``, or ``<case>_image`` +
    ``<case>_label``; see :mod:`CardiacUDALib.cases`), sorted naturally; an empty folder, or an image
    without its label map, is refused by name."""
    return [
        load_source_pair(scene, case.image, case.label, segmentations_logic, case.name)
        for case in find_cases(folder, require_labels=True)
    ]
