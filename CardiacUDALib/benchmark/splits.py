"""Benchmark splits: which volumes of a data set play which role (DESIGN.md §4).

The MS-CMRSeg protocol follows VarDA / UDA-VAE++ so that numbers compare with their papers: source =
all bSSFP (C0) volumes with labels; target training images = all LGE volumes, **without** labels;
model selection on LGE patients 1-5; report on LGE patients 6-40. No resampling (as released).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from CardiacUDALib.cases import VolumeCase, find_cases
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.io import LABEL_MAPS, LabelMap
from CardiacUDALib.preprocess import PreprocessConfig
from CardiacUDALib.report import AnchorRow

DATA_ENVIRONMENT_VARIABLE = "CARDIACUDA_DATA"
SPLITS = ("cross-domain", "in-domain")
MSCMRSEG_VALIDATION_PATIENTS = range(1, 6)
MSCMRSEG_IN_DOMAIN_TRAIN_PATIENTS = range(6, 26)
MSCMRSEG_IN_DOMAIN_TEST_PATIENTS = range(26, 36)
MSCMRSEG_ANCHORS = (
    AnchorRow("no adaptation", {"MYO": 14.5, "LV": 34.5, "RV": 31.1}, "UDA-VAE++ 2022"),
    AnchorRow("VarDA", {"MYO": 68.4, "LV": 84.4, "RV": 72.6}, "UDA-VAE++ 2022"),
    AnchorRow("SIFA", {"MYO": 67.7, "LV": 83.3, "RV": 79.0}, "UDA-VAE++ 2022"),
    AnchorRow("UDA-VAE++", {"MYO": 70.8, "LV": 88.6, "RV": 75.8}, "UDA-VAE++ 2022"),
)
_MSCMRSEG_CASE_NAME = re.compile(r"^patient(\d+)_(C0|LGE)$")


@dataclass(frozen=True)
class DataSplit:
    """Which volumes play which role; ``target`` cases carry no label (they are training images)."""

    description: str
    source: list[VolumeCase]
    target: list[VolumeCase]
    validation: list[VolumeCase]
    test_sets: dict[str, list[VolumeCase]]

    def to_dict(self) -> dict[str, Any]:
        """The case names of every role, for ``summary.json``."""
        return {
            "description": self.description,
            "source": [case.name for case in self.source],
            "target": [case.name for case in self.target],
            "validation": [case.name for case in self.validation],
            "test": {name: [case.name for case in cases] for name, cases in self.test_sets.items()},
        }


def without_labels(cases: Sequence[VolumeCase]) -> list[VolumeCase]:
    """Target training images: the label path is dropped so that it cannot reach a job."""
    return [VolumeCase(case.name, case.image) for case in cases]


def _mscmrseg_patients(data_dir: Path, sequence: str) -> dict[int, VolumeCase]:
    folder = data_dir / sequence
    expected = f"{folder}/patient<N>_{sequence}.nii.gz with patient<N>_{sequence}_manual.nii.gz"
    if not folder.is_dir():
        raise InputDataError(
            f"{data_dir} does not have the MS-CMRSeg layout: the folder {folder} is missing; expected {expected}"
        )
    patients = {}
    for case in find_cases(folder, require_labels=True):
        match = _MSCMRSEG_CASE_NAME.match(case.name)
        if match is None or match.group(2) != sequence:
            raise InputDataError(f"unexpected file {case.image} in {folder}: expected only {expected}")
        patients[int(match.group(1))] = case
    return patients


def _select(patients: Mapping[int, VolumeCase], numbers: Sequence[int] | None, what: str) -> list[VolumeCase]:
    """The cases of ``numbers`` present (all when None), in patient order; an empty role is an error."""
    chosen = [patients[n] for n in sorted(patients) if numbers is None or n in numbers]
    if not chosen:
        raise InputDataError(f"no volume for the {what} (patients {numbers}) in the data folder")
    return chosen


def mscmrseg_split(data_dir: str | Path, split: str = "cross-domain") -> DataSplit:
    """The MS-CMRSeg 2019 C0 -> LGE split of DESIGN.md §4, or the in-domain control.

    ``in-domain`` trains on C0 patients 6-25 only (model selection on C0 1-5), tests on C0 26-35 and
    on LGE 6-40: the same model on both shows the domain gap under identical training.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputDataError(
            f"data folder {root} does not exist; give the MS-CMRSeg folder (with C0/ and LGE/) with --data "
            f"or {DATA_ENVIRONMENT_VARIABLE}"
        )
    c0, lge = _mscmrseg_patients(root, "C0"), _mscmrseg_patients(root, "LGE")
    lge_test = _select(lge, [n for n in lge if n not in MSCMRSEG_VALIDATION_PATIENTS], "LGE test set")
    if split == "cross-domain":
        return DataSplit(
            "source: all C0 with labels; target training images: all LGE without labels; "
            "validation (checkpoint selection): LGE patients 1-5; test: LGE patients 6-40",
            source=_select(c0, None, "C0 source set"),
            target=without_labels(_select(lge, None, "LGE target set")),
            validation=_select(lge, MSCMRSEG_VALIDATION_PATIENTS, "LGE validation set"),
            test_sets={"lge": lge_test},
        )
    if split == "in-domain":
        return DataSplit(
            "source: C0 patients 6-25 with labels; no target images; validation (checkpoint selection): "
            "C0 patients 1-5; test: C0 patients 26-35 (in domain) and LGE patients 6-40 (cross domain)",
            source=_select(c0, MSCMRSEG_IN_DOMAIN_TRAIN_PATIENTS, "C0 training set"),
            target=[],
            validation=_select(c0, MSCMRSEG_VALIDATION_PATIENTS, "C0 validation set"),
            test_sets={"c0": _select(c0, MSCMRSEG_IN_DOMAIN_TEST_PATIENTS, "C0 test set"), "lge": lge_test},
        )
    raise InputDataError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")


@dataclass(frozen=True)
class Dataset:
    """A real data set the benchmark knows: its split, label map and anchors (published numbers)."""

    split: Callable[[Path, str], DataSplit]
    label_map: LabelMap
    anchors: tuple[AnchorRow, ...]
    anchor_test_set: str  # the test set of the published protocol, where the anchors belong
    preprocess: PreprocessConfig


DATASETS = {
    "mscmrseg": Dataset(
        mscmrseg_split,
        LABEL_MAPS["mscmrseg"],
        MSCMRSEG_ANCHORS,
        "lge",
        PreprocessConfig(size=192, intensity="percentile_zscore"),
    ),
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise CardiacUDAError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]
