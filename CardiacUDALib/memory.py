"""Memory a training run needs, estimated before anything is allocated, against what the device has.

The method's networks are built on PyTorch's ``meta`` device (shapes without storage) and one batch is
segmented there: the weights (with their gradients and two Adam moments: 4 copies) and the outputs of
every layer for one batch (what the backward pass keeps) give a lower bound of what training holds. A
setting far beyond the device (``--size 100000``, ``batch_size=100000``, ``width=100000000``) is
refused with that estimate instead of being killed by the system mid-allocation.
"""

from __future__ import annotations

import math
import os

import torch

from CardiacUDALib.errors import InputDataError
from CardiacUDALib.methods import AdaptationMethod
from CardiacUDALib.methods.base import MethodConfig

BYTES_PER_VALUE = 4  # float32
COPIES_PER_WEIGHT = 4  # the weight, its gradient, Adam's two moments


def training_bytes(
    method_class: type[AdaptationMethod], config: MethodConfig, num_classes: int, size: int
) -> tuple[float, int] | None:
    """(weights, layer outputs of one batch) in values, or None where the method cannot be laid out
    without memory (a method that reads a value while it is built). Weights too many to count even
    as sizes (their bytes overflow 64 bits) are infinite."""
    try:
        with torch.device("meta"):  # every tensor the method creates, not only what it moves there
            method = method_class(config, num_classes, torch.device("meta"))
    except RuntimeError as error:
        if "overflow" in str(error):
            return math.inf, 0
        return None
    networks = method.networks().values()
    weights = sum(parameter.numel() for network in networks for parameter in network.parameters())
    outputs = [0]

    def count(module: torch.nn.Module, inputs: object, output: object) -> None:
        outputs[0] += output.numel() if isinstance(output, torch.Tensor) else 0

    hooks = [
        module.register_forward_hook(count)
        for network in networks
        for module in network.modules()
        if not list(module.children())
    ]
    try:
        with torch.no_grad():
            method.segment(torch.empty(config.batch_size, config.context_slices, size, size, device="meta"))
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return None  # meta tensors cannot do everything (.item(), data-dependent shapes): no estimate
    finally:
        for hook in hooks:
            hook.remove()
    return weights, outputs[0]


def device_bytes(device: torch.device) -> int | None:
    """The memory of ``device``: a GPU's, or the machine's physical memory; None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None  # Windows has no sysconf


def check_training_fits(
    method_class: type[AdaptationMethod],
    config: MethodConfig,
    num_classes: int,
    size: int,
    device: torch.device,
) -> None:
    """Refuse settings whose estimated memory exceeds the device's, with the estimate."""
    estimate, available = training_bytes(method_class, config, num_classes, size), device_bytes(device)
    if estimate is None or available is None:
        return
    weights, outputs = estimate
    needed = (COPIES_PER_WEIGHT * weights + outputs) * BYTES_PER_VALUE
    if needed > available:
        amount, counted = (
            ("more bytes than 64 bits count", "weights beyond counting")
            if math.isinf(needed)
            else (f"at least {needed / 2**30:,.1f} GiB", f"{weights:,.0f} weights, {outputs:,} layer outputs")
        )
        raise InputDataError(
            f"these settings need {amount} ({counted} for a batch of {config.batch_size} slices of {size} x "
            f"{size}), more than the {device.type} has ({available / 2**30:,.1f} GiB): lower the size, "
            "batch_size, width or depth"
        )
