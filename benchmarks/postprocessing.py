"""Post-processing and checkpoint ablation of benchmark runs: which inference settings, chosen where.

    python benchmarks/postprocessing.py --data ../shared/data/mscmrseg19_c0_lge_192 \
        runs/gin_ipa_seed0 runs/gin_ipa_seed1 [...] [--out benchmarks/mscmrseg/postprocessing.json]

For each run folder (a ``cardiac-uda benchmark`` output) and each checkpoint (``best.pt``: chosen on
LGE 1-5; ``last.pt``: the fixed rule, last weights), segments every LGE volume with and without
test-time flip averaging, and scores each prediction with and without the largest-3D-component
clean-up: four settings from two network passes (the last checkpoint is scored again only when it is
not the best one). Mean 3D Dice (%) over MYO, LV, RV is reported on
the validation patients (LGE 1-5, where a default may be chosen) and on the test patients (LGE 6-40,
reported only). Prints a markdown table (mean ± std over the runs) and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CardiacUDALib.atomic import write_json_atomic
from CardiacUDALib.benchmark.splits import get_dataset
from CardiacUDALib.checkpoint import load_checkpoint
from CardiacUDALib.inference import TrainedModel, keep_largest_components
from CardiacUDALib.io import load_case
from CardiacUDALib.metrics import score_volume
from CardiacUDALib.runfolder import RunFolder

SETTINGS = {  # name: (flip averaging, largest component)
    "none": (False, False),
    "largest component": (False, True),
    "flips": (True, False),
    "flips + largest component": (True, True),
}


def _mean_dice(prediction: np.ndarray, reference: np.ndarray, spacing: tuple, names: tuple) -> float:
    return float(
        np.mean([score.dice for score in score_volume(prediction, reference, spacing, names).values()])
    )


def score_run(run_dir: Path, data_dir: Path, checkpoint: str) -> dict[str, dict[str, float]]:
    """{setting: {"validation": mean Dice %, "test": mean Dice %}} of one checkpoint of one run."""
    spec = get_dataset("mscmrseg")
    split = spec.split(data_dir, "cross-domain")
    path = RunFolder(run_dir).best if checkpoint == "best" else RunFolder(run_dir).last
    model = TrainedModel.load(path, "cpu")
    names = tuple(spec.label_map.class_names)
    groups = {"validation": split.validation, "test": split.test_sets["lge"]}
    scores: dict[str, dict[str, list[float]]] = {name: {group: [] for group in groups} for name in SETTINGS}
    for group, cases in groups.items():
        for case in cases:
            image, reference_image = load_case(case, spec.label_map)
            reference = sitk.GetArrayFromImage(reference_image)
            spacing = tuple(reversed(image.GetSpacing()))
            for flips in (False, True):
                predicted = sitk.GetArrayFromImage(model.segment_image(image, False, flip_averaging=flips))
                cleaned = keep_largest_components(predicted, spec.label_map.num_classes)
                for name, (setting_flips, largest) in SETTINGS.items():
                    if setting_flips == flips:
                        chosen = cleaned if largest else predicted
                        scores[name][group].append(100 * _mean_dice(chosen, reference, spacing, names))
    return {
        name: {group: float(np.mean(values)) for group, values in by_group.items()}
        for name, by_group in scores.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="benchmark run folders (one per seed)")
    parser.add_argument("--data", required=True, type=Path, help="the MS-CMRSeg folder")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    results = {}
    for run in args.runs:
        best = score_run(run, args.data, "best")
        same = load_checkpoint(RunFolder(run).best).step == load_checkpoint(RunFolder(run).last).step
        results[str(run)] = {"best": best, "last": best if same else score_run(run, args.data, "last")}
        print(f"scored {run}", file=sys.stderr, flush=True)
    print("| checkpoint | post-processing | LGE 1-5 (validation) | LGE 6-40 (test) |")
    print("|---|---|---:|---:|")
    for checkpoint in ("best", "last"):
        for name in SETTINGS:
            cells = []
            for group in ("validation", "test"):
                values = [results[str(run)][checkpoint][name][group] for run in args.runs]
                cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}")
            print(f"| {checkpoint} | {name} | {cells[0]} | {cells[1]} |")
    if args.out is not None:
        write_json_atomic(args.out, {"runs": results, "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
