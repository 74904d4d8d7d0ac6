"""Methods side by side: the reliability map, the pairwise agreement table and ``cardiac-uda compare``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import tiny_request

from CardiacUDALib import cli
from CardiacUDALib.cases import VolumeCase, find_cases
from CardiacUDALib.compare import (
    AgreementTable,
    compare_segmentation_files,
    disagreement_map,
    result_names,
    segment_and_compare,
)
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.io import LABEL_MAPS, LabelMap
from CardiacUDALib.training import train

MSCMRSEG = LABEL_MAPS["mscmrseg"]
STRUCTURES = {"MYO": 1, "LV": 2, "RV": 3}
SHAPE = (4, 10, 12)


def labels_with_a_block() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:3, 2:6, 3:8] = 2
    labels[1:3, 6:9, 3:8] = 1
    return labels


def test_identical_results_agree_everywhere_with_dice_one():
    labels = labels_with_a_block()
    table = AgreementTable(STRUCTURES)
    reliability = table.add_case("case", {"a": labels, "b": labels.copy()})
    assert reliability.dtype == np.float32 and not reliability.any()
    assert [pair.dice for pair in table.pairs] == [{"MYO": 1.0, "LV": 1.0, "RV": 1.0}]
    assert table.cases[0].disagreeing_voxels == 0 and table.cases[0].labelled_voxels == 2 * 4 * 5 + 2 * 3 * 5


def test_a_known_overlap_gives_its_dice_and_its_count_of_disagreeing_voxels():
    first = np.zeros(SHAPE, np.uint8)
    second = np.zeros(SHAPE, np.uint8)
    first[0, 0, 0:10] = 2  # 10 voxels of LV
    second[0, 0, 4:12] = 2  # 8 voxels, 6 of them shared
    second[3, 9, 11] = 3  # RV in the second result only
    table = AgreementTable(STRUCTURES)
    reliability = table.add_case("case", {"first": first, "second": second})
    dice = table.pairs[0].dice
    assert dice["LV"] == pytest.approx(2 * 6 / (10 + 8))
    assert dice["RV"] == 0.0 and dice["MYO"] == 1.0  # MYO empty in both: nothing to disagree on
    assert table.pairs[0].mean_dice == pytest.approx((2 * 6 / 18 + 0.0 + 1.0) / 3)
    assert table.cases[0].disagreeing_voxels == 4 + 2 + 1 == int(np.count_nonzero(reliability))
    assert table.cases[0].labelled_voxels == 12 + 1
    assert set(np.unique(reliability)) == {0.0, 0.5}  # two results: one of two differs from the majority


def test_a_voxel_where_two_of_three_results_agree_has_reliability_one_third():
    first = labels_with_a_block()
    second, third = first.copy(), first.copy()
    third[0, 0, 0] = 3
    second[3, 9, 11], third[3, 9, 11] = 1, 2  # all three differ here
    reliability = disagreement_map([first, second, third])
    assert reliability[0, 0, 0] == pytest.approx(1 / 3)
    assert reliability[3, 9, 11] == pytest.approx(2 / 3)
    assert np.count_nonzero(reliability) == 2


def test_fewer_than_two_results_or_mismatched_shapes_are_refused():
    labels = labels_with_a_block()
    with pytest.raises(InputDataError, match="at least 2"):
        AgreementTable(STRUCTURES).add_case("case", {"a": labels})
    with pytest.raises(ValueError, match="different shapes"):
        disagreement_map([labels, labels[:2]])


def test_result_names_are_method_and_file_stem_made_unique():
    names = result_names(
        [("source_only", Path("a/best.pt")), ("adabn", Path("b/best.pt")), ("source_only", Path("c/best.pt"))]
    )
    assert names == ["source_only_best", "adabn_best", "source_only_best_2"]


def oblique_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.25, 0.8, 8.0))
    image.SetOrigin((-31.5, 12.25, 40.0))
    angle = np.deg2rad(20.0)
    rotation = [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    image.SetDirection(np.array(rotation).ravel().tolist())
    return image


def test_written_reliability_map_has_the_target_geometry_and_tables_are_written(tmp_path):
    target_path = tmp_path / "target" / "heart.nrrd"
    target_path.parent.mkdir()
    target = oblique_image(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    sitk.WriteImage(target, str(target_path))
    first = labels_with_a_block()
    second = first.copy()
    second[2, 2:6, 3:8] = 0  # LV: half of it missing in the second result
    folders = {"one": tmp_path / "one", "two": tmp_path / "two"}
    for folder, classes in zip(folders.values(), (first, second)):
        folder.mkdir()
        values = np.array((0, *MSCMRSEG.values), np.uint16)[classes]
        result = oblique_image(values)
        sitk.WriteImage(result, str(folder / "heart_seg.nrrd"))
    table, written = compare_segmentation_files(
        [VolumeCase("heart", target_path)], folders, MSCMRSEG, tmp_path / "out"
    )
    assert written == [tmp_path / "out" / "heart_reliability.nrrd"]
    reliability = sitk.ReadImage(str(written[0]))
    assert reliability.GetPixelID() == sitk.sitkFloat32
    assert reliability.GetSize() == target.GetSize()
    for getter in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection):
        assert np.allclose(getter(reliability), getter(target), atol=1e-9)
    assert np.count_nonzero(sitk.GetArrayViewFromImage(reliability)) == 4 * 5
    assert table.pairs[0].dice["LV"] == pytest.approx(2 * 20 / (40 + 20))
    rows = (tmp_path / "out" / "agreement.csv").read_text().splitlines()
    assert rows[0] == "case,first,second,MYO_dice,LV_dice,RV_dice,mean_dice"
    assert rows[1].startswith("heart,one,two")
    saved = json.loads((tmp_path / "out" / "agreement.json").read_text())
    assert saved["results"] == ["one", "two"] and saved["per_case"][0]["disagreeing_voxels"] == 20
    assert "| one vs two |" in (tmp_path / "out" / "agreement.md").read_text()


def test_a_result_on_another_grid_is_refused_naming_it(tmp_path):
    target_path = tmp_path / "heart.nrrd"
    sitk.WriteImage(
        oblique_image(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)), str(target_path)
    )
    folders = {"one": tmp_path / "one", "two": tmp_path / "two"}
    for folder in folders.values():
        folder.mkdir()
        sitk.WriteImage(oblique_image(np.zeros(SHAPE, np.uint16)), str(folder / "heart_seg.nrrd"))
    shifted = oblique_image(np.zeros(SHAPE, np.uint16))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(folders["two"] / "heart_seg.nrrd"))
    with pytest.raises(InputDataError, match="the two segmentation of heart does not lie on the image grid"):
        compare_segmentation_files([VolumeCase("heart", target_path)], folders, MSCMRSEG, tmp_path / "out")


def test_the_comparison_core_does_not_import_torch():
    code = "import sys, CardiacUDALib.compare; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.fixture(scope="module")
def adapted_tiny_model(tiny_phantom, label_map, tiny_model, tmp_path_factory) -> Path:
    """AdaBN from the tiny source model (no training step): a second, different model in seconds."""
    job = tiny_request(
        tiny_phantom,
        label_map,
        tmp_path_factory.mktemp("tiny_adabn"),
        method="adabn",
        initial_checkpoint=tiny_model,
        overrides={"iterations": 0},
    )
    return train(job).best_checkpoint


def test_compare_command_writes_segmentations_reliability_maps_and_the_table(
    tiny_phantom, tiny_model, adapted_tiny_model, tmp_path, capsys
):
    target = tiny_phantom.root / "target"
    arguments = ["compare", "--checkpoint", str(tiny_model), "--checkpoint", str(adapted_tiny_model)]
    arguments += ["--target", str(target), "--out", str(tmp_path), "--device", "cpu", "--no-flip-averaging"]
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "| source_only_best vs adabn_best |" in printed
    cases = find_cases(target)
    for case in cases:
        for name in ("source_only_best", "adabn_best"):
            assert (tmp_path / name / f"{case.name}_seg.nii.gz").is_file()
        reliability = sitk.ReadImage(str(tmp_path / f"{case.name}_reliability.nii.gz"))
        image = sitk.ReadImage(str(case.image))
        assert reliability.GetSize() == image.GetSize()
        assert np.allclose(reliability.GetOrigin(), image.GetOrigin())
        assert set(np.unique(sitk.GetArrayViewFromImage(reliability))) <= {0.0, 0.5}
    saved = json.loads((tmp_path / "agreement.json").read_text())
    assert [case["case"] for case in saved["per_case"]] == [case.name for case in cases]
    assert len((tmp_path / "agreement.csv").read_text().splitlines()) == 1 + len(cases)


def test_one_model_twice_gets_two_names_and_agrees_with_itself(tiny_phantom, tiny_model, tmp_path):
    cases = find_cases(tiny_phantom.root / "target")[:1]
    outcome = segment_and_compare(
        [tiny_model, tiny_model], cases, tmp_path, device="cpu", flip_averaging=False
    )
    assert list(outcome["results"]) == ["source_only_best", "source_only_best_2"]
    assert outcome["table"].pairs[0].mean_dice == 1.0 and outcome["table"].cases[0].disagreeing_voxels == 0


def test_compare_needs_two_models_and_one_label_map(tiny_phantom, tiny_model, tmp_path, capsys):
    target = str(tiny_phantom.root / "target")
    arguments = ["compare", "--checkpoint", str(tiny_model), "--target", target, "--out", str(tmp_path)]
    assert cli.main(arguments) == 1
    assert "compare at least 2 models, got 1" in capsys.readouterr().err
    from CardiacUDALib.compare import _same_label_maps

    other = LabelMap("other", (1, 2, 3), ("MYO", "LV", "RV"))
    with pytest.raises(CardiacUDAError, match="'a' and 'b' label different structures"):
        _same_label_maps({"a": MSCMRSEG, "b": other})


def test_compare_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["compare", "--help"])
    assert exited.value.code == 0 and "cardiac-uda compare --checkpoint" in capsys.readouterr().out
