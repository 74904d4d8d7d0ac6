"""One headline row from several seeds of the same benchmark configuration.

    python benchmarks/seeds.py runs/gin_ipa_seed0 runs/gin_ipa_seed1 runs/gin_ipa_seed2 [--floor 68.4]

Reads each run folder's ``summary.json`` (written by ``cardiac-uda benchmark``) and prints the
markdown row of ``benchmarks/RESULTS.md``'s headline table: per-structure and mean Dice (%) and mean
ASSD (mm) on LGE 6-40 as mean ± std over the seeds (population std), training wall time, the
checkpoint rule, and the gain over ``--floor`` (a mean Dice measured in the same setup).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _cell(values: list[float], scale: float = 1.0, decimals: int = 1) -> str:
    array = np.asarray(values, dtype=float) * scale
    return f"{array.mean():.{decimals}f} ± {array.std():.{decimals}f}"


def headline_row(summaries: list[dict], floor: float | None) -> str:
    entries = [next(iter(summary["methods"].values())) for summary in summaries]
    test = [entry["test_sets"]["lge"] for entry in entries]
    structures = list(test[0]["structures"])
    dice = {name: [t["structures"][name]["dice_mean"] for t in test] for name in structures}
    mean_dice = [100 * entry["mean_dice"] for entry in entries]
    assd = [t["mean"]["assd_mm"] for t in test]
    gain = "" if floor is None else f"{np.mean(mean_dice) - floor:+.1f}"
    seeds = ", ".join(str(summary["seed"]) for summary in summaries)
    wall = _cell([entry["wall_s"] / 60 for entry in entries], decimals=0)
    return (
        f"| `{summaries[0]['method']}` | {' | '.join(_cell(dice[name], 100) for name in structures)} | "
        f"**{_cell(mean_dice)}** | {_cell(assd, decimals=2)} | {wall} min | {gain} | seeds {seeds} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="benchmark run folders, one per seed")
    parser.add_argument(
        "--floor", type=float, default=None, help="mean Dice (%%) of the floor to compare with"
    )
    args = parser.parse_args(argv)
    summaries = [json.loads((run / "summary.json").read_text(encoding="utf-8")) for run in args.runs]
    print(headline_row(summaries, args.floor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
