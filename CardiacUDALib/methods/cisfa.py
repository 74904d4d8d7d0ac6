"""``cisfa``: contrastive image synthesis and self-supervised feature adaptation (Hu, Wang, Shi, WACV 2023).

Four networks: generator G (CUT ResNet), image discriminator D_g, segmenter Seg (U-Net) with a
global projection head, output-space discriminator D_s. Per step, in the paper's order (§3.4)
G -> Seg -> D_g & D_s, each update on fresh forward passes of the networks updated before it:

1. G (+ F's heads): ``adversarial`` D_g(G(x_a)) -> real (Eq. 4) + ``patch_nce``: label-weighted PatchNCE
   (Eq. 2-4), each location's term x ``foreground_weight`` (w = 2) where the source label is foreground.
2. Seg on x_hat_b = G(x_a) (re-translated by the updated G): ``dice`` 1 - Dice(Seg(x_hat_b), y_a) (Eq. 6;
   foreground classes, no cross-entropy) + ``global_contrast``: NT-Xent (Eq. 5) between the projected,
   globally pooled encoder features of x_a and x_hat_b (``gcl_pairing="source"``, the paper; ``"target"``:
   the released code's G(x_a) with the target slice x_b of the same batch index) + ``output_adversarial``.
3. D_g on real x_b vs x_hat_b (Eq. 1); D_s on Seg's fresh predictions (Eq. 7).

Output-space alignment. Eq. 7's D_s scores translated-source predictions s_hat_b as 1 and target
predictions s_b as 0. Eq. 6 as printed puts the segmenter's term on s_hat_b; the term that adapts the
*target* path is Seg making D_s score s_b as a translated-source prediction, and that is what
``output_alignment="adversarial"`` (default) does, as SIFA. ``"released_code"``: the segmenter
minimises D_s's own loss (cooperative, as the released code; research notes §7).

GAN terms are least squares by default (CISFA's released code, CUT); ``gan_loss="vanilla"`` gives the log
form of Eq. 1. D_s reads Seg's raw logits (released code). Adam lr 2e-4, betas (0.5, 0.999) for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from CardiacUDALib.data import SliceBatch
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.losses.contrastive import discriminator_loss, generator_loss, nt_xent_loss
from CardiacUDALib.losses.segmentation import soft_dice_loss, weighted_cross_entropy
from CardiacUDALib.methods.contrastive_translation import (
    ContrastiveTranslationConfig,
    ContrastiveTranslationMethod,
    to_signed,
)
from CardiacUDALib.methods.cut_seg import FAST_NETWORKS
from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.nets.translation import PatchGANDiscriminator

GCL_PAIRINGS = ("source", "target")
OUTPUT_ALIGNMENTS = ("adversarial", "released_code")


@dataclass
class CisfaConfig(ContrastiveTranslationConfig):
    nce_temperature: float = 0.2  # CISFA §3.2 ("we choose 0.2 for tau"); the released code: 0.07
    foreground_weight: float = 2.0  # w of Eq. 3
    gcl_pairing: str = "source"  # "source": (x_a, G(x_a)) as Eq. 5; "target": (G(x_a), x_b) as the code
    gcl_temperature: float = 0.2
    gcl_hidden: int = 256  # global head: pooled bottleneck -> 256 -> ReLU -> 128
    gcl_features: int = 128
    gcl_weight: float = 1.0
    output_alignment: str = "adversarial"  # or "released_code" (cooperative D_s term)
    output_adversarial_weight: float = 1.0
    cross_entropy_weight: float = 0.0  # Eq. 6 has Dice only; > 0 adds class-weighted CE (faster start on CPU)
    positive: ClassVar[frozenset[str]] = ContrastiveTranslationConfig.positive | {"gcl_temperature"}


class GlobalProjectionHead(nn.Sequential):
    """CISFA §3.3: MLP on the globally average-pooled bottleneck of Seg's encoder, z_i before normalisation."""

    def __init__(self, channels: int, hidden: int, features: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, features),
        )


