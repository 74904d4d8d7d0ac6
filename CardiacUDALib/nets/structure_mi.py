"""UDA-VAE++'s Structure Mutual Information Estimation (SMIE) block (Lu, Zheng, Gupta, CVPRW 2022).

Deep-InfoMax-style critics of the mutual information between a domain's segmentation Y (logits at
1/1, 1/2 and 1/4 resolution) and its reconstruction R (the reconstructed images at the same scales):
a global critic scores a whole (Y, R) pair, a local critic scores every position, and a prior
discriminator tells the segmentation from noise. Negatives pair Y with the next slice's R in the batch.

The released code flattens 80x80 maps into fixed-width linear layers, which ties it to 160x160 crops.
Here every map is first average-pooled to a ``grid`` x ``grid`` (adaptive), so the same block serves
training crops and any other input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.losses.variational import jensen_shannon_mi
from CardiacUDALib.nets.blocks import ConvNormAct


def at_half_scale(maps: list[torch.Tensor]) -> torch.Tensor:
    """Maps at 1/1, 1/2 and 1/4 (finest first) -> one stack at 1/2: max-pool the finest, upsample the coarsest."""
    full, half, quarter = maps
    size = half.shape[-2:]
    return torch.cat(
        [F.adaptive_max_pool2d(full, size), half, F.interpolate(quarter, size=size, mode="bilinear")], dim=1
    )


class PooledVector(nn.Sequential):
    """Convolutions, then an adaptive average pool to ``grid`` x ``grid``, flattened."""

    def __init__(self, channels: list[int], grid: int) -> None:
        layers: list[nn.Module] = [ConvNormAct(a, b, "instance") for a, b in zip(channels, channels[1:])]
        super().__init__(*layers, nn.AdaptiveAvgPool2d(grid), nn.Flatten())


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers[:-1])


class GlobalCritic(nn.Module):
    """T(Y, R) for a whole slice: R -> 3 -> 1 channels, Y -> 3 channels, pooled, concatenated, MLP 128-128-1."""

    def __init__(self, segmentation_channels: int, reconstruction_channels: int, grid: int) -> None:
        super().__init__()
        self.reconstruction = PooledVector([reconstruction_channels, 3, 1], grid)
        self.segmentation = PooledVector([segmentation_channels, 3], grid)
        self.score = mlp([4 * grid * grid, 128, 128, 1])

    def forward(self, segmentation: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.segmentation(segmentation), self.reconstruction(reconstruction)], dim=1)
        return self.score(features)


class LocalCritic(nn.Module):
    """T(Y, R) per position: a 32-d summary of Y broadcast onto R's 3-channel features, 1x1 convs 64-64-1."""

    def __init__(self, segmentation_channels: int, reconstruction_channels: int, grid: int) -> None:
        super().__init__()
        self.segmentation = nn.Sequential(
            PooledVector([segmentation_channels, 3, 1], grid), nn.Linear(grid * grid, 32)
        )
        self.reconstruction = ConvNormAct(reconstruction_channels, 3, "instance")
        self.score = nn.Sequential(
            nn.Conv2d(35, 64, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 1, 1),
        )

    def forward(self, segmentation: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        features = self.reconstruction(reconstruction)
        summary = self.segmentation(segmentation)[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        return self.score(torch.cat([features, summary], dim=1))


class PriorDiscriminator(nn.Module):
    """D(Y): probability (as a logit) that Y is noise from the prior rather than a segmentation."""

    def __init__(self, segmentation_channels: int, grid: int) -> None:
        super().__init__()
        self.features = PooledVector([segmentation_channels, 1], grid)
        self.score = mlp([grid * grid, 256, 256, 1])

    def forward(self, segmentation: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(F.avg_pool2d(segmentation, 2)))


@dataclass
class StructureMI:
    """The three estimates of one SMIE pass (higher = more information shared)."""

    global_mi: torch.Tensor
    local_mi: torch.Tensor
    prior: torch.Tensor


class StructureMIEstimator(nn.Module):
    """One domain's SMIE block: global and local Jensen-Shannon MI (Eq. 3) and the prior term (Eq. 11)."""

    def __init__(
        self,
        num_classes: int,
        image_channels: int,
        grid: int = 20,
        prior_noise: str = "normal",
        scales: int = 3,
    ) -> None:
        super().__init__()
        if prior_noise not in ("normal", "uniform"):
            raise ValueError(f"prior_noise must be 'normal' or 'uniform', not {prior_noise!r}")
        self.prior_noise = prior_noise
        segmentation_channels, reconstruction_channels = scales * num_classes, scales * image_channels
        self.global_critic = GlobalCritic(segmentation_channels, reconstruction_channels, grid)
        self.local_critic = LocalCritic(segmentation_channels, reconstruction_channels, grid)
        self.prior_discriminator = PriorDiscriminator(segmentation_channels, grid)

    def forward(self, segmentation: list[torch.Tensor], reconstruction: list[torch.Tensor]) -> StructureMI:
        """``segmentation``: logits, ``reconstruction``: images, each at 1/1, 1/2, 1/4 (finest first)."""
        y, r = at_half_scale(segmentation), at_half_scale(reconstruction)
        r_other = r.roll(1, dims=0)  # negatives: another slice's reconstruction (the released code's roll)
        global_mi = jensen_shannon_mi(self.global_critic(y, r), self.global_critic(y, r_other))
        local_mi = jensen_shannon_mi(self.local_critic(y, r), self.local_critic(y, r_other))
        noise = torch.randn_like(y) if self.prior_noise == "normal" else torch.rand_like(y)
        # Eq. 11's prior term: log D(noise) + log(1 - D(Y))
        prior = (
            F.logsigmoid(self.prior_discriminator(noise)).mean()
            + F.logsigmoid(-self.prior_discriminator(y)).mean()
        )
        return StructureMI(global_mi, local_mi, prior)
