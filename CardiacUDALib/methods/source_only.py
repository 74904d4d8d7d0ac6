"""``source_only``: no adaptation. A U-Net trained on the labelled source, applied to the target.

The floor every adaptation method is compared with: a width-16 U-Net, 800 iterations of batch 8,
loss = class-weighted cross-entropy + Dice. The ``paper`` preset is the strongest plain floor
measured on MS-CMRSeg: instance norm, min-max intensities, no augmentation. ``fast`` (and ``adabn``,
which needs BatchNorm) keep BatchNorm, z-scored intensities, flips, 90-degree rotations and
intensity scale/shift jitter. With ``appearance`` (:mod:`CardiacUDALib.appearance`)
the source images get random new contrasts first (GIN, or IPA's two blended views with their
consistency term): single-source domain generalisation, the ``gin_ipa`` method's default.

    loss = sum over views v of [CE(f(x_v), y) + dice_weight * Dice(f(x_v), y)] / views
           + consistency_weight * mean_v KL(mean_v' p_v' || p_v)       (Ouyang et al. 2022, Eq. 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from CardiacUDALib.appearance import (
    APPEARANCES,
    appearance_views,
    generator_from_torch_seed,
    view_consistency_loss,
)
from CardiacUDALib.data import SliceBatch
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.losses.segmentation import soft_dice_loss, weighted_cross_entropy
from CardiacUDALib.methods.base import AdaptationMethod, MethodConfig
from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.nets.unet import UNet


@dataclass
class SourceOnlyConfig(MethodConfig):
    width: int = 16
    depth: int = 4
    norm: str = "batch"
    dropout: float = 0.0
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    appearance: str = "none"  # source appearance augmentation: one of appearance.APPEARANCES
    consistency_weight: float = 10.0  # IPA's consistency between its two views (gin_ipa only)
    fractions: ClassVar[frozenset[str]] = MethodConfig.fractions | {"dropout"}


@register_method
class SourceOnly(AdaptationMethod):
    key = "source_only"
    description = "No adaptation: a U-Net trained on the labelled source only (the floor to beat)."
    config_class = SourceOnlyConfig
    presets = {
        # the strongest plain floor measured on MS-CMRSeg (68.4, benchmarks/RESULTS.md): instance norm,
        # min-max intensities, no augmentation
        "paper": {"norm": "instance", "intensity": "minmax", "augment": False},
        "fast": {
            "iterations": 150,
            "batch_size": 8,
            "width": 8,
            "validate_every": 50,
            "checkpoint_every": 50,
        },
    }
    uses_target = False

    def __init__(self, config: SourceOnlyConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        if config.appearance not in APPEARANCES:
            raise CardiacUDAError(
                f"setting 'appearance' must be one of {', '.join(APPEARANCES)}, not {config.appearance!r}"
            )
        self.segmenter = UNet(
            config.context_slices, num_classes, config.width, config.depth, config.norm, config.dropout
        ).to(device)
        self.optimizer = torch.optim.Adam(
            self.segmenter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )

    def networks(self) -> dict[str, nn.Module]:
        return {"segmenter": self.segmenter}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"segmenter": self.optimizer}

    def train_step(self, source: SliceBatch, target: SliceBatch | None) -> dict[str, float]:
        self.segmenter.train()
        loss, losses = self.source_loss(source)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return losses

    def source_loss(self, source: SliceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The supervised loss on the source batch (with its appearance views), and its parts."""
        views = [source.images]
        if self.config.appearance != "none":
            views = appearance_views(source.images, self.config.appearance, generator_from_torch_seed())
        with self.autocast():
            logits = self.segmenter(torch.cat(views)).chunk(len(views))
        labels = source.labels.repeat(len(views), 1, 1)
        cross_entropy = weighted_cross_entropy(torch.cat(logits), labels)
        dice = soft_dice_loss(torch.cat(logits).float(), labels)
        consistency = view_consistency_loss(list(logits))
        loss = cross_entropy + self.config.dice_weight * dice + self.config.consistency_weight * consistency
        losses = {"loss": loss.item(), "cross_entropy": cross_entropy.item(), "dice": dice.item()}
        return loss, losses | ({"consistency": consistency.item()} if len(views) > 1 else {})

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.segmenter(images).float()
