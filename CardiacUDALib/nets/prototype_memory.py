"""CMEVAE's class memory: stored pixel embeddings and a prototype per class (Qiao et al., supplement §III-B).

"For the memory bank in CPMC, we stored 50 samples and a prototype for each point class at three
scales and used all the stored samples in each contrast round, and selected the point with the lowest
similarity to the prototype to update the memory bank." Read here as: per class, up to ``capacity``
unit-length embeddings and an EMA prototype; a new sample fills a free slot, and once the bank is full
it replaces the stored sample least similar (cosine) to the class prototype, so the bank keeps its
size and drifts towards the class's typical points. The bank lives in buffers, so checkpoints keep it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PrototypeMemory(nn.Module):
    """Per class: ``capacity`` stored embeddings (``samples[c, :counts[c]]``) and a unit prototype."""

    def __init__(self, num_classes: int, dimension: int, capacity: int = 50, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("samples", torch.zeros(num_classes, capacity, dimension))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("prototypes", torch.zeros(num_classes, dimension))
        self.register_buffer("has_prototype", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def capacity(self) -> int:
        return self.samples.shape[1]

    @torch.no_grad()
    def update(self, class_index: int, embeddings: torch.Tensor) -> None:
        """Move the prototype towards the new embeddings' mean (EMA), then store each embedding."""
        embeddings = F.normalize(embeddings.detach().float(), dim=1)
        batch_mean = F.normalize(embeddings.mean(dim=0), dim=0)
        if self.has_prototype[class_index]:
            blended = self.momentum * self.prototypes[class_index] + (1.0 - self.momentum) * batch_mean
            batch_mean = F.normalize(blended, dim=0)
        self.prototypes[class_index] = batch_mean
        self.has_prototype[class_index] = True
        for embedding in embeddings:
            count = int(self.counts[class_index])
            if count < self.capacity:
                slot = count
                self.counts[class_index] += 1
            else:  # full: replace the stored sample least similar to the prototype
                slot = int((self.samples[class_index] @ self.prototypes[class_index]).argmin())
            self.samples[class_index, slot] = embedding

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All stored vectors ``[C, capacity + 1, D]`` (samples, then the prototype), a validity mask, and
        each entry's class ``[C, capacity + 1]``."""
        num_classes, capacity = self.samples.shape[:2]
        vectors = torch.cat([self.samples, self.prototypes[:, None]], dim=1)
        slots = torch.arange(capacity, device=self.counts.device)
        valid = torch.cat([slots[None] < self.counts[:, None], self.has_prototype[:, None]], dim=1)
        classes = torch.arange(num_classes, device=self.counts.device)[:, None].expand(-1, capacity + 1)
        return vectors, valid, classes
