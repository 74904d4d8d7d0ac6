"""Speed of a method on MS-CMRSeg-sized data: training steps/s (eager, compiled; 1 process, N under
torchrun), inference s/volume, peak memory.

    python benchmarks/speed.py --data ../shared/data/mscmrseg19_c0_lge_192 --method source_only \
        [--preset paper] [--set KEY=VALUE ...] [--steps 20] [--volumes 5] [--device auto] \
        [--compile] [--ranks N] [--amp-both]

Trains ``--steps`` steps (after 5 warm-up steps) on C0 slices (and LGE slices for methods that use the
target) with the method's preset, through the engine's own parts (each rank's share of the global
batch, the ranks kept in step, the ``channels_last`` / ``compile`` / ``prefetch`` settings), then times
the segmentation of ``--volumes`` LGE volumes by the model as it stands (preprocessing, network,
restoring the grid, largest-component clean-up; no file writing). Speed does not depend on the
weights, so no trained checkpoint is needed.

``--compile`` measures the same steps again with ``compile=true`` and prints the ratio; ``--ranks N``
starts ``torchrun --standalone --nproc_per_node N`` on this script and prints its steps/s and samples/s
beside the single process's (each of the N ranks gets cores / N torch threads; the global batch is N
times the per-rank batch). ``--amp-both`` times training and inference with ``amp=false`` (float32) and
``amp=true`` (bfloat16 autocast where the device computes it natively; the result says whether it did)
and prints the ratios. Prints markdown rows for ``benchmarks/RESULTS.md`` and the full result as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from CardiacUDALib import distributed
from CardiacUDALib.arguments import parse_settings
from CardiacUDALib.benchmark.report import machine_description
from CardiacUDALib.benchmark.splits import get_dataset
from CardiacUDALib.checkpoint import Checkpoint
from CardiacUDALib.data import SlicePool, load_volumes
from CardiacUDALib.device import bfloat16_autocast
from CardiacUDALib.inference import TrainedModel
from CardiacUDALib.io import load_case
from CardiacUDALib.methods import build_config, get_method
from CardiacUDALib.run_settings import preprocess_for
from CardiacUDALib.training import prepare_networks, training_batches

WARM_UP_STEPS = 5
RESULT_MARKER = "SPEED-RESULT "


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_training(
    args: argparse.Namespace, compiled: bool, amp: bool | None = None
) -> tuple[dict[str, Any], Any, Any]:
    """Steps/s of this process's rank (``amp`` replaces the preset's and ``--set``'s when given); returns
    the result, the method and the data split."""
    ranks = distributed.this_process()
    device, joined = distributed.start(ranks, args.device)
    spec = get_dataset("mscmrseg")
    split = spec.split(Path(args.data), "cross-domain")
    method_class = get_method(args.method)
    settings = {**parse_settings(args.set), "compile": compiled} | ({} if amp is None else {"amp": amp})
    config = build_config(method_class, args.preset, **settings)
    preprocess = preprocess_for(config, spec.preprocess)
    source = SlicePool(
        load_volumes(split.source[:10], spec.label_map, preprocess, True), config.context_slices, 0
    )
    target = SlicePool(
        load_volumes(split.target[:10], spec.label_map, preprocess, False), config.context_slices, 1
    )
    torch.manual_seed(0)
    method = method_class(config, spec.label_map.num_classes, device)
    prepare_networks(method, ranks)
    synchronised = distributed.SynchronisedTraining(method.networks(), method.optimizers())
    method.train_mode()
    batches = training_batches(
        (source, target if method_class.uses_target else None), 0, config, ranks, device
    )
    total = WARM_UP_STEPS + args.steps

    def step(number: int) -> None:
        source_batch, target_batch = batches.get(number, total)
        losses = method.train_step(method.with_appearance(source_batch), target_batch)
        distributed.average_losses(losses, device)
        synchronised.after_step()

    for number in range(WARM_UP_STEPS):
        step(number)
    _synchronise(device)
    started = time.perf_counter()
    for number in range(args.steps):
        step(WARM_UP_STEPS + number)
    _synchronise(device)
    steps_per_s = args.steps / (time.perf_counter() - started)
    synchronised.close()
    batches.close()
    if joined:
        distributed.finish()
    result = {
        "processes": ranks.count,
        "compiled": compiled,
        "bfloat16_autocast": bfloat16_autocast(device, config.amp),
        "threads_per_process": torch.get_num_threads(),
        "global_batch": config.batch_size * ranks.count,
        "train_steps_per_s": round(steps_per_s, 3),
        "train_samples_per_s": round(steps_per_s * config.batch_size * ranks.count, 2),
    }
    return result, method, (spec, split, config, preprocess)


def measure_inference(args: argparse.Namespace, method: Any, context: Any) -> dict[str, Any]:
    spec, split, config, preprocess = context
    device = method.device
    checkpoint = Checkpoint(
        method=args.method,
        method_config=dataclasses.replace(config, compile=False).to_dict(),
        label_map=spec.label_map.to_dict(),
        preprocess=preprocess.to_dict(),
        state={"networks": {name: net.state_dict() for name, net in method.networks().items()}},
        metadata={},
    )
    model = TrainedModel(checkpoint, device, Path("(in memory)"))
    images = [load_case(case, spec.label_map)[0] for case in split.test_sets["lge"][: args.volumes]]
    model.segment_image(images[0])  # warm-up
    seconds = []
    for image in images:
        _synchronise(device)
        started = time.perf_counter()
        model.segment_image(image)
        _synchronise(device)
        seconds.append(time.perf_counter() - started)
    return {
        "inference_s_per_volume": round(float(np.mean(seconds)), 3),
        "slices_per_volume": round(float(np.mean([image.GetSize()[2] for image in images])), 1),
        "peak_memory_mib": round(_peak_memory_mib(device), 1),
    }


def measure_ranks(args: argparse.Namespace) -> dict[str, Any]:
    """The same steps under ``torchrun --nproc_per_node args.ranks``; rank 0's result."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.ranks}",
    ]
    command += [__file__, "--worker", "--data", args.data, "--method", args.method, "--preset", args.preset]
    command += ["--steps", str(args.steps), "--device", args.device]
    command += [item for setting in args.set for item in ("--set", setting)]
    threads = max(1, (os.cpu_count() or 1) // args.ranks) if args.device != "cuda" else 1
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    lines = [line for line in finished.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if finished.returncode != 0 or not lines:
        raise SystemExit(f"torchrun failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    return json.loads(lines[0].removeprefix(RESULT_MARKER))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MS-CMRSeg folder (C0/ and LGE/)")
    parser.add_argument("--method", default="source_only")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--volumes", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time compile=true, and the ratio")
    parser.add_argument("--ranks", type=int, default=1, help="also time N processes under torchrun")
    parser.add_argument(
        "--amp-both", action="store_true", help="also time amp=false and amp=true (training and inference)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one rank under torchrun: train only
        result, _, _ = measure_training(args, compiled=False)
        if distributed.this_process().is_main:
            print(RESULT_MARKER + json.dumps(result), flush=True)
        return

    eager, method, context = measure_training(args, compiled=False)
    rows = [eager]
    summary: dict[str, Any] = {"eager": eager, **measure_inference(args, method, context)}
    if args.compile:
        compiled, _, _ = measure_training(args, compiled=True)
        rows.append(compiled)
        summary["compiled"] = compiled
        summary["compiled_over_eager"] = round(compiled["train_steps_per_s"] / eager["train_steps_per_s"], 2)
    if args.amp_both:
        precision = {}
        for amp in (False, True):
            trained, amp_method, amp_context = measure_training(args, compiled=False, amp=amp)
            rows.append(trained)
            precision[f"amp={str(amp).lower()}"] = trained | measure_inference(args, amp_method, amp_context)
        faster, slower = precision["amp=true"], precision["amp=false"]
        summary["amp"] = precision
        summary["amp_train_speedup"] = round(faster["train_steps_per_s"] / slower["train_steps_per_s"], 2)
        summary["amp_inference_speedup"] = round(
            slower["inference_s_per_volume"] / faster["inference_s_per_volume"], 2
        )
    if args.ranks > 1:
        several = measure_ranks(args)
        rows.append(several)
        summary["ranks"] = several
        summary["samples_per_s_ranks_over_one"] = round(
            several["train_samples_per_s"] / eager["train_samples_per_s"], 2
        )
    summary.update(
        method=args.method,
        preset=args.preset,
        overrides=parse_settings(args.set),
        machine=machine_description(args.device),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command="python benchmarks/speed.py " + " ".join(sys.argv[1:]),
    )
    print(
        "| Method (preset) | processes x threads | compiled | bfloat16 | global batch | steps/s | samples/s |"
    )
    print("|---|---|---|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {args.method} ({args.preset}) | {row['processes']} x {row['threads_per_process']} | "
            f"{'yes' if row['compiled'] else 'no'} | {'yes' if row['bfloat16_autocast'] else 'no'} | "
            f"{row['global_batch']} | {row['train_steps_per_s']} | {row['train_samples_per_s']} |"
        )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
