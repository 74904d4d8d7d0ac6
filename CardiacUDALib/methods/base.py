"""The one interface every adaptation method implements (DESIGN.md §2.1).

A method owns its networks and optimisers. The engine only calls :meth:`AdaptationMethod.train_step`
with a source batch and a target batch, :meth:`segment` on target slices, :meth:`translate` where the
method has a generator, and :meth:`state_dict` / :meth:`load_state_dict` for checkpoints. It knows
nothing method-specific.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from CardiacUDALib.appearance import SINGLE_VIEW_APPEARANCES, appearance_views, generator_from_torch_seed
from CardiacUDALib.data import SliceBatch
from CardiacUDALib.device import bfloat16_autocast
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.typed_values import checked, field_types


@dataclass
class MethodConfig:
    """Training settings every method has; a method's own config subclasses this.

    Defaults are each paper's; the ``fast`` preset of every method shrinks them for CPU demos and tests.
    """

    iterations: int = 800
    batch_size: int = 8
    learning_rate: float = 1e-3
    lr_schedule: str = "poly"  # "poly": lr * (1 - step/iterations)^0.9; "constant"
    context_slices: int = 1  # neighbouring slices as input channels (2.5D); must be odd
    intensity: str | None = (
        None  # None: the data's preprocessing preset; a method that needs one (VAE: minmax) sets it
    )
    augment: bool = True  # random flips, 90-degree rotations, intensity scale/shift (data.augment_batch)
    deform: bool = False  # with augment: random affine + elastic deformation first (deformation.py)
    shift: int = 0  # with augment: random in-plane translation of the window, up to this many pixels
    # appearance augmentation of the source branch (appearance.APPEARANCES): the engine gives every
    # method's train_step single-view ones (appearance.SINGLE_VIEW_APPEARANCES) already applied; a method
    # that needs the views in its loss (IPA's consistency, SLAug's saliency) lists them in own_appearances
    appearance: str = "none"
    amp: bool = True  # bfloat16 autocast on CUDA and on CPUs with native bfloat16 (device.bfloat16_autocast)
    # speed and several processes (README "Many GPUs"); none of these changes what a step computes
    channels_last: bool = False  # networks and batches in channels-last (NHWC) memory order
    compile: bool = False  # torch.compile every network for training
    prefetch: bool = True  # draw and augment the next step's batches in a background thread
    sync_batchnorm: bool = False  # under torchrun: BatchNorm batch statistics over all ranks (GPUs only)
    validate_every: int = 100
    checkpoint_every: int = 100

    # Ranges, checked by build_config before anything is built: every integer setting is at least 1
    # and every number at least 0, except the settings named here (subclasses add their own).
    zero_allowed: ClassVar[frozenset[str]] = frozenset({"iterations", "shift"})  # integers that may be 0
    positive: ClassVar[frozenset[str]] = frozenset({"learning_rate"})  # numbers that must be > 0
    fractions: ClassVar[frozenset[str]] = frozenset()  # numbers in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AdaptationMethod:
    """Base class: subclasses set the class attributes and implement the verbs."""

    key: ClassVar[str]
    description: ClassVar[str]  # one line, shown by `cardiac-uda methods` and in the Slicer combo box
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "fast": {}}
    uses_target: ClassVar[bool] = True  # False: the target images are not needed for training
    can_translate: ClassVar[bool] = False
    # post-training stages (stages.STAGES) the engine runs on the selected checkpoint, e.g. ("adabn",)
    finishing_stages: ClassVar[tuple[str, ...]] = ()
    needs_initial_checkpoint: ClassVar[bool] = False  # True: it refines a trained model (--init)
    own_appearances: ClassVar[tuple[str, ...]] = ()  # appearances its train_step applies itself

    def __init__(self, config: MethodConfig, num_classes: int, device: torch.device) -> None:
        usable = ("none", *SINGLE_VIEW_APPEARANCES, *self.own_appearances)
        if config.appearance not in usable:
            raise CardiacUDAError(
                f"method {self.key!r} cannot use appearance {config.appearance!r}: one of "
                f"{', '.join(dict.fromkeys(usable))}"
            )
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.bfloat16 = bfloat16_autocast(device, config.amp)  # autocast() runs in bfloat16 (fixed per run)
        self._float32_outputs = False  # the forward hooks of autocast() are on the networks

    # ---- verbs -------------------------------------------------------------------------------
    def train_step(self, source: SliceBatch, target: SliceBatch | None) -> dict[str, float]:
        """One iteration: forward, backward and optimiser steps; returns named scalar losses."""
        raise NotImplementedError

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Target slices ``[B, k, H, W]`` -> class logits ``[B, C, H, W]``.

        Does not change the networks' train/eval modes: the caller sets them (``eval_mode`` for inference;
        AdaBN runs it with BatchNorm layers in train mode).
        """
        raise NotImplementedError

    def translate(self, images: torch.Tensor) -> torch.Tensor:
        """Source slices -> the same slices in the target's appearance (methods with a generator)."""
        raise CardiacUDAError(f"method {self.key!r} has no image generator: it cannot translate images")

    def networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    # ---- shared machinery --------------------------------------------------------------------
    def with_appearance(self, source: SliceBatch) -> SliceBatch:
        """The source batch ``train_step`` gets: with a single-view appearance the method does not apply
        itself, each image in a new random appearance (labels untouched); else the batch as it is."""
        appearance = self.config.appearance
        if appearance not in SINGLE_VIEW_APPEARANCES or appearance in self.own_appearances:
            return source
        (view,) = appearance_views(source.images, appearance, generator_from_torch_seed())
        return SliceBatch(view, source.labels)

    def learning_rate_factor(self, step: int) -> float:
        """Multiplier of every optimiser's initial learning rate at ``step``; methods may override."""
        if self.config.lr_schedule == "constant":
            return 1.0
        if self.config.lr_schedule == "poly":
            return (1.0 - min(step, self.config.iterations) / max(self.config.iterations, 1)) ** 0.9
        raise CardiacUDAError(f"unknown lr_schedule {self.config.lr_schedule!r}; use 'poly' or 'constant'")

    def apply_learning_rate(self, step: int) -> None:
        factor = self.learning_rate_factor(step)
        for optimizer in self.optimizers().values():
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor

    def train_mode(self) -> None:
        for network in self.networks().values():
            network.train()

    def eval_mode(self) -> None:
        for network in self.networks().values():
            network.eval()

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bfloat16 autocast where ``amp`` applies (no loss scaling needed with bfloat16).

        Every network's floating outputs come back as float32, so that what the caller computes from them
        (losses, softmax and Dice, pseudo-labels) stays in float32; only the networks' own layers run in
        bfloat16."""
        if not self.bfloat16:  # no autocast context at all (also on devices without one, such as "meta")
            yield
            return
        if not self._float32_outputs:
            for network in self.networks().values():
                network.register_forward_hook(_float32_outputs)
            self._float32_outputs = True
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            yield

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {name: network.state_dict() for name, network in self.networks().items()},
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers().items()},
        }

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        for name, network in self.networks().items():
            network.load_state_dict(state["networks"][name])
        if with_optimizers:
            for name, optimizer in self.optimizers().items():
                if name in state.get("optimizers", {}):
                    optimizer.load_state_dict(state["optimizers"][name])


def _as_float32(value: Any) -> Any:
    """``value`` with its bfloat16 tensors as float32: a tensor, or one in tuples, lists, dicts, dataclasses."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, (tuple, list)):
        return type(value)([_as_float32(item) for item in value])
    if isinstance(value, dict):
        return {key: _as_float32(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return dataclasses.replace(value, **{f.name: _as_float32(getattr(value, f.name)) for f in fields})
    return value


def _float32_outputs(module: nn.Module, inputs: Any, output: Any) -> Any:
    """Forward hook of :meth:`AdaptationMethod.autocast`."""
    return _as_float32(output)


def build_config(method: type[AdaptationMethod], preset: str = "paper", **overrides: Any) -> MethodConfig:
    """The method's config: dataclass defaults, then the preset, then explicit overrides."""
    if preset not in method.presets:
        raise CardiacUDAError(
            f"method {method.key!r} has no preset {preset!r}; choose one of {', '.join(method.presets)}"
        )
    values = {**method.presets[preset], **overrides}
    types = field_types(method.config_class)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise CardiacUDAError(
            f"unknown setting(s) {', '.join(unknown)} for method {method.key!r}; known: {', '.join(sorted(types))}"
        )
    config = method.config_class(
        **{name: checked_setting(method.config_class, name, value) for name, value in values.items()}
    )
    if config.context_slices % 2 == 0:
        raise CardiacUDAError(f"context_slices must be a positive odd number, not {config.context_slices}")
    return config


def checked_setting(config_class: type[MethodConfig], name: str, value: Any) -> Any:
    """``value`` for setting ``name`` if its type and range fit (see ``MethodConfig``'s ranges)."""
    value = checked(value, field_types(config_class)[name], f"setting {name!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if name in config_class.fractions:
        allowed, fits = "between 0 and 1", 0 <= value <= 1
    elif name in config_class.positive:
        allowed, fits = "greater than 0", value > 0
    elif isinstance(value, int) and name not in config_class.zero_allowed:
        allowed, fits = "at least 1", value >= 1
    else:
        allowed, fits = "at least 0", value >= 0
    if not fits:
        raise CardiacUDAError(f"setting {name!r} must be {allowed}, not {value}")
    return value


def config_from_dict(method: type[AdaptationMethod], values: dict[str, Any]) -> MethodConfig:
    """Rebuild a saved config; tuples saved as lists come back as tuples where the default is one."""
    fields = {field.name: field for field in dataclasses.fields(method.config_class)}
    restored = {
        name: tuple(value) if isinstance(value, list) and isinstance(fields[name].default, tuple) else value
        for name, value in values.items()
        if name in fields
    }
    return method.config_class(**restored)
