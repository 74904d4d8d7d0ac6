"""What ``cut_seg`` and ``cisfa`` share: a CUT generator kept faithful by PatchNCE, and a segmenter on its output.

Both methods translate source slices into the target's appearance with a one-sided generator G
(no cycle), trained against an image discriminator D_g and kept faithful to its input by PatchNCE
on the generator's own encoder features; a U-Net learns to segment G(source) with the source labels
and is applied to real target slices. This module holds the common config, networks and verbs;
each method file holds its losses and its update order.

Intensities: the generator ends in tanh, so both methods ask for min-max intensity ([0, 1], Zeng §3)
and work in [-1, 1] inside (``2 x - 1``, CISFA's released preprocessing); :meth:`translate` hands images
back in [0, 1]. Single slices only (``context_slices`` 1): the generator translates one slice.

The projection heads of the patch sampler are built from the generator's features of the first batch
(CUT's ``data_dependent_initialize``) and get their own Adam (same settings) right after. Before
a checkpoint is loaded, or saved before any batch, they are built from a dummy slice: their shape
depends on the generator's channel counts only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.losses.contrastive import GAN_LOSSES, foreground_weights, patch_nce_loss
from CardiacUDALib.methods.base import AdaptationMethod, MethodConfig
from CardiacUDALib.nets.translation import (
    PatchGANDiscriminator,
    PatchSampler,
    ResnetGenerator,
    labels_at_locations,
)
from CardiacUDALib.nets.unet import UNet

DUMMY_SLICE_SIZE = 32  # any size the generator accepts: the heads' shapes depend on channel counts only


@dataclass
class ContrastiveTranslationConfig(MethodConfig):
    """CUT's defaults (Park et al.; both seeds use its generator, discriminator and sampler)."""

    iterations: int = 20000  # ~200 epochs of batch 4 on MS-CMRSeg C0 (CISFA §4.2: 200 epochs)
    batch_size: int = 4  # CISFA §4.2
    learning_rate: float = 2e-4  # Zeng §3, CISFA §4.2, every optimiser
    adam_betas: tuple[float, float] = (0.5, 0.999)  # CISFA §4.2, CUT
    lr_schedule: str = "constant"  # neither paper decays; CISFA's released job does not
    intensity: str | None = "minmax"  # tanh generator: images in [0, 1], used as [-1, 1]
    gan_loss: str = "lsgan"  # "lsgan" (Zeng Eq. 2-3, CUT, CISFA's code) or "vanilla" (BCE, CISFA Eq. 1)
    generator_width: int = 64  # ngf
    residual_blocks: int = 9
    nce_layers: tuple[int, ...] = (0, 1, 2, 3, 7)  # encoder stages: input, two down-convs, blocks 1 and 5
    nce_patches: int = 256  # locations per layer and image
    projection_units: int = 256
    nce_temperature: float = 0.07  # CUT's nce_T
    nce_weight: float = 1.0  # lambda_NCE
    discriminator_width: int = 64  # ndf
    discriminator_layers: int = 3  # 70x70 PatchGAN
    segmenter_width: int = 64  # U-Net of 4 resolution stages, 64-1024 channels (CISFA §4.2)
    segmenter_depth: int = 4
    segmenter_norm: str = "batch"
    zero_allowed: ClassVar[frozenset[str]] = MethodConfig.zero_allowed | {"residual_blocks"}
    positive: ClassVar[frozenset[str]] = MethodConfig.positive | {"nce_temperature"}


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] (min-max preprocessing) -> [-1, 1], the generator's range."""
    return images * 2.0 - 1.0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], the data's range."""
    return (images + 1.0) / 2.0


