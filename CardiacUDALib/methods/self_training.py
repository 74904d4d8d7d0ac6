"""``self_training``: a trained model teaches itself the target (mean teacher with confident pseudo-labels).

Starts from a trained checkpoint (``--init``, e.g. a ``gin_ipa`` or ``source_only`` model), which
becomes both the student and its teacher. Each step (FixMatch, Sohn et al. 2020; mean teacher,
Tarvainen & Valpola 2017):

1. the teacher segments the target batch as sampled (weak view: flips, rotations, intensity jitter);
   its argmax is the pseudo-label, kept where its probability is at least ``confidence_threshold``;
2. the student segments a strong view of the same images, a GIN contrast remap
   (:func:`CardiacUDALib.appearance.random_intensity_network`: the anatomy, hence the pseudo-label,
   stays where it was), and learns the confident pseudo-labels;
3. the student keeps its supervised source loss (with its ``appearance`` views), so it cannot drift
   away from the anatomy it learned;
4. the teacher follows the student as an exponential moving average.

    loss = L_source(student)                                           (as source_only / gin_ipa)
         + unlabelled_weight * mean_pixels[ 1(max p_teacher >= tau) * CE(student(GIN(x_t)), argmax p_teacher) ]
    teacher <- teacher_momentum * teacher + (1 - teacher_momentum) * student

The teacher, the smoother of the two, segments (validation, inference).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.appearance import generator_from_torch_seed, random_intensity_network
from CardiacUDALib.data import SliceBatch
from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.methods.source_only import SourceOnly, SourceOnlyConfig


@dataclass
class SelfTrainingConfig(SourceOnlyConfig):
    iterations: int = 200
    learning_rate: float = 2e-4
    confidence_threshold: float = 0.9
    unlabelled_weight: float = 1.0
    teacher_momentum: float = 0.99
    fractions: ClassVar[frozenset[str]] = SourceOnlyConfig.fractions | {
        "confidence_threshold",
        "teacher_momentum",
    }


def pseudo_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over pixels of CE(student, teacher's argmax) where the teacher is confident; and that share."""
    confidence, pseudo_labels = teacher_logits.float().softmax(dim=1).max(dim=1)
    confident = (confidence >= threshold).float()
    per_pixel = F.cross_entropy(student_logits.float(), pseudo_labels, reduction="none")
    return (confident * per_pixel).mean(), confident.mean()


@register_method
class SelfTraining(SourceOnly):
    key = "self_training"
    description = (
        "Self-training on the target from a trained model (--init): EMA teacher, confident pseudo-labels."
    )
    config_class = SelfTrainingConfig
    presets: ClassVar = {
        # MS-CMRSeg (benchmarks/RESULTS.md): from `gin` models, validation Dice on LGE 1-5 rose to steps
        # 500-700 of 800 in three seeds out of three; GIN on the source branch as in their teacher
        "paper": {"appearance": "gin", "iterations": 800},
        "fast": {"iterations": 100, "batch_size": 8, "validate_every": 50, "checkpoint_every": 50},
    }
    uses_target = True
    needs_initial_checkpoint = True

    def __init__(self, config: SelfTrainingConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        self.teacher = copy.deepcopy(self.segmenter).requires_grad_(False)

    def networks(self) -> dict[str, nn.Module]:
        return {"segmenter": self.segmenter, "teacher": self.teacher}

    def train_mode(self) -> None:
        self.segmenter.train()
        self.teacher.eval()  # the teacher's pseudo-labels come from its inference mode

    def train_step(self, source: SliceBatch, target: SliceBatch | None) -> dict[str, float]:
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        source_loss, losses = self.source_loss(source)
        with torch.no_grad(), self.autocast():
            teacher_logits = self.teacher(target.images)
        with self.autocast():
            strong = random_intensity_network(target.images, generator_from_torch_seed())
            student_logits = self.segmenter(strong)
        target_loss, confident = pseudo_label_loss(
            student_logits, teacher_logits, config.confidence_threshold
        )
        loss = source_loss + config.unlabelled_weight * target_loss
        loss.backward()
        self.optimizer.step()
        self._follow_student()
        return losses | {
            "loss": loss.item(),
            "pseudo_label": target_loss.item(),
            "confident": confident.item(),
        }

    @torch.no_grad()
    def _follow_student(self) -> None:
        """teacher <- m teacher + (1 - m) student; buffers (BatchNorm statistics) are copied."""
        momentum = self.config.teacher_momentum
        for teacher, student in zip(self.teacher.parameters(), self.segmenter.parameters()):
            teacher.mul_(momentum).add_(student.detach(), alpha=1 - momentum)
        for teacher, student in zip(self.teacher.buffers(), self.segmenter.buffers()):
            teacher.copy_(student)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.teacher(images).float()

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        """A run of its own has both networks; a starting model (``--init``) has the segmenter only, and
        becomes the teacher too."""
        if "teacher" not in state["networks"]:
            state = {**state, "networks": {**state["networks"], "teacher": state["networks"]["segmenter"]}}
        super().load_state_dict(state, with_optimizers)
