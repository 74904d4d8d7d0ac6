"""The README and extension-page figures, drawn only from real run folders.

    python benchmarks/figures.py --mscmrseg-run runs/st_seed0 --demo demo_out [--data DIR] [--out DIR]

Writes into ``--out`` (default ``Resources/Screenshots``):

- ``mscmrseg_overlays.png``: LGE test slices of a few patients of a ``cardiac-uda benchmark --dataset
  mscmrseg`` run folder (spread over the test set in patient order, not picked by score): the image, the
  manual ground truth and the run's prediction (``segmentations/<case>_seg.nii.gz``), each prediction
  titled with that case's Dice from the run's ``per_volume_lge.json``;
- ``mscmrseg_training_curve.png``: the same run's ``history.json`` (losses, validation Dice on LGE 1-5,
  the selected step marked);
- ``phantom_demo.png``: a ``cardiac-uda demo`` (``./run_demo.sh``) output folder: target test subjects
  with no adaptation (``source_only``, the floor) beside the best other method of its ``summary.json``,
  each prediction titled with its per-case Dice (``runs/<method>/per_volume_target.json``) and the test
  mean Dice of each method from ``summary.json``;
- ``CAPTIONS.md``: for each figure, the run folder, the command that made the run, its checkpoint and
  the files every drawn number comes from (also printed).

Images and ground truth of the MS-CMRSeg run are read from ``--data`` (default: ``$CARDIACUDA_DATA``,
else the ``data_dir`` the run recorded). No translation grid is drawn here: ``cardiac-uda benchmark``
and ``cardiac-uda demo`` write ``translation_grid*.png`` themselves for the methods that translate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from CardiacUDALib.atomic import write_text_atomic
from CardiacUDALib.benchmark.report import OVERLAY_CASES, spread_indices
from CardiacUDALib.benchmark.splits import DATA_ENVIRONMENT_VARIABLE, get_dataset
from CardiacUDALib.cases import SEGMENTATION_TAG, VolumeCase, find_cases, output_path
from CardiacUDALib.demo import BASELINE, TEST_SET
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.io import LABEL_MAPS, LabelMap, load_case, read_label
from CardiacUDALib.report import OverlayRow, overlay_grid_png, plot_training_curve

MSCMRSEG_TEST_SET = "lge"


@dataclass(frozen=True)
class Caption:
    """Where a figure's pixels and numbers come from."""

    figure: Path
    run: Path
    command: str
    checkpoint: str
    numbers: str
    command_note: str = ""

    def markdown(self) -> str:
        note = f" {self.command_note}" if self.command_note else ""
        return (
            f"## `{self.figure.name}`\n\n- Run folder: `{self.run}`\n- Run command: `{self.command}`{note}\n"
            f"- Checkpoint: {self.checkpoint}\n- Numbers drawn: {self.numbers}\n"
        )


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise CardiacUDAError(f"{path} is missing: give a finished run folder")
    return json.loads(path.read_text(encoding="utf-8"))


