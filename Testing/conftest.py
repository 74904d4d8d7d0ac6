"""Shared fixtures: small phantom data sets and one trained source model, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from CardiacUDALib.engine import (
    TrainedModel,
    TrainOutcome,
    TrainRequest,
    evaluate_cases,
    segment_cases,
    train,
)
from CardiacUDALib.io import LABEL_MAPS, LabelMap
from CardiacUDALib.phantom import PhantomDataset, write_phantom_dataset
from CardiacUDALib.preprocess import PreprocessConfig

torch.set_num_threads(2)

TINY_SIZE = 64
PHANTOM_SIZE = 96


@pytest.fixture(scope="session")
def label_map() -> LabelMap:
    return LABEL_MAPS["mscmrseg"]


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomDataset:
    """4 + 4 subjects at 64x64: for protocol tests where the model's quality does not matter."""
    return write_phantom_dataset(tmp_path_factory.mktemp("tiny_phantom"), subjects=4, seed=3, size=TINY_SIZE)


def tiny_request(
    dataset: PhantomDataset, label_map: LabelMap, out_dir: Path, /, **changes: object
) -> TrainRequest:
    """A few-step ``source_only`` request on the tiny phantom; keyword arguments replace fields."""
    request = TrainRequest(
        method="source_only",
        out_dir=out_dir,
        source=dataset.source,
        target=dataset.target,
        validation=dataset.target[:1],
        label_map=label_map,
        preprocess=PreprocessConfig(size=TINY_SIZE),
        preset="fast",
        overrides={"iterations": 6, "validate_every": 3, "checkpoint_every": 3, "batch_size": 4},
    )
    for name, value in changes.items():
        setattr(request, name, value)
    return request


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomDataset:
    """The demo-sized phantom (96x96): 10 source and 10 target subjects."""
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), subjects=10, seed=0, size=PHANTOM_SIZE)


@pytest.fixture(scope="session")
def trained_source_model(
    phantom: PhantomDataset, label_map: LabelMap, tmp_path_factory: pytest.TempPathFactory
) -> TrainOutcome:
    """``source_only`` (fast preset) trained on phantom source subjects 0-7; 8-9 stay held out.

    No validation set, so ``best.pt`` is the last checkpoint: nothing here looks at target labels.
    """
    request = TrainRequest(
        method="source_only",
        out_dir=tmp_path_factory.mktemp("source_only_run"),
        source=phantom.source[:8],
        label_map=label_map,
        preprocess=PreprocessConfig(size=PHANTOM_SIZE),
        preset="fast",
    )
    return train(request)


def train_fast_on_phantom(
    method: str, phantom: PhantomDataset, label_map: LabelMap, out_dir: Path, **overrides: object
) -> TrainOutcome:
    """``method`` (``fast`` preset) on phantom source 0-7 and every target image; no target label is read."""
    request = TrainRequest(
        method=method,
        out_dir=out_dir,
        source=phantom.source[:8],
        target=phantom.target,  # images only: target labels are never read for training
        label_map=label_map,
        preprocess=PreprocessConfig(size=PHANTOM_SIZE),
        preset="fast",
        overrides=overrides,
    )
    return train(request)


@pytest.fixture(scope="session")
def phantom_test_targets(phantom: PhantomDataset) -> list:
    """Phantom target subjects 2-9: where every method is compared with ``source_only``."""
    return phantom.target[2:]


@pytest.fixture(scope="session")
def source_only_target_dice(
    trained_source_model: TrainOutcome,
    phantom_test_targets: list,
    label_map: LabelMap,
    tmp_path_factory: pytest.TempPathFactory,
) -> float:
    """Mean Dice of ``trained_source_model`` on the phantom test targets, computed once per session."""
    return mean_dice(
        trained_source_model.best_checkpoint,
        phantom_test_targets,
        label_map,
        tmp_path_factory.mktemp("source_only_on_target"),
    )


def mean_dice(checkpoint: Path, cases: list, label_map: LabelMap, out_dir: Path) -> float:
    """Mean Dice over structures and cases of a checkpoint's segmentations of ``cases`` (labels needed)."""
    model = TrainedModel.load(checkpoint, "cpu")
    return evaluate_cases(segment_cases(model, cases, out_dir), cases, label_map).summary()["mean"]["dice"]
