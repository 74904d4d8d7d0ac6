"""The variational U-Net of VarDA (Wu & Zhuang, TMI 2021) and its reconstruction decoders.

Shared by ``varda``, ``uda_vae_pp`` and ``cmevae``. A U-Net encoder/decoder whose last three decoder
levels (1/4, 1/2 and full resolution) each end in a :class:`VariationalBlock`: a Gaussian posterior
q(z|x) per pixel and channel, sampled by reparameterisation while training and replaced by its mean
in eval mode (so inference is deterministic). A segmentation head reads each scale's latent, and a
fusion head combines the three scales' class probabilities into the output used at test time.

``sequential=True`` is UDA-VAE++'s *sequential reparameterisation*: the sampled latent of one scale is
what the decoder upsamples into the next; ``False`` keeps VarDA's parallel branches (the decoder goes
on with its deterministic features). No layer depends on the input size: any multiple of
``2**depth`` works, so training crops (160) and test slices (192) share one network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.nets.blocks import ConvNormAct, normalisation_2d
from CardiacUDALib.nets.unet import UNetDecoder, UNetEncoder

LATENT_SCALES = 3  # 1/1, 1/2, 1/4: VarDA's three variational blocks


@dataclass
class Latent:
    """One scale's posterior: ``sample`` = mean + exp(log_variance / 2) * eps (training) or the mean (eval)."""

    sample: torch.Tensor
    mean: torch.Tensor
    log_variance: torch.Tensor


@dataclass
class VariationalOutput:
    """``scale_logits`` and ``latents`` are ordered finest first: full resolution, 1/2, 1/4."""

    fused_logits: torch.Tensor
    scale_logits: list[torch.Tensor]
    latents: list[Latent]


class VariationalBlock(nn.Module):
    """Decoder features -> a diagonal Gaussian posterior and its reparameterised sample.

    As VarDA's code: mean = tanh(norm(x * a(x))) with a 1-channel 1x1-convolution map a ("spatial
    attention"), log-variance = tanh(norm(conv3x3(x))), bounded to [-1, 1] so the variance stays in
    [e^-1, e]. Sampling happens only in training mode (VarDA's gate: 1 in training, 0 at test).
    """

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.attention = nn.Conv2d(channels, 1, 1)
        self.mean_norm = normalisation_2d(norm, channels)
        self.log_variance = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), normalisation_2d(norm, channels), nn.Tanh()
        )

    def forward(self, features: torch.Tensor) -> Latent:
        mean = torch.tanh(self.mean_norm(features * self.attention(features)))
        log_variance = self.log_variance(features)
        if not self.training:
            return Latent(mean, mean, log_variance)
        sample = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)
        return Latent(sample, mean, log_variance)


class VariationalUNet(nn.Module):
    """``[B, k, H, W]`` images (H, W multiples of ``2**depth``) -> :class:`VariationalOutput`."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        depth: int = 4,
        norm: str = "instance",
        dropout: float = 0.0,
        sequential: bool = False,
    ) -> None:
        super().__init__()
        if depth < LATENT_SCALES - 1:
            raise ValueError(f"a variational U-Net needs depth >= {LATENT_SCALES - 1}, got {depth}")
        self.depth = depth
        self.sequential = sequential
        self.encoder = UNetEncoder(in_channels, width, depth, norm, dropout)
        self.decoder = UNetDecoder(self.encoder.widths, norm)
        self.latent_channels = self.encoder.widths[:LATENT_SCALES]  # finest first
        self.variational = nn.ModuleList(VariationalBlock(c, norm) for c in reversed(self.latent_channels))
        full, *coarse = self.latent_channels
        self.full_head = nn.Sequential(
            ConvNormAct(full, full, norm), nn.Conv2d(full, num_classes, 3, padding=1)
        )
        self.coarse_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in coarse)
        fused = LATENT_SCALES * num_classes
        self.fusion_head = nn.Sequential(
            ConvNormAct(fused, fused, norm), nn.Conv2d(fused, num_classes, 3, padding=1)
        )

    def forward(self, images: torch.Tensor) -> VariationalOutput:
        features = self.encoder(images)
        decoder = self.decoder
        first_variational = len(decoder.levels) - LATENT_SCALES
        decoded, latents = features[-1], []
        for index, (upsample, level, skip) in enumerate(
            zip(decoder.upsamplers, decoder.levels, reversed(features[:-1]))
        ):
            decoded = level(torch.cat([upsample(decoded), skip], dim=1))
            if index >= first_variational:
                latent = self.variational[index - first_variational](decoded)
                latents.append(latent)
                if self.sequential:  # UDA-VAE++: the sample, not the features, goes on to the next scale
                    decoded = latent.sample
        latents.reverse()  # finest first
        heads = [self.full_head, *self.coarse_heads]
        scale_logits = [head(latent.sample) for head, latent in zip(heads, latents)]
        size = scale_logits[0].shape[-2:]
        probabilities = [
            F.interpolate(logits.softmax(dim=1), size=size, mode="bilinear", align_corners=False)
            for logits in scale_logits
        ]
        fused_logits = self.fusion_head(torch.cat(probabilities, dim=1))
        return VariationalOutput(fused_logits, scale_logits, latents)


class ReconstructionDecoder(nn.Sequential):
    """p(x | y, z) at one scale: ``[latent, class map]`` -> image logits (apply a sigmoid for the image).

    VarDA's reconstructor: seven 3x3 convolutions with ``2w, 2w, w, w, w/2, w/2, out`` channels
    (w = 64 in the paper), BatchNorm and ReLU between them.
    """

    def __init__(self, latent_channels: int, num_classes: int, out_channels: int, width: int) -> None:
        channels = [latent_channels + num_classes, 2 * width, 2 * width, width, width]
        channels += [max(width // 2, 1)] * 2
        layers: list[nn.Module] = [ConvNormAct(a, b, "batch") for a, b in zip(channels, channels[1:])]
        layers.append(nn.Conv2d(channels[-1], out_channels, 3, padding=1))
        super().__init__(*layers)

    def forward(self, latent: torch.Tensor, class_map: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([latent, class_map.to(latent.dtype)], dim=1))


class ReconstructionDecoders(nn.Module):
    """One :class:`ReconstructionDecoder` per domain and latent scale (6 networks in VarDA)."""

    DOMAINS = ("source", "target")

    def __init__(self, latent_channels: list[int], num_classes: int, out_channels: int, width: int) -> None:
        super().__init__()
        self.decoders = nn.ModuleDict(
            {
                f"{domain}_{scale}": ReconstructionDecoder(channels, num_classes, out_channels, width)
                for domain in self.DOMAINS
                for scale, channels in enumerate(latent_channels)
            }
        )

    def forward(self, domain: str, scale: int, latent: torch.Tensor, class_map: torch.Tensor) -> torch.Tensor:
        return self.decoders[f"{domain}_{scale}"](latent, class_map)
