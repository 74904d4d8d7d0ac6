"""Label maps <-> segmentation nodes: one named, coloured segment per structure, with standard terminology.

A label file stores the value its data set chose for each structure (MS-CMRSeg: 200/500/600). Importing
keeps those values as the segments' label values, so a ``.seg.nrrd`` written from a prediction still holds
the data set's values, and exporting a hand-made segmentation for training turns each segment into one
class of a :class:`~CardiacUDALib.io.LabelMap`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import slicer.util
from vtkmodules.vtkCommonCore import vtkStringArray
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from CardiacUDALib.atomic import atomic_path
from CardiacUDALib.cases import stem_of
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LABEL_MAPS, LabelMap
from CardiacUDASlicerLib.terminology import find_structure, terminology_type_code
from CardiacUDASlicerLib.volumes import (
    LABELMAP_VOLUME_CLASS,
    ijk_to_ras,
    ijk_to_ras_of_image,
    image_on_volume_grid,
    read_image_file,
)

GEOMETRY_TOLERANCE = 1e-4  # mm; NIfTI stores its geometry in float32
SEGMENTATION_CLASS = "vtkMRMLSegmentationNode"


def _segment_ids(segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]


def _grid_difference(matrix: np.ndarray, dimensions: tuple[int, ...], other: np.ndarray, other_dims) -> str:
    """Why two voxel grids differ, in words, or ``""`` when they are the same grid."""
    if tuple(dimensions) != tuple(other_dims):
        return f"size {tuple(other_dims)} voxels vs {tuple(dimensions)}"
    if not np.allclose(matrix, other, atol=GEOMETRY_TOLERANCE):
        spacing, other_spacing = np.linalg.norm(matrix[:3, :3], axis=0), np.linalg.norm(other[:3, :3], axis=0)
        return (
            f"spacing {np.round(other_spacing, 3).tolist()} vs {np.round(spacing, 3).tolist()} mm, "
            f"origin {np.round(other[:3, 3], 2).tolist()} vs {np.round(matrix[:3, 3], 2).tolist()}"
        )
    return ""


def check_segmentation_on_volume_grid(
    segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode
) -> None:
    """Refuse a segmentation drawn on another grid than ``volume_node``'s (usually: another image's labels)."""
    geometry = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    if not geometry:
        return  # no reference grid recorded (e.g. made from models): nothing to compare
    matrix, extent = vtkMatrix4x4(), [0] * 6
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, matrix, extent)
    dimensions = tuple(extent[2 * axis + 1] - extent[2 * axis] + 1 for axis in range(3))
    difference = _grid_difference(
        ijk_to_ras(volume_node),
        volume_node.GetImageData().GetDimensions(),
        slicer.util.arrayFromVTKMatrix(matrix),
        dimensions,
    )
    if difference:
        raise InputDataError(
            f"segmentation '{segmentation_node.GetName()}' was drawn on another grid than volume "
            f"'{volume_node.GetName()}' ({difference}): select the volume it belongs to, or set its geometry "
            "to this volume (Segment Editor: 'Specify geometry')"
        )


def check_image_on_volume_grid(image: sitk.Image, volume_node: slicer.vtkMRMLVolumeNode, what: str) -> None:
    """Refuse a label image that does not lie on ``volume_node``'s voxel grid."""
    difference = _grid_difference(
        ijk_to_ras(volume_node),
        volume_node.GetImageData().GetDimensions(),
        ijk_to_ras_of_image(image),
        image.GetSize(),
    )
    if difference:
        raise InputDataError(
            f"{what} does not lie on the grid of volume '{volume_node.GetName()}' ({difference})"
        )


def _style_segment(segment: slicer.vtkSegment, class_name: str) -> None:
    """Name, colour and terminology of a known structure; an unknown class keeps its name and colour."""
    structure = find_structure(class_name)
    if structure is None:
        return
    segment.SetName(structure.meaning)
    segment.SetColor(*structure.color)
    segment.SetTerminology(structure.terminology_entry)


