"""Whole-volume inference: a checkpoint in, label maps and translated images out, on the input's grid."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from CardiacUDALib.atomic import check_writable_folder
from CardiacUDALib.cases import (
    SEGMENTATION_TAG,
    TRANSLATION_TAG,
    VolumeCase,
    check_outputs_spare_inputs,
    check_unique_names,
    output_path,
)
from CardiacUDALib.checkpoint import Checkpoint, load_checkpoint
from CardiacUDALib.device import precision_message, resolve_device
from CardiacUDALib.errors import CardiacUDAError, CheckpointError
from CardiacUDALib.events import EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.io import LabelMap, check_readable, classes_to_values, load_case, write_image
from CardiacUDALib.methods import AdaptationMethod, get_method
from CardiacUDALib.methods.base import config_from_dict
from CardiacUDALib.preprocess import (
    PreparedVolume,
    PreprocessConfig,
    prepare_volume,
    restore_intensity,
    restore_labels,
    spacing_warning,
)


def load_weights(
    method: AdaptationMethod, checkpoint: Checkpoint, path: str | Path, with_optimizers: bool = True
) -> None:
    """Load ``checkpoint``'s weights into ``method``, refusing networks that do not fit with a clear message.

    A checkpoint of another method family (``--init`` with a ``varda`` file for ``source_only``, say) or
    of other network settings has other or differently shaped tensors: torch's KeyError or size
    mismatch becomes a message naming the file.
    """
    try:
        method.load_state_dict(checkpoint.state, with_optimizers)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as error:
        if isinstance(error, KeyError):
            detail = f"it has no {error.args[0]!r}"
        else:
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise CheckpointError(
            f"{path} is a {checkpoint.method} checkpoint whose weights do not fit method {method.key!r} "
            f"with these settings ({detail}): use a checkpoint of {method.key} (or of a method that shares "
            "its networks, such as source_only for adabn) trained with the same network settings"
        ) from error


FLIP_AXES = ((), (-1,), (-2,), (-2, -1))  # test-time flips: none, left-right, up-down, both


@torch.no_grad()
def predict_slices(
    method: AdaptationMethod, slices: np.ndarray, batch_size: int = 16, flip_averaging: bool = False
) -> np.ndarray:
    """``[S, k, H, W]`` prepared slices -> ``[S, H, W]`` uint8 classes (argmax of the logits).

    With ``flip_averaging`` the class probabilities are averaged over the slices as given and flipped
    left-right, up-down and both (each prediction flipped back) before the argmax.
    """
    method.eval_mode()
    predictions = []
    for start in range(0, len(slices), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(slices[start : start + batch_size])).to(method.device)
        if flip_averaging:
            scores = sum(method.segment(batch.flip(axes)).softmax(dim=1).flip(axes) for axes in FLIP_AXES)
        else:
            scores = method.segment(batch)
        predictions.append(scores.argmax(dim=1).to(torch.uint8).cpu().numpy())
    return np.concatenate(predictions)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 3D connected component (26-connectivity) of a boolean mask; all False if it has none."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    return components == int(np.argmax(np.bincount(components.ravel())[1:])) + 1


HEART_CENTRE_PASSES = 4  # passes of the window over a field of view, each centred on the last one's heart
HEART_CENTRE_TOLERANCE = 1.0  # pixels: a window centre that moves less has found the heart


def heart_centre(prepared: PreparedVolume, classes: np.ndarray) -> tuple[float, float] | None:
    """The centre of the box around the largest 3D component of everything labelled in ``classes``
    (``prepared``'s network slices), as (row, column) of its working slices; None where nothing is."""
    heart = largest_component(classes > 0)
    if not heart.any():
        return None
    _, rows, columns = np.nonzero(heart)
    return prepared.working_position((rows.min() + rows.max()) / 2, (columns.min() + columns.max()) / 2)


HEART_BORDER_FRACTION = 0.5  # of the LV blood pool's in-plane border that must be myocardium


def missing_heart(classes: np.ndarray, label_map: LabelMap, slice_axis: int) -> str | None:
    """Why a label map ``classes`` (numpy order z, y, x) is not a heart, or None when it is one.

    With MYO and LV classes, a heart's left-ventricular blood pool is ringed by myocardium in each
    slice (the plane across ``slice_axis``); labels elsewhere (a field of view without the heart,
    another body part) have no such ring. Other label maps need only some label."""
    if not classes.any():
        return "nothing was labelled"
    names = label_map.class_names
    if "MYO" not in names or "LV" not in names:
        return None
    blood_pool = classes == names.index("LV") + 1
    if not blood_pool.any():
        return "no left-ventricular blood pool was found"
    in_plane = np.moveaxis(np.ones((3, 3), dtype=bool)[None], 0, 2 - slice_axis)
    border = ndimage.binary_dilation(blood_pool, in_plane) & ~blood_pool
    ringed = float(np.mean(classes[border] == names.index("MYO") + 1)) if border.any() else 0.0
    if ringed < HEART_BORDER_FRACTION:
        return (
            f"the labelled 'LV' is not ringed by myocardium ({ringed:.0%} of its border, a heart has at "
            f"least {HEART_BORDER_FRACTION:.0%})"
        )
    return None


def find_heart(
    image: sitk.Image,
    config: PreprocessConfig,
    method: AdaptationMethod,
    batch_size: int = 16,
    flip_averaging: bool = False,
) -> tuple[PreparedVolume, np.ndarray]:
    """``image`` prepared with the network's window on the heart, and ``method``'s classes there.

    Where the window does not hold whole slices (a scan's field of view, the heart anywhere), a first
    pass over whole slices finds the heart, and the window is centred on it; then on the heart each pass
    finds in its window, until the centre moves less than :data:`HEART_CENTRE_TOLERANCE` pixels (at
    most :data:`HEART_CENTRE_PASSES` passes): a heart that a window cuts off is seen whole once the
    window has moved to it."""

    def predict(prepared: PreparedVolume, flips: bool) -> np.ndarray:
        return predict_slices(method, prepared.with_context(config.context_slices), batch_size, flips)

    prepared = prepare_volume(image, config)
    if prepared.window_fits:
        return prepared, predict(prepared, flip_averaging)
    overview = prepare_volume(image, dataclasses.replace(config, size=prepared.whole_slices()))
    centre = heart_centre(overview, predict(overview, False))
    for _ in range(HEART_CENTRE_PASSES):
        prepared = prepare_volume(image, config, centre=centre)
        predicted = predict(prepared, flip_averaging)
        found = heart_centre(prepared, predicted)
        if found is None or centre is None or math.dist(found, centre) < HEART_CENTRE_TOLERANCE:
            break
        centre = found
    return prepared, predicted


def labelled_centre(
    image: sitk.Image, label: sitk.Image, config: PreprocessConfig
) -> tuple[float, float] | None:
    """The centre of the box around everything ``label`` labels, as (row, column) of the working slices
    (the ``centre`` of ``prepare_volume``); None where the window holds whole slices."""
    prepared = prepare_volume(image, config)
    if prepared.window_fits:
        return None
    overview = prepare_volume(image, dataclasses.replace(config, size=prepared.whole_slices()), label)
    return heart_centre(overview, overview.labels)


def keep_largest_components(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Per structure, keep only its largest 3D connected component (26-connectivity)."""
    cleaned = np.zeros_like(classes)
    for label in range(1, num_classes):
        cleaned[largest_component(classes == label)] = label
    return cleaned


class TrainedModel:
    """A checkpoint loaded for use: segment target volumes, translate source volumes."""

    def __init__(
        self, checkpoint: Checkpoint, device: torch.device, path: Path, amp: bool | None = None
    ) -> None:
        """``amp`` replaces the checkpoint's setting (None keeps it)."""
        method_class = get_method(checkpoint.method)
        self.checkpoint = checkpoint
        self.label_map = LabelMap.from_dict(checkpoint.label_map)
        self.preprocess = PreprocessConfig.from_dict(checkpoint.preprocess)
        method_config = checkpoint.method_config | ({} if amp is None else {"amp": amp})
        self.method = method_class(
            config_from_dict(method_class, method_config), self.label_map.num_classes, device
        )
        load_weights(self.method, checkpoint, path, with_optimizers=False)
        self.method.eval_mode()

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        expected_method: str | None = None,
        amp: bool | None = None,
    ) -> TrainedModel:
        return cls(
            load_checkpoint(path, expected_method=expected_method), resolve_device(device), Path(path), amp
        )

    @property
    def precision(self) -> str:
        """What its networks compute in here (the job's log line)."""
        return precision_message(self.method.device, self.method.config.amp)

    @property
    def can_translate(self) -> bool:
        return self.method.can_translate

    def segment_image(
        self,
        image: sitk.Image,
        largest_component: bool = True,
        batch_size: int = 16,
        flip_averaging: bool = False,
        on_missing_heart: Callable[[str], None] | None = None,
        on_heart_region: Callable[[dict[str, list[float]]], None] | None = None,
    ) -> sitk.Image:
        """A whole volume -> a class label map (uint8, 0 = background) on the input's exact grid.

        Post-processing: ``flip_averaging`` (test-time flips, :func:`predict_slices`), then
        ``largest_component`` (the largest 3D connected component of each structure); with
        ``on_missing_heart``, labels that are not a heart (:func:`missing_heart`) are dropped and it is
        told why.
        The window of the network is placed on the heart (:func:`find_heart`); ``on_heart_region`` is
        given that window (``PreparedVolume.window_box``) where it does not hold whole slices."""

        prepared, predicted = find_heart(image, self.preprocess, self.method, batch_size, flip_averaging)
        if on_heart_region is not None and not prepared.window_fits:
            on_heart_region(prepared.window_box())
        classes = restore_labels(prepared, predicted)
        array = sitk.GetArrayFromImage(classes)
        if largest_component:
            array = keep_largest_components(array, self.label_map.num_classes)
        if on_missing_heart is not None:
            reason = missing_heart(array, self.label_map, prepared.slice_axis)
            if reason is not None:
                on_missing_heart(f"no heart was found ({reason}): the segmentation is left empty")
                array = np.zeros_like(array)
        cleaned = sitk.GetImageFromArray(array)
        cleaned.CopyInformation(classes)
        return cleaned

    @torch.no_grad()
    def translate_image(self, image: sitk.Image, batch_size: int = 16) -> sitk.Image:
        """A whole source volume in the target's appearance, on the source's grid (normalised intensities)."""
        if not self.can_translate:
            raise CardiacUDAError(
                f"method {self.checkpoint.method!r} has no image generator: it cannot translate"
            )
        prepared = prepare_volume(image, self.preprocess)
        slices = prepared.with_context(self.preprocess.context_slices)
        self.method.eval_mode()
        translated = [
            self.method.translate(
                torch.from_numpy(np.ascontiguousarray(slices[i : i + batch_size])).to(self.method.device)
            )
            .float()
            .cpu()
            .numpy()[:, 0]
            for i in range(0, len(slices), batch_size)
        ]
        return restore_intensity(prepared, np.concatenate(translated))


def _for_each_case(
    cases: Sequence[VolumeCase],
    out_dir: str | Path,
    tag: str,
    produce: Callable[[VolumeCase, sitk.Image, Callable[[str], None]], sitk.Image],
    model: TrainedModel,
    emit: EventSink,
    should_stop: StopCheck,
) -> list[Path]:
    """Read each case's image, write ``produce(image)`` to its :func:`output_path`; a stop ends the loop early.
    A volume whose spacing looks lost or wrong gets a ``warning`` event first."""
    check_unique_names(list(cases), "the volumes to process")
    check_writable_folder(out_dir, "the output folder")
    outputs = check_outputs_spare_inputs([output_path(out_dir, case, tag) for case in cases], list(cases))
    check_readable([VolumeCase(case.name, case.image) for case in cases], model.label_map)
    written = []
    for index, (case, output) in enumerate(zip(cases, outputs)):
        if should_stop():
            emit({"event": "stopped", "step": index})
            break
        image, _ = load_case(VolumeCase(case.name, case.image), model.label_map)

        def warn(message: str, case: VolumeCase = case) -> None:
            emit({"event": "warning", "message": f"{case.image}: {message}"})

        problem = spacing_warning(image, model.preprocess)
        if problem is not None:
            warn(problem)
        written.append(write_image(produce(case, image, warn), output))
        emit(
            {
                "event": "progress",
                "step": index + 1,
                "total": len(cases),
                "losses": {},
                "eta_s": None,
                "case": case.name,
            }
        )
    return written


def segment_cases(
    model: TrainedModel,
    cases: Sequence[VolumeCase],
    out_dir: str | Path,
    emit: EventSink = ignore_event,
    largest_component: bool = True,
    should_stop: StopCheck = never_stop,
    flip_averaging: bool = False,
    empty_without_heart: bool = True,
    heart_regions: dict[str, dict[str, list[float]]] | None = None,
) -> list[Path]:
    """Segment every case; writes ``<case>_seg<ext>`` (the input's format) with the label map's file values.
    A volume where no heart is found is written empty, with a ``warning`` event (``empty_without_heart``).
    ``heart_regions`` receives, by case name, the window the heart was found in (where it is not the
    whole slice). Returns the paths (fewer than ``cases`` when stopped)."""

    def segment(case: VolumeCase, image: sitk.Image, warn: Callable[[str], None]) -> sitk.Image:
        classes = model.segment_image(
            image,
            largest_component,
            flip_averaging=flip_averaging,
            on_missing_heart=warn if empty_without_heart else None,
            on_heart_region=None if heart_regions is None else partial(heart_regions.__setitem__, case.name),
        )
        return classes_to_values(classes, model.label_map)

    return _for_each_case(cases, out_dir, SEGMENTATION_TAG, segment, model, emit, should_stop)


def translate_cases(
    model: TrainedModel,
    cases: Sequence[VolumeCase],
    out_dir: str | Path,
    emit: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> list[Path]:
    """Translate every case; writes ``<case>_translated<ext>`` (the input's format). Returns the paths (fewer
    when stopped)."""
    return _for_each_case(
        cases,
        out_dir,
        TRANSLATION_TAG,
        lambda _case, image, _warn: model.translate_image(image),
        model,
        emit,
        should_stop,
    )
