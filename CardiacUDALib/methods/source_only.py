"""``source_only``: no adaptation. A U-Net trained on the labelled source, applied to the target.

The floor every adaptation method is compared with: a width-16 U-Net, 800 iterations of batch 8,
loss = class-weighted cross-entropy + Dice. The ``paper`` preset is the strongest plain floor
measured on MS-CMRSeg: instance norm, min-max intensities, no augmentation. ``fast`` (and ``adabn``,
which needs BatchNorm) keep BatchNorm, z-scored intensities, flips, 90-degree rotations and
intensity scale/shift jitter. With ``appearance`` (:mod:`CardiacUDALib.appearance`)
the source images get random new contrasts first (GIN, or IPA's two blended views with their
consistency term; or SLAug's location-scale views, :mod:`CardiacUDALib.location_scale`): single-source
domain generalisation, the ``gin_ipa`` and ``slaug`` methods' default. ``deform`` adds the papers'
random affine + elastic deformation to the flips and rotations.

    loss = sum over views v of [CE(f(x_v), y) + dice_weight * Dice(f(x_v), y)] / views
           + consistency_weight * mean_v KL(mean_v' p_v' || p_v)       (Ouyang et al. 2022, Eq. 8)
    slaug: [CE + dice_weight * Dice](f(GLA), y) + [CE + dice_weight * Dice](f(SBF(GLA, LLA)), y)
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
from CardiacUDALib.location_scale import class_location_scale, global_location_scale, saliency_balanced_fusion
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
    own_appearances = APPEARANCES[1:]  # all of them, in source_loss

    def __init__(self, config: SourceOnlyConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        if config.appearance == "slaug" and config.intensity != "minmax":
            raise CardiacUDAError(
                "appearance 'slaug' remaps intensities in [0, 1]: it needs --set intensity=minmax"
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
        self.optimizer.zero_grad(set_to_none=True)
        loss, losses = self.source_loss(source)
        loss.backward()
        self.optimizer.step()
        return losses

    def source_loss(self, source: SliceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The supervised loss on the source batch (with its appearance views), and its parts.

        Call it after zeroing the gradients: with ``slaug`` the global view's share is backpropagated
        here already (its input gradient is the fusion's saliency); the caller backpropagates the
        returned loss, as with every other appearance."""
        if self.config.appearance == "slaug":
            return self._saliency_balanced_loss(source)
        views = [source.images]
        if self.config.appearance != "none":
            views = appearance_views(source.images, self.config.appearance, generator_from_torch_seed())
        with self.autocast():
            logits = self.segmenter(torch.cat(views)).chunk(len(views))
        labels = source.labels.repeat(len(views), 1, 1)
        cross_entropy, dice = self._supervised_losses(torch.cat(logits), labels)
        consistency = view_consistency_loss(list(logits))
        loss = cross_entropy + self.config.dice_weight * dice + self.config.consistency_weight * consistency
        losses = {"loss": loss.item(), "cross_entropy": cross_entropy.item(), "dice": dice.item()}
        return loss, losses | ({"consistency": consistency.item()} if len(views) > 1 else {})

    def _supervised_losses(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return weighted_cross_entropy(logits, labels), soft_dice_loss(logits.float(), labels)

    def _saliency_balanced_loss(self, source: SliceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """SLAug's step (:mod:`CardiacUDALib.location_scale`): the loss on the global view GLA is
        backpropagated here, to the weights and to GLA itself; its input gradient weighs the fusion of
        GLA with the class-level view LLA; the fused image's loss is returned.

            L = [CE + dice_weight * Dice](f(GLA), y) + [CE + dice_weight * Dice](f(SBF(GLA, LLA)), y)
        """
        generator = generator_from_torch_seed()
        global_view = global_location_scale(source.images, generator).requires_grad_()
        class_view = class_location_scale(source.images, source.labels, generator)
        with self.autocast():
            global_logits = self.segmenter(global_view)
        global_ce, global_dice = self._supervised_losses(global_logits, source.labels)
        global_loss = global_ce + self.config.dice_weight * global_dice
        global_loss.backward()
        fused = saliency_balanced_fusion(global_view, class_view, global_view.grad)
        with self.autocast():
            fused_logits = self.segmenter(fused)
        fused_ce, fused_dice = self._supervised_losses(fused_logits, source.labels)
        fused_loss = fused_ce + self.config.dice_weight * fused_dice
        return fused_loss, {
            "loss": global_loss.item() + fused_loss.item(),
            "cross_entropy": (global_ce.item() + fused_ce.item()) / 2,
            "dice": (global_dice.item() + fused_dice.item()) / 2,
        }

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.segmenter(images).float()
