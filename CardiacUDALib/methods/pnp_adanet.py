"""``pnp_adanet``: plug-and-play adversarial feature adaptation (Dou et al. 2018; PnP-AdaNet, 2019).

One resumable job in two phases, decided by counters kept in the method's state (saved in every
checkpoint, so a resumed run continues in the right phase):

1. **Source training** (``source_iterations`` steps): the dilated residual segmenter M^s
   (:mod:`~CardiacUDALib.nets.dilated_resnet`) learns the labelled source with the hybrid loss of
   Eq. 1 (class-weighted cross-entropy + Dice), Adam, learning rate x0.95 every 1500 steps (§3.4).
2. **Adversarial adaptation** (every later step). At its first step the domain adaptation module
   (DAM) becomes a copy of the segmenter's first ``adaptation_depth`` layers (§3.2); the higher layers
   stay frozen and shared (Eq. 2-3). Every step updates the domain critic module (DCM,
   :class:`~CardiacUDALib.nets.critic.ResidualCritic`) once on the Wasserstein objective (Eq. 6),
   source features being the "real" side, and clips its weights; after a critic warm-up (as the
   released code's "pre-train" stage), every ``critic_steps_per_dam_step``-th critic step is
   followed by one DAM update (Eq. 5). Both use RMSProp, learning rate x0.98 every 100 DAM updates, as
   the released code runs it: TF1's RMSProp (accumulator starting at 1) on losses scaled by w = 0.002.

The critic sees several feature levels concatenated (§3.3): the outputs of the stages ending at
``critic_feature_depths`` layers, from the DAM where a level lies within it (M_A) and from the frozen
layers otherwise (F_H); all of them are at 1/8 of the image size. As in the released code, two more
views of the output join them (the paper's text names only the feature levels):

- the segmentation logits, rearranged to 1/8 of the image size (space-to-depth: every 8x8 block of
  logits becomes 64 x C channels), as a further level of the DCM (``critic_sees_logits``). The code
  concatenates the features the other way round, all pixel-shuffled up to the image size; it also
  feeds the argmax map, which the logits already determine and which passes no gradient.
- a second, smaller critic on the full-size logits (the code's "mask critic"), its Wasserstein terms
  added to both the critic and the DAM objectives with weight ``mask_critic_weight`` (0.3). Its
  weights are clipped like the DCM's. It learns during the warm-up too (the code starts it at the
  first DAM update, after which it has its 20 critic steps before every DAM update).

These output views tie the DAM to what the frozen layers make of its features: a DAM update that
aligns the feature levels while scrambling the segmentation is scored as target-like by them.

Inference (``segment``) routes target images through the DAM and the frozen higher layers once
adaptation has begun, through the source segmenter before (a phase-1 checkpoint is a plain
source model). A checkpoint whose adaptation has not begun holds only a trained segmenter: it can
initialise a run of any adaptation depth (``--init``), whose DAM is copied from that segmenter.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from CardiacUDALib.data import SliceBatch
from CardiacUDALib.errors import CardiacUDAError
from CardiacUDALib.losses.adversarial import (
    clip_weights,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)
from CardiacUDALib.losses.segmentation import soft_dice_loss, weighted_cross_entropy
from CardiacUDALib.methods.base import AdaptationMethod, MethodConfig
from CardiacUDALib.methods.registry import register_method
from CardiacUDALib.nets.blocks import pad_to_multiple
from CardiacUDALib.nets.critic import ResidualCritic
from CardiacUDALib.nets.dilated_resnet import DOWNSAMPLING, DilatedResNet
from CardiacUDALib.optimizers import rmsprop


@dataclass
class PnPAdaNetConfig(MethodConfig):
    # Schedule: `iterations` in all; the first `source_iterations` train the segmenter, the rest adapt.
    # The paper gives no lengths: source training is the released code's 50k steps; adaptation is
    # 2000 warm-up critic steps, then 2500 DAM updates of 20 critic steps each.
    iterations: int = 102_000
    source_iterations: int = 50_000
    batch_size: int = 5  # §3.4 (the code: 10 for the segmenter, 6 for adaptation)
    context_slices: int = 3  # three adjacent slices as channels (§3.4)
    # Segmenter (§3.1) and its training (Eq. 1, §3.4)
    width: int = 16
    negative_slope: float = 0.2
    upsample_channels_per_class: int = 8
    learning_rate: float = 1e-3  # Adam
    lr_schedule: str = "step"  # stepped decays counted in each phase's own updates, see apply_learning_rate
    source_lr_decay: float = 0.95
    source_lr_decay_every: int = 1500
    weight_decay: float = 1e-4  # L2 on the segmenter, as the released code
    dice_weight: float = 1.0  # lambda of Eq. 1
    # Adaptation (§3.2-3.4)
    adaptation_depth: int = 21  # d, in 3x3 conv layers: the paper ablates 13, 21, 31; the code uses 21
    critic_feature_depths: tuple[int, ...] = (13, 21, 25, 31)  # the code's G4, G6, G7, G9 outputs
    critic_width: int = 64
    critic_max_width: int = 512
    critic_stages: int = 3
    # BatchNorm in the critic, as the released code (the paper does not say); see critic_scores. Without it
    # ("none") the positively homogeneous critic lets the DAM raise its score by scaling features up without bound.
    critic_norm: str = "batch"
    critic_batch: str = "per_domain"  # as the released code; or "joint": see critic_scores
    # The released code's two views of the output (see the module docstring): logits as a DCM level, a mask critic.
    critic_sees_logits: bool = True
    mask_critic_weight: float = 0.3  # 0: no mask critic
    mask_critic_width: int = 16  # the code's 16 -> 32 -> 64 -> 128 -> 256
    mask_critic_max_width: int = 256
    mask_critic_stages: int = 5
    adversarial_learning_rate: float = 3e-4  # RMSProp, DAM and critic
    # The released code's TF1 RMSProp: accumulator starting at 1, decay 0.9 (PyTorch's: 0 and 0.99), with the
    # critic and DAM losses scaled by w = 0.002; together they make the first updates small (see rmsprop).
    rmsprop_decay: float = 0.9
    rmsprop_initial_mean_square: float = 1.0
    adversarial_weight: float = 0.002
    adversarial_lr_decay: float = 0.98
    adversarial_lr_decay_every: int = 100  # DAM updates ("joint updates")
    critic_steps_per_dam_step: int = 20
    critic_steps_increase_every: int = (
        0  # the code adds one critic step per DAM update every 300 of them; 0: fixed
    )
    critic_warmup_steps: int = 2000  # critic-only steps before the first DAM update (the code: 20100)
    weight_clip: float = 0.03
    zero_allowed: ClassVar[frozenset[str]] = MethodConfig.zero_allowed | {
        "source_iterations",
        "critic_warmup_steps",
        "critic_steps_increase_every",
    }
    positive: ClassVar[frozenset[str]] = MethodConfig.positive | {"adversarial_learning_rate", "weight_clip"}
    fractions: ClassVar[frozenset[str]] = MethodConfig.fractions | {
        "source_lr_decay",
        "rmsprop_decay",
        "adversarial_lr_decay",
    }


class PhaseCounters(nn.Module):
    """The job's progress as buffers, so that every checkpoint (even one without optimisers) carries it."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("source_steps", "critic_steps", "dam_steps", "critic_steps_since_dam_step"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64))

    def count(self, name: str) -> int:
        return int(getattr(self, name))

    def add(self, name: str, value: int = 1) -> None:
        getattr(self, name).add_(value)