def dice_by_case(per_volume: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{case: {structure: dice}}`` from a run's ``per_volume_<test set>.json``."""
    return {
        entry["case"]: {name: scores["dice"] for name, scores in entry["structures"].items()}
        for entry in per_volume["per_case"]
    }


def dice_text(dice: Mapping[str, float]) -> str:
    """``MYO 76.9 · LV 93.6 · RV 73.7`` (Dice in %)."""
    return " · ".join(f"{name} {100 * value:.1f}" for name, value in dice.items())


def chosen_cases(names: Sequence[str], count: int) -> list[str]:
    """``count`` case names spread evenly over ``names`` (in their order, never chosen by score)."""
    return [names[index] for index in spread_indices(len(names), count)]


def prediction_of(run_dir: Path, case: VolumeCase, image: sitk.Image, label_map: LabelMap) -> sitk.Image:
    """The run's segmentation of ``case`` as classes on ``image``'s grid."""
    path = output_path(run_dir / "segmentations", case, SEGMENTATION_TAG)
    if not path.is_file():
        raise CardiacUDAError(f"{path} is missing: the run did not segment {case.name}")
    return read_label(path, label_map, reference=image)


def mscmrseg_figures(run_dir: Path, data_dir: Path | None, out: Path, count: int) -> list[Caption]:
    """Overlays of a few LGE test patients and the training curve of one MS-CMRSeg benchmark run."""
    summary = read_json(run_dir / "summary.json")
    if summary.get("dataset") != "mscmrseg":
        raise CardiacUDAError(
            f"{run_dir} is not an MS-CMRSeg benchmark run (dataset {summary.get('dataset')})"
        )
    method = summary["method"]
    entry = summary["methods"][method]
    dataset = get_dataset("mscmrseg")
    data = data_dir or Path(os.environ.get(DATA_ENVIRONMENT_VARIABLE) or summary["data_dir"])
    test_cases = {
        case.name: case for case in dataset.split(data, "cross-domain").test_sets[MSCMRSEG_TEST_SET]
    }
    dice = dice_by_case(read_json(run_dir / f"per_volume_{MSCMRSEG_TEST_SET}.json"))
    rows = []
    for name in chosen_cases(list(dice), count):
        image, reference = load_case(test_cases[name], dataset.label_map)
        prediction = prediction_of(run_dir, test_cases[name], image, dataset.label_map)
        titles = {
            "reference": "manual ground truth",
            method: f"{method}, volume Dice %\n{dice_text(dice[name])}",
        }
        rows.append(OverlayRow(name, image, reference, {method: prediction}, titles))
    test_count = len(dice)
    overlays = overlay_grid_png(
        rows,
        dataset.label_map,
        out / "mscmrseg_overlays.png",
        f"{method} on MS-CMRSeg LGE test patients (run {run_dir.name}): mean Dice "
        f"{100 * entry['mean_dice']:.1f}% over {test_count} test volumes\n{entry['selection']}",
    )
    curve = plot_training_curve(
        read_json(run_dir / "history.json"),
        out / "mscmrseg_training_curve.png",
        f"{method}, MS-CMRSeg C0 -> LGE (run {run_dir.name}, seed {summary['seed']})",
    )
    checkpoint = f"`{entry['checkpoint']}` ({entry['selection']})"
    return [
        Caption(
            overlays,
            run_dir,
            summary["command"],
            checkpoint,
            f"per-case Dice from `{run_dir / f'per_volume_{MSCMRSEG_TEST_SET}.json'}`, mean test Dice and "
            f"checkpoint rule from `{run_dir / 'summary.json'}`; images and manual labels from `{data}`",
        ),
        Caption(curve, run_dir, summary["command"], checkpoint, f"`{run_dir / 'history.json'}`"),
    ]


def demo_command(demo_dir: Path, summary: Mapping[str, Any], method: str) -> str:
    """The ``cardiac-uda demo`` command line that the settings recorded in ``summary.json`` stand for."""
    overrides = "".join(f" --set {key}={json.dumps(value)}" for key, value in summary["overrides"].items())
    phantom = summary["phantom"]
    return (
        f"cardiac-uda demo --out {demo_dir} --method {method} --subjects {phantom['subjects']} "
        f"--preset {summary['preset']} --seed {phantom['seed']}{overrides}"
    )


def demo_figure(demo_dir: Path, out: Path, count: int) -> Caption:
    """The floor and the best other method of a demo output folder on a few phantom target test subjects."""
    summary = read_json(demo_dir / "summary.json")
    methods = summary["methods"]
    others = [key for key in methods if key != BASELINE]
    if BASELINE not in methods or not others:
        raise CardiacUDAError(f"{demo_dir} does not hold {BASELINE} and an adaptation method")
    best = max(others, key=lambda key: methods[key]["mean_dice"])
    label_map = LABEL_MAPS["mscmrseg"]  # the labels the demo writes into its phantom
    test_names = summary["split"]["test"][TEST_SET]
    cases = {case.name: case for case in find_cases(demo_dir / "phantom" / "target", require_labels=True)}
    dice = {
        key: dice_by_case(read_json(demo_dir / "runs" / key / f"per_volume_{TEST_SET}.json"))
        for key in (BASELINE, best)
    }
    rows = []
    for name in chosen_cases(test_names, count):
        image, reference = load_case(cases[name], label_map)
        predictions = {
            key: prediction_of(demo_dir / "runs" / key, cases[name], image, label_map) for key in dice
        }
        titles = {"reference": "phantom ground truth"}
        titles.update({key: f"{key}, volume Dice %\n{dice_text(dice[key][name])}" for key in dice})
        rows.append(OverlayRow(name, image, reference, predictions, titles))
    means = ", ".join(f"{key} {100 * methods[key]['mean_dice']:.1f}%" for key in dice)
    figure = overlay_grid_png(
        rows,
        label_map,
        out / "phantom_demo.png",
        f"Phantom demo ({demo_dir.name}), LGE-like target test subjects: no adaptation vs {best}\n"
        f"mean Dice over {len(test_names)} test subjects: {means}",
    )
    checkpoints = "; ".join(f"`{methods[key]['checkpoint']}` ({methods[key]['selection']})" for key in dice)
    return Caption(
        figure,
        demo_dir,
        demo_command(demo_dir, summary, best),
        checkpoints,
        f"per-case Dice from `{demo_dir}/runs/<method>/per_volume_{TEST_SET}.json`, mean test Dice from "
        f"`{demo_dir / 'summary.json'}`; images and phantom labels from `{demo_dir / 'phantom' / 'target'}`",
        "(rebuilt from the settings in summary.json, which records no command line)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mscmrseg-run", type=Path, required=True, help="MS-CMRSeg benchmark run folder")
    parser.add_argument("--demo", type=Path, required=True, help="cardiac-uda demo output folder")
    parser.add_argument("--data", type=Path, help="MS-CMRSeg data folder (C0/, LGE/)")
    parser.add_argument("--out", type=Path, default=Path("Resources/Screenshots"), help="figure folder")
    parser.add_argument("--cases", type=int, default=OVERLAY_CASES, help="rows of each overlay grid")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        captions = mscmrseg_figures(args.mscmrseg_run, args.data, args.out, args.cases)
        captions.append(demo_figure(args.demo, args.out, args.cases))
    except CardiacUDAError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    figures_command = "python benchmarks/figures.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        "# Figures and where they come from\n\n"
        f"Drawn by `{figures_command}` from the run folders below; every number on them is read from "
        "the files named.\n\n" + "\n".join(caption.markdown() for caption in captions)
    )
    write_text_atomic(args.out / "CAPTIONS.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
