"""Reproduce the bad inputs and faults of issue #35, one subprocess per row, and tabulate what happens.

    python benchmarks/reproduce_bad_inputs.py --work /tmp/repro --out /tmp/repro/table.md [--only REGEX]

In ``--work`` it writes a small phantom (``ph``: ``cardiac-uda phantom --out ph --subjects 3 --size 64``),
trains CK in 4 steps (``ck``: ``cardiac-uda train --method source_only --preset fast --source ph/source
--label-map mscmrseg --out ck --set iterations=4 --size 64``) and CKG, a ``cut_seg`` model in 2 steps
(``ckg``: a model with a generator, for ``translate``), then runs each row of :data:`ROWS` in a folder of
its own (``rows/<name>``, the row's working directory; ``logs/<name>.txt`` keeps its whole output).

Each row records the exit code; the last line of stderr (the worker: its ``error`` event's message);
whether "Traceback" appears anywhere in the output; whether a file it could read changed or went (the
SHA-256 of every file of ``ph``, ``ck``, ``ckg`` and the row's folder, before and after); and the files it
wrote. "as expected" is yes when the row met what the issue asks: exit code 1, no traceback, nothing of
the user's touched and, for a failure, no file written (a worker also ends with ``error`` then ``done``),
or the documented behaviour the row names instead (e.g. the worker scores predictions listed in another
order by name; the bundled model works with an unusable cache; ``--seed 4294967295`` is accepted).

Every child runs with its address space limited (:data:`MEMORY_LIMIT`): a size that the library does not
refuse up front fails in the child instead of taking the host's memory (issue: ``depth=20`` was killed by
the OOM killer). Disk full while saving is not reproduced here: it needs a small file system (a loop
mount or tmpfs of a few MB); ``Testing/test_bad_inputs.py`` tries it with a file size limit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
BATCH_SCRIPT = REPO / "CardiacUDA" / "Scripts" / "batch.py"
MEMORY_LIMIT = 12 * 2**30  # bytes of address space per child
TIMEOUT_S = 300
MAX_SEED = 2**32 - 1
NOT_UTF8 = os.fsdecode(b"caf\xe9.nii.gz")  # a file name that is not valid UTF-8
CASES = ("case000", "case001", "case002")

# The fixtures, relative to --work, and how commands name them.
PH, CK, CKG = "ph", "ck/checkpoints/best.pt", "ckg/checkpoints/best.pt"
PLACEHOLDERS = {  # {key} in a command: (its value, relative to --work where a path; how the table shows it)
    "ph": (PH, "ph"),
    "ck": (CK, "CK"),
    "ckg": (CKG, "CKG"),
    "bad": (NOT_UTF8, "caf\\xe9.nii.gz"),
    "long": ("a" * 300, "a{300}"),
    "deep": ("/".join(["b" * 200] * 25), "(b{200}/){25}"),
}
PATH_KEYS = {"ph", "ck", "ckg"}

TRAIN = "cardiac-uda train --method source_only --preset fast --label-map mscmrseg --size 64"
CK_TRAIN = f"{TRAIN} --source {{ph}}/source --out run --set iterations=4"  # CK's own command, into run/
BATCH = (  # the batch script's training on one source pair; each row adds method, preset and settings
    "python batch.py --source {ph}/source/case000_image.nii.gz --source-seg {ph}/source/case000_label.nii.gz "
    "--target {ph}/target/case000_image.nii.gz --size 64 --out o"
)
WORKER = "python -m CardiacUDALib.worker job.json"


def image(case: str = "case000", domain: str = "target") -> str:
    return f"{PH}/{domain}/{case}_image.nii.gz"


def label(case: str = "case000", domain: str = "target") -> str:
    return f"{PH}/{domain}/{case}_label.nii.gz"


# ---- what a row ran and saw ----------------------------------------------------------------------


@dataclass
class Outcome:
    codes: list[int | None]  # one per process (None: killed at the timeout)
    stdout: str
    stderr: str
    folder: Path
    worker: bool
    touched: list[str] = field(default_factory=list)  # input files changed or deleted
    written: list[str] = field(default_factory=list)  # files that are new after the row

    @property
    def code(self) -> int | None:
        return self.codes[0]

    @property
    def events(self) -> list[dict]:
        events = []
        for line in self.stdout.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append(event)
        return events

    @property
    def message(self) -> str:
        if self.worker:
            errors = [event["message"] for event in self.events if event["event"] == "error"]
            if errors:
                return errors[-1]
            results = [event for event in self.events if event["event"] == "result"]
            if results:
                return "result " + json.dumps({k: v for k, v in results[-1].items() if k != "event"})
        lines = [line.strip() for line in re.split(r"[\r\n]", self.stderr) if line.strip()]
        return lines[-1] if lines else ""

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stdout or "Traceback" in self.stderr


Expectation = Callable[[Outcome], list[str]]  # the ways an outcome misses what the issue asks; [] if none


def _worker_ending(outcome: Outcome, failed: bool) -> list[str]:
    kinds = [event["event"] for event in outcome.events]
    if not kinds or kinds[-1] != "done":
        return [f"the worker's last event is not 'done' (events: {kinds})"]
    if failed and (len(kinds) < 2 or kinds[-2] != "error"):
        return [f"no 'error' event before 'done' (events: {kinds})"]
    return []


def fails(says: str | None = None, avoid: str | None = None) -> Expectation:
    """Exit code 1, nothing written; the message matches ``says`` and not ``avoid`` (regular expressions)."""

    def check(outcome: Outcome) -> list[str]:
        problems = [] if outcome.code == 1 else [f"exit code {outcome.code}, not 1"]
        if outcome.written:
            problems.append(f"wrote {len(outcome.written)} file(s): {', '.join(outcome.written[:4])}")
        if outcome.worker:
            problems += _worker_ending(outcome, failed=True)
        if says and not re.search(says, outcome.message, re.IGNORECASE):
            problems.append(f"the message does not say /{says}/")
        if avoid and re.search(avoid, outcome.message, re.IGNORECASE):
            problems.append(f"the message still says /{avoid}/")
        return problems

    return check


def succeeds(then: Expectation | None = None) -> Expectation:
    """Exit code 0 (the documented behaviour), then ``then``'s checks."""

    def check(outcome: Outcome) -> list[str]:
        problems = [] if outcome.code == 0 else [f"exit code {outcome.code}, not 0"]
        if outcome.worker:
            problems += _worker_ending(outcome, failed=False)
        return problems + (then(outcome) if then else [])

    return check


