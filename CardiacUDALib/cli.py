"""The ``cardiac-uda`` command: methods, phantom, train, segment, translate, evaluate, compare, demo,
benchmark, models.

Argument parsing and calls: every subcommand that has a job task builds its job
(:mod:`CardiacUDALib.jobs`) and runs it with :func:`~CardiacUDALib.engine.run_job`, the path the
worker and the Slicer module take, so the three behave alike. Progress events become a tqdm bar on
standard error (:mod:`CardiacUDALib.console`); results (paths, tables) go to standard output. A
:class:`~CardiacUDALib.errors.CardiacUDAError` prints ``error: <message>`` and exits with 1; Ctrl-C during training saves ``last.pt``, says how to resume, and exits with 130.

Torch is imported only inside the subcommands, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from CardiacUDALib.arguments import (
    cases_from_arguments,
    existing_path,
    match_predictions,
    parse_settings,
    prediction_files,
)
from CardiacUDALib.cases import find_cases
from CardiacUDALib.cli_parser import DEMO_DEFAULT_METHOD, PROGRAM, build_parser
from CardiacUDALib.console import RESUME_HINT, StoppedByUser, run_stoppable
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.jobs import EvaluateJob, SegmentJob, TrainJob, TranslateJob, label_map_from_json
from CardiacUDALib.preprocess import PreprocessConfig

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
PARTIAL_HINT = "the {} written so far are complete; run the same command again for all"
RESUME_DOWNLOAD_HINT = "run the same command again to resume the download"


# ---- subcommands ---------------------------------------------------------------------------------


def command_methods(args: argparse.Namespace) -> int:
    from CardiacUDALib.methods import METHODS

    width = max(len(key) for key in METHODS)
    for key, method in METHODS.items():
        print(f"{key:<{width}}  {method.description}")
        print(
            f"{'':<{width}}  presets: {', '.join(method.presets)}; target images: "
            f"{'needed' if method.uses_target else 'not needed'}; translates images: "
            f"{'yes' if method.can_translate else 'no'}"
        )
    return 0


def command_phantom(args: argparse.Namespace) -> int:
    from CardiacUDALib.phantom import write_phantom_dataset

    dataset = write_phantom_dataset(args.out, args.subjects, args.seed, args.size)
    print(f"wrote {len(dataset.source)} source and {len(dataset.target)} target cases to {dataset.root}")
    print(f"  source (labelled):             {dataset.root / 'source'}")
    print(f"  target (labels for evaluation): {dataset.root / 'target'}")
    return 0


def _train_job(args: argparse.Namespace, method: str, out: str) -> TrainJob:
    """The settings that ``train`` and ``benchmark`` share, as a train job without cases."""
    return TrainJob(
        method=method,
        out_dir=Path(out),
        preset=args.preset,
        overrides=parse_settings(args.set),
        device=args.device,
        seed=args.seed,
        initial_checkpoint=None if args.init is None else existing_path(args.init, "--init"),
        stages=["adabn"] if args.adabn else [],
        largest_component=not args.no_largest_component,
        empty_without_heart=not args.keep_without_heart,
        flip_averaging=not args.no_flip_averaging,
    )


def command_train(args: argparse.Namespace) -> int:
    from CardiacUDALib.engine import run_job

    slice_axis: str | int = args.slice_axis if args.slice_axis == "auto" else int(args.slice_axis)
    target = cases_from_arguments(args.target, "--target", labelled=False)
    job = dataclasses.replace(
        _train_job(args, args.method, args.out),
        source=cases_from_arguments(args.source, "--source", labelled=True),
        target=target,
        validation=cases_from_arguments(args.validation, "--validation", labelled=True),
        label_map=label_map_from_json(args.label_map),
        preprocess=PreprocessConfig(
            slice_axis=slice_axis, in_plane_spacing=args.spacing, size=args.size, intensity=args.intensity
        ),
        resume=not args.no_resume,
        segment=target if args.segment_target else [],
    )
    result = run_stoppable(lambda emit, stop: run_job(job, emit, stop), RESUME_HINT)
    if not _is_main_process():
        return 0
    print(f"best checkpoint: {result['best_checkpoint']} ({result['selection']})")
    if result["last_checkpoint"] is not None:
        print(f"last checkpoint: {result['last_checkpoint']} (step {result['steps']})")
    if result.get("segmentations"):
        print(f"target segmentations: {Path(result['segmentations'][0]).parent}")
    return 0


def _is_main_process() -> bool:
    """False on torchrun's ranks other than 0: they train their share and rank 0 reports."""
    from CardiacUDALib.distributed import this_process

    return this_process().is_main


