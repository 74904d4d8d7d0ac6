"""The ``cardiac-uda`` command: methods, phantom, train, segment, translate, evaluate, demo, benchmark.

Every subcommand that has a job task builds a job dictionary and runs it with
:func:`~CardiacUDALib.jobs.run_job`, the path the worker and the Slicer module take, so the three
behave alike. Progress events become a tqdm bar on standard error; results (paths, tables) go to
standard output. A :class:`~CardiacUDALib.errors.CardiacUDAError` prints ``error: <message>`` and
exits with 1; Ctrl-C during training saves ``last.pt``, says how to resume, and exits with 130.

Torch is imported only inside the subcommands, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from CardiacUDALib.atomic import full_suffix
from CardiacUDALib.cases import (
    IMAGE_EXTENSIONS,
    SEGMENTATION_TAG,
    VolumeCase,
    case_name_of,
    case_name_of_output,
    check_unique_names,
    find_cases,
    stem_of,
)
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.preprocess import INTENSITY_PRESETS, PreprocessConfig

PROGRAM = "cardiac-uda"
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
DEMO_DEFAULT_METHOD = "adabn"
PAIR_SEPARATOR = "="


# ---- progress ------------------------------------------------------------------------------------


class ProgressPrinter:
    """Shows engine events: a tqdm bar for progress, lines above it for status and validation."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._progress(event)
        elif kind == "status":
            tqdm.write(str(event["message"]), file=sys.stderr)
        elif kind == "validation":
            scores = ", ".join(f"{name} {value:.3f}" for name, value in event["dice"].items())
            after = f" after {event['after']}" if event.get("after") else ""
            tqdm.write(f"validation Dice at step {event['step']}{after}: {scores}", file=sys.stderr)
        elif kind == "trained":
            self.close()
            tqdm.write(f"trained: {event['selection']}", file=sys.stderr)

    def _progress(self, event: dict[str, Any]) -> None:
        total, step = int(event["total"]), int(event["step"])
        if self.bar is None or self.bar.total != total or step < self.bar.n:
            self.close()
            self.bar = tqdm(total=total, file=sys.stderr, unit="step" if event.get("losses") else "volume")
        self.bar.update(step - self.bar.n)
        if event.get("case"):
            self.bar.set_description(str(event["case"]))
        if event.get("losses"):
            self.bar.set_postfix({name: f"{value:.3g}" for name, value in event["losses"].items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class InterruptToStop:
    """The first Ctrl-C asks the engine to stop after the current step (saving ``last.pt``); a second aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> InterruptToStop:
        self.previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "stopping after this step and saving the last checkpoint (Ctrl-C again aborts at once)",
            file=sys.stderr,
        )

    def __call__(self) -> bool:
        return self.requested


class StoppedByUser(CardiacUDAError):
    """Training stopped on Ctrl-C with its last checkpoint saved."""


RESUME_HINT = "the last checkpoint is saved: run the same command again to resume"


def _run_stoppable(
    work: Callable[[Callable[[dict[str, Any]], None], Callable[[], bool]], Any], stopped_message: str
) -> Any:
    """Run ``work(emit, should_stop)`` with the progress bar, turning Ctrl-C into a clean stop.

    A run that ends after Ctrl-C (with a result or with the engine's "stopped" error) raises
    :class:`StoppedByUser` with ``stopped_message``, so the command exits with 130 and says what to do.
    """
    printer = ProgressPrinter()
    with InterruptToStop() as stop:
        try:
            result = work(printer, stop)
        except CardiacUDAError as error:
            if stop.requested:
                raise StoppedByUser(f"{error}; {stopped_message}") from error
            raise
        finally:
            printer.close()
    if stop.requested:
        raise StoppedByUser(f"stopped on Ctrl-C; {stopped_message}")
    return result


# ---- inputs --------------------------------------------------------------------------------------


def _existing(path_text: str, option: str) -> Path:
    path = Path(path_text)
    if not path.exists():
        raise InputDataError(f"{option}: {path} does not exist")
    return path


def _image_and_label(item: str) -> tuple[str, str | None]:
    """An existing path is an image on its own; anything else is ``IMAGE=LABEL`` (split at the last ``=``)."""
    if Path(item).exists() or PAIR_SEPARATOR not in item:
        return item, None
    image, _, label = item.rpartition(PAIR_SEPARATOR)
    return image, label


def cases_from_arguments(items: Sequence[str], option: str, labelled: bool) -> list[VolumeCase]:
    """Folders expand to their cases; a file is one image, given as ``IMAGE=LABEL`` where labels are needed.

    Without ``labelled`` every label is dropped, even one found beside a target image: an adaptation
    method must never train on target labels.
    """
    from CardiacUDALib.io import is_dicom_series_folder

    cases: list[VolumeCase] = []
    for item in items:
        if Path(item).is_dir() and not is_dicom_series_folder(Path(item)):
            cases += [c if labelled else VolumeCase(c.name, c.image) for c in find_cases(item, labelled)]
            continue
        image_text, label_text = _image_and_label(item)
        image = _existing(image_text, option)
        if labelled and label_text is None:
            raise InputDataError(
                f"{option}: {image} is a file without its label map; give it as IMAGE{PAIR_SEPARATOR}LABEL "
                "or give a folder of cases"
            )
        label = _existing(label_text, option) if labelled and label_text is not None else None
        cases.append(VolumeCase(case_name_of(image), image, label))
    return check_unique_names(cases, option)


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is JSON when it parses (numbers, booleans, lists), else a string."""
    settings: dict[str, Any] = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key.strip():
            raise InputDataError(f"--set {item!r}: write it as key=value, e.g. --set iterations=200")
        try:
            settings[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            settings[key.strip()] = text
    return settings


def _preprocess_from(args: argparse.Namespace) -> PreprocessConfig:
    slice_axis: str | int = args.slice_axis if args.slice_axis == "auto" else int(args.slice_axis)
    return PreprocessConfig(
        slice_axis=slice_axis, in_plane_spacing=args.spacing, size=args.size, intensity=args.intensity
    )


def _prediction_files(items: Sequence[str]) -> list[Path]:
    """Folders give their ``*_seg.<ext>`` files; files are taken as given."""
    files: list[Path] = []
    for item in items:
        path = _existing(item, "--predictions")
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if full_suffix(p).lower() in IMAGE_EXTENSIONS and stem_of(p).endswith(SEGMENTATION_TAG)
            )
            if not found:
                raise InputDataError(f"--predictions: no <case>{SEGMENTATION_TAG}.nii.gz file in {path}")
            files += found
        else:
            files.append(path)
    return files


def match_predictions(
    predictions: Sequence[Path], references: Sequence[VolumeCase], allow_missing: bool = False
) -> tuple[list[VolumeCase], list[str]]:
    """The reference case of each prediction ``<case>_seg.<ext>`` (or ``<case>.<ext>``), by case name,
    and the names of the reference cases without a prediction (an error unless ``allow_missing``)."""
    by_name = {case.name: case for case in references}
    matched: dict[str, Path] = {}
    unmatched = []
    for path in predictions:
        name = case_name_of_output(path, SEGMENTATION_TAG)
        if name not in by_name:
            unmatched.append(path.name)
        elif name in matched:
            raise InputDataError(f"two predictions for case {name}: {matched[name]} and {path}; give one")
        else:
            matched[name] = path
    if unmatched:
        raise InputDataError(
            f"no reference case for prediction(s) {', '.join(unmatched)}; predictions must be named "
            f"<case>{SEGMENTATION_TAG}.nii.gz after a reference case ({', '.join(sorted(by_name))})"
        )
    missing = [name for name in by_name if name not in matched]
    if missing and not allow_missing:
        raise InputDataError(
            f"no prediction for {len(missing)} of {len(by_name)} reference case(s): {', '.join(missing)}; "
            "segment them too, or add --allow-missing to score only the cases that have one"
        )
    return [by_name[case_name_of_output(path, SEGMENTATION_TAG)] for path in predictions], missing


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


def command_train(args: argparse.Namespace) -> int:
    from CardiacUDALib.io import parse_label_map
    from CardiacUDALib.jobs import run_job
    from CardiacUDALib.training import TrainRequest

    target = cases_from_arguments(args.target, "--target", labelled=False)
    request = TrainRequest(
        method=args.method,
        out_dir=Path(args.out),
        source=cases_from_arguments(args.source, "--source", labelled=True),
        target=target,
        validation=cases_from_arguments(args.validation, "--validation", labelled=True),
        label_map=parse_label_map(args.label_map),
        preprocess=_preprocess_from(args),
        preset=args.preset,
        overrides=parse_settings(args.set),
        device=args.device,
        seed=args.seed,
        resume=not args.no_resume,
        initial_checkpoint=None if args.init is None else _existing(args.init, "--init"),
        adabn=args.adabn,
    )
    job = {
        "task": "train",
        **request.to_dict(),
        "segment": [case.to_dict() for case in target] if args.segment_target else [],
    }
    result = _run_stoppable(lambda emit, stop: run_job(job, emit, stop), RESUME_HINT)
    print(f"best checkpoint: {result['best_checkpoint']} ({result['selection']})")
    print(f"last checkpoint: {result['last_checkpoint']} (step {result['steps']})")
    if result.get("segmentations"):
        print(f"target segmentations: {Path(result['segmentations'][0]).parent}")
    return 0


def _inference_job(task: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "task": task,
        "checkpoint": str(_existing(args.checkpoint, "--checkpoint")),
        "cases": [case.to_dict() for case in cases_from_arguments(args.images, "--images", labelled=False)],
        "out_dir": args.out,
        "device": args.device,
    }


def command_segment(args: argparse.Namespace) -> int:
    from CardiacUDALib.jobs import run_job

    job = {**_inference_job("segment", args), "largest_component": not args.no_largest_component}
    result = _run_stoppable(
        lambda emit, stop: run_job(job, emit, stop),
        "the segmentations written so far are complete; run the same command again for all",
    )
    print(f"wrote {len(result['segmentations'])} segmentation(s) to {args.out}")
    return 0


def command_translate(args: argparse.Namespace) -> int:
    from CardiacUDALib.jobs import run_job

    job = _inference_job("translate", args)
    result = _run_stoppable(
        lambda emit, stop: run_job(job, emit, stop),
        "the translations written so far are complete; run the same command again for all",
    )
    print(f"wrote {len(result['translations'])} translated image(s) to {args.out}")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    from CardiacUDALib.jobs import run_job
    from CardiacUDALib.report import comparison_markdown

    predictions = _prediction_files(args.predictions)
    references, missing = match_predictions(
        predictions, find_cases(_existing(args.references, "--references")), args.allow_missing
    )
    job = {
        "task": "evaluate",
        "predictions": [str(p) for p in predictions],
        "references": [case.to_dict() for case in references],
        "label_map": args.label_map,
        "out_dir": args.out,
    }
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

    method = (
        args.method
        if args.method is not None
        else (DEMO_DEFAULT_METHOD if DEMO_DEFAULT_METHOD in METHODS else None)
    )
    summary = _run_stoppable(
        lambda emit, stop: run_demo(
            args.out,
            method,
            args.preset,
            args.subjects,
            args.seed,
            args.device,
            emit,
            stop,
            parse_settings(args.set),
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
    command_line = shlex.join([PROGRAM, *args.argv])
    summary = _run_stoppable(
        lambda emit, stop: run_benchmark(
            data,
            args.method,
            args.out,
            args.preset,
            parse_settings(args.set),
            args.split,
            args.device,
            args.seed,
            emit,
            stop,
            dataset=args.dataset,
            command_line=command_line,
            adabn=args.adabn,
            initial_checkpoint=None if args.init is None else _existing(args.init, "--init"),
        ),
        RESUME_HINT,
    )
    entry = summary["methods"][args.method]
    print(f"{args.method}: mean test Dice {entry['mean_dice']:.3f} ({entry['selection']})")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


# ---- parser --------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _phantom_size(text: str) -> int:
    from CardiacUDALib.phantom import MIN_SIZE

    value = int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE}, got {value}")
    return value


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda or cuda:N (default: auto)",
    )


def _add_training_options(parser: argparse.ArgumentParser, default_preset: str) -> None:
    parser.add_argument(
        "--preset", default=default_preset, help=f"settings preset: paper or fast (default: {default_preset})"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting of the method, e.g. --set iterations=2000 --set learning_rate=2e-4 "
        "(values parse as JSON when they can: numbers, true/false)",
    )
    _add_device(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _subparser(
    subparsers: argparse._SubParsersAction, name: str, summary: str, *examples: str
) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


_PAIR_HELP = (
    "a folder of cases (<case>.nii.gz with <case>_manual.nii.gz, or <case>_image/_label), "
    f"or files given as IMAGE{PAIR_SEPARATOR}LABEL"
)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = _subparser(
        subparsers,
        "train",
        "Train a segmentation model on a labelled source, adapted to unlabelled target images.",
        "cardiac-uda train --method adabn --source phantom/source --target phantom/target --validation "
        "phantom/target/case000_image.nii.gz=phantom/target/case000_label.nii.gz --label-map mscmrseg "
        "--out runs/adabn --preset fast",
        "cardiac-uda train --method source_only --source ct1.nii.gz=ct1_seg.nii.gz ct2.nii.gz=ct2_seg.nii.gz "
        '--label-map "205:MYO,420:LA,500:LV,820:AA" --out runs/ct --set iterations=2000',
    )
    parser.add_argument("--method", required=True, help="method key (see `cardiac-uda methods`)")
    parser.add_argument(
        "--source", nargs="+", required=True, metavar="INPUT", help=f"labelled source: {_PAIR_HELP}"
    )
    parser.add_argument(
        "--target",
        nargs="+",
        default=[],
        metavar="INPUT",
        help="target images: folders or image files; labels found there are never used for training",
    )
    parser.add_argument(
        "--validation",
        nargs="+",
        default=[],
        metavar="INPUT",
        help=f"labelled validation set to choose the best checkpoint: {_PAIR_HELP}",
    )
    parser.add_argument(
        "--label-map",
        required=True,
        help="label values in the files: mscmrseg (200/500/600), mmwhs, or value:name pairs such as "
        '"200:MYO,500:LV,600:RV"',
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (checkpoints, history)")
    _add_training_options(parser, "paper")
    parser.add_argument("--size", type=int, default=192, help="network input size in pixels (default: 192)")
    parser.add_argument(
        "--intensity",
        default="percentile_zscore",
        choices=INTENSITY_PRESETS,
        help="intensity normalisation (default: percentile_zscore; a method may set its own)",
    )
    parser.add_argument(
        "--slice-axis",
        default="auto",
        choices=["auto", "0", "1", "2"],
        help="axis to slice along; auto = the largest spacing (default: auto)",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        default=None,
        metavar="MM",
        help="resample in-plane to this spacing (default: none)",
    )
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if RUN_DIR holds a run")
    parser.add_argument(
        "--init", metavar="CHECKPOINT", help="start from these weights (e.g. a source-only model)"
    )
    parser.add_argument(
        "--segment-target",
        action="store_true",
        help="segment the target images with the best checkpoint at the end",
    )
    parser.add_argument(
        "--adabn",
        action="store_true",
        help="finish by re-estimating BatchNorm statistics on the target images",
    )
    parser.set_defaults(handler=command_train)


def _add_inference(subparsers: argparse._SubParsersAction, task: str) -> None:
    if task == "segment":
        summary = (
            "Segment volumes with a trained checkpoint (writes <case>_seg.nii.gz with the label values)."
        )
    else:
        summary = "Translate source volumes to the target appearance (methods with a generator)."
    parser = _subparser(
        subparsers,
        task,
        summary,
        f"cardiac-uda {task} --checkpoint runs/adabn/checkpoints/best.pt --images phantom/target --out {task}ed",
    )
    parser.add_argument("--checkpoint", required=True, metavar="FILE", help="a checkpoint (.pt) from train")
    parser.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="INPUT",
        help="image files or folders of cases (labels ignored)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_device(parser)
    if task == "segment":
        parser.add_argument(
            "--no-largest-component",
            action="store_true",
            help="keep every connected component (default: only the largest per structure)",
        )
        parser.set_defaults(handler=command_segment)
    else:
        parser.set_defaults(handler=command_translate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Unsupervised cross-modality domain adaptation of cardiac segmentation.",
        epilog="start with:\n  cardiac-uda demo            (a complete run on a synthetic phantom)\n"
        "  cardiac-uda <command> --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")

    methods = _subparser(
        subparsers, "methods", "List the adaptation methods and their presets.", "cardiac-uda methods"
    )
    methods.set_defaults(handler=command_methods)

    phantom = _subparser(
        subparsers,
        "phantom",
        "Write a synthetic two-modality cardiac phantom (labelled bSSFP-like source, LGE-like target).",
        "cardiac-uda phantom --out phantom --subjects 10",
    )
    phantom.add_argument("--out", required=True, metavar="DIR", help="output folder")
    phantom.add_argument("--subjects", type=_positive_int, required=True, help="subjects per domain")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    phantom.add_argument(
        "--size", type=_phantom_size, default=96, help="in-plane size in pixels (default: 96)"
    )
    phantom.set_defaults(handler=command_phantom)

    _add_train(subparsers)
    _add_inference(subparsers, "segment")
    _add_inference(subparsers, "translate")

    evaluate = _subparser(
        subparsers,
        "evaluate",
        "Score segmentations against reference label maps: per-volume 3D Dice, ASSD and HD95 in mm.",
        "cardiac-uda evaluate --predictions segmented --references phantom/target --label-map mscmrseg "
        "--out scores",
    )
    evaluate.add_argument(
        "--predictions",
        nargs="+",
        required=True,
        metavar="INPUT",
        help=f"<case>{SEGMENTATION_TAG}.nii.gz files, or folders holding them",
    )
    evaluate.add_argument("--references", required=True, metavar="DIR", help="folder of labelled cases")
    evaluate.add_argument("--label-map", required=True, help="mscmrseg, mmwhs or value:name pairs")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="where metrics.csv and metrics.json go")
    evaluate.add_argument(
        "--allow-missing",
        action="store_true",
        help="score the reference cases that have a prediction and name the others (default: an error)",
    )
    evaluate.set_defaults(handler=command_evaluate)

    demo = _subparser(
        subparsers,
        "demo",
        "Run no adaptation and an adaptation method on a synthetic phantom and write a report (CPU, minutes).",
        "cardiac-uda demo --out demo_out",
    )
    demo.add_argument(
        "--method",
        default=None,
        help=f"adaptation method to compare with source_only (default: {DEMO_DEFAULT_METHOD} when available; "
        "source_only runs the baseline alone)",
    )
    demo.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: demo_out)")
    demo.add_argument(
        "--subjects", type=_positive_int, default=10, help="phantom subjects per domain (default: 10)"
    )
    _add_training_options(demo, "fast")
    demo.set_defaults(handler=command_demo)

    benchmark = _subparser(
        subparsers,
        "benchmark",
        "Train, test and report a method on real data with the published protocol (MS-CMRSeg C0 -> LGE).",
        "cardiac-uda benchmark --dataset mscmrseg --data ../shared/data/mscmrseg19_c0_lge_192 "
        "--method source_only --out bench/source_only",
    )
    benchmark.add_argument("--dataset", default="mscmrseg", help="data set name (default: mscmrseg)")
    benchmark.add_argument(
        "--data", default=None, metavar="DIR", help="data folder (default: the CARDIACUDA_DATA variable)"
    )
    benchmark.add_argument("--method", required=True, help="method key (see `cardiac-uda methods`)")
    benchmark.add_argument(
        "--split",
        default="cross-domain",
        choices=["cross-domain", "in-domain"],
        help="cross-domain: C0 -> LGE protocol; in-domain: C0 train/test plus LGE test, source-only methods",
    )
    benchmark.add_argument("--out", required=True, metavar="DIR", help="output and run folder")
    benchmark.add_argument(
        "--adabn",
        action="store_true",
        help="finish by re-estimating BatchNorm statistics on the target images",
    )
    benchmark.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from these weights, e.g. `--method adabn --init bench/source_only/checkpoints/best.pt "
        "--set iterations=0` adapts a trained source model in seconds",
    )
    _add_training_options(benchmark, "paper")
    benchmark.set_defaults(handler=command_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    args.argv = arguments
    try:
        return args.handler(args)
    except StoppedByUser as stopped:
        print(str(stopped), file=sys.stderr)
        return EXIT_INTERRUPTED
    except CardiacUDAError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
