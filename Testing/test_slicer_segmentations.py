"""Label maps <-> segmentation nodes, terminology, the Dice table, and bad inputs with actionable messages."""

from __future__ import annotations

from slicer_fixtures import mrml_fixture  # noqa: F401  (the mrml fixture; puts CardiacUDA/ on sys.path)

# isort: split
import math

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from CardiacUDASlicerLib.adaptation import (
    WORK_DIR,
    AdaptationInputs,
    RunMode,
    missing_inputs,
    prepare_run,
)
from CardiacUDASlicerLib.catalog import describe_checkpoint
from CardiacUDASlicerLib.segmentations import (
    label_image_from_segmentation,
    label_map_from_segmentation,
    segmentation_from_label_image,
)
from CardiacUDASlicerLib.sources import SourcePair
from CardiacUDASlicerLib.tables import MEAN_ROW_NAME, metrics_table_node
from CardiacUDASlicerLib.terminology import TERMINOLOGY_FILE, cardiac_structures
from CardiacUDASlicerLib.volumes import add_volume_node, image_on_volume_grid
from vtkmodules.vtkCommonCore import vtkStringArray

from CardiacUDALib.checkpoint import Checkpoint, save_checkpoint
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.io import LABEL_MAPS
from CardiacUDALib.jobs import TrainJob

MSCMRSEG = LABEL_MAPS["mscmrseg"]
SHAPE = (6, 20, 24)


def volume(mrml, name: str = "LGE", spacing=(1.25, 1.25, 10.0)) -> slicer.vtkMRMLScalarVolumeNode:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 35.0, 4.0))
    return add_volume_node(mrml.scene, image, name)


def labels_200_500_600() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint16)
    labels[1:4, 4:12, 5:15] = 200
    labels[1:4, 6:10, 7:13] = 500  # inside the myocardium ring, as in a heart
    labels[2:5, 12:18, 14:20] = 600
    return labels


def label_image_on(node, labels: np.ndarray) -> sitk.Image:
    return image_on_volume_grid(labels, node)


def voxel_count(mrml, segmentation_node, segment_id: str, reference) -> int:
    exported = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "count")
    mrml.segmentations_logic.ExportSegmentsToLabelmapNode(
        segmentation_node, [segment_id], exported, reference
    )
    return int(np.count_nonzero(slicer.util.arrayFromVolume(exported)))


def test_values_200_500_600_become_three_named_segments_with_the_right_voxel_counts(mrml):
    target = volume(mrml)
    labels = labels_200_500_600()
    node = segmentation_from_label_image(
        label_image_on(target, labels), MSCMRSEG, target, "result", mrml.segmentations_logic
    )
    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert ids == ["MYO", "LV", "RV"]
    assert [segmentation.GetSegment(i).GetName() for i in ids] == [
        "Myocardium",
        "Left ventricle",
        "Right ventricle",
    ]
    for segment_id, value in zip(ids, (200, 500, 600)):
        assert segmentation.GetSegment(segment_id).GetLabelValue() == value
        assert voxel_count(mrml, node, segment_id, target) == np.count_nonzero(labels == value)
    lv = segmentation.GetSegment("LV")
    assert "SCT^87878005^Left ventricle" in lv.GetTerminology()
    expected_color = next(s.color for s in cardiac_structures() if s.abbreviation == "LV")
    np.testing.assert_allclose(lv.GetColor(), expected_color)
    # and back: one class per segment, with the data set's values, voxel for voxel
    label_map = label_map_from_segmentation(node)
    assert (label_map.values, label_map.class_names) == ((200, 500, 600), ("MYO", "LV", "RV"))
    exported = label_image_from_segmentation(node, target, label_map, mrml.segmentations_logic)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), labels)


