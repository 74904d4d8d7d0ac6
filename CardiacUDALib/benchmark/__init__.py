"""The real-data benchmark (DESIGN.md §4): train one method on a data set's split, test it, report it.

The parts: :mod:`~CardiacUDALib.benchmark.splits` (which volumes play which role),
:mod:`~CardiacUDALib.benchmark.runs` (one method on one split, through one ``train`` job) and
:mod:`~CardiacUDALib.benchmark.report` (overlays, tables, the machine); the demo uses them too.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from CardiacUDALib import distributed
from CardiacUDALib.atomic import write_json_atomic, write_text_atomic
from CardiacUDALib.benchmark.report import (
    figures_markdown,
    machine_description,
    results_markdown,
    timing_markdown,
    write_overlays,
    write_translation_grid,
)
from CardiacUDALib.benchmark.runs import run_method
from CardiacUDALib.benchmark.splits import DATA_ENVIRONMENT_VARIABLE, get_dataset
from CardiacUDALib.engine import run_job
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.events import EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.methods import get_method
from CardiacUDALib.report import plot_training_curve

__all__ = ["DATA_ENVIRONMENT_VARIABLE", "run_benchmark"]


def run_benchmark(
    data_dir: str | Path,
    job: TrainJob,
    split: str = "cross-domain",
    dataset: str = "mscmrseg",
    command_line: str | None = None,
    emit: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> dict[str, Any]:
    """Run ``job`` (its method and settings) on the data set's split, test it, and report into ``job.out_dir``.

    The split fills the job's cases, the data set its label map and preprocessing. ``out_dir`` is the
    run folder (checkpoints, history, segmentations) as well, so running the same command again resumes
    an interrupted training. Returns the content of ``summary.json``.
    """
    spec = get_dataset(dataset)
    method_class = get_method(job.method)
    if split == "in-domain" and (method_class.uses_target or job.stages):
        raise CardiacUDAError(
            f"the in-domain split has no target images, so it is for source-only methods; {job.method!r}"
            f"{' with ' + ', '.join(job.stages) if job.stages else ''} adapts to target images: "
            "use --split cross-domain"
        )
    data_split = spec.split(Path(data_dir), split)
    job = dataclasses.replace(
        job,
        source=data_split.source,
        target=data_split.target,
        validation=data_split.validation,
        label_map=spec.label_map,
        preprocess=spec.preprocess,
    )
    method, out = job.method, job.out_dir
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not distributed.this_process().is_main:  # under torchrun: train this rank's share; rank 0 reports
        run_job(job, emit, should_stop)
        return {}
    run = run_method(job, data_split.test_sets, emit, should_stop)
    curve = plot_training_curve(run.history, out / "training_curve.png", f"{method} on {dataset} ({split})")
    overlays = [
        path
        for name, cases in data_split.test_sets.items()
        for path in write_overlays([run], name, cases, spec.label_map, out / "overlays")
    ]
    translation_grid = write_translation_grid(
        run.train_result["best_checkpoint"],
        data_split,
        spec.label_map,
        out / "translation_grid.png",
        job.device,
    )
    settings = {
        key: value
        for key, value in job.to_dict().items()
        if key in ("method", "preset", "overrides", "stages", "initial_checkpoint", "seed", "device")
    }
    command = (
        command_line or f"run_benchmark({str(data_dir)!r}, {settings}, split={split!r}, dataset={dataset!r})"
    )
    processes = distributed.this_process().count
    machine = machine_description(job.device) + (
        f"; {processes} processes under torchrun (global batch = batch_size x {processes})"
        if processes > 1
        else ""
    )
    summary = {
        "dataset": dataset,
        "data_dir": str(data_dir),
        **settings,
        "command": command,
        "machine": machine,
        "processes": processes,
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
        f"- Method: `{method}`: {method_class.description} Preset `{job.preset}`; overrides {job.overrides}; "
        f"{''.join(f'then {stage} on the target; ' for stage in job.stages)}"
        f"{f'started from `{job.initial_checkpoint}`; ' if job.initial_checkpoint else ''}seed {job.seed}\n"
        f"- Data: `{data_dir}`. {data_split.description}. No resampling (as released): every volume keeps its "
        f"own spacing; slices are cropped/padded to {spec.preprocess.size} x {spec.preprocess.size}, intensities "
        f"`{spec.preprocess.intensity}` unless the method sets its own.\n"
        f"- Checkpoint: {run.train_result['selection']}. Test labels are read only after this choice.\n"
        f"- Post-processing: {'probabilities averaged over test-time flips' if job.flip_averaging else 'one pass'}; "
        f"{'largest 3D component per structure' if job.largest_component else 'every component kept'}.\n\n"
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
