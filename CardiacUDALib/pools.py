"""The volumes a training run reads: source and target slice pools and validation volumes, each with
the network's window on the heart, wherever the heart lies in the field of view."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import SimpleITK as sitk

from CardiacUDALib.cases import VolumeCase
from CardiacUDALib.data import LoadedVolume, SlicePool, load_volumes
from CardiacUDALib.events import EventSink
from CardiacUDALib.inference import find_heart, heart_centre, labelled_centre
from CardiacUDALib.io import LabelMap
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.methods import AdaptationMethod
from CardiacUDALib.methods.base import MethodConfig
from CardiacUDALib.preprocess import PreprocessConfig

CentreOf = Callable[[sitk.Image, sitk.Image | None], tuple[float, float] | None]


def load_training_volumes(
    job: TrainJob,
    config: MethodConfig,
    locator: AdaptationMethod | None,
    label_map: LabelMap,
    preprocess: PreprocessConfig,
    needs: tuple[bool, bool, bool],
    emit: EventSink,
) -> tuple[SlicePool | None, SlicePool | None, list[LoadedVolume]]:
    """The source and target slice pools and the validation volumes, as ``needs`` (source, target,
    validation) asks, each with the network's window on the heart.

    Where a volume's slices are wider than the window (a scan's whole field of view), the window is
    centred on the box of its labels (source, validation), or on the heart that ``locator`` (the
    starting checkpoint's networks) finds (target; without a starting checkpoint, the middle of the
    slice). Pools hold windows ``2 * shift`` pixels wider, to be moved at random (``SlicePool``)."""

    def loaded(done: int, total: int, name: str, warning: str | None) -> None:
        if warning is not None:
            emit({"event": "warning", "message": warning})
        emit({"event": "status", "message": f"loaded {name} ({done}/{total})"})

    def on_labels(image: sitk.Image, label: sitk.Image | None) -> tuple[float, float] | None:
        return None if label is None else labelled_centre(image, label, preprocess)

    def on_found_heart(image: sitk.Image, label: sitk.Image | None) -> tuple[float, float] | None:
        return None if locator is None else heart_centre(*find_heart(image, preprocess, locator))

    pooled = dataclasses.replace(preprocess, size=preprocess.size + 2 * config.shift)

    def pool(cases: list[VolumeCase], labelled: bool, centre_of: CentreOf, stream: int) -> SlicePool:
        # normalised with what the network's window sees, as at inference, not the wider pooled window
        volumes = load_volumes(cases, label_map, pooled, labelled, loaded, centre_of, preprocess.size)
        return SlicePool(volumes, config.context_slices, stream, config.shift)

    needs_source, needs_target, validates = needs
    source_pool = pool(job.source, True, on_labels, 0) if needs_source else None
    target_pool = pool(job.target, False, on_found_heart, 1) if needs_target else None
    validation = (
        load_volumes(job.validation, label_map, preprocess, True, loaded, on_labels) if validates else []
    )
    return source_pool, target_pool, validation
