"""Every bad input gets one clear error, through the CLI and through the worker, and leaves nothing behind.

One table: each row is a mistake a user makes (a label on another grid, a NaN image, a damaged
checkpoint, an output path that is a file, a mistyped setting...), written as a ``train``, ``segment``
or ``evaluate`` request. Each row runs through ``cardiac-uda`` (in-process, as ``cli.main``) and
through the worker (``worker.main`` on a job file): both must exit with 1, say what is wrong with
which file or value, print no traceback, and write no file into the output folder. The worker's own
inputs (malformed job files) have a table of their own; the batch script and the panel logic, which
run the same library jobs, have their rows in ``test_slicer_batch.py`` and ``test_slicer_jobrunner.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from bad_files import Files, write_bad_files
from conftest import TINY_SIZE

from CardiacUDALib import cli, worker
from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.errors import CheckpointError

TRAINING = ["--preset", "fast", "--device", "cpu", "--set", "iterations=2"]


# ---- the requests ------------------------------------------------------------------------------


@dataclass
class Train:
    source: list[tuple[Path, Path]]
    target: list[Path] = field(default_factory=list)
    label_map: Any = "mscmrseg"
    settings: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    method: str = "varda"  # a method that reads the target images
    init: Path | None = None
    size: int = TINY_SIZE

    def arguments(self, out: Path) -> list[str]:
        arguments = ["train", "--method", self.method, "--out", str(out), *TRAINING, "--size", str(self.size)]
        arguments += ["--source", *(f"{image}={label}" for image, label in self.source)]
        arguments += ["--target", *map(str, self.target)] if self.target else []
        arguments += ["--label-map", self.label_map, "--device", self.device]
        arguments += [f"--set={key}={json.dumps(value)}" for key, value in self.settings.items()]
        return arguments + (["--init", str(self.init)] if self.init else [])

    def job(self, out: Path) -> dict[str, Any]:
        return {
            "task": "train",
            "method": self.method,
            "out_dir": str(out),
            "source": [{"image": str(image), "label": str(label)} for image, label in self.source],
            "target": [{"image": str(image)} for image in self.target],
            "label_map": self.label_map,
            "preprocess": {"size": self.size},
            "preset": "fast",
            "overrides": {"iterations": 2, **self.settings},
            "device": self.device,
            **({"initial_checkpoint": str(self.init)} if self.init else {}),
        }


@dataclass
class Segment:
    checkpoint: Path
    images: list[Path]
    names: list[str] | None = None  # the worker's case names (the CLI names cases after their files)

    def arguments(self, out: Path) -> list[str]:
        images = [str(image) for image in self.images]
        return ["segment", "--checkpoint", str(self.checkpoint), "--images", *images, "--out", str(out)]

    def job(self, out: Path) -> dict[str, Any]:
        names = self.names or [None] * len(self.images)
        cases = [{"image": str(image), **({"name": n} if n else {})} for image, n in zip(self.images, names)]
        return {"task": "segment", "checkpoint": str(self.checkpoint), "cases": cases, "out_dir": str(out)}


@dataclass
class Evaluate:
    predictions: list[Path]
    references: list[tuple[str, Path, Path | None]]  # (name, image, label)

    def arguments(self, out: Path) -> list[str]:
        folder = self.references[0][1].parent
        predictions = [str(path) for path in self.predictions]
        return ["evaluate", "--predictions", *predictions, "--references", str(folder), "--label-map",
                "mscmrseg", "--out", str(out)]  # fmt: skip

    def job(self, out: Path) -> dict[str, Any]:
        references = [
            {"name": n, "image": str(i), **({"label": str(lbl)} if lbl else {})}
            for n, i, lbl in self.references
        ]
        return {
            "task": "evaluate",
            "predictions": [str(path) for path in self.predictions],
            "references": references,
            "label_map": "mscmrseg",
            "out_dir": str(out),
        }


@pytest.fixture(scope="module")
def files(tiny_phantom, tiny_model, tmp_path_factory) -> Files:
    return write_bad_files(tmp_path_factory.mktemp("bad_inputs"), tiny_phantom, tiny_model)


# ---- the table ---------------------------------------------------------------------------------


@dataclass
class Mistake:
    name: str
    request: Any  # (files) -> Train | Segment | Evaluate
    message: str  # must appear in the error (a regular expression)
    names: Any = None  # (files) -> the file or value the message must name
    out: Any = None  # (files, tmp_path) -> the output folder, where it is part of the mistake


def _train(**changes: Any):
    def build(f: Files) -> Train:
        request = Train(source=[f.source], target=[f.target])
        for key, value in changes.items():
            setattr(request, key, value(f) if callable(value) else value)
        return request

    return build


MISTAKES = [
    Mistake("label on another grid", _train(source=lambda f: [(f.source[0], f.shifted_label)]),
            "does not lie on the image grid", lambda f: f.shifted_label.name),
    Mistake("2D image", _train(target=lambda f: [f.slice_2d]), "is a 2D image", lambda f: f.slice_2d.name),
    Mistake("4D image", _train(target=lambda f: [f.series_4d]), "is a 4D image", lambda f: f.series_4d.name),
    Mistake("NaN voxel in NIfTI", _train(source=lambda f: [(f.with_nan, f.source[1])]),
            r"has 1 NaN or infinite voxel", lambda f: f.with_nan.name),
    Mistake("infinite voxel in NRRD", _train(target=lambda f: [f.with_inf]), "NaN or infinite",
            lambda f: f.with_inf.name),
    Mistake("all-NaN NIfTI", _train(target=lambda f: [f.all_nan]), "NaN or infinite", lambda f: f.all_nan.name),
    Mistake("constant image", _train(target=lambda f: [f.constant]), "is constant", lambda f: f.constant.name),
    Mistake("empty label", _train(source=lambda f: [(f.source[0], f.empty_label)]), "contains no labelled voxel",
            lambda f: f.empty_label.name),
    Mistake("label value outside the map", _train(source=lambda f: [(f.source[0], f.unknown_value)]),
            r"label value\(s\) \[300\]", lambda f: f.unknown_value.name),
    Mistake("unknown label map", _train(label_map="acdc"), "cannot read label map 'acdc'"),
    Mistake("malformed label map", _train(label_map="200:MYO,LV"), "cannot read label map"),
    Mistake("non-ASCII digit in label map", _train(label_map="²00:MYO"), "cannot read label map"),
    Mistake("label value above uint16", _train(label_map="70000:MYO"), "at most 65535"),
    Mistake("missing source file", _train(source=lambda f: [(f.root / "absent.nii.gz", f.source[1])]),
            "does not exist", lambda f: "absent.nii.gz"),
    Mistake("output is a file", _train(), "is a file: give a folder", out=lambda f, tmp: f.existing_file),
    Mistake("output name over 255 bytes", _train(), "has a name of 300 bytes",
            out=lambda f, tmp: tmp / ("a" * 300)),
    Mistake("output path over PATH_MAX", _train(), "has a path of [0-9]+ bytes",
            out=lambda f, tmp: tmp.joinpath(*["b" * 200] * 25)),
    Mistake("iterations not a number", _train(settings={"iterations": "abc"}), "'iterations' must be an integer"),
    Mistake("iterations a fraction", _train(settings={"iterations": 2.5}), "'iterations' must be an integer"),
    Mistake("iterations a boolean", _train(settings={"iterations": True}), "'iterations' must be an integer"),
    Mistake("checkpoint_every zero", _train(settings={"checkpoint_every": 0}), "'checkpoint_every' must be at least 1"),
    Mistake("width zero", _train(settings={"width": 0}), "'width' must be at least 1"),
    Mistake("width beyond memory", _train(method="source_only", settings={"width": 100_000_000}),
            r"these settings need more bytes than 64 bits count \(weights beyond counting"),
    Mistake("batch beyond memory", _train(method="source_only", settings={"batch_size": 10_000_000}),
            r"need at least .* for a batch of 10000000 slices of 64 x 64\), more than the cpu has"),
    Mistake("unknown normalisation", _train(method="source_only", settings={"norm": "bogus"}),
            "setting 'norm' must be one of batch, instance, none, not 'bogus'"),
    Mistake("learning rate NaN", _train(settings={"learning_rate": "nan"}), "'learning_rate' must be a number"),
    Mistake("unknown device", _train(device="tpu"), "unknown device 'tpu'"),
    Mistake("init with another size than the weights'", _train(method="adabn", init=lambda f: f.checkpoint, size=96),
            f"were trained with other preprocessing: size {TINY_SIZE} \\(asked: 96\\)", lambda f: f.checkpoint.name),
    Mistake("init from another method family", _train(method="varda", init=lambda f: f.checkpoint),
            "source_only checkpoint whose weights do not fit method 'varda'", lambda f: f.checkpoint.name),
    Mistake("truncated checkpoint", lambda f: Segment(f.truncated, [f.target]), "is corrupt",
            lambda f: f.truncated.name),
    Mistake("random bytes as checkpoint", lambda f: Segment(f.random_bytes, [f.target]), "is corrupt",
            lambda f: f.random_bytes.name),
    Mistake("flipped bytes in the weights", lambda f: Segment(f.flipped_bytes, [f.target]), "is damaged",
            lambda f: f.flipped_bytes.name),
    Mistake("checkpoint that would run code", lambda f: Segment(f.pickled_code, [f.target]),
            "never executes code", lambda f: f.pickled_code.name),
    Mistake("missing checkpoint", lambda f: Segment(f.root / "absent.pt", [f.target]), "does not exist"),
    Mistake("two volumes with one name", lambda f: Segment(f.checkpoint, [f.target, f.target_elsewhere]),
            "several volumes are named case000"),
    Mistake("prediction missing", lambda f: Evaluate(f.predictions[:2], f.references),
            "no prediction for 1 of 3|2 predictions for 3 reference cases"),
    Mistake("prediction without a reference", lambda f: Evaluate([*f.predictions, f.constant], f.references),
            "no reference case for prediction|4 predictions for 3 reference cases"),
    Mistake("the same case twice", lambda f: Evaluate([f.predictions[0], *f.predictions], [f.references[0], *f.references]),
            "two predictions for case case000|several volumes are named case000"),
    Mistake("truncated int16 NIfTI", _train(target=lambda f: [f.truncated_int16]), "is damaged or cut short",
            lambda f: f.truncated_int16.name),
    Mistake("truncated uncompressed NIfTI", lambda f: Segment(f.checkpoint, [f.truncated_raw]),
            "is cut short: it holds [0-9]+ of the [0-9]+ bytes", lambda f: f.truncated_raw.name),
    Mistake("truncated float NIfTI", lambda f: Segment(f.checkpoint, [f.truncated_float]), "cut short",
            lambda f: f.truncated_float.name),
    Mistake("truncated label", _train(source=lambda f: [(f.source[0], f.truncated_label)]), "cut short",
            lambda f: f.truncated_label.name),
    Mistake("NaN in a float label", _train(source=lambda f: [(f.source[0], f.nan_label)]), "NaN or infinite",
            lambda f: f.nan_label.name),
    Mistake("NaN in a prediction", lambda f: Evaluate([f.root / "nan_prediction" / f.predictions[0].name,
            *f.predictions[1:]], f.references), "NaN or infinite", lambda f: "nan_prediction"),
    Mistake("file name not UTF-8", lambda f: Segment(f.checkpoint, list((f.root / "not_utf8").iterdir())),
            "is not valid UTF-8"),
    Mistake("a bad volume after good ones", lambda f: Segment(f.checkpoint, [f.target, f.references[1][1],
            f.slice_2d]), "is a 2D image", lambda f: f.slice_2d.name),
    Mistake("truncated MHA", lambda f: Segment(f.checkpoint, [f.truncated_mha]),
            "is cut short: it holds [0-9]+ of the [0-9]+ bytes", lambda f: f.truncated_mha.name),
    Mistake("references without labels", lambda f: Evaluate(f.predictions[:1], [(f.references[0][0],
            f.root / "unlabelled_references" / f.references[0][1].name, None)]),
            "have no label file to evaluate against", lambda f: f.references[0][0]),
    Mistake("prediction on another grid", lambda f: Evaluate([f.mis_gridded, *f.predictions[1:]], f.references),
            "does not lie on the image grid", lambda f: f.mis_gridded.name),
]  # fmt: skip


def _files_written(out: Path) -> list[Path]:
    # os.path.exists, not Path.exists: a name too long for the file system is simply not there
    return [path for path in out.rglob("*") if path.is_file()] if os.path.exists(out) else []


def _output_folder(tmp_path: Path, mistake: Mistake, files: Files) -> Path:
    return tmp_path / "out" if mistake.out is None else mistake.out(files, tmp_path)


@pytest.fixture
def restore_sigterm():
    """worker.main installs its SIGTERM handler: give the test process its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_the_cli_names_the_problem_in_one_line(mistake, files, tmp_path, capsys):
    out = _output_folder(tmp_path, mistake, files)
    code = cli.main(mistake.request(files).arguments(out))
    output = capsys.readouterr().err
    error = output.strip().splitlines()[-1]  # after progress lines, if it got that far
    assert code == 1, output
    assert error.startswith("error: ") and "Traceback" not in output, output
    assert sum(line.startswith("error") for line in output.splitlines()) == 1, output
    _assert_names_the_problem(error, mistake, files)
    assert _files_written(out) == [] or out.is_file()
    assert not files.marker.exists()


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_the_worker_sends_an_error_event_then_done(mistake, files, tmp_path, capsys, restore_sigterm):
    out = _output_folder(tmp_path, mistake, files)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(mistake.request(files).job(out)))
    code = worker.main([str(job_file)])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1, events
    assert events[-1] == {"event": "done", "stopped": False}
    assert events[-2]["event"] == "error" and "detail" not in events[-2], events[-2]
    _assert_names_the_problem(events[-2]["message"], mistake, files)
    assert _files_written(out) == [] or out.is_file()
    assert not files.marker.exists()