def _segment_weights(args: argparse.Namespace) -> Path:
    """``segment``'s checkpoint: ``--checkpoint FILE``, or ``--model ID`` (downloaded if need be)."""
    return (
        existing_path(args.checkpoint, "--checkpoint") if args.model is None else _resolve(args, args.model)
    )


def command_segment(args: argparse.Namespace) -> int:
    from CardiacUDALib.engine import run_job

    job = SegmentJob(
        _segment_weights(args),
        cases_from_arguments(args.images, "--images", labelled=False),
        Path(args.out),
        args.device,
        amp=not args.no_amp,
        largest_component=not args.no_largest_component,
        empty_without_heart=not args.keep_without_heart,
        flip_averaging=not args.no_flip_averaging,
    )
    result = run_stoppable(lambda emit, stop: run_job(job, emit, stop), PARTIAL_HINT.format("segmentations"))
    print(f"wrote {len(result['segmentations'])} segmentation(s) to {args.out}")
    return 0


def command_translate(args: argparse.Namespace) -> int:
    from CardiacUDALib.engine import run_job

    job = TranslateJob(
        existing_path(args.checkpoint, "--checkpoint"),
        cases_from_arguments(args.images, "--images", labelled=False),
        Path(args.out),
        args.device,
        amp=not args.no_amp,
    )
    result = run_stoppable(lambda emit, stop: run_job(job, emit, stop), PARTIAL_HINT.format("translations"))
    print(f"wrote {len(result['translations'])} translated image(s) to {args.out}")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    from CardiacUDALib.engine import run_job
    from CardiacUDALib.report import comparison_markdown

    predictions = prediction_files(args.predictions)
    references, missing = match_predictions(
        predictions, find_cases(existing_path(args.references, "--references")), args.allow_missing
    )
    job = EvaluateJob(predictions, references, label_map_from_json(args.label_map), Path(args.out))
    result = run_job(job)
    print(comparison_markdown({"predictions": result["summary"]}), end="")
    print(f"scored {len(references)} of {len(references) + len(missing)} reference case(s)")
    if missing:
        print(f"warning: not scored, no prediction: {', '.join(missing)}", file=sys.stderr)
    print(f"per-volume scores: {result['csv']}, {result['json']}")
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from CardiacUDALib.demo import run_demo
    from CardiacUDALib.methods import METHODS

    default = DEMO_DEFAULT_METHOD if DEMO_DEFAULT_METHOD in METHODS else None
    method = args.method if args.method is not None else default
    overrides = parse_settings(args.set)
    summary = run_stoppable(
        lambda emit, stop: run_demo(
            args.out, method, args.preset, args.subjects, args.seed, args.device, emit, stop, overrides
        ),
        RESUME_HINT,
    )
    for key, entry in summary["methods"].items():
        print(f"{key}: mean test Dice {entry['mean_dice']:.3f} ({entry['selection']})")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def command_benchmark(args: argparse.Namespace) -> int:
    from CardiacUDALib.benchmark import DATA_ENVIRONMENT_VARIABLE, run_benchmark

    data = args.data or os.environ.get(DATA_ENVIRONMENT_VARIABLE)
    if not data:
        raise InputDataError(
            f"give the data folder with --data DIR or the {DATA_ENVIRONMENT_VARIABLE} variable"
        )
    job = _train_job(args, args.method, args.out)
    command_line = shlex.join([PROGRAM, *args.argv])
    summary = run_stoppable(
        lambda emit, stop: run_benchmark(data, job, args.split, args.dataset, command_line, emit, stop),
        RESUME_HINT,
    )
    if not _is_main_process():
        return 0
    entry = summary["methods"][args.method]
    print(f"{args.method}: mean test Dice {entry['mean_dice']:.3f} ({entry['selection']})")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from CardiacUDALib.compare import segment_and_compare

    checkpoints = [existing_path(path, "--checkpoint") for path in args.checkpoint]
    checkpoints += [_resolve(args, model_id) for model_id in args.model]
    cases = cases_from_arguments(args.target, "--target", labelled=False)
    outcome = run_stoppable(
        lambda emit, stop: segment_and_compare(
            checkpoints,
            cases,
            Path(args.out),
            args.device,
            amp=not args.no_amp,
            largest_component=not args.no_largest_component,
            empty_without_heart=not args.keep_without_heart,
            flip_averaging=not args.no_flip_averaging,
            emit=emit,
            should_stop=stop,
        ),
        PARTIAL_HINT.format("segmentations"),
    )
    print(outcome["table"].markdown(), end="")
    for name, folder in outcome["results"].items():
        print(f"{name}: segmentations in {folder}")
    print(f"reliability maps and agreement.csv / .json / .md: {args.out}")
    return 0


