"""The ``cardiac-uda`` command's arguments: one subparser per subcommand, with examples in ``--help``.

The chosen subcommand is ``args.command``; :mod:`CardiacUDALib.cli` runs it. No torch here, so
``--help`` answers at once.
"""

from __future__ import annotations

import argparse

from CardiacUDALib.arguments import (
    PAIR_SEPARATOR,
    ExitOneParser,
    in_plane_spacing,
    output_folder,
    phantom_size,
    positive_int,
    seed,
)
from CardiacUDALib.cases import SEGMENTATION_TAG
from CardiacUDALib.preprocess import INTENSITY_PRESETS, MEDIAN_SOURCE_SPACING

PROGRAM = "cardiac-uda"
DEMO_DEFAULT_METHOD = "gin"


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda or cuda:N (default: auto)",
    )


def _add_amp(parser: argparse.ArgumentParser) -> None:
    """Inference precision (``segment``, ``translate``, ``compare``; training has ``--set amp=false``)."""
    parser.add_argument(
        "--no-amp",
        action="store_true",
        help="compute in float32 (default: bfloat16 autocast on CUDA and on CPUs with native bfloat16, "
        "AVX512-BF16 or AMX-BF16)",
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
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")


def _add_start_options(parser: argparse.ArgumentParser) -> None:
    """What a training starts from and ends with (``train`` and ``benchmark``)."""
    parser.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from these weights, e.g. `--method adabn --init runs/source_only/checkpoints/best.pt "
        "--set iterations=0` adapts a trained source model in seconds",
    )
    parser.add_argument(
        "--adabn",
        action="store_true",
        help="finish by re-estimating BatchNorm statistics on the target images",
    )


def _add_postprocessing_options(parser: argparse.ArgumentParser) -> None:
    """How segmentations are cleaned (``segment``, and ``train`` / ``benchmark`` for their test volumes)."""
    parser.add_argument(
        "--no-largest-component",
        action="store_true",
        help="keep every connected component (default: only the largest 3D component per structure)",
    )
    parser.add_argument(
        "--no-flip-averaging",
        action="store_true",
        help="one network pass per slice (default: the class probabilities averaged over test-time flips: "
        "left-right, up-down, both)",
    )
    parser.add_argument(
        "--keep-without-heart",
        action="store_true",
        help="write the labels even where they are not a heart (default: such a volume's segmentation is "
        "left empty, with a warning: no left-ventricular blood pool ringed by myocardium)",
    )


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
    parser.add_argument(
        "--out",
        type=output_folder,
        required=True,
        metavar="RUN_DIR",
        help="run folder (checkpoints, history)",
    )
    _add_training_options(parser, "paper")
    _add_start_options(parser)
    _add_postprocessing_options(parser)
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
        type=in_plane_spacing,
        default=MEDIAN_SOURCE_SPACING,
        metavar="MM",
        help="train at this in-plane spacing, recorded in the model, which resamples every volume to it; "
        "'native' keeps each volume's own (default: the median of the source volumes; a model started "
        "with --init keeps its own)",
    )
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if RUN_DIR holds a run")
    parser.add_argument(
        "--segment-target",
        action="store_true",
        help="segment the target images with the best checkpoint at the end",
    )


def _add_manifest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest",
        metavar="FILE",
        default=None,
        help="the pretrained-model manifest to read (default: the one shipped with CardiacUDA)",
    )


def _add_models(subparsers: argparse._SubParsersAction) -> None:
    """``models list|fetch|import|path|remove|clear``: the pretrained-model catalog and its cache."""
    models = _subparser(
        subparsers,
        "models",
        "Pretrained models: list them, download or import them into the cache, remove them.",
        "cardiac-uda models list",
        "cardiac-uda models fetch MODEL_ID",
        "cardiac-uda models import downloaded.pt --id MODEL_ID",
        "cardiac-uda segment --model MODEL_ID --images data/lge --out segmented",
    )
    actions = models.add_subparsers(dest="models_command", required=True, metavar="action")
    for name, summary in (
        ("list", "List the models: id, title, method, source -> target, measured Dice, size, local copy."),
        ("fetch", "Download a model into the cache (resumes a broken download; SHA-256 checked)."),
        ("import", "Copy a model file into the cache without network (SHA-256 checked)."),
        ("path", "Print the local file of a model."),
        ("remove", "Delete a model's cached file."),
        ("clear", "Delete every file of the cache."),
    ):
        action = actions.add_parser(name, help=summary, description=summary)
        if name != "clear":
            _add_manifest(action)
        if name in ("fetch", "path", "remove"):
            action.add_argument("id", metavar="ID", help="model id (see `cardiac-uda models list`)")
        if name == "import":
            action.add_argument("file", metavar="FILE", help="the model file")
            action.add_argument(
                "--id", default=None, help="the model it is (default: the model whose SHA-256 it has)"
            )


