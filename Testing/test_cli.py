"""The ``cardiac-uda`` command, the demo and the benchmark split: behaviour seen by a user.

End-to-end tests run the installed command in a subprocess with one torch thread: on the shared
2-core machines a second intra-op thread competing with other processes makes each step many times
slower, and these tests only check protocol and files, not speed.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from CardiacUDALib import cli
from CardiacUDALib.arguments import cases_from_arguments, parse_settings
from CardiacUDALib.benchmark import run_benchmark
from CardiacUDALib.benchmark.splits import mscmrseg_split
from CardiacUDALib.cases import find_cases
from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.console import ProgressPrinter, losses_postfix
from CardiacUDALib.demo import run_demo
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.methods import METHODS

REPOSITORY = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = (
    Path("/work/shared/data/mscmrseg19_c0_lge_192"),
    REPOSITORY.parent / "shared/data/mscmrseg19_c0_lge_192",
)
SUBCOMMANDS = ("methods", "phantom", "train", "segment", "translate", "evaluate", "demo", "benchmark")
TINY = [
    "--preset",
    "fast",
    "--set",
    "iterations=20",
    "--set",
    "validate_every=10",
    "--size",
    "64",
    "--device",
    "cpu",
]
PHANTOM_VALUES = {0, 200, 500, 600}


def cardiac_uda(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("cardiac-uda")), *arguments]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture
def one_thread():
    """In-process training with one torch thread (see the module docstring), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cli_phantom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    result = cardiac_uda("phantom", "--out", "ph", "--subjects", "4", "--size", "64", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_every_subcommand_has_help_with_an_example(subcommand, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([subcommand, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"cardiac-uda {subcommand}" in text


def test_methods_lists_keys_with_descriptions(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for key, method in METHODS.items():
        assert re.search(rf"^{key} +{re.escape(method.description)}$", out, re.MULTILINE), key
    assert "target images: not needed" in out


def test_phantom_train_segment_evaluate_end_to_end(cli_phantom):
    folder = cli_phantom
    validation = "ph/target/case000_image.nii.gz=ph/target/case000_label.nii.gz"
    trained = cardiac_uda(
        "train", "--method", "source_only", "--source", "ph/source", "--validation", validation,
        "--label-map", "mscmrseg", "--out", "run", *TINY, cwd=folder,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert (
        "validation Dice at step 10" in trained.stderr
        and "best checkpoint: run/checkpoints/best.pt" in trained.stdout
    )
    assert (folder / "run/checkpoints/best.pt").is_file() and (folder / "run/history.json").is_file()

    segmented = cardiac_uda(
        "segment", "--checkpoint", "run/checkpoints/best.pt", "--images", "ph/target", "--out", "seg", "--device", "cpu",
        cwd=folder,
    )  # fmt: skip
    assert segmented.returncode == 0, segmented.stderr
    targets = find_cases(folder / "ph/target", require_labels=True)
    for case in targets:
        image = sitk.ReadImage(str(case.image))
        segmentation = sitk.ReadImage(str(folder / "seg" / f"{case.name}_seg.nii.gz"))
        assert segmentation.GetSize() == image.GetSize()
        assert np.allclose(segmentation.GetSpacing(), image.GetSpacing())
        assert np.allclose(segmentation.GetOrigin(), image.GetOrigin())
        assert np.allclose(segmentation.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayViewFromImage(segmentation))) <= PHANTOM_VALUES

    evaluated = cardiac_uda(
        "evaluate", "--predictions", "seg", "--references", "ph/target", "--label-map", "mscmrseg", "--out", "scores",
        cwd=folder,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    rows = (folder / "scores/metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("case,MYO_dice") and sorted(row.split(",")[0] for row in rows[1:]) == [
        case.name for case in targets
    ]
    assert "| predictions |" in evaluated.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "source_only", "--source", "no_such_folder"], "no_such_folder does not exist"),
        (["--method", "no_such_method", "--source", "ph/source"], "unknown method 'no_such_method'"),
        (["--method", "source_only", "--source", "ph/source/case000_image.nii.gz"], "IMAGE=LABEL"),
        (
            ["--method", "source_only", "--source", "ph/source", "--set", "nosuchkey=1"],
            "unknown setting(s) nosuchkey",
        ),
        (
            ["--method", "source_only", "--source", "ph/source", "--set", "iterations"],
            "write it as key=value",
        ),
    ],
)
def test_bad_train_input_is_one_readable_line(arguments, message, cli_phantom, capsys, monkeypatch):
    monkeypatch.chdir(cli_phantom)
    code = cli.main(["train", *arguments, "--label-map", "mscmrseg", "--out", "bad_run", *TINY])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["phantom", "--out", "p", "--subjects", "1", "--seed", "-1"], "--seed: must be from 0 to 4294967295, got -1"),
        (["train", "--method", "source_only", "--source", "s", "--label-map", "mscmrseg", "--out", "r", "--seed",
          "12345678901234567890"], "--seed: must be from 0 to 4294967295, got 12345678901234567890"),
        (["segment", "--checkpoint", "c.pt", "--images", "i", "--out", ""], "--out: is empty: give a folder"),
        (["segment", "--images", "i", "--out", "o"], "one of the arguments --checkpoint --model is required"),
    ],
)  # fmt: skip
def test_a_usage_error_exits_1_with_one_error_line_as_every_other_error(
    arguments, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main(arguments)
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.startswith("usage: ") and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("label_map", "message"),
    [
        ("200:MYO,500:LV", "label value(s) [600] that are not in label map"),
        ("200:MYO,LV", "cannot read label map"),
    ],
)
def test_label_map_errors_exit_1_without_traceback(label_map, message, cli_phantom):
    result = cardiac_uda(
        "train", "--method", "source_only", "--source", "ph/source", "--label-map", label_map, "--out", "bad_map",
        *TINY, cwd=cli_phantom,
    )  # fmt: skip
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_evaluate_names_predictions_without_a_reference(cli_phantom, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(cli_phantom)
    stray = tmp_path / "someone_else_seg.nii.gz"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt16), str(stray))
    code = cli.main(
        [
            "evaluate",
            "--predictions",
            str(stray),
            "--references",
            "ph/target",
            "--label-map",
            "mscmrseg",
            "--out",
            "x",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "no reference case for prediction(s) someone_else_seg.nii.gz" in err


def test_file_pairs_are_named_like_folder_cases_and_target_labels_are_dropped(cli_phantom):
    folder = cli_phantom / "ph/target"
    pair = f"{folder}/case001_image.nii.gz={folder}/case001_label.nii.gz"
    [case] = cases_from_arguments([pair], "--validation", labelled=True)
    assert case.name == "case001" and case.label == folder / "case001_label.nii.gz"
    targets = cases_from_arguments([str(folder)], "--target", labelled=False)
    assert [c.name for c in targets] == ["case000", "case001", "case002", "case003"]
    assert all(c.label is None for c in targets)


def test_set_values_parse_as_json_when_they_can():
    assert parse_settings(["iterations=20", "amp=false", "lr_schedule=poly", "learning_rate=2e-4"]) == {
        "iterations": 20,
        "amp": False,
        "lr_schedule": "poly",
        "learning_rate": 2e-4,
    }


def test_ctrl_c_saves_last_checkpoint_and_the_same_command_resumes(cli_phantom):
    arguments = [
        "train",
        "--method",
        "source_only",
        "--source",
        "ph/source",
        "--label-map",
        "mscmrseg",
        "--out",
        "stop",
    ]
    arguments += ["--preset", "fast", "--size", "64", "--device", "cpu"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("cardiac-uda")), *arguments, "--set", "iterations=100000"]
    process = subprocess.Popen(command, cwd=cli_phantom, env=environment, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "loaded case003" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, remaining = process.communicate(timeout=120)
    assert process.returncode == 130, remaining
    assert "run the same command again to resume" in remaining and "Traceback" not in remaining
    stopped_at = load_checkpoint(cli_phantom / "stop/checkpoints/last.pt").step
    resumed = cardiac_uda(*arguments, "--set", f"iterations={stopped_at + 2}", cwd=cli_phantom)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from stop/checkpoints/last.pt at step {stopped_at}" in resumed.stderr


# ---- demo ----------------------------------------------------------------------------------------


def test_demo_writes_report_summary_and_overlays(tmp_path, one_thread):
    method = "adabn" if "adabn" in METHODS else None
    summary = run_demo(
        tmp_path, method, subjects=4, device="cpu", overrides={"iterations": 8, "validate_every": 4}
    )
    assert set(summary["methods"]) == {"source_only"} | ({method} if method else set())
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key, entry in on_disk["methods"].items():
        assert 0.0 <= entry["mean_dice"] <= 1.0 and "validation" in entry["selection"], key
        assert Path(entry["checkpoint"]).is_file()
    assert on_disk["split"]["validation"] == ["case000", "case001", "case002"]
    assert on_disk["split"]["test"] == {"target": ["case003"]}
    report = (tmp_path / "report.md").read_text()
    assert "| source_only |" in report and "Gain over no adaptation" in report
    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert overlays and all(Image.open(path).size[0] > 300 for path in overlays)


def test_demo_refuses_too_few_subjects_before_training(tmp_path):
    with pytest.raises(CardiacUDAError, match="more than 3 subjects"):
        run_demo(tmp_path, None, subjects=3)
    assert not any(tmp_path.iterdir())


# ---- benchmark -----------------------------------------------------------------------------------


def _real_data() -> Path:
    for candidate in DATA_CANDIDATES:
        if (candidate / "C0").is_dir() and (candidate / "LGE").is_dir():
            return candidate
    pytest.skip(f"MS-CMRSeg data not found in {', '.join(map(str, DATA_CANDIDATES))}")


def _patients(cases) -> list[int]:
    return [int(case.name.removeprefix("patient").split("_")[0]) for case in cases]


def test_cross_domain_split_follows_the_published_protocol():
    split = mscmrseg_split(_real_data(), "cross-domain")
    assert _patients(split.source) == list(range(1, 36)) and all(c.label is not None for c in split.source)
    assert _patients(split.target) == list(range(1, 41)) and all(c.label is None for c in split.target)
    assert all(c.name.endswith("_LGE") for c in split.target + split.validation + split.test_sets["lge"])
    assert _patients(split.validation) == [1, 2, 3, 4, 5] and all(
        c.label is not None for c in split.validation
    )
    assert list(split.test_sets) == ["lge"] and _patients(split.test_sets["lge"]) == list(range(6, 41))


def test_in_domain_split_trains_on_c0_and_tests_on_both_sequences():
    split = mscmrseg_split(_real_data(), "in-domain")
    assert _patients(split.validation) == [1, 2, 3, 4, 5] and split.validation[0].name.endswith("_C0")
    assert _patients(split.source) == list(range(6, 26)) and split.target == []
    assert _patients(split.test_sets["c0"]) == list(range(26, 36))
    assert _patients(split.test_sets["lge"]) == list(range(6, 41))


def _fake_layout(root: Path, sequences: dict[str, list[str]]) -> Path:
    image = sitk.Image(8, 8, 3, sitk.sitkFloat32)
    for sequence, names in sequences.items():
        (root / sequence).mkdir(parents=True)
        for name in names:
            sitk.WriteImage(image, str(root / sequence / f"{name}.nii.gz"))
            sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt16), str(root / sequence / f"{name}_manual.nii.gz"))
    return root


