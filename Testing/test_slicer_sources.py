"""Many labelled sources: pairs in the run's job with their own geometry, pairs found by name, folders, batch."""

from __future__ import annotations

from slicer_fixtures import MODULE_FOLDER, mrml_fixture  # noqa: F401  (the mrml fixture)

# isort: split
import json
import runpy
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from CardiacUDASlicerLib.adaptation import (
    MANIFEST_NAME,
    WORK_DIR,
    AdaptationInputs,
    AdaptationRun,
    RunMode,
    prepare_run,
)
from CardiacUDASlicerLib.segmentations import segmentation_from_label_image
from CardiacUDASlicerLib.sources import (
    SourcePair,
    find_source_pairs,
    load_source_folder,
    segmentation_name_fits,
    with_pairs_added,
)
from CardiacUDASlicerLib.volumes import add_volume_node, image_on_volume_grid

from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LABEL_MAPS
from CardiacUDALib.jobs import TrainJob, parse_job

MSCMRSEG = LABEL_MAPS["mscmrseg"]
SHAPE = (5, 16, 18)
BATCH_SCRIPT = MODULE_FOLDER / "Scripts" / "batch.py"
GEOMETRIES = {  # name -> (origin, spacing, direction): three subjects scanned three ways
    "patient1_C0": ((-20.0, 35.0, 4.0), (1.25, 1.25, 10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    "patient2_C0": ((3.5, -7.0, 12.0), (1.5, 1.5, 8.0), (0, 1, 0, -1, 0, 0, 0, 0, 1)),
    "patient3_C0": ((0.0, 0.0, -40.0), (0.9, 1.1, 12.0), (1, 0, 0, 0, 0, -1, 0, 1, 0)),
}


def volume(
    mrml, name: str, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
):
    rng = np.random.default_rng(len(name))
    image = sitk.GetImageFromArray(rng.normal(size=SHAPE).astype(np.float32))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection([float(value) for value in direction])
    return add_volume_node(mrml.scene, image, name)


def segmentation(mrml, node, name: str):
    labels = np.zeros(SHAPE, np.uint16)
    labels[1:4, 3:10, 4:12] = 200
    labels[1:4, 5:8, 6:10] = 500
    labels[2:5, 10:14, 12:16] = 600
    return segmentation_from_label_image(
        image_on_volume_grid(labels, node), MSCMRSEG, node, name, mrml.segmentations_logic
    )


def three_subjects(mrml) -> list[SourcePair]:
    pairs = []
    for name, (origin, spacing, direction) in GEOMETRIES.items():
        node = volume(mrml, name, origin, spacing, direction)
        pairs.append(SourcePair(node, segmentation(mrml, node, f"{name}_manual")))
    return pairs


def test_three_source_pairs_are_written_each_with_its_own_geometry_and_all_listed_in_the_job(mrml, tmp_path):
    pairs = three_subjects(mrml)
    target = volume(mrml, "patient1_LGE")
    prepare_run(
        AdaptationInputs(pairs, [target]),
        TrainJob("source_only", WORK_DIR),
        RunMode.TRAIN,
        tmp_path,
        mrml.segmentations_logic,
    )
    job = parse_job(json.loads((tmp_path / MANIFEST_NAME).read_text())["job"])  # as written to the folder
    assert [case.name for case in job.source] == list(GEOMETRIES)
    assert [case.name for case in job.translate] == ["patient1_C0"]  # the first source shows the translation
    for case in job.source:
        origin, spacing, direction = GEOMETRIES[case.name]
        for path in (case.image, case.label):
            written = sitk.ReadImage(str(path))
            np.testing.assert_allclose(written.GetOrigin(), origin, atol=1e-9)
            np.testing.assert_allclose(written.GetSpacing(), spacing, atol=1e-9)
            np.testing.assert_allclose(written.GetDirection(), direction, atol=1e-9)
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))))) == {0, 200, 500, 600}
    reloaded = AdaptationRun.load(tmp_path)
    assert [case.node_name for case in reloaded.sources] == list(GEOMETRIES)


