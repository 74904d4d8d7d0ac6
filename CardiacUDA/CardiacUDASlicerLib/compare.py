"""Results side by side in Slicer: a reliability volume, an agreement table and a compare layout.

The numbers come from the library (:mod:`CardiacUDALib.compare`: the reliability map is the fraction of
the results that differ from each voxel's majority label; the table holds the Dice of each pair of
results); this module turns segmentation nodes into the label images it compares and its outputs into
nodes, and arranges the slice views: one view per result, each segmentation shown in its own view only,
the target as background everywhere, and the reliability map over the target in the next free view.

Views are found the way the application names them: the layout node's description of a standard
arrangement lists its slice views by singleton tag (``Red``, ``Slice4``, ``Green``, ``Yellow`` for
two-over-two), and the application's layout manager (or, without the application, a
``vtkMRMLLayoutLogic``) makes their slice nodes when the arrangement is set.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass

import SimpleITK as sitk
import slicer

from CardiacUDALib.compare import MIN_RESULTS, AgreementTable, unique_names
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDASlicerLib.segmentations import (
    label_image_from_segmentation,
    label_map_from_segmentation,
    place_beside,
)
from CardiacUDASlicerLib.tables import fill_table_node
from CardiacUDASlicerLib.volumes import add_volume_node, image_on_volume_grid

SLICE_NODE_CLASS = "vtkMRMLSliceNode"
# Slicer's perceptual colour map where the application has loaded it, else the built-in red-to-yellow "Iron".
RELIABILITY_COLOR_NAMES = ("Inferno", "Iron")
# Voxels where every result agrees (reliability 0) are left transparent over the target image.
AGREEMENT_THRESHOLD = 1e-6
RELIABILITY_OPACITY = 0.7
# Slice-only arrangements, smallest first: 2, 4 and 6 slice views.
COMPARE_ARRANGEMENTS = (
    slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView,
    slicer.vtkMRMLLayoutNode.SlicerLayoutTwoOverTwoView,
    slicer.vtkMRMLLayoutNode.SlicerLayoutThreeOverThreeView,
)


@dataclass
class Comparison:
    """What :func:`compare_segmentations` adds to the scene, and the library's table behind it."""

    reliability_volume: slicer.vtkMRMLScalarVolumeNode
    table_node: slicer.vtkMRMLTableNode
    table: AgreementTable


def comparison_target(
    segmentation_nodes: Sequence[slicer.vtkMRMLSegmentationNode],
    fallback: slicer.vtkMRMLScalarVolumeNode | None = None,
) -> slicer.vtkMRMLScalarVolumeNode:
    """The volume the first of the results was made on (its reference geometry volume), else ``fallback``."""
    for node in segmentation_nodes:
        volume = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
        if volume is not None:
            return volume
    if fallback is None:
        raise InputDataError(
            "none of the selected segmentations names the volume it was made on: select a target volume"
        )
    return fallback