def test_a_structure_missing_from_the_prediction_still_gets_its_empty_segment(mrml):
    target = volume(mrml)
    labels = labels_200_500_600()
    labels[labels == 600] = 0
    node = segmentation_from_label_image(
        label_image_on(target, labels), MSCMRSEG, target, "no RV", mrml.segmentations_logic
    )
    assert node.GetSegmentation().GetSegment("RV") is not None
    assert voxel_count(mrml, node, "RV", target) == 0


def test_hand_made_segments_are_matched_to_a_models_classes_by_name(mrml):
    """Segments called 'Right ventricle', 'left ventricle', 'Myocardium' (any order) feed a MYO/LV/RV model."""
    target = volume(mrml)
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painted")
    node.SetReferenceImageGeometryParameterFromVolumeNode(target)
    labels = labels_200_500_600()
    for name, value in (("Right ventricle", 600), ("left ventricle", 500), ("Myocardium", 200)):
        segment_id = node.GetSegmentation().AddEmptySegment(name)
        mask = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
        mask.CopyOrientation(target)
        slicer.util.updateVolumeFromArray(mask, (labels == value).astype(np.uint8))
        ids = vtkStringArray()
        ids.InsertNextValue(segment_id)
        mrml.segmentations_logic.ImportLabelmapToSegmentationNode(mask, node, ids)
    exported = label_image_from_segmentation(node, target, MSCMRSEG, mrml.segmentations_logic)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), labels)


def test_terminology_file_loads_in_slicer_and_every_entry_round_trips():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    assert context == "CardiacUDA cardiac structures"
    assert [s.abbreviation for s in cardiac_structures()] == ["MYO", "LV", "RV", "LA", "RA", "AA", "PA"]
    for structure in cardiac_structures():
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(structure.terminology_entry, entry)
        assert entry.GetTypeObject().GetCodeValue() == structure.code
        assert logic.SerializeTerminologyEntry(entry) == structure.terminology_entry
        found = slicer.vtkSlicerTerminologyEntry()
        assert logic.FindTypeInTerminologyBy3dSlicerLabel(context, structure.meaning.lower(), found)
        assert found.GetTypeObject().GetCodeMeaning() == structure.meaning


def test_dice_table_has_a_row_per_volume_and_structure_and_a_mean_row(mrml):
    scores = {"dice": 0.8, "assd_mm": 1.5, "hd95_mm": 4.0}
    empty = {"dice": 0.0, "assd_mm": None, "hd95_mm": None}  # structure missed: distance undefined
    metrics = {
        "per_case": [{"case": "LGE_1", "structures": {"MYO": scores, "LV": empty}}],
        "summary": {
            "structures": {
                name: {"dice_mean": s["dice"], "assd_mm_mean": s["assd_mm"], "hd95_mm_mean": s["hd95_mm"]}
                for name, s in (("MYO", scores), ("LV", empty))
            }
        },
    }
    table = metrics_table_node(mrml.scene, metrics, "scores").GetTable()
    columns = [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())]
    assert columns == ["Volume", "Structure", "Dice", "ASSD", "HD95"]
    assert table.GetNumberOfRows() == 4
    assert table.GetValue(0, 0).ToString() == "LGE_1" and table.GetValue(0, 2).ToDouble() == pytest.approx(
        0.8
    )
    assert math.isnan(table.GetValue(1, 3).ToDouble())
    assert table.GetValue(2, 0).ToString() == MEAN_ROW_NAME


# ---- bad inputs: each gives a message that says what to do -------------------------------------------


def test_a_segmentation_drawn_on_another_grid_is_refused(mrml):
    source = volume(mrml, "bSSFP")
    other = volume(mrml, "other", spacing=(1.5, 1.5, 8.0))
    node = segmentation_from_label_image(
        label_image_on(other, labels_200_500_600()), MSCMRSEG, other, "labels", mrml.segmentations_logic
    )
    with pytest.raises(
        InputDataError, match="drawn on another grid than volume 'bSSFP'.*select the volume it belongs to"
    ):
        label_image_from_segmentation(node, source, MSCMRSEG, mrml.segmentations_logic)


