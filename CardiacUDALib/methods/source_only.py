"""``source_only``: no adaptation. A U-Net trained on the labelled source, applied to the target.

The floor every adaptation method is compared with. Its defaults make it a strong floor (issue #7):
width 16, 800 iterations of batch 8, flips, 90-degree rotations and intensity scale/shift jitter
on per-volume percentile-clipped, z-scored slices; loss = class-weighted cross-entropy + Dice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from CardiacUDALib.data import SliceBatch
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
    fractions: ClassVar[frozenset[str]] = MethodConfig.fractions | {"dropout"}


@register_method
class SourceOnly(AdaptationMethod):
    key = "source_only"
    description = "No adaptation: a U-Net trained on the labelled source only (the floor to beat)."
    config_class = SourceOnlyConfig
    presets = {
        "paper": {},
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
        with self.autocast():
            logits = self.segmenter(source.images)
        cross_entropy = weighted_cross_entropy(logits, source.labels)
        dice = soft_dice_loss(logits.float(), source.labels)
        loss = cross_entropy + self.config.dice_weight * dice
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "cross_entropy": cross_entropy.item(), "dice": dice.item()}

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.segmenter(images).float()
