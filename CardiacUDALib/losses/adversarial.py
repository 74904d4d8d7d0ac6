"""Wasserstein GAN terms (Arjovsky et al. 2017) as PnP-AdaNet uses them (Dou et al. 2018, Eq. 4-6).

The critic D estimates the Wasserstein distance between the "real" distribution (here: source
features) and the generated one (target features through the adaptation module) as
E[D(real)] - E[D(generated)], under a Lipschitz bound kept by clipping its weights.
"""

from __future__ import annotations

import torch
from torch import nn


def wasserstein_critic_loss(real_scores: torch.Tensor, generated_scores: torch.Tensor) -> torch.Tensor:
    """E[D(generated)] - E[D(real)] (Eq. 6): minimising it widens the critic's real-minus-generated gap."""
    return generated_scores.float().mean() - real_scores.float().mean()


def wasserstein_generator_loss(generated_scores: torch.Tensor) -> torch.Tensor:
    """-E[D(generated)] (Eq. 5): minimising it moves the generated samples up the critic's score."""
    return -generated_scores.float().mean()


@torch.no_grad()
def clip_weights(network: nn.Module, bound: float) -> None:
    """Clip every convolution and linear weight to [-bound, bound] (the Lipschitz constraint of Eq. 6).

    Biases and normalisation parameters are left alone, as in WGAN's and PnP-AdaNet's released code:
    a bias does not change a function's Lipschitz constant.
    """
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.clamp_(-bound, bound)
