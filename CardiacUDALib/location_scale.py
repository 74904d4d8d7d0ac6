"""SLAug: location-scale appearance augmentation with saliency-balancing fusion.

Su et al., "Rethinking data augmentation for single-source domain generalization in medical image
segmentation", AAAI 2023. Images in [0, 1] (min-max intensities) get new intensity mappings:

* **global location-scale augmentation (GLA)**: the whole image through one random monotone Bezier
  curve (4 control points: the image's minimum and maximum, two random ones between), then a random
  scale ``s ~ N(1, 0.1)`` clipped to [0.9, 1.1] and location ``l ~ N(0, 0.5)``, clipped so that the
  20th-80th percentile band stays inside [0, 1]: ``clip(s x + l, 0, 1)``;
* **class-level location-scale augmentation (LLA)**: the same, drawn separately for each class region
  of the label map; the curve of a region may be reversed (decreasing: the contrast inverted), always
  for the background, with probability 1/2 for a structure (a cubic Bezier curve through control
  points inside the box is monotone, so the authors' "inverse" curves are exactly the reversed ones).
  Pixels at or below 0.01 (the empty border) keep their value;
* **saliency-balancing fusion (SBF)**: the gradient of the segmentation loss with respect to the GLA
  image, root-mean-square over channels, average-pooled on an 18 x 18 grid and interpolated back
  smoothly (bicubic here; a B-spline in the authors' code), rescaled to [0, 1] per image, is the
  weight ``w`` of ``w * GLA + (1 - w) * LLA``: where the network looks, the globally remapped image;
  elsewhere, the class-level remap. The network trains on both GLA and the fused image (a training
  step hook: it needs the network's input gradient, see ``SourceOnly.source_loss``).

Every draw comes from an explicit :class:`torch.Generator`, so a seed reproduces the augmentation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from CardiacUDALib.appearance import rescale_per_image

BEZIER_CONTROL_POINTS = 4
CURVE_SAMPLES = 1000
SCALE_STD, SCALE_RANGE = 0.1, (0.9, 1.1)
LOCATION_STD = 0.5
SLIDE_PERCENTILE = 20.0
BACKGROUND_THRESHOLD = 0.01
REVERSE_PROBABILITY = 0.5  # a structure's curve (the background's is always reversed)
SALIENCY_GRID = 18


def _uniform(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand((), generator=generator).to(low)


def _bernstein_basis(points: int, samples: int) -> torch.Tensor:
    """``[points, samples]``: the Bernstein polynomials of degree ``points - 1`` on t in [0, 1]."""
    t = torch.linspace(0.0, 1.0, samples)
    degree = points - 1
    return torch.stack([math.comb(degree, i) * t ** (degree - i) * (1 - t) ** i for i in range(points)])


_BASIS = _bernstein_basis(BEZIER_CONTROL_POINTS, CURVE_SAMPLES)


def _interpolate(values: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``y(values)`` through sorted ``xs``; constant beyond the ends (as numpy.interp)."""
    index = torch.searchsorted(xs, values.contiguous()).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[index - 1], xs[index], ys[index - 1], ys[index]
    weight = ((values - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return y0 + weight * (y1 - y0)


def bezier_remap(values: torch.Tensor, generator: torch.Generator, reverse: bool) -> torch.Tensor:
    """``values`` through a random monotone Bezier curve from (min, min) to (max, max), or with
    ``reverse`` from (min, max) to (max, min)."""
    low, high = values.min(), values.max()
    interior = [
        (_uniform(low, high, generator), _uniform(low, high, generator))
        for _ in range(BEZIER_CONTROL_POINTS - 2)
    ]
    xs = torch.stack([low, *(x for x, _ in interior), high])
    ys = torch.stack([low, *(y for _, y in interior), high])
    basis = _BASIS.to(values)
    curve_x, curve_y = xs @ basis, ys @ basis
    curve_x, curve_y = torch.sort(curve_x).values, torch.sort(curve_y).values
    remapped = _interpolate(values, curve_x, curve_y)
    return low + high - remapped if reverse else remapped


def location_scale(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``clip(s * values + l, 0, 1)`` with the paper's random scale and location (module docstring)."""
    scale = float(torch.randn((), generator=generator)) * SCALE_STD + 1.0
    scale = min(max(scale, SCALE_RANGE[0]), SCALE_RANGE[1])
    location = float(torch.randn((), generator=generator)) * LOCATION_STD
    bounds = torch.tensor([SLIDE_PERCENTILE, 100 - SLIDE_PERCENTILE], device=values.device) / 100
    quantiles = torch.quantile(values.float().flatten(), bounds)
    location = min(max(location, -float(quantiles[0])), 1.0 - float(quantiles[1]))
    return (values * scale + location).clamp(0.0, 1.0)


def global_location_scale(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """GLA: ``[B, C, H, W]`` in [0, 1] -> the same shape, each image through its own monotone remap."""
    return torch.stack([location_scale(bezier_remap(image, generator, False), generator) for image in images])


def class_location_scale(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """LLA: each class region of each image (labels ``[B, H, W]``) gets its own remap; the empty
    border (at or below :data:`BACKGROUND_THRESHOLD`) keeps its values."""
    remapped = images.clone()
    for image, label, output in zip(images, labels, remapped):
        for index in torch.unique(label).tolist():
            region = (label == index).expand_as(image)
            reverse = index == 0 or float(torch.rand((), generator=generator)) < REVERSE_PROBABILITY
            output[region] = location_scale(bezier_remap(image[region], generator, reverse), generator)
        border = image <= BACKGROUND_THRESHOLD
        output[border] = image[border]
    return remapped


def saliency_map(input_gradient: torch.Tensor, grid: int = SALIENCY_GRID) -> torch.Tensor:
    """SBF's weight ``[B, 1, H, W]`` in [0, 1] from the loss's gradient at the input ``[B, C, H, W]``."""
    height, width = input_gradient.shape[-2:]
    magnitude = input_gradient.float().pow(2).mean(dim=1, keepdim=True).sqrt()
    coarse = F.adaptive_avg_pool2d(magnitude, grid)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return rescale_per_image(smooth, 1e-12)


def saliency_balanced_fusion(
    global_view: torch.Tensor, class_view: torch.Tensor, input_gradient: torch.Tensor
) -> torch.Tensor:
    """SBF: ``w * GLA + (1 - w) * LLA`` with ``w`` = :func:`saliency_map` of the GLA input gradient."""
    weight = saliency_map(input_gradient).to(global_view)
    return weight * global_view.detach() + (1 - weight) * class_view