class _DownloadBar:
    """A tqdm bar of bytes on standard error, opened by the first progress call of a download."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc=self.name
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _resolve(args: argparse.Namespace, model_id: str) -> Path:
    """The local file of a manifest model, downloaded with a byte bar when need be.

    Ctrl-C keeps the partial download and says how to resume.
    """
    from CardiacUDALib.checkpoint import check_manifest_entry
    from CardiacUDALib.weights import resolve_model

    manifest = _manifest(args)
    bar = _DownloadBar(model_id)
    try:
        path = resolve_model(model_id, manifest, progress=bar)
    except KeyboardInterrupt:
        raise StoppedByUser(f"download of {model_id!r} stopped; {RESUME_DOWNLOAD_HINT}") from None
    finally:
        bar.close()
    check_manifest_entry(path, manifest.entry(model_id))
    return path


def _manifest(args: argparse.Namespace) -> Any:
    from CardiacUDALib.weights import load_manifest

    return load_manifest(None if args.manifest is None else Path(args.manifest))


def _models_list(args: argparse.Namespace) -> None:
    from CardiacUDALib.weights import model_path

    manifest = _manifest(args)
    if not manifest.models:
        print("the manifest lists no model")
        return
    rows = [("id", "title", "method", "source -> target", "mean Dice", "size", "local")]
    for entry in manifest.models:
        dice = entry.measured.get("mean_dice")
        rows.append(
            (
                entry.id,
                entry.title,
                entry.method,
                f"{entry.source_modality} -> {entry.target_modality}",
                f"{dice:.3f}" if isinstance(dice, (int, float)) else "-",
                f"{entry.size_bytes / 2**20:.1f} MB",
                "yes" if model_path(entry) else "no",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _models_fetch(args: argparse.Namespace) -> None:
    print(_resolve(args, args.id))


def _models_import(args: argparse.Namespace) -> None:
    from CardiacUDALib.checkpoint import check_manifest_entry
    from CardiacUDALib.weights import entry_for_file, import_file

    manifest = _manifest(args)
    path = existing_path(args.file, "FILE")
    if not path.is_file():
        raise InputDataError(f"cannot import {path}: it is a folder; give the model file (.pt)")
    entry = manifest.entry(args.id) if args.id else entry_for_file(manifest, path)
    if entry is None:
        raise InputDataError(
            f"{path} is no model of the manifest (no SHA-256 matches); give --id ID to say which"
        )
    check_manifest_entry(path, entry)
    print(import_file(path, entry))


def _models_path(args: argparse.Namespace) -> None:
    from CardiacUDALib.weights import model_path

    path = model_path(_manifest(args).entry(args.id))
    if path is None:
        raise InputDataError(
            f"model {args.id!r} is not on this computer: `cardiac-uda models fetch {args.id}` downloads it, "
            f"`cardiac-uda models import FILE --id {args.id}` copies a file you have"
        )
    print(path)


def _models_remove(args: argparse.Namespace) -> None:
    from CardiacUDALib.weights import cache_dir, remove

    removed = remove(_manifest(args).entry(args.id))
    print(f"{'removed' if removed else 'no cached file of'} {args.id!r} in {cache_dir()}")


def _models_clear(args: argparse.Namespace) -> None:
    from CardiacUDALib.weights import cache_dir, clear

    print(f"removed {clear()} file(s) from {cache_dir()}")


MODEL_ACTIONS = {
    "list": _models_list,
    "fetch": _models_fetch,
    "import": _models_import,
    "path": _models_path,
    "remove": _models_remove,
    "clear": _models_clear,
}


def command_models(args: argparse.Namespace) -> int:
    MODEL_ACTIONS[args.models_command](args)
    return 0


COMMANDS = {
    "methods": command_methods,
    "phantom": command_phantom,
    "train": command_train,
    "segment": command_segment,
    "translate": command_translate,
    "evaluate": command_evaluate,
    "demo": command_demo,
    "benchmark": command_benchmark,
    "models": command_models,
    "compare": command_compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    args.argv = arguments
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a reader that has gone is caught below, not at exit
        return code
    except StoppedByUser as stopped:
        print(str(stopped), file=sys.stderr)
        return EXIT_INTERRUPTED
    except CardiacUDAError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output has gone (`cardiac-uda methods | head -1`): as other command-line
        # tools, stop quietly; standard output goes nowhere from now on, so that exiting flushes nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
