"""Volume sets as pools of 2D / 2.5D slices, random batches and their augmentation.

Every volume is prepared once (``preprocess.prepare_volume``); its slices are stacked into one pool
per domain. Batches walk through the pool epoch by epoch, each epoch in its own random order: step
``s`` of a run with ``R`` ranks of ``B`` slices takes the global positions ``s*R*B ... (s+1)*R*B - 1``
of that walk, and rank ``r`` the ``B`` positions from ``s*R*B + r*B``. So no two ranks see the same
slice within an epoch, the global batch of 2 ranks of ``B`` is the batch of 1 rank of ``2B``, and
every slice's augmentation is drawn from a generator of ``(seed, pool, position)`` alone: a resumed
run draws exactly the batches it would have drawn without the interruption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.deformation import deform_slice
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import LabelMap, check_label_not_empty, load_case
from CardiacUDALib.preprocess import PreparedVolume, PreprocessConfig, prepare_volume, spacing_warning

# Intensity jitter of augment_batch, in units of the normalised image (z-score: standard deviations).
INTENSITY_SCALE_RANGE = (0.8, 1.2)
INTENSITY_SHIFT_RANGE = (-0.2, 0.2)


@dataclass
class SliceBatch:
    """A batch of 2D (or 2.5D) slices: images ``[B, k, H, W]`` float, labels ``[B, H, W]`` long or None."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device, channels_last: bool = False) -> SliceBatch:
        images = self.images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return SliceBatch(images, labels)

    def pin_memory(self) -> SliceBatch:
        """In page-locked memory, so that the copy to a GPU runs beside the computation."""
        labels = None if self.labels is None else self.labels.pin_memory()
        return SliceBatch(self.images.pin_memory(), labels)


@dataclass(frozen=True)
class Shard:
    """Which part of each step's global batch a training process takes: ``rank`` of ``count``."""

    rank: int = 0
    count: int = 1


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
    on_loaded: Callable[[int, int, str, str | None], None] | None = None,
    centre_of: Callable[[sitk.Image, sitk.Image | None], tuple[float, float] | None] | None = None,
    statistics_size: int | None = None,
) -> list[LoadedVolume]:
    """Read and prepare each case; labels only when ``with_labels`` (target training images never use theirs).

    ``on_loaded(done, total, name, warning)`` follows each case; ``warning`` says when its spacing looks
    lost or wrong (``preprocess.spacing_warning``). ``centre_of(image, label)`` places the window
    (``prepare_volume``'s ``centre``; None: the middle), ``statistics_size`` the window its intensity
    statistics come from."""
    volumes = []
    for index, case in enumerate(cases):
        if with_labels and case.label is None:
            raise InputDataError(f"{case.image} needs a label map here, and none was given")
        image, label = load_case(case if with_labels else VolumeCase(case.name, case.image), label_map)
        if with_labels:
            check_label_not_empty(label, f"label map {case.label}")
        centre = None if centre_of is None else centre_of(image, label)
        volumes.append(LoadedVolume(case, prepare_volume(image, preprocess, label, centre, statistics_size)))
        if on_loaded is not None:
            warning = spacing_warning(image, preprocess)
            on_loaded(
                index + 1, len(cases), case.name, None if warning is None else f"{case.image}: {warning}"
            )
    return volumes


