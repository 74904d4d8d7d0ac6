"""Training, for every method alike.

``train`` runs a method's ``train_step`` over paired source/target batches, validates on a labelled
set every ``validate_every`` steps, keeps the best checkpoint by mean foreground Dice **on that set
only** (never on test labels), writes ``last.pt`` every ``checkpoint_every`` steps, stops cleanly
when asked, and resumes from ``last.pt``; then it runs the post-training stages the method or the
job asks for (:mod:`CardiacUDALib.stages`) on the selected checkpoint. Progress goes out as
events (:mod:`CardiacUDALib.events`), so the CLI, the worker and the Slicer module show the same
thing. The engine knows methods only through the registry and :class:`AdaptationMethod`.

Started by ``torchrun``, every rank runs ``train`` on its own part of each step's batches and the
ranks' models stay identical (:mod:`CardiacUDALib.distributed`); only rank 0 validates, writes
checkpoints and history, and emits events.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from CardiacUDALib import __version__, distributed
from CardiacUDALib.atomic import check_writable_folder, write_json_atomic
from CardiacUDALib.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from CardiacUDALib.data import (
    LoadedVolume,
    Shard,
    SlicePool,
    TrainingBatches,
)
from CardiacUDALib.device import precision_message
from CardiacUDALib.errors import CardiacUDAError, InputDataError
from CardiacUDALib.evaluation import validate
from CardiacUDALib.events import EventSink, StopCheck, ignore_event, never_stop
from CardiacUDALib.inference import load_weights
from CardiacUDALib.io import LabelMap
from CardiacUDALib.jobs import TrainJob
from CardiacUDALib.memory import check_training_fits
from CardiacUDALib.methods import AdaptationMethod
from CardiacUDALib.methods.base import MethodConfig
from CardiacUDALib.pools import load_training_volumes
from CardiacUDALib.preprocess import PreprocessConfig
from CardiacUDALib.run_settings import run_settings
from CardiacUDALib.runfolder import RunFolder, locked
from CardiacUDALib.stages import STAGES


@dataclass
class TrainOutcome:
    best_checkpoint: Path
    last_checkpoint: Path
    steps_done: int
    stopped: bool
    history: dict[str, Any]
    selection: str  # how best.pt was chosen, said in every report


def _check_inputs(
    job: TrainJob,
    method_class: type[AdaptationMethod],
    weights: tuple[tuple[Path, Checkpoint | None], ...],
    needs_source: bool,
) -> LabelMap:
    """The run's label map (the job's, else the starting checkpoint's) after checking the inputs;
    ``weights`` are the files the run takes weights from (the starting and the resumed checkpoint)."""
    label_map = job.label_map
    for path, checkpoint in weights:
        if checkpoint is None:
            continue
        trained_for = LabelMap.from_dict(checkpoint.label_map)
        if label_map is None:
            label_map = trained_for
        elif label_map.values != trained_for.values:
            raise InputDataError(
                f"{path} was trained for {', '.join(trained_for.class_names)} "
                f"(label values {list(trained_for.values)}); this run's label map has {list(label_map.values)}"
            )
    if label_map is None:
        raise InputDataError("no label map was given (e.g. 'mscmrseg', 'mmwhs' or '200:MYO,500:LV,600:RV')")
    if needs_source and not job.source:
        raise InputDataError("no labelled source volume was given")
    if (method_class.uses_target or job.stages) and not job.target:
        raise InputDataError(f"method {method_class.key!r} adapts to the target domain: give target images")
    return label_map


def _checkpoint(
    method: AdaptationMethod,
    label_map: LabelMap,
    preprocess: PreprocessConfig,
    step: int,
    metadata: dict[str, Any],
    with_optimizers: bool,
) -> Checkpoint:
    state = method.state_dict()
    if not with_optimizers:
        state = {"networks": state["networks"]}
    return Checkpoint(
        method=method.key,
        method_config=method.config.to_dict(),
        label_map=label_map.to_dict(),
        preprocess=preprocess.to_dict(),
        state=state,
        step=step,
        metadata={
            **metadata,
            "library_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(),
        },
    )


def _run_train_step(
    method: AdaptationMethod, source_batch: Any, target_batch: Any, batch_size: int
) -> dict[str, float]:
    try:
        return method.train_step(source_batch, target_batch)
    except torch.OutOfMemoryError as error:
        raise CardiacUDAError(
            f"out of GPU memory at batch size {batch_size}: use a smaller batch (e.g. --set batch_size="
            f"{max(1, batch_size // 2)}) or --device cpu"
        ) from error


def _check_finite(losses: dict[str, float], step: int) -> None:
    non_finite = [name for name, value in losses.items() if not math.isfinite(value)]
    if non_finite:
        raise CardiacUDAError(
            f"training diverged at step {step + 1} ({', '.join(non_finite)} not finite); nothing after the last "
            "checkpoint was saved: lower the learning rate (--set learning_rate=...) and run again"
        )


def prepare_networks(method: AdaptationMethod, ranks: distributed.Ranks) -> None:
    """The speed and multi-process settings that change how the networks run, not what they compute."""
    config, networks = method.config, method.networks()
    if config.sync_batchnorm and ranks.distributed:
        distributed.convert_to_sync_batchnorm(networks, method.device)
    for network in networks.values():
        if config.channels_last:
            network.to(memory_format=torch.channels_last)
        if config.compile:
            network.compile()


def train(job: TrainJob, emit: EventSink = ignore_event, should_stop: StopCheck = never_stop) -> TrainOutcome:
    """Train ``job.method``; resumable, cancellable, with validation-based checkpoint selection.

    Under torchrun this rank joins the process group for the training and leaves it at the end.
    """
    ranks = distributed.this_process()
    device, joined = distributed.start(ranks, job.device)
    try:
        folder = check_writable_folder(job.out_dir, "the run folder")
        with locked(folder) if ranks.is_main else contextlib.nullcontext():
            outcome = _train(job, ranks, device, emit if ranks.is_main else ignore_event, should_stop)
    except BaseException:
        if joined:  # no last barrier: the other ranks may never reach it (torchrun ends them)
            torch.distributed.destroy_process_group()
        raise
    if joined:
        distributed.finish()
    return outcome


def training_batches(
    pools: tuple[SlicePool | None, SlicePool | None],
    seed: int,
    config: MethodConfig,
    ranks: distributed.Ranks,
    device: torch.device,
) -> TrainingBatches:
    """This rank's batches of every step, drawn as ``config`` says (training and ``benchmarks/speed.py``)."""
    return TrainingBatches(
        pools,
        seed,
        config.batch_size,
        config.augment,
        config.deform,
        Shard(ranks.rank, ranks.count),
        device,
        config.channels_last,
        config.prefetch,
    )


