"""Command-line inputs: cases from folders or ``IMAGE=LABEL`` pairs, ``key=value`` settings, prediction files.

Shared by the ``cardiac-uda`` command and the Slicer batch script; every problem is an
:class:`~CardiacUDALib.errors.InputDataError` naming the option.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from CardiacUDALib.errors import InputDataError

PAIR_SEPARATOR = "="
USAGE_ERROR_EXIT = 1  # as every other error the user can fix (argparse's own code is 2)


class ExitOneParser(argparse.ArgumentParser):
    """An argument parser whose usage errors (a missing option, ``--seed -1``) exit with 1 and one
    ``error:`` line after the usage, as every other error of the command; its subcommands' parsers too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR_EXIT, f"error: {message}\n")


def existing_path(path_text: str, option: str) -> Path:
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
        image = existing_path(image_text, option)
        if labelled and label_text is None:
            raise InputDataError(
                f"{option}: {image} is a file without its label map; give it as IMAGE{PAIR_SEPARATOR}LABEL "
                "or give a folder of cases"
            )
        label = existing_path(label_text, option) if labelled and label_text is not None else None
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


def prediction_files(items: Sequence[str]) -> list[Path]:
    """Folders give their ``*_seg.<ext>`` files; files are taken as given."""
    files: list[Path] = []
    for item in items:
        path = existing_path(item, "--predictions")
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


# ---- argparse types -----------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def in_plane_spacing(text: str) -> float | str | None:
    """``--spacing``: a positive number of mm, ``native`` (None: no resampling) or the median of the
    source volumes (``preprocess.MEDIAN_SOURCE_SPACING``, the default)."""
    from CardiacUDALib.preprocess import MEDIAN_SOURCE_SPACING

    if text in ("native", MEDIAN_SOURCE_SPACING):
        return None if text == "native" else text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of mm or 'native', got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of mm, got {text!r}")
    return value


def output_folder(text: str) -> str:
    """``--out``: a folder; an empty name is refused here, where it is still empty (``Path("")`` is the
    current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a folder (write '.' for the current one)")
    return text


def seed(text: str) -> int:
    """``--seed``: a whole number from 0 to ``jobs.MAX_SEED``."""
    from CardiacUDALib.jobs import MAX_SEED

    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_SEED}, got {value}")
    return value


def phantom_size(text: str) -> int:
    from CardiacUDALib.phantom import MIN_SIZE

    value = int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE}, got {value}")
    return value
