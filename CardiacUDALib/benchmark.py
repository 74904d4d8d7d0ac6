"""Train, test and report on a fixed split: the real-data benchmark (DESIGN.md §4), also used by the demo.

A run trains each method with a ``train`` job (the same path as the worker and the Slicer module),
segments every test volume with the checkpoint chosen on the labelled validation set, scores the
segmentations per volume in 3D, and writes a report with overlays. Test labels are read only after
the checkpoint is chosen, and target training images never carry their labels into the job.

The MS-CMRSeg protocol follows VarDA / UDA-VAE++ so that numbers compare with their papers: source =
all bSSFP (C0) volumes with labels; target training images = all LGE volumes, **without** labels;
model selection on LGE patients 1-5; report on LGE patients 6-40. No resampling (as released).
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from CardiacUDALib.atomic import write_json_atomic, write_text_atomic
from CardiacUDALib.cases import VolumeCase, find_cases
from CardiacUDALib.device import resolve_device
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.evaluation import evaluate_cases
from CardiacUDALib.events import Event, EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.inference import TrainedModel
from CardiacUDALib.io import LABEL_MAPS, LabelMap, load_case, read_label
from CardiacUDALib.jobs import run_job
from CardiacUDALib.methods import get_method
from CardiacUDALib.metrics import EvaluationTable, _nan_to_none
from CardiacUDALib.preprocess import PreprocessConfig
from CardiacUDALib.report import (
    AnchorRow,
    TranslationExample,
    comparison_markdown,
    overlay_png,
    plot_training_curve,
    translation_grid_png,
)
from CardiacUDALib.runfolder import RunFolder
from CardiacUDALib.training import TrainRequest

DATA_ENVIRONMENT_VARIABLE = "CARDIACUDA_DATA"
SPLITS = ("cross-domain", "in-domain")
OVERLAY_CASES = 3
MSCMRSEG_VALIDATION_PATIENTS = range(1, 6)
MSCMRSEG_IN_DOMAIN_TRAIN_PATIENTS = range(6, 26)
MSCMRSEG_IN_DOMAIN_TEST_PATIENTS = range(26, 36)
MSCMRSEG_ANCHORS = (
    AnchorRow("no adaptation", {"MYO": 14.5, "LV": 34.5, "RV": 31.1}, "UDA-VAE++ 2022"),
    AnchorRow("VarDA", {"MYO": 68.4, "LV": 84.4, "RV": 72.6}, "UDA-VAE++ 2022"),
    AnchorRow("SIFA", {"MYO": 67.7, "LV": 83.3, "RV": 79.0}, "UDA-VAE++ 2022"),
    AnchorRow("UDA-VAE++", {"MYO": 70.8, "LV": 88.6, "RV": 75.8}, "UDA-VAE++ 2022"),
)
_MSCMRSEG_CASE_NAME = re.compile(r"^patient(\d+)_(C0|LGE)$")


class RunStopped(CardiacUDAError):
    """Training was asked to stop; ``last.pt`` is saved and the same command resumes it."""


# ---- splits --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSplit:
    """Which volumes play which role; ``target`` cases carry no label (they are training images)."""

    description: str
    source: list[VolumeCase]
    target: list[VolumeCase]
    validation: list[VolumeCase]
    test_sets: dict[str, list[VolumeCase]]

    def to_dict(self) -> dict[str, Any]:
        """The case names of every role, for ``summary.json``."""
        return {
            "description": self.description,
            "source": [case.name for case in self.source],
            "target": [case.name for case in self.target],
            "validation": [case.name for case in self.validation],
            "test": {name: [case.name for case in cases] for name, cases in self.test_sets.items()},
        }


def without_labels(cases: Sequence[VolumeCase]) -> list[VolumeCase]:
    """Target training images: the label path is dropped so that it cannot reach a job."""
    return [VolumeCase(case.name, case.image) for case in cases]


def _mscmrseg_patients(data_dir: Path, sequence: str) -> dict[int, VolumeCase]:
    folder = data_dir / sequence
    expected = f"{folder}/patient<N>_{sequence}.nii.gz with patient<N>_{sequence}_manual.nii.gz"
    if not folder.is_dir():
        raise InputDataError(
            f"{data_dir} does not have the MS-CMRSeg layout: the folder {folder} is missing; expected {expected}"
        )
    patients = {}
    for case in find_cases(folder, require_labels=True):
        match = _MSCMRSEG_CASE_NAME.match(case.name)
        if match is None or match.group(2) != sequence:
            raise InputDataError(f"unexpected file {case.image} in {folder}: expected only {expected}")
        patients[int(match.group(1))] = case
    return patients


def _select(patients: Mapping[int, VolumeCase], numbers: Sequence[int] | None, what: str) -> list[VolumeCase]:
    """The cases of ``numbers`` present (all when None), in patient order; an empty role is an error."""
    chosen = [patients[n] for n in sorted(patients) if numbers is None or n in numbers]
    if not chosen:
        raise InputDataError(f"no volume for the {what} (patients {numbers}) in the data folder")
    return chosen


def mscmrseg_split(data_dir: str | Path, split: str = "cross-domain") -> DataSplit:
    """The MS-CMRSeg 2019 C0 -> LGE split of DESIGN.md §4, or the in-domain control.

    ``in-domain`` trains on C0 patients 6-25 only (model selection on C0 1-5), tests on C0 26-35 and
    on LGE 6-40: the same model on both shows the domain gap under identical training.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputDataError(
            f"data folder {root} does not exist; give the MS-CMRSeg folder (with C0/ and LGE/) with --data "
            f"or {DATA_ENVIRONMENT_VARIABLE}"
        )
    c0, lge = _mscmrseg_patients(root, "C0"), _mscmrseg_patients(root, "LGE")
    lge_test = _select(lge, [n for n in lge if n not in MSCMRSEG_VALIDATION_PATIENTS], "LGE test set")
    if split == "cross-domain":
        return DataSplit(
            "source: all C0 with labels; target training images: all LGE without labels; "
            "validation (checkpoint selection): LGE patients 1-5; test: LGE patients 6-40",
            source=_select(c0, None, "C0 source set"),
            target=without_labels(_select(lge, None, "LGE target set")),
            validation=_select(lge, MSCMRSEG_VALIDATION_PATIENTS, "LGE validation set"),
            test_sets={"lge": lge_test},
        )
    if split == "in-domain":
        return DataSplit(
            "source: C0 patients 6-25 with labels; no target images; validation (checkpoint selection): "
            "C0 patients 1-5; test: C0 patients 26-35 (in domain) and LGE patients 6-40 (cross domain)",
            source=_select(c0, MSCMRSEG_IN_DOMAIN_TRAIN_PATIENTS, "C0 training set"),
            target=[],
            validation=_select(c0, MSCMRSEG_VALIDATION_PATIENTS, "C0 validation set"),
            test_sets={"c0": _select(c0, MSCMRSEG_IN_DOMAIN_TEST_PATIENTS, "C0 test set"), "lge": lge_test},
        )
    raise InputDataError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")