def wrote(pattern: str) -> Expectation:
    def check(outcome: Outcome) -> list[str]:
        found = [name for name in outcome.written if re.search(pattern, name)]
        return [] if found else [f"wrote no file matching /{pattern}/"]

    return check


def scores_myo_1(outcome: Outcome) -> list[str]:
    result = next((event for event in outcome.events if event["event"] == "result"), {})
    dice = result.get("summary", {}).get("structures", {}).get("MYO", {}).get("dice_mean")
    return [] if dice == 1.0 else [f"MYO Dice {dice}, not 1.0 (perfect predictions)"]


def stopped_result_names_an_existing_best(outcome: Outcome) -> list[str]:
    events = outcome.events
    problems = [] if any(e["event"] == "stopped" for e in events) else ["no 'stopped' event"]
    result = next((event for event in events if event["event"] == "result"), None)
    if result is None:
        return [*problems, "no 'result' event"]
    best = result.get("best_checkpoint")
    if best is not None and not (outcome.folder / best).is_file():
        problems.append(f"the result names best_checkpoint {best}, which does not exist")
    return problems


def quiet(outcome: Outcome) -> list[str]:
    """``| head -c1``: the reader went away; the documented behaviour is to exit quietly."""
    problems = [] if outcome.code in (0, 1, 141) else [f"exit code {outcome.code}, not 0, 1 or 141 (SIGPIPE)"]
    return problems + ([f"stderr is not empty: {outcome.message!r}"] if outcome.stderr.strip() else [])


def leaves_alone(outcome: Outcome) -> list[str]:
    """``models clear`` in a folder of other files: exit 0 (nothing of the cache's to delete) or 1."""
    return [] if outcome.code in (0, 1) else [f"exit code {outcome.code}, not 0 or 1"]


def one_trains_one_is_refused(outcome: Outcome) -> list[str]:
    problems = [] if sorted(outcome.codes) == [0, 1] else [f"exit codes {outcome.codes}, not one 0 and one 1"]
    if not re.search(r"lock|another process|process [0-9]+|pid", outcome.message, re.IGNORECASE):
        problems.append("the refusal does not name the lock or the other process")
    for name in ("best.pt", "last.pt"):
        if not (outcome.folder / "run" / "checkpoints" / name).is_file():
            problems.append(f"run/checkpoints/{name} is missing")
    return problems


# ---- how a row's inputs are made (functions of the row's folder and --work) ------------------------

Setup = Callable[[Path, Path], None]


def nothing(folder: Path, work: Path) -> None:
    pass


def steps(*setups: Setup) -> Setup:
    def setup(folder: Path, work: Path) -> None:
        for step in setups:
            step(folder, work)

    return setup


