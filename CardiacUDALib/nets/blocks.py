"""Small convolutional building blocks shared by the networks of every method."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.errors import CardiacUDAError

NORMALISATIONS = ("batch", "instance", "none")


def normalisation_2d(kind: str, channels: int) -> nn.Module:
    """BatchNorm (AdaBN can re-estimate it), InstanceNorm without affine (VarDA, CUT) or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "none":
        return nn.Identity()
    raise CardiacUDAError(f"setting 'norm' must be one of {', '.join(NORMALISATIONS)}, not {kind!r}")


def pad_to_multiple(tensor: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the last two dimensions at the bottom and right, repeating the edge, to multiples of ``multiple``.

    Networks that downsample by ``multiple`` take any slice size this way; crop their outputs back
    with ``[..., :height, :width]``.
    """
    height, width = tensor.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    return F.pad(tensor, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else tensor


class ConvNormAct(nn.Sequential):
    """3x3 convolution, normalisation, (leaky) ReLU. No bias when a normalisation follows."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str = "batch", negative_slope: float = 0.0
    ) -> None:
        activation: nn.Module = (
            nn.LeakyReLU(negative_slope, inplace=True) if negative_slope > 0 else nn.ReLU(inplace=True)
        )
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
            normalisation_2d(norm, out_channels),
            activation,
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvNormAct`, the unit of every U-Net level; optional dropout between them."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0
    ) -> None:
        layers: list[nn.Module] = [ConvNormAct(in_channels, out_channels, norm)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers.append(ConvNormAct(out_channels, out_channels, norm))
        super().__init__(*layers)