def test_a_source_pair_without_a_class_of_the_first_is_refused_by_name(mrml, tmp_path):
    pairs = three_subjects(mrml)
    pairs[2].segmentation.GetSegmentation().RemoveSegment("RV")
    with pytest.raises(InputDataError, match="segmentation 'patient3_C0_manual' has no segment for RV"):
        prepare_run(
            AdaptationInputs(pairs, [volume(mrml, "LGE")]),
            TrainJob("source_only", WORK_DIR),
            RunMode.TRAIN,
            tmp_path,
            mrml.segmentations_logic,
        )
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


def test_inputs_whose_names_would_write_the_same_file_are_refused(mrml, tmp_path):
    (pair,) = three_subjects(mrml)[:1]
    target = volume(mrml, f"source_{pair.volume.GetName()}")
    with pytest.raises(InputDataError, match="two inputs would be written to source_patient1_C0.nrrd"):
        prepare_run(
            AdaptationInputs([pair], [target]),
            TrainJob("source_only", WORK_DIR),
            RunMode.TRAIN,
            tmp_path,
            mrml.segmentations_logic,
        )
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


def test_a_run_folder_from_before_many_sources_still_loads(mrml, tmp_path):
    prepare_run(
        AdaptationInputs(three_subjects(mrml)[:1], [volume(mrml, "LGE")]),
        TrainJob("source_only", WORK_DIR),
        RunMode.TRAIN,
        tmp_path,
        mrml.segmentations_logic,
    )
    document = json.loads((tmp_path / MANIFEST_NAME).read_text())
    document["source"] = document.pop("sources")[0]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(document))
    assert [case.name for case in AdaptationRun.load(tmp_path).sources] == ["patient1_C0"]


@pytest.mark.parametrize(
    ("segmentation_name", "volume_name", "fits"),
    [
        ("patient1_C0_manual", "patient1_C0", True),
        ("patient1_C0 segmentation", "patient1_C0", True),
        ("patient1_C0_gt", "patient1_C0", True),
        ("patient1_C0-label", "patient1_C0", True),
        ("patient1_C0.seg", "patient1_C0", True),
        ("patient1_C0", "patient1_C0", True),
        ("patient10_C0_manual", "patient1", False),
        ("patient1_C0manual", "patient1_C0", False),
        ("Segmentation", "patient1_C0", False),
        ("anything", "", False),
    ],
)
def test_the_naming_rule(segmentation_name, volume_name, fits):
    assert segmentation_name_fits(segmentation_name, volume_name) is fits


def test_add_all_pairs_in_the_scene_finds_the_three_pairs_and_reports_what_it_skipped(mrml):
    pairs = three_subjects(mrml)
    target = volume(mrml, "patient1_LGE")
    segmentation(mrml, target, "patient1_LGE_manual")  # a target's reference: never a source
    volume(mrml, "patient4_C0")  # no segmentation: skipped
    twice = volume(mrml, "patient5_C0")
    segmentation(mrml, twice, "patient5_C0_manual")
    segmentation(mrml, twice, "patient5_C0 segmentation")  # two of them: ambiguous
    for _ in range(2):
        segmentation(mrml, volume(mrml, "patient6_C0"), "patient6_C0_gt")  # two volumes of one name
    mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "patient1_C0_labels")  # not a candidate
    mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")  # fits no volume

    found = find_source_pairs(mrml.scene, exclude=[target])

    assert found.pairs == pairs
    assert found.unlabelled == ["patient4_C0"]
    assert found.ambiguous == [
        "segmentation 'patient6_C0_gt' fits 2 volumes named 'patient6_C0'",
        "segmentation 'patient6_C0_gt' fits 2 volumes named 'patient6_C0'",
        "volume 'patient5_C0' has several segmentations ('patient5_C0_manual', 'patient5_C0 segmentation'): "
        "add its pair by hand",
    ]
    assert found.summary().startswith("found 3 source pair(s); skipped 1 volume(s) without a segmentation")