def _assert_names_the_problem(message: str, mistake: Mistake, files: Files) -> None:
    assert re.search(mistake.message, message), message
    if mistake.names is not None:
        assert str(mistake.names(files)) in message, message


def test_the_flipped_bytes_are_inside_the_weights_and_torch_alone_would_load_them(files):
    """The control of the "flipped bytes" row: the damage is silent without the digest."""
    damaged = torch.load(files.flipped_bytes, weights_only=True)
    intact = torch.load(files.checkpoint, weights_only=True)
    assert damaged["method"] == intact["method"] and damaged["state"].keys() == intact["state"].keys()
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(files.flipped_bytes)


# ---- the worker's own input: the job file --------------------------------------------------------

JOB_FILES = [
    ("not JSON", b"{'task': 'segment'", "is not valid JSON"),
    ("not UTF-8", '{"task": "segment", "out_dir": "é"}'.encode("latin-1"), "is not UTF-8 text"),
    ("a list", b"[1]", "must be a JSON object"),
    ("null", b"null", "must be a JSON object"),
    ("unknown task", b'{"task": "dance"}', "unknown job task 'dance'"),
    ("no task", b'{"checkpoint": "x.pt"}', "unknown job task None"),
    ("missing field", b'{"task": "segment", "cases": [], "out_dir": "o"}', "the segment job has no 'checkpoint'"),
    ("unknown field", b'{"task": "segment", "checkpoint": "x", "cases": [], "out_dir": "o", "colour": 1}',
     "unknown field\\(s\\) colour"),
    ("cases not a list", b'{"task": "segment", "checkpoint": "x", "cases": "a.nii.gz", "out_dir": "o"}',
     "'cases' must be a list"),
    ("case without image", b'{"task": "segment", "checkpoint": "x", "cases": [{"name": "a"}], "out_dir": "o"}',
     "needs 'image'"),
    ("case name escaping the folder",
     b'{"task": "segment", "checkpoint": "x", "cases": [{"name": "../../escape", "image": "a.nii.gz"}], '
     b'"out_dir": "o"}', "case name '../../escape'"),
    ("same case name twice",
     b'{"task": "segment", "checkpoint": "x", "out_dir": "o", "cases": [{"name": "same", "image": "a.nii.gz"}, '
     b'{"name": "same", "image": "b.nii.gz"}]}', "several volumes are named same"),
    ("resume as a string", b'{"task": "train", "method": "source_only", "out_dir": "o", "source": [], '
     b'"resume": "false"}', "'resume' must be true or false, not the string 'false'"),
    ("seed as a string", b'{"task": "train", "method": "source_only", "out_dir": "o", "source": [], "seed": "0"}',
     "'seed' must be an integer"),
    ("seed negative", b'{"task": "train", "method": "source_only", "out_dir": "o", "source": [], "seed": -1}',
     "the seed must be a whole number from 0 to 4294967295, got -1"),
    ("seed of 20 digits", b'{"task": "train", "method": "source_only", "out_dir": "o", "seed": 12345678901234567890}',
     "from 0 to 4294967295"),
    ("out_dir a number", b'{"task": "translate", "checkpoint": "x", "cases": [], "out_dir": 5}',
     "'out_dir' must be a string"),
    # a byte-order mark is read past (Windows editors write one): the error is the content's
    ("UTF-8 byte-order mark", b'\xef\xbb\xbf{"checkpoint": "x.pt"}', "unknown job task None"),
    ("a key twice", b'{"task": "segment", "task": "translate", "checkpoint": "x", "cases": [], "out_dir": "o"}',
     "'task' appear twice in one object"),
    ("nested 100000 deep", b"[" * 100_000, "nested too deeply to read"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("contents", "message"), [row[1:] for row in JOB_FILES], ids=[row[0] for row in JOB_FILES]
)
def test_a_malformed_job_file_gets_an_error_event_exit_1_and_done(
    contents, message, tmp_path, capsys, monkeypatch, restore_sigterm
):
    monkeypatch.chdir(tmp_path)
    job_file = tmp_path / "job.json"
    job_file.write_bytes(contents)
    code = worker.main([str(job_file)])
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1 and "Traceback" not in captured.err, captured
    assert [event["event"] for event in events] == ["error", "done"]
    assert re.search(message, events[0]["message"]), events[0]["message"]
    assert [path.name for path in tmp_path.iterdir()] == ["job.json"]  # nothing written


def _folder_of_inputs(files: Files, folder: Path) -> dict[Path, bytes]:
    """``a.nii.gz`` and ``a_seg.nii.gz``, both volumes: an output folder that holds its own inputs."""
    folder.mkdir()
    (folder / "a.nii.gz").write_bytes(files.target.read_bytes())
    (folder / "a_seg.nii.gz").write_bytes(files.source[0].read_bytes())
    return {path: path.read_bytes() for path in folder.iterdir()}


def test_no_command_writes_onto_a_volume_it_reads(files, tmp_path, capsys, restore_sigterm):
    folder = tmp_path / "d"
    before = _folder_of_inputs(files, folder)
    code = cli.main(
        ["segment", "--checkpoint", str(files.checkpoint), "--images", str(folder), "--out", str(folder)]
    )
    assert code == 1
    assert f"writing {folder / 'a_seg.nii.gz'} would replace the input" in capsys.readouterr().err
    job = {"task": "segment", "checkpoint": str(files.checkpoint), "out_dir": str(folder),
           "cases": [{"image": str(path)} for path in sorted(folder.iterdir())]}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert worker.main([str(tmp_path / "job.json")]) == 1
    assert "would replace the input" in capsys.readouterr().out
    (folder / "a_reliability.nii.gz").write_bytes(files.target.read_bytes())
    before[folder / "a_reliability.nii.gz"] = files.target.read_bytes()
    checkpoints = ["--checkpoint", str(files.checkpoint)] * 2
    code = cli.main(["compare", *checkpoints, "--target", str(folder), "--out", str(folder)])
    assert code == 1 and "would replace the input" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in folder.iterdir()} == before  # nothing touched, nothing added


