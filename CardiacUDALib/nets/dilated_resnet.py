"""The dilated residual segmenter of Dou et al. 2018, §3.1 (PnP-AdaNet), as a flat list of stages.

Layout (base width ``w``, 16 in the paper; "layers" count 3x3 convolutions, the unit of the paper's
adaptation depth d = 13, 21, 31), following the released code's groups G1-G10:

====  =======================================  ==============  ================
conv  stage                                    resolution      layers (cum.)
====  =======================================  ==============  ================
G1    conv 3->w; residual(w); max-pool         H -> H/2        1, 3
G2    residual(w->2w); max-pool                H/2 -> H/4      5
G3    residual(2w->4w), residual(4w); pool     H/4 -> H/8      7, 9
G4    residual(4w->8w), residual(8w)           H/8             11, 13
G5-6  4x residual(16w)                         H/8             15 ... 21
G7    residual(16w->32w), residual(32w)        H/8             23, 25
G8    2x dilated residual(32w), dilation 2     H/8             27, 29
G9    2x conv-BN-leaky ReLU(32w)               H/8             30, 31
G10   conv -> 64*C*k channels, sub-pixel x8,   H               (head)
      5x5 smoothing conv -> C logits
====  =======================================  ==============  ================

Every convolution is followed by BatchNorm and a leaky ReLU (slope 0.2), and a widening residual
shortcut pads channels with zeros (no 1x1 projection), as in the released code. Upsampling is the
sub-pixel ("periodic shuffle") convolution of the code, not bilinear.

Because the stages form one list, the domain adaptation module of PnP-AdaNet (Eq. 3) is a copy of
the first stages, and :meth:`DilatedResNet.forward_with_features` runs any replacement of them
followed by the shared higher stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.nets.blocks import normalisation_2d, pad_to_multiple

DOWNSAMPLING = 8  # three 2x max-poolings


def _conv_norm(
    in_channels: int, out_channels: int, norm: str, dilation: int = 1, stride: int = 1
) -> list[nn.Module]:
    """A 3x3 convolution (no bias before a normalisation) and its normalisation."""
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=norm == "none",
        ),
        normalisation_2d(norm, out_channels),
    ]


class ResidualBlock(nn.Module):
    """conv-norm-lrelu-conv-norm plus shortcut, then lrelu; two of the paper's layers.

    A wider output pads the shortcut's channels with zeros (the released code's ``inc_dim``), so the
    block adds no parameters beyond its two convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "batch",
        negative_slope: float = 0.2,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"a residual block cannot narrow {in_channels} to {out_channels} channels")
        self.extra_channels = out_channels - in_channels
        self.body = nn.Sequential(
            *_conv_norm(in_channels, out_channels, norm, dilation),
            nn.LeakyReLU(negative_slope),
            *_conv_norm(out_channels, out_channels, norm, dilation),
        )
        self.activation = nn.LeakyReLU(negative_slope)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        shortcut = F.pad(features, (0, 0, 0, 0, 0, self.extra_channels)) if self.extra_channels else features
        return self.activation(self.body(features) + shortcut)


# (kind, output width in multiples of w, dilation, max-pool after) for each stage, in order.
_STAGES: tuple[tuple[str, int, int, bool], ...] = (
    ("conv", 1, 1, False),
    ("residual", 1, 1, True),
    ("residual", 2, 1, True),
    ("residual", 4, 1, False),
    ("residual", 4, 1, True),
    ("residual", 8, 1, False),
    ("residual", 8, 1, False),
    *(("residual", 16, 1, False),) * 4,
    *(("residual", 32, 1, False),) * 2,
    *(("residual", 32, 2, False),) * 2,
    *(("conv_norm", 32, 1, False),) * 2,
)


def conv_layers(module: nn.Module) -> int:
    """The number of 3x3 convolutions in ``module``: the paper's layer count."""
    return sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in module.modules())


class DilatedResNet(nn.Module):
    """``[B, in_channels, H, W]`` images -> ``[B, num_classes, H, W]`` logits (see the module docstring).

    ``upsample_channels_per_class`` (k): the sub-pixel convolution makes ``64 * num_classes * k``
    channels at H/8 that become ``num_classes * k`` channels at H (the code's k = 8).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 16,
        negative_slope: float = 0.2,
        upsample_channels_per_class: int = 8,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        channels = in_channels
        for kind, multiple, dilation, pool in _STAGES:
            out_channels = width * multiple
            if kind == "residual":
                layers = [ResidualBlock(channels, out_channels, "batch", negative_slope, dilation)]
            elif kind == "conv":
                layers = [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False)]
            else:
                layers = [*_conv_norm(channels, out_channels, "batch"), nn.LeakyReLU(negative_slope)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            channels = out_channels
        self.stages = nn.ModuleList(stages)
        upsampled = num_classes * upsample_channels_per_class
        self.head = nn.Sequential(
            nn.Conv2d(channels, DOWNSAMPLING**2 * upsampled, 3, padding=1, bias=False),
            nn.PixelShuffle(DOWNSAMPLING),
            nn.Conv2d(upsampled, num_classes, 5, padding=2, padding_mode="reflect"),
        )
        depths, total = [], 0
        for stage in self.stages:
            total += conv_layers(stage)
            depths.append(total)
        self.stage_depths: tuple[int, ...] = tuple(depths)  # layers up to and including each stage
        last_pool = max(i for i, (*_, pool) in enumerate(_STAGES) if pool)
        self.full_downsampling_depth = depths[last_pool]  # from here on every stage works at H/8
        self.stage_channels: tuple[int, ...] = tuple(width * multiple for _, multiple, _, _ in _STAGES)

    def stages_for_depth(self, depth: int) -> int:
        """How many leading stages hold exactly the first ``depth`` layers (an error between stages)."""
        if depth not in self.stage_depths:
            raise ValueError(
                f"depth {depth} does not end a stage of the segmenter; choose one of {list(self.stage_depths)}"
            )
        return self.stage_depths.index(depth) + 1

    def forward_with_features(
        self,
        images: torch.Tensor,
        front: Sequence[nn.Module] = (),
        feature_depths: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits, and the outputs of the stages ending at ``feature_depths`` (in that order).

        ``front`` replaces the first ``len(front)`` stages (PnP-AdaNet's DAM, Eq. 3); the rest are this
        network's. Inputs whose size is not a multiple of 8 are padded and the logits cropped back.
        """
        height, width = images.shape[-2:]
        features = pad_to_multiple(images, DOWNSAMPLING)
        wanted = {self.stages_for_depth(depth) - 1: depth for depth in feature_depths}
        kept: dict[int, torch.Tensor] = {}
        for index, stage in enumerate([*front, *self.stages[len(front) :]]):
            features = stage(features)
            if index in wanted:
                kept[wanted[index]] = features
        logits = self.head(features)[..., :height, :width]
        return logits, [kept[depth] for depth in feature_depths]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(images)[0]