def test_wrong_layouts_say_what_is_expected(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        mscmrseg_split(tmp_path / "missing")
    only_c0 = _fake_layout(tmp_path / "only_c0", {"C0": ["patient1_C0"]})
    with pytest.raises(InputDataError, match=r"LGE is missing; expected .*patient<N>_LGE.nii.gz"):
        mscmrseg_split(only_c0)
    renamed = _fake_layout(tmp_path / "renamed", {"C0": ["case1"], "LGE": ["patient1_LGE"]})
    with pytest.raises(InputDataError, match=r"unexpected file .*case1.nii.gz"):
        mscmrseg_split(renamed)
    no_test = _fake_layout(tmp_path / "no_test", {"C0": ["patient1_C0"], "LGE": ["patient1_LGE"]})
    with pytest.raises(InputDataError, match="no volume for the LGE test set"):
        mscmrseg_split(no_test)


def test_benchmark_refuses_unknown_dataset_and_target_methods_in_domain(tmp_path):
    with pytest.raises(CardiacUDAError, match="unknown dataset 'acdc'"):
        run_benchmark(tmp_path, TrainJob("source_only", tmp_path / "out"), dataset="acdc")
    with pytest.raises(CardiacUDAError, match="source-only methods"):
        run_benchmark(
            tmp_path, TrainJob("source_only", tmp_path / "out", stages=["adabn"]), split="in-domain"
        )


def test_benchmark_command_without_data_says_how_to_give_it(capsys, monkeypatch):
    monkeypatch.delenv("CARDIACUDA_DATA", raising=False)
    assert cli.main(["benchmark", "--method", "source_only", "--out", "x"]) == 1
    assert "--data DIR or the CARDIACUDA_DATA variable" in capsys.readouterr().err


def terminal_lines(written: str) -> list[str]:
    """What a terminal shows for ``written``: each carriage return starts the line over, overwriting it."""
    lines = []
    for raw in written.split("\n"):
        shown: list[str] = []
        for part in raw.split("\r"):
            shown[: len(part)] = part
        lines.append("".join(shown).rstrip())
    return [line for line in lines if line]


def progress(step: int, total: int, **fields: object) -> dict[str, object]:
    return {"event": "progress", "step": step, "total": total, **fields}


def test_progress_printer_keeps_lines_out_of_bars_and_shows_the_remaining_time():
    stream = io.StringIO()
    printer = ProgressPrinter(stream, ncols=80)
    losses = {
        "cross_entropy": 0.125,
        "dice": 0.366,
        "pseudo_label": 0.0513,
        "confident": 0.724,
        "loss": 0.542,
    }
    # A demo between two methods: the first method's segmentation bar ends, the next method loads its
    # volumes (status lines) and trains (a step bar with five loss terms) with validation in between.
    for step in (1, 2, 3):
        printer(progress(step, 3, case=f"case00{step}", losses={}))
    statuses = ["training gin_ipa", "loaded case000 (1/2)", "loaded case001 (2/2)"]
    for message in statuses:
        printer({"event": "status", "message": message})
    printer(progress(10, 100, losses=losses))
    time.sleep(0.05)
    printer(progress(20, 100, losses=losses))
    printer({"event": "validation", "step": 20, "dice": {"MYO": 0.5, "mean": 0.5}})
    time.sleep(0.05)
    printer(progress(30, 100, losses=losses))
    printer.close()

    lines = terminal_lines(stream.getvalue())
    validation = "validation Dice at step 20: MYO 0.500, mean 0.500"
    assert lines[0].startswith("case003: 100%") and "3/3" in lines[0]  # the finished bar stays, once
    assert lines[1:4] == statuses  # each status on its own line, after the bar that ended before it
    assert lines[4] == validation
    assert len(lines) == 6 and "30/100" in lines[5]  # the open step bar, drawn below every line
    assert not any(message in line for line in (lines[0], lines[5]) for message in [*statuses, validation])
    step_bar = lines[5]
    assert len(step_bar) <= 80
    assert re.search(r"30/100 \[\d\d:\d\d<\d\d:\d\d, ", step_bar), step_bar  # elapsed<remaining
    assert "loss=0.542" in step_bar and "|" in step_bar  # the total loss first, and a drawn bar


def test_losses_postfix_puts_the_total_first_and_keeps_to_its_width():
    losses = {"cross_entropy": 0.125, "dice": 0.366, "loss": 0.542}
    assert losses_postfix(losses, width=24) == "loss=0.542"
    assert losses_postfix(losses, width=33) == "loss=0.542, cross_entropy=0.125"
    assert losses_postfix(losses, width=80) == "loss=0.542, cross_entropy=0.125, dice=0.366"
    assert losses_postfix({"adversarial": -0.25}, width=5) == "adversarial=-0.25"  # one term always shows


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`cardiac-uda methods | head -c1` printed a BrokenPipeError traceback: the reader had gone."""
    process = subprocess.Popen(
        [sys.executable, "-m", "CardiacUDALib.cli", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # gone before the command writes
    error = process.stderr.read().decode()
    assert process.wait() == 1 and "Traceback" not in error and "BrokenPipe" not in error, error
