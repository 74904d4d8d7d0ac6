"""Networks of the contrastive image-translation methods (``cut_seg``, ``cisfa``): CUT's building blocks.

* :class:`ResnetGenerator`: CUT's ResNet generator (Park et al. 2020, after Johnson et al.): 7x7 stem,
  two stride-2 downsamplings, residual blocks, two transposed-convolution upsamplings, 7x7 head and
  tanh. Instance norm without affine, reflection padding. The encoder is a list of *stages* whose
  outputs :meth:`ResnetGenerator.encode` returns for PatchNCE.
* :class:`PatchGANDiscriminator`: the 70x70 PatchGAN of pix2pix/CUT (one score per overlapping patch).
* :class:`PatchSampler`: CUT's ``PatchSampleF``: random locations of each tapped feature map, the same
  locations for the query and the key image, one two-layer MLP head per layer, L2 normalisation. Its
  heads are sized by the first features it sees (CUT's ``data_dependent_initialize``).

CUT's default generator anti-aliases its down- and upsampling (blur pooling); this port uses plain
strided / transposed convolutions (CUT's ``--no_antialias --no_antialias_up``): the seed papers describe
"convolutional layers with stride equal to 2" (CISFA §4.2) and do not mention blur pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False)


class ResidualBlock(nn.Module):
    """x + (pad, conv3, IN, ReLU, pad, conv3, IN)(x), as CUT's ``ResnetBlock``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _instance_norm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _instance_norm(channels),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.body(features)


class ResnetGenerator(nn.Module):
    """``[B, 1, H, W]`` images in [-1, 1] -> translated images in [-1, 1] (H, W multiples of 4).

    Encoder stages (the indices PatchNCE taps, CUT's layers 0, 4, 8, 12, 16 with anti-aliasing):
    0 the input image, 1 the first down-convolution's output, 2 the second down-convolution's output
    (both before their normalisation), 2 + b the output of residual block b (b = 1..``residual_blocks``).
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, width: int = 64, residual_blocks: int = 9
    ) -> None:
        super().__init__()
        bottleneck = 4 * width
        self.stages = nn.ModuleList(
            [
                nn.Identity(),
                nn.Sequential(
                    nn.ReflectionPad2d(3),
                    nn.Conv2d(in_channels, width, 7, bias=False),
                    _instance_norm(width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                ),
                nn.Sequential(
                    _instance_norm(2 * width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(2 * width, bottleneck, 3, stride=2, padding=1, bias=False),
                ),
                nn.Sequential(_instance_norm(bottleneck), nn.ReLU(inplace=True), ResidualBlock(bottleneck)),
                *(ResidualBlock(bottleneck) for _ in range(residual_blocks - 1)),
            ]
        )
        self.decoder = nn.Sequential(
            *(
                layer
                for channels in (bottleneck, 2 * width)
                for layer in (
                    nn.ConvTranspose2d(
                        channels, channels // 2, 3, stride=2, padding=1, output_padding=1, bias=False
                    ),
                    _instance_norm(channels // 2),
                    nn.ReLU(inplace=True),
                )
            ),
            nn.ReflectionPad2d(3),
            nn.Conv2d(width, out_channels, 7),
            nn.Tanh(),
        )

    @property
    def stage_count(self) -> int:
        return len(self.stages)

    def encode(self, images: torch.Tensor, stages: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of the given encoder stages (G_enc^l of Zeng Eq. 6, CISFA §3.2), in that order."""
        outputs: dict[int, torch.Tensor] = {}
        features = images
        for index, stage in enumerate(self.stages[: max(stages) + 1]):
            features = stage(features)
            outputs[index] = features
        return [outputs[index] for index in stages]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = images
        for stage in self.stages:
            features = stage(features)
        return self.decoder(features)


class PatchGANDiscriminator(nn.Module):
    """``[B, C, H, W]`` -> ``[B, 1, h, w]`` raw scores, one per overlapping patch (pix2pix/CUT ``NLayerDiscriminator``).

    4x4 convolutions: stride 2 with ``layers`` doublings of the width (at most 8x), then two stride-1
    convolutions; LeakyReLU(0.2); instance norm on every layer but the first and the last.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = width
        for layer in range(1, layers + 1):
            stride = 2 if layer < layers else 1
            out_channels = width * min(2**layer, 8)
            modules += [
                nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=False),
                _instance_norm(out_channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out_channels
        modules.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*modules)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class PatchSampler(nn.Module):
    """F of CUT / Zeng Eq. 6-7 / CISFA §3.2: sample locations of each feature map, project, L2-normalise.

    One head per tapped layer: Linear(C_l, units), ReLU, Linear(units, units). The channel counts C_l
    come from the encoder's features (:meth:`build`), so whoever owns the sampler creates the heads'
    optimiser after building them.
    """

    def __init__(self, units: int = 256, patches: int = 256) -> None:
        super().__init__()
        self.units = units
        self.patches = patches
        self.heads = nn.ModuleList()

    @property
    def built(self) -> bool:
        return len(self.heads) > 0

    def build(self, channels: Sequence[int]) -> None:
        """One projection head per layer, for features with ``channels[l]`` channels."""
        self.heads.extend(
            nn.Sequential(
                nn.Linear(count, self.units), nn.ReLU(inplace=True), nn.Linear(self.units, self.units)
            )
            for count in channels
        )

    def forward(
        self, features: Sequence[torch.Tensor], locations: Sequence[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer ``[B, P, units]`` unit-length embeddings and the flat locations ``[P]`` they were taken at.

        New random locations (the same for every image of the batch, as CUT) unless ``locations`` is
        given: the key image's locations are passed for the query image, so positives line up.
        """
        if not self.built:
            raise RuntimeError("PatchSampler.build must be called before the sampler is used")
        embeddings, used = [], []
        for index, (feature, head) in enumerate(zip(features, self.heads)):
            flat = feature.flatten(2).transpose(1, 2)  # [B, H*W, C]
            if locations is None:
                count = min(self.patches, flat.shape[1])
                chosen = torch.randperm(flat.shape[1], device=feature.device)[:count]
            else:
                chosen = locations[index]
            embeddings.append(F.normalize(head(flat[:, chosen]), dim=-1))
            used.append(chosen)
        return embeddings, used


def labels_at_locations(labels: torch.Tensor, size: Sequence[int], locations: torch.Tensor) -> torch.Tensor:
    """Class of each sampled location: ``[B, H, W]`` labels nearest-resized to ``size``, read at flat ``locations``.

    CISFA Fig. 2: "we downsample the label to the same resolution as each layer of feature maps"
    (nearest here; the released code resizes bilinearly and rounds, which invents classes at borders).
    """
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized.flatten(1)[:, locations].long()