def _destination(folder: Path, name: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def copy(name: str, source: str) -> Setup:
    """``folder/name``: a copy of ``work/source``."""
    return lambda folder, work: shutil.copyfile(work / source, _destination(folder, name))


def copy_run(name: str = "run") -> Setup:
    """A copy of CK's whole run folder (4 steps done): the run a row resumes."""
    return lambda folder, work: shutil.copytree(work / "ck", folder / name)


def text(name: str, contents: str) -> Setup:
    return lambda folder, work: _destination(folder, name).write_text(contents)


def _write(array: np.ndarray, like: sitk.Image, path: Path) -> None:
    written = sitk.GetImageFromArray(array)
    written.CopyInformation(like)
    sitk.WriteImage(written, str(path))


def int16_image(name: str, source: str = image()) -> Setup:
    """The phantom image as int16 (0-1000), as scanners write it."""

    def setup(folder: Path, work: Path) -> None:
        scaled = sitk.RescaleIntensity(sitk.ReadImage(str(work / source)), 0, 1000)
        sitk.WriteImage(sitk.Cast(scaled, sitk.sitkInt16), str(_destination(folder, name)))

    return setup


def float_image(name: str, source: str = image()) -> Setup:
    """The float32 phantom image written in ``name``'s format (.mha, .nii...)."""
    return lambda folder, work: sitk.WriteImage(
        sitk.ReadImage(str(work / source)), str(_destination(folder, name))
    )


def cut(name: str, fraction: float = 0.6) -> Setup:
    """Cut ``folder/name`` to 60 % of its bytes: a copy or download that stopped."""

    def setup(folder: Path, work: Path) -> None:
        contents = (folder / name).read_bytes()
        (folder / name).write_bytes(contents[: int(len(contents) * fraction)])

    return setup


def slice_2d(name: str, source: str = image()) -> Setup:
    return lambda folder, work: sitk.WriteImage(
        sitk.ReadImage(str(work / source))[:, :, 0], str(_destination(folder, name))
    )


def with_nan(name: str, source: str) -> Setup:
    """A float32 copy of a label map with one NaN voxel (a label file, or a prediction)."""

    def setup(folder: Path, work: Path) -> None:
        labels = sitk.ReadImage(str(work / source))
        values = sitk.GetArrayFromImage(labels).astype(np.float32)
        values[0, 0, 0] = np.nan
        _write(values, labels, _destination(folder, name))

    return setup


def job(build: Callable[[Path, Path], object], bom: bool = False, name: str = "job.json") -> Setup:
    """A worker job file from ``build(folder, work)``: a dict (dumped as JSON), or the file's text."""

    def setup(folder: Path, work: Path) -> None:
        contents = build(folder, work)
        data = contents if isinstance(contents, str) else json.dumps(contents, indent=1)
        (folder / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))

    return setup


def train_job(folder: Path, work: Path, **changes: object) -> dict:
    source = [
        {"image": str(work / image(c, "source")), "label": str(work / label(c, "source"))} for c in CASES
    ]
    return {
        "task": "train",
        "method": "source_only",
        "out_dir": str(folder / "run"),
        "source": source,
        "label_map": "mscmrseg",
        "preprocess": {"size": 64},
        "preset": "fast",
        "overrides": {"iterations": 4},
        **changes,
    }


def segment_job(folder: Path, work: Path, images: list[str], out: str = "o", **case: str) -> dict:
    cases = [{"image": str(folder / path), **case} for path in images]
    return {"task": "segment", "checkpoint": str(work / CK), "cases": cases, "out_dir": str(folder / out)}


def cache_file(folder: Path, work: Path) -> None:
    (folder / "cache").write_text("a file where the model cache should be\n")


def read_only_cache(folder: Path, work: Path) -> None:
    """A cache folder holding a file the cache wrote (listed in its index), then made read-only: chattr +i,
    which binds root too (chmod does not), or chmod 555 where chattr is not available."""
    cache = folder / "cache"
    cache.mkdir()
    (cache / "old-model.pt").write_bytes(b"a model the cache downloaded earlier")
    (cache / ".cardiac-uda-cache.json").write_text(json.dumps(["old-model.pt"]))
    if subprocess.run(["chattr", "+i", str(cache)], capture_output=True).returncode != 0:
        cache.chmod(0o555)


def writable_again(folder: Path) -> None:
    if (folder / "cache").is_dir():
        subprocess.run(["chattr", "-i", str(folder / "cache")], capture_output=True)
        (folder / "cache").chmod(0o755)


def manifest(**disagreeing: object) -> Setup:
    """A manifest with one model, CK (copied into the row's cache as ck.pt), whose entry says what CK holds
    except for ``disagreeing`` (method, label_map)."""

    def setup(folder: Path, work: Path) -> None:
        (folder / "cache").mkdir()
        shutil.copyfile(work / CK, folder / "cache" / "ck.pt")
        holds = checkpoint_contents(work / CK)
        contents = (work / CK).read_bytes()
        entry = {
            "id": "ck-model",
            "title": "CK, listed in a manifest",
            "method": holds["method"],
            "source_modality": "phantom bSSFP",
            "target_modality": "phantom LGE",
            "label_map": holds["label_map"],
            "preprocessing": holds["preprocess"],
            "file_name": "ck.pt",
            "size_bytes": len(contents),
            "sha256": hashlib.sha256(contents).hexdigest(),
            "urls": [],
            "licence": "test",
            "training_data": "the phantom",
            "measured": {},
            **disagreeing,
        }
        (folder / "m.json").write_text(json.dumps({"version": 1, "models": [entry]}, indent=1))

    return setup


