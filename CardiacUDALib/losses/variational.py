"""Losses of the variational family (``varda``, ``uda_vae_pp``, ``cmevae``).

Equation numbers are those of the UDA-VAE++ seed (Lu, Zheng, Gupta, CVPRW 2022), which restates the
losses of VarDA (Wu & Zhuang, TMI 2021).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)) per latent element, averaged over all elements.

    Eq. 5: 1/2 (sigma^2 + mu^2 - log sigma^2 - 1). A mean over elements, not a sum, as the released
    VarDA code (the weights of Eq. 12 were tuned for it).
    """
    return 0.5 * (log_variance.exp() + mean.square() - log_variance - 1.0).mean()


def class_balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean over the classes present in the batch of each class's mean cross-entropy.

    VarDA's segmentation loss: PyTorch's weighted cross-entropy with w_c = 1 / (pixels of class c in
    the batch), which reduces to exactly this. Classes absent from the batch contribute nothing.
    """
    num_classes = logits.shape[1]
    labels = labels.long()
    per_pixel = F.cross_entropy(logits.float(), labels, reduction="none")
    counts = torch.bincount(labels.reshape(-1), minlength=num_classes).to(per_pixel)
    sums = torch.zeros(num_classes, device=per_pixel.device).index_add_(
        0, labels.reshape(-1), per_pixel.reshape(-1)
    )
    present = counts > 0
    return (sums[present] / counts[present]).mean()


def pooled_posterior(
    mean: torch.Tensor, log_variance: torch.Tensor, pool: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the average of each ``pool`` x ``pool`` block of independent latent Gaussians.

    The average of n independent Gaussians has mean = the average of the means and variance = the
    average of the variances / n (VarDA code: ``avg_pool(var) / kernel**2``); ``pool=1`` keeps every element.
    """
    variance = log_variance.exp()
    if pool == 1:
        return mean, variance
    return F.avg_pool2d(mean, pool), F.avg_pool2d(variance, pool) / pool**2


def gaussian_kernel_discrepancy(
    source_mean: torch.Tensor,
    source_log_variance: torch.Tensor,
    target_mean: torch.Tensor,
    target_log_variance: torch.Tensor,
    pool: int = 4,
) -> torch.Tensor:
    """Closed-form integrated squared difference of the two domains' posterior mixtures (Eq. 9-10).

    D = 1/M^2 sum_ij [k(S_i, S_j) + k(T_i, T_j) - 2 k(S_i, T_j)], with, per latent element,
    k(a, b) = (2 pi)^(-1/2) exp(-1/2 [(mu_a - mu_b)^2 / (s_a + s_b) + log(s_a + s_b)])  (Eq. 10),
    i.e. the integral of the product of the two Gaussian densities. Elements are summed (the released
    code; Eq. 10 is written per element); pairs are averaged (Eq. 9's 1/M^2, where the code sums them).
    Zero when both domains' posteriors are identical; grows as their means move apart.
    """

    def flattened(mean: torch.Tensor, log_variance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled_mean, pooled_variance = pooled_posterior(mean.float(), log_variance.float(), pool)
        return pooled_mean.flatten(1), pooled_variance.flatten(1)

    def mean_kernel(
        a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        (mean_a, variance_a), (mean_b, variance_b) = a, b
        variance = variance_a[:, None] + variance_b[None]  # [M_a, M_b, elements]
        exponent = (mean_a[:, None] - mean_b[None]).square() / variance + variance.log()
        kernel = torch.exp(-0.5 * exponent) / math.sqrt(2.0 * math.pi)  # Eq. 10
        return kernel.sum(dim=2).mean()

    source = flattened(source_mean, source_log_variance)
    target = flattened(target_mean, target_log_variance)
    return mean_kernel(source, source) + mean_kernel(target, target) - 2.0 * mean_kernel(source, target)


def jensen_shannon_mi(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon lower bound of mutual information from critic scores (Eq. 3, Deep InfoMax).

    I = E_joint[-softplus(-T)] - E_marginals[softplus(T)]: high when the critic scores paired samples
    above mismatched ones. Maximise it (both the critic and the networks that feed it).
    """
    return -F.softplus(-positive_scores).mean() - F.softplus(negative_scores).mean()


def margin_prototype_contrast(
    anchors: torch.Tensor,
    anchor_classes: torch.Tensor,
    memory: torch.Tensor,
    memory_classes: torch.Tensor,
    margin: float,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE of unit embeddings against a class memory, with an additive angular margin on positives.

    For anchor a and each stored entry p of its class: -log(e^{cos(theta_ap + m)/t} / (e^{cos(theta_ap + m)/t}
    + sum_n e^{cos(theta_an)/t})), n over the entries of the other classes; averaged over (a, p) pairs.
    The margin (ArcFace-style, as MPSCL) asks each anchor to be closer to its class than the bare
    contrast would, widening the gap between classes. Zero when nothing can be contrasted yet.
    """
    if len(anchors) == 0 or len(memory) == 0:
        return anchors.sum() * 0.0
    cosine = (anchors.float() @ memory.float().T).clamp(
        -1.0 + 1e-4, 1.0 - 1e-4
    )  # [A, N]; keeps acos differentiable
    positive = anchor_classes[:, None] == memory_classes[None]
    if not positive.any():
        return anchors.sum() * 0.0
    positive_logits = torch.cos(torch.acos(cosine) + margin) / temperature
    negative_logits = (cosine / temperature).masked_fill(positive, float("-inf"))
    negatives = torch.logsumexp(negative_logits, dim=1, keepdim=True)  # -inf when there is no negative
    per_pair = torch.logaddexp(positive_logits, negatives) - positive_logits
    return per_pair[positive].mean()