@register_method
class PnPAdaNet(AdaptationMethod):
    key = "pnp_adanet"
    description = (
        "PnP-AdaNet (Dou et al.): dilated residual segmenter trained on the source, then its early layers "
        "adapted to the target against a Wasserstein feature critic."
    )
    config_class = PnPAdaNetConfig
    presets = {
        "paper": {},
        "fast": {
            "iterations": 240,
            "source_iterations": 150,
            "batch_size": 4,
            "width": 4,
            "upsample_channels_per_class": 2,
            "critic_width": 16,
            "critic_max_width": 64,
            "mask_critic_width": 8,
            "mask_critic_max_width": 32,
            "mask_critic_stages": 3,
            "critic_steps_per_dam_step": 3,
            "critic_warmup_steps": 30,
            "adversarial_lr_decay_every": 10,
            "validate_every": 60,
            "checkpoint_every": 60,
        },
    }

    def __init__(self, config: PnPAdaNetConfig, num_classes: int, device: torch.device) -> None:
        super().__init__(config, num_classes, device)
        if config.lr_schedule != "step":
            raise CardiacUDAError(
                "pnp_adanet decays its learning rates in steps (source_lr_decay, adversarial_lr_decay); "
                f"lr_schedule must be 'step', not {config.lr_schedule!r}"
            )
        self.segmenter = DilatedResNet(
            config.context_slices,
            num_classes,
            config.width,
            config.negative_slope,
            config.upsample_channels_per_class,
        ).to(device)
        try:
            self.dam_stages = self.segmenter.stages_for_depth(config.adaptation_depth)
            for depth in config.critic_feature_depths:
                self.segmenter.stages_for_depth(depth)
        except ValueError as error:
            raise CardiacUDAError(f"pnp_adanet: {error}") from None
        if config.critic_batch not in ("joint", "per_domain"):
            raise CardiacUDAError(
                f"pnp_adanet: critic_batch is 'joint' or 'per_domain', not {config.critic_batch!r}"
            )
        if not config.critic_feature_depths or (
            min(config.critic_feature_depths) < self.segmenter.full_downsampling_depth
        ):
            raise CardiacUDAError(
                "pnp_adanet: critic_feature_depths must name at least one level, all at 1/8 of the image size "
                f"(depth >= {self.segmenter.full_downsampling_depth})"
            )
        # The DAM (§3.2): the same stages as the segmenter's first d layers, own weights.
        self.dam = copy.deepcopy(self.segmenter.stages[: self.dam_stages])
        critic_channels = sum(
            self.segmenter.stage_channels[self.segmenter.stages_for_depth(depth) - 1]
            for depth in config.critic_feature_depths
        ) + (num_classes * DOWNSAMPLING**2 if config.critic_sees_logits else 0)
        # Each critic with the weight of its Wasserstein terms in the critic and DAM objectives.
        self.critics: dict[str, tuple[ResidualCritic, float]] = {
            "critic": (
                ResidualCritic(
                    critic_channels,
                    config.critic_width,
                    config.critic_max_width,
                    config.critic_stages,
                    config.critic_norm,
                    config.negative_slope,
                ).to(device),
                1.0,
            )
        }
        if config.mask_critic_weight:
            self.critics["mask_critic"] = (
                ResidualCritic(
                    num_classes,
                    config.mask_critic_width,
                    config.mask_critic_max_width,
                    config.mask_critic_stages,
                    config.critic_norm,
                    config.negative_slope,
                ).to(device),
                config.mask_critic_weight,
            )
        self.counters = PhaseCounters().to(device)
        self.segmenter_optimizer = torch.optim.Adam(
            self.segmenter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.adversarial_optimizers = {
            name: rmsprop(
                module.parameters(),
                config.adversarial_learning_rate,
                config.rmsprop_decay,
                config.rmsprop_initial_mean_square,
            )
            for name, module in (
                ("dam", self.dam),
                *((name, critic) for name, (critic, _) in self.critics.items()),
            )
        }

    # ---- interface -----------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {
            "segmenter": self.segmenter,
            "dam": self.dam,
            **{name: critic for name, (critic, _) in self.critics.items()},
            "counters": self.counters,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"segmenter": self.segmenter_optimizer, **self.adversarial_optimizers}

    @property
    def adapting(self) -> bool:
        """True once the DAM has been initialised from the segmenter (the first adaptation step)."""
        return self.counters.count("critic_steps") > 0

    def load_state_dict(self, state: dict[str, Any], with_optimizers: bool = True) -> None:
        """Before adaptation the DAM and critic hold nothing trained: only the segmenter is loaded then."""
        networks = state["networks"]
        adapted = int(networks["counters"]["critic_steps"]) > 0
        missing = [name for name in self.critics if adapted and name not in networks]
        if missing:
            raise CardiacUDAError(
                f"this pnp_adanet checkpoint has no {', '.join(missing)}: it was adapted with other "
                "critic settings than these (mask_critic_weight)"
            )
        self.counters.load_state_dict(networks["counters"])
        self.segmenter.load_state_dict(networks["segmenter"])
        if adapted:
            self.dam.load_state_dict(networks["dam"])
            for name, (critic, _) in self.critics.items():
                critic.load_state_dict(networks[name])
        if with_optimizers:
            for name, optimizer in self.optimizers().items():
                if name in state.get("optimizers", {}):
                    optimizer.load_state_dict(state["optimizers"][name])

    def apply_learning_rate(self, step: int) -> None:
        """§3.4's stepped decays, counted in each phase's own updates (not the job's ``step``)."""
        config = self.config
        source_factor = config.source_lr_decay ** (
            self.counters.count("source_steps") // config.source_lr_decay_every
        )
        adversarial_factor = config.adversarial_lr_decay ** (
            self.counters.count("dam_steps") // config.adversarial_lr_decay_every
        )
        for optimizer, factor in (
            (self.segmenter_optimizer, source_factor),
            *((optimizer, adversarial_factor) for optimizer in self.adversarial_optimizers.values()),
        ):
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor

    def train_step(self, source: SliceBatch, target: SliceBatch | None) -> dict[str, float]:
        if self.counters.count("source_steps") < self.config.source_iterations:
            return self._source_step(source)
        if target is None:
            raise CardiacUDAError("pnp_adanet adapts to the target domain: give target images")
        return self._adaptation_step(source, target)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Target slices -> logits: DAM, then the frozen higher layers (Eq. 3); the segmenter before adaptation."""
        with self.autocast():
            front = self.dam if self.adapting else ()
            return self.segmenter.forward_with_features(images, front)[0].float()

    # ---- phase 1: source segmenter --------------------------------------------------------------
    def _source_step(self, source: SliceBatch) -> dict[str, float]:
        self.segmenter.train()
        with self.autocast():
            logits = self.segmenter(source.images)
        # Eq. 1: class-weighted cross-entropy + lambda * Dice over all classes, background included
        cross_entropy = weighted_cross_entropy(logits, source.labels)
        dice = soft_dice_loss(logits.float(), source.labels, include_background=True)
        loss = cross_entropy + self.config.dice_weight * dice
        self.segmenter_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.segmenter_optimizer.step()
        self.counters.add("source_steps")
        return {"loss": loss.item(), "cross_entropy": cross_entropy.item(), "dice": dice.item()}

    # ---- phase 2: adversarial adaptation --------------------------------------------------------
    def initialise_dam(self) -> None:
        """The DAM starts as the trained source layers it replaces (§3.2)."""
        for dam_stage, source_stage in zip(self.dam, self.segmenter.stages):
            dam_stage.load_state_dict(source_stage.state_dict())

    def critic_inputs(self, images: torch.Tensor, through_dam: bool) -> dict[str, torch.Tensor]:
        """What each critic sees of source or (DAM) target images.

        The DCM: the concatenated feature levels (M_A(x), F_H(x)) of §3.3 and, with
        ``critic_sees_logits``, the logits rearranged to their size; the mask critic: the logits.
        """
        with self.autocast():
            logits, levels = self.segmenter.forward_with_features(
                images, self.dam if through_dam else (), self.config.critic_feature_depths
            )
            if self.config.critic_sees_logits:
                levels.append(F.pixel_unshuffle(pad_to_multiple(logits, DOWNSAMPLING), DOWNSAMPLING))
            views = {"critic": torch.cat(levels, dim=1)}
            if "mask_critic" in self.critics:
                views["mask_critic"] = logits
            return views

    def critic_scores(
        self, source_views: dict[str, torch.Tensor], target_views: dict[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each critic's scores of both domains' views, one batch per domain or as one batch.

        ``critic_batch = "per_domain"`` (the released code, the default): a critic's BatchNorm
        normalises each domain with its own batch statistics, which hides from it every per-channel
        shift of mean and scale at each normalised layer. ``"joint"``: both domains share the
        statistics, so the critic sees first-order differences too. The joint critic is the stronger
        one (in a unit check the DAM's gain in critic score per update was about 10x larger) and
        that is its problem: on MS-CMRSeg its Wasserstein estimate grew to 13, the DAM could not
        close the gap and validation Dice collapsed within 200 updates of its weights starting to
        move; per domain the estimate stayed between 1 and 2 and the adapted DAM scored higher and held
        longer (benchmarks/RESULTS.md, PnP-AdaNet).
        """
        scores = {}
        for name, (critic, _) in self.critics.items():
            source, target = source_views[name], target_views[name]
            with self.autocast():
                if self.config.critic_batch == "joint":
                    both = critic(torch.cat([source, target])).float()
                    scores[name] = (both[: len(source)], both[len(source) :])
                else:
                    scores[name] = (critic(source).float(), critic(target).float())
        return scores

    def _dam_steps_due(self) -> bool:
        """After the warm-up, a DAM update every n critic steps; n may grow, as in the released code."""
        config = self.config
        if self.counters.count("critic_steps") <= config.critic_warmup_steps:
            return False
        required = config.critic_steps_per_dam_step
        if config.critic_steps_increase_every:
            required += self.counters.count("dam_steps") // config.critic_steps_increase_every
        return self.counters.count("critic_steps_since_dam_step") >= required

    def _adversarial_update(self, names: tuple[str, ...], losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """One step of the named optimisers on w * sum_k(weight_k * loss_k), k over the critics (code's w, 0.3)."""
        total = sum(self.critics[name][1] * loss for name, loss in losses.items())
        for name in names:
            self.adversarial_optimizers[name].zero_grad(set_to_none=True)
        (self.config.adversarial_weight * total).backward()
        for name in names:
            self.adversarial_optimizers[name].step()
        return total

    def _adaptation_step(self, source: SliceBatch, target: SliceBatch) -> dict[str, float]:
        if not self.adapting:
            self.initialise_dam()
        # Frozen and shared: the segmenter (BatchNorm in inference mode, no gradients to its weights).
        self.segmenter.eval().requires_grad_(False)
        self.dam.eval()  # its BatchNorm runs in training mode only during its own updates (released code)
        for critic, _ in self.critics.values():
            critic.train()

        # Critic updates (Eq. 6): minimise E[D(target views)] - E[D(source views)] for each critic, then clip.
        with torch.no_grad():
            source_views = self.critic_inputs(source.images, through_dam=False)
            target_views = self.critic_inputs(target.images, through_dam=True)
        critic_losses = {
            name: wasserstein_critic_loss(*scores)
            for name, scores in self.critic_scores(source_views, target_views).items()
        }
        self._adversarial_update(tuple(self.critics), critic_losses)
        for critic, _ in self.critics.values():
            clip_weights(critic, self.config.weight_clip)
        self.counters.add("critic_steps")
        self.counters.add("critic_steps_since_dam_step")
        losses = {
            "critic": critic_losses["critic"].item(),
            "wasserstein_estimate": -critic_losses["critic"].item(),
        }
        if "mask_critic" in critic_losses:
            losses["mask_wasserstein_estimate"] = -critic_losses["mask_critic"].item()

        if self._dam_steps_due():
            # DAM update (Eq. 5): minimise -E[D(M_A(x^t), F_H(x^t))] (and the mask critic's term); only the DAM steps.
            self.dam.train()
            target_views = self.critic_inputs(target.images, through_dam=True)
            dam_losses = {
                name: wasserstein_generator_loss(target_scores)
                for name, (_, target_scores) in self.critic_scores(source_views, target_views).items()
            }
            losses["dam"] = self._adversarial_update(("dam",), dam_losses).item()
            self.dam.eval()
            self.counters.add("dam_steps")
            self.counters.critic_steps_since_dam_step.zero_()
        return losses
