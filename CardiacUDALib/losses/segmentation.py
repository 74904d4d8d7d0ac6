"""Supervised segmentation losses shared by the methods: soft Dice and class-weighted cross-entropy.

Each method file shows which ones it combines, and how.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, include_background: bool = False, smooth: float = 1e-5
) -> torch.Tensor:
    """1 - mean soft Dice over classes, pooled over the whole batch (as SIFA/PnP-AdaNet and CISFA).

    Pooling over the batch (rather than per slice) keeps slices where a structure is absent from
    contributing a meaningless 0/0 term.
    """
    probabilities = logits.softmax(dim=1)
    one_hot = F.one_hot(labels.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
    if not include_background:
        probabilities, one_hot = probabilities[:, 1:], one_hot[:, 1:]
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2.0 * intersection + smooth) / (denominator + smooth)).mean()


def class_fraction_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """w_c = 1 - (fraction of the batch's pixels in class c), the weighting of PnP-AdaNet / SIFA / Zeng et al."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes).to(torch.float32)
    return 1.0 - counts / counts.sum()


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weighted: bool = True) -> torch.Tensor:
    """Mean over pixels of w_y * CE, with w from :func:`class_fraction_weights` (PnP-AdaNet Eq. 1, SIFA).

    A plain mean over pixels, as the released code of both: PyTorch's weighted ``cross_entropy``
    divides by the sum of the pixels' weights instead, which is 0/0 for an all-background batch.
    """
    per_pixel = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    if not weighted:
        return per_pixel.mean()
    weights = class_fraction_weights(labels, logits.shape[1]).to(logits.device)
    return (weights[labels.long()] * per_pixel).mean()