def checkpoint_contents(path: Path) -> dict:
    """What a checkpoint holds (method, label map, preprocessing), read by the library in a child."""
    code = (
        "import json, sys; from CardiacUDALib.checkpoint import load_checkpoint; c = load_checkpoint(sys.argv[1]); "
        "print(json.dumps({'method': c.method, 'label_map': c.label_map, 'preprocess': c.preprocess}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


# ---- the rows ------------------------------------------------------------------------------------


@dataclass
class Row:
    item: str  # the item
    name: str  # what is tried: also the row's folder
    command: str  # run in the row's folder; {ph} {ck} {ckg} {bad} {long} {deep} are filled in
    setup: Setup = nothing
    expect: Expectation = field(default_factory=fails)
    env: dict[str, str] = field(default_factory=dict)  # values are paths in the row's folder
    how: str = "once"  # once, shell (a pipeline), stop (STOP after a step), twice (at once), closed_pipe
    teardown: Callable[[Path], None] = lambda folder: None
    timeout_s: int = TIMEOUT_S


BAD_CACHE = ("cache is a file", cache_file), ("cache is read-only", read_only_cache)
BATCH_MISTAKES = (  # (the mistake, the batch script's other arguments): a few steps if training started
    ("--set width=0", "--method source_only --preset fast --set iterations=2"),
    ("--set iterations=true", "--method source_only --preset fast"),  # no --iterations: it would win
    ("--set colour=1", "--method source_only --preset fast --set iterations=2"),
    ("--device tpu", "--method source_only --preset fast --set iterations=2"),
    ("--preset turbo", "--method source_only --set iterations=2"),
    ("--method nomethod", "--preset fast --set iterations=2"),
)
SEEDS = (("-1", "-1"), ("20 digits", "12345678901234567890"))
SIZES = ("--size 100000", "--set batch_size=100000", "--set width=100000000", "--set depth=20")
RESUMED_WITH = (  # (the other setting, CK's command with it, a difference the refusal must name)
    ("--set width=16", f"{CK_TRAIN} --set width=16", "width"),
    ("--set norm=instance", f"{CK_TRAIN} --set norm=instance", "norm"),
    ("--size 96", CK_TRAIN.replace("--size 64", "--size 96"), "size"),
    (
        "--preset paper",
        CK_TRAIN.replace("--preset fast", "--preset paper"),
        r"preset|norm 'batch' \(asked: 'instance'\)",
    ),
)

ROWS: list[Row] = [
    # 1. outputs overwrite inputs
    Row("1", "segment: --out holds the inputs", "cardiac-uda segment --checkpoint {ck} --images d --out d",
        steps(copy("d/a.nii.gz", image("case000")), copy("d/a_seg.nii.gz", image("case001")))),
    Row("1", "translate: --out holds the inputs", "cardiac-uda translate --checkpoint {ckg} --images d --out d",
        steps(copy("d/b.nii.gz", image("case000")), copy("d/b_translated.nii.gz", image("case001")))),
    Row("1", "compare: --out holds the inputs",
        "cardiac-uda compare --checkpoint {ck} --checkpoint {ck} --target d --out d",
        steps(copy("d/a.nii.gz", image("case000")), copy("d/a_reliability.nii.gz", image("case001")))),
    Row("1", "worker segment: out_dir holds the inputs", WORKER,
        steps(copy("d/a.nii.gz", image("case000")), copy("d/a_seg.nii.gz", image("case001")),
              job(lambda f, w: segment_job(f, w, ["d/a.nii.gz", "d/a_seg.nii.gz"], out="d")))),
    # 2. truncated NIfTI
    Row("2", "int16 .nii.gz cut to 60 %", "cardiac-uda segment --checkpoint {ck} --images cut.nii.gz --out o",
        steps(int16_image("cut.nii.gz"), cut("cut.nii.gz"))),
    Row("2", "int16 .nii cut to 60 %", "cardiac-uda segment --checkpoint {ck} --images cut.nii --out o",
        steps(int16_image("cut.nii"), cut("cut.nii"))),
    Row("2", "train on a label .nii.gz cut to 60 %",
        f"{TRAIN} --source {{ph}}/source/case000_image.nii.gz=cut_label.nii.gz --out run --set iterations=2",
        steps(copy("cut_label.nii.gz", label("case000", "source")), cut("cut_label.nii.gz"))),
    Row("2", "float .nii.gz cut to 60 %: segment", "cardiac-uda segment --checkpoint {ck} --images cut.nii.gz --out o",
        steps(copy("cut.nii.gz", image()), cut("cut.nii.gz"))),
    Row("2", "float .nii.gz cut to 60 %: batch.py",
        "python batch.py --weights {ck} --method source_only --target cut.nii.gz --out o",
        steps(copy("cut.nii.gz", image()), cut("cut.nii.gz"))),
    Row("2", "float .nii.gz cut to 60 %: worker", WORKER,
        steps(copy("cut.nii.gz", image()), cut("cut.nii.gz"), job(lambda f, w: segment_job(f, w, ["cut.nii.gz"])))),
    # 3. the worker's evaluate pairs by name
    Row("3", "worker evaluate: predictions in the other order", WORKER,
        steps(copy("p/case000_seg.nii.gz", label("case000")), copy("p/case001_seg.nii.gz", label("case001")),
              job(lambda f, w: {
                  "task": "evaluate",
                  "predictions": [str(f / "p/case001_seg.nii.gz"), str(f / "p/case000_seg.nii.gz")],
                  "references": [{"name": c, "image": str(w / image(c)), "label": str(w / label(c))}
                                 for c in CASES[:2]],
                  "label_map": "mscmrseg", "out_dir": str(f / "o")})),
        succeeds(scores_myo_1)),
    # 4. NaN in labels and predictions
    Row("4", "train on a float label with a NaN",
        f"{TRAIN} --source {{ph}}/source/case000_image.nii.gz=nan_label.nii.gz --out run --set iterations=2",
        with_nan("nan_label.nii.gz", label("case000", "source"))),
    Row("4", "evaluate a prediction with a NaN",
        "cardiac-uda evaluate --predictions p --references {ph}/target --label-map mscmrseg --out o",
        steps(with_nan("p/case000_seg.nii.gz", label("case000")), copy("p/case001_seg.nii.gz", label("case001")),
              copy("p/case002_seg.nii.gz", label("case002")))),
    # 5. file names that are not UTF-8
    Row("5", "segment a folder holding caf\\xe9.nii.gz", "cardiac-uda segment --checkpoint {ck} --images d --out o",
        copy(f"d/{NOT_UTF8}", image())),
    Row("5", "batch.py --target caf\\xe9.nii.gz",
        "python batch.py --weights {ck} --method source_only --target d/{bad} --out o", copy(f"d/{NOT_UTF8}", image())),
    Row("5", "worker: case named caf\\xe9", WORKER,
        steps(copy("d/a.nii.gz", image()),
              job(lambda f, w: segment_job(f, w, ["d/a.nii.gz"], name=os.fsdecode(b"caf\xe9"))))),
    Row("5", "worker: image caf\\xe9.nii.gz", WORKER,
        steps(copy(f"d/{NOT_UTF8}", image()), job(lambda f, w: segment_job(f, w, [f"d/{NOT_UTF8}"])))),
    # 6. an unusable model cache
    *(Row("6", f"models list, {what}", "cardiac-uda models list", setup, succeeds(), {"CARDIAC_UDA_CACHE": "cache"},
          teardown=writable_again) for what, setup in BAD_CACHE),
    *(Row("6", f"models clear, {what}", "cardiac-uda models clear", setup, fails(), {"CARDIAC_UDA_CACHE": "cache"},
          teardown=writable_again) for what, setup in BAD_CACHE),
    *(Row("6", f"segment with the bundled model, {what}",
          "cardiac-uda segment --model mscmrseg-c0-lge-gin-st --images {ph}/target/case000_image.nii.gz --out o",
          setup, succeeds(wrote(r"^o/.*_seg\.nii\.gz$")), {"CARDIAC_UDA_CACHE": "cache"}, teardown=writable_again)
      for what, setup in BAD_CACHE),
    # 7. half-written results on error
    *(Row("7", f"batch.py {mistake}", f"{BATCH} {others} {mistake}", timeout_s=120)
      for mistake, others in BATCH_MISTAKES),
    Row("7", "segment a folder whose third volume is 2D", "cardiac-uda segment --checkpoint {ck} --images d --out o",
        steps(copy("d/a.nii.gz", image("case000")), copy("d/b.nii.gz", image("case001")), slice_2d("d/c.nii.gz"))),
    Row("7", "compare a folder whose third volume is 2D",
        "cardiac-uda compare --checkpoint {ck} --checkpoint {ck} --target d --out o",
        steps(copy("d/a.nii.gz", image("case000")), copy("d/b.nii.gz", image("case001")), slice_2d("d/c.nii.gz"))),
    Row("7", "train --segment-target with a 2D target",
        f"{TRAIN} --source {{ph}}/source --target flat.nii.gz --segment-target --out run --set iterations=2",
        slice_2d("flat.nii.gz")),
    # 8. settings silently ignored
    *(Row("8", f"resume CK's run with {change}", command, copy_run(), fails(says=named))
      for change, command, named in RESUMED_WITH),
    Row("8", "adabn --init CK --size 96",
        "cardiac-uda train --method adabn --init {ck} --source {ph}/source --target {ph}/target --label-map mscmrseg "
        "--out run --preset fast --set iterations=0 --size 96", expect=fails(says="size|96")),
    # 9. tracebacks for ordinary faults (disk full: not here, see the module's docstring)
    Row("9", "two train into one --out at once", f"{CK_TRAIN}", how="twice", expect=one_trains_one_is_refused),
    *(Row("9", f"train --seed {what}", f"{CK_TRAIN} --seed {seed}") for what, seed in SEEDS),
    *(Row("9", f"worker seed {what}", WORKER, job(lambda f, w, s=seed: train_job(f, w, seed=int(s))))
      for what, seed in SEEDS),
    *(Row("9", f"phantom --seed {what}", f"cardiac-uda phantom --out p --subjects 1 --size 64 --seed {seed}")
      for what, seed in SEEDS),
    Row("9", "phantom --seed 2^32-1 (accepted)", f"cardiac-uda phantom --out p --subjects 1 --size 64 --seed {MAX_SEED}",
        expect=succeeds()),
    Row("9", "train --seed 2^32-1 (accepted)", f"{CK_TRAIN.replace('iterations=4', 'iterations=1')} --seed {MAX_SEED}",
        expect=succeeds()),
    Row("9", "train --set norm=bogus", f"{CK_TRAIN} --set norm=bogus"),
    *(Row("9", f"train {size}", f"{CK_TRAIN} {size}") for size in SIZES),
    Row("9", "train --out name over 255 bytes", f"{TRAIN} --source {{ph}}/source --out {{long}} --set iterations=2"),
    Row("9", "train --out path over PATH_MAX", f"{TRAIN} --source {{ph}}/source --out {{deep}} --set iterations=2"),
    Row("9", "models import <a directory>", "cardiac-uda models import d", text("d/notes.txt", "a folder\n"),
        env={"CARDIAC_UDA_CACHE": "cache"}),
    Row("9", "phantom --out <a file>", "cardiac-uda phantom --out f.txt --subjects 1 --size 64",
        text("f.txt", "a file, not a folder\n")),
    Row("9", "worker: a job of 100 000 nested [", WORKER, job(lambda f, w: "[" * 100_000)),
    Row("9", "methods | head -c1", "cardiac-uda methods | head -c1", how="shell", expect=quiet),
    Row("9", "methods into a pipe already closed", "cardiac-uda methods", how="closed_pipe", expect=quiet),
    # 10. models clear in a run's checkpoints folder
    Row("10", "models clear, cache = a run's checkpoints/", "cardiac-uda models clear", copy_run(), leaves_alone,
        {"CARDIAC_UDA_CACHE": "run/checkpoints"}),
    # 11. smaller
    Row("11", "segment --out ''", "cardiac-uda segment --checkpoint {ck} --images {ph}/target/case000_image.nii.gz --out ''"),
    Row("11", "worker: STOP, then the result's best checkpoint", WORKER,
        job(lambda f, w: train_job(f, w, overrides={"iterations": 1000, "batch_size": 2})), how="stop",
        expect=succeeds(stopped_result_names_an_existing_best)),
    Row("11", "evaluate against references without labels",
        "cardiac-uda evaluate --predictions p --references refs --label-map mscmrseg --out o",
        steps(copy("p/case000_seg.nii.gz", label()), copy("refs/case000_image.nii.gz", image())),
        fails(says="label", avoid="no reference case for prediction")),
    Row("11", "resume CK's run with another label map",
        CK_TRAIN.replace("mscmrseg", "200:MYO,500:LV,600:RV,700:AO"), copy_run(),
        fails(says="label", avoid="weights do not fit")),
    Row("11", "segment an .mha cut to 60 %", "cardiac-uda segment --checkpoint {ck} --images cut.mha --out o",
        steps(float_image("cut.mha"), cut("cut.mha")), fails(says="cut short|truncated|damaged", avoid="No such file")),
    Row("11", "worker: job file with a UTF-8 BOM", WORKER,
        steps(copy("p/case000_seg.nii.gz", label()),
              job(lambda f, w: {"task": "evaluate", "predictions": [str(f / "p/case000_seg.nii.gz")],
                                "references": [{"name": "case000", "image": str(w / image()), "label": str(w / label())}],
                                "label_map": "mscmrseg", "out_dir": str(f / "o")}, bom=True)),
        succeeds(scores_myo_1)),
    Row("11", "worker: a key twice in the job", WORKER,
        job(lambda f, w: json.dumps(segment_job(f, w, [str(w / image())]))[:-1] + f', "out_dir": "{f / "o2"}"}}'),
        expect=fails(says="out_dir")),
    Row("11", "manifest entry: method not its file's",
        "cardiac-uda segment --model ck-model --manifest m.json --images {ph}/target/case000_image.nii.gz --out o",
        manifest(method="self_training"), fails(says="method"), {"CARDIAC_UDA_CACHE": "cache"}),
    Row("11", "manifest entry: label map not its file's",
        "cardiac-uda segment --model ck-model --manifest m.json --images {ph}/target/case000_image.nii.gz --out o",
        manifest(label_map={"name": "custom", "values": [205, 500, 600], "class_names": ["MYO", "LV", "RV"]}),
        fails(says="label"), {"CARDIAC_UDA_CACHE": "cache"}),
]  # fmt: skip


# ---- the runner ----------------------------------------------------------------------------------


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _start(argv: list[str], folder: Path, env: dict[str, str], **streams) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_limit_memory,
        **streams,
    )  # fmt: skip


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the child's own session: it and what it started
    except ProcessLookupError:
        pass