def test_the_longest_volume_name_owns_a_segmentation(mrml):
    subject = volume(mrml, "patient1")
    c0 = volume(mrml, "patient1_C0")
    labels = segmentation(mrml, c0, "patient1_C0_manual")
    found = find_source_pairs(mrml.scene)
    assert found.pairs == [SourcePair(c0, labels)] and found.unlabelled == [subject.GetName()]


def test_adding_pairs_keeps_each_volume_once(mrml):
    pairs = three_subjects(mrml)
    other = SourcePair(pairs[0].volume, segmentation(mrml, pairs[0].volume, "another"))
    assert with_pairs_added(pairs[:2], [other, pairs[2], pairs[2]]) == pairs


def test_a_folder_of_labelled_cases_becomes_pairs_on_their_own_grids(mrml, tiny_phantom):
    folder = tiny_phantom.source[0].image.parent
    pairs = load_source_folder(mrml.scene, folder, mrml.segmentations_logic)
    assert [pair.volume.GetName() for pair in pairs] == [case.name for case in tiny_phantom.source]
    assert [pair.segmentation.GetName() for pair in pairs] == [
        f"{case.name}_label" for case in tiny_phantom.source
    ]
    assert find_source_pairs(mrml.scene).pairs == pairs  # the names follow the scene's rule


def test_an_empty_folder_or_an_unlabelled_image_is_refused_by_name(mrml, tiny_phantom, tmp_path):
    with pytest.raises(InputDataError, match="no images .* found in"):
        load_source_folder(mrml.scene, tmp_path, mrml.segmentations_logic)
    sitk.WriteImage(sitk.ReadImage(str(tiny_phantom.target[0].image)), str(tmp_path / "lonely.nii.gz"))
    with pytest.raises(InputDataError, match="have no label map.*lonely"):
        load_source_folder(mrml.scene, tmp_path, mrml.segmentations_logic)


def run_batch_here(monkeypatch, capsys, *arguments: object) -> tuple[int, str]:
    """The script in this process, as ``python batch.py`` runs it; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", [str(BATCH_SCRIPT), *map(str, arguments)])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BATCH_SCRIPT), run_name="__main__")
    return exited.value.code, capsys.readouterr().err


def test_batch_refuses_unequal_source_and_segmentation_counts(tiny_phantom, tmp_path, monkeypatch, capsys):
    first, second = tiny_phantom.source[:2]
    code, stderr = run_batch_here(
        monkeypatch,
        capsys,
        *("--source", first.image, "--source-seg", first.label, "--source", second.image),
        *("--target", tiny_phantom.target[0].image, "--method", "source_only", "--out", tmp_path / "out"),
    )
    assert code == 1 and "Traceback" not in stderr
    assert "error: --source is given 2 time(s) and --source-seg 1 time(s)" in stderr


def test_batch_refuses_an_empty_source_folder(tiny_phantom, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, stderr = run_batch_here(
        monkeypatch,
        capsys,
        *("--source-dir", empty, "--target", tiny_phantom.target[0].image),
        *("--method", "source_only", "--out", tmp_path / "out"),
    )
    assert code == 1 and f"error: no images (.nii.gz, .nii, .nrrd, .mha, .mhd) found in {empty}" in stderr


def test_batch_without_any_source_says_so(tiny_phantom, tmp_path, monkeypatch, capsys):
    code, stderr = run_batch_here(
        monkeypatch,
        capsys,
        *("--target", tiny_phantom.target[0].image, "--method", "source_only", "--out", tmp_path / "out"),
    )
    assert code == 1 and "error: missing: at least one labelled source" in stderr