def test_an_empty_segmentation_is_refused(mrml, tmp_path):
    source, target = volume(mrml, "bSSFP"), volume(mrml, "LGE")
    empty = segmentation_from_label_image(
        label_image_on(source, np.zeros(SHAPE, np.uint16)),
        MSCMRSEG,
        source,
        "empty",
        mrml.segmentations_logic,
    )
    inputs = AdaptationInputs([SourcePair(source, empty)], [target])
    with pytest.raises(InputDataError, match="contains no labelled voxel.*paint the structures"):
        prepare_run(
            inputs, TrainJob("source_only", WORK_DIR), RunMode.TRAIN, tmp_path, mrml.segmentations_logic
        )
    no_segments = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "blank")
    with pytest.raises(InputDataError, match="has no segment: paint"):
        label_map_from_segmentation(no_segments)


def test_no_target_volume_says_what_is_missing(mrml, tmp_path):
    source = volume(mrml, "bSSFP")
    labels = segmentation_from_label_image(
        label_image_on(source, labels_200_500_600()), MSCMRSEG, source, "labels", mrml.segmentations_logic
    )
    inputs = AdaptationInputs([SourcePair(source, labels)], [])
    assert missing_inputs(inputs, RunMode.TRAIN, None) == [
        "at least one target volume (an unlabelled image of the other domain)"
    ]
    assert "a trained model" in " ".join(missing_inputs(inputs, RunMode.ADAPT, None))
    with pytest.raises(InputDataError, match="missing: at least one target volume"):
        prepare_run(
            inputs, TrainJob("source_only", WORK_DIR), RunMode.TRAIN, tmp_path, mrml.segmentations_logic
        )


def test_a_checkpoint_of_an_unknown_method_is_refused_with_advice(tmp_path):
    path = save_checkpoint(
        Checkpoint(
            method="transformer_uda",
            method_config={},
            label_map=MSCMRSEG.to_dict(),
            preprocess={},
            state={"networks": {}},
        ),
        tmp_path / "future.pt",
    )
    with pytest.raises(
        CardiacUDAError,
        match="method 'transformer_uda', which this CardiacUDA does not know.*update the CardiacUDA extension",
    ):
        describe_checkpoint(path)


def nodes_by_class(scene) -> dict[str, int]:
    counts: dict[str, int] = {}
    for index in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(index).GetClassName()
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_import_and_export_leave_no_node_behind_but_the_segmentation(mrml):
    """Slicer's export adds a '<segmentation>_ColorTable' node for a label map without a User colour
    table, and removing a volume keeps its display node: neither may stay in the user's scene."""
    target = volume(mrml)
    before = nodes_by_class(mrml.scene)
    node = segmentation_from_label_image(
        label_image_on(target, labels_200_500_600()), MSCMRSEG, target, "result", mrml.segmentations_logic
    )
    after_import = nodes_by_class(mrml.scene)
    added = {name: after_import[name] - before.get(name, 0) for name in after_import}
    assert {name: count for name, count in added.items() if count} == {
        "vtkMRMLSegmentationNode": 1,
        "vtkMRMLSegmentationDisplayNode": 1,
    }
    label_image_from_segmentation(node, target, label_map_from_segmentation(node), mrml.segmentations_logic)
    assert nodes_by_class(mrml.scene) == after_import


def test_the_terminology_is_loaded_once_whenever_it_is_asked_for():
    """A module loaded after start-up never sees startupCompleted(): the panel and the import ask again."""
    from CardiacUDASlicerLib.terminology import ensure_terminology_loaded

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert ensure_terminology_loaded(logic) == "CardiacUDA cardiac structures"
    assert ensure_terminology_loaded(logic) == "CardiacUDA cardiac structures"
    names = vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    loaded = [names.GetValue(index) for index in range(names.GetNumberOfValues())]
    assert loaded.count("CardiacUDA cardiac structures") == 1