def place_beside(node: slicer.vtkMRMLNode, reference: slicer.vtkMRMLNode) -> None:
    """Put ``node`` in the same subject-hierarchy folder (patient/study) as ``reference``."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    items = [hierarchy.GetItemByDataNode(each) for each in (node, reference)] if hierarchy else []
    if items and hierarchy.GetInvalidItemID() not in items:
        hierarchy.SetItemParent(items[0], hierarchy.GetItemParent(items[1]))


@contextlib.contextmanager
def temporary_labelmap(scene: slicer.vtkMRMLScene, name: str) -> Iterator[slicer.vtkMRMLLabelMapVolumeNode]:
    """A label map node for the block only, removed with the display and colour nodes made for it there.

    Slicer's export of segments to a label map whose colour node is not of the User type adds a
    ``<segmentation>_ColorTable`` node for it (``vtkSlicerSegmentationsModuleLogic::
    ExportSegmentsToLabelmapNode``, ``AddColorTableNodeForSegmentation``), and removing a volume node
    leaves its display nodes: without this, every export would leave both in the user's scene.
    """
    existing = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
    node = scene.AddNewNodeByClass(LABELMAP_VOLUME_CLASS, name)
    try:
        yield node
    finally:
        displays = [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
        colours = [display.GetColorNode() for display in displays if display is not None]
        scene.RemoveNode(node)
        for added in (*displays, *colours):
            if added is not None and added.GetID() not in existing and added.GetScene() is scene:
                scene.RemoveNode(added)


def segmentation_from_label_image(
    label_image: sitk.Image,
    label_map: LabelMap,
    reference_volume: slicer.vtkMRMLVolumeNode,
    name: str,
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic,
) -> slicer.vtkMRMLSegmentationNode:
    """A segmentation node on ``reference_volume`` with one segment per class of ``label_map``.

    Segment IDs are the class names (``MYO``, ``LV``), so scripts find them without searching; a class
    absent from the image still gets its (empty) segment, so every result has the same segments.
    """
    check_image_on_volume_grid(label_image, reference_volume, f"label map for '{name}'")
    values = sitk.GetArrayFromImage(label_image)
    unknown = sorted(set(np.unique(values).tolist()) - {0, *label_map.values})
    if unknown:
        raise InputDataError(
            f"label map for '{name}' holds value(s) {unknown} that label map {label_map.name!r} "
            f"({dict(zip(label_map.values, label_map.class_names))}) does not have"
        )
    scene = reference_volume.GetScene()
    with temporary_labelmap(scene, f"{name} (import)") as temporary:
        temporary.CopyOrientation(reference_volume)  # the exact grid, not its float32 NIfTI rounding
        slicer.util.updateVolumeFromArray(temporary, values.astype(np.int32))
        segmentation_node = scene.AddNewNodeByClass(SEGMENTATION_CLASS, name)
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        segmentation_node.SetNodeReferenceID(
            segmentation_node.GetReferenceImageGeometryReferenceRole(), reference_volume.GetID()
        )
        segment_id_of_value = vtkStringArray()  # entry v-1 names the segment of label value v
        id_by_value = dict(zip(label_map.values, label_map.class_names))
        for value in range(1, max(label_map.values) + 1):
            segment_id_of_value.InsertNextValue(id_by_value.get(value, ""))
        if not segmentations_logic.ImportLabelmapToSegmentationNode(
            temporary, segmentation_node, segment_id_of_value
        ):
            raise InputDataError(f"Slicer could not import the label map of '{name}'")
    segmentation = segmentation_node.GetSegmentation()
    for class_name in label_map.class_names:
        _style_segment(segmentation.GetSegment(class_name), class_name)
    place_beside(segmentation_node, reference_volume)
    return segmentation_node


def segment_class_name(segmentation_node: slicer.vtkMRMLSegmentationNode, segment_id: str) -> str:
    """The class a segment stands for: a known structure's abbreviation (``LV``) or else its own name."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    entry = segment.GetTerminology() if segment.HasTerminology() else ""
    structure = find_structure(segment.GetName(), segment_id, terminology_type_code(entry))
    return structure.abbreviation if structure is not None else segment.GetName()


def label_map_from_segmentation(segmentation_node: slicer.vtkMRMLSegmentationNode) -> LabelMap:
    """One class per segment, in segment order, keeping the segments' label values where they are distinct.

    Keeping the values means that a segmentation imported from an MS-CMRSeg label file trains a model
    whose predictions are written with 200/500/600 again.
    """
    segment_ids = _segment_ids(segmentation_node)
    if not segment_ids:
        raise InputDataError(
            f"segmentation '{segmentation_node.GetName()}' has no segment: paint the structures (e.g. MYO, LV, "
            "RV) in the Segment Editor, or select the segmentation of the source volume"
        )
    segmentation = segmentation_node.GetSegmentation()
    values = tuple(segmentation.GetSegment(segment_id).GetLabelValue() for segment_id in segment_ids)
    if len(set(values)) != len(values) or min(values) < 1:
        values = tuple(range(1, len(segment_ids) + 1))
    names = tuple(segment_class_name(segmentation_node, segment_id) for segment_id in segment_ids)
    return LabelMap("segments", values, names)