def _file_size_limited(limit: int) -> None:
    """In the child: the kernel refuses every write past ``limit`` bytes of a file (RLIMIT_FSIZE, with
    EFBIG rather than SIGXFSZ), as a full disk refuses it with ENOSPC; pipes are not files."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


SAVE_CHECKPOINT = """
import sys
from CardiacUDALib.checkpoint import load_checkpoint, save_checkpoint
from CardiacUDALib.errors import CardiacUDAError
try:
    save_checkpoint(load_checkpoint(sys.argv[1]), sys.argv[2])
except CardiacUDAError as error:
    sys.exit(f"error: {error}")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
@pytest.mark.parametrize("writer", ["segmentation", "checkpoint"])
def test_a_write_the_disk_refuses_is_one_clear_error_and_the_previous_file_stays(writer, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    if writer == "segmentation":  # ITK's NIfTI writer does not report the failed write itself
        previous = out / f"{files.references[0][0]}_seg.nii.gz"
        command = ["-m", "CardiacUDALib.cli", "segment", "--checkpoint", str(files.checkpoint)]
        command += ["--images", str(files.references[0][1]), "--out", str(out)]
    else:  # torch.save's zip writer reports it as a RuntimeError of its own
        previous = out / "last.pt"
        command = ["-c", SAVE_CHECKPOINT, str(files.checkpoint), str(previous)]
    previous.write_bytes(b"the result of an earlier run")
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, preexec_fn=lambda: _file_size_limited(64)
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: cannot write {previous}: ") and "nothing was replaced" in error, error
    assert previous.read_bytes() == b"the result of an earlier run"
    assert sorted(path.name for path in out.iterdir()) == [previous.name]  # no temporary left