@dataclass(frozen=True)
class Dataset:
    """A real data set the benchmark knows: its split, label map and anchors (published numbers)."""

    split: Callable[[Path, str], DataSplit]
    label_map: LabelMap
    anchors: tuple[AnchorRow, ...]
    anchor_test_set: str  # the test set of the published protocol, where the anchors belong
    preprocess: PreprocessConfig


DATASETS = {
    "mscmrseg": Dataset(
        mscmrseg_split,
        LABEL_MAPS["mscmrseg"],
        MSCMRSEG_ANCHORS,
        "lge",
        PreprocessConfig(size=192, intensity="percentile_zscore"),
    ),
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise CardiacUDAError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


# ---- one method on one split ---------------------------------------------------------------------


class _EventTimer:
    """Passes events on and notes when training ended and how fast the progress steps went."""

    def __init__(self, emit: EventSink) -> None:
        self.emit = emit
        self.started = time.monotonic()
        self.trained_at: float | None = None
        self.progress: list[tuple[float, int]] = []

    def __call__(self, event: Event) -> None:
        if event.get("event") == "progress" and self.trained_at is None:
            self.progress.append((time.monotonic(), int(event["step"])))
        if event.get("event") == "trained":
            self.trained_at = time.monotonic()
        self.emit(event)

    def steps_per_second(self) -> float | None:
        """Between the first and last progress event of this invocation (validation time included)."""
        if len(self.progress) < 2:
            return None
        (first_time, first_step), (last_time, last_step) = self.progress[0], self.progress[-1]
        return (last_step - first_step) / max(last_time - first_time, 1e-9)


@dataclass
class MethodRun:
    """What one method produced on a split: its checkpoint, timings and per-volume scores per test set."""

    key: str
    run_dir: Path
    train_result: dict[str, Any]
    history: dict[str, Any]
    train_wall_s: float
    steps_per_s: float | None
    inference_s_per_volume: float
    segmentations: dict[str, list[Path]] = field(default_factory=dict)
    tables: dict[str, EvaluationTable] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The method's entry of ``summary.json`` (NaN written as null)."""
        scores = {name: table.summary() for name, table in self.tables.items()}
        first = next(iter(scores.values()))
        return _nan_to_none(
            {
                "mean_dice": first["mean"]["dice"],
                "structures": first["structures"],
                "test_sets": scores,
                "wall_s": round(self.train_wall_s, 1),
                "training_steps_per_s": self.steps_per_s,
                "inference_s_per_volume": round(self.inference_s_per_volume, 3),
                "steps": self.train_result["steps"],
                "checkpoint": self.train_result["best_checkpoint"],
                "selection": self.train_result["selection"],
            }
        )


@dataclass(frozen=True)
class TrainingSettings:
    """What every method of a run shares besides the data."""

    label_map: LabelMap
    preprocess: PreprocessConfig
    preset: str = "paper"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    adabn: bool = False  # finish every training by re-estimating BatchNorm on the target images
    initial_checkpoint: Path | None = None  # start from these weights (e.g. adabn on a source_only model)


def _read_history(path: Path) -> dict[str, Any]:
    """The run's losses and validation scores; a run with no training step (AdaBN alone) has none."""
    if not path.exists():
        return {"losses": [], "validation": []}
    return json.loads(path.read_text(encoding="utf-8"))


def run_method(
    key: str,
    split: DataSplit,
    run_dir: Path,
    settings: TrainingSettings,
    emit: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> MethodRun:
    """Train ``key`` (resuming ``run_dir`` if it holds a run), segment and score every test set.

    One ``train`` job trains and then segments the test images (labels stripped) with the chosen
    checkpoint; the test labels are read only afterwards, by the evaluation.
    """
    test_cases = [case for cases in split.test_sets.values() for case in cases]
    request = TrainRequest(
        method=key,
        out_dir=run_dir,
        source=split.source,
        target=split.target,
        validation=split.validation,
        label_map=settings.label_map,
        preprocess=settings.preprocess,
        preset=settings.preset,
        overrides=dict(settings.overrides),
        device=settings.device,
        seed=settings.seed,
        adabn=settings.adabn,
        initial_checkpoint=settings.initial_checkpoint,
    )
    job = {
        "task": "train",
        **request.to_dict(),
        "segment": [{"name": c.name, "image": str(c.image)} for c in test_cases],
    }
    timer = _EventTimer(emit)
    result = run_job(job, timer, should_stop)
    if (
        result["stopped"] or timer.trained_at is None or should_stop()
    ):  # a stop may also cut segmentation short
        raise RunStopped(
            f"training of {key!r} stopped at step {result['steps']} ({result['last_checkpoint']})"
        )
    finished = time.monotonic()
    run = MethodRun(
        key=key,
        run_dir=run_dir,
        train_result=result,
        history=_read_history(RunFolder(run_dir).history),
        train_wall_s=timer.trained_at - timer.started,
        steps_per_s=timer.steps_per_second(),
        inference_s_per_volume=(finished - timer.trained_at) / max(len(test_cases), 1),
    )
    paths = iter(Path(p) for p in result["segmentations"])
    for name, cases in split.test_sets.items():
        run.segmentations[name] = [next(paths) for _ in cases]
        run.tables[name] = evaluate_cases(run.segmentations[name], cases, settings.label_map)
        run.tables[name].write_csv(run_dir / f"per_volume_{name}.csv")
        run.tables[name].write_json(run_dir / f"per_volume_{name}.json")
    return run


# ---- report parts shared by the benchmark and the demo -------------------------------------------


def spread_indices(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``count`` items (all of them when there are fewer)."""
    if count <= wanted:
        return list(range(count))
    return [index * count // wanted for index in range(wanted)]


def write_overlays(
    runs: Sequence[MethodRun], test_set: str, cases: Sequence[VolumeCase], label_map: LabelMap, out_dir: Path
) -> list[Path]:
    """Overlays of a few test volumes: image, reference and every method's segmentation side by side."""
    paths = []
    for index in spread_indices(len(cases), OVERLAY_CASES):
        case = cases[index]
        image, reference = load_case(case, label_map)
        predictions = {
            run.key: read_label(run.segmentations[test_set][index], label_map, reference=image)
            for run in runs
        }
        paths.append(
            overlay_png(
                image,
                reference,
                predictions,
                label_map,
                out_dir / f"overlay_{test_set}_{case.name}.png",
                f"{case.name}, {test_set} test volume",
            )
        )
    return paths


def write_translation_grid(
    checkpoint: Path, split: DataSplit, label_map: LabelMap, path: Path, device: str = "auto"
) -> Path | None:
    """Source / translated / target slices of a few volumes with ``checkpoint``; None if its method cannot translate.

    Sources are spread over the source set, targets over the labelled validation set (their labels only
    pick the slice shown); test volumes are not used.
    """
    model = TrainedModel.load(checkpoint, device)
    if not model.can_translate:
        return None
    examples = []
    for source_index, target_index in zip(
        spread_indices(len(split.source), OVERLAY_CASES), spread_indices(len(split.validation), OVERLAY_CASES)
    ):
        source_case, target_case = split.source[source_index], split.validation[target_index]
        source, source_label = load_case(source_case, label_map)
        target, target_label = load_case(target_case, label_map)
        examples.append(
            TranslationExample(
                source_case.name,
                source,
                source_label,
                model.translate_image(source),
                target_case.name,
                target,
                target_label,
            )
        )
    return translation_grid_png(
        examples, path, f"{model.checkpoint.method}: source, translated source, target"
    )


def results_markdown(
    runs: Sequence[MethodRun], split: DataSplit, anchors: Mapping[str, Sequence[AnchorRow]] | None = None
) -> str:
    """One Dice/ASSD table per test set, with published numbers beside the test set they belong to."""
    parts = []
    for name, cases in split.test_sets.items():
        rows = {run.key: run.tables[name].summary() for run in runs}
        parts.append(
            f"### Test set `{name}` ({len(cases)} volume(s))\n\n"
            "Per-volume 3D scores, mean ± population std over volumes; Dice in %, ASSD in mm.\n\n"
            + comparison_markdown(rows, (anchors or {}).get(name))
        )
    return "\n".join(parts)


def timing_markdown(runs: Sequence[MethodRun]) -> str:
    """Wall times and how each checkpoint was chosen: a result means little without them."""
    lines = [
        "| Method | steps | training wall s | training steps/s | inference s/volume | checkpoint |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        rate = "n/a" if run.steps_per_s is None else f"{run.steps_per_s:.2f}"
        lines.append(
            f"| {run.key} | {run.train_result['steps']} | {run.train_wall_s:.1f} | {rate} | "
            f"{run.inference_s_per_volume:.2f} | {run.train_result['selection']} |"
        )
    return "\n".join(lines) + "\n"


def figures_markdown(paths: Sequence[Path], relative_to: Path) -> str:
    return "\n".join(f"![{path.stem}]({path.relative_to(relative_to).as_posix()})" for path in paths) + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: str) -> str:
    """CPU model and cores, GPU if any, torch and Python versions: timings mean nothing without them."""
    parts = [f"{_cpu_model()}, {os.cpu_count()} logical cores"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    parts += [
        f"device used: {resolve_device(device)}",
        f"torch {torch.__version__}",
        f"Python {platform.python_version()}",
        platform.platform(),
    ]
    return "; ".join(parts)


# ---- the benchmark -------------------------------------------------------------------------------


def run_benchmark(
    data_dir: str | Path,
    method: str,
    out_dir: str | Path,
    preset: str = "paper",
    overrides: Mapping[str, Any] | None = None,
    split: str = "cross-domain",
    device: str = "auto",
    seed: int = 0,
    emit: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
    dataset: str = "mscmrseg",
    command_line: str | None = None,
    adabn: bool = False,
    initial_checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``method`` on the data set's split, test it, and write the report into ``out_dir``.

    ``out_dir`` is the run folder (checkpoints, history, segmentations) as well, so running the same
    command again resumes an interrupted training. Returns the content of ``summary.json``.
    """
    spec = get_dataset(dataset)
    method_class = get_method(method)
    if split == "in-domain" and (method_class.uses_target or adabn):
        raise CardiacUDAError(
            f"the in-domain split has no target images, so it is for source-only methods; {method!r}"
            f"{' with AdaBN' if adabn else ''} adapts to target images: use --split cross-domain"
        )
    data_split = spec.split(Path(data_dir), split)
    out = Path(out_dir)
    settings = TrainingSettings(
        spec.label_map,
        spec.preprocess,
        preset,
        dict(overrides or {}),
        device,
        seed,
        adabn,
        None if initial_checkpoint is None else Path(initial_checkpoint),
    )
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run = run_method(method, data_split, out, settings, emit, should_stop)
    curve = plot_training_curve(run.history, out / "training_curve.png", f"{method} on {dataset} ({split})")
    overlays = [
        path
        for name, cases in data_split.test_sets.items()
        for path in write_overlays([run], name, cases, spec.label_map, out / "overlays")
    ]
    translation_grid = write_translation_grid(
        run.train_result["best_checkpoint"], data_split, spec.label_map, out / "translation_grid.png", device
    )
    command = command_line or (
        f"run_benchmark({str(data_dir)!r}, {method!r}, {str(out_dir)!r}, preset={preset!r}, "
        f"overrides={dict(overrides or {})!r}, split={split!r}, device={device!r}, seed={seed})"
    )
    machine = machine_description(device)
    summary = {
        "dataset": dataset,
        "data_dir": str(data_dir),
        "method": method,
        "preset": preset,
        "overrides": dict(overrides or {}),
        "adabn": adabn,
        "initial_checkpoint": None if initial_checkpoint is None else str(initial_checkpoint),
        "seed": seed,
        "command": command,
        "machine": machine,
        "date": date,
        "split": data_split.to_dict(),
        "preprocessing": spec.preprocess.to_dict(),
        "methods": {method: run.summary()},
    }
    write_json_atomic(out / "summary.json", summary)
    anchors = {spec.anchor_test_set: spec.anchors} if split == "cross-domain" else {}
    report = (
        f"# CardiacUDA benchmark: `{method}` on {dataset} ({split})\n\n"
        f"- Command: `{command}`\n"
        f"- Date (UTC): {date}\n"
        f"- Machine: {machine}\n"
        f"- Method: `{method}`: {method_class.description} Preset `{preset}`; overrides {dict(overrides or {})}; "
        f"{'AdaBN on the target at the end; ' if adabn else ''}"
        f"{f'started from `{initial_checkpoint}`; ' if initial_checkpoint else ''}seed {seed}\n"
        f"- Data: `{data_dir}`. {data_split.description}. No resampling (as released): every volume keeps its "
        f"own spacing; slices are cropped/padded to {spec.preprocess.size} x {spec.preprocess.size}, intensities "
        f"`{spec.preprocess.intensity}` unless the method sets its own.\n"
        f"- Checkpoint: {run.train_result['selection']}. Test labels are read only after this choice.\n\n"
        "## Results\n\n"
        + results_markdown([run], data_split, anchors)
        + (
            "\nRows marked *paper* are published mean Dice (%) from the UDA-VAE++ paper (Lu et al. 2022), "
            "not re-run here; their ASSD is not comparable with ours and is left out.\n"
            if anchors
            else ""
        )
        + "\n## Timing\n\n"
        + timing_markdown([run])
        + "\nTraining wall time includes data loading and validation; training steps/s is measured between "
        "the first and the last progress event; inference s/volume includes writing the segmentation.\n\n"
        "## Training curve\n\n"
        + figures_markdown([curve], out)
        + "\n## Overlays\n\n"
        + figures_markdown(overlays, out)
        + (
            "\n## Translated images (checkpoint above; each panel its own grey window)\n\n"
            + figures_markdown([translation_grid], out)
            if translation_grid is not None
            else ""
        )
    )
    write_text_atomic(out / "report.md", report)
    return summary