def segment_values(
    segmentation_node: slicer.vtkMRMLSegmentationNode, label_map: LabelMap, require_every_class: bool = True
) -> dict[str, int]:
    """Segment ID -> label value of the class it holds, matching classes by name, abbreviation or terminology.

    A model trained on ``MYO, LV, RV`` can so read a hand-made segmentation whose segments are called
    "Myocardium", "Left ventricle" and "Right ventricle", in any order.
    """
    segment_id_by_class: dict[str, str] = {}
    for segment_id in _segment_ids(segmentation_node):
        segment_id_by_class.setdefault(segment_class_name(segmentation_node, segment_id), segment_id)
    missing = [name for name in label_map.class_names if name not in segment_id_by_class]
    if missing and require_every_class:
        raise InputDataError(
            f"segmentation '{segmentation_node.GetName()}' has no segment for {', '.join(missing)} "
            f"(its segments: {', '.join(segment_id_by_class) or 'none'}): add or rename those segments"
        )
    return {
        segment_id_by_class[name]: value
        for name, value in zip(label_map.class_names, label_map.values)
        if name in segment_id_by_class
    }


def label_image_from_segmentation(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    reference_volume: slicer.vtkMRMLVolumeNode,
    label_map: LabelMap,
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic,
    require_every_class: bool = True,
) -> sitk.Image:
    """The segments as one label image on ``reference_volume``'s grid, each class written as its value.

    Where segments overlap, the later class wins (as in a label map exported by Slicer).
    """
    check_segmentation_on_volume_grid(segmentation_node, reference_volume)
    values = segment_values(segmentation_node, label_map, require_every_class)
    scene = reference_volume.GetScene()
    labels = np.zeros(slicer.util.arrayFromVolume(reference_volume).shape, dtype=np.uint16)
    with temporary_labelmap(scene, f"{segmentation_node.GetName()} (export)") as temporary:
        for segment_id, value in values.items():
            segmentations_logic.ExportSegmentsToLabelmapNode(
                segmentation_node,
                [segment_id],
                temporary,
                reference_volume,
                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
            )
            labels[slicer.util.arrayFromVolume(temporary) > 0] = value
    if not labels.any():
        raise InputDataError(
            f"segmentation '{segmentation_node.GetName()}' contains no labelled voxel inside volume "
            f"'{reference_volume.GetName()}': paint the structures, or select the segmentation of this volume"
        )
    return image_on_volume_grid(labels, reference_volume)


def label_map_for_values(found_values: set[int]) -> LabelMap:
    """The known label map (MS-CMRSeg, MMWHS) whose values cover ``found_values``, else one named by value."""
    for label_map in LABEL_MAPS.values():
        if found_values <= set(label_map.values):
            return label_map
    values = tuple(sorted(found_values))
    return LabelMap("file values", values, tuple(f"label {value}" for value in values))


def load_segmentation_file(
    path: Path,
    reference_volume: slicer.vtkMRMLVolumeNode,
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic,
) -> slicer.vtkMRMLSegmentationNode:
    """A ``.seg.nrrd`` as it is, or a label image (NIfTI, NRRD...) with one segment per label value.

    A label image must lie on the reference volume's grid; its values name the segments through the
    known label maps (MS-CMRSeg 200/500/600 -> MYO, LV, RV).
    """
    path = Path(path)
    name = stem_of(path).removesuffix(".seg") if path.name.lower().endswith(".seg.nrrd") else stem_of(path)
    if path.name.lower().endswith(".seg.nrrd"):
        node = (
            segmentations_logic.LoadSegmentationFromFile(str(path), False, name) if path.is_file() else None
        )
        if node is None:
            raise InputDataError(f"cannot read segmentation {path}")
        return node
    image = read_image_file(path)
    found = set(np.unique(sitk.GetArrayViewFromImage(image)).astype(int).tolist()) - {0}
    return segmentation_from_label_image(
        image, label_map_for_values(found), reference_volume, name, segmentations_logic
    )


def save_segmentation(segmentation_node: slicer.vtkMRMLSegmentationNode, path: Path) -> Path:
    """Write a ``.seg.nrrd`` (segment names, colours, terminology and label values in its header), atomically."""
    storage = segmentation_node.CreateDefaultStorageNode()
    with atomic_path(path) as temporary:
        storage.SetFileName(str(temporary))
        if not storage.WriteData(segmentation_node):
            raise InputDataError(f"cannot write {path}")
    return Path(path)
