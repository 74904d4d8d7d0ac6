"""Volume sets as pools of 2D / 2.5D slices, random batches and their augmentation.

Every volume is prepared once (``preprocess.prepare_volume``); its slices are stacked into one pool
per domain. A batch is drawn from a :class:`numpy.random.Generator` seeded with ``(seed, step)``, so a
resumed run draws exactly the batches it would have drawn without the interruption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.deformation import deform_slice
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LabelMap, check_label_not_empty, load_case
from CardiacUDALib.preprocess import PreparedVolume, PreprocessConfig, prepare_volume

# Intensity jitter of augment_batch, in units of the normalised image (z-score: standard deviations).
INTENSITY_SCALE_RANGE = (0.8, 1.2)
INTENSITY_SHIFT_RANGE = (-0.2, 0.2)


@dataclass
class SliceBatch:
    """A batch of 2D (or 2.5D) slices: images ``[B, k, H, W]`` float, labels ``[B, H, W]`` long or None."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device) -> SliceBatch:
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return SliceBatch(self.images.to(device, non_blocking=True), labels)


@dataclass
class LoadedVolume:
    """A case after preprocessing, kept with its name (for reports and validation)."""

    case: VolumeCase
    prepared: PreparedVolume


def load_volumes(
    cases: Sequence[VolumeCase],
    label_map: LabelMap,
    preprocess: PreprocessConfig,
    with_labels: bool,
    on_loaded: Callable[[int, int, str], None] | None = None,
) -> list[LoadedVolume]:
    """Read and prepare each case; labels only when ``with_labels`` (target training images never use theirs)."""
    volumes = []
    for index, case in enumerate(cases):
        if with_labels and case.label is None:
            raise InputDataError(f"{case.image} needs a label map here, and none was given")
        image, label = load_case(case if with_labels else VolumeCase(case.name, case.image), label_map)
        if with_labels:
            check_label_not_empty(label, f"label map {case.label}")
        volumes.append(LoadedVolume(case, prepare_volume(image, preprocess, label)))
        if on_loaded is not None:
            on_loaded(index + 1, len(cases), case.name)
    return volumes


class SlicePool:
    """All slices of a set of volumes, with context channels, ready to be sampled."""

    def __init__(self, volumes: Sequence[LoadedVolume], context_slices: int) -> None:
        if not volumes:
            raise InputDataError("no volumes were given")
        self.images = np.concatenate([v.prepared.with_context(context_slices) for v in volumes])
        labels = [v.prepared.labels for v in volumes]
        self.labels = None if any(label is None for label in labels) else np.concatenate(labels)

    def __len__(self) -> int:
        return len(self.images)

    def sample(
        self, rng: np.random.Generator, batch_size: int, augment: bool, deform: bool = False
    ) -> SliceBatch:
        indices = rng.integers(0, len(self), size=batch_size)
        images = self.images[indices]
        labels = None if self.labels is None else self.labels[indices]
        if augment:
            images, labels = augment_batch(images, labels, rng, deform)
        return SliceBatch(
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
            None if labels is None else torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        )


def augment_batch(
    images: np.ndarray, labels: np.ndarray | None, rng: np.random.Generator, deform: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per slice: with ``deform``, a random affine + elastic deformation first
    (:mod:`CardiacUDALib.deformation`); then random flips and 90-degree rotations (image and label
    alike), intensity scale and shift.

    Flips and rotations keep the pixel grid (no interpolation), so labels stay exact. Rotations by 90
    degrees are applied only to square slices, which every prepared slice is.
    """
    images = images.copy()
    labels = None if labels is None else labels.copy()
    for index in range(len(images)):
        if deform:
            images[index], deformed_label = deform_slice(
                images[index], None if labels is None else labels[index], rng
            )
            if labels is not None:
                labels[index] = deformed_label
        turns = int(rng.integers(0, 4))
        flip = bool(rng.integers(0, 2))
        image = np.rot90(images[index], turns, axes=(-2, -1))
        image = image[..., ::-1] if flip else image
        scale = rng.uniform(*INTENSITY_SCALE_RANGE)
        shift = rng.uniform(*INTENSITY_SHIFT_RANGE)
        images[index] = image * scale + shift
        if labels is not None:
            label = np.rot90(labels[index], turns, axes=(-2, -1))
            labels[index] = label[..., ::-1] if flip else label
    return images, labels


def step_generator(seed: int, step: int) -> np.random.Generator:
    """The batch generator of one training step: a function of (seed, step) alone, so resume is exact."""
    return np.random.default_rng([seed, step])
