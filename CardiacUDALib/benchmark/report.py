"""Report parts shared by the benchmark and the demo: overlays, translation grids, tables, the machine."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from CardiacUDALib.benchmark.runs import MethodRun
from CardiacUDALib.benchmark.splits import DataSplit
from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.device import resolve_device
from CardiacUDALib.inference import TrainedModel
from CardiacUDALib.io import LabelMap, load_case, read_label
from CardiacUDALib.report import (
    AnchorRow,
    TranslationExample,
    comparison_markdown,
    overlay_png,
    translation_grid_png,
)

OVERLAY_CASES = 3


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
