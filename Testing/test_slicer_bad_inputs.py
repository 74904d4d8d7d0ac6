"""The same mistakes as ``test_bad_inputs.py``, through the batch script and the panel's logic.

The batch script must exit with 1 and one ``error:`` line that names the file or setting, without a
traceback and without writing a result; the panel's logic (``prepare_run``, then the run's worker)
must raise or report the same message, naming the volume node, before anything is written.
"""

from __future__ import annotations

from slicer_fixtures import MODULE_FOLDER, mrml_fixture  # noqa: F401  (the mrml fixture)

# isort: split
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bad_files import Files, write_bad_files
from CardiacUDASlicerLib.adaptation import WORK_DIR, AdaptationInputs, RunMode, prepare_run
from CardiacUDASlicerLib.execution import RunExecution
from CardiacUDASlicerLib.segmentations import load_segmentation_file
from CardiacUDASlicerLib.sources import SourcePair
from CardiacUDASlicerLib.volumes import add_volume_node, load_volume_file

from CardiacUDALib.errors import InputDataError
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.preprocess import PreprocessConfig

BATCH_SCRIPT = MODULE_FOLDER / "Scripts" / "batch.py"
TRAINING = ("--preset", "fast", "--iterations", "2", "--size", "64", "--device", "cpu")


@pytest.fixture(scope="module")
def files(tiny_phantom, tiny_model, tmp_path_factory) -> Files:
    return write_bad_files(tmp_path_factory.mktemp("slicer_bad_inputs"), tiny_phantom, tiny_model)


def _source(f: Files) -> list[object]:
    return ["--source", f.source[0], "--source-seg", f.source[1]]


BATCH_MISTAKES = [
    ("NaN target", lambda f: [*_source(f), "--target", f.with_nan], "NaN or infinite", "with_nan"),
    ("constant target", lambda f: [*_source(f), "--target", f.constant], "is constant", "constant"),
    ("2D target", lambda f: [*_source(f), "--target", f.slice_2d], "is a 2D image", "slice_2d"),
    ("source segmentation on another grid",
     lambda f: ["--source", f.source[0], "--source-seg", f.shifted_label, "--target", f.target],
     "does not lie on the grid", "case000_image"),
    ("empty source segmentation",
     lambda f: ["--source", f.source[0], "--source-seg", f.empty_label, "--target", f.target],
     "contains no labelled voxel", "empty_label"),
    ("damaged weights", lambda f: ["--target", f.target, "--weights", f.flipped_bytes], "is damaged",
     "flipped_bytes"),
    ("output is a file", lambda f: [*_source(f), "--target", f.target], "is a file", "existing_file"),
    ("batch size a fraction", lambda f: [*_source(f), "--target", f.target, "--set", "batch_size=2.5"],
     "'batch_size' must be an integer", None),
    ("iterations given twice", lambda f: [*_source(f), "--target", f.target, "--iterations", "3", "--set",
     "iterations=5"], "iterations is given twice", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message", "names"), [m[1:] for m in BATCH_MISTAKES], ids=[m[0] for m in BATCH_MISTAKES]
)
def test_the_batch_script_exits_1_with_one_error_line(
    files, tmp_path, arguments, message, names, capsys, monkeypatch
):
    """The script runs in this process, as ``python batch.py`` would run it (runpy): no second start-up."""
    out = files.existing_file if names == "existing_file" else tmp_path / "out"
    command = [*map(str, arguments(files)), "--method", "source_only", *TRAINING, "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [str(BATCH_SCRIPT), *command])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BATCH_SCRIPT), run_name="__main__")
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert exited.value.code == 1, stderr
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in stderr, stderr
    assert names is None or names in errors[0], errors[0]
    assert not out.is_dir() or not list(out.glob("*.seg.nrrd"))  # no result written


# ---- the panel's logic -------------------------------------------------------------------------


def _job(**overrides: object) -> TrainJob:
    return TrainJob(
        "source_only",
        WORK_DIR,
        preset="fast",
        overrides={"iterations": 2, **overrides},
        device="cpu",
        preprocess=PreprocessConfig(size=64),
    )


def _inputs(mrml, files: Files, target: Path | None = None) -> AdaptationInputs:
    source = load_volume_file(mrml.scene, files.source[0], "bSSFP")
    labels = load_segmentation_file(files.source[1], source, mrml.segmentations_logic)
    return AdaptationInputs(
        [SourcePair(source, labels)], [load_volume_file(mrml.scene, target or files.target, "LGE")]
    )


def test_a_target_node_with_nan_voxels_is_refused_by_name_before_anything_is_written(mrml, files, tmp_path):
    inputs = _inputs(mrml, files)
    image = sitk.ReadImage(str(files.target))
    values = sitk.GetArrayFromImage(image)
    values[1, 2, 3] = np.nan
    with_nan = sitk.GetImageFromArray(values)
    with_nan.CopyInformation(image)
    inputs.target_volumes = [add_volume_node(mrml.scene, with_nan, "LGE with a hole")]
    with pytest.raises(InputDataError, match=r"volume 'LGE with a hole' has 1 NaN or infinite voxel"):
        prepare_run(inputs, _job(), RunMode.TRAIN, tmp_path / "run", mrml.segmentations_logic)
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


def test_an_empty_source_segmentation_is_refused_by_name(mrml, files, tmp_path):
    inputs = _inputs(mrml, files)
    inputs.sources[0].segmentation.GetSegmentation().RemoveAllSegments()
    with pytest.raises(InputDataError, match="contains no labelled voxel|no segment"):
        prepare_run(inputs, _job(), RunMode.TRAIN, tmp_path / "run", mrml.segmentations_logic)
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


def test_a_bad_setting_comes_back_from_the_worker_as_the_runs_error(mrml, files, tmp_path):
    run = prepare_run(
        _inputs(mrml, files), _job(learning_rate=0), RunMode.TRAIN, tmp_path / "run", mrml.segmentations_logic
    )
    execution = RunExecution(run)
    execution.start()
    outcome = execution.wait()
    assert (
        outcome.error == "setting 'learning_rate' must be greater than 0, not 0.0" and outcome.exit_code == 1
    )
    assert not (run.job.out_dir / "checkpoints").exists()
