"""The demo: no adaptation versus an adaptation method on the embedded two-modality phantom.

It needs no data and no GPU: a phantom with a strong bSSFP -> LGE-like domain shift is generated,
``source_only`` and the chosen method are trained on it exactly as on real data (``train`` jobs),
and the report shows what adaptation gains on the target. The split is the real benchmark's
(DESIGN.md §4) in miniature: the first target subjects are a labelled validation set for checkpoint
selection only, the other target subjects are the test set, and all target images (without labels)
are the target training images, transductively, as in VarDA.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from CardiacUDALib.atomic import write_json_atomic, write_text_atomic
from CardiacUDALib.benchmark.report import (
    figures_markdown,
    results_markdown,
    timing_markdown,
    write_overlays,
    write_translation_grid,
)
from CardiacUDALib.benchmark.runs import MethodRun, run_method
from CardiacUDALib.benchmark.splits import DataSplit, without_labels
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.events import EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.io import LABEL_MAPS
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.methods import get_method
from CardiacUDALib.phantom import PhantomDataset, write_phantom_dataset
from CardiacUDALib.preprocess import PreprocessConfig

BASELINE = "source_only"
PHANTOM_SIZE = 96
VALIDATION_SUBJECTS = 3
TEST_SET = "target"


def _check_subjects(subjects: int) -> None:
    if subjects <= VALIDATION_SUBJECTS:
        raise CardiacUDAError(
            f"the demo needs more than {VALIDATION_SUBJECTS} subjects per domain: {VALIDATION_SUBJECTS} for "
            f"validation and at least one to test (got {subjects})"
        )


def phantom_split(dataset: PhantomDataset) -> DataSplit:
    """Source: every source subject, labelled; target: every target image; validation: target 0-2; test: the rest."""
    _check_subjects(len(dataset.target))
    validation = dataset.target[:VALIDATION_SUBJECTS]
    test = dataset.target[VALIDATION_SUBJECTS:]
    return DataSplit(
        f"source: {len(dataset.source)} phantom bSSFP-like subjects with labels; target training images: all "
        f"{len(dataset.target)} phantom LGE-like subjects without labels (transductive, as VarDA); validation "
        f"(checkpoint selection only): target {', '.join(c.name for c in validation)} with labels; test: target "
        f"{', '.join(c.name for c in test)}",
        source=dataset.source,
        target=without_labels(dataset.target),
        validation=validation,
        test_sets={TEST_SET: test},
    )


def _gain_markdown(runs: list[MethodRun]) -> str:
    """Dice gain of each method over no adaptation, per structure, in percentage points."""
    baseline = runs[0].tables[TEST_SET].summary()
    lines = []
    for run in runs[1:]:
        summary = run.tables[TEST_SET].summary()
        gains = [
            f"{name} {100 * (summary['structures'][name]['dice_mean'] - structure['dice_mean']):+.1f}"
            for name, structure in baseline["structures"].items()
        ]
        mean_gain = 100 * (summary["mean"]["dice"] - baseline["mean"]["dice"])
        lines.append(
            f"- `{run.key}` over `{BASELINE}`: mean Dice {mean_gain:+.1f} points ({', '.join(gains)})"
        )
    return "\n".join(lines) + "\n" if lines else "Only the baseline was run (no `--method`).\n"


def run_demo(
    out_dir: str | Path,
    method: str | None = None,
    preset: str = "fast",
    subjects: int = 10,
    seed: int = 0,
    device: str = "auto",
    emit: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate the phantom, train ``source_only`` (and ``method``), test, and write the report.

    ``overrides`` apply to every trained method (tests shrink ``iterations`` with it). Writes
    ``phantom/``, ``runs/<method>/`` (checkpoints, segmentations, per-volume scores), ``overlays/``,
    ``report.md`` and ``summary.json`` into ``out_dir``; returns the content of ``summary.json``.
    """
    started = time.monotonic()
    keys = [BASELINE] + ([method] if method is not None and method != BASELINE else [])
    for key in keys:
        get_method(key)  # an unknown key or too few subjects fail before any work
    _check_subjects(subjects)
    out = Path(out_dir)
    emit(
        {
            "event": "status",
            "message": f"writing a {subjects}+{subjects} subject phantom to {out / 'phantom'}",
        }
    )
    split = phantom_split(write_phantom_dataset(out / "phantom", subjects, seed, PHANTOM_SIZE))
    label_map = LABEL_MAPS["mscmrseg"]
    baseline_job = TrainJob(
        BASELINE,
        out / "runs" / BASELINE,
        source=split.source,
        target=split.target,
        validation=split.validation,
        label_map=label_map,
        preprocess=PreprocessConfig(size=PHANTOM_SIZE),
        preset=preset,
        overrides=dict(overrides or {}),
        device=device,
        seed=seed,
    )
    runs: list[MethodRun] = []
    for key in keys:
        emit({"event": "status", "message": f"training {key}"})
        job = dataclasses.replace(baseline_job, method=key, out_dir=out / "runs" / key)
        runs.append(run_method(job, split.test_sets, emit, should_stop))
    overlays = write_overlays(runs, TEST_SET, split.test_sets[TEST_SET], label_map, out / "overlays")
    translation_grids = []
    for run in runs:
        grid_path = out / f"translation_grid_{run.key}.png"
        grid = write_translation_grid(
            run.train_result["best_checkpoint"], split, label_map, grid_path, device
        )
        if grid is not None:
            translation_grids.append(grid)
    total_wall_s = time.monotonic() - started
    summary = {
        "phantom": {"root": str(out / "phantom"), "subjects": subjects, "seed": seed, "size": PHANTOM_SIZE},
        "preset": preset,
        "overrides": dict(overrides or {}),
        "split": split.to_dict(),
        "methods": {run.key: run.summary() for run in runs},
        "total_wall_s": round(total_wall_s, 1),
    }
    write_json_atomic(out / "summary.json", summary)
    report = (
        "# CardiacUDA demo on the synthetic phantom\n\n"
        f"- What ran: {', '.join(f'`{key}`' for key in keys)} with preset `{preset}`"
        f"{f', overrides {dict(overrides)}' if overrides else ''}, seed {seed}, on a {PHANTOM_SIZE} x "
        f"{PHANTOM_SIZE} phantom written to `phantom/` ({subjects} source + {subjects} target subjects).\n"
        f"- Split: {split.description}.\n"
        "- Every method is trained from scratch with the same data, seed and settings. Its checkpoint is "
        "chosen on the labelled validation subjects only (the exact rule is in the timing table); the test "
        "labels are read only to score the final segmentations.\n"
        + f"- Total wall time: {total_wall_s:.1f} s.\n\n"
        "## Results on the target test subjects\n\n"
        + results_markdown(runs, split)
        + "\n## Gain over no adaptation\n\n"
        + _gain_markdown(runs)
        + "\n## Timing and checkpoint selection\n\n"
        + timing_markdown(runs)
        + "\n## Overlays (image, reference, each method)\n\n"
        + figures_markdown(overlays, out)
        + (
            "\n## Translated images (source, translated source, target; each panel its own grey window)\n\n"
            + figures_markdown(translation_grids, out)
            if translation_grids
            else ""
        )
    )
    write_text_atomic(out / "report.md", report)
    return summary