class ContrastiveTranslationMethod(AdaptationMethod):
    """Generator, image discriminator, patch sampler and segmenter, with the verbs every such method shares.

    Subclasses build their optimisers and implement ``train_step``; ``steps_done`` counts their steps
    and lives in the checkpoint (a two-stage schedule reads it).
    """

    config: ContrastiveTranslationConfig
    can_translate = True

    def __init__(self, config: ContrastiveTranslationConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        _check_config(config)
        self.generator = ResnetGenerator(1, 1, config.generator_width, config.residual_blocks).to(device)
        self.image_discriminator = PatchGANDiscriminator(
            1, config.discriminator_width, config.discriminator_layers
        ).to(device)
        self.patch_sampler = PatchSampler(config.projection_units, config.nce_patches).to(device)
        self.segmenter = UNet(
            1, num_classes, config.segmenter_width, config.segmenter_depth, config.segmenter_norm
        ).to(device)
        self.heads_optimizer = self._build_projection_heads()
        self.steps_done = 0

    def adam(self, modules: Iterable[nn.Module]) -> torch.optim.Adam:
        parameters = [parameter for module in modules for parameter in module.parameters()]
        return torch.optim.Adam(parameters, lr=self.config.learning_rate, betas=self.config.adam_betas)

    # ---- the patch sampler's heads ---------------------------------------------------------------
    def _build_projection_heads(self) -> torch.optim.Adam:
        """Size F's heads by G_enc's feature channels (read from a dummy slice: they do not depend on the
        slice size), then their optimiser. Built with the networks, so that every rank of a torchrun
        run starts from the same heads and steps them with the engine's knowledge."""
        images = torch.zeros(1, 1, DUMMY_SLICE_SIZE, DUMMY_SLICE_SIZE, device=self.device)
        with torch.no_grad():
            features = self.generator.encode(images, self.config.nce_layers)
        self.patch_sampler.build([feature.shape[1] for feature in features])
        self.patch_sampler.to(self.device)
        return self.adam([self.patch_sampler])

    def patch_nce(
        self, inputs: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean over the tapped layers of PatchNCE between G_enc(outputs) (queries) and G_enc(inputs) (keys).

        Zeng Eq. 5-10 / CISFA Eq. 2-4 (mean over layers, as CUT, rather than the sum). With ``labels``,
        each location is weighted by :func:`foreground_weights` of its label (CISFA Eq. 3).
        """
        layers = self.config.nce_layers
        with torch.no_grad():  # the keys are detached anyway (patch_nce_terms)
            key_features = self.generator.encode(inputs, layers)
        keys, locations = self.patch_sampler(key_features)
        queries, _ = self.patch_sampler(self.generator.encode(outputs, layers), locations)
        losses = []
        for query, key, feature, chosen in zip(queries, keys, key_features, locations):
            weights = None
            if labels is not None:
                patch_labels = labels_at_locations(labels, feature.shape[-2:], chosen)
                weights = foreground_weights(patch_labels, self.foreground_weight)
            losses.append(patch_nce_loss(query, key, self.config.nce_temperature, weights))
        return torch.stack(losses).mean()

    @property
    def foreground_weight(self) -> float:
        """w of CISFA Eq. 3; 1 (unweighted) unless a method says otherwise."""
        return 1.0

    # ---- verbs --------------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.segmenter(to_signed(images)).float()

    @torch.no_grad()
    def translate(self, images: torch.Tensor) -> torch.Tensor:
        """Source slices in [0, 1] -> G(slices) in [0, 1]: the target's appearance, the source's anatomy."""
        with self.autocast():
            return to_unit(self.generator(to_signed(images)).float())

    def networks(self) -> dict[str, nn.Module]:
        return {
            "generator": self.generator,
            "image_discriminator": self.image_discriminator,
            "patch_sampler": self.patch_sampler,
            "segmenter": self.segmenter,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"patch_sampler": self.heads_optimizer}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        super().load_state_dict(state, with_optimizers)
        self.steps_done = int(state.get("steps_done", 0))


def _check_config(config: ContrastiveTranslationConfig) -> None:
    if config.context_slices != 1:
        raise CardiacUDAError("the translation methods work on single slices: use context_slices=1")
    if config.intensity != "minmax":
        raise CardiacUDAError(
            "the translation methods' generator outputs [-1, 1] (tanh): they need intensity='minmax'"
        )
    if config.gan_loss not in GAN_LOSSES:
        raise CardiacUDAError(f"gan_loss must be one of {', '.join(GAN_LOSSES)}, not {config.gan_loss!r}")
    stages = 3 + config.residual_blocks
    if not config.nce_layers or any(layer < 0 or layer >= stages for layer in config.nce_layers):
        raise CardiacUDAError(
            f"nce_layers must be encoder stages 0..{stages - 1} (0 input, 1-2 down-convolutions, "
            f"2+b residual block b); got {list(config.nce_layers)}"
        )
