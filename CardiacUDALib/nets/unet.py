"""A 2D U-Net with configurable width and depth (Ronneberger et al. 2015).

The segmenter of ``source_only`` and ``adabn``, and of the translation-based methods. Inputs of
any height and width are accepted: they are padded to a multiple of ``2**depth`` and the output is
cropped back, so no layer hard-codes the training crop size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.nets.blocks import DoubleConv, pad_to_multiple


class UNetEncoder(nn.Module):
    """Contracting path: ``depth`` poolings; returns the feature map of every level, finest first."""

    def __init__(self, in_channels: int, width: int, depth: int, norm: str, dropout: float) -> None:
        super().__init__()
        widths = [width * 2**level for level in range(depth + 1)]
        self.levels = nn.ModuleList([DoubleConv(in_channels, widths[0], norm)])
        for level in range(1, depth + 1):
            bottom = level == depth
            self.levels.append(DoubleConv(widths[level - 1], widths[level], norm, dropout if bottom else 0.0))
        self.widths = widths

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = [self.levels[0](images)]
        for level in self.levels[1:]:
            features.append(level(F.max_pool2d(features[-1], 2)))
        return features


class UNetDecoder(nn.Module):
    """Expanding path: transposed-convolution upsampling, skip concatenation, :class:`DoubleConv`."""

    def __init__(self, widths: list[int], norm: str) -> None:
        super().__init__()
        coarse_to_fine = list(reversed(widths))
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(coarse, fine, 2, stride=2)
            for coarse, fine in zip(coarse_to_fine, coarse_to_fine[1:])
        )
        self.levels = nn.ModuleList(DoubleConv(2 * fine, fine, norm) for fine in coarse_to_fine[1:])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        decoded = features[-1]
        for upsample, level, skip in zip(self.upsamplers, self.levels, reversed(features[:-1])):
            decoded = level(torch.cat([upsample(decoded), skip], dim=1))
        return decoded


class UNet(nn.Module):
    """U-Net segmenter: ``[B, in_channels, H, W]`` images -> ``[B, num_classes, H, W]`` logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.encoder = UNetEncoder(in_channels, width, depth, norm, dropout)
        self.decoder = UNetDecoder(self.encoder.widths, norm)
        self.head = nn.Conv2d(width, num_classes, 1)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of every level (finest first); the last one is the bottleneck."""
        return self.encoder(pad_to_multiple(images, 2**self.depth))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        logits = self.head(self.decoder(self.encoder(pad_to_multiple(images, 2**self.depth))))
        return logits[..., :height, :width]