@register_method
class Cisfa(ContrastiveTranslationMethod):
    key = "cisfa"
    description = (
        "CISFA (Hu et al.): CUT translation with label-weighted PatchNCE, global contrastive feature "
        "adaptation and an output-space discriminator."
    )
    config_class = CisfaConfig
    config: CisfaConfig
    presets = {
        "paper": {},
        "fast": {
            **FAST_NETWORKS,
            "iterations": 100,
            "batch_size": 8,  # as cut_seg's: with batch 4 the phantom gain over source_only was 0.04, with 8 0.15
            "learning_rate": 1e-3,
            "nce_weight": 10.0,  # FastCUT's lambda_NCE: content kept while the networks are tiny
            "cross_entropy_weight": 1.0,  # Dice alone barely moves in 100 CPU steps
            "output_adversarial_weight": 0.1,
            "gcl_hidden": 64,
            "gcl_features": 32,
            "validate_every": 50,
            "checkpoint_every": 50,
        },
    }

    def __init__(self, config: CisfaConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        if config.gcl_pairing not in GCL_PAIRINGS:
            raise CardiacUDAError(f"gcl_pairing must be one of {', '.join(GCL_PAIRINGS)}")
        if config.output_alignment not in OUTPUT_ALIGNMENTS:
            raise CardiacUDAError(f"output_alignment must be one of {', '.join(OUTPUT_ALIGNMENTS)}")
        bottleneck = self.segmenter.encoder.widths[-1]
        self.global_head = GlobalProjectionHead(bottleneck, config.gcl_hidden, config.gcl_features).to(device)
        self.output_discriminator = PatchGANDiscriminator(
            num_classes, config.discriminator_width, config.discriminator_layers
        ).to(device)
        self.generator_optimizer = self.adam([self.generator])
        self.segmenter_optimizer = self.adam([self.segmenter, self.global_head])
        self.discriminator_optimizer = self.adam([self.image_discriminator, self.output_discriminator])

    @property
    def foreground_weight(self) -> float:
        return self.config.foreground_weight

    def networks(self) -> dict[str, nn.Module]:
        return {
            **super().networks(),
            "global_head": self.global_head,
            "output_discriminator": self.output_discriminator,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "generator": self.generator_optimizer,
            "segmenter": self.segmenter_optimizer,
            "discriminators": self.discriminator_optimizer,
            **super().optimizers(),
        }

    def train_step(self, source: SliceBatch, target: SliceBatch | None) -> dict[str, float]:
        source_images, target_images = to_signed(source.images), to_signed(target.images)
        losses = self.generator_step(source_images, source.labels)
        with torch.no_grad(), self.autocast():
            translated = self.generator(source_images)  # x_hat_b from the updated G (§3.4)
        losses |= self.segmenter_step(source_images, translated, target_images, source.labels)
        losses |= self.discriminator_step(translated, target_images)
        self.steps_done += 1
        return losses

    def generator_step(self, source_images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """G and F's heads on Eq. 4: fool D_g + label-weighted PatchNCE; images in [-1, 1]."""
        with self.autocast():
            translated = self.generator(source_images)
            adversarial = generator_loss(self.image_discriminator(translated), self.config.gan_loss)
            patch_nce = self.patch_nce(source_images, translated, labels)  # Eq. 2-3, w_p per location
        loss = adversarial + self.config.nce_weight * patch_nce
        self.generator_optimizer.zero_grad(set_to_none=True)
        self.heads_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.generator_optimizer.step()
        self.heads_optimizer.step()
        return {"adversarial": adversarial.item(), "patch_nce": patch_nce.item()}

    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """z before normalisation: the global head on S_enc(images) (§3.3)."""
        return self.global_head(self.segmenter.encode(images)[-1])

    def segmenter_step(
        self,
        source_images: torch.Tensor,
        translated: torch.Tensor,
        target_images: torch.Tensor,
        labels: torch.Tensor,
    ) -> dict[str, float]:
        """Seg and its global head on Eq. 6: Dice + NT-Xent + output-space term."""
        with self.autocast():
            translated_logits = self.segmenter(translated)
            target_logits = self.segmenter(target_images)
            partner = source_images if self.config.gcl_pairing == "source" else target_images
            global_contrast = nt_xent_loss(  # Eq. 5
                self.global_embedding(partner), self.global_embedding(translated), self.config.gcl_temperature
            )
            if self.config.output_alignment == "adversarial":
                output_adversarial = generator_loss(
                    self.output_discriminator(target_logits), self.config.gan_loss
                )
            else:
                output_adversarial = self._output_discriminator_loss(translated_logits, target_logits)
        dice = soft_dice_loss(translated_logits.float(), labels)  # 1 - Dice(Seg(G(x_a)), y_a)
        cross_entropy = weighted_cross_entropy(translated_logits, labels)
        loss = (
            dice
            + self.config.cross_entropy_weight * cross_entropy
            + self.config.gcl_weight * global_contrast
            + self.config.output_adversarial_weight * output_adversarial
        )
        self.segmenter_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.segmenter_optimizer.step()
        return {
            "dice": dice.item(),
            "cross_entropy": cross_entropy.item(),
            "global_contrast": global_contrast.item(),
            "output_adversarial": output_adversarial.item(),
        }

    def _output_discriminator_loss(
        self, translated_logits: torch.Tensor, target_logits: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 7: D_s scores translated-source predictions as real (1), target predictions as fake (0)."""
        return discriminator_loss(
            self.output_discriminator(translated_logits),
            self.output_discriminator(target_logits),
            self.config.gan_loss,
        )

    def discriminator_step(self, translated: torch.Tensor, target_images: torch.Tensor) -> dict[str, float]:
        """D_g (Eq. 1: real x_b, fake x_hat_b) and D_s (Eq. 7) on fresh predictions of the updated Seg."""
        with torch.no_grad(), self.autocast():
            translated_logits = self.segmenter(translated)
            target_logits = self.segmenter(target_images)
        with self.autocast():
            image = discriminator_loss(
                self.image_discriminator(target_images),
                self.image_discriminator(translated),
                self.config.gan_loss,
            )
            output = self._output_discriminator_loss(translated_logits, target_logits)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        (image + output).backward()
        self.discriminator_optimizer.step()
        return {"image_discriminator": image.item(), "output_discriminator": output.item()}