def _style_reliability(volume: slicer.vtkMRMLScalarVolumeNode) -> None:
    """A fixed 0..1 colour window (one colour means one fraction in every comparison); 0 transparent."""
    display = volume.GetDisplayNode()
    scene = volume.GetScene()
    colour = next(
        (
            node
            for name in RELIABILITY_COLOR_NAMES
            if (node := scene.GetFirstNode(name, "vtkMRMLColorNode")) is not None
        ),
        None,
    )
    if colour is not None:
        display.SetAndObserveColorNodeID(colour.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetThreshold(AGREEMENT_THRESHOLD, 1.0)
    display.ApplyThresholdOn()


def compare_segmentations(
    target_volume: slicer.vtkMRMLScalarVolumeNode,
    segmentation_nodes: Sequence[slicer.vtkMRMLSegmentationNode],
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic,
) -> Comparison:
    """The reliability volume (float32, ``target_volume``'s grid) and the agreement table of the results.

    Structures are matched by name (or terminology) to the segments of the first result; a result
    without one of them counts as empty there.
    """
    if len(segmentation_nodes) < MIN_RESULTS:
        raise InputDataError(f"select at least {MIN_RESULTS} segmentations to compare")
    label_map = label_map_from_segmentation(segmentation_nodes[0])
    names = unique_names([node.GetName() for node in segmentation_nodes])
    images = {
        name: label_image_from_segmentation(
            node, target_volume, label_map, segmentations_logic, require_every_class=False
        )
        for name, node in zip(names, segmentation_nodes)
    }
    table = AgreementTable(dict(zip(label_map.class_names, label_map.values)))
    reliability = table.add_case(
        target_volume.GetName(), {name: sitk.GetArrayViewFromImage(image) for name, image in images.items()}
    )
    scene = target_volume.GetScene()
    volume = add_volume_node(
        scene, image_on_volume_grid(reliability, target_volume), f"{target_volume.GetName()} reliability"
    )
    _style_reliability(volume)
    place_beside(volume, target_volume)
    rows = [
        ((pair.first, pair.second), [*(pair.dice[name] for name in table.structures), pair.mean_dice])
        for pair in table.pairs
    ]
    number_columns = [(f"{name} Dice", "") for name in table.structures] + [("Mean Dice", "")]
    table_node = fill_table_node(
        scene, f"{target_volume.GetName()} agreement", ("Result", "Compared with"), number_columns, rows
    )
    return Comparison(volume, table_node, table)


def slice_view_names(layout_node: slicer.vtkMRMLLayoutNode, arrangement: int) -> list[str]:
    """The slice views of a standard arrangement, in reading order, as its layout description names them."""
    description = layout_node.GetLayoutDescription(arrangement)
    if not description:
        return []
    return [
        view.get("singletontag", "")
        for view in ElementTree.fromstring(description).iter("view")
        if view.get("class") == SLICE_NODE_CLASS
    ]


def _compare_arrangement(layout_node: slicer.vtkMRMLLayoutNode, results: int) -> tuple[int, list[str]]:
    """The smallest arrangement with a view per result and one more for the reliability map, else the
    largest with a view per result."""
    views = [
        (arrangement, slice_view_names(layout_node, arrangement)) for arrangement in COMPARE_ARRANGEMENTS
    ]
    for arrangement, names in views:
        if len(names) > results:
            return arrangement, names
    arrangement, names = views[-1]
    if len(names) < results:
        raise InputDataError(f"at most {len(names)} results fit the compare layout, {results} were selected")
    return arrangement, names


def _composite_node(slice_node: slicer.vtkMRMLSliceNode) -> slicer.vtkMRMLSliceCompositeNode:
    """The composite node of a slice view; made by a slice logic, as the application's views do, if missing."""
    composite = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(slice_node)
    if composite is None:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(slice_node.GetScene())
        logic.SetSliceNode(slice_node)
        composite = logic.GetSliceCompositeNode()
    return composite


def show_comparison(
    layout_node: slicer.vtkMRMLLayoutNode,
    target_volume: slicer.vtkMRMLScalarVolumeNode,
    segmentation_nodes: Sequence[slicer.vtkMRMLSegmentationNode],
    reliability_volume: slicer.vtkMRMLScalarVolumeNode | None = None,
) -> list[str]:
    """Set the compare layout; returns the view names used (result views first, then the reliability view).

    Each segmentation's display node is restricted to its own slice view (it no longer shows in other
    views, the 3D view included, until its view list is cleared in the Data module); the views get one
    orientation, one view group and linked control, so that they browse the same slice (Slicer links only
    views of one group, and three-over-three puts its bottom row in group 1).
    """
    arrangement, names = _compare_arrangement(layout_node, len(segmentation_nodes))
    layout_node.SetViewArrangement(arrangement)
    scene = layout_node.GetScene()
    slice_nodes = [scene.GetSingletonNode(name, SLICE_NODE_CLASS) for name in names]
    missing = [name for name, node in zip(names, slice_nodes) if node is None]
    if missing:
        raise CardiacUDAError(
            f"the layout made no slice view {', '.join(missing)}: the scene has no layout manager or logic"
        )
    orientation = slice_nodes[0].GetOrientation()
    view_group = slice_nodes[0].GetViewGroup()
    for slice_node in slice_nodes:
        slice_node.SetViewGroup(view_group)
        # An arrangement's orientations apply to new views only (an existing Yellow stays sagittal): give
        # every view the first one's, turned to the target's voxel planes, so all show the same slice.
        slice_node.SetOrientation(orientation)
        slice_node.RotateToVolumePlane(target_volume)
        composite = _composite_node(slice_node)
        composite.SetBackgroundVolumeID(target_volume.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(True)
    for segmentation, slice_node in zip(segmentation_nodes, slice_nodes):
        if segmentation.GetDisplayNode() is None:
            segmentation.CreateDefaultDisplayNodes()
        display = segmentation.GetDisplayNode()
        display.SetViewNodeIDs([slice_node.GetID()])
        display.SetVisibility(True)
    used = names[: len(segmentation_nodes)]
    if reliability_volume is not None and len(names) > len(segmentation_nodes):
        composite = _composite_node(slice_nodes[len(segmentation_nodes)])
        composite.SetForegroundVolumeID(reliability_volume.GetID())
        composite.SetForegroundOpacity(RELIABILITY_OPACITY)
        used.append(names[len(segmentation_nodes)])
    return used
