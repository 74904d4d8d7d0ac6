"""What the library offers, for the panel and the batch script: methods, checkpoints, compute devices.

Each function imports torch (through ``CardiacUDALib``) when it is called, never when this module is
imported: the module panel must open before PyTorch is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from CardiacUDALib.errors import CheckpointError
from CardiacUDALib.io import LabelMap


@dataclass(frozen=True)
class MethodChoice:
    """One entry of the method combo box."""

    key: str
    description: str
    presets: tuple[str, ...]
    iterations_by_preset: dict[str, int]
    uses_target: bool
    can_translate: bool
    finishing_stages: tuple[str, ...]  # post-training stages, e.g. adabn: adapts trained weights instantly


def method_choices() -> list[MethodChoice]:
    """Every registered method, with its presets and their number of iterations."""
    from CardiacUDALib.methods import METHODS, build_config

    return [
        MethodChoice(
            key=key,
            description=method.description,
            presets=tuple(method.presets),
            iterations_by_preset={
                preset: build_config(method, preset).iterations for preset in method.presets
            },
            uses_target=method.uses_target,
            can_translate=method.can_translate,
            finishing_stages=method.finishing_stages,
        )
        for key, method in METHODS.items()
    ]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds, read without building its networks."""

    path: Path
    method: str
    label_map: LabelMap
    step: int
    can_translate: bool
    adapts_with: tuple[str, ...]  # methods that can start from these weights without training (AdaBN)
    refined_by: tuple[str, ...]  # methods that train on, starting from these weights (self-training)

    def summary(self) -> str:
        classes = ", ".join(self.label_map.class_names)
        return f"{self.method} model ({classes}), step {self.step}"


def describe_checkpoint(path: str | Path) -> CheckpointInfo:
    """Read a checkpoint's header; a file of a method this CardiacUDA does not know is refused with advice."""
    from CardiacUDALib.checkpoint import load_checkpoint
    from CardiacUDALib.methods import METHODS

    checkpoint = load_checkpoint(path)
    method = METHODS.get(checkpoint.method)
    if method is None:
        raise CheckpointError(
            f"{path} holds a model of method '{checkpoint.method}', which this CardiacUDA does not know "
            f"(it knows {', '.join(sorted(METHODS))}): update the CardiacUDA extension, or choose another checkpoint"
        )
    return CheckpointInfo(
        path=Path(path),
        method=checkpoint.method,
        label_map=LabelMap.from_dict(checkpoint.label_map),
        step=checkpoint.step,
        can_translate=method.can_translate,
        adapts_with=tuple(
            key
            for key, other in METHODS.items()
            if other.finishing_stages
            and other.config_class is method.config_class
            and key != checkpoint.method
        ),
        refined_by=tuple(key for key, other in METHODS.items() if other.needs_initial_checkpoint),
    )


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the device combo box: the library's device name and what the user sees."""

    name: str
    label: str


def device_choices() -> list[DeviceChoice]:
    """``auto`` and ``cpu`` always; each CUDA GPU and Apple MPS when this PyTorch can use them."""
    import torch

    choices = [DeviceChoice("auto", "auto (GPU if available)"), DeviceChoice("cpu", "CPU")]
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        memory_gib = properties.total_memory / 2**30
        choices.append(
            DeviceChoice(f"cuda:{index}", f"GPU {index}: {properties.name} ({memory_gib:.0f} GiB)")
        )
    if torch.backends.mps.is_available():
        choices.append(DeviceChoice("mps", "Apple GPU (MPS)"))
    return choices
