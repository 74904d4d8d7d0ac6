"""Training, whole-volume inference and evaluation, for every method alike.

``train`` runs a method's ``train_step`` over paired source/target batches, validates on a labelled
set every ``validate_every`` steps, keeps the best checkpoint by mean foreground Dice **on that set
only** (never on test labels), writes ``last.pt`` every ``checkpoint_every`` steps, stops cleanly
when asked, and resumes from ``last.pt``. Progress goes out as event dictionaries (the job
protocol of DESIGN.md §2.2), so the CLI, the worker and the Slicer module show the same thing.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from CardiacUDALib import __version__
from CardiacUDALib.atomic import check_writable_folder, write_json_atomic
from CardiacUDALib.cases import (
    SEGMENTATION_TAG,
    TRANSLATION_TAG,
    VolumeCase,
    cases_from_dicts,
    check_unique_names,
    output_path,
)
from CardiacUDALib.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from CardiacUDALib.data import LoadedVolume, SlicePool, load_volumes, step_generator
from CardiacUDALib.errors import CardiacUDAError, CheckpointError, InputDataError
from CardiacUDALib.io import LabelMap, classes_to_values, load_case, read_label, write_image
from CardiacUDALib.methods import AdaptationMethod, build_config, get_method
from CardiacUDALib.methods.adabn import adapt_batchnorm
from CardiacUDALib.methods.base import MethodConfig, checked_setting, config_from_dict
from CardiacUDALib.metrics import EvaluationTable, score_images, score_volume
from CardiacUDALib.preprocess import PreprocessConfig, prepare_volume, restore_intensity, restore_labels
from CardiacUDALib.runfolder import RunFolder
from CardiacUDALib.typed_values import REQUIRED, check_known_fields, checked_field

Event = dict[str, Any]
EventSink = Callable[[Event], None]
StopCheck = Callable[[], bool]
DEVICE_NAME = re.compile(r"cpu|cuda(:[0-9]+)?|mps")


def ignore_event(event: Event) -> None:
    """The default event sink."""


def never_stop() -> bool:
    return False


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise CardiacUDAError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CardiacUDAError(
            f"device {name!r} was asked for, but this PyTorch sees no CUDA GPU; use --device cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CardiacUDAError(
            f"device {name!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            "numbered from 0"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CardiacUDAError("device 'mps' was asked for, but it is not available here; use --device cpu")
    return device


# ---- training ----------------------------------------------------------------------------------


@dataclass
class TrainRequest:
    """Everything one training run needs; JSON-able through :meth:`to_dict` (the worker's job file)."""

    method: str
    out_dir: Path
    source: list[VolumeCase]
    target: list[VolumeCase] = field(default_factory=list)
    validation: list[VolumeCase] = field(default_factory=list)
    label_map: LabelMap | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    preset: str = "paper"
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    resume: bool = True
    initial_checkpoint: Path | None = None  # start from these weights (a trained source model, for instance)
    adabn: bool = False  # finish by re-estimating BatchNorm statistics on the target (methods.adabn)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "out_dir": str(self.out_dir),
            "source": [case.to_dict() for case in self.source],
            "target": [case.to_dict() for case in self.target],
            "validation": [case.to_dict() for case in self.validation],
            "label_map": None if self.label_map is None else self.label_map.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "preset": self.preset,
            "overrides": dict(self.overrides),
            "device": self.device,
            "seed": self.seed,
            "resume": self.resume,
            "initial_checkpoint": None if self.initial_checkpoint is None else str(self.initial_checkpoint),
            "adabn": self.adabn,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainRequest:
        """The request a train job describes; unknown, missing or mistyped fields are refused by name."""
        what = "the train job"
        check_known_fields(data, {item.name for item in dataclasses.fields(cls)}, what)

        def value(name: str, annotation: Any, default: Any = REQUIRED) -> Any:
            return checked_field(data, name, annotation, what, default)

        def cases(name: str, default: Any = REQUIRED) -> list[VolumeCase]:
            return cases_from_dicts(value(name, list, default), f"{what}'s {name!r}")

        label_map = value("label_map", dict | None, None)
        initial_checkpoint = value("initial_checkpoint", str | None, None)
        return cls(
            method=value("method", str),
            out_dir=Path(value("out_dir", str)),
            source=cases("source"),
            target=cases("target", []),
            validation=cases("validation", []),
            label_map=None if label_map is None else LabelMap.from_dict(label_map),
            preprocess=PreprocessConfig.from_dict(value("preprocess", dict, {})),
            preset=value("preset", str, "paper"),
            overrides=value("overrides", dict, {}),
            device=value("device", str, "auto"),
            seed=value("seed", int, 0),
            resume=value("resume", bool, True),
            initial_checkpoint=None if initial_checkpoint is None else Path(initial_checkpoint),
            adabn=value("adabn", bool, False),
        )


@dataclass
class TrainOutcome:
    best_checkpoint: Path
    last_checkpoint: Path
    steps_done: int
    stopped: bool
    history: dict[str, Any]
    selection: str  # how best.pt was chosen, said in every report


def _method_and_preprocess(
    request: TrainRequest, resumed: Checkpoint | None, initial: Checkpoint | None
) -> tuple[type[AdaptationMethod], MethodConfig, PreprocessConfig]:
    """The run's method config and preprocessing.

    A resumed run keeps its saved config (only ``iterations`` may be raised, to extend it). A run that
    starts from another checkpoint whose method shares this method's config class (``adabn`` from a
    ``source_only`` model, say) inherits that checkpoint's architecture and preprocessing, so the
    weights fit; the request's overrides still apply on top.
    """
    method_class = get_method(request.method)
    if resumed is not None:
        config = config_from_dict(method_class, resumed.method_config)
        if "iterations" in request.overrides:  # a user may extend a finished run
            config.iterations = checked_setting(
                method_class.config_class, "iterations", request.overrides["iterations"]
            )
        return method_class, config, PreprocessConfig.from_dict(resumed.preprocess)
    if initial is not None and get_method(initial.method).config_class is method_class.config_class:
        inherited = {**initial.method_config, **request.overrides}
        config = build_config(method_class, request.preset, **inherited)
        return method_class, config, PreprocessConfig.from_dict(initial.preprocess)
    config = build_config(method_class, request.preset, **request.overrides)
    return method_class, config, preprocess_for(config, request.preprocess)


def preprocess_for(config: MethodConfig, preprocess: PreprocessConfig) -> PreprocessConfig:
    """The data's preprocessing with what the method decides: its context slices and intensity preset."""
    return dataclasses.replace(
        preprocess,
        context_slices=config.context_slices,
        intensity=config.intensity or preprocess.intensity,
    )


def _check_request(
    request: TrainRequest,
    method_class: type[AdaptationMethod],
    initial: Checkpoint | None,
    needs_source: bool,
) -> LabelMap:
    """The run's label map (the request's, else the starting checkpoint's) after checking the inputs."""
    label_map = request.label_map
    if initial is not None:
        trained_for = LabelMap.from_dict(initial.label_map)
        if label_map is None:
            label_map = trained_for
        elif label_map.values != trained_for.values:
            raise InputDataError(
                f"{request.initial_checkpoint} was trained for {', '.join(trained_for.class_names)} "
                f"(label values {list(trained_for.values)}); this run's label map has {list(label_map.values)}"
            )
    if label_map is None:
        raise InputDataError("no label map was given (e.g. 'mscmrseg', 'mmwhs' or '200:MYO,500:LV,600:RV')")
    if needs_source and not request.source:
        raise InputDataError("no labelled source volume was given")
    if (method_class.uses_target or request.adabn) and not request.target:
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


def _run_train_step(
    method: AdaptationMethod, source_batch: Any, target_batch: Any, step: int, batch_size: int
) -> dict[str, float]:
    try:
        losses = method.train_step(source_batch, target_batch)
    except torch.OutOfMemoryError as error:
        raise CardiacUDAError(
            f"out of GPU memory at batch size {batch_size}: use a smaller batch (e.g. --set batch_size="
            f"{max(1, batch_size // 2)}) or --device cpu"
        ) from error
    non_finite = [name for name, value in losses.items() if not math.isfinite(value)]
    if non_finite:
        raise CardiacUDAError(
            f"training diverged at step {step + 1} ({', '.join(non_finite)} not finite); nothing after the last "
            "checkpoint was saved: lower the learning rate (--set learning_rate=...) and run again"
        )
    return losses


def train(
    request: TrainRequest, emit: EventSink = ignore_event, should_stop: StopCheck = never_stop
) -> TrainOutcome:
    """Train ``request.method``; resumable, cancellable, with validation-based checkpoint selection."""
    run = RunFolder(check_writable_folder(request.out_dir, "the run folder"))
    resumed = (
        load_checkpoint(run.last, expected_method=request.method)
        if request.resume and run.last.exists()
        else None
    )
    initial = None if request.initial_checkpoint is None else load_checkpoint(request.initial_checkpoint)
    method_class, config, preprocess = _method_and_preprocess(request, resumed, initial)
    needs_source = config.iterations > (resumed.step if resumed is not None else 0)
    label_map = _check_request(request, method_class, initial, needs_source)
    finish_with_adabn = method_class.applies_adabn or request.adabn
    if config.iterations == 0 and initial is None and resumed is None:
        raise CardiacUDAError(
            "iterations=0 means 'no training': give a trained checkpoint to start from (--init FILE)"
        )
    device = resolve_device(request.device)
    torch.manual_seed(request.seed)
    # The networks and their starting weights first: a checkpoint that does not fit is refused before
    # minutes of reading volumes.
    method = method_class(config, label_map.num_classes, device)
    if resumed is not None:
        load_weights(method, resumed, run.last)
    elif initial is not None:
        load_weights(method, initial, request.initial_checkpoint, with_optimizers=False)

    def loaded(done: int, total: int, name: str) -> None:
        emit({"event": "status", "message": f"loaded {name} ({done}/{total})"})

    source_pool = (
        SlicePool(load_volumes(request.source, label_map, preprocess, True, loaded), config.context_slices)
        if needs_source
        else None
    )
    target_pool = (
        SlicePool(load_volumes(request.target, label_map, preprocess, False, loaded), config.context_slices)
        if (method_class.uses_target or finish_with_adabn) and request.target
        else None
    )
    validation = load_volumes(request.validation, label_map, preprocess, True, loaded)
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
        emit({"event": "status", "message": f"initialised from {request.initial_checkpoint}"})

    def metadata() -> dict[str, Any]:
        return {
            "history": history,
            "best_score": best_score,
            "seed": request.seed,
            "request": request.to_dict(),
        }

    def save_last() -> None:
        save_checkpoint(
            _checkpoint(method, label_map, preprocess, step, metadata(), with_optimizers=True), run.last
        )
        write_json_atomic(run.history, history)
        emit({"event": "checkpoint", "path": str(run.last), "step": step})

    started, first_step = time.monotonic(), step
    running: dict[str, list[float]] = {}
    log_every = max(1, min(25, config.iterations // 50))
    while step < config.iterations:
        if should_stop():
            save_last()
            emit({"event": "stopped", "step": step, "checkpoint": str(run.last)})
            return TrainOutcome(run.best, run.last, step, True, history, "stopped before the end")
        method.train_mode()
        method.apply_learning_rate(step)
        torch.manual_seed(request.seed * 1_000_003 + step)
        rng = step_generator(request.seed, step)
        source_batch = source_pool.sample(rng, config.batch_size, config.augment).to(device)
        target_batch = (
            None
            if target_pool is None
            else target_pool.sample(rng, config.batch_size, config.augment).to(device)
        )
        losses = _run_train_step(method, source_batch, target_batch, step, config.batch_size)
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
            f"no training: the weights of {request.initial_checkpoint}"
            if step == 0 and initial is not None
            else f"no validation during training: the last weights (step {step})"
        )
    if finish_with_adabn:
        selection = (
            _finish_with_adabn(method, run, target_pool, validation, label_map, preprocess, emit) + selection
        )
    emit({"event": "trained", "best_checkpoint": str(run.best), "selection": selection, "step": step})
    return TrainOutcome(run.best, run.last, step, False, history, selection)


def _finish_with_adabn(
    method: AdaptationMethod,
    run: RunFolder,
    target_pool: SlicePool | None,
    validation: Sequence[LoadedVolume],
    label_map: LabelMap,
    preprocess: PreprocessConfig,
    emit: EventSink,
) -> str:
    """Re-estimate BatchNorm on the target for the selected checkpoint and save it as ``best.pt``."""
    if target_pool is None:
        raise InputDataError("AdaBN adapts to the target domain: give target images")
    selected = load_checkpoint(run.best)
    method.load_state_dict(selected.state, with_optimizers=False)
    started = time.monotonic()
    layers = adapt_batchnorm(method, target_pool.images)
    seconds = round(time.monotonic() - started, 2)
    emit(
        {
            "event": "status",
            "message": f"AdaBN: {layers} BatchNorm layers re-estimated on {len(target_pool)} target slices",
        }
    )
    summary: dict[str, Any] = {"layers": layers, "target_slices": len(target_pool), "seconds": seconds}
    if validation:
        summary["validation"] = validate(method, validation, label_map, method.config.context_slices)
        emit({"event": "validation", "step": selected.step, "dice": summary["validation"], "after": "adabn"})
    metadata = {**selected.metadata, "adabn": summary}
    save_checkpoint(
        _checkpoint(method, label_map, preprocess, selected.step, metadata, with_optimizers=False), run.best
    )
    return "AdaBN on the target applied to: "


# ---- inference ---------------------------------------------------------------------------------


@torch.no_grad()
def predict_slices(method: AdaptationMethod, slices: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """``[S, k, H, W]`` prepared slices -> ``[S, H, W]`` uint8 classes (argmax of the logits)."""
    method.eval_mode()
    predictions = []
    for start in range(0, len(slices), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(slices[start : start + batch_size])).to(method.device)
        predictions.append(method.segment(batch).argmax(dim=1).to(torch.uint8).cpu().numpy())
    return np.concatenate(predictions)


def validate(
    method: AdaptationMethod, volumes: Sequence[LoadedVolume], label_map: LabelMap, context_slices: int
) -> dict[str, float]:
    """Mean per-volume 3D Dice per structure (and their mean) on prepared, labelled volumes."""
    per_structure: dict[str, list[float]] = {name: [] for name in label_map.class_names}
    for volume in volumes:
        predicted = predict_slices(method, volume.prepared.with_context(context_slices))
        scores = score_volume(predicted, volume.prepared.labels, (1.0, 1.0, 1.0), label_map.class_names)
        for name, score in scores.items():
            per_structure[name].append(score.dice)
    result = {name: float(np.mean(values)) for name, values in per_structure.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result


def keep_largest_components(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Per structure, keep only its largest 3D connected component (26-connectivity)."""
    cleaned = np.zeros_like(classes)
    for label in range(1, num_classes):
        components, count = ndimage.label(classes == label, structure=np.ones((3, 3, 3)))
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        cleaned[components == int(np.argmax(sizes)) + 1] = label
    return cleaned


class TrainedModel:
    """A checkpoint loaded for use: segment target volumes, translate source volumes."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device, path: Path) -> None:
        method_class = get_method(checkpoint.method)
        self.checkpoint = checkpoint
        self.label_map = LabelMap.from_dict(checkpoint.label_map)
        self.preprocess = PreprocessConfig.from_dict(checkpoint.preprocess)
        self.method = method_class(
            config_from_dict(method_class, checkpoint.method_config), self.label_map.num_classes, device
        )
        load_weights(self.method, checkpoint, path, with_optimizers=False)
        self.method.eval_mode()

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", expected_method: str | None = None) -> TrainedModel:
        return cls(load_checkpoint(path, expected_method=expected_method), resolve_device(device), Path(path))

    @property
    def can_translate(self) -> bool:
        return self.method.can_translate

    def segment_image(
        self, image: sitk.Image, largest_component: bool = True, batch_size: int = 16
    ) -> sitk.Image:
        """A whole volume -> a class label map (uint8, 0 = background) on the input's exact grid."""
        prepared = prepare_volume(image, self.preprocess)
        predicted = predict_slices(
            self.method, prepared.with_context(self.preprocess.context_slices), batch_size
        )
        classes = restore_labels(prepared, predicted)
        if largest_component:
            array = keep_largest_components(sitk.GetArrayFromImage(classes), self.label_map.num_classes)
            cleaned = sitk.GetImageFromArray(array)
            cleaned.CopyInformation(classes)
            classes = cleaned
        return classes

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
    produce: Callable[[sitk.Image], sitk.Image],
    label_map: LabelMap,
    emit: EventSink,
    should_stop: StopCheck,
) -> list[Path]:
    """Read each case's image, write ``produce(image)`` to its :func:`output_path`; a stop ends the loop early."""
    check_unique_names(list(cases), "the volumes to process")
    check_writable_folder(out_dir, "the output folder")
    written = []
    for index, case in enumerate(cases):
        if should_stop():
            emit({"event": "stopped", "step": index})
            break
        image, _ = load_case(VolumeCase(case.name, case.image), label_map)
        written.append(write_image(produce(image), output_path(out_dir, case, tag)))
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
) -> list[Path]:
    """Segment every case; writes ``<case>_seg<ext>`` (the input's format) with the label map's file values.
    Returns the paths (fewer than ``cases`` when stopped)."""

    def segment(image: sitk.Image) -> sitk.Image:
        return classes_to_values(model.segment_image(image, largest_component), model.label_map)

    return _for_each_case(cases, out_dir, SEGMENTATION_TAG, segment, model.label_map, emit, should_stop)


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
        cases, out_dir, TRANSLATION_TAG, model.translate_image, model.label_map, emit, should_stop
    )


# ---- evaluation --------------------------------------------------------------------------------


def evaluate_cases(
    predictions: Sequence[Path], references: Sequence[VolumeCase], label_map: LabelMap
) -> EvaluationTable:
    """Per-volume 3D Dice / ASSD / HD95 (mm) of prediction files against the cases' reference labels."""
    if len(predictions) != len(references):
        raise InputDataError(f"{len(predictions)} predictions for {len(references)} reference cases")
    check_unique_names(list(references), "the reference cases")
    table = EvaluationTable(tuple(label_map.class_names), [])
    for prediction_path, case in zip(predictions, references):
        if case.label is None:
            raise InputDataError(f"case {case.name} has no reference label map to evaluate against")
        reference_image, reference = load_case(case, label_map)
        predicted = read_label(prediction_path, label_map, reference_image, f"prediction {prediction_path}")
        table.add(case.name, score_images(predicted, reference, label_map.class_names))
    return table
