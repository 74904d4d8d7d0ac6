"""The headless batch script under plain Python: files in, ``.seg.nrrd`` out, exit codes, no dialog."""

from __future__ import annotations

from slicer_fixtures import MODULE_FOLDER, mrml_fixture  # noqa: F401  (the mrml fixture)

# isort: split
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CardiacUDASlicerLib.adaptation import MANIFEST_NAME

from CardiacUDALib.jobs import parse_job

BATCH_SCRIPT = MODULE_FOLDER / "Scripts" / "batch.py"
TINY_TRAINING = (
    "--preset",
    "fast",
    "--iterations",
    "2",
    "--set",
    "batch_size=2",
    "--size",
    "64",
    "--device",
    "cpu",
)


def run_batch(*arguments: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BATCH_SCRIPT), *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,  # a dialog waiting for input would hang here, not pass
    )


@pytest.fixture(scope="module")
def trained(tiny_phantom, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny source_only run from two source pairs on two targets (a few seconds of training)."""
    out = tmp_path_factory.mktemp("batch")
    sources = [
        argument
        for case in tiny_phantom.source[:2]
        for argument in ("--source", case.image, "--source-seg", case.label)
    ]
    targets = [argument for case in tiny_phantom.target[:2] for argument in ("--target", case.image)]
    completed = run_batch(
        *sources,
        *targets,
        "--method",
        "source_only",
        *TINY_TRAINING,
        "--out",
        out,
    )
    return out, completed


def test_batch_writes_seg_nrrd_files_that_reload_with_the_same_segments_and_geometry(
    trained, tiny_phantom, mrml
):
    out, completed = trained
    assert completed.returncode == 0, completed.stderr
    for case in tiny_phantom.target[:2]:
        path = out / f"{case.name}_image.seg.nrrd"
        assert f"wrote {path}" in completed.stdout
        node = mrml.segmentations_logic.LoadSegmentationFromFile(str(path), False, "reloaded")
        segmentation = node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        assert ids == ["MYO", "LV", "RV"]
        assert [segmentation.GetSegment(i).GetName() for i in ids] == [
            "Myocardium",
            "Left ventricle",
            "Right ventricle",
        ]
        assert [segmentation.GetSegment(i).GetLabelValue() for i in ids] == [200, 500, 600]
        written, target = sitk.ReadImage(str(path)), sitk.ReadImage(str(case.image))
        assert written.GetSize() == target.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), target.GetSpacing(), atol=1e-9)
        np.testing.assert_allclose(written.GetOrigin(), target.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(written.GetDirection(), target.GetDirection(), atol=1e-9)
        assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 200, 500, 600}


def test_two_source_pairs_make_a_job_with_two_sources(trained, tiny_phantom):
    out, completed = trained
    assert completed.returncode == 0, completed.stderr
    job = parse_job(json.loads((out / "run" / MANIFEST_NAME).read_text())["job"])
    assert [case.name for case in job.source] == ["case000_image", "case001_image"]
    assert all(case.label is not None and case.label.is_file() for case in job.source)


def test_adapt_instantly_from_the_trained_weights(trained, tiny_phantom, tmp_path):
    """Issue #7's action: a source model + target images, no source data -> AdaBN (no training) -> segmentations."""
    out, _ = trained
    target = tiny_phantom.target[2]
    completed = run_batch(
        "--target",
        target.image,
        "--method",
        "adabn",
        "--weights",
        out / "run" / "work" / "checkpoints" / "best.pt",
        "--size",
        "64",
        "--device",
        "cpu",
        "--out",
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert "AdaBN" in completed.stdout and (tmp_path / f"{target.name}_image.seg.nrrd").is_file()
    assert "step 1/" not in completed.stdout  # nothing was trained


def test_a_source_segmentation_of_another_image_fails_with_exit_code_1(tiny_phantom, tmp_path):
    completed = run_batch(
        "--source",
        tiny_phantom.source[0].image,
        "--source-seg",
        tiny_phantom.source[1].label,
        "--target",
        tiny_phantom.target[0].image,
        "--method",
        "source_only",
        "--out",
        tmp_path,
    )
    assert completed.returncode == 1
    assert "does not lie on the grid of volume 'case000_image'" in completed.stderr


def test_missing_targets_fail_with_exit_code_1_and_the_usage(tiny_phantom, tmp_path):
    """(A checkpoint of an unknown method is refused by describe_checkpoint: test_slicer_segmentations.py.)"""
    source = tiny_phantom.source[0]
    completed = run_batch(
        "--source", source.image, "--source-seg", source.label, "--method", "source_only", "--out", tmp_path
    )
    assert completed.returncode == 1 and "--target" in completed.stderr and "usage:" in completed.stderr


@pytest.mark.parametrize(
    "setting", [("--set", "width=0"), ("--preset", "turbo")], ids=["width 0", "preset turbo"]
)
def test_a_refused_setting_leaves_no_run_folder(setting, tiny_phantom, tmp_path):
    """The worker refuses the settings of a new run before any step: the batch script removes the run
    folder it wrote for it (inputs, job, logs), and the output folder it created."""
    case, target = tiny_phantom.source[0], tiny_phantom.target[0]
    out = tmp_path / "out"
    arguments = ["--source", case.image, "--source-seg", case.label, "--target", target.image, "--method"]
    completed = run_batch(*arguments, "source_only", *TINY_TRAINING, *setting, "--out", out)
    assert completed.returncode == 1 and "Traceback" not in completed.stderr, completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists()