def _train(
    job: TrainJob, ranks: distributed.Ranks, device: torch.device, emit: EventSink, should_stop: StopCheck
) -> TrainOutcome:
    run = RunFolder(check_writable_folder(job.out_dir, "the run folder"))
    resumed = (
        load_checkpoint(run.last, expected_method=job.method) if job.resume and run.last.exists() else None
    )
    initial = None if job.initial_checkpoint is None else load_checkpoint(job.initial_checkpoint)
    method_class, config, preprocess = run_settings(job, resumed, initial, run, emit)
    needs_source = config.iterations > (resumed.step if resumed is not None else 0)
    label_map = _check_inputs(
        job, method_class, ((job.initial_checkpoint, initial), (run.last, resumed)), needs_source
    )
    stage_names = finishing_stages(method_class, job)
    if method_class.needs_initial_checkpoint and initial is None and resumed is None:
        raise InputDataError(
            f"method {method_class.key!r} refines a trained model: give its checkpoint with --init FILE "
            "(e.g. the best.pt of a gin_ipa or source_only run)"
        )
    if config.iterations == 0 and initial is None and resumed is None:
        raise CardiacUDAError(
            "iterations=0 means 'no training': give a trained checkpoint to start from (--init FILE)"
        )
    check_training_fits(method_class, config, label_map.num_classes, preprocess.size, device)
    torch.manual_seed(job.seed)
    # The networks and their starting weights first: a checkpoint that does not fit is refused before
    # minutes of reading volumes.
    method = method_class(config, label_map.num_classes, device)
    if (
        initial is not None
    ):  # also under a resumed run's weights: it finds the target hearts (pools.load_training_volumes)
        load_weights(method, initial, job.initial_checkpoint, with_optimizers=False)
    elif resumed is not None:
        load_weights(method, resumed, run.last)
    emit({"event": "status", "message": precision_message(device, config.amp)})
    source_pool, target_pool, validation = load_training_volumes(
        job,
        config,
        method if initial is not None else None,
        label_map,
        preprocess,
        # only rank 0 validates: the other ranks' list is empty
        (needs_source, bool((method_class.uses_target or stage_names) and job.target), ranks.is_main),
        emit,
    )
    if initial is not None and resumed is not None:
        load_weights(method, resumed, run.last)
    prepare_networks(method, ranks)
    # Only now that every input has been read: a job that fails on its inputs leaves no run folder.
    # From here the folder exists, so that a stop file can be put into it before the first checkpoint.
    run.root.mkdir(parents=True, exist_ok=True)

    history: dict[str, Any] = {"losses": [], "validation": []}
    best_score = -math.inf
    step = 0
    if resumed is not None:
        step = resumed.step
        history = resumed.metadata.get("history", history)
        best_score = float(resumed.metadata.get("best_score", -math.inf))
        emit({"event": "status", "message": f"resumed from {run.last} at step {step}"})
    elif initial is not None:
        emit({"event": "status", "message": f"initialised from {job.initial_checkpoint}"})

    def metadata() -> dict[str, Any]:
        return {
            "history": history,
            "best_score": best_score,
            "seed": job.seed,
            "job": job.to_dict(),
            "processes": ranks.count,  # the global batch is batch_size x processes
        }

    def save_last() -> None:
        """Called by every rank: the ranks' networks are compared, then rank 0 writes ``last.pt``."""
        digests = distributed.state_digests(method.networks()) if ranks.distributed else []
        if not ranks.is_main:
            return
        saved = {**metadata(), "rank_state_sha256": digests} if digests else metadata()
        save_checkpoint(
            _checkpoint(method, label_map, preprocess, step, saved, with_optimizers=True), run.last
        )
        write_json_atomic(run.history, history)
        emit({"event": "checkpoint", "path": str(run.last), "step": step})

    batches = training_batches((source_pool, target_pool), job.seed, config, ranks, device)
    synchronised = distributed.SynchronisedTraining(method.networks(), method.optimizers())
    try:
        started, first_step = time.monotonic(), step
        running: dict[str, list[float]] = {}
        log_every = max(1, min(25, config.iterations // 50))
        while step < config.iterations:
            if distributed.any_rank(should_stop(), device):
                save_last()
                emit({"event": "stopped", "step": step, "checkpoint": str(run.last)})
                return TrainOutcome(run.best, run.last, step, True, history, "stopped before the end")
            method.train_mode()
            method.apply_learning_rate(step)
            # rank 0's torch draws are those of a single process; each further rank draws its own
            torch.manual_seed(job.seed * 1_000_003 + step + ranks.rank * 1_000_000_007)
            source_batch, target_batch = batches.get(step, config.iterations)
            source_batch = method.with_appearance(source_batch)
            losses = _run_train_step(method, source_batch, target_batch, config.batch_size)
            losses = distributed.average_losses(losses, device)
            _check_finite(losses, step)
            synchronised.after_step()
            step += 1
            for name, value in losses.items():
                running.setdefault(name, []).append(value)
            if step % log_every == 0 or step == config.iterations:
                averaged = {name: float(np.mean(values)) for name, values in running.items()}
                history["losses"].append({"step": step, **averaged})
                running = {}
                seconds_per_step = (time.monotonic() - started) / max(step - first_step, 1)
                emit(
                    {
                        "event": "progress",
                        "step": step,
                        "total": config.iterations,
                        "losses": averaged,
                        "eta_s": round(seconds_per_step * (config.iterations - step), 1),
                    }
                )
            if validation and (step % config.validate_every == 0 or step == config.iterations):
                scores = validate(method, validation, label_map, config.context_slices)
                history["validation"].append({"step": step, **scores})
                emit({"event": "validation", "step": step, "dice": scores})
                if scores["mean"] > best_score:
                    best_score = scores["mean"]
                    best = _checkpoint(method, label_map, preprocess, step, metadata(), with_optimizers=False)
                    save_checkpoint(best, run.best)
            if step % config.checkpoint_every == 0 or step == config.iterations:
                save_last()
    finally:
        batches.close()
        synchronised.close()
    if not ranks.is_main:  # rank 0 selects, finishes and reports
        return TrainOutcome(run.best, run.last, step, False, history, "trained as a helper rank")
    if history["validation"]:
        best_step = max(history["validation"], key=lambda entry: entry["mean"])["step"]
        selection = (
            f"best mean validation Dice on {len(validation)} labelled validation volume(s), step {best_step}"
        )
    else:
        save_checkpoint(
            _checkpoint(method, label_map, preprocess, step, metadata(), with_optimizers=False), run.best
        )
        selection = (
            f"no training: the weights of {job.initial_checkpoint}"
            if step == 0 and initial is not None
            else f"no validation during training: the last weights (step {step})"
        )
    if stage_names:
        selection = (
            _run_finishing_stages(
                stage_names, method, run, target_pool, validation, label_map, preprocess, emit
            )
            + selection
        )
    emit({"event": "trained", "best_checkpoint": str(run.best), "selection": selection, "step": step})
    return TrainOutcome(run.best, run.last, step, False, history, selection)


def finishing_stages(method_class: type[AdaptationMethod], job: TrainJob) -> list[str]:
    """The post-training stages (:mod:`CardiacUDALib.stages`) a run ends with: the method's and the job's."""
    names = list(dict.fromkeys([*method_class.finishing_stages, *job.stages]))
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise InputDataError(f"unknown training stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    return names


def _run_finishing_stages(
    stage_names: Sequence[str],
    method: AdaptationMethod,
    run: RunFolder,
    target_pool: SlicePool | None,
    validation: Sequence[LoadedVolume],
    label_map: LabelMap,
    preprocess: PreprocessConfig,
    emit: EventSink,
) -> str:
    """Apply the stages to the selected checkpoint and save the result as ``best.pt``; returns what was
    applied, said in front of the checkpoint selection."""
    if target_pool is None:
        titles = ", ".join(STAGES[name].title for name in stage_names)
        raise InputDataError(f"{titles} adapts to the target domain: give target images")
    selected = load_checkpoint(run.best)
    method.load_state_dict(selected.state, with_optimizers=False)
    metadata = dict(selected.metadata)
    for stage in (STAGES[name] for name in stage_names):
        summary, message = stage.apply(method, target_pool.images)
        emit({"event": "status", "message": message})
        if validation:
            summary["validation"] = validate(method, validation, label_map, method.config.context_slices)
            emit(
                {
                    "event": "validation",
                    "step": selected.step,
                    "dice": summary["validation"],
                    "after": stage.name,
                }
            )
        metadata[stage.name] = summary
    save_checkpoint(
        _checkpoint(method, label_map, preprocess, selected.step, metadata, with_optimizers=False), run.best
    )
    return "".join(f"{STAGES[name].title} applied to: " for name in stage_names)
