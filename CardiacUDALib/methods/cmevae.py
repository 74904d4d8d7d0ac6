"""``cmevae``: contrastive margin-enhanced VAE (Qiao et al.), from the paper's supplementary material.

The ME-VAE lower bound (supplement Eq. 1), term by term, on :class:`~CardiacUDALib.methods.varda.VarDA`'s
pieces (the supplement: "for all hyperparameters we follow [VarDA]"):

* -KL(q(z|x, y) || p(z)): ``kl``, both domains, three scales (as VarDA);
* E log p(y|x), the *adaptive task term*: the fused segmentation output's class-balanced CE on the
  source, plus the margin-enhanced module CPMC (``contrast``, below), which also reaches the target;
* E log p(y|z), the *prediction term*: every scale's segmentation head with its own loss (the
  supplement's "loss calculated separately for each scale");
* E log p(x|y, z), the *reconstruction term*: per-scale decoders on [z, y] (one-hot label for the
  source, prediction for the target), BCE (as VarDA).

The encoder is VarDA's five-level U-Net. CMEVAE's bound has no domain-discrepancy term, so
``discrepancy_weight`` is 0 (set it to VarDA's 1e-5 to add it).

CPMC, the contrastive module. The supplement fixes the memory ("50 samples and a prototype per
class at three scales ... all stored samples used in each contrast round ... the point with the
lowest similarity to the prototype" is replaced: ``nets.prototype_memory``). The main paper's other
details are not in our seeds; the choices, after MPSCL (margin contrast with prototypes, same task):

* embeddings: a 1x1-conv projection head (``projection_dim`` 32) on each scale's latent mean, unit length;
* anchors: up to ``anchors_per_class`` random pixels per class and scale; source classes from the
  label, target classes from the fused prediction where its confidence >= ``pseudo_label_threshold``;
* loss: InfoNCE against every stored entry, additive angular margin on positives (source 0.4,
  target 0.2 as MPSCL), ``contrast_temperature`` 0.1;
* the memory is filled from source pixels only (labels are reliable there), ``memory_updates_per_class``
  per class and step (and rank, under torchrun), prototype by EMA (momentum 0.9);
* weights: ``source_contrast_weight`` 0.1 and ``target_contrast_weight`` 0.01 (MPSCL's 1 : 0.1, scaled
  to the base loss's order, as the supplement says it scaled its new losses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.distributed import gather_rows
from CardiacUDALib.losses.variational import margin_prototype_contrast
from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.methods.varda import DomainPass, VarDA, VarDAConfig, downsample_labels
from CardiacUDALib.nets.prototype_memory import PrototypeMemory

IGNORED = -1  # target pixels whose prediction is not confident enough to be an anchor


@dataclass
class CMEVAEConfig(VarDAConfig):
    discrepancy_weight: float = 0.0  # not a term of the ME-VAE bound
    projection_dim: int = 32
    memory_capacity: int = 50  # samples per class and scale (supplement)
    memory_momentum: float = 0.9
    memory_updates_per_class: int = 4
    anchors_per_class: int = 64
    pseudo_label_threshold: float = 0.9
    source_margin: float = 0.4
    target_margin: float = 0.2
    contrast_temperature: float = 0.1
    source_contrast_weight: float = 0.1
    target_contrast_weight: float = 0.01
    positive: ClassVar[frozenset[str]] = VarDAConfig.positive | {"contrast_temperature"}
    fractions: ClassVar[frozenset[str]] = VarDAConfig.fractions | {
        "memory_momentum",
        "pseudo_label_threshold",
    }


class PrototypeContrast(nn.Module):
    """Per latent scale: a projection head and a :class:`PrototypeMemory`."""

    def __init__(self, latent_channels: list[int], num_classes: int, config: CMEVAEConfig) -> None:
        super().__init__()
        dimension = config.projection_dim
        self.projections = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, dimension, 1), nn.ReLU(inplace=True), nn.Conv2d(dimension, dimension, 1)
            )
            for c in latent_channels
        )
        self.memories = nn.ModuleList(
            PrototypeMemory(num_classes, dimension, config.memory_capacity, config.memory_momentum)
            for _ in latent_channels
        )


def sample_pixels(
    embeddings: torch.Tensor, labels: torch.Tensor, per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` random pixels of every labelled class: ``[N, D]`` unit embeddings and classes."""
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    flat_labels = labels.reshape(-1)
    chosen = []
    for class_index in flat_labels[flat_labels != IGNORED].unique():
        where = (flat_labels == class_index).nonzero().squeeze(1)
        chosen.append(where[torch.randperm(len(where), device=where.device)[:per_class]])
    indices = torch.cat(chosen) if chosen else flat_labels.new_zeros(0)
    return F.normalize(flat[indices].float(), dim=1), flat_labels[indices]


