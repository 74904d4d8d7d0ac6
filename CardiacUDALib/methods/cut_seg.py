"""``cut_seg``: contrastive translation learning for segmentation (Zeng et al., ICASSP), and the two-stage CUT baseline.

L_tot = L_gen + L_dis + L_seg + L_PatchNCE (Zeng Eq. 1), trained jointly:

* ``discriminator``: L_dis (Eq. 3), least squares: D(x_t) -> 1, D(G(x_s)) -> 0;
* ``adversarial``: L_gen (Eq. 2): D(G(x_s)) -> 1;
* ``patch_nce``: L^S_PatchNCE(x_s, G(x_s)) + L^T_PatchNCE(x_t, G(x_t)) (Eq. 4-11): PatchNCE on the
  translation and the identity PatchNCE on the target (CUT mode), each the mean over the tapped layers;
* ``cross_entropy`` + ``dice``: L_seg (Eq. 12-14) of the U-Net on G(x_s) with the source labels:
  cross-entropy weighted by w_c = 1 - class fraction (Eq. 13) plus soft Dice (Eq. 14).

"Two Adam optimizers ... One optimize the generator and the segmentation network, another optimize
the discriminator" (Zeng §3), lr 2e-4: so L_seg also reaches G through G(x_s). Per step, as CUT:
translate, update D on the detached translation, then update G (+ F's heads) and U on
L_gen + L_PatchNCE + L_seg.

``two_stage=True`` is the CUT baseline of both seeds (CISFA §4.3): the first ``translation_fraction``
of the iterations train CUT alone (no L_seg), the rest train the segmenter alone on G(x_s) with G
frozen. Eq. 14 writes Dice with squared denominators and a sum over classes; this uses the
library's batch soft Dice averaged over the foreground classes (the same as ``source_only``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from CardiacUDALib.data import SliceBatch
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.losses.contrastive import discriminator_loss, generator_loss
from CardiacUDALib.losses.segmentation import soft_dice_loss, weighted_cross_entropy
from CardiacUDALib.methods.contrastive_translation import (
    ContrastiveTranslationConfig,
    ContrastiveTranslationMethod,
    to_signed,
)
from CardiacUDALib.methods.registry import register_method

FAST_NETWORKS = {
    "generator_width": 8,
    "residual_blocks": 3,
    "nce_layers": (0, 1, 2, 3, 5),
    "nce_patches": 64,
    "projection_units": 64,
    "discriminator_width": 8,
    "segmenter_width": 8,
}


@dataclass
class CutSegConfig(ContrastiveTranslationConfig):
    two_stage: bool = False  # True: the CUT baseline (translate first, then train the segmenter)
    translation_fraction: float = 0.5  # two-stage: share of the iterations that train the translation
    identity_nce: bool = True  # L^T_PatchNCE on (x_t, G(x_t)), Zeng Eq. 8-10 (CUT mode)
    dice_weight: float = 1.0
    fractions: ClassVar[frozenset[str]] = ContrastiveTranslationConfig.fractions | {"translation_fraction"}


@register_method
class CutSeg(ContrastiveTranslationMethod):
    key = "cut_seg"
    description = (
        "Zeng et al.: CUT translation (LSGAN + PatchNCE) trained jointly with a U-Net on translated "
        "source images (two_stage=true: the CUT baseline)."
    )
    config_class = CutSegConfig
    config: CutSegConfig
    presets = {
        "paper": {},
        "fast": {
            **FAST_NETWORKS,
            "iterations": 100,
            "batch_size": 8,  # as source_only's fast preset: the segmenter needs the slices
            "learning_rate": 1e-3,
            "identity_nce": False,  # FastCUT: no identity PatchNCE (half the generator passes), lambda_NCE 10
            "nce_weight": 10.0,
            "validate_every": 50,
            "checkpoint_every": 50,
        },
    }

    def __init__(self, config: CutSegConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        if not 0.0 < config.translation_fraction < 1.0:
            raise CardiacUDAError("translation_fraction must lie between 0 and 1 (exclusive)")
        self.generator_optimizer = self.adam([self.generator, self.segmenter])
        self.discriminator_optimizer = self.adam([self.image_discriminator])

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "generator_and_segmenter": self.generator_optimizer,
            "discriminator": self.discriminator_optimizer,
            **super().optimizers(),
        }

    @property
    def translation_steps(self) -> int:
        """Two-stage: steps that train the translation before the segmenter's turn."""
        return round(self.config.translation_fraction * self.config.iterations)

    def train_step(self, source: SliceBatch, target: SliceBatch | None) -> dict[str, float]:
        source_images, target_images = to_signed(source.images), to_signed(target.images)
        if self.config.two_stage and self.steps_done >= self.translation_steps:
            losses = self.segmenter_step(source_images, source.labels)
        else:
            with self.autocast():
                translated = self.generator(source_images)
            losses = self.discriminator_step(translated.detach(), target_images)
            losses |= self.generator_step(source_images, target_images, source.labels, translated)
        self.steps_done += 1
        return losses

    def discriminator_step(self, translated: torch.Tensor, target_images: torch.Tensor) -> dict[str, float]:
        with self.autocast():
            loss = discriminator_loss(  # Eq. 3
                self.image_discriminator(target_images),
                self.image_discriminator(translated),
                self.config.gan_loss,
            )
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()
        return {"discriminator": loss.item()}

    def segmentation_loss(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 12-14: weighted cross-entropy (w_c = 1 - class fraction) and soft Dice of U(images)."""
        with self.autocast():
            logits = self.segmenter(images)
        return weighted_cross_entropy(logits, labels), soft_dice_loss(logits.float(), labels)

    def generator_step(
        self,
        source_images: torch.Tensor,
        target_images: torch.Tensor,
        labels: torch.Tensor,
        translated: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One update of G, F's heads and (one-stage) U on L_gen + L_PatchNCE (+ L_seg); images in [-1, 1]."""
        with self.autocast():
            if translated is None:
                translated = self.generator(source_images)
            adversarial = generator_loss(self.image_discriminator(translated), self.config.gan_loss)  # Eq. 2
            patch_nce = self.patch_nce(source_images, translated)  # Eq. 5
            if self.config.identity_nce:
                patch_nce = patch_nce + self.patch_nce(target_images, self.generator(target_images))  # Eq. 8
        loss = adversarial + self.config.nce_weight * patch_nce
        losses = {"adversarial": adversarial.item(), "patch_nce": patch_nce.item()}
        if not self.config.two_stage:
            cross_entropy, dice = self.segmentation_loss(translated, labels)
            loss = loss + cross_entropy + self.config.dice_weight * dice  # Eq. 1: L_seg joins the same update
            losses |= {"cross_entropy": cross_entropy.item(), "dice": dice.item()}
        self.generator_optimizer.zero_grad(set_to_none=True)
        self.heads_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.generator_optimizer.step()
        self.heads_optimizer.step()
        return losses

    def segmenter_step(self, source_images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Two-stage, second stage: U on G(x_s) with G frozen (Eq. 12-14)."""
        with torch.no_grad(), self.autocast():
            translated = self.generator(source_images)
        cross_entropy, dice = self.segmentation_loss(translated, labels)
        loss = cross_entropy + self.config.dice_weight * dice
        self.generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.generator_optimizer.step()
        return {"cross_entropy": cross_entropy.item(), "dice": dice.item()}