def _wait(process: subprocess.Popen, timeout: float) -> int | None:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        process.wait()
        return None


def _read(stream) -> str:
    stream.seek(0)
    return stream.read().decode("utf-8", "backslashreplace")


def run_row(
    argv: list[str], how: str, folder: Path, env: dict[str, str], timeout: float
) -> tuple[list[int | None], str, str]:
    """Run the row's command as ``how`` says; (exit codes, stdout, stderr)."""
    if how == "closed_pipe":  # the reader is gone before the first byte: `| head -c1` at its quickest
        reader, writer = os.pipe()
        os.close(reader)
        with tempfile.TemporaryFile() as err:
            process = _start(argv, folder, env, stdout=writer, stderr=err)
            os.close(writer)
            return [_wait(process, timeout)], "", _read(err)
    if how == "twice":  # two processes into one run folder at the same time
        files = [tempfile.TemporaryFile() for _ in range(4)]
        processes = [_start(argv, folder, env, stdout=files[i], stderr=files[i + 1]) for i in (0, 2)]
        codes = [_wait(process, timeout) for process in processes]
        order = (0, 2) if codes[1] == 1 else (2, 0)  # the refused one last
        outputs = ["\n".join(_read(files[i + stream]) for i in order) for stream in (0, 1)]
        for stream in files:
            stream.close()
        return codes, *outputs
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if how != "stop":
            return (
                [_wait(_start(argv, folder, env, stdout=out, stderr=err), timeout)],
                _read(out),
                _read(err),
            )
        # STOP in the job's out_dir once training has made its first step, then wait for the end
        process = _start(argv, folder, env, stdout=subprocess.PIPE, stderr=err)
        timer = threading.Timer(timeout, _kill, [process])
        timer.start()
        lines = []
        for line in process.stdout:
            lines.append(line.decode("utf-8", "backslashreplace"))
            if '"event": "progress"' in lines[-1] and not (folder / "run" / "STOP").exists():
                (folder / "run" / "STOP").touch()
        code = process.wait()
        timer.cancel()
        return [code], "".join(lines), _read(err)


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (by folder descriptors: paths over PATH_MAX are walked too)."""
    digests = {}
    for root in roots:
        for top, _folders, names, top_fd in os.fwalk(root):
            for name in names:
                path = os.path.join(top, name)
                try:
                    descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=top_fd)
                except OSError as error:
                    digests[path] = f"unreadable: {error.strerror}"
                    continue
                with open(descriptor, "rb") as stream:
                    digests[path] = hashlib.file_digest(stream, "sha256").hexdigest()
    return digests


def fill(template: str, work: Path, shown: bool = False) -> str:
    values = {
        key: shown_as if shown else (str(work / value) if key in PATH_KEYS else value)
        for key, (value, shown_as) in PLACEHOLDERS.items()
    }
    return template.format(**values)


def argv_of(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[:2] == ["python", "batch.py"]:
        return [sys.executable, str(BATCH_SCRIPT), *argv[2:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


def run(row: Row, work: Path, log: Path) -> Outcome:
    folder = work / "rows" / re.sub(r"[^A-Za-z0-9]+", "_", row.name).strip("_")
    folder.mkdir(parents=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["CARDIAC_UDA_CACHE"] = str(work / "default_cache")
    env.update({key: str(folder / value) for key, value in row.env.items()})
    try:
        row.setup(folder, work)
        inputs = [work / PH, work / "ck", work / "ckg", folder]
        before = snapshot(*inputs)
        command = fill(row.command, work)
        argv = ["bash", "-o", "pipefail", "-c", command] if row.how == "shell" else argv_of(command)
        codes, stdout, stderr = run_row(argv, row.how, folder, env, row.timeout_s)
        after = snapshot(*inputs)
    finally:
        row.teardown(folder)
    outcome = Outcome(codes, stdout, stderr, folder, worker="CardiacUDALib.worker" in row.command)
    outcome.touched = [os.path.relpath(p, work) for p, digest in before.items() if after.get(p) != digest]
    outcome.written = [os.path.relpath(p, folder) for p in after if p not in before]
    log.write_text(
        f"$ {shown_command(row)}\nexit codes: {codes}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n"
    )
    return outcome


def shown_command(row: Row) -> str:
    env = " ".join(f"{key}={value}" for key, value in row.env.items())
    command = fill(row.command, Path(), shown=True)
    return f"{env} {command}".strip()


def problems_of(row: Row, outcome: Outcome) -> list[str]:
    problems = []
    if None in outcome.codes:
        problems.append(f"killed after {row.timeout_s} s")
    if outcome.traceback:
        problems.append("a traceback")
    if outcome.touched:
        problems.append(f"input(s) changed or deleted: {', '.join(outcome.touched[:4])}")
    return problems + row.expect(outcome)


# ---- the fixtures and the table ------------------------------------------------------------------


def prepare(work: Path) -> None:
    """The phantom, CK and CKG (made afresh), and an empty rows folder."""
    if (work / "rows").exists():
        subprocess.run(["chattr", "-R", "-i", str(work / "rows")], capture_output=True)
    for name in (PH, "ck", "ckg", "rows", "logs", "default_cache"):
        shutil.rmtree(work / name, ignore_errors=True)
    cli = str(Path(sys.executable).with_name("cardiac-uda"))
    train = [
        cli,
        "train",
        "--preset",
        "fast",
        "--label-map",
        "mscmrseg",
        "--size",
        "64",
        "--source",
        "ph/source",
    ]
    for command in (
        [cli, "phantom", "--out", "ph", "--subjects", "3", "--size", "64"],
        [*train, "--method", "source_only", "--out", "ck", "--set", "iterations=4"],
        [*train, "--method", "cut_seg", "--target", "ph/target", "--out", "ckg", "--set", "iterations=2"],
    ):
        print("$ cardiac-uda", shlex.join(command[1:]), flush=True)
        subprocess.run(command, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (work / "rows").mkdir()
    (work / "logs").mkdir()


def cell(value: str, limit: int = 220) -> str:
    value = value if len(value) <= limit else value[: limit - 1] + "…"
    return value.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def table(results: list[tuple[Row, Outcome, list[str]]]) -> str:
    lines = [
        "| # | item | row | command | exit | message (last stderr line / worker error) | traceback | input touched "
        "| as expected | what is off |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, (row, outcome, problems) in enumerate(results, 1):
        codes = "/".join("timeout" if code is None else str(code) for code in outcome.codes)
        lines.append(
            f"| {number} | {row.item} | {cell(row.name)} | `{cell(shown_command(row), 400)}` | {codes} "
            f"| {cell(outcome.message)} | {'yes' if outcome.traceback else 'no'} "
            f"| {cell(', '.join(outcome.touched)) or 'no'} | {'no' if problems else 'yes'} | {cell('; '.join(problems))} |"
        )
    lines.append(
        "| - | 9 | disk full while saving | - | not run | needs a small file system (a loop mount or tmpfs of a few "
        "MB); Testing/test_bad_inputs.py tries it with a file size limit | - | - | skipped | |"
    )
    expected = sum(not problems for _, _, problems in results)
    lines += [
        "",
        f"{expected} of {len(results)} rows as expected. Each row ran in its own folder (CK: ck/checkpoints/best.pt, "
        "CKG: a 2-step cut_seg checkpoint), with its address space limited to "
        f"{MEMORY_LIMIT // 2**30} GiB and a time limit ({TIMEOUT_S} s; batch.py rows 120 s).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work", type=Path, required=True, help="scratch folder (its ph, ck, ckg, rows are remade)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the markdown table")
    parser.add_argument(
        "--only", default="", help="run only the rows whose name matches this regular expression"
    )
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    prepare(work)
    results = []
    for row in (row for row in ROWS if re.search(args.only, row.name)):
        started = time.monotonic()
        name = re.sub(r"[^A-Za-z0-9]+", "_", row.name).strip("_")
        outcome = run(row, work, work / "logs" / f"{name}.txt")
        problems = problems_of(row, outcome)
        results.append((row, outcome, problems))
        verdict = "as expected" if not problems else "NOT as expected: " + "; ".join(problems)
        print(f"[{time.monotonic() - started:5.1f} s] {row.name}: {verdict}", flush=True)
    markdown = table(results)
    args.out.write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
