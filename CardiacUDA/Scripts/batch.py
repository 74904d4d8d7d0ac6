"""Headless CardiacUDA: adapt a segmentation model to target volumes and write the results as files.

In Slicer (no window, no dialog)::

    Slicer --no-main-window --python-script CardiacUDA/Scripts/batch.py \\
        --source IMG --source-seg SEG [--source IMG --source-seg SEG ...] [--source-dir DIR ...] \\
        --target IMG [--target IMG ...] --method KEY \\
        [--preset fast] [--iterations N] [--set key=value ...] [--weights FILE] [--device auto] --out DIR

With plain Python and the ``slicer-core`` wheel: ``python CardiacUDA/Scripts/batch.py`` and the same
arguments. The labelled source is any number of volumes: ``--source IMG --source-seg SEG`` pairs
(repeated; the n-th ``--source-seg`` labels the n-th ``--source``) and folders of labelled cases
(``--source-dir``, repeated: ``<case>.nii.gz`` with ``<case>_manual.nii.gz``, or ``<case>_image.*`` with
``<case>_label.*``); each volume keeps its own geometry. Without ``--weights`` it trains KEY (running
the same command again resumes a stopped training from ``DIR/run``); with ``--weights`` of method KEY
it segments with them as they are, and with ``--method adabn`` and a ``source_only`` checkpoint it
adapts them instantly (neither reads a source). Every target's segmentation is written to
``DIR/<target>.seg.nrrd``, the translated first source (for methods that translate) to
``DIR/<source>_translated.nrrd``. Exit code 0 on success, 1 with a message on failure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the module folder: CardiacUDASlicerLib

import slicer  # noqa: E402
from CardiacUDASlicerLib.adaptation import (  # noqa: E402
    WORK_DIR,
    AdaptationInputs,
    choose_mode,
    import_results,
    prepare_run,
    target_nodes_by_case,
)
from CardiacUDASlicerLib.jobrunner import WorkerUnavailableError  # noqa: E402
from CardiacUDASlicerLib.mrml import MrmlContext, application_context  # noqa: E402
from CardiacUDASlicerLib.segmentations import save_segmentation  # noqa: E402
from CardiacUDASlicerLib.sources import SourcePair, load_source_folder, load_source_pair  # noqa: E402
from CardiacUDASlicerLib.volumes import image_from_volume_node, load_volume_file  # noqa: E402

from CardiacUDALib.arguments import ExitOneParser, output_folder  # noqa: E402
from CardiacUDALib.atomic import check_writable_folder  # noqa: E402
from CardiacUDALib.errors import CardiacUDAError, InputDataError  # noqa: E402
from CardiacUDALib.io import write_image  # noqa: E402

EXIT_SUCCESS = 0
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = ExitOneParser(prog="batch.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        action="append",
        default=[],
        help="labelled source image (repeat; needed unless --weights segment or adapt)",
    )
    parser.add_argument(
        "--source-seg",
        type=Path,
        action="append",
        default=[],
        help="segmentation of the --source of the same rank: .seg.nrrd or a label image (repeat)",
    )
    parser.add_argument(
        "--source-dir",
        type=Path,
        action="append",
        default=[],
        help="folder of labelled source cases, each image with its label map (repeat)",
    )
    parser.add_argument("--target", type=Path, action="append", required=True, help="target image (repeat)")
    parser.add_argument("--method", required=True, help="method key (cardiac-uda methods lists them)")
    parser.add_argument("--preset", default="paper", help="method preset, e.g. 'fast' for a CPU demo")
    parser.add_argument("--iterations", type=int, help="training iterations (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting")
    parser.add_argument("--size", type=int, help="network slice size in pixels (default: the library's)")
    parser.add_argument(
        "--weights", type=Path, help="trained checkpoint: segment with it, or adapt it (adabn)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=lambda text: Path(output_folder(text)), required=True, help="output folder"
    )
    return parser


def print_event(event: dict) -> None:
    """One line per event, so a log file of a long run says where it is."""
    kind = event.get("event")
    if kind == "progress":
        losses = " ".join(f"{name} {value:.3g}" for name, value in event.get("losses", {}).items())
        eta = f" eta {event['eta_s']:.0f} s" if event.get("eta_s") is not None else ""
        print(f"{event.get('case', 'step')} {event['step']}/{event['total']} {losses}{eta}", flush=True)
    elif kind in ("status", "log"):
        print(event["message"], flush=True)
    elif kind == "warning":
        print(f"warning: {event['message']}", flush=True)
    elif kind == "validation":
        print("validation Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in event["dice"].items()), flush=True)


def load_sources(args: argparse.Namespace, context: MrmlContext) -> list[SourcePair]:
    """The ``--source``/``--source-seg`` pairs (by rank), then the cases of every ``--source-dir``."""
    if len(args.source) != len(args.source_seg):
        raise InputDataError(
            f"--source is given {len(args.source)} time(s) and --source-seg {len(args.source_seg)} time(s): "
            "give one --source-seg per --source, in the same order"
        )
    pairs = [
        load_source_pair(context.scene, image, segmentation, context.segmentations_logic)
        for image, segmentation in zip(args.source, args.source_seg)
    ]
    for folder in args.source_dir:
        pairs.extend(load_source_folder(context.scene, folder, context.segmentations_logic))
    return pairs


def run(args: argparse.Namespace) -> list[Path]:
    """Load the inputs, run the jobs through the worker, write the results; returns the files written."""
    from CardiacUDASlicerLib.catalog import describe_checkpoint
    from CardiacUDASlicerLib.execution import RunExecution

    check_writable_folder(args.out, "--out")
    context = application_context()
    if hasattr(slicer, "app"):  # inside Slicer: install what is missing, never asking
        from CardiacUDASlicerLib.dependencies import ensure_dependencies

        ensure_dependencies(confirm=None)
    from CardiacUDALib.arguments import parse_settings
    from CardiacUDALib.jobs import TrainJob
    from CardiacUDALib.preprocess import MEDIAN_SOURCE_SPACING, PreprocessConfig

    inputs = AdaptationInputs(
        sources=load_sources(args, context),
        target_volumes=[load_volume_file(context.scene, path) for path in args.target],
    )
    settings = parse_settings(args.set)
    if args.iterations and "iterations" in settings:
        raise InputDataError(
            "iterations is given twice (--iterations and --set iterations=...): give it once"
        )
    job = TrainJob(
        method=args.method,
        out_dir=WORK_DIR,
        preset=args.preset,
        overrides={**settings, **({"iterations": args.iterations} if args.iterations else {})},
        device=args.device,
        seed=args.seed,
        initial_checkpoint=args.weights,
        preprocess=PreprocessConfig(
            in_plane_spacing=MEDIAN_SOURCE_SPACING, **({} if args.size is None else {"size": args.size})
        ),
    )
    mode = choose_mode(args.method, None if args.weights is None else describe_checkpoint(args.weights))
    run_folder, out_existed = args.out / "run", args.out.exists()
    fresh = not run_folder.exists()
    try:
        adaptation = prepare_run(inputs, job, mode, run_folder, context.segmentations_logic)
        execution = RunExecution(adaptation)
        execution.start()
        outcome = execution.wait(print_event)
        if outcome.error is not None and outcome.exit_code in (None, EXIT_FAILURE):
            raise InputDataError(outcome.error)  # refused: an input or setting the user can fix
        if outcome.error is not None:
            raise CardiacUDAError(f"{outcome.error} (the run's log: {run_folder / 'jobs'})")
    except InputDataError:
        if fresh and not any(run_folder.rglob("*.pt")):  # a new run refused before any checkpoint
            shutil.rmtree(run_folder, ignore_errors=True)
            if not out_existed and args.out.is_dir() and not any(args.out.iterdir()):
                args.out.rmdir()
        raise
    if outcome.stopped:
        raise CardiacUDAError("stopped before the end; run the same command again to resume")
    imported = import_results(
        adaptation,
        context.scene,
        context.segmentations_logic,
        target_nodes_by_case(adaptation, inputs.target_volumes),
    )
    written = [
        save_segmentation(node, args.out / f"{case}.seg.nrrd")
        for case, node in imported.segmentations.items()
    ]
    for case, node in imported.translations.items():
        written.append(write_image(image_from_volume_node(node), args.out / f"{case}_translated.nrrd"))
    return written


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = run(args)
    except (CardiacUDAError, WorkerUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    for path in written:
        print(f"wrote {path}", flush=True)
    return EXIT_SUCCESS


sys.exit(main(sys.argv[1:]))
