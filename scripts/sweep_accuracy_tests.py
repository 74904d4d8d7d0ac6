#!/usr/bin/env python3
"""Run the accuracy tests over seeds, torch thread counts and CPU kernels; print the margins they leave.

Float results differ across CPUs (vector kernels, thread counts), so a margin tuned on one machine is
luck on the next. This runs ``pytest -m accuracy`` once per cell of

    seeds x threads x kernels

where a kernel set makes torch use another CPU code path, as another machine would:

* ``default``: ``ATEN_CPU_CAPABILITY=default`` (no vector kernels) and ``ONEDNN_MAX_CPU_ISA=SSE41``
  (oneDNN's convolutions, which ATen's setting does not reach);
* ``avx2``: ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2``;
* ``native``: neither set (this machine's best, e.g. AVX-512).

Each check of a test (``require_gain`` in ``Testing/conftest.py``) logs its measured gain; the table
printed at the end (and written with ``--table``) gives, per check, the required margin, the smallest
gain over every cell and in how many cells it passed. Cells run side by side as long as their threads
fit in ``--cores``.

    .venv/bin/python scripts/sweep_accuracy_tests.py --out sweep --table sweep/table.md
    .venv/bin/python scripts/sweep_accuracy_tests.py --out sweep --summarise   # table of logged cells only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
KERNELS = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "native": {},
}


@dataclass(frozen=True)
class Cell:
    seed: int
    threads: int
    kernel: str

    @property
    def name(self) -> str:
        return f"seed{self.seed}_threads{self.threads}_{self.kernel}"


def run_cell(cell: Cell, out_dir: Path, pytest_arguments: list[str]) -> tuple[Cell, int, float]:
    """One pytest run; its checks append to ``<cell>.jsonl``, its output goes to ``<cell>.log``."""
    log = out_dir / f"{cell.name}.jsonl"
    log.unlink(missing_ok=True)
    (out_dir / "tmp").mkdir(exist_ok=True)  # pytest makes --basetemp, not its parent
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
    }
    environment.update(KERNELS[cell.kernel])
    environment.update(
        {
            "CARDIACUDA_TEST_SEED": str(cell.seed),
            "CARDIACUDA_TEST_THREADS": str(cell.threads),
            "OMP_NUM_THREADS": str(cell.threads),
            "CARDIACUDA_ACCURACY_LOG": str(log),
        }
    )
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--basetemp", str(out_dir / "tmp" / cell.name), *pytest_arguments,
    ]  # fmt: skip
    started = time.monotonic()
    with (out_dir / f"{cell.name}.log").open("w") as output:
        code = subprocess.run(
            command, cwd=REPOSITORY, env=environment, stdout=output, stderr=subprocess.STDOUT
        ).returncode
    return cell, code, time.monotonic() - started


def run_sweep(cells: list[Cell], out_dir: Path, cores: int, pytest_arguments: list[str]) -> None:
    """Run the cells, as many at a time as their thread counts fit in ``cores``."""
    pending = sorted(cells, key=lambda cell: -cell.threads)
    running: dict[Future, Cell] = {}
    with ThreadPoolExecutor(max_workers=cores) as pool:
        while pending or running:
            busy = sum(cell.threads for cell in running.values())
            startable = next((cell for cell in pending if busy + cell.threads <= cores or not running), None)
            if startable is not None:
                pending.remove(startable)
                running[pool.submit(run_cell, startable, out_dir, pytest_arguments)] = startable
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell, code, seconds = future.result()
                del running[future]
                print(f"{cell.name}: pytest exit {code} in {seconds:.0f} s", flush=True)


def read_records(out_dir: Path) -> list[dict]:
    records = []
    for log in sorted(out_dir.glob("*.jsonl")):
        kernel = log.stem.split("_", 2)[2]
        records += [{**json.loads(line), "kernel": kernel} for line in log.read_text().splitlines() if line]
    return records


def table(records: list[dict]) -> str:
    """Markdown: one row per check, its margin and the gains it reached over the cells."""
    by_check: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_check[record["check"]].append(record)
    kernels = sorted({record["kernel"] for record in records})
    cells = {(r["seed"], r["threads"], r["kernel"]) for r in records}
    seeds_per_setting: dict[tuple[str, int], list[int]] = defaultdict(list)
    for seed, thread_count, kernel in sorted(cells):
        seeds_per_setting[(kernel, thread_count)].append(seed)
    lines = [
        f"{len(cells)} cells: "
        + "; ".join(
            f"{kernel}, {thread_count} thread(s): seeds {', '.join(map(str, seeds))}"
            for (kernel, thread_count), seeds in sorted(seeds_per_setting.items())
        )
        + ".",
        "",
        "| check | margin | min gain | mean gain | "
        + " | ".join(f"min ({kernel})" for kernel in kernels)
        + " | passed |",
        "|---|---:|---:|---:|" + "---:|" * len(kernels) + "---:|",
    ]
    for check in sorted(by_check):
        rows = by_check[check]
        gains = [row["gain"] for row in rows]
        margin = rows[-1]["margin"]
        per_kernel = [
            min((row["gain"] for row in rows if row["kernel"] == kernel), default=float("nan"))
            for kernel in kernels
        ]
        passed = sum(row["gain"] > row["margin"] for row in rows)
        lines.append(
            f"| `{check.removeprefix('Testing/')}` | {margin:g} | {min(gains):.4g} | {statistics.mean(gains):.4g} | "
            + " | ".join(f"{value:.4g}" for value in per_kernel)
            + f" | {passed}/{len(rows)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the logs of every cell")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to fill with cells")
    parser.add_argument("--table", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--summarise", action="store_true", help="only print the table of the logged cells")
    parser.add_argument(
        "pytest_arguments", nargs="*", default=["-m", "accuracy", "Testing"], help="what pytest runs"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarise:
        cells = [Cell(*values) for values in itertools.product(args.seeds, args.threads, args.kernels)]
        run_sweep(cells, args.out.resolve(), args.cores, args.pytest_arguments)
    records = read_records(args.out)
    if not records:
        print(f"no check was logged in {args.out}", file=sys.stderr)
        return 1
    text = table(records)
    print(text, end="")
    if args.table is not None:
        args.table.write_text(text)
    return 0 if all(record["gain"] > record["margin"] for record in records) else 1


if __name__ == "__main__":
    sys.exit(main())
