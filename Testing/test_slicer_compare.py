"""Results side by side in the scene: reliability volume, agreement table node and the compare layout."""

from __future__ import annotations

from slicer_fixtures import mrml_fixture  # noqa: F401  (the mrml fixture; puts CardiacUDA/ on sys.path)

# isort: split
import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from CardiacUDASlicerLib.compare import compare_segmentations, comparison_target, show_comparison
from CardiacUDASlicerLib.segmentations import segmentation_from_label_image
from CardiacUDASlicerLib.volumes import add_volume_node, ijk_to_ras, image_on_volume_grid

from CardiacUDALib.compare import disagreement_map
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LABEL_MAPS

MSCMRSEG = LABEL_MAPS["mscmrseg"]
SHAPE = (5, 16, 18)


def oblique_target(mrml) -> slicer.vtkMRMLScalarVolumeNode:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    image.SetSpacing((1.25, 0.9, 8.0))
    image.SetOrigin((-20.0, 35.0, 4.0))
    angle = np.deg2rad(25.0)
    image.SetDirection((np.cos(angle), 0.0, np.sin(angle), 0.0, 1.0, 0.0, -np.sin(angle), 0.0, np.cos(angle)))
    return add_volume_node(mrml.scene, image, "LGE")


def results(mrml, target, count: int) -> tuple[list[slicer.vtkMRMLSegmentationNode], list[np.ndarray]]:
    """``count`` results: the same heart, each with a few voxels of its own."""
    base = np.zeros(SHAPE, np.uint16)
    base[1:4, 3:9, 4:12] = 200
    base[1:4, 5:8, 6:10] = 500
    base[2:5, 9:14, 11:16] = 600
    nodes, arrays = [], []
    for index in range(count):
        labels = base.copy()
        labels[0, index, 0] = 500  # one voxel of LV that only this result has
        arrays.append(labels)
        nodes.append(
            segmentation_from_label_image(
                image_on_volume_grid(labels, target),
                MSCMRSEG,
                target,
                f"result {index}",
                mrml.segmentations_logic,
            )
        )
    return nodes, arrays


def layout_node(mrml) -> tuple[slicer.vtkMRMLLayoutNode, slicer.vtkMRMLLayoutLogic]:
    """The layout node and the logic that makes its views (the application's layout manager does that)."""
    logic = slicer.vtkMRMLLayoutLogic()
    logic.SetMRMLScene(mrml.scene)
    return logic.GetLayoutNode(), logic


def test_reliability_volume_has_the_target_geometry_and_the_library_values(mrml):
    target = oblique_target(mrml)
    nodes, arrays = results(mrml, target, 3)
    comparison = compare_segmentations(target, nodes, mrml.segmentations_logic)
    volume = comparison.reliability_volume
    assert np.allclose(ijk_to_ras(volume), ijk_to_ras(target), atol=1e-9)
    values = slicer.util.arrayFromVolume(volume)
    assert values.dtype == np.float32
    assert np.array_equal(values, disagreement_map(arrays))
    assert values[0, 0, 0] == pytest.approx(1 / 3) and np.count_nonzero(values) == 3
    display = volume.GetDisplayNode()
    assert display.GetColorNode().GetName() == "Iron"  # slicer-core has no Inferno
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert display.GetApplyThreshold() and 0.0 < display.GetLowerThreshold() < 1 / 3


def test_table_node_has_one_row_per_pair_of_results(mrml):
    target = oblique_target(mrml)
    nodes, _ = results(mrml, target, 3)
    table = compare_segmentations(target, nodes, mrml.segmentations_logic).table_node.GetTable()
    assert table.GetNumberOfRows() == 3
    columns = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert columns == ["Result", "Compared with", "MYO Dice", "LV Dice", "RV Dice", "Mean Dice"]
    pairs = [(table.GetValue(row, 0).ToString(), table.GetValue(row, 1).ToString()) for row in range(3)]
    assert pairs == [("result 0", "result 1"), ("result 0", "result 2"), ("result 1", "result 2")]
    lv = table.GetColumnByName("LV Dice").GetValue(0)
    assert lv == pytest.approx(2 * 36 / (37 + 37))  # 3 x 3 x 4 shared LV voxels, one of its own in each
    assert table.GetColumnByName("MYO Dice").GetValue(0) == 1.0


def test_inferno_is_used_where_the_application_has_it(mrml):
    inferno = mrml.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Inferno")
    target = oblique_target(mrml)
    nodes, _ = results(mrml, target, 2)
    volume = compare_segmentations(target, nodes, mrml.segmentations_logic).reliability_volume
    assert volume.GetDisplayNode().GetColorNodeID() == inferno.GetID()


def test_compare_layout_shows_each_result_in_its_own_view_and_reliability_in_the_next(mrml):
    target = oblique_target(mrml)
    nodes, _ = results(mrml, target, 3)
    reliability = compare_segmentations(target, nodes, mrml.segmentations_logic).reliability_volume
    layout, _logic = layout_node(mrml)
    views = show_comparison(layout, target, nodes, reliability)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutTwoOverTwoView
    assert views == ["Red", "Slice4", "Green", "Yellow"]
    slice_nodes = [mrml.scene.GetSingletonNode(name, "vtkMRMLSliceNode") for name in views]
    for node, slice_node in zip(nodes, slice_nodes):
        display = node.GetDisplayNode()
        assert display.GetViewNodeIDs() == (slice_node.GetID(),)
        assert all(
            not display.IsDisplayableInView(other.GetID()) for other in slice_nodes if other is not slice_node
        )
    for slice_node in slice_nodes:
        assert slice_node.GetOrientation() == slice_nodes[0].GetOrientation()
        composite = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(slice_node)
        assert composite.GetBackgroundVolumeID() == target.GetID() and composite.GetLinkedControl()
    foregrounds = [
        slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(n).GetForegroundVolumeID() for n in slice_nodes
    ]
    assert foregrounds == [None, None, None, reliability.GetID()]


@pytest.mark.parametrize("count", [2, 3, 5])
def test_every_compare_view_is_in_one_view_group_so_that_linking_moves_them_all(mrml, count):
    """Slicer links only slice views of one view group; three-over-three's bottom row is in group 1."""
    target = oblique_target(mrml)
    nodes, _ = results(mrml, target, count)
    layout, _logic = layout_node(mrml)
    views = show_comparison(layout, target, nodes)
    groups = {mrml.scene.GetSingletonNode(name, "vtkMRMLSliceNode").GetViewGroup() for name in views}
    assert len(groups) == 1


def test_layout_grows_with_the_results_and_refuses_too_many(mrml):
    target = oblique_target(mrml)
    nodes, _ = results(mrml, target, 7)
    layout, _logic = layout_node(mrml)
    assert show_comparison(layout, target, nodes[:2]) == ["Red", "Slice4"]  # two over two: one view free
    assert len(show_comparison(layout, target, nodes[:6])) == 6
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutThreeOverThreeView
    with pytest.raises(InputDataError, match="at most 6 results fit"):
        show_comparison(layout, target, nodes)


def test_target_is_the_volume_the_results_were_made_on(mrml):
    target = oblique_target(mrml)
    nodes, _ = results(mrml, target, 2)
    assert comparison_target(nodes) is target
    bare = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    with pytest.raises(InputDataError, match="select a target volume"):
        comparison_target([bare])
    assert comparison_target([bare], fallback=target) is target
    with pytest.raises(InputDataError, match="at least 2"):
        compare_segmentations(target, nodes[:1], mrml.segmentations_logic)