@register_method
class CMEVAE(VarDA):
    key = "cmevae"
    description = (
        "CMEVAE: margin-enhanced VAE lower bound with prototype contrast against a class memory bank."
    )
    config_class = CMEVAEConfig
    presets = {"paper": {}, "fast": {**VarDA.presets["fast"], "projection_dim": 16, "anchors_per_class": 32}}

    def __init__(self, config: CMEVAEConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        self.contrast = PrototypeContrast(self.network.latent_channels, num_classes, config).to(device)
        self.contrast_optimizer = self.adam([self.contrast])

    def networks(self) -> dict[str, nn.Module]:
        return {**super().networks(), "contrast": self.contrast}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "contrast": self.contrast_optimizer}

    def scale_contrast(
        self, scale: int, domain: DomainPass, labels: torch.Tensor, margin: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One domain's CPMC loss at one scale, with the anchors it used (unit embeddings, classes)."""
        config = self.config
        vectors, valid, classes = self.contrast.memories[scale].entries()
        embeddings = self.contrast.projections[scale](domain.output.latents[scale].mean)
        anchors, anchor_classes = sample_pixels(
            embeddings, downsample_labels(labels, scale), config.anchors_per_class
        )
        loss = margin_prototype_contrast(
            anchors, anchor_classes, vectors[valid], classes[valid], margin, config.contrast_temperature
        )
        return loss, anchors, anchor_classes

    def anchors_to_store(
        self, anchors: torch.Tensor, anchor_classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's first ``memory_updates_per_class`` anchors of each class, from every rank under
        torchrun (rank order), so that every rank's memory takes the same samples and stays the same."""
        per_class = [
            (anchor_classes == class_index).nonzero().flatten()[: self.config.memory_updates_per_class]
            for class_index in anchor_classes.unique()
        ]
        chosen = torch.cat(per_class) if per_class else anchor_classes.new_zeros(0)
        return gather_rows(anchors[chosen].detach()), gather_rows(anchor_classes[chosen])

    def extra_losses(self, source: DomainPass, target: DomainPass) -> dict[str, torch.Tensor]:
        """CPMC at every scale; then the memory takes some of this step's source anchors."""
        config = self.config
        confidence, pseudo_labels = target.output.fused_logits.detach().softmax(dim=1).max(dim=1)
        pseudo_labels[confidence < config.pseudo_label_threshold] = IGNORED
        source_loss = target_loss = torch.zeros((), device=self.device)
        for scale, memory in enumerate(self.contrast.memories):
            loss, anchors, anchor_classes = self.scale_contrast(
                scale, source, source.labels, config.source_margin
            )
            source_loss = source_loss + loss
            target_loss = (
                target_loss + self.scale_contrast(scale, target, pseudo_labels, config.target_margin)[0]
            )
            stored, stored_classes = self.anchors_to_store(anchors, anchor_classes)
            for class_index in stored_classes.unique().tolist():
                memory.update(class_index, stored[stored_classes == class_index])
        return {
            "source_contrast": config.source_contrast_weight * source_loss,
            "target_contrast": config.target_contrast_weight * target_loss,
        }
