"""Speed of a method on MS-CMRSeg-sized data: training steps/s, inference s/volume, peak memory.

    python benchmarks/speed.py --data ../shared/data/mscmrseg19_c0_lge_192 --method source_only \
        [--preset paper] [--set KEY=VALUE ...] [--steps 50] [--volumes 5] [--device auto]

Trains ``--steps`` steps (after 5 warm-up steps) on C0 slices (and LGE slices for methods that use the
target) with the method's preset, then times the segmentation of ``--volumes`` LGE volumes by the
model as it stands (preprocessing, network, restoring the grid, largest-component clean-up; no file
writing). Speed does not depend on the weights, so no trained checkpoint is needed. Prints one
markdown row for ``benchmarks/RESULTS.md`` and the full result as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from CardiacUDALib.arguments import parse_settings
from CardiacUDALib.benchmark.report import machine_description
from CardiacUDALib.benchmark.splits import get_dataset
from CardiacUDALib.checkpoint import Checkpoint
from CardiacUDALib.data import SliceBatch, SlicePool, load_volumes, step_generator
from CardiacUDALib.device import resolve_device
from CardiacUDALib.inference import TrainedModel
from CardiacUDALib.io import load_case
from CardiacUDALib.methods import build_config, get_method
from CardiacUDALib.training import preprocess_for

WARM_UP_STEPS = 5


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(args: argparse.Namespace) -> dict[str, object]:
    spec = get_dataset("mscmrseg")
    split = spec.split(Path(args.data), "cross-domain")
    device = resolve_device(args.device)
    method_class = get_method(args.method)
    config = build_config(method_class, args.preset, **parse_settings(args.set))
    preprocess = preprocess_for(config, spec.preprocess)
    source = SlicePool(
        load_volumes(split.source[:10], spec.label_map, preprocess, True), config.context_slices
    )
    target = SlicePool(
        load_volumes(split.target[:10], spec.label_map, preprocess, False), config.context_slices
    )
    method = method_class(config, spec.label_map.num_classes, device)
    method.train_mode()

    def batches(step: int) -> tuple[SliceBatch, SliceBatch | None]:
        rng = step_generator(0, step)
        source_batch = source.sample(rng, config.batch_size, config.augment).to(device)
        target_batch = target.sample(rng, config.batch_size, config.augment).to(device)
        return source_batch, target_batch if method_class.uses_target else None

    for step in range(WARM_UP_STEPS):
        method.train_step(*batches(step))
    _synchronise(device)
    started = time.perf_counter()
    for step in range(args.steps):
        method.train_step(*batches(WARM_UP_STEPS + step))
    _synchronise(device)
    steps_per_s = args.steps / (time.perf_counter() - started)

    checkpoint = Checkpoint(
        method=args.method,
        method_config=config.to_dict(),
        label_map=spec.label_map.to_dict(),
        preprocess=preprocess.to_dict(),
        state=method.state_dict(),
        step=WARM_UP_STEPS + args.steps,
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
        "method": args.method,
        "preset": args.preset,
        "overrides": parse_settings(args.set),
        "batch_size": config.batch_size,
        "train_steps_per_s": round(steps_per_s, 3),
        "inference_s_per_volume": round(float(np.mean(seconds)), 3),
        "slices_per_volume": round(float(np.mean([image.GetSize()[2] for image in images])), 1),
        "peak_memory_mib": round(_peak_memory_mib(device), 1),
        "threads": torch.get_num_threads(),
        "machine": machine_description(args.device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MS-CMRSeg folder (C0/ and LGE/)")
    parser.add_argument("--method", default="source_only")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--volumes", type=int, default=5)
    parser.add_argument("--device", default="auto")
    result = measure(parser.parse_args())
    print(
        f"| {result['method']} ({result['preset']}, batch {result['batch_size']}) | {result['train_steps_per_s']} | "
        f"{result['inference_s_per_volume']} | {result['peak_memory_mib']} | {result['threads']} |"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
