"""Post-training stages: steps that change a trained model's state without gradient training.

The training engine runs them on the selected checkpoint after training, when the method names it
(``finishing_stages``) or the job does (``stages``), and saves the result as ``best.pt``; the stage's
summary goes into the checkpoint's metadata under the stage's name. The engine knows stages, not
methods.

``adabn`` (Li et al. 2016, AdaBN): a segmenter trained on the source normalises every layer with the
*source's* feature statistics; AdaBN replaces each BatchNorm layer's running mean and variance with those
of the *target* images; no weight changes, no labels, one pass over the target slices.

How the statistics are estimated (:func:`adapt_batchnorm`): all BatchNorm layers normalise with the
statistics of the current batch (as during training), every other layer is in eval mode (dropout
off), and a forward pre-hook accumulates the per-channel mean and variance of each layer's input over
**all** target pixels of all target slices (batches merged exactly, in float64). The running mean becomes the
population mean and the running variance the population (biased) variance of those inputs. Because
the pass normalises with batch statistics, the result does not depend on the model's previous
running statistics: applying AdaBN twice gives the same model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.methods.base import AdaptationMethod


class _InputStatistics:
    """Per-channel mean and (biased) variance of a layer's inputs over every batch it sees.

    Each batch's mean and variance come from ``torch.var_mean`` (two-pass, in the activations' own
    precision, no float64 copy of the activations); batches are merged in float64 with the exact
    pairwise formula of Chan et al., so the result is the population statistic over all pixels.
    """

    def __init__(self, channels: int) -> None:
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.sum_of_squared_deviations = torch.zeros(channels, dtype=torch.float64)
        self.count = 0

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        values = inputs[0].detach().float()
        batch_variance, batch_mean = torch.var_mean(values, dim=(0, 2, 3), correction=0)
        batch_count = values.numel() // values.shape[1]
        batch_mean, batch_variance = batch_mean.cpu().double(), batch_variance.cpu().double()
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean += delta * (batch_count / total)
        self.sum_of_squared_deviations += batch_variance * batch_count + delta * delta * (
            self.count * batch_count / total
        )
        self.count = total

    def mean_and_variance(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.sum_of_squared_deviations / self.count


def batchnorm_layers(method: AdaptationMethod) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        module
        for network in method.networks().values()
        for module in network.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]


@torch.no_grad()
def adapt_batchnorm(method: AdaptationMethod, target_slices: np.ndarray, batch_size: int = 32) -> int:
    """Set the running statistics of every BatchNorm layer on ``method``'s segmentation path to the target's.

    ``target_slices``: prepared target slices ``[N, k, H, W]`` (no augmentation). Returns the number of
    layers adapted; raises a clear error when the segmentation path has no BatchNorm layer.
    """
    layers = batchnorm_layers(method)
    if not layers:
        raise CardiacUDAError(
            f"method {method.key!r} has no BatchNorm layer in its networks, so AdaBN has nothing to re-estimate; "
            "use it with a BatchNorm segmenter (e.g. source_only with norm='batch')"
        )
    if len(target_slices) == 0:
        raise CardiacUDAError("AdaBN needs target images, and none were given")
    method.eval_mode()
    statistics = {layer: _InputStatistics(layer.num_features) for layer in layers}
    handles = [layer.register_forward_pre_hook(statistics[layer]) for layer in layers]
    for layer in layers:
        layer.train()  # normalise with batch statistics during the pass, as in training
    try:
        for start in range(0, len(target_slices), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(target_slices[start : start + batch_size]))
            method.segment(batch.to(method.device))
    finally:
        for handle in handles:
            handle.remove()
        method.eval_mode()
    adapted = [layer for layer in layers if statistics[layer].count > 0]
    if not adapted:
        raise CardiacUDAError(f"none of method {method.key!r}'s BatchNorm layers is on its segmentation path")
    for layer in adapted:
        mean, variance = statistics[layer].mean_and_variance()
        layer.running_mean.copy_(mean.to(layer.running_mean))
        layer.running_var.copy_(variance.to(layer.running_var))
    return len(adapted)


def adabn_stage(method: AdaptationMethod, target_slices: np.ndarray) -> tuple[dict[str, Any], str]:
    """AdaBN as a stage: its summary for the checkpoint and a line for the user."""
    started = time.monotonic()
    layers = adapt_batchnorm(method, target_slices)
    summary = {
        "layers": layers,
        "target_slices": len(target_slices),
        "seconds": round(time.monotonic() - started, 2),
    }
    return summary, f"AdaBN: {layers} BatchNorm layers re-estimated on {len(target_slices)} target slices"


@dataclass(frozen=True)
class FinishingStage:
    """A post-training stage: ``apply(method, target_slices)`` changes ``method`` in place and returns
    (summary for the checkpoint metadata, message for the user)."""

    name: str
    title: str  # said in front of the checkpoint selection, e.g. "AdaBN on the target"
    apply: Callable[[AdaptationMethod, np.ndarray], tuple[dict[str, Any], str]]


STAGES: dict[str, FinishingStage] = {"adabn": FinishingStage("adabn", "AdaBN on the target", adabn_stage)}
