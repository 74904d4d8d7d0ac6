"""Shared fixtures: small phantom data sets and one trained source model, built once per test session.

Accuracy tests (marked ``accuracy``) train on the phantom and compare a measured number with a floor.
Their training seed and torch's thread count come from ``CARDIACUDA_TEST_SEED`` and
``CARDIACUDA_TEST_THREADS`` so that ``scripts/sweep_accuracy_tests.py`` can run them over seeds, thread
counts and CPU kernels; each check goes through :func:`require_gain`, which also writes the measured
numbers to ``CARDIACUDA_ACCURACY_LOG`` (one JSON line per check) when that variable is set. The
margins and the sweep that set them: ``Testing/README.md``. Every test computes in float32 unless it
forces ``CARDIACUDA_CPU_BFLOAT16`` itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from CardiacUDALib.device import CPU_BFLOAT16_VARIABLE
from CardiacUDALib.evaluation import evaluate_cases
from CardiacUDALib.inference import TrainedModel, segment_cases
from CardiacUDALib.io import LABEL_MAPS, LabelMap
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.phantom import PhantomDataset, write_phantom_dataset
from CardiacUDALib.preprocess import PreprocessConfig
from CardiacUDALib.training import TrainOutcome, train

TEST_SEED = int(os.environ.get("CARDIACUDA_TEST_SEED", "0"))
# float32 everywhere, whatever the CPU (workers started by the tests inherit it): the accuracy margins were
# swept in float32; test_precision.py forces both answers itself.
os.environ.setdefault(CPU_BFLOAT16_VARIABLE, "0")
_SWEPT_THREADS = os.environ.get("CARDIACUDA_TEST_THREADS")


def torch_threads(default: int) -> int:
    """torch threads for a test: the sweep's setting when it sets one, else ``default``."""
    return int(_SWEPT_THREADS) if _SWEPT_THREADS else default


torch.set_num_threads(torch_threads(2))

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
) -> TrainJob:
    """A few-step ``source_only`` request on the tiny phantom; keyword arguments replace fields."""
    request = TrainJob(
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
def tiny_model(
    tiny_phantom: PhantomDataset, label_map: LabelMap, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A ``source_only`` checkpoint after 6 steps on the tiny phantom: for protocol and geometry tests."""
    return train(tiny_request(tiny_phantom, label_map, tmp_path_factory.mktemp("tiny_model"))).best_checkpoint


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
    request = TrainJob(
        method="source_only",
        out_dir=tmp_path_factory.mktemp("source_only_run"),
        source=phantom.source[:8],
        label_map=label_map,
        preprocess=PreprocessConfig(size=PHANTOM_SIZE),
        preset="fast",
        seed=TEST_SEED,
    )
    return train(request)


def train_fast_on_phantom(
    method: str, phantom: PhantomDataset, label_map: LabelMap, out_dir: Path, **overrides: object
) -> TrainOutcome:
    """``method`` (``fast`` preset) on phantom source 0-7 and every target image; no target label is read."""
    request = TrainJob(
        method=method,
        out_dir=out_dir,
        source=phantom.source[:8],
        target=phantom.target,  # images only: target labels are never read for training
        label_map=label_map,
        preprocess=PreprocessConfig(size=PHANTOM_SIZE),
        preset="fast",
        overrides=overrides,
        seed=TEST_SEED,
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
    written = segment_cases(
        model, cases, out_dir, empty_without_heart=False
    )  # the network's labels, as they are
    return evaluate_cases(written, cases, label_map).summary()["mean"]["dice"]


@pytest.fixture
def require_gain(request: pytest.FixtureRequest):
    """``require_gain(what, value, reference, margin)`` asserts ``value - reference > margin``.

    Before asserting it appends the numbers to ``CARDIACUDA_ACCURACY_LOG`` (when set), so that a sweep
    sees the measured gain of every cell, failing ones included.
    """

    def check(what: str, value: float, reference: float, margin: float) -> None:
        gain = float(value) - float(reference)
        log = os.environ.get("CARDIACUDA_ACCURACY_LOG")
        if log:
            record = {
                "check": f"{request.node.nodeid}::{what}",
                "value": float(value),
                "reference": float(reference),
                "gain": gain,
                "margin": margin,
                "seed": TEST_SEED,
                "threads": torch.get_num_threads(),
                "capability": torch.backends.cpu.get_cpu_capability(),
                "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
            }
            with open(log, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(record) + "\n")
        assert gain > margin, f"{what}: {value:.4f} - {reference:.4f} = {gain:.4f}, needs > {margin}"

    return check
