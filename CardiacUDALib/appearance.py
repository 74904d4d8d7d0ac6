"""Appearance augmentation for single-source domain generalisation: new looks for the same anatomy.

A network trained on bSSFP alone meets LGE with other contrasts; if every training image gets a
random, plausible new intensity mapping, the network has to rely on shape. One setting chooses the
augmentation of a method's source branch (:data:`APPEARANCES`):

* ``none``;
* ``gin`` (Ouyang et al., "Causality-inspired single-source domain generalization for medical image
  segmentation", IEEE TMI 2022, §III-B): each image goes through its own freshly drawn shallow
  convolutional network (4 layers, 2 hidden channels, kernels of 1 or 3, weights and biases
  N(0, 1), leaky ReLU between layers), is mixed with the input by a random ``alpha ~ U(0, 1)`` and
  rescaled to the input's Frobenius norm (Eq. 2-3);
* ``gin_ipa`` (same paper, §III-C, interventional pseudo-correlation augmentation): two GIN views are
  blended by a smooth random map ``b`` in [0, 1] (cubic interpolation of a coarse random control grid,
  one control point per 48 pixels) into ``b g1 + (1 - b) g2`` and ``(1 - b) g1 + b g2`` (Eq. 6); the
  method trains on both and adds a consistency term between their predictions
  (:func:`view_consistency_loss`, Eq. 8, weight 10 in the paper; averaged over classes as the
  authors' code does: summed over classes it is 4 times stronger and, here, collapsed the training
  to one class).

Every function draws from an explicit :class:`torch.Generator` (on the CPU), so a seed reproduces the
augmentation exactly; labels are never touched (the anatomy stays where it was).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

APPEARANCES = ("none", "gin", "gin_ipa", "slaug")  # slaug: location_scale.py, a training-step hook
SINGLE_VIEW_APPEARANCES = ("gin",)  # one view, no loss term of its own: any method can train on it
GIN_LAYERS = 4
GIN_HIDDEN_CHANNELS = 2
GIN_KERNEL_SIZES = (1, 3)
GIN_NEGATIVE_SLOPE = 0.01
IPA_CONTROL_SPACING = 48  # pixels between the control points of the blend map (the paper: 24 at half size)


def generator_from_torch_seed() -> torch.Generator:
    """A generator seeded from torch's RNG, which the engine seeds per step: augmentations drawn from it
    are a function of (seed, step), so a resumed run draws the same ones."""
    return torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))


def _normal(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device=like.device, dtype=like.dtype)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device=like.device, dtype=like.dtype)


def random_intensity_network(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """GIN (Eq. 2-3): ``[B, C, H, W]`` -> the same shape, each image through its own random shallow net.

    One grouped convolution per layer runs the B networks at once (group b holds image b's kernels).
    """
    batch, channels, height, width = images.shape
    widths = [channels] + [GIN_HIDDEN_CHANNELS] * (GIN_LAYERS - 1) + [channels]
    features = images.reshape(1, batch * channels, height, width)
    for layer, (inputs, outputs) in enumerate(zip(widths[:-1], widths[1:])):
        kernel = GIN_KERNEL_SIZES[int(torch.randint(len(GIN_KERNEL_SIZES), (1,), generator=generator))]
        weights = _normal((batch * outputs, inputs, kernel, kernel), generator, images)
        bias = _normal((batch * outputs,), generator, images)
        features = F.conv2d(features, weights, bias, padding=kernel // 2, groups=batch)
        if layer < GIN_LAYERS - 1:
            features = F.leaky_relu(features, GIN_NEGATIVE_SLOPE)
    remapped = features.reshape(batch, channels, height, width)
    alpha = _uniform((batch, 1, 1, 1), generator, images)
    mixed = alpha * remapped + (1 - alpha) * images  # Eq. 3: mixed with the input
    input_norm = images.flatten(1).norm(dim=1).view(batch, 1, 1, 1)
    mixed_norm = mixed.flatten(1).norm(dim=1).view(batch, 1, 1, 1)
    return mixed * input_norm / (mixed_norm + 1e-5)  # the input's Frobenius norm


def smooth_blend_map(
    batch: int, height: int, width: int, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """IPA's pseudo-correlation map ``[B, 1, H, W]``: smooth, random, rescaled to [0, 1] per image."""
    rows = max(2, math.ceil(height / IPA_CONTROL_SPACING) + 1)
    columns = max(2, math.ceil(width / IPA_CONTROL_SPACING) + 1)
    control = _uniform((batch, 1, rows, columns), generator, like) * 2 - 1
    field = F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)
    return rescale_per_image(field, 1e-6)


def rescale_per_image(maps: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``[B, C, H, W]`` maps, each rescaled to [0, 1] by its own minimum and maximum (+ ``epsilon``)."""
    shape = (-1,) + (1,) * (maps.dim() - 1)
    low = maps.flatten(1).min(dim=1).values.view(shape)
    high = maps.flatten(1).max(dim=1).values.view(shape)
    return (maps - low) / (high - low + epsilon)


def pseudo_correlation_views(
    images: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """IPA (Eq. 6): two GIN views of each image, blended by one smooth map and by its complement."""
    first = random_intensity_network(images, generator)
    second = random_intensity_network(images, generator)
    blend = smooth_blend_map(images.shape[0], images.shape[2], images.shape[3], generator, images)
    return blend * first + (1 - blend) * second, (1 - blend) * first + blend * second


def appearance_views(images: torch.Tensor, appearance: str, generator: torch.Generator) -> list[torch.Tensor]:
    """The views a method trains its segmenter on: the images, one GIN view, or IPA's two views."""
    if appearance == "none":
        return [images]
    if appearance == "gin":
        return [random_intensity_network(images, generator)]
    if appearance == "gin_ipa":
        return list(pseudo_correlation_views(images, generator))
    raise ValueError(f"unknown appearance {appearance!r}; one of {', '.join(APPEARANCES)}")


def view_consistency_loss(logits: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 8: the KL divergence from the views' mean class distribution to each view's, as in the
    authors' release (averaged over views, pixels and classes); zero for a single view."""
    if len(logits) < 2:
        return logits[0].new_zeros(())
    log_probabilities = [F.log_softmax(view.float(), dim=1) for view in logits]
    mean = torch.stack([view.exp() for view in log_probabilities]).mean(dim=0)
    return torch.stack([F.kl_div(view, mean, reduction="none").mean() for view in log_probabilities]).mean()
