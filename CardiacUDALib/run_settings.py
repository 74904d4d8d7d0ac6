"""What a training run trains with: the method config and preprocessing, from the job, from the
checkpoint it starts from, or from the run it resumes."""

from __future__ import annotations

import dataclasses

import numpy as np

from CardiacUDALib.checkpoint import Checkpoint
from CardiacUDALib.errors import InputDataError
from CardiacUDALib.events import EventSink, ignore_event
from CardiacUDALib.io import read_spacing
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.methods import AdaptationMethod, build_config, get_method
from CardiacUDALib.methods.base import MethodConfig, config_from_dict
from CardiacUDALib.preprocess import (
    MEDIAN_SOURCE_SPACING,
    PreprocessConfig,
    in_plane_spacing_of,
    resolve_spacing,
)
from CardiacUDALib.runfolder import RunFolder

SCALE_GAP = 1.4  # targets this many times finer or coarser than the sources get a warning
INHERITED_SETTINGS = {"context_slices", "intensity"}  # MethodConfig settings the weights depend on


# Settings a resumed run may take from the resuming job: its length, and how fast and how often it
# reports (none changes what a step computes on the CPU); every other difference is refused.
MAY_CHANGE_ON_RESUME = {"iterations", "amp", "channels_last", "compile", "prefetch", "validate_every",
                        "checkpoint_every"}  # fmt: skip


def run_settings(
    job: TrainJob,
    resumed: Checkpoint | None,
    initial: Checkpoint | None,
    run: RunFolder,
    emit: EventSink = ignore_event,
) -> tuple[type[AdaptationMethod], MethodConfig, PreprocessConfig]:
    """The run's method config and preprocessing.

    A run that starts from another checkpoint whose config class this method's config extends
    (``adabn`` or ``self_training`` from a ``source_only`` or ``gin_ipa`` model, say) inherits that
    checkpoint's network and loss settings and its preprocessing, so the weights fit; the training
    schedule (iterations, batch size, learning rate, ...) is this method's preset; the job's overrides
    apply on top. A resumed run keeps its saved config; a job that asks for other settings is refused
    with the differences named, except for :data:`MAY_CHANGE_ON_RESUME` (``iterations`` extends a
    finished run).
    """
    method_class = get_method(job.method)
    initial_config = None if initial is None else get_method(initial.method).config_class
    if initial_config is not None and issubclass(method_class.config_class, initial_config):
        schedule = {item.name for item in dataclasses.fields(MethodConfig)} - INHERITED_SETTINGS
        inherited = {name: value for name, value in initial.method_config.items() if name not in schedule}
        config = build_config(method_class, job.preset, **{**inherited, **job.overrides})
        preprocess = PreprocessConfig.from_dict(initial.preprocess)
        _refuse_other_preprocessing(job, preprocess)
    else:
        config = build_config(method_class, job.preset, **job.overrides)
        preprocess = preprocess_for(config, job.preprocess)
        if preprocess.in_plane_spacing == MEDIAN_SOURCE_SPACING:
            preprocess = resolve_spacing(preprocess, [read_spacing(case.image) for case in job.source])
            if resumed is None:
                _warn_of_a_scale_gap(job, preprocess, emit)
    if resumed is None:
        return method_class, config, preprocess
    saved = config_from_dict(method_class, resumed.method_config)
    saved_preprocess = PreprocessConfig.from_dict(resumed.preprocess)
    differing = {  # a method setting that sets the preprocessing's (intensity) is named once
        name: f"{name} {getattr(old, name)!r} (asked: {getattr(new, name)!r})"
        for old, new in ((saved, config), (saved_preprocess, preprocess))
        for name in (item.name for item in dataclasses.fields(old))
        if name not in MAY_CHANGE_ON_RESUME and getattr(old, name) != getattr(new, name)
    }
    differences = list(differing.values())
    if differences:
        raise InputDataError(
            f"{run.root} holds a run trained with other settings: {'; '.join(differences)}. Resume it with "
            "its own settings (only iterations may change), or start afresh in another folder (or with "
            "--no-resume)"
        )
    if "iterations" in job.overrides:  # a user may extend a finished run
        saved.iterations = config.iterations
    return method_class, saved, saved_preprocess


def _warn_of_a_scale_gap(job: TrainJob, preprocess: PreprocessConfig, emit: EventSink) -> None:
    """A ``warning`` event when the target volumes' median in-plane spacing is more than
    :data:`SCALE_GAP` times from the sources' median, which the model is trained at: a header that
    lies (the MS-CMRSeg C0 crops record 1.22 mm for pixels of about 0.75 mm) shows so."""
    if not job.target:
        return
    spacings = [in_plane_spacing_of(read_spacing(case.image), preprocess.slice_axis) for case in job.target]
    target, model = float(np.median(spacings)), float(preprocess.in_plane_spacing)
    ratio = max(target / model, model / target)
    if ratio > SCALE_GAP:
        finer = "finer" if target < model else "coarser"
        message = (
            f"the model is trained at the sources' median in-plane spacing, {model:g} mm, and the targets' "
            f"is {target:.2f} mm, {ratio:.1f} times {finer}: every target is resampled to {model:g} mm. If the "
            "hearts span as many pixels in both, a header's spacing is wrong: give --spacing native"
        )
        emit({"event": "warning", "message": message})


def _refuse_other_preprocessing(job: TrainJob, weights: PreprocessConfig) -> None:
    """A run from a checkpoint keeps the checkpoint's preprocessing (the weights were trained at it);
    preprocessing the job chose and the weights do not share is refused. A value is chosen when it is
    neither the preprocessing's default nor a new train job's (no resampling, the median source spacing)."""
    defaults = (PreprocessConfig(), TrainJob(job.method, job.out_dir).preprocess)
    differences = [
        f"{name} {getattr(weights, name)!r} (asked: {asked!r})"
        for name in (item.name for item in dataclasses.fields(PreprocessConfig))
        if name != "context_slices"  # the method's, not the job's
        and (asked := getattr(job.preprocess, name)) not in {getattr(default, name) for default in defaults}
        and asked != getattr(weights, name)
    ]
    if differences:
        raise InputDataError(
            f"the starting weights {job.initial_checkpoint} were trained with other preprocessing: "
            f"{'; '.join(differences)}. A run from them keeps theirs: leave these settings out, or train "
            "afresh without --init"
        )


def preprocess_for(config: MethodConfig, preprocess: PreprocessConfig) -> PreprocessConfig:
    """The data's preprocessing with what the method decides: its context slices and intensity preset."""
    return dataclasses.replace(
        preprocess,
        context_slices=config.context_slices,
        intensity=config.intensity or preprocess.intensity,
    )