def _add_inference(subparsers: argparse._SubParsersAction, task: str) -> None:
    if task == "segment":
        summary = (
            "Segment volumes with a trained checkpoint (writes <case>_seg.nii.gz with the label values)."
        )
    else:
        summary = "Translate source volumes to the target appearance (methods with a generator)."
    examples = [
        f"cardiac-uda {task} --checkpoint runs/adabn/checkpoints/best.pt "
        f"--images phantom/target --out {task}ed"
    ]
    if task == "segment":
        examples.append("cardiac-uda segment --model MODEL_ID --images data/lge --out segmented")
    parser = _subparser(subparsers, task, summary, *examples)
    weights = parser.add_mutually_exclusive_group(required=True) if task == "segment" else parser
    weights.add_argument(
        "--checkpoint", required=task != "segment", metavar="FILE", help="a checkpoint (.pt) from train"
    )
    if task == "segment":
        weights.add_argument(
            "--model",
            metavar="ID",
            help="a pretrained model (see `cardiac-uda models list`), downloaded when not yet local",
        )
        _add_manifest(parser)
    parser.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="INPUT",
        help="image files or folders of cases (labels ignored)",
    )
    parser.add_argument("--out", type=output_folder, required=True, metavar="DIR", help="output folder")
    _add_device(parser)
    _add_amp(parser)
    if task == "segment":
        _add_postprocessing_options(parser)


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    parser = _subparser(
        subparsers,
        "compare",
        "Segment target volumes with several models and show where they agree: a reliability map per volume "
        "(the fraction of the results that differ from the majority label) and the Dice of each pair of results.",
        "cardiac-uda compare --checkpoint runs/source_only/checkpoints/best.pt "
        "--checkpoint runs/adabn/checkpoints/best.pt --target phantom/target --out compared",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="a checkpoint (.pt) from train; repeat it for each model",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ID",
        help="a pretrained model (see `cardiac-uda models list`), downloaded when not yet local; repeatable",
    )
    _add_manifest(parser)
    parser.add_argument(
        "--target",
        nargs="+",
        required=True,
        metavar="INPUT",
        help="target image files or folders of cases (labels ignored)",
    )
    parser.add_argument(
        "--out",
        type=output_folder,
        required=True,
        metavar="DIR",
        help="output folder: one segmentation folder per model, <case>_reliability.nii.gz, agreement.csv/.json/.md",
    )
    _add_device(parser)
    _add_amp(parser)
    _add_postprocessing_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = ExitOneParser(
        prog=PROGRAM,
        description="Unsupervised cross-modality domain adaptation of cardiac segmentation.",
        epilog="start with:\n  cardiac-uda demo            (a complete run on a synthetic phantom)\n"
        "  cardiac-uda <command> --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")

    _subparser(subparsers, "methods", "List the adaptation methods and their presets.", "cardiac-uda methods")

    phantom = _subparser(
        subparsers,
        "phantom",
        "Write a synthetic two-modality cardiac phantom (labelled bSSFP-like source, LGE-like target).",
        "cardiac-uda phantom --out phantom --subjects 10",
    )
    phantom.add_argument("--out", type=output_folder, required=True, metavar="DIR", help="output folder")
    phantom.add_argument("--subjects", type=positive_int, required=True, help="subjects per domain")
    phantom.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    phantom.add_argument(
        "--size", type=phantom_size, default=96, help="in-plane size in pixels (default: 96)"
    )

    _add_train(subparsers)
    _add_inference(subparsers, "segment")
    _add_inference(subparsers, "translate")
    _add_models(subparsers)
    _add_compare(subparsers)

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
    evaluate.add_argument(
        "--out",
        type=output_folder,
        required=True,
        metavar="DIR",
        help="where metrics.csv and metrics.json go",
    )
    evaluate.add_argument(
        "--allow-missing",
        action="store_true",
        help="score the reference cases that have a prediction and name the others (default: an error)",
    )

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
    demo.add_argument(
        "--out",
        type=output_folder,
        default="demo_out",
        metavar="DIR",
        help="output folder (default: demo_out)",
    )
    demo.add_argument(
        "--subjects", type=positive_int, default=10, help="phantom subjects per domain (default: 10)"
    )
    _add_training_options(demo, "fast")

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
    benchmark.add_argument(
        "--out", type=output_folder, required=True, metavar="DIR", help="output and run folder"
    )
    _add_training_options(benchmark, "paper")
    _add_start_options(benchmark)
    _add_postprocessing_options(benchmark)
    return parser
