"""A residual feature critic: PnP-AdaNet's domain critic module (DCM, Dou et al. 2018, §3.3, Fig. 2).

"Several stacked residual blocks; in each block the number of feature maps is doubled until it
reaches 512, while their sizes are decreased." Each stage is a residual block that widens the
features, then a stride-2 convolution that halves their size (the released code's ``cls_1`` ...
``cls_6``). A global average and a linear layer give one unbounded score per image: a Wasserstein
critic, not a classifier, so there is no sigmoid.

Global averaging (instead of the code's flatten of a fixed-size map) lets one critic take any
feature size, e.g. 12x12 for the 96x96 phantom and 24x24 for 192x192 MS-CMRSeg slices. Narrower and
on the full-size logits, the same network is PnP-AdaNet's second ("mask") critic of the released code
(16 -> 256 channels; the code uses plain stride-4 convolutions there).
"""

from __future__ import annotations

import torch
from torch import nn

from CardiacUDALib.nets.blocks import normalisation_2d
from CardiacUDALib.nets.dilated_resnet import ResidualBlock


class ResidualCritic(nn.Module):
    """``[B, in_channels, h, w]`` features -> ``[B]`` scores."""

    def __init__(
        self,
        in_channels: int,
        width: int = 64,
        max_width: int = 512,
        stages: int = 3,
        norm: str = "none",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1),  # brings any number of feature levels to `width`
            nn.LeakyReLU(negative_slope),
        ]
        channels = width
        for stage in range(stages):
            out_channels = min(width * 2**stage, max_width)
            layers += [
                ResidualBlock(channels, out_channels, norm, negative_slope),
                nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1, bias=norm == "none"),
                normalisation_2d(norm, out_channels),
                nn.LeakyReLU(negative_slope),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(features).mean(dim=(2, 3))).squeeze(1)