class SlicePool:
    """All slices of a set of volumes, with context channels, ready to be sampled.

    ``stream`` tells pools of one run apart (source 0, target 1), so that their orders and
    augmentations are drawn independently. With a ``shift`` of ``m`` pixels the volumes were prepared
    ``2m`` pixels wider than the network's window, and each augmented slice is the window moved by up to
    ``m`` pixels in each direction (a random in-plane translation that shows what a scan has there, not
    padding); without augmentation, the window in the middle.
    """

    def __init__(
        self, volumes: Sequence[LoadedVolume], context_slices: int, stream: int = 0, shift: int = 0
    ) -> None:
        if not volumes:
            raise InputDataError("no volumes were given")
        self.windows = np.concatenate([v.prepared.with_context(context_slices) for v in volumes])
        labels = [v.prepared.labels for v in volumes]
        self.label_windows = None if any(label is None for label in labels) else np.concatenate(labels)
        if self.windows.shape[-1] <= 2 * shift:
            raise InputDataError(f"a shift of {shift} pixels needs slices wider than {2 * shift} pixels")
        self.shift = shift
        self.stream = stream
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    @property
    def images(self) -> np.ndarray:
        """``[N, k, size, size]``: every slice's window in the middle."""
        return self._window(self.windows, self.shift, self.shift)

    @property
    def labels(self) -> np.ndarray | None:
        return (
            None if self.label_windows is None else self._window(self.label_windows, self.shift, self.shift)
        )

    def _window(self, array: np.ndarray, row: int, column: int) -> np.ndarray:
        height, width = (length - 2 * self.shift for length in array.shape[-2:])
        return array[..., row : row + height, column : column + width]

    def __len__(self) -> int:
        return len(self.windows)

    def _order(self, seed: int, epoch: int) -> np.ndarray:
        """The epoch's random order of the pool's slices (the last two epochs' are kept)."""
        key = (seed, epoch)
        if key not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = np.random.default_rng([seed, self.stream, epoch]).permutation(len(self))
        return self._orders[key]

    def positions(self, step: int, batch_size: int, shard: Shard) -> range:
        """The global positions of the walk that ``shard`` takes at ``step``."""
        first = (step * shard.count + shard.rank) * batch_size
        return range(first, first + batch_size)

    def batch(
        self,
        seed: int,
        step: int,
        batch_size: int,
        augment: bool,
        deform: bool = False,
        shard: Shard | None = None,
    ) -> SliceBatch:
        """``shard``'s ``batch_size`` slices of step ``step`` (see the module docstring)."""
        shard = shard or Shard()
        positions = self.positions(step, batch_size, shard)
        indices = np.array([self._order(seed, p // len(self))[p % len(self)] for p in positions])
        images, labels = self.images[indices], None if self.labels is None else self.labels[indices]
        if augment and self.shift:
            offsets = [
                np.random.default_rng([seed, self.stream, 2, p]).integers(0, 2 * self.shift + 1, 2)
                for p in positions
            ]
            images = np.stack([self._window(self.windows[i], *o) for i, o in zip(indices, offsets)])
            if self.label_windows is not None:
                labels = np.stack([self._window(self.label_windows[i], *o) for i, o in zip(indices, offsets)])
        if augment:
            generators = [np.random.default_rng([seed, self.stream, 1, p]) for p in positions]
            images, labels = augment_batch(images, labels, generators, deform)
        return SliceBatch(
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
            None if labels is None else torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        )


Batches = tuple[SliceBatch | None, SliceBatch | None]  # source, target


class TrainingBatches:
    """Each step's source and target batches for this rank, on the training device.

    Step ``s`` draws ``pool.batch(seed, s, batch_size, augment, deform, shard)`` from each pool (a pool
    of ``None`` gives ``None``). With ``prefetch`` the next step's batches are drawn in a background
    thread while the current step trains; on a GPU they wait in page-locked memory, so that the copy runs
    beside the computation.
    """

    def __init__(
        self,
        pools: tuple[SlicePool | None, SlicePool | None],
        seed: int,
        batch_size: int,
        augment: bool,
        deform: bool,
        shard: Shard,
        device: torch.device,
        channels_last: bool,
        prefetch: bool,
    ) -> None:
        self.pools = pools
        self.seed = seed
        self.batch_size = batch_size
        self.augment = augment
        self.deform = deform
        self.shard = shard
        self.device = device
        self.channels_last = channels_last
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="batches") if prefetch else None
        self.pending: dict[int, Future[Batches]] = {}

    def _draw(self, step: int) -> Batches:
        def batch(pool: SlicePool) -> SliceBatch:
            drawn = pool.batch(self.seed, step, self.batch_size, self.augment, self.deform, self.shard)
            return drawn.pin_memory() if self.device.type == "cuda" else drawn

        source, target = (None if pool is None else batch(pool) for pool in self.pools)
        return source, target

    def get(self, step: int, last_step: int) -> Batches:
        """Step ``step``'s batches on the device; drawing of step ``step + 1`` starts if it is before ``last_step``."""
        future = self.pending.pop(step, None)
        batches = future.result() if future is not None else self._draw(step)
        if self.executor is not None and step + 1 < last_step:
            self.pending[step + 1] = self.executor.submit(self._draw, step + 1)
        source, target = (None if b is None else b.to(self.device, self.channels_last) for b in batches)
        return source, target

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def augment_batch(
    images: np.ndarray,
    labels: np.ndarray | None,
    generators: Sequence[np.random.Generator],
    deform: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per slice, with that slice's generator: with ``deform``, a random affine + elastic deformation first
    (:mod:`CardiacUDALib.deformation`); then random flips and 90-degree rotations (image and label
    alike), intensity scale and shift.

    Flips and rotations keep the pixel grid (no interpolation), so labels stay exact. Rotations by 90
    degrees are applied only to square slices, which every prepared slice is.
    """
    images = images.copy()
    labels = None if labels is None else labels.copy()
    for index, rng in enumerate(generators):
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
